//! Many replicas of one projection model (whole, or split into 4 or 8 segments), one writer at a time
//! (per segment): real worker processes
//! (`src/bin/fleet_worker.rs`) against a real PostgreSQL server, the holder killed (`SIGKILL`) at
//! random moments or stopped (`SIGSTOP`) past its lease, while events are appended. The projected table must
//! equal a clean replay (one row per event, with the event's data), the checkpoint position
//! must never move backwards, and a paused holder's commits after its resumption must be fenced.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "fleet/worker.rs"]
mod worker;
use krescent::tokio_postgres;
use krescent_testkit::postgres::{fresh_database, TestDatabase};
use worker::Worker;

#[path = "fleet/ticks.rs"]
mod ticks;
use ticks::appender;

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

/// What the fleet looks like, for a failure's message: every lease (holder, epoch, live or
/// not) and every checkpoint's position.
async fn fleet_state(client: &tokio_postgres::Client) -> String {
    let leases = client
        .query(
            "SELECT namespace, holder, epoch, expires_at > clock_timestamp() FROM krescent_leases ORDER BY namespace",
            &[],
        )
        .await
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    let (namespace, holder, epoch, live): (String, String, i64, bool) =
                        (r.get(0), r.get(1), r.get(2), r.get(3));
                    format!("{namespace} {holder} epoch {epoch} live {live}")
                })
                .collect::<Vec<_>>()
        });
    let checkpoints = client
        .query(
            "SELECT namespace, position::text FROM krescent_checkpoints ORDER BY namespace",
            &[],
        )
        .await
        .map(|rows| {
            rows.iter()
                .map(|r| format!("{} at {}", r.get::<_, String>(0), r.get::<_, String>(1)))
                .collect::<Vec<_>>()
        });
    format!("leases: {leases:?}; checkpoints: {checkpoints:?}")
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
            "{table} stayed at {rows} rows, head {head}; {}",
            fleet_state(client).await
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
    if table == "projected" {
        // The shared row every commit locks counts every event once too.
        let counted: i64 = client
            .query_one("SELECT events FROM counted WHERE id = 1", &[])
            .await
            .expect("the count")
            .get(0);
        assert_eq!(counted, head, "the counter row counts every event once");
    }
}

