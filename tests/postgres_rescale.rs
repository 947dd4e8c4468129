//! Rescaling a split projection under load: 4 segments, stopped and restarted as 8, then as 2,
//! while events keep arriving. The new count continues from the old count's checkpoints (no
//! segment replays from the start), every event is applied exactly once, and the table equals
//! a clean replay by the unsplit model. Also: a model whose checkpoint holds state in memory
//! is rebuilt instead, and a segment count waits while another count's leases are live.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use krescent::checkpoint::{CheckpointStorage as _, PostgresCheckpointStorage};
use krescent::fleet::{Handover, LeaseConfig, Segment};
use krescent::prelude::*;
use krescent::projection::{PostgresProjection, ProjectionError};
use krescent::store::PostgresEventStore;
use krescent::Krescent;
use krescent_testkit::postgres::fresh_database;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "rescale.tick")]
struct Tick {
    n: u64,
}

/// The model's name in every count: the same model, split differently.
const NAME: &str = "rescale.ticks";

/// Why a tick was not applied: the events of `poison` streams with a round `n` fail.
#[derive(Debug, thiserror::Error)]
enum TickError {
    #[error("tick {0} is poison")]
    Poison(u64),
    #[error(transparent)]
    Projection(#[from] ProjectionError),
}

/// One row per applied event, with the layout and segment that applied it (no unique key: an
/// event applied twice shows as two rows).
fn projection(storage: &PostgresCheckpointStorage, table: &str) -> (PostgresProjection, String) {
    let projection = PostgresProjection::new(storage, 1)
        .table(
            table,
            "CREATE TABLE {table} (position bigint NOT NULL, stream_id text NOT NULL, n bigint NOT NULL, segment text NOT NULL)",
        )
        .expect("a valid table");
    let name = projection.name_of(table).expect("declared").to_owned();
    let insert =
        format!("INSERT INTO {name} (position, stream_id, n, segment) VALUES ($1, $2, $3, $4)");
    (projection, insert)
}

async fn project(
    table: &mut PostgresProjection,
    insert: &str,
    segment: &str,
    e: &Tick,
    meta: &EventMeta,
) -> Result<(), ProjectionError> {
    let position = i64::try_from(meta.position.get()).expect("small");
    let n = i64::try_from(e.n).expect("small");
    let stream: &str = &meta.stream_id;
    table
        .queue(insert, &[&position, &stream, &n, &segment])
        .await
}

/// The model in `$count` segments (and the unsplit clean replay), all projecting `Tick`s;
/// with a `$field`, it also counts its events in memory, in a `#[checkpoint]` field.
macro_rules! layout {
    ($model:ident, $name:literal, $count:literal, $table:literal $(, $field:ident)?) => {
        #[derive(EventModel)]
        #[model(name = $name, segments = $count)]
        #[checkpoint(strategy = "fixed_events(10)", storage = "postgres")]
        struct $model {
            #[checkpoint(support)]
            table: PostgresProjection,
            $(#[checkpoint] $field: u64,)?
            insert: String,
            segment: String,
        }

        #[krescent::handlers]
        impl $model {
            async fn tick(&mut self, e: &Tick, meta: &EventMeta) -> Result<(), TickError> {
                if meta.stream_id.starts_with("poison") && e.n % 10 == 0 {
                    return Err(TickError::Poison(e.n));
                }
                $(self.$field += 1;)?
                Ok(project(&mut self.table, &self.insert, &self.segment, e, meta).await?)
            }
        }

        impl $model {
            fn new(storage: &PostgresCheckpointStorage, segment: Segment) -> Self {
                let (table, insert) = projection(storage, $table);
                $model {
                    table,
                    $($field: 0,)?
                    insert,
                    segment: segment.to_string(),
                }
            }
        }
    };
}

layout!(Ticks4, "rescale.ticks", 4, "rescale_rows");
layout!(Ticks8, "rescale.ticks", 8, "rescale_rows");
layout!(Ticks2, "rescale.ticks", 2, "rescale_rows");
layout!(Ticks1, "rescale.ticks", 1, "rescale_rows");
layout!(Clean, "rescale.clean", 1, "rescale_clean");
layout!(Counted2, "rescale.counted", 2, "rescale_counted", counted);
layout!(Counted4, "rescale.counted", 4, "rescale_counted", counted);
layout!(Parked2, "rescale.parked", 2, "rescale_parked");
layout!(Parked4, "rescale.parked", 4, "rescale_parked");

const FAST: LeaseConfig = LeaseConfig {
    ttl: Duration::from_secs(1),
    heartbeat: Duration::from_millis(300),
    poll: Duration::from_millis(100),
};

/// Appends ticks over 24 streams, a few every few milliseconds, until `stop`; how many.
fn keep_appending(
    store: PostgresEventStore,
    stop: Arc<AtomicBool>,
    appended: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            append(&store, &appended, 3).await;
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
    })
}

