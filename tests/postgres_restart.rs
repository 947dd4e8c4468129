//! A streaming `PostgresProjection` model through crash-restarts of its PostgreSQL server
//! (`pg_ctl stop -m immediate`, then start again) while appends go on: the projection's
//! write fails with the lost connection, the open transaction is gone with it, and the model
//! restarts from its last checkpoint by itself — run with `stream` (restored in place),
//! `stream_with` (a fresh model each start), and under the supervisor. The tables end equal to a clean replay's: every event exactly once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use krescent::checkpoint::PostgresCheckpointStorage;
use krescent::prelude::*;
use krescent::projection::{PostgresProjection, ProjectionError};
use krescent::store::{
    EventStore, ExpectedVersion, PostgresConfig, PostgresEventStore, StoreError,
};
use krescent::supervisor::{ModelState, RestartPolicy, Supervisor};
use krescent_testkit::postgres::{tokio_postgres, TestDatabase, TestServer};

#[derive(Event, Serialize, Deserialize)]
#[event(name = "restart.amount")]
struct Amount {
    account: i32,
    n: i64,
}

/// Declares a model projecting every event into `{prefix}entries` (one row per position: a
/// second delivery would fail on the primary key) and `{prefix}totals`.
macro_rules! ledger_model {
    ($name:ident, $model:literal, $prefix:literal) => {
        #[derive(EventModel)]
        #[model(name = $model, version = 1)]
        #[checkpoint(strategy = "fixed_events(20)", storage = "postgres")]
        struct $name {
            #[checkpoint(support)]
            tables: PostgresProjection,
        }

        #[krescent::handlers]
        impl $name {
            async fn amount(&mut self, e: &Amount, meta: &EventMeta) -> Result<(), ProjectionError> {
                let position = i64::try_from(meta.position.get()).unwrap_or(i64::MAX);
                let entries = concat!("INSERT INTO ", $prefix, "entries (position, account, n) VALUES ($1, $2, $3)");
                self.tables.execute(entries, &[&position, &e.account, &e.n]).await?;
                let totals = concat!(
                    "INSERT INTO ", $prefix, "totals (account, sum, events) VALUES ($1, $2, 1) ",
                    "ON CONFLICT (account) DO UPDATE SET sum = ", $prefix, "totals.sum + $2, events = ", $prefix, "totals.events + 1"
                );
                self.tables.execute(totals, &[&e.account, &e.n]).await?;
                Ok(())
            }
        }

        impl $name {
            fn new(storage: &PostgresCheckpointStorage) -> Self {
                let tables = PostgresProjection::new(storage, 1)
                    .table(concat!($prefix, "entries"), "CREATE TABLE {table} (position bigint PRIMARY KEY, account integer NOT NULL, n bigint NOT NULL)")
                    .and_then(|p| p.table(concat!($prefix, "totals"), "CREATE TABLE {table} (account integer PRIMARY KEY, sum bigint NOT NULL, events bigint NOT NULL)"))
                    .expect("valid table names");
                $name { tables }
            }
        }
    };
}

ledger_model!(Ledger, "restart.ledger", "");
ledger_model!(CleanLedger, "restart.clean", "clean_");

struct Setup {
    server: TestServer,
    krescent: Krescent<PostgresEventStore>,
    storage: PostgresCheckpointStorage,
    db: TestDatabase,
}

async fn setup() -> Setup {
    let server = tokio::task::spawn_blocking(TestServer::new)
        .await
        .expect("start a server");
    let db = server.create_database().await;
    let config = PostgresConfig {
        poll_interval: Duration::from_millis(200),
        ..PostgresConfig::default()
    };
    let store = db.event_store_with(config).await;
    let storage = store.checkpoint_storage();
    storage.migrate().await.expect("migrate");
    let krescent = Krescent::new(store).with_storage("postgres", storage.clone());
    Setup {
        server,
        krescent,
        storage,
        db,
    }
}

