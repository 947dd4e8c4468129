//! Leases in one process: which models take one, standbys, release on stop, and fencing of
//! a holder whose lease was taken over (checkpoint writes and projection commits).

use std::time::Duration;

use krescent::checkpoint::PostgresCheckpointStorage;
use krescent::fleet::LeaseConfig;
use krescent::prelude::*;
use krescent::projection::{PostgresProjection, ProjectionError};
use krescent::store::PostgresEventStore;
use krescent::{tokio_postgres, Krescent, Status};
use krescent_testkit::postgres::fresh_database;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "lease.tick")]
struct Tick {
    n: u64,
}

/// A projection: takes a lease by default.
#[derive(EventModel, Debug)]
#[model(name = "leases.projected")]
#[checkpoint(strategy = "fixed_events(5)", storage = "postgres")]
struct Projected {
    #[checkpoint(support)]
    table: PostgresProjection,
    insert: String,
}

#[krescent::handlers]
impl Projected {
    async fn tick(&mut self, e: &Tick, meta: &EventMeta) -> Result<(), ProjectionError> {
        let position = i64::try_from(meta.position.get()).expect("small");
        let n = i64::try_from(e.n).expect("small");
        self.table.execute(&self.insert, &[&position, &n]).await?;
        Ok(())
    }
}

impl Projected {
    fn new(storage: &PostgresCheckpointStorage) -> Self {
        let table = PostgresProjection::new(storage, 1)
            .table(
                "lease_rows",
                "CREATE TABLE {table} (position bigint NOT NULL, n bigint NOT NULL)",
            )
            .expect("a valid table");
        let name = table.name_of("lease_rows").expect("declared").to_owned();
        Projected {
            table,
            insert: format!("INSERT INTO {name} (position, n) VALUES ($1, $2)"),
        }
    }
}

/// State in memory: runs in every instance unless made exclusive.
#[derive(EventModel, Default, Debug)]
#[model(name = "leases.counted")]
#[checkpoint(strategy = "always", storage = "postgres")]
struct Counted {
    #[checkpoint]
    count: u64,
}

#[krescent::handlers]
impl Counted {
    fn tick(&mut self, _: &Tick) {
        self.count += 1;
    }
}

const FAST: LeaseConfig = LeaseConfig {
    ttl: Duration::from_secs(1),
    heartbeat: Duration::from_millis(300),
    poll: Duration::from_millis(50),
};

async fn setup() -> (
    krescent_testkit::postgres::TestDatabase,
    PostgresCheckpointStorage,
    Krescent<PostgresEventStore>,
) {
    let db = fresh_database().await;
    let store = db.event_store().await;
    let storage = db.checkpoint_storage().await;
    let mut krescent = Krescent::new(store).with_storage("postgres", storage.clone());
    krescent
        .configure::<Projected>()
        .lease(FAST)
        .expect("checkpointed");
    krescent
        .configure::<Counted>()
        .lease(FAST)
        .expect("checkpointed");
    (db, storage, krescent)
}

async fn append(krescent: &Krescent<PostgresEventStore>, from: u64, count: u64) -> Position {
    let events = (from..from + count)
        .map(|n| NewEvent::new(&Tick { n }).expect("encode"))
        .collect();
    krescent
        .store()
        .append("ticks", ExpectedVersion::Any, events)
        .await
        .expect("append");
    Position::new(from + count)
}

async fn wait_status<M: EventModel>(running: &krescent::Running<M>, status: Status) {
    let mut changes = running.status_changes();
    tokio::time::timeout(Duration::from_secs(10), changes.wait_for(|s| *s == status))
        .await
        .unwrap_or_else(|_| panic!("status stayed {}, not {status}", running.status()))
        .expect("the task is alive");
}

async fn projected_rows(client: &tokio_postgres::Client) -> (i64, i64) {
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT position) FROM lease_rows",
            &[],
        )
        .await
        .expect("count");
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn a_second_projection_instance_waits_as_a_standby_and_takes_over_on_shutdown() {
    let (db, storage, krescent) = setup().await;
    append(&krescent, 0, 12).await;
    let first = krescent.stream(Projected::new(&storage));
    first.reached(Position::new(12)).await.expect("first runs");
    let second = krescent.stream(Projected::new(&storage));
    wait_status(&second, Status::Standby).await;
    // The standby stays one while the holder runs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(second.status(), Status::Standby);
    let head = append(&krescent, 12, 8).await;
    first.reached(head).await.expect("first follows");
    let first = first.shutdown().await.expect("graceful stop");
    assert_eq!(first.position, head);
    // The released lease is taken within a poll, and the checkpoint is loaded only then.
    wait_status(&second, Status::Running).await;
    let head = append(&krescent, 20, 5).await;
    second.reached(head).await.expect("second follows");
    let second = second.shutdown().await.expect("graceful stop");
    assert_eq!(
        second.origin,
        Origin::Restored {
            position: Position::new(20)
        }
    );
    assert_eq!(second.processed, 5);
    assert_eq!(projected_rows(&db.client().await).await, (25, 25));
}

