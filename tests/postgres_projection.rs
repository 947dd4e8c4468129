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
    let run = |database: &TestDatabase| {
        Command::new(&binary)
            .env("DATABASE_URL", database.url())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the example")
    };

    let started = Instant::now();
    let output = run(&reference)
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
    for _ in 0..20 {
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        // Each run gets a moment in its first half second: the runs' progress adds up to a few
        // seconds, so nearly every run is killed mid-way, at a different point of the stream.
        let moment = Duration::from_millis(50 + (rng >> 33) % 500);
        let mut child = run(&crashed);
        tokio::time::sleep(moment).await;
        if child.try_wait().expect("poll").is_none() {
            child.kill().expect("SIGKILL");
            killed += 1;
        }
        child.wait().expect("reap");
    }
    let output = run(&crashed).wait_with_output().expect("final run");
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
