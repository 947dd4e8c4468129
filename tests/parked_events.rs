//! Error policies and parked events: a projection in PostgreSQL that parks poison events and
//! the later events of their streams, replays them once fixed, exactly once; retries; and the
//! parked set of models in memory and in files across a restart.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use krescent::checkpoint::FileCheckpointStorage;
use krescent::deadletter::ParkedEvent;
use krescent::prelude::*;
use krescent::projection::{PostgresProjection, ProjectionError};
use krescent::store::{EventStore, ExpectedVersion, PostgresEventStore};
use krescent::Error;
use krescent_testkit::postgres::{fresh_database, tokio_postgres, TestDatabase};

#[derive(Event, Serialize, Deserialize)]
#[event(name = "step")]
struct Step {
    seq: i32,
    poison: bool,
}

#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error("poison at seq {0}")]
    Poison(i32),
    #[error("step {seq} of `{stream}` out of order")]
    OutOfOrder { stream: String, seq: i32 },
}

/// A projection of steps: a row per event, and each stream's last step, which must grow by one
/// (so an event applied out of its stream's order, or twice, fails the handler).
#[derive(EventModel)]
#[model(name = "steps", on_error = "park")]
#[checkpoint(strategy = "fixed_events(100)", storage = "postgres")]
struct Steps {
    #[checkpoint(support)]
    table: PostgresProjection,
    /// Not checkpointed: whether poison events are handled (the "fix").
    fixed: Arc<AtomicBool>,
    /// Not checkpointed: failures to inject per seq before it succeeds (for retries).
    flaky: Arc<AtomicU32>,
}

#[krescent::handlers]
impl Steps {
    async fn step(&mut self, e: &Step, meta: &EventMeta) -> Result<(), StepError> {
        let stream: &str = &meta.stream_id;
        // Written first, so that a failure after it leaves a partial write to roll back.
        self.table
            .execute(
                "INSERT INTO steps (stream, seq) VALUES ($1, $2)",
                &[&stream, &e.seq],
            )
            .await?;
        let advanced = if e.seq == 1 {
            self.table
                .execute("INSERT INTO heads (stream, seq) VALUES ($1, 1)", &[&stream])
                .await?
        } else {
            self.table
                .execute(
                    "UPDATE heads SET seq = $2 WHERE stream = $1 AND seq = $2 - 1",
                    &[&stream, &e.seq],
                )
                .await?
        };
        if advanced != 1 {
            return Err(StepError::OutOfOrder {
                stream: stream.to_owned(),
                seq: e.seq,
            });
        }
        if e.poison && !self.fixed.load(Ordering::SeqCst) {
            return Err(StepError::Poison(e.seq));
        }
        if e.poison
            && self
                .flaky
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(StepError::Poison(e.seq));
        }
        Ok(())
    }
}

impl Steps {
    fn new(store: &PostgresEventStore, fixed: &Arc<AtomicBool>) -> Self {
        let table = PostgresProjection::new(&store.checkpoint_storage(), 1)
            .table(
                "steps",
                "CREATE TABLE {table} (stream text, seq integer, PRIMARY KEY (stream, seq))",
            )
            .and_then(|t| {
                t.table(
                    "heads",
                    "CREATE TABLE {table} (stream text PRIMARY KEY, seq integer NOT NULL)",
                )
            })
            .expect("valid table names");
        Steps {
            table,
            fixed: fixed.clone(),
            flaky: Arc::new(AtomicU32::new(0)),
        }
    }
}

const STREAMS: usize = 100;
const PER_STREAM: i32 = 100;

fn stream(s: usize) -> String {
    format!("s{s:03}")
}

/// 10,000 events: `PER_STREAM` steps of each of `STREAMS` streams, interleaved ten at a time;
/// `poison` are (stream, seq) pairs.
async fn append_steps<S: EventStore>(store: &S, poison: &[(usize, i32)]) {
    for round in 0..PER_STREAM / 10 {
        for s in 0..STREAMS {
            let events = (round * 10 + 1..=round * 10 + 10)
                .map(|seq| {
                    NewEvent::new(&Step {
                        seq,
                        poison: poison.contains(&(s, seq)),
                    })
                    .expect("encode")
                })
                .collect();
            store
                .append(&stream(s), ExpectedVersion::Any, events)
                .await
                .expect("append");
        }
    }
}

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