/// Appends one event at a time until `stop`, retrying through the server's outages; the
/// head it ended at.
async fn append_until(store: Arc<PostgresEventStore>, stop: Arc<AtomicBool>) -> Position {
    let mut n: i64 = 0;
    let mut head = Position::START;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let account = i32::try_from(n % 5).expect("small");
        let event = NewEvent::new(&Amount { account, n }).expect("encode");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut retried = false;
        loop {
            match store
                .append(
                    &format!("account-{account}"),
                    ExpectedVersion::Any,
                    vec![event.clone()],
                )
                .await
            {
                Ok(appended) => {
                    head = appended.position;
                    break;
                }
                Err(e) if e.is_transient() && Instant::now() < deadline => {
                    retried = true;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                // The attempt the server crashed under had committed: the head is that
                // event's (this is the only writer).
                Err(StoreError::DuplicateEvent { event_id, .. })
                    if retried && event_id == event.event_id =>
                {
                    head = store.head().await.expect("head after a committed retry");
                    break;
                }
                Err(e) => panic!("append {n}: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    head
}

/// Two crash-restarts of the server while `appender` appends; then the appender stops and
/// the head it reached is returned.
async fn crash_twice(
    setup: &Setup,
    stop: &AtomicBool,
    appender: tokio::task::JoinHandle<Position>,
    progress: impl Fn() -> Position,
) -> Position {
    for crash in 1..=2 {
        // A burst the model catches up on, crashed into while it is in the middle of it: its
        // transaction is open, the next statement or commit fails with the lost connection.
        let burst = (0..1500)
            .map(|n| NewEvent::new(&Amount { account: 9, n }).expect("encode"))
            .collect();
        setup
            .krescent
            .store()
            .append("burst", ExpectedVersion::Any, burst)
            .await
            .expect("append a burst");
        let at = progress();
        let deadline = Instant::now() + Duration::from_secs(20);
        while progress() < Position::new(at.get() + 30) {
            assert!(
                Instant::now() < deadline,
                "crash {crash}: the model is stuck at {}",
                progress()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let server = &setup.server;
        tokio::task::block_in_place(|| server.stop_immediately());
        tokio::time::sleep(Duration::from_millis(400)).await;
        tokio::task::block_in_place(|| server.start());
    }
    let at = progress();
    let deadline = Instant::now() + Duration::from_secs(20);
    while progress() < Position::new(at.get() + 30) {
        assert!(
            Instant::now() < deadline,
            "after the crashes: the model is stuck at {}",
            progress()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    appender.await.expect("the appender")
}

type Rows = Vec<(i64, i32, i64)>;

/// The rows of `{prefix}entries` and `{prefix}totals`.
async fn tables(client: &tokio_postgres::Client, prefix: &str) -> (Rows, Vec<(i32, i64, i64)>) {
    let entries = client
        .query(
            &format!("SELECT position, account, n FROM {prefix}entries ORDER BY position"),
            &[],
        )
        .await
        .expect("entries");
    let totals = client
        .query(
            &format!("SELECT account, sum, events FROM {prefix}totals ORDER BY account"),
            &[],
        )
        .await
        .expect("totals");
    (
        entries
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect(),
        totals
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect(),
    )
}

/// The streamed tables equal a clean replay's, which holds every event of the store.
async fn assert_equals_clean_replay(setup: &Setup, head: Position) {
    let clean = setup
        .krescent
        .catch_up(CleanLedger::new(&setup.storage))
        .await
        .expect("clean replay");
    assert_eq!(clean.position, head);
    // A connection of its own: the server restarted since the set-up.
    let client = setup.db.client().await;
    let streamed = tables(&client, "").await;
    let replayed = tables(&client, "clean_").await;
    assert_eq!(
        streamed.0.len(),
        usize::try_from(clean.processed).expect("small"),
        "one row per event (positions have gaps after a crash: a sequence skips ahead)"
    );
    assert_eq!(streamed, replayed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_streaming_projection_survives_server_crashes() {
    let setup = setup().await;
    let stop = Arc::new(AtomicBool::new(false));
    let appender = tokio::spawn(append_until(
        setup.krescent.shared_store().clone(),
        stop.clone(),
    ));
    let storage = setup.storage.clone();
    let running = setup.krescent.stream_with(move || Ledger::new(&storage));
    let head = crash_twice(&setup, &stop, appender, || running.position()).await;
    tokio::time::timeout(Duration::from_secs(30), running.reached(head))
        .await
        .expect("the model catches up after the crashes")
        .expect("still running");
    let done = running.shutdown().await.expect("shutdown");
    assert_eq!(done.position, head);
    assert_equals_clean_replay(&setup, head).await;
}

/// The same with `stream(model)`: one model value, restored in place from the last
/// checkpoint after each failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stream_projection_restores_in_place_through_server_crashes() {
    let setup = setup().await;
    let stop = Arc::new(AtomicBool::new(false));
    let appender = tokio::spawn(append_until(
        setup.krescent.shared_store().clone(),
        stop.clone(),
    ));
    let running = setup.krescent.stream(Ledger::new(&setup.storage));
    let head = crash_twice(&setup, &stop, appender, || running.position()).await;
    tokio::time::timeout(Duration::from_secs(30), running.reached(head))
        .await
        .expect("the model catches up after the crashes")
        .expect("still running");
    let done = running.shutdown().await.expect("shutdown");
    assert_eq!(done.position, head);
    assert_equals_clean_replay(&setup, head).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_supervised_projection_survives_server_crashes() {
    let setup = setup().await;
    let stop = Arc::new(AtomicBool::new(false));
    let appender = tokio::spawn(append_until(
        setup.krescent.shared_store().clone(),
        stop.clone(),
    ));
    let storage = setup.storage.clone();
    let supervisor = Supervisor::new(setup.krescent.clone())
        .with_policy(RestartPolicy::default().max_backoff(Duration::from_secs(1)))
        .model(move || Ledger::new(&storage));
    let head = crash_twice(&setup, &stop, appender, || supervisor.report()[0].position).await;
    tokio::time::timeout(Duration::from_secs(30), supervisor.reached(head))
        .await
        .expect("the model catches up after the crashes");
    let report = supervisor.report().remove(0);
    assert_eq!(report.state, ModelState::Running);
    assert!(
        report.restarts >= 2,
        "restarted after each crash: {report:?}"
    );
    let exits = supervisor.shutdown().await;
    assert_eq!(exits[0].result.as_ref().expect("stopped"), &head);
    assert_equals_clean_replay(&setup, head).await;
}

/// `stream(model)` (one model value, no restarts) survives a crash while it is idle: the
/// event store is retried and the projection's connection, lost between two transactions,
/// is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_idle_streaming_projection_replaces_its_lost_connection() {
    let setup = setup().await;
    let store = setup.krescent.shared_store().clone();
    let append = |n: i64| {
        let store = store.clone();
        async move {
            let event = NewEvent::new(&Amount { account: 1, n }).expect("encode");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match store
                    .append("account-1", ExpectedVersion::Any, vec![event.clone()])
                    .await
                {
                    Ok(appended) => break appended.position,
                    Err(e) if e.is_transient() && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("append {n}: {e}"),
                }
            }
        }
    };
    let running = setup.krescent.stream(Ledger::new(&setup.storage));
    for crash in 1..=2 {
        let head = append(crash).await;
        tokio::time::timeout(Duration::from_secs(20), running.reached(head))
            .await
            .expect("in time")
            .expect("running");
        // Idle: the events are committed, no transaction is open.
        tokio::time::sleep(Duration::from_millis(300)).await;
        tokio::task::block_in_place(|| setup.server.stop_immediately());
        tokio::time::sleep(Duration::from_millis(300)).await;
        tokio::task::block_in_place(|| setup.server.start());
    }
    let head = append(3).await;
    tokio::time::timeout(Duration::from_secs(20), running.reached(head))
        .await
        .expect("in time")
        .expect("the model survived both crashes");
    let done = running.shutdown().await.expect("shutdown");
    assert_eq!(done.position, head);
    assert_equals_clean_replay(&setup, head).await;
}
