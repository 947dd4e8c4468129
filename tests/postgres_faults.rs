//! A streaming model against a Postgres server that crashes (`pg_ctl stop -m immediate`) and
//! comes back: the model reconnects, resumes where it was, and ends in the state of a full
//! replay.

use std::time::Duration;

use krescent::prelude::*;
use krescent::store::{
    EventStore, ExpectedVersion, PostgresConfig, PostgresEventStore, StoreError,
};
use krescent::{Origin, Position, Running};
use krescent_testkit::postgres::TestServer;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "fault.amount")]
struct Amount {
    account: u32,
    n: u64,
}

#[derive(EventModel, Default, Debug)]
#[model(name = "fault.balances", version = 1)]
#[checkpoint(strategy = "fixed_events(50)", storage = "postgres")]
struct Balances {
    #[checkpoint]
    balances: std::collections::BTreeMap<u32, u64>,
    #[checkpoint]
    events: u64,
}

#[krescent::handlers]
impl Balances {
    fn amount(&mut self, e: &Amount) {
        *self.balances.entry(e.account).or_default() += e.n;
        self.events += 1;
    }
}

/// Appends events `from..=to`, one per append, retrying transient failures (the server may
/// still be finishing its recovery).
async fn append(store: &PostgresEventStore, from: u64, to: u64) -> Position {
    let mut last = Position::START;
    for n in from..=to {
        let account = u32::try_from(n % 7).expect("small");
        let event = NewEvent::new(&Amount { account, n }).expect("encode");
        let mut attempts = 0;
        last = loop {
            match store
                .append(
                    &format!("account-{account}"),
                    ExpectedVersion::Any,
                    vec![event.clone()],
                )
                .await
            {
                Ok(appended) => break appended.position,
                Err(e) if e.is_transient() && attempts < 50 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("append {n}: {e}"),
            }
        };
    }
    last
}

async fn reach(running: &Running<Balances>, position: Position, what: &str) {
    tokio::time::timeout(Duration::from_mins(1), running.reached(position))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{what}: the model did not reach {position} (it is at {})",
                running.position()
            )
        })
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(!running.is_finished(), "{what}: the model stopped");
}

fn assert_transient<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(e) => assert!(
            e.is_transient(),
            "{what}: expected a transient failure, got {e}"
        ),
        Ok(value) => panic!("{what}: succeeded against a stopped server: {value:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_streaming_model_survives_server_crashes() {
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
    let krescent = Krescent::new(store).with_storage("postgres", storage);

    // Crash while the model is catching up.
    let head = append(krescent.store(), 1, 2000).await;
    let running = krescent.stream(Balances::default());
    reach(&running, Position::new(1), "first events").await;
    server.stop_immediately();
    assert_transient(
        krescent.store().read_after(Position::START, 10).await,
        "read",
    );
    assert_transient(krescent.store().head().await, "head");
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.start();
    reach(&running, head, "after the first crash").await;

    // Crash while the model waits for appends (its listening connection dies too); appends
    // fail while the server is down and go through once it is back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.stop_immediately();
    let event = NewEvent::new(&Amount { account: 0, n: 0 }).expect("encode");
    assert_transient(
        krescent
            .store()
            .append("account-0", ExpectedVersion::Any, vec![event])
            .await,
        "append",
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.start();
    let head = append(krescent.store(), 2001, 2500).await;
    reach(&running, head, "after the second crash").await;

    let streamed = running.shutdown().await.expect("shutdown");
    assert_eq!(streamed.position, head);
    assert_eq!(streamed.model.events, 2500);

    // The checkpoint it left resumes to the same state...
    let resumed = krescent
        .catch_up(Balances::default())
        .await
        .expect("resume");
    assert_eq!(resumed.origin, Origin::Restored { position: head });
    assert_eq!(resumed.model.balances, streamed.model.balances);
    // ...and so does a replay from scratch.
    assert!(krescent
        .delete_checkpoint::<Balances>()
        .await
        .expect("delete"));
    let replayed = krescent
        .catch_up(Balances::default())
        .await
        .expect("replay");
    assert_eq!(replayed.origin, Origin::Scratch);
    assert_eq!(
        (replayed.model.events, &replayed.model.balances),
        (streamed.model.events, &streamed.model.balances)
    );
}

/// The listening connection reconnects after a crash: with a poll interval of a minute, a
/// reader waiting after the restart is still woken at once by an append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_listener_reconnects_after_a_crash() {
    let server = tokio::task::spawn_blocking(TestServer::new)
        .await
        .expect("start a server");
    let db = server.create_database().await;
    let slow = PostgresConfig {
        poll_interval: Duration::from_mins(1),
        ..PostgresConfig::default()
    };
    let reader = db.event_store_with(slow.clone()).await;
    let writer = db.event_store_with(slow).await;
    for crash in 0..3 {
        let head = append(&writer, crash * 10 + 1, crash * 10 + 5).await;
        // Starts (or reuses) the listener; it wakes at once since events are past `START`.
        tokio::time::timeout(
            Duration::from_secs(5),
            reader.wait_for_append(Position::START),
        )
        .await
        .expect("woken")
        .expect("wait");
        server.stop_immediately();
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.start();
        let (woke, last) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(20), reader.wait_for_append(head)),
            append(&writer, crash * 10 + 6, crash * 10 + 6)
        );
        woke.unwrap_or_else(|_| {
            panic!("crash {crash}: the reader was not woken after the restart")
        })
        .expect("wait");
        let read = reader.read_after(head, 10).await.expect("read");
        assert_eq!(
            read.last().map(krescent::RecordedEvent::position),
            Some(last)
        );
    }
}
