//! Many replicas of one projection model, one writer at a time: real worker processes
//! (`src/bin/fleet_worker.rs`) against a real PostgreSQL server, the holder killed (`SIGKILL`) at
//! random moments or stopped (`SIGSTOP`) past its lease, while events are appended. The projected table must
//! equal a clean replay (one row per event, with the event's data), the checkpoint position
//! must never move backwards, and a paused holder's commits after its resumption must be fenced.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use krescent::prelude::*;
use krescent::store::PostgresEventStore;

#[path = "fleet/worker.rs"]
mod worker;
use krescent::tokio_postgres;
use krescent_testkit::postgres::{fresh_database, TestDatabase};
use worker::Worker;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "fleet.tick")]
struct Tick {
    n: u64,
}

/// The lease of the model: the holder's pid, its epoch, whether it is live now.
async fn lease(client: &tokio_postgres::Client) -> Option<(u32, i64, bool)> {
    let row = client
        .query_opt(
            "SELECT holder, epoch, expires_at > clock_timestamp() FROM krescent_leases WHERE namespace = 'fleet.projected'",
            &[],
        )
        .await
        .ok()??;
    let holder: String = row.get(0);
    let pid = holder.split(':').next()?.parse().ok()?;
    Some((pid, row.get(1), row.get(2)))
}