/// The position of the model's checkpoint (0 without one).
async fn checkpoint_position(client: &tokio_postgres::Client, model: &str) -> i64 {
    client
        .query_opt(
            "SELECT position::bigint FROM krescent_checkpoints WHERE namespace = $1",
            &[&model],
        )
        .await
        .expect("read the checkpoint")
        .map_or(0, |row| row.get(0))
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

/// Acceptance 2 of queued writes: a holder paused in the middle of a batch (its handlers slow,
/// every commit locking the one counter row) for three times the lease's ttl holds back
/// neither the takeover nor the new holder's first commit past ttl + 2 s (its queued writes
/// are not sent yet, or its transaction is ended by the server after the ttl); resumed, its
/// commit is fenced, and every event is projected and counted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_paused_mid_batch_for_three_ttls_is_fenced_and_holds_back_no_commit() {
    const TTL: Duration = Duration::from_secs(1);
    let db = fresh_database().await;
    let store = Arc::new(db.event_store().await);
    db.checkpoint_storage().await;
    let client = db.client().await;
    let stop = Arc::new(AtomicBool::new(false));
    // 50 events a second, and handlers of 5 ms: the holder keeps up, and is in the middle of
    // a batch most of the time.
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
    let paused_at = Instant::now();
    // A commit whose `COMMIT` was on its way lands now; the paused process commits no more.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = checkpoint_position(&client, "fleet.projected").await;
    let (standby, new_epoch) = new_holder(&client, epoch, Duration::from_secs(10)).await;
    assert_ne!(standby, holder, "the paused process cannot renew its lease");
    while checkpoint_position(&client, "fleet.projected").await <= before {
        assert!(
            paused_at.elapsed() < Duration::from_secs(15),
            "the new holder never committed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first_commit = paused_at.elapsed();
    println!(
        "paused_failover_ms={} (ttl {} ms): the new holder's first checkpoint after the pause",
        first_commit.as_millis(),
        TTL.as_millis()
    );
    assert!(
        first_commit <= TTL + Duration::from_secs(2),
        "the new holder's first commit took {first_commit:?} after the pause"
    );
    tokio::time::sleep((TTL * 3).saturating_sub(paused_at.elapsed())).await;
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

/// The segments each live worker says it processes, and whether the `count` are all held,
/// each by one worker.
fn held_segments(workers: &[Worker], count: u32) -> (Vec<Vec<u32>>, bool) {
    let held: Vec<Vec<u32>> = workers
        .iter()
        .map(|w| w.segments.lock().expect("lock").clone().unwrap_or_default())
        .collect();
    let mut all: Vec<u32> = held.iter().flatten().copied().collect();
    all.sort_unstable();
    let complete = all == (0..count).collect::<Vec<u32>>();
    (held, complete)
}

/// Waits until the `count` segments are held by `workers`, each by one.
async fn all_segments_held(workers: &[Worker], count: u32, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (held, complete) = held_segments(workers, count);
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

/// Checks that every row of `table` was projected by the segment of `count` its stream hashes
/// to.
async fn assert_projected_by_their_segments(
    client: &tokio_postgres::Client,
    table: &str,
    count: u32,
) {
    let rows = client
        .query(&format!("SELECT stream_id, segment FROM {table}"), &[])
        .await
        .expect("rows");
    for row in rows {
        let (stream, segment): (String, i64) = (row.get(0), row.get(1));
        let expected = krescent::fleet::Segment::of(&stream, count).index();
        assert_eq!(segment, i64::from(expected), "`{stream}`");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kills_and_a_pause_of_segment_workers_lose_and_double_nothing() {
    kills_and_a_pause_of_segment_workers(4, 20).await;
}

/// Three workers share 8 segments, each reading only its segments' events (filtered by the
/// server): SIGKILLs and a SIGSTOP past the lease while events are appended, every event
/// exactly once, by its segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_segments_over_three_workers_lose_and_double_nothing() {
    kills_and_a_pause_of_segment_workers(8, 5).await;
}

/// Three workers run the model split into `count` (4: `fleet.segmented`, 8:
/// `fleet.segmented8`); `kills` times a busy one is killed and replaced, then one is paused
/// past its leases and resumed, while events are appended.
async fn kills_and_a_pause_of_segment_workers(count: u32, kills: usize) {
    let (model, table, segments) = match count {
        4 => ("fleet.segmented", "segmented", "4"),
        _ => ("fleet.segmented8", "segmented8", "8"),
    };
    let started = Instant::now();
    let db = fresh_database().await;
    let store = Arc::new(db.event_store().await);
    db.checkpoint_storage().await;
    let client = db.client().await;
    let stop = Arc::new(AtomicBool::new(false));
    let appending = appender(store.clone(), stop.clone(), Duration::from_millis(25));
    let (watching, backwards) = position_watcher(&db, model, stop.clone());
    let env = [
        FAST[0],
        FAST[1],
        FAST[2],
        ("FLEET_SEGMENTS", segments),
        ("FLEET_SLOW_MS", "2"),
    ];
    let mut workers: Vec<Worker> = (0..3).map(|_| Worker::spawn(&db, &env)).collect();
    all_segments_held(&workers, count, Duration::from_secs(20)).await;
    let mut failovers = Vec::new();
    let mut seed = 0x9e37_79b9_u64;
    for kill in 0..kills {
        tokio::time::sleep(random_pause(&mut seed)).await;
        // A random worker that processes at least one segment.
        let (held, _) = held_segments(&workers, count);
        let busy: Vec<usize> = (0..workers.len())
            .filter(|&i| !held[i].is_empty())
            .collect();
        let index = busy[usize::try_from(seed).expect("64-bit") % busy.len()];
        let killed_at = Instant::now();
        workers[index].kill();
        workers.remove(index);
        workers.push(Worker::spawn(&db, &env));
        all_segments_held(&workers, count, Duration::from_secs(10)).await;
        failovers.push(killed_at.elapsed().as_millis());
        println!(
            "kill {kill}: segments held again after {} ms: {:?}",
            failovers[kill],
            held_segments(&workers, count).0
        );
    }
    // A worker paused past its leases, resumed once the others hold its segments.
    let (held, _) = held_segments(&workers, count);
    let index = (0..workers.len())
        .find(|&i| !held[i].is_empty())
        .expect("a busy worker");
    let paused = workers.remove(index);
    paused.signal("-STOP");
    all_segments_held(&workers, count, Duration::from_secs(10)).await;
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
    let appended = finish(&client, table, &stop, appending, watching, &backwards).await;
    assert_projected_by_their_segments(&client, table, count).await;
    println!(
        "{count} segments: {kills} kills and a pause, {appended} events, segments held again after ms median={} max={} (ttl 1 s), {:.1} s",
        median(&mut failovers.clone()),
        failovers.iter().max().expect("kills"),
        started.elapsed().as_secs_f64()
    );
}

/// A rolling deploy that changes the segment count from 4 to 8: two workers of the old count
/// run while events are appended; two of the new count start while they still run, and wait
/// (no lease of a count is taken while one of another count is live). The old count goes:
/// one worker killed (the other takes all 4 segments), the other paused past its leases (the
/// new count takes over from the old checkpoints and fences them) and resumed, then killed.
/// Both counts never commit at once: every row of the old count was written before every row
/// of the new one, and every event is projected exactly once, by its segment of the count
/// that projected it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_deploy_from_four_to_eight_segments_never_commits_both_counts() {
    let started = Instant::now();
    let db = fresh_database().await;
    let store = Arc::new(db.event_store().await);
    db.checkpoint_storage().await;
    let client = db.client().await;
    let stop = Arc::new(AtomicBool::new(false));
    let appending = appender(store.clone(), stop.clone(), Duration::from_millis(25));
    let env = |count| {
        [
            FAST[0],
            FAST[1],
            FAST[2],
            ("FLEET_RESCALE", count),
            ("FLEET_SLOW_MS", "2"),
        ]
    };
    let mut old: Vec<Worker> = (0..2).map(|_| Worker::spawn(&db, &env("4"))).collect();
    all_segments_held(&old, 4, Duration::from_secs(20)).await;
    println!("old held at {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let new: Vec<Worker> = (0..2).map(|_| Worker::spawn(&db, &env("8"))).collect();
    let deployed: std::time::SystemTime = client
        .query_one("SELECT clock_timestamp()", &[])
        .await
        .expect("the server's clock")
        .get(0);
    // Both counts' workers run for 2 s: the new ones wait, the old ones go on committing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (waiting, _) = held_segments(&new, 8);
    assert!(
        waiting.iter().all(Vec::is_empty),
        "the new count ran beside the old one: {waiting:?}"
    );
    let counts = client
        .query_one(
            "SELECT count(*) FILTER (WHERE layout = 4 AND at > $1), count(*) FILTER (WHERE layout = 8) FROM rescaled",
            &[&deployed],
        )
        .await
        .expect("rows by count");
    let (old_rows, new_rows): (i64, i64) = (counts.get(0), counts.get(1));
    println!("while both counts ran: {old_rows} rows of 4 segments, {new_rows} of 8");
    assert!(
        old_rows > 0,
        "the old count stopped when the new one started"
    );
    assert_eq!(new_rows, 0);
    // The old count goes, one worker at a time; the last is paused past its leases.
    old[0].kill();
    println!("killed at {:?}", started.elapsed());
    all_segments_held(&old[1..], 4, Duration::from_secs(10)).await;
    println!("one old holds all at {:?}", started.elapsed());
    let handed_over = Instant::now();
    old[1].signal("-STOP");
    all_segments_held(&new, 8, Duration::from_secs(15)).await;
    println!(
        "the new count holds every segment {} ms after the last old worker paused (ttl 1 s)",
        handed_over.elapsed().as_millis()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    old[1].signal("-CONT");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    println!(
        "the resumed old worker was fenced {} times",
        old[1].fenced.load(Ordering::SeqCst)
    );
    let (resumed, _) = held_segments(&old[1..], 4);
    assert!(
        resumed.iter().all(Vec::is_empty),
        "the resumed old worker runs segments again: {resumed:?}"
    );
    old[1].kill();
    stop.store(true, Ordering::SeqCst);
    let appended = appending.await.expect("appender");
    println!("appending stopped at {:?}", started.elapsed());
    assert_exactly_once(&client, appended, "rescaled").await;
    println!("exactly once at {:?}", started.elapsed());
    let order = client
        .query_one(
            "SELECT max(at) FILTER (WHERE layout = 4) < min(at) FILTER (WHERE layout = 8),
                    count(*) FILTER (WHERE layout = 4), count(*) FILTER (WHERE layout = 8)
             FROM rescaled",
            &[],
        )
        .await
        .expect("order of the counts");
    let (ordered, by_old, by_new): (bool, i64, i64) = (order.get(0), order.get(1), order.get(2));
    assert!(ordered, "a row of 4 segments was written after one of 8");
    let rows = client
        .query("SELECT stream_id, segment, layout FROM rescaled", &[])
        .await
        .expect("rows");
    for row in rows {
        let (stream, segment, layout): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
        let count = u32::try_from(layout).expect("a count");
        let expected = krescent::fleet::Segment::of(&stream, count).index();
        assert_eq!(segment, i64::from(expected), "`{stream}` in {count}");
    }
    println!(
        "rolling deploy 4 -> 8: {appended} events, {by_old} projected by 4 segments then {by_new} by 8, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