#[tokio::test]
async fn a_standby_stopped_before_it_got_the_lease_returns_its_model_unrun() {
    let (_db, storage, krescent) = setup().await;
    append(&krescent, 0, 3).await;
    let first = krescent.stream(Projected::new(&storage));
    first.reached(Position::new(3)).await.expect("runs");
    let second = krescent.stream(Projected::new(&storage));
    wait_status(&second, Status::Standby).await;
    let stopped = second.shutdown().await.expect("a standby stops cleanly");
    assert_eq!((stopped.processed, stopped.position), (0, Position::START));
    first.shutdown().await.expect("graceful stop");
}

#[tokio::test]
async fn in_memory_models_run_in_every_instance_unless_made_exclusive() {
    let (_db, _storage, mut krescent) = setup().await;
    let head = append(&krescent, 0, 10).await;
    let a = krescent.stream(Counted::default());
    let b = krescent.stream(Counted::default());
    a.reached(head).await.expect("a runs");
    b.reached(head).await.expect("b runs");
    assert_eq!((a.status(), b.status()), (Status::Running, Status::Running));
    let (a, b) = (
        a.shutdown().await.expect("a"),
        b.shutdown().await.expect("b"),
    );
    assert_eq!((a.model.count, b.model.count), (10, 10));

    krescent
        .configure::<Counted>()
        .exclusive()
        .expect("checkpointed");
    let head = append(&krescent, 10, 5).await;
    let a = krescent.stream(Counted::default());
    a.reached(head).await.expect("a runs");
    let b = krescent.stream(Counted::default());
    wait_status(&b, Status::Standby).await;
    let a = a.shutdown().await.expect("a");
    assert_eq!(a.model.count, 15);
    wait_status(&b, Status::Running).await;
    b.reached(head).await.expect("b takes over");
    let b = b.shutdown().await.expect("b");
    assert_eq!(b.origin, Origin::Restored { position: head });
}

/// Another instance takes the lease over behind the holder's back (as after a pause past its
/// lease): the holder's next commit is rejected and rolled back.
async fn take_over(client: &tokio_postgres::Client, namespace: &str) {
    let updated = client
        .execute(
            "UPDATE krescent_leases SET holder = 'intruder', epoch = epoch + 1, expires_at = clock_timestamp() + interval '1 hour' WHERE namespace = $1",
            &[&namespace],
        )
        .await
        .expect("take over");
    assert_eq!(updated, 1, "the holder has a lease row");
}

/// A projection run to the head (5 events), whose lease another instance then took over: the
/// database, a client, the krescent and the run.
async fn taken_over_projection() -> (
    krescent_testkit::postgres::TestDatabase,
    tokio_postgres::Client,
    Krescent<PostgresEventStore>,
    krescent::Running<Projected>,
) {
    let (db, storage, krescent) = setup().await;
    let client = db.client().await;
    let head = append(&krescent, 0, 5).await;
    let running = krescent.stream(Projected::new(&storage));
    running.reached(head).await.expect("runs");
    take_over(&client, "leases.projected").await;
    (db, client, krescent, running)
}

#[tokio::test]
async fn a_projection_commit_after_a_takeover_is_fenced_and_rolled_back() {
    let (_db, client, krescent, running) = taken_over_projection().await;
    assert_eq!(projected_rows(&client).await, (5, 5));
    let head = append(&krescent, 5, 5).await;
    // Its commit when it has caught up is rejected, which ends its task.
    running
        .reached(head)
        .await
        .expect_err("fenced before it got there");
    let error = running.shutdown().await.expect_err("fenced");
    assert!(
        matches!(&error, Error::Fenced { model: "leases.projected", namespace, epoch: 1 } if namespace == "leases.projected"),
        "{error:?}"
    );
    assert!(error.to_string().contains("fenced"), "{error}");
    // Nothing of the fenced transaction is visible, and the checkpoint stayed.
    assert_eq!(projected_rows(&client).await, (5, 5));
    let at: i64 = client
        .query_one(
            "SELECT position::bigint FROM krescent_checkpoints WHERE namespace = 'leases.projected'",
            &[],
        )
        .await
        .expect("checkpoint")
        .get(0);
    assert_eq!(at, 5);
}

/// Waits until `running` stops by itself (within `within`), and checks that it stepped down:
/// it ended with `Error::Fenced` for the epoch it held.
async fn assert_steps_down(running: krescent::Running<Projected>, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    while !running.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "it kept running, status {}",
            running.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let error = running.shutdown().await.expect_err("fenced");
    assert!(
        matches!(
            &error,
            Error::Fenced {
                model: "leases.projected",
                epoch: 1,
                ..
            }
        ),
        "{error:?}"
    );
}