/// Waits until a live lease is held under an epoch above `after`; its holder and epoch.
async fn new_holder(client: &tokio_postgres::Client, after: i64, within: Duration) -> (u32, i64) {
    let deadline = Instant::now() + within;
    loop {
        if let Some((pid, epoch, true)) = lease(client).await {
            if epoch > after {
                return (pid, epoch);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no instance took the lease over epoch {after} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Appends five ticks to one of a few streams every `every` until stopped; the number appended.
fn appender(
    store: Arc<PostgresEventStore>,
    stop: Arc<AtomicBool>,
    every: Duration,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let events = (0..5)
                .map(|i| NewEvent::new(&Tick { n: n + i }).expect("encode"))
                .collect();
            store
                .append(&format!("ticks-{}", n % 7), ExpectedVersion::Any, events)
                .await
                .expect("append");
            n += 5;
            tokio::time::sleep(every).await;
        }
        n
    })
}

/// Each time the checkpoint's position moved backwards: from, to.
type Backwards = Arc<Mutex<Vec<(i64, i64)>>>;

/// Records the checkpoint's position every few milliseconds; every time it moved backwards.
fn position_watcher(
    db: &TestDatabase,
    stop: Arc<AtomicBool>,
) -> (tokio::task::JoinHandle<()>, Backwards) {
    let backwards = Arc::new(Mutex::new(Vec::new()));
    let seen = backwards.clone();
    let config = db.config();
    let task = tokio::spawn(async move {
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect the watcher");
        tokio::spawn(connection);
        let mut last = 0i64;
        while !stop.load(Ordering::SeqCst) {
            let row = client
                .query_opt(
                    "SELECT position::bigint FROM krescent_checkpoints WHERE namespace = 'fleet.projected'",
                    &[],
                )
                .await
                .expect("read the checkpoint");
            if let Some(row) = row {
                let position: i64 = row.get(0);
                if position < last {
                    seen.lock().expect("lock").push((last, position));
                }
                last = last.max(position);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (task, backwards)
}

/// Waits until the checkpoint covers every event, then compares the projected table with a
/// clean replay of the events table: every event exactly once, with its own data.
async fn assert_exactly_once(client: &tokio_postgres::Client, appended: u64) {
    let head: i64 = client
        .query_one(
            "SELECT coalesce(max(position), 0) FROM krescent_events",
            &[],
        )
        .await
        .expect("head")
        .get(0);
    assert_eq!(u64::try_from(head).expect("positive"), appended);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let at: Option<i64> = client
            .query_opt(
                "SELECT position::bigint FROM krescent_checkpoints WHERE namespace = 'fleet.projected'",
                &[],
            )
            .await
            .expect("checkpoint")
            .map(|r| r.get(0));
        if at == Some(head) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the checkpoint stayed at {at:?}, head {head}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let replay = client
        .query(
            "SELECT position, stream_id, (payload->>'n')::bigint FROM krescent_events ORDER BY position",
            &[],
        )
        .await
        .expect("events");
    let projected = client
        .query(
            "SELECT position, stream_id, n FROM projected ORDER BY position, n",
            &[],
        )
        .await
        .expect("projected");
    let rows = |rows: &[tokio_postgres::Row]| -> Vec<(i64, String, i64)> {
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    };
    let (replay, projected) = (rows(&replay), rows(&projected));
    let doubled = projected.windows(2).filter(|w| w[0].0 == w[1].0).count();
    assert_eq!(doubled, 0, "{doubled} events were projected twice");
    assert_eq!(projected.len(), replay.len(), "events lost");
    assert!(
        projected == replay,
        "the projected table differs from a clean replay"
    );
}

fn median(values: &mut [u128]) -> u128 {
    values.sort_unstable();
    values[values.len() / 2]
}

/// Fast leases so that twenty kills fit in the test's time.
const FAST: [(&str, &str); 3] = [
    ("FLEET_TTL_MS", "1000"),
    ("FLEET_HEARTBEAT_MS", "300"),
    ("FLEET_POLL_MS", "100"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kills_of_the_holder_lose_and_double_nothing() {
    let started = Instant::now();
    let db = fresh_database().await;
    let store = Arc::new(db.event_store().await);
    db.checkpoint_storage().await;
    let client = db.client().await;
    let stop = Arc::new(AtomicBool::new(false));
    let appending = appender(store.clone(), stop.clone(), Duration::from_millis(15));
    let (watching, backwards) = position_watcher(&db, stop.clone());
    let mut workers: Vec<Worker> = (0..3).map(|_| Worker::spawn(&db, &FAST)).collect();
    let (mut holder, mut epoch) = new_holder(&client, 0, Duration::from_secs(20)).await;
    let mut failovers = Vec::new();
    let mut seed = 0x2545_f491_u64;
    for kill in 0..20 {
        // A random moment of the holder's work: 50–450 ms after it took the lease.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(50 + seed % 400)).await;
        let index = workers
            .iter()
            .position(|w| w.pid() == holder)
            .expect("the holder is one of the workers");
        let killed_at = Instant::now();
        workers[index].kill();
        workers.remove(index);
        // The replacement starts as a standby while the survivors race for the lease.
        workers.push(Worker::spawn(&db, &FAST));
        (holder, epoch) = new_holder(&client, epoch, Duration::from_secs(10)).await;
        failovers.push(killed_at.elapsed().as_millis());
        println!(
            "kill {kill}: failover_ms={} new epoch {epoch}",
            failovers[kill]
        );
    }
    stop.store(true, Ordering::SeqCst);
    let appended = appending.await.expect("appender");
    assert_exactly_once(&client, appended).await;
    watching.await.expect("watcher");
    let backwards = backwards.lock().expect("lock").clone();
    assert!(
        backwards.is_empty(),
        "the checkpoint moved backwards: {backwards:?}"
    );
    println!(
        "fleet: 20 kills, {appended} events, failover_ms median={} max={} (ttl 1 s), {:.1} s",
        median(&mut failovers.clone()),
        failovers.iter().max().expect("kills"),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_paused_past_its_lease_is_fenced_when_it_resumes() {
    let db = fresh_database().await;
    let store = Arc::new(db.event_store().await);
    db.checkpoint_storage().await;
    let client = db.client().await;
    let stop = Arc::new(AtomicBool::new(false));
    // 50 events a second, and handlers of 5 ms: the holder keeps up, and has a transaction
    // open most of the time.
    let appending = appender(store.clone(), stop.clone(), Duration::from_millis(100));
    let (watching, backwards) = position_watcher(&db, stop.clone());
    let env = [FAST[0], FAST[1], FAST[2], ("FLEET_SLOW_MS", "5")];
    let workers: Vec<Worker> = (0..2).map(|_| Worker::spawn(&db, &env)).collect();
    let (holder, epoch) = new_holder(&client, 0, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let paused = workers
        .iter()
        .find(|w| w.pid() == holder)
        .expect("the holder is a worker");
    paused.signal("-STOP");
    let (standby, new_epoch) = new_holder(&client, epoch, Duration::from_secs(10)).await;
    assert_ne!(standby, holder, "the paused process cannot renew its lease");
    // The new holder works for a while, then the paused one resumes and tries to commit.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    paused.signal("-CONT");
    let deadline = Instant::now() + Duration::from_secs(15);
    while paused.fenced.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the resumed process's commit was never fenced"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("the resumed process (epoch {epoch}) was fenced; the lease is at epoch {new_epoch}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let appended = appending.await.expect("appender");
    assert_exactly_once(&client, appended).await;
    watching.await.expect("watcher");
    let backwards = backwards.lock().expect("lock").clone();
    assert!(
        backwards.is_empty(),
        "the checkpoint moved backwards: {backwards:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_after_a_kill_takes_at_most_the_lease_with_default_settings() {
    let db = fresh_database().await;
    let store = Arc::new(db.event_store().await);
    db.checkpoint_storage().await;
    let client = db.client().await;
    let stop = Arc::new(AtomicBool::new(false));
    let appending = appender(store.clone(), stop.clone(), Duration::from_millis(15));
    let mut workers: Vec<Worker> = (0..2).map(|_| Worker::spawn(&db, &[])).collect();
    let (mut holder, mut epoch) = new_holder(&client, 0, Duration::from_secs(20)).await;
    let mut failovers = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let index = workers
            .iter()
            .position(|w| w.pid() == holder)
            .expect("the holder is a worker");
        let killed_at = Instant::now();
        workers[index].kill();
        workers.remove(index);
        workers.push(Worker::spawn(&db, &[]));
        (holder, epoch) = new_holder(&client, epoch, Duration::from_secs(15)).await;
        failovers.push(killed_at.elapsed().as_millis());
    }
    stop.store(true, Ordering::SeqCst);
    let appended = appending.await.expect("appender");
    assert_exactly_once(&client, appended).await;
    println!(
        "failover_ms={} (median of {:?}; defaults: ttl 3 s, heartbeat 1 s, poll 500 ms; target <= 5000)",
        median(&mut failovers.clone()),
        failovers
    );
}