/// The `steps` table: (stream, seq), sorted.
async fn rows(client: &tokio_postgres::Client) -> Vec<(String, i32)> {
    client
        .query("SELECT stream, seq FROM steps ORDER BY stream, seq", &[])
        .await
        .expect("query")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Every (stream, seq) of the log, except each stream's steps from the one in `cut`.
fn expected_rows(cut: &BTreeMap<usize, i32>) -> Vec<(String, i32)> {
    let mut rows = Vec::new();
    for s in 0..STREAMS {
        let last = cut.get(&s).map_or(PER_STREAM, |first| first - 1);
        rows.extend((1..=last).map(|seq| (stream(s), seq)));
    }
    rows
}

/// Acceptance 1: 3 poison events in 2 streams among 10,000; the model reaches the head with
/// the other streams applied, the poison events and every later event of their streams
/// parked in order; replayed once fixed, the table equals a clean replay, exactly once.
#[tokio::test]
async fn a_projection_parks_poison_events_with_their_streams_and_replays_them_once() {
    let (_database, krescent, client) = setup().await;
    let poison = [(7, 20), (7, 60), (42, 50)];
    append_steps(krescent.store(), &poison).await;
    let head = krescent.store().head().await.expect("head");
    let store = krescent.shared_store().clone();
    let fixed = Arc::new(AtomicBool::new(false));

    let caught_up = krescent
        .catch_up(Steps::new(&store, &fixed))
        .await
        .expect("the model goes past the poison events");
    assert_eq!(caught_up.position, head);
    let cut = BTreeMap::from([(7, 20), (42, 50)]);
    assert_eq!(rows(&client).await, expected_rows(&cut));

    let parked = krescent.parked::<Steps>().await.expect("parked");
    let streams: Vec<(String, u64)> = parked
        .iter()
        .map(|p| (p.stream_id.clone(), p.position.get()))
        .collect();
    let mut sorted = streams.clone();
    sorted.sort_by_key(|(_, position)| *position);
    assert_eq!(streams, sorted, "in position order");
    assert_eq!(
        parked.len(),
        usize::try_from(PER_STREAM - 20 + 1 + PER_STREAM - 50 + 1).expect("positive")
    );
    for (s, first) in [(7, 20), (42, 50)] {
        let of_stream: Vec<&ParkedEvent> =
            parked.iter().filter(|p| p.stream_id == stream(s)).collect();
        assert_eq!(
            of_stream.len(),
            usize::try_from(PER_STREAM - first + 1).expect("positive")
        );
        let head = of_stream[0];
        assert_eq!(head.attempts, 1);
        assert_eq!(head.behind, None);
        assert_eq!(head.error, format!("poison at seq {first}"));
        assert_eq!(head.event_type, "step");
        for later in &of_stream[1..] {
            assert_eq!(later.attempts, 0);
            assert_eq!(later.behind, Some(head.position));
        }
    }

    // Not fixed yet: a retry changes nothing but the attempt count of the poison events.
    krescent
        .retry_parked(Steps::new(&store, &fixed))
        .await
        .expect("retry");
    assert_eq!(rows(&client).await, expected_rows(&cut));
    let again = krescent.parked::<Steps>().await.expect("parked");
    assert_eq!(again.len(), parked.len());
    assert_eq!(
        again
            .iter()
            .filter(|p| p.behind.is_none())
            .map(|p| p.attempts)
            .collect::<Vec<_>>(),
        [2, 2]
    );

    // Fixed: the replay applies every parked event once, in its stream's order.
    fixed.store(true, Ordering::SeqCst);
    let replayed = krescent
        .retry_parked(Steps::new(&store, &fixed))
        .await
        .expect("retry once fixed");
    assert_eq!(replayed.position, head);
    assert_eq!(rows(&client).await, expected_rows(&BTreeMap::new()));
    assert!(krescent.parked::<Steps>().await.expect("parked").is_empty());

    // Nothing left to do: a catch-up and another retry apply nothing twice.
    krescent
        .retry_parked(Steps::new(&store, &fixed))
        .await
        .expect("nothing to retry");
    krescent
        .catch_up(Steps::new(&store, &fixed))
        .await
        .expect("caught up");
    assert_eq!(rows(&client).await, expected_rows(&BTreeMap::new()));
}

/// Acceptance 3, first half: `retry(3) | park` with a handler that fails twice on an event,
/// then succeeds: applied once (its partial writes of the failed attempts were rolled back).
#[tokio::test]
async fn a_retried_event_that_succeeds_is_applied_once() {
    let (_database, mut krescent, client) = setup().await;
    krescent
        .configure::<Steps>()
        .on_error("retry(3) | park")
        .expect("a valid policy");
    let poison = [(3, 5)];
    append_steps(krescent.store(), &poison).await;
    let store = krescent.shared_store().clone();
    let fixed = Arc::new(AtomicBool::new(true));
    let model = Steps::new(&store, &fixed);
    model.flaky.store(2, Ordering::SeqCst);
    let flaky = model.flaky.clone();
    krescent.catch_up(model).await.expect("caught up");
    assert_eq!(flaky.load(Ordering::SeqCst), 0, "both failures were used");
    assert_eq!(rows(&client).await, expected_rows(&BTreeMap::new()));
    assert!(krescent.parked::<Steps>().await.expect("parked").is_empty());
}

/// Acceptance 3, second half: an event that always fails is parked after N attempts, or
/// stops the model when nothing follows `retry(N)`.
#[tokio::test]
async fn an_event_that_always_fails_is_parked_after_its_attempts_or_stops_the_model() {
    let (_database, mut krescent, client) = setup().await;
    krescent
        .configure::<Steps>()
        .on_error("retry(3) | park")
        .expect("a valid policy");
    append_steps(krescent.store(), &[(9, 100)]).await;
    let store = krescent.shared_store().clone();
    let fixed = Arc::new(AtomicBool::new(false));
    krescent
        .catch_up(Steps::new(&store, &fixed))
        .await
        .expect("caught up");
    let parked = krescent.parked::<Steps>().await.expect("parked");
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].attempts, 3);
    assert_eq!(parked[0].stream_id, stream(9));
    assert_eq!(
        rows(&client).await,
        expected_rows(&BTreeMap::from([(9, 100)]))
    );

    // `retry(2)` alone: then stop, with the handler's error, after two attempts.
    let poison = parked[0].position;
    krescent.drop_parked::<Steps>(None).await.expect("dropped");
    krescent
        .delete_checkpoint::<Steps>()
        .await
        .expect("deleted");
    krescent
        .configure::<Steps>()
        .on_error("retry(2)")
        .expect("a valid policy");
    match krescent.catch_up(Steps::new(&store, &fixed)).await {
        Err(Error::Handler { position, .. }) => assert_eq!(position, poison),
        other => panic!(
            "expected the handler's error, got {:?}",
            other.map(|c| c.position)
        ),
    }
    assert!(krescent.parked::<Steps>().await.expect("parked").is_empty());

    let mistake = krescent
        .configure::<Steps>()
        .on_error("retry(0) | park")
        .unwrap_err();
    assert!(
        mistake.to_string().contains("`retry(0)` is not `retry(N)`"),
        "{mistake}"
    );
}

