//! Exactly-once projections into Postgres: crashes, failed batches, tables dropped behind the
//! model's back, and deleting a model.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use krescent::checkpoint::CheckpointStorage;
use krescent::prelude::*;
use krescent::projection::{PostgresProjection, ProjectionError};
use krescent::store::{EventStore, ExpectedVersion, PostgresEventStore};
use krescent::{Error, Origin, Position};
use krescent_testkit::examples::example_binary;
use krescent_testkit::postgres::{fresh_database, tokio_postgres, TestDatabase};

#[path = "../examples/shared/bookstore.rs"]
mod bookstore;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "tick")]
struct Tick {
    key: String,
}

#[derive(Debug, thiserror::Error)]
enum TickError {
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error("refusing the event at position {0}")]
    Refused(Position),
}

/// Declares a model counting ticks per key in the table `ticks`.
macro_rules! ticks_model {
    ($name:ident $(, $option:ident = $value:literal)?) => {
        #[derive(EventModel)]
        #[model(name = "ticks", version = 1)]
        #[checkpoint(strategy = "fixed_events(10)", storage = "postgres" $(, $option = $value)?)]
        struct $name {
            #[checkpoint(support)]
            table: PostgresProjection,
            /// Not checkpointed: fail at this position.
            fail_at: Option<Position>,
        }

        #[krescent::handlers]
        impl $name {
            async fn tick(&mut self, e: &Tick, meta: &EventMeta) -> Result<(), TickError> {
                self.table.execute("INSERT INTO ticks (key, n) VALUES ($1, 1) ON CONFLICT (key) DO UPDATE SET n = ticks.n + 1", &[&e.key]).await?;
                if self.fail_at == Some(meta.position) {
                    return Err(TickError::Refused(meta.position));
                }
                Ok(())
            }
        }

        impl $name {
            fn new(store: &PostgresEventStore, fail_at: Option<u64>) -> Self {
                let table = PostgresProjection::new(&store.checkpoint_storage(), 1)
                    .table("ticks", "CREATE TABLE {table} (key text PRIMARY KEY, n integer NOT NULL)")
                    .expect("a valid table name");
                $name { table, fail_at: fail_at.map(Position::new) }
            }
        }
    };
}

ticks_model!(Ticks);
ticks_model!(StrictTicks, on_invalid = "fail");

async fn setup() -> (
    TestDatabase,
    Krescent<PostgresEventStore>,
    tokio_postgres::Client,
) {
    let database = fresh_database().await;
    let store = database.event_store().await;
    let storage = store.checkpoint_storage();
    storage.migrate().await.expect("migrate");
    let client = database.client().await;
    (
        database,
        Krescent::new(store).with_storage("postgres", storage),
        client,
    )
}

async fn append_ticks(
    krescent: &Krescent<PostgresEventStore>,
    keys: impl IntoIterator<Item = usize>,
) {
    let events = keys
        .into_iter()
        .map(|k| {
            NewEvent::new(&Tick {
                key: format!("k{}", k % 7),
            })
            .expect("encode")
        })
        .collect();
    krescent
        .store()
        .append("ticks", ExpectedVersion::Any, events)
        .await
        .expect("append");
}