async fn append(store: &PostgresEventStore, appended: &AtomicU64, count: u64) {
    for _ in 0..count {
        let n = appended.fetch_add(1, Ordering::SeqCst);
        let event = NewEvent::new(&Tick { n }).expect("encode");
        store
            .append(&format!("t-{}", n % 24), ExpectedVersion::Any, vec![event])
            .await
            .expect("append");
    }
}

/// Runs `$model`'s segments for `$for` while the appends go on, then stops them; each
/// segment's run (events processed, where it started).
macro_rules! run_layout {
    ($krescent:expr, $storage:expr, $model:ident, $for:expr) => {{
        let storage = $storage.clone();
        let running = $krescent.stream_segments(move |s| $model::new(&storage, s));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while running.held().len() < $model::SEGMENTS as usize {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the segments of {} did not all start",
                $model::SEGMENTS
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep($for).await;
        let ended = running.shutdown().await.expect("a clean stop");
        assert_eq!(ended.len(), $model::SEGMENTS as usize);
        ended
            .into_iter()
            .map(|(segment, c)| (segment, c.processed, c.origin.restored_from(), c.position))
            .collect::<Vec<_>>()
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_segments_rescale_to_eight_then_two_under_load() {
    let db = fresh_database().await;
    let store = db.event_store().await;
    let storage = db.checkpoint_storage().await;
    let mut krescent =
        Krescent::new(db.event_store().await).with_storage("postgres", storage.clone());
    krescent
        .configure::<Ticks4>()
        .lease(FAST)
        .expect("checkpointed");
    krescent
        .configure::<Ticks8>()
        .lease(FAST)
        .expect("checkpointed");
    krescent
        .configure::<Ticks2>()
        .lease(FAST)
        .expect("checkpointed");
    let appended = Arc::new(AtomicU64::new(0));
    append(&store, &appended, 200).await;
    let stop = Arc::new(AtomicBool::new(false));
    let appending = keep_appending(db.event_store().await, stop.clone(), appended.clone());

    let mut processed = 0;
    let four = run_layout!(krescent, storage, Ticks4, Duration::from_millis(800));
    report("4", &four, &mut processed);

    let eight = run_layout!(krescent, storage, Ticks8, Duration::from_millis(800));
    report("8", &eight, &mut processed);
    for (segment, _, restored, _) in &eight {
        // Both halves of old segment i start from its checkpoint.
        let (_, _, _, old) = four
            .iter()
            .find(|(s, ..)| s.index() == segment.index() % 4)
            .expect("the old segment");
        assert_eq!(*restored, Some(*old), "{segment} starts from {old}");
    }

    // Segment 0 of 8 runs on alone over more events, far ahead of the others: merged into
    // segment 0 of 2, what it processed must be skipped until the others catch up.
    append(&store, &appended, 150).await;
    let storage0 = storage.clone();
    let zero = Segment::new(0, 8).expect("a segment");
    let alone = krescent
        .for_segment(zero)
        .catch_up(Ticks8::new(&storage0, zero))
        .await
        .expect("segment 0 alone");
    println!(
        "segment {zero} alone: processed={} to {}",
        alone.processed, alone.position
    );
    processed += alone.processed;

    let two = run_layout!(krescent, storage, Ticks2, Duration::from_millis(800));
    report("2", &two, &mut processed);
    for (segment, _, restored, _) in &two {
        assert!(
            restored.is_some_and(|p| p > Position::START),
            "{segment} replayed from the start: {restored:?}"
        );
    }
    stop.store(true, Ordering::SeqCst);
    appending.await.expect("the appender");

    // The last events, by the 2-segment layout: then every event is in the table.
    let storage2 = storage.clone();
    let mut last = 0;
    for segment in Segment::all(2) {
        let caught_up = krescent
            .for_segment(segment)
            .catch_up(Ticks2::new(&storage2, segment))
            .await
            .expect("catch up");
        last += caught_up.processed;
    }
    println!("layout 2, catching up: processed={last}");
    processed += last;

    let total = appended.load(Ordering::SeqCst);
    assert_eq!(
        processed, total,
        "the segments of all layouts processed {processed} events of {total}: an event was applied twice or lost"
    );
    // Only the last layout's checkpoints are left, at the head.
    let head = store.head().await.expect("head");
    for count in [4u32, 8] {
        for segment in Segment::all(count) {
            let namespace = segment.namespace(NAME);
            assert!(
                storage.load(&namespace).await.expect("load").is_none(),
                "{namespace} was not deleted"
            );
        }
    }
    for segment in Segment::all(2) {
        let stored = storage
            .load(&segment.namespace(NAME))
            .await
            .expect("load")
            .expect("a checkpoint");
        assert_eq!(stored.position, head);
        assert!(!stored.bucket.contains(Handover::KEY), "passed at the head");
    }

    assert_equals_a_clean_replay(&db, &krescent, &storage, total).await;
}

/// Replays the whole log into a table of its own with the unsplit model, and checks that the
/// rescaled model's table holds the same rows, `total` of them.
async fn assert_equals_a_clean_replay(
    db: &krescent_testkit::postgres::TestDatabase,
    krescent: &Krescent<PostgresEventStore>,
    storage: &PostgresCheckpointStorage,
    total: u64,
) {
    // The clean replay, unsplit, into a table of its own.
    let clean = krescent
        .catch_up(Clean::new(storage, Segment::new(0, 1).expect("whole")))
        .await
        .expect("the clean replay");
    assert_eq!(clean.processed, total);
    let client = db.client().await;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM rescale_rows),
                    (SELECT count(*) FROM (SELECT position, stream_id, n FROM rescale_rows
                        EXCEPT ALL SELECT position, stream_id, n FROM rescale_clean) extra),
                    (SELECT count(*) FROM (SELECT position, stream_id, n FROM rescale_clean
                        EXCEPT ALL SELECT position, stream_id, n FROM rescale_rows) missing)",
            &[],
        )
        .await
        .expect("compare");
    let (rows, extra, missing): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    println!("rows={rows} events={total} extra={extra} missing={missing}");
    assert_eq!(
        (extra, missing),
        (0, 0),
        "the table differs from a clean replay"
    );
    assert_eq!(u64::try_from(rows).expect("a count"), total);
}

/// Prints what each segment of a layout processed, adds it to `processed`.
fn report(layout: &str, ended: &[(Segment, u64, Option<Position>, Position)], processed: &mut u64) {
    for (segment, count, restored, position) in ended {
        println!(
            "layout {layout}: segment {segment} processed={count} started_after={} ended_at={position}",
            restored.unwrap_or(Position::START)
        );
        *processed += count;
    }
}

/// Catches every segment of `$model` up by hand, one after the other; each segment's events
/// processed and where it started.
macro_rules! catch_up_each {
    ($krescent:expr, $storage:expr, $model:ident) => {{
        let mut ended = Vec::new();
        for segment in Segment::all($model::SEGMENTS) {
            let caught_up = $krescent
                .for_segment(segment)
                .catch_up($model::new(&$storage, segment))
                .await
                .expect("catch up");
            ended.push((segment, caught_up));
        }
        ended
    }};
}

/// Counts the rows of `table` and the events applied more than once (or never).
async fn once_each(client: &krescent::tokio_postgres::Client, table: &str) -> (i64, i64) {
    let row = client
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM {table}),
                        (SELECT count(*) FROM krescent_events e
                         WHERE (SELECT count(*) FROM {table} r WHERE r.position = e.position) <> 1)"
            ),
            &[],
        )
        .await
        .expect("count");
    (row.get(0), row.get(1))
}