/// A table at schema 5 (before the parked events' table) migrates in place: step 6 adds the
/// table and changes no row; the row restores, and events park there.
#[tokio::test]
async fn a_table_at_schema_5_migrates_and_keeps_parked_events() {
    use krescent::checkpoint::{CheckpointStorage, Integrity, PostgresCheckpointStorage};
    let db = fresh_database().await;
    let client = db.client().await;
    client
        .batch_execute(include_str!("fixtures/checkpoints-schema-5.sql"))
        .await
        .expect("the schema 5 table and row");
    let store = db.event_store().await;
    let storage = PostgresCheckpointStorage::new(
        store.pool().clone(),
        &krescent::store::PostgresConfig::default(),
    )
    .expect("storage");
    storage.migrate().await.expect("migrate");
    storage
        .migrate()
        .await
        .expect("migrate again: nothing to do");
    let version: i32 = client
        .query_one(
            "SELECT version FROM krescent_schema_migrations WHERE component = 'checkpoints:krescent_checkpoints'",
            &[],
        )
        .await
        .expect("version")
        .get(0);
    assert_eq!(
        version, 8,
        "every step, to the projection versions table of step 8"
    );
    let (checkpoint, integrity) = storage
        .load_checked("fixture.counts")
        .await
        .expect("load")
        .expect("the fixture's row");
    assert_eq!(integrity, Integrity::Unchecked);
    assert_eq!(checkpoint.position.get(), 7);

    let parked = ParkedEvent {
        namespace: "fixture.counts".to_owned(),
        position: krescent::Position::new(5),
        stream_id: "desk".to_owned(),
        event_type: "counted".to_owned(),
        error: "cannot count".to_owned(),
        chain: vec!["the cause".to_owned()],
        attempts: 2,
        parked_at: std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_765_000_000_123_456),
        behind: None,
        retry: false,
    };
    storage
        .park(std::slice::from_ref(&parked))
        .await
        .expect("park");
    storage
        .park(std::slice::from_ref(&parked))
        .await
        .expect("park again: one row");
    assert_eq!(
        storage.parked("fixture.counts").await.expect("parked"),
        std::slice::from_ref(&parked)
    );
    assert_eq!(
        storage.parked_namespaces().await.expect("namespaces"),
        ["fixture.counts"]
    );
    assert!(storage.parked("other").await.expect("parked").is_empty());
    assert_eq!(
        storage
            .unpark("fixture.counts", &[parked.position])
            .await
            .expect("unpark"),
        1
    );
    assert!(storage
        .parked("fixture.counts")
        .await
        .expect("parked")
        .is_empty());
}