/// A holder with nothing to commit (no new events) learns of a takeover from its heartbeat,
/// and stops: it does not go on following while another instance holds its lease.
#[tokio::test]
async fn a_quiet_holder_whose_lease_is_taken_stops_at_its_next_heartbeat() {
    let (_db, client, _krescent, running) = taken_over_projection().await;
    // FAST's heartbeat is 300 ms.
    assert_steps_down(running, Duration::from_secs(5)).await;
    assert_eq!(projected_rows(&client).await, (5, 5));
}

/// A holder whose lease was taken over can fail in another way before its commit learns of
/// it (a paused holder finds its session ended by the server): that also ends it as fenced,
/// not with the failure, which would have it counted as a crash instead of a step down.
#[tokio::test]
async fn a_failure_after_a_takeover_ends_the_run_fenced() {
    let (_db, client, krescent, running) = taken_over_projection().await;
    // Its next handler's statement fails (no such table) before any commit checks the fence.
    client
        .batch_execute("DROP TABLE lease_rows")
        .await
        .expect("drop");
    append(&krescent, 5, 1).await;
    assert_steps_down(running, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_checkpoint_write_after_a_takeover_is_fenced() {
    let (db, _storage, mut krescent) = setup().await;
    krescent
        .configure::<Counted>()
        .exclusive()
        .expect("checkpointed");
    let client = db.client().await;
    let head = append(&krescent, 0, 3).await;
    let running = krescent.stream(Counted::default());
    running.reached(head).await.expect("runs");
    take_over(&client, "leases.counted").await;
    // Its next checkpoint write is rejected, which ends its task: it steps down by itself.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut from = 3;
    while !running.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "the fenced model kept running"
        );
        append(&krescent, from, 1).await;
        from += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let error = running.shutdown().await.expect_err("fenced");
    assert!(matches!(error, Error::Fenced { epoch: 1, .. }), "{error:?}");
    // The writes before the takeover may or may not have landed; none after it did.
    let at: Option<i64> = client
        .query_opt(
            "SELECT position::bigint FROM krescent_checkpoints WHERE namespace = 'leases.counted'",
            &[],
        )
        .await
        .expect("checkpoint")
        .map(|row| row.get(0));
    assert!(
        at.is_none_or(|at| at <= 3),
        "a fenced writer stored position {at:?}"
    );
}

/// Made exclusive by its attribute.
#[derive(EventModel, Default, Debug)]
#[model(name = "leases.solo", exclusive)]
#[checkpoint(strategy = "fixed_events(2)", storage = "postgres")]
struct Solo {
    #[checkpoint]
    count: u64,
}

#[krescent::handlers]
impl Solo {
    fn tick(&mut self, _: &Tick) {
        self.count += 1;
    }
}

#[tokio::test]
async fn a_model_marked_exclusive_runs_in_one_instance_at_a_time() {
    let (_db, _storage, mut krescent) = setup().await;
    krescent
        .configure::<Solo>()
        .lease(FAST)
        .expect("checkpointed");
    let head = append(&krescent, 0, 4).await;
    let a = krescent.stream(Solo::default());
    a.reached(head).await.expect("a runs");
    let b = krescent.stream(Solo::default());
    wait_status(&b, Status::Standby).await;
    let a = a.shutdown().await.expect("a");
    assert_eq!(a.model.count, 4);
    wait_status(&b, Status::Running).await;
    let b = b.shutdown().await.expect("b");
    assert_eq!(
        (b.origin, b.model.count),
        (Origin::Restored { position: head }, 4)
    );
}

#[tokio::test]
async fn catch_up_of_a_projection_waits_for_the_lease_a_stream_holds() {
    let (db, storage, krescent) = setup().await;
    let head = append(&krescent, 0, 6).await;
    let running = krescent.stream(Projected::new(&storage));
    running.reached(head).await.expect("runs");
    let catching_up = tokio::spawn({
        let krescent = krescent.clone();
        let storage = storage.clone();
        async move { krescent.catch_up(Projected::new(&storage)).await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!catching_up.is_finished(), "catch_up ran beside the holder");
    let head = append(&krescent, 6, 4).await;
    running.reached(head).await.expect("follows");
    running.shutdown().await.expect("graceful stop");
    let caught_up = tokio::time::timeout(Duration::from_secs(10), catching_up)
        .await
        .expect("catch_up took the released lease")
        .expect("task")
        .expect("catch_up");
    assert_eq!(caught_up.origin, Origin::Restored { position: head });
    assert_eq!(caught_up.processed, 0);
    assert_eq!(projected_rows(&db.client().await).await, (10, 10));
}