/// The table's rows, or `None` when it does not exist.
async fn ticks(client: &tokio_postgres::Client) -> Option<Vec<(String, i32)>> {
    let exists: Option<String> = client
        .query_one("SELECT to_regclass('ticks')::text", &[])
        .await
        .expect("query")
        .get(0);
    exists?;
    let rows = client
        .query("SELECT key, n FROM ticks ORDER BY key", &[])
        .await
        .expect("query");
    Some(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// What the table holds after the first `events` ticks.
fn expected(events: usize) -> Vec<(String, i32)> {
    let mut counts = std::collections::BTreeMap::new();
    for k in 0..events {
        *counts.entry(format!("k{}", k % 7)).or_insert(0) += 1;
    }
    counts.into_iter().collect()
}

#[tokio::test]
async fn postgres_projection_failure_rolls_back_the_uncommitted_batch() {
    let (_database, krescent, client) = setup().await;
    append_ticks(&krescent, 0..35).await;
    let store = krescent.shared_store().clone();
    match krescent.catch_up(Ticks::new(&store, Some(27))).await {
        Err(Error::Handler { position, .. }) => assert_eq!(position, Position::new(27)),
        other => panic!(
            "expected the handler's error, got {:?}",
            other.map(|c| c.position)
        ),
    }
    assert_eq!(
        ticks(&client).await,
        Some(expected(20)),
        "the table holds exactly the committed checkpoint's events"
    );
    let storage = krescent.storage("postgres").expect("registered");
    assert_eq!(
        storage
            .load("ticks")
            .await
            .expect("load")
            .map(|c| c.position),
        Some(Position::new(20))
    );

    let resumed = krescent
        .catch_up(Ticks::new(&store, None))
        .await
        .expect("resume");
    assert_eq!(
        resumed.origin,
        Origin::Restored {
            position: Position::new(20)
        }
    );
    assert_eq!(resumed.processed, 15);
    assert_eq!(ticks(&client).await, Some(expected(35)));
}

#[tokio::test]
async fn postgres_projection_rebuilds_a_table_dropped_behind_its_back() {
    let (_database, krescent, client) = setup().await;
    append_ticks(&krescent, 0..25).await;
    let store = krescent.shared_store().clone();
    krescent
        .catch_up(Ticks::new(&store, None))
        .await
        .expect("first run");
    client
        .batch_execute("DROP TABLE ticks")
        .await
        .expect("drop");

    match krescent.catch_up(StrictTicks::new(&store, None)).await {
        Err(Error::InvalidCheckpoint { namespace, reason }) => {
            assert_eq!(namespace, "ticks");
            assert!(reason.contains("validation"), "{reason}");
        }
        other => panic!(
            "expected an invalid checkpoint, got {:?}",
            other.map(|c| c.origin)
        ),
    }
    assert_eq!(
        ticks(&client).await,
        None,
        "failing leaves the database as it was"
    );

    let rebuilt = krescent
        .catch_up(Ticks::new(&store, None))
        .await
        .expect("rebuild");
    assert!(
        matches!(rebuilt.origin, Origin::Rebuilt { .. }),
        "{:?}",
        rebuilt.origin
    );
    assert_eq!(ticks(&client).await, Some(expected(25)));

    client
        .batch_execute("ALTER TABLE ticks ADD COLUMN extra text")
        .await
        .expect("alter");
    let rebuilt = krescent
        .catch_up(Ticks::new(&store, None))
        .await
        .expect("rebuild after a change");
    assert!(
        matches!(rebuilt.origin, Origin::Rebuilt { .. }),
        "a changed table is not the projection's either"
    );
    assert_eq!(ticks(&client).await, Some(expected(25)));
    let again = krescent
        .catch_up(Ticks::new(&store, None))
        .await
        .expect("resume");
    assert_eq!(
        again.origin,
        Origin::Restored {
            position: Position::new(25)
        }
    );
}

#[tokio::test]
async fn postgres_projection_delete_model_leaves_nothing_behind() {
    let (_database, krescent, client) = setup().await;
    append_ticks(&krescent, 0..12).await;
    let store = krescent.shared_store().clone();
    let run = krescent
        .catch_up(Ticks::new(&store, None))
        .await
        .expect("run");
    assert_eq!(ticks(&client).await, Some(expected(12)));
    run.model.table.delete_model("ticks").await.expect("delete");
    assert_eq!(ticks(&client).await, None, "the table is gone");
    let storage = krescent.storage("postgres").expect("registered");
    assert_eq!(
        storage.load("ticks").await.expect("load"),
        None,
        "and so is the checkpoint"
    );
    let rebuilt = krescent
        .catch_up(Ticks::new(&store, None))
        .await
        .expect("rebuild");
    assert_eq!(rebuilt.origin, Origin::Scratch);
    assert_eq!(ticks(&client).await, Some(expected(12)));
}

#[tokio::test]
async fn postgres_projection_streaming_commits_when_idle() {
    let (_database, krescent, client) = setup().await;
    append_ticks(&krescent, 0..3).await;
    let store = krescent.shared_store().clone();
    let running = krescent.stream(Ticks::new(&store, None));
    running.reached(Position::new(3)).await.expect("reached");
    let deadline = Instant::now() + Duration::from_secs(10);
    while ticks(&client).await != Some(expected(3)) {
        assert!(
            Instant::now() < deadline,
            "three events, fewer than fixed_events(10), are committed once the model is idle"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.shutdown().await.expect("shutdown");
}

async fn shelf(database: &TestDatabase) -> Vec<(String, String, i32, i32)> {
    let client = database.client().await;
    let rows = client
        .query(
            "SELECT book_id, title, copies, on_loan FROM shelf ORDER BY book_id",
            &[],
        )
        .await
        .expect("query");
    rows.iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// The `projection` example killed (`SIGKILL`) twenty times at random moments, its runs
/// alternating between per-event handlers and the group handler, then run to the end: the
/// table equals one uninterrupted run's, and the checkpoint stands at the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_projection_killed_twenty_times_equals_one_uninterrupted_replay() {
    const EVENTS: u32 = 50_000;
    let binary = example_binary("projection");
    let crashed = fresh_database().await;
    let reference = fresh_database().await;
    for database in [&crashed, &reference] {
        let store = database.event_store().await;
        bookstore::append_batch(&store, EVENTS)
            .await
            .expect("append the stream");
    }
    // Every other run projects through the group handler (`--grouped`): both paths are
    // killed mid-batch, and each resumes from the other's checkpoints.
    let run_as = |database: &TestDatabase, grouped: bool| {
        Command::new(&binary)
            .args(grouped.then_some("--grouped"))
            .env("DATABASE_URL", database.url())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the example")
    };

    let started = Instant::now();
    let output = run_as(&reference, false)
        .wait_with_output()
        .expect("uninterrupted run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let uninterrupted = started.elapsed();

    let seed = u64::from(std::process::id()) ^ u64::from(started.elapsed().subsec_nanos());
    eprintln!("crash moments seeded with {seed}; an uninterrupted run takes {uninterrupted:?}");
    let mut rng = seed;
    let mut killed = 0;
    for attempt in 0..20 {
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        // Each run gets a moment in its first half second: the runs' progress adds up to a few
        // seconds, so nearly every run is killed mid-way, at a different point of the stream.
        let moment = Duration::from_millis(50 + (rng >> 33) % 500);
        let mut child = run_as(&crashed, attempt % 2 == 1);
        tokio::time::sleep(moment).await;
        if child.try_wait().expect("poll").is_none() {
            child.kill().expect("SIGKILL");
            killed += 1;
        }
        child.wait().expect("reap");
    }
    let output = run_as(&crashed, true)
        .wait_with_output()
        .expect("final run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{killed} of 20 runs were killed mid-way");
    assert!(
        killed >= 15,
        "most runs were killed mid-way ({killed} of 20)"
    );

    assert_eq!(
        shelf(&crashed).await,
        shelf(&reference).await,
        "no row missing, none applied twice"
    );
    let checkpoints = crashed.checkpoint_storage().await;
    let head = crashed.event_store().await.head().await.expect("head");
    assert_eq!(
        checkpoints
            .load("bookstore.shelf")
            .await
            .expect("load")
            .map(|c| c.position),
        Some(head)
    );
}

/// A transactional model registered with a storage other than its projection's checkpoint
/// table would never find its checkpoints (and rebuild on every start): it does not start, and
/// the error names both, before its tables are touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_projection_refuses_a_storage_that_is_not_its_checkpoint_table() {
    let (database, krescent, client) = setup().await;
    append_ticks(&krescent, 0..12).await;
    let store = krescent.shared_store().clone();
    krescent
        .catch_up(Ticks::new(&store, None))
        .await
        .expect("the matching storage");

    let in_memory = Krescent::with_shared_store(store.clone()).with_storage(
        "postgres",
        krescent::checkpoint::InMemoryCheckpointStorage::new(),
    );
    let other_table = database
        .event_store_with(krescent::store::PostgresConfig {
            checkpoints_table: "other_checkpoints".to_owned(),
            ..krescent::store::PostgresConfig::default()
        })
        .await
        .checkpoint_storage();
    other_table.migrate().await.expect("migrate");
    let elsewhere =
        Krescent::with_shared_store(store.clone()).with_storage("postgres", other_table);
    for (case, krescent) in [("memory", in_memory), ("another table", elsewhere)] {
        match krescent.catch_up(Ticks::new(&store, None)).await {
            Err(error @ Error::StorageMismatch { model: "ticks", .. }) => {
                let message = error.to_string();
                assert!(
                    message.contains("public.krescent_checkpoints"),
                    "{case}: {message}"
                );
                assert!(message.contains("`postgres`"), "{case}: {message}");
            }
            other => panic!(
                "{case}: expected a storage mismatch, got {:?}",
                other.map(|c| c.origin)
            ),
        }
        assert_eq!(
            ticks(&client).await,
            Some(expected(12)),
            "{case}: untouched"
        );
    }
}

/// A projection table may not take the name of one of the store's or the storage's own tables
/// (in the same schema): a typed error when the projection is declared, before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_projection_refuses_the_store_s_own_table_names() {
    let (_database, krescent, _client) = setup().await;
    let storage = krescent.shared_store().checkpoint_storage();
    for name in [
        "krescent_events",
        "krescent_checkpoints",
        "krescent_schema_migrations",
    ] {
        match PostgresProjection::new(&storage, 1).table(name, "CREATE TABLE {table} (id int)") {
            Err(error @ krescent::store::StoreError::InvalidName { .. }) => {
                assert!(error.to_string().contains(name), "{error}");
            }
            other => panic!(
                "{name}: expected an invalid name, got {:?}",
                other.map(drop)
            ),
        }
    }
    assert!(PostgresProjection::new(&storage, 1)
        .table("krescent_events_by_stream", "CREATE TABLE {table} (id int)")
        .is_ok());
    krescent
        .store()
        .migrate()
        .await
        .expect("the store's tables are intact");
}

/// Counts ticks per key like `Ticks`, with queued writes: the key `poison` breaks the table's
/// check, which only the flush finds; with `read_back` each handler reads its key's count
/// after queueing its increment, in the same batch.
#[derive(EventModel)]
#[model(name = "ticks", version = 1)]
#[checkpoint(strategy = "fixed_events(10)", storage = "postgres")]
struct QueuedTicks {
    #[checkpoint(support)]
    table: PostgresProjection,
    read_back: bool,
    /// Not checkpointed: each key's count as its handler read it back.
    seen: Vec<(String, i32)>,
}

#[krescent::handlers]
impl QueuedTicks {
    async fn tick(&mut self, e: &Tick) -> Result<(), TickError> {
        self.table
            .queue("INSERT INTO ticks (key, n) VALUES ($1, 1) ON CONFLICT (key) DO UPDATE SET n = ticks.n + 1", &[&e.key])
            .await?;
        if self.read_back {
            let rows = self
                .table
                .query("SELECT n FROM ticks WHERE key = $1", &[&e.key])
                .await?;
            let n = rows.first().map(|row| row.get(0)).unwrap_or_default();
            self.seen.push((e.key.clone(), n));
        }
        Ok(())
    }
}

impl QueuedTicks {
    fn new(store: &PostgresEventStore, read_back: bool) -> Self {
        let table = PostgresProjection::new(&store.checkpoint_storage(), 1)
            .table(
                "ticks",
                "CREATE TABLE {table} (key text PRIMARY KEY CHECK (key <> 'poison'), n integer NOT NULL)",
            )
            .expect("a valid table name");
        QueuedTicks {
            table,
            read_back,
            seen: Vec::new(),
        }
    }
}

#[tokio::test]
async fn postgres_projection_queued_write_that_fails_names_its_event_and_rolls_back_the_batch() {
    let (_database, krescent, client) = setup().await;
    append_ticks(&krescent, 0..26).await;
    let poison = NewEvent::new(&Tick {
        key: "poison".to_owned(),
    })
    .expect("encode");
    krescent
        .store()
        .append("poisoned", ExpectedVersion::Any, vec![poison])
        .await
        .expect("append");
    append_ticks(&krescent, 27..35).await;
    let store = krescent.shared_store().clone();
    // The handler of event 27 only queues: the check fails when the batch of events 21 to 30
    // is flushed, and the error is event 27's.
    match krescent.catch_up(QueuedTicks::new(&store, false)).await {
        Err(Error::Handler {
            position,
            event_type,
            source,
            ..
        }) => {
            assert_eq!((position, event_type.as_str()), (Position::new(27), "tick"));
            let message = source.to_string();
            assert!(
                message.contains("position 27") && message.contains("stream `poisoned`"),
                "the message names the event: {message}"
            );
            let krescent::HandlerError::Failed(failed) = &source else {
                panic!("a handler's failure, got {source:?}");
            };
            let projection = failed
                .downcast_ref::<ProjectionError>()
                .expect("the projection's error");
            assert_eq!(
                projection.queued_by(),
                Some((Position::new(27), "tick", "poisoned"))
            );
            assert!(!projection.is_transient());
        }
        other => panic!(
            "expected event 27's error, got {:?}",
            other.map(|c| c.position)
        ),
    }
    assert_eq!(
        ticks(&client).await,
        Some(expected(20)),
        "the failed batch is rolled back: the table holds the last checkpoint's events"
    );
    let storage = krescent.storage("postgres").expect("registered");
    let stored = storage.load("ticks").await.expect("load");
    assert_eq!(stored.map(|c| c.position), Some(Position::new(20)));
}

#[tokio::test]
async fn postgres_projection_handler_reads_its_own_queued_writes_in_the_same_batch() {
    let (_database, krescent, client) = setup().await;
    append_ticks(&krescent, 0..24).await;
    let store = krescent.shared_store().clone();
    let caught_up = krescent
        .catch_up(QueuedTicks::new(&store, true))
        .await
        .expect("catch up");
    let wanted: Vec<(String, i32)> = (0..24)
        .map(|k| (format!("k{}", k % 7), k / 7 + 1))
        .collect();
    assert_eq!(
        caught_up.model.seen, wanted,
        "every read sees the writes queued before it, of its own event and the batch's earlier ones"
    );
    assert_eq!(ticks(&client).await, Some(expected(24)));
}

/// A row per tick copied into `history` with `insert`, then marked seen by a queued
/// `UPDATE` that must find it; a tick keyed `dup` copies the row of position 1 again.
#[derive(EventModel)]
#[model(name = "history", version = 1)]
#[checkpoint(strategy = "fixed_events(10)", storage = "postgres")]
struct History {
    #[checkpoint(support)]
    table: PostgresProjection,
}

#[krescent::handlers]
impl History {
    async fn tick(&mut self, e: &Tick, meta: &EventMeta) -> Result<(), TickError> {
        let position = i64::try_from(meta.position.get()).expect("a small position");
        let row = if e.key == "dup" { 1 } else { position };
        self.table
            .insert("history", &[&row, &e.key, &0_i32])
            .await?;
        self.table
            .queue(
                "UPDATE history SET seen = seen + 1 WHERE position = $1",
                &[&row],
            )
            .await?;
        Ok(())
    }
}

impl History {
    fn new(store: &PostgresEventStore) -> Self {
        let table = PostgresProjection::new(&store.checkpoint_storage(), 1)
            .table(
                "history",
                "CREATE TABLE {table} (position bigint PRIMARY KEY, key text NOT NULL, seen integer NOT NULL)",
            )
            .expect("a valid table name");
        History { table }
    }
}

async fn history(client: &tokio_postgres::Client) -> Vec<(i64, i32)> {
    let rows = client
        .query("SELECT position, seen FROM history ORDER BY position", &[])
        .await
        .expect("query");
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

#[tokio::test]
async fn postgres_projection_copied_rows_are_there_for_later_statements_and_a_refused_one_names_its_event(
) {
    let (_database, krescent, client) = setup().await;
    append_ticks(&krescent, 0..16).await;
    let store = krescent.shared_store().clone();
    let caught_up = krescent
        .catch_up(History::new(&store))
        .await
        .expect("catch up");
    assert_eq!(caught_up.position, Position::new(16));
    let every_row_seen_once: Vec<(i64, i32)> = (1..=16).map(|p| (p, 1)).collect();
    assert_eq!(
        history(&client).await,
        every_row_seen_once,
        "each copied row was loaded before the UPDATE that names its table"
    );

    // Event 20 copies position 1's row again: the batch of events 17 to 26 is refused.
    append_ticks(&krescent, 16..19).await;
    let dup = NewEvent::new(&Tick {
        key: "dup".to_owned(),
    })
    .expect("encode");
    krescent
        .store()
        .append("dup", ExpectedVersion::Any, vec![dup])
        .await
        .expect("append");
    append_ticks(&krescent, 20..26).await;
    match krescent.catch_up(History::new(&store)).await {
        Err(Error::Handler {
            position, source, ..
        }) => {
            assert_eq!(position, Position::new(20), "{source}");
        }
        other => panic!(
            "expected event 20's error, got {:?}",
            other.map(|c| c.position)
        ),
    }
    assert_eq!(
        history(&client).await,
        every_row_seen_once,
        "the refused batch is rolled back whole"
    );
}

/// Counts ticks per key like `QueuedTicks`, with a group handler writing set-based SQL: each
/// group's counts folded into one multi-row upsert, and a row per tick copied into `history`.
/// The key `poison` breaks the table's check, which only the flush finds.
#[derive(EventModel)]
#[model(name = "ticks", version = 1)]
#[checkpoint(strategy = "fixed_events(10)", storage = "postgres")]
struct GroupedTicks {
    #[checkpoint(support)]
    table: PostgresProjection,
    /// Not checkpointed: the size of every group received.
    groups: Vec<usize>,
}

#[derive(Debug, thiserror::Error)]
enum GroupedError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Projection(#[from] ProjectionError),
}

#[krescent::handlers]
impl GroupedTicks {
    #[group(Tick)]
    async fn ticks(&mut self, group: Group<'_>) -> Result<(), GroupedError> {
        let mut counts = std::collections::BTreeMap::<String, i32>::new();
        for event in group {
            let Some(tick) = event.decode::<Tick>()? else {
                continue;
            };
            let position = i64::try_from(event.position().get()).expect("a small position");
            self.table.insert("history", &[&position, &0_i32]).await?;
            *counts.entry(tick.key).or_default() += 1;
        }
        let (keys, counts): (Vec<String>, Vec<i32>) = counts.into_iter().unzip();
        self.table
            .queue(
                "INSERT INTO ticks (key, n) SELECT * FROM unnest($1::text[], $2::integer[]) ON CONFLICT (key) DO UPDATE SET n = ticks.n + excluded.n",
                &[&keys, &counts],
            )
            .await?;
        self.groups.push(group.len());
        Ok(())
    }
}

impl GroupedTicks {
    fn new(store: &PostgresEventStore) -> Self {
        let table = PostgresProjection::new(&store.checkpoint_storage(), 1)
            .table(
                "ticks",
                "CREATE TABLE {table} (key text PRIMARY KEY CHECK (key <> 'poison'), n integer NOT NULL)",
            )
            .and_then(|t| t.table("history", "CREATE TABLE {table} (position bigint PRIMARY KEY, seen integer NOT NULL)"))
            .expect("valid table names");
        GroupedTicks {
            table,
            groups: Vec::new(),
        }
    }
}

/// 26 ticks, a poisoned one at position 27, 8 more: 35 events.
async fn poisoned_ticks(krescent: &Krescent<PostgresEventStore>) {
    append_ticks(krescent, 0..26).await;
    let poison = NewEvent::new(&Tick {
        key: "poison".to_owned(),
    })
    .expect("encode");
    krescent
        .store()
        .append("poisoned", ExpectedVersion::Any, vec![poison])
        .await
        .expect("append");
    append_ticks(krescent, 27..35).await;
}

#[tokio::test]
async fn postgres_projection_group_handler_writes_each_group_at_its_checkpoint() {
    let (_database, krescent, client) = setup().await;
    append_ticks(&krescent, 0..35).await;
    let store = krescent.shared_store().clone();
    let caught_up = krescent
        .catch_up(GroupedTicks::new(&store))
        .await
        .expect("caught up");
    assert_eq!(
        caught_up.model.groups,
        vec![10, 10, 10, 5],
        "a group ends where `fixed_events(10)` falls due, and the last at the end of the read"
    );
    assert_eq!((caught_up.processed, caught_up.checkpoints), (35, 4));
    assert_eq!(ticks(&client).await, Some(expected(35)));
    let copied: i64 = client
        .query_one("SELECT count(*) FROM history", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(copied, 35);
}

#[tokio::test]
async fn postgres_projection_group_handler_s_failing_statement_names_the_group_s_last_event_and_rolls_back(
) {
    let (_database, krescent, client) = setup().await;
    poisoned_ticks(&krescent).await;
    let store = krescent.shared_store().clone();
    // The group of events 21 to 30 holds the poisoned tick: its upsert fails at the flush
    // before the group's checkpoint, as the group's failure, named after its last event.
    match krescent.catch_up(GroupedTicks::new(&store)).await {
        Err(Error::Handler {
            position,
            event_type,
            source,
            ..
        }) => {
            assert_eq!((position, event_type.as_str()), (Position::new(30), "tick"));
            let krescent::HandlerError::Failed(failed) = &source else {
                panic!("a handler's failure, got {source:?}");
            };
            let projection = failed
                .downcast_ref::<ProjectionError>()
                .expect("the projection's error");
            assert_eq!(
                projection.queued_by(),
                Some((Position::new(30), "tick", "ticks"))
            );
            assert!(
                source.to_string().contains("position 30"),
                "the message names the event: {source}"
            );
        }
        other => panic!(
            "expected the group's error at event 30, got {:?}",
            other.map(|c| c.position)
        ),
    }
    assert_eq!(
        ticks(&client).await,
        Some(expected(20)),
        "the failed group is rolled back: the table holds the last checkpoint's events"
    );
    let history: i64 = client
        .query_one("SELECT count(*) FROM history", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(history, 20, "the group's copied rows are rolled back too");
    let storage = krescent.storage("postgres").expect("registered");
    let stored = storage.load("ticks").await.expect("load");
    assert_eq!(stored.map(|c| c.position), Some(Position::new(20)));
}

/// With an error policy that parks, every event is a group of its own: the poisoned tick is
/// parked alone, and every other tick is counted.
#[tokio::test]
async fn postgres_projection_group_handler_parks_a_failing_event_alone() {
    let (_database, mut krescent, client) = setup().await;
    poisoned_ticks(&krescent).await;
    let store = krescent.shared_store().clone();
    krescent
        .configure::<GroupedTicks>()
        .on_error("park(unordered)")
        .expect("a valid policy");
    let caught_up = krescent
        .catch_up(GroupedTicks::new(&store))
        .await
        .expect("the model goes on past its poisoned tick");
    assert!(caught_up.model.groups.iter().all(|&n| n == 1));
    assert_eq!(caught_up.processed, 34);
    let mut wanted = expected(26);
    for (key, n) in &mut wanted {
        *n += i32::try_from((27..35).filter(|k| format!("k{}", k % 7) == *key).count())
            .expect("small");
    }
    assert_eq!(ticks(&client).await, Some(wanted));
    let storage = krescent.storage("postgres").expect("registered");
    let parked = storage.parked("ticks").await.expect("parked");
    let parked: Vec<Position> = parked.iter().map(|p| p.position).collect();
    assert_eq!(parked, vec![Position::new(27)]);
}

/// A streaming group handler does not wait to fill a group: each live event, appended alone,
/// is handled as a group of its own and committed once the model is idle.
#[tokio::test]
async fn postgres_projection_streaming_group_handler_takes_live_events_as_they_come() {
    let (_database, krescent, client) = setup().await;
    append_ticks(&krescent, 0..3).await;
    let store = krescent.shared_store().clone();
    let running = krescent.stream(GroupedTicks::new(&store));
    running.reached(Position::new(3)).await.expect("reached");
    for k in 3..8 {
        append_ticks(&krescent, k..=k).await;
        let position = Position::new(u64::try_from(k + 1).expect("small"));
        tokio::time::timeout(Duration::from_secs(10), running.reached(position))
            .await
            .expect("a live event is handled without waiting for more")
            .expect("reached");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while ticks(&client).await != Some(expected(8)) {
        assert!(
            Instant::now() < deadline,
            "the live groups are committed once the model is idle"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let model = running.shutdown().await.expect("shutdown").model;
    assert_eq!(model.groups, vec![3, 1, 1, 1, 1, 1]);
}