/// A model whose state is in memory, checkpointed: each stream's steps, which must arrive in
/// order.
#[derive(EventModel, Default)]
#[model(name = "seen", on_error = "park")]
#[checkpoint(strategy = "fixed_events(7) | on_shutdown", storage = "memory")]
struct Seen {
    #[checkpoint]
    seen: BTreeMap<String, Vec<i32>>,
    /// Not checkpointed: whether poison events are handled.
    fixed: bool,
}

#[krescent::handlers]
impl Seen {
    fn step(&mut self, e: &Step, meta: &EventMeta) -> Result<(), StepError> {
        if e.poison && !self.fixed {
            return Err(StepError::Poison(e.seq));
        }
        let steps = self.seen.entry(meta.stream_id.to_string()).or_default();
        if steps.last().map_or(0, |last| *last) + 1 != e.seq {
            return Err(StepError::OutOfOrder {
                stream: meta.stream_id.to_string(),
                seq: e.seq,
            });
        }
        steps.push(e.seq);
        Ok(())
    }
}

/// Appends `seqs` of each of streams `a` and `b`.
async fn append_two(
    krescent: &Krescent<InMemoryEventStore>,
    seqs: std::ops::RangeInclusive<i32>,
    poison: &[(&str, i32)],
) {
    for seq in seqs {
        for name in ["a", "b"] {
            let step = Step {
                seq,
                poison: poison.contains(&(name, seq)),
            };
            krescent
                .store()
                .append(
                    name,
                    ExpectedVersion::Any,
                    vec![NewEvent::new(&step).expect("encode")],
                )
                .await
                .expect("append");
        }
    }
}