/// 4 segments, then the whole model (a rebuild: the segments' checkpoints go), then 4 again:
/// they split the whole model's checkpoint, and only the new events are processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_model_rebuilds_and_splits_again() {
    let db = fresh_database().await;
    let store = db.event_store().await;
    let storage = db.checkpoint_storage().await;
    let krescent = Krescent::new(db.event_store().await).with_storage("postgres", storage.clone());
    let appended = AtomicU64::new(0);
    append(&store, &appended, 120).await;
    let four = catch_up_each!(krescent, storage, Ticks4);
    assert_eq!(four.iter().map(|(_, c)| c.processed).sum::<u64>(), 120);
    append(&store, &appended, 30).await;
    let whole = krescent
        .catch_up(Ticks1::new(&storage, Segment::new(0, 1).expect("whole")))
        .await
        .expect("the whole model");
    assert_eq!(whole.origin, krescent::Origin::Scratch);
    assert_eq!(whole.processed, 150, "the whole model rebuilds");
    for segment in Segment::all(4) {
        let namespace = segment.namespace("rescale.ticks");
        assert!(
            storage.load(&namespace).await.expect("load").is_none(),
            "{namespace}"
        );
    }
    append(&store, &appended, 40).await;
    let again = catch_up_each!(krescent, storage, Ticks4);
    for (segment, caught_up) in &again {
        assert_eq!(
            caught_up.origin.restored_from(),
            Some(Position::new(150)),
            "{segment} starts from the whole model's checkpoint"
        );
    }
    assert_eq!(again.iter().map(|(_, c)| c.processed).sum::<u64>(), 40);
    assert!(storage.load("rescale.ticks").await.expect("load").is_none());
    let client = db.client().await;
    assert_eq!(once_each(&client, "rescale_rows").await, (190, 0));
}

