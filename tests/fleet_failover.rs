//! Many replicas of one projection model (whole, or split into 4 segments), one writer at a time
//! (per segment): real worker processes
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

/// Records the position of `model`'s checkpoints (the whole model's, or each segment's) every
/// few milliseconds; every time one moved backwards.
fn position_watcher(
    db: &TestDatabase,
    model: &'static str,
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
        let mut last = std::collections::HashMap::<String, i64>::new();
        while !stop.load(Ordering::SeqCst) {
            let rows = client
                .query(
                    "SELECT namespace, position::bigint FROM krescent_checkpoints WHERE namespace = $1 OR starts_with(namespace, $1 || '#')",
                    &[&model],
                )
                .await
                .expect("read the checkpoints");
            for row in rows {
                let position: i64 = row.get(1);
                let last = last.entry(row.get(0)).or_default();
                if position < *last {
                    seen.lock().expect("lock").push((*last, position));
                }
                *last = (*last).max(position);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (task, backwards)
}

/// Waits until `table` has a row per event (rows commit only with a checkpoint), then compares
/// it with a clean replay of the events table: every event exactly once, with its own data.
async fn assert_exactly_once(client: &tokio_postgres::Client, appended: u64, table: &str) {
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
        let rows: i64 = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .expect("count")
            .get(0);
        if rows >= head {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{table} stayed at {rows} rows, head {head}"
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
            &format!("SELECT position, stream_id, n FROM {table} ORDER BY position, n"),
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

/// The next pause of a kill loop, 50–450 ms, from the xorshift state `seed`.
fn random_pause(seed: &mut u64) -> Duration {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    Duration::from_millis(50 + *seed % 400)
}

/// Stops the appends and the watcher, then checks that `table` equals a clean replay and that no
/// checkpoint moved backwards; the number of events appended.
async fn finish(
    client: &tokio_postgres::Client,
    table: &str,
    stop: &AtomicBool,
    appending: tokio::task::JoinHandle<u64>,
    watching: tokio::task::JoinHandle<()>,
    backwards: &Backwards,
) -> u64 {
    stop.store(true, Ordering::SeqCst);
    let appended = appending.await.expect("appender");
    assert_exactly_once(client, appended, table).await;
    watching.await.expect("watcher");
    let backwards = backwards.lock().expect("lock").clone();
    assert!(
        backwards.is_empty(),
        "a checkpoint moved backwards: {backwards:?}"
    );
    appended
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
    let (watching, backwards) = position_watcher(&db, "fleet.projected", stop.clone());
    let mut workers: Vec<Worker> = (0..3).map(|_| Worker::spawn(&db, &FAST)).collect();
    let (mut holder, mut epoch) = new_holder(&client, 0, Duration::from_secs(20)).await;
    let mut failovers = Vec::new();
    let mut seed = 0x2545_f491_u64;
    for kill in 0..20 {
        // A random moment of the holder's work: 50–450 ms after it took the lease.
        tokio::time::sleep(random_pause(&mut seed)).await;
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
    let appended = finish(&client, "projected", &stop, appending, watching, &backwards).await;
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
    let (watching, backwards) = position_watcher(&db, "fleet.projected", stop.clone());
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
    finish(&client, "projected", &stop, appending, watching, &backwards).await;
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
    assert_exactly_once(&client, appended, "projected").await;
    println!(
        "failover_ms={} (median of {:?}; defaults: ttl 3 s, heartbeat 1 s, poll 500 ms; target <= 5000)",
        median(&mut failovers.clone()),
        failovers
    );
}

/// The segments each live worker says it processes, and whether the 4 are all held, each by
/// one worker.
fn held_segments(workers: &[Worker]) -> (Vec<Vec<u32>>, bool) {
    let held: Vec<Vec<u32>> = workers
        .iter()
        .map(|w| w.segments.lock().expect("lock").clone().unwrap_or_default())
        .collect();
    let mut all: Vec<u32> = held.iter().flatten().copied().collect();
    all.sort_unstable();
    let complete = all == [0, 1, 2, 3];
    (held, complete)
}

/// Waits until the 4 segments are held by `workers`, each by one.
async fn all_segments_held(workers: &[Worker], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (held, complete) = held_segments(workers);
        if complete {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the segments stayed {held:?} for {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Checks that every row of `segmented` was projected by the segment its stream hashes to.
async fn assert_projected_by_their_segments(client: &tokio_postgres::Client) {
    let rows = client
        .query("SELECT stream_id, segment FROM segmented", &[])
        .await
        .expect("rows");
    for row in rows {
        let (stream, segment): (String, i64) = (row.get(0), row.get(1));
        let expected = krescent::fleet::Segment::of(&stream, 4).index();
        assert_eq!(segment, i64::from(expected), "`{stream}`");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kills_and_a_pause_of_segment_workers_lose_and_double_nothing() {
    let started = Instant::now();
    let db = fresh_database().await;
    let store = Arc::new(db.event_store().await);
    db.checkpoint_storage().await;
    let client = db.client().await;
    let stop = Arc::new(AtomicBool::new(false));
    let appending = appender(store.clone(), stop.clone(), Duration::from_millis(25));
    let (watching, backwards) = position_watcher(&db, "fleet.segmented", stop.clone());
    let env = [
        FAST[0],
        FAST[1],
        FAST[2],
        ("FLEET_SEGMENTS", "1"),
        ("FLEET_SLOW_MS", "2"),
    ];
    let mut workers: Vec<Worker> = (0..3).map(|_| Worker::spawn(&db, &env)).collect();
    all_segments_held(&workers, Duration::from_secs(20)).await;
    let mut failovers = Vec::new();
    let mut seed = 0x9e37_79b9_u64;
    for kill in 0..20 {
        tokio::time::sleep(random_pause(&mut seed)).await;
        // A random worker that processes at least one segment.
        let (held, _) = held_segments(&workers);
        let busy: Vec<usize> = (0..workers.len())
            .filter(|&i| !held[i].is_empty())
            .collect();
        let index = busy[usize::try_from(seed).expect("64-bit") % busy.len()];
        let killed_at = Instant::now();
        workers[index].kill();
        workers.remove(index);
        workers.push(Worker::spawn(&db, &env));
        all_segments_held(&workers, Duration::from_secs(10)).await;
        failovers.push(killed_at.elapsed().as_millis());
        println!(
            "kill {kill}: segments held again after {} ms: {:?}",
            failovers[kill],
            held_segments(&workers).0
        );
    }
    // A worker paused past its leases, resumed once the others hold its segments.
    let (held, _) = held_segments(&workers);
    let index = (0..workers.len())
        .find(|&i| !held[i].is_empty())
        .expect("a busy worker");
    let paused = workers.remove(index);
    paused.signal("-STOP");
    all_segments_held(&workers, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    paused.signal("-CONT");
    let deadline = Instant::now() + Duration::from_secs(15);
    while paused.fenced.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the resumed worker's commits were never fenced"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    workers.push(paused);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let appended = finish(&client, "segmented", &stop, appending, watching, &backwards).await;
    assert_projected_by_their_segments(&client).await;
    println!(
        "segments: 20 kills and a pause, {appended} events, segments held again after ms median={} max={} (ttl 1 s), {:.1} s",
        median(&mut failovers.clone()),
        failovers.iter().max().expect("kills"),
        started.elapsed().as_secs_f64()
    );
}