/// Acceptance 4: the parked set of a model in memory or in files holds across a restart: a
/// stream with a parked event keeps parking its new events after the restart, other streams
/// go on, and a retry once fixed applies the parked events in order.
async fn parked_set_across_a_restart(krescent: Krescent<InMemoryEventStore>) {
    append_two(&krescent, 1..=10, &[("a", 4)]).await;
    let first = krescent.catch_up(Seen::default()).await.expect("caught up");
    assert_eq!(first.model.seen["a"], [1, 2, 3]);
    assert_eq!(first.model.seen["b"], (1..=10).collect::<Vec<_>>());
    let parked = krescent.parked::<Seen>().await.expect("parked");
    assert_eq!(
        parked.iter().map(|p| p.position.get()).collect::<Vec<_>>(),
        (4..=10).map(|seq| 2 * seq - 1).collect::<Vec<_>>(),
        "a's steps from 4 on, at odd positions"
    );

    // A restart, from the checkpoint, with more events: a's new ones are parked behind.
    append_two(&krescent, 11..=12, &[]).await;
    let second = krescent.catch_up(Seen::default()).await.expect("caught up");
    assert_eq!(second.model.seen["a"], [1, 2, 3]);
    assert_eq!(second.model.seen["b"], (1..=12).collect::<Vec<_>>());
    assert_eq!(krescent.parked::<Seen>().await.expect("parked").len(), 9);

    // Fixed: the retry applies a's steps 4 to 12, once, in order.
    let fixed = Seen {
        fixed: true,
        ..Seen::default()
    };
    let retried = krescent.retry_parked(fixed).await.expect("retried");
    assert_eq!(retried.model.seen["a"], (1..=12).collect::<Vec<_>>());
    assert_eq!(retried.model.seen["b"], (1..=12).collect::<Vec<_>>());
    assert!(krescent.parked::<Seen>().await.expect("parked").is_empty());
    let restarted = krescent.catch_up(Seen::default()).await.expect("caught up");
    assert_eq!(restarted.model.seen, retried.model.seen);
    assert_eq!(restarted.processed, 0);

    // Dropping: parked again, then dropped, never applied.
    append_two(&krescent, 13..=13, &[("b", 13)]).await;
    krescent.catch_up(Seen::default()).await.expect("caught up");
    let parked = krescent.parked::<Seen>().await.expect("parked");
    assert_eq!(parked.len(), 1);
    assert_eq!(
        krescent
            .drop_parked::<Seen>(Some(&[parked[0].position]))
            .await
            .expect("dropped"),
        1
    );
    let after = krescent
        .retry_parked(Seen {
            fixed: true,
            ..Seen::default()
        })
        .await
        .expect("nothing to retry");
    assert_eq!(after.model.seen["b"], (1..=12).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_parked_set_of_a_model_in_memory_holds_across_a_restart() {
    parked_set_across_a_restart(Krescent::new(InMemoryEventStore::new())).await;
}

#[tokio::test]
async fn the_parked_set_of_a_model_in_files_holds_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = FileCheckpointStorage::open(dir.path()).expect("open");
    let mut krescent = Krescent::new(InMemoryEventStore::new()).with_storage("file", storage);
    krescent
        .configure::<Seen>()
        .storage("file")
        .expect("checkpointed");
    parked_set_across_a_restart(krescent.clone()).await;
    // In the storage's directory, beside the checkpoint, until none is parked.
    assert!(dir.path().join("seen.checkpoint.json").exists());
    assert!(!dir.path().join("seen.parked.json").exists());
}

/// A model with `park` needs a storage that keeps parked events, and a checkpoint.
#[tokio::test]
async fn parking_needs_checkpoints() {
    #[derive(EventModel, Default)]
    #[model(name = "unkept", on_error = "park")]
    struct Unkept {
        steps: u32,
    }
    #[krescent::handlers]
    impl Unkept {
        fn step(&mut self, _: &Step) {
            self.steps += 1;
        }
    }
    let krescent = Krescent::new(InMemoryEventStore::new());
    match krescent.catch_up(Unkept::default()).await {
        Err(Error::InvalidCheckpoint { reason, .. }) => {
            assert!(
                reason.contains("parks events where the checkpoints are"),
                "{reason}"
            );
        }
        other => panic!("expected a refusal, got {:?}", other.map(|c| c.position)),
    }
}

/// Visible: the supervisor reports a model that is parking, and the metrics count the parked
/// events and the parkings.
#[tokio::test]
async fn a_parking_model_is_reported_and_counted() {
    use krescent::supervisor::{ModelState, Supervisor};
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let krescent = Krescent::new(InMemoryEventStore::new());
    append_two(&krescent, 1..=6, &[("a", 2)]).await;
    let head = krescent.store().head().await.expect("head");
    let supervisor = Supervisor::new(krescent.clone()).model(Seen::default);
    let started = std::time::Instant::now();
    loop {
        let report = supervisor.report();
        if report[0].position >= head {
            assert_eq!(report[0].state, ModelState::Parking { parked: 5 });
            assert_eq!(report[0].state.to_string(), "running, 5 events parked");
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{report:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut parked = None;
    let mut parkings = 0;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let (_, key) = key.into_parts();
        if !key
            .labels()
            .any(|l| l.key() == "model" && l.value() == "seen")
        {
            continue;
        }
        match (key.name(), value) {
            ("krescent_events_parked", DebugValue::Gauge(g)) => parked = Some(g.into_inner()),
            ("krescent_parkings_total", DebugValue::Counter(n)) => parkings += n,
            _ => {}
        }
    }
    assert_eq!(parked, Some(5.0));
    assert_eq!(parkings, 5);
    for exit in supervisor.shutdown().await {
        exit.result.expect("stopped");
    }
}

/// Steps written with queued writes, parked unordered: a poison step breaks the table's
/// check, which only the flush after its handler finds.
#[derive(EventModel)]
#[model(name = "queued_steps", on_error = "park(unordered)")]
#[checkpoint(strategy = "fixed_events(100)", storage = "postgres")]
struct QueuedSteps {
    #[checkpoint(support)]
    table: PostgresProjection,
}

#[krescent::handlers]
impl QueuedSteps {
    async fn step(&mut self, e: &Step, meta: &EventMeta) -> Result<(), StepError> {
        let stream: &str = &meta.stream_id;
        self.table
            .queue(
                "INSERT INTO steps (stream, seq, poison) VALUES ($1, $2, $3)",
                &[&stream, &e.seq, &e.poison],
            )
            .await?;
        Ok(())
    }
}

#[tokio::test]
async fn a_queued_write_that_fails_parks_its_event_alone_and_keeps_the_batch() {
    let (_database, krescent, client) = setup().await;
    let poison = [(5, 40), (7, 3)];
    append_steps(krescent.store(), &poison).await;
    let table = PostgresProjection::new(&krescent.store().checkpoint_storage(), 1)
        .table(
            "steps",
            "CREATE TABLE {table} (stream text, seq integer, poison boolean CHECK (NOT poison), PRIMARY KEY (stream, seq))",
        )
        .expect("a valid table name");
    let caught_up = krescent
        .catch_up(QueuedSteps { table })
        .await
        .expect("the model goes on past its poison events");
    assert_eq!(caught_up.processed, 10_000 - 2);
    let mut wanted = expected_rows(&BTreeMap::new());
    wanted.retain(|(s, seq)| !poison.iter().any(|(p, q)| stream(*p) == *s && q == seq));
    assert_eq!(
        rows(&client).await,
        wanted,
        "each failed write is taken back alone; the rest of its batch commits"
    );
    let storage = krescent.storage("postgres").expect("registered");
    let parked = storage.parked("queued_steps").await.expect("parked");
    let mut parked: Vec<(String, u32)> = parked
        .iter()
        .map(|p| (p.stream_id.clone(), p.attempts))
        .collect();
    parked.sort();
    assert_eq!(parked, vec![(stream(5), 1), (stream(7), 1)]);
}