/// A model whose checkpoint holds state in memory (a `#[checkpoint]` count) cannot be split or
/// merged: from 2 segments to 4, it is rebuilt, every segment from the start, and the tables
/// and the counts in memory again hold every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_in_memory_is_rebuilt_when_the_count_changes() {
    let db = fresh_database().await;
    let store = db.event_store().await;
    let storage = db.checkpoint_storage().await;
    let krescent = Krescent::new(db.event_store().await).with_storage("postgres", storage.clone());
    let appended = AtomicU64::new(0);
    append(&store, &appended, 100).await;
    let two = catch_up_each!(krescent, storage, Counted2);
    assert_eq!(two.iter().map(|(_, c)| c.model.counted).sum::<u64>(), 100);
    append(&store, &appended, 50).await;
    let four = catch_up_each!(krescent, storage, Counted4);
    for (segment, caught_up) in &four {
        assert_eq!(caught_up.origin.restored_from(), None, "{segment} rebuilds");
    }
    assert_eq!(four.iter().map(|(_, c)| c.model.counted).sum::<u64>(), 150);
    for segment in Segment::all(2) {
        let namespace = segment.namespace("rescale.counted");
        assert!(
            storage.load(&namespace).await.expect("load").is_none(),
            "{namespace}"
        );
    }
    let client = db.client().await;
    assert_eq!(once_each(&client, "rescale_counted").await, (150, 0));
}

/// The events parked by the segments of 2 move to the segment of 4 their stream is in, and
/// the later events of their streams are parked behind them there, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_events_move_with_their_streams() {
    let db = fresh_database().await;
    let store = db.event_store().await;
    let storage = db.checkpoint_storage().await;
    let mut krescent =
        Krescent::new(db.event_store().await).with_storage("postgres", storage.clone());
    krescent
        .configure::<Parked2>()
        .on_error("park")
        .expect("a policy");
    krescent
        .configure::<Parked4>()
        .on_error("park")
        .expect("a policy");
    let mut n = 0;
    let mut appended = 0;
    for _ in 0..2 {
        for _ in 0..30 {
            let event = NewEvent::new(&Tick { n }).expect("encode");
            let stream = if n % 3 == 0 {
                format!("poison-{}", n % 6)
            } else {
                format!("t-{}", n % 5)
            };
            store
                .append(&stream, ExpectedVersion::Any, vec![event])
                .await
                .expect("append");
            n += 1;
            appended += 1;
        }
        if appended == 30 {
            catch_up_each!(krescent, storage, Parked2);
        }
    }
    let before: Vec<_> = Segment::all(2)
        .map(|s| s.namespace("rescale.parked"))
        .collect();
    let mut parked_before = 0;
    for namespace in &before {
        parked_before += storage.parked(namespace).await.expect("parked").len();
    }
    assert!(parked_before > 0, "events were parked");
    let four = catch_up_each!(krescent, storage, Parked4);
    for namespace in &before {
        assert!(
            storage.parked(namespace).await.expect("parked").is_empty(),
            "{namespace}"
        );
    }
    let mut parked = 0;
    for segment in Segment::all(4) {
        for event in storage
            .parked(&segment.namespace("rescale.parked"))
            .await
            .expect("parked")
        {
            assert_eq!(Segment::of(&event.stream_id, 4), segment, "{event:?}");
            parked += 1;
        }
    }
    let applied: u64 = four.iter().map(|(_, c)| c.processed).sum();
    println!("parked before={parked_before} after={parked} applied after the rescale={applied}");
    let client = db.client().await;
    let (rows, _) = once_each(&client, "rescale_parked").await;
    assert_eq!(
        u64::try_from(rows).expect("a count") + u64::try_from(parked).expect("a count"),
        appended,
        "every event applied once or parked"
    );
    let doubled: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT position FROM rescale_parked GROUP BY position HAVING count(*) > 1) d",
            &[],
        )
        .await
        .expect("doubles")
        .get(0);
    assert_eq!(doubled, 0);
    let behind: i64 = client
        .query_one(
            "SELECT count(*) FROM rescale_parked WHERE stream_id = 'poison-0'",
            &[],
        )
        .await
        .expect("applied behind a parked event")
        .get(0);
    assert_eq!(
        behind, 0,
        "an event of `poison-0` was applied behind its parked event"
    );
}

/// A process cut off (paused, its network gone) right after it took the model's layout lock,
/// in the middle of taking a lease: the server ends its session once it has been idle in that
/// transaction for the lease's ttl, so the lock does not keep every other instance of the model
/// from ever taking its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taker_cut_off_holding_the_layout_lock_holds_no_one_back_past_the_ttl() {
    let db = fresh_database().await;
    // Migrated directly: the migration's own advisory lock must not be the one cut off.
    let storage = db.checkpoint_storage().await;
    let dir = tempfile::tempdir().expect("a socket directory");
    let frozen = freezing_proxy(db.url(), dir.path(), "pg_advisory_xact_lock");
    let proxied = db.url().replace(
        &format!("host={} ", db_host(db.url())),
        &format!("host={} ", dir.path().display()),
    );
    let cut_off_store = PostgresEventStore::connect(&proxied)
        .await
        .expect("connect");
    let cut_off_storage = cut_off_store.checkpoint_storage();
    let mut cut_off =
        Krescent::new(cut_off_store).with_storage("postgres", cut_off_storage.clone());
    cut_off.configure::<Ticks1>().lease(FAST).expect("leased");
    let whole = Segment::new(0, 1).expect("whole");
    let stuck = cut_off.stream(Ticks1::new(&cut_off_storage, whole));
    tokio::time::timeout(Duration::from_secs(30), frozen.notified())
        .await
        .expect("the first instance took the layout lock and was cut off");

    let mut krescent =
        Krescent::new(db.event_store().await).with_storage("postgres", storage.clone());
    krescent.configure::<Ticks1>().lease(FAST).expect("leased");
    let running = krescent.stream(Ticks1::new(&storage, whole));
    let mut status = running.status_changes();
    tokio::time::timeout(
        Duration::from_secs(15),
        status.wait_for(|s| *s == krescent::Status::Running),
    )
    .await
    .expect("the second instance took the lease within 15 s (ttl 1 s)")
    .expect("running");
    running.shutdown().await.expect("a clean stop");
    drop(stuck);
}

/// The host (socket directory) of a test database's URL.
fn db_host(url: &str) -> &str {
    url.split(' ')
        .find_map(|part| part.strip_prefix("host="))
        .expect("a host")
}

/// Serves PostgreSQL's socket of `url` from `dir`; a connection whose client prepares a
/// statement holding `marker` is cut off once it has run it: nothing more the client sends
/// reaches the server, as from a paused process, while the server's replies still reach it.
/// Notified once a connection is cut off.
fn freezing_proxy(
    url: &str,
    dir: &std::path::Path,
    marker: &'static str,
) -> Arc<tokio::sync::Notify> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let name = ".s.PGSQL.5432";
    let server = std::path::Path::new(db_host(url)).join(name);
    let listener = tokio::net::UnixListener::bind(dir.join(name)).expect("bind the proxy socket");
    let frozen = Arc::new(tokio::sync::Notify::new());
    let notify = frozen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(upstream) = tokio::net::UnixStream::connect(&server).await else {
                continue;
            };
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_server, mut to_server) = upstream.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                let _ = to_client.shutdown().await;
            });
            let notify = notify.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0; 64 * 1024];
                // The statement is prepared (its text sent) first, then run by the next message.
                let mut prepared = false;
                loop {
                    let n = match from_client.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if to_server.write_all(&buffer[..n]).await.is_err() {
                        return;
                    }
                    if prepared {
                        notify.notify_one();
                        // Cut off: the connection stays open, the client is never read again.
                        std::future::pending::<()>().await;
                    }
                    let sent = &buffer[..n];
                    prepared = sent.windows(marker.len()).any(|w| w == marker.as_bytes());
                }
            });
        }
    });
    frozen
}
