//! What works for whole checkpoints works for incremental ones: fencing of leased models (a
//! stale holder's delta is refused and never joins the new holder's chain), segments (each
//! segment keeps a chain of its own), write models' per-stream snapshots (whole, restored
//! whole), `krescent checkpoints show` (base and deltas with their sizes), the checkpoint
//! bytes metric (a delta's size), and the snapshot budget (a model whose checkpoints are small
//! deltas checkpoints far more often in a replay than the same state written whole).

// The gauge's values are byte counts, exact in an `f64`.
#![allow(clippy::float_cmp, clippy::cast_precision_loss)]

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use krescent::checkpoint::{
    CheckpointBucket, CheckpointFormat, CheckpointStorage, CheckpointSupport, CheckpointVersion,
    InMemoryCheckpointStorage, Link, Piece, PostgresCheckpointStorage, StorageError,
    StoredCheckpoint, TrackedMap,
};
use krescent::decide::snapshot_namespace;
use krescent::fleet::{Fence, LeaseConfig, Segment};
use krescent::metrics::CHECKPOINT_BYTES;
use krescent::prelude::*;
use krescent::projection::{PostgresProjection, ProjectionError};
use krescent::store::{ExpectedVersion, InMemoryEventStore};
use krescent::{tokio_postgres, Error, Krescent};
use krescent_testkit::examples::workspace_binary;
use krescent_testkit::postgres::fresh_database;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

#[derive(Event, Serialize, Deserialize)]
#[event(name = "parity.counted")]
struct Counted {
    key: String,
    count: u64,
}

fn counted(key: impl Into<String>, count: u64) -> NewEvent {
    NewEvent::new(&Counted {
        key: key.into(),
        count,
    })
    .expect("encode")
}

/// A model `$ty` named `$name`, checkpointed with `$strategy` to the storage `$storage`, whose
/// state is a tracked map of counts.
#[rustfmt::skip] // rustfmt indents the attribute further on every run
macro_rules! counts {
    ($ty:ident, $name:literal, $strategy:literal, $storage:literal $(, $model:meta)?) => {
        #[derive(Debug, EventModel, Default)]
        #[model(name = $name, version = 1 $(, $model)?)]
        #[checkpoint(strategy = $strategy, storage = $storage, compact_at = "10000%")]
        struct $ty {
            #[checkpoint(incremental)]
            counts: TrackedMap<String, u64>,
        }

        #[krescent::handlers]
        impl $ty {
            fn counted(&mut self, e: &Counted) {
                self.counts.insert(e.key.clone(), e.count);
            }
        }

        impl $ty {
            #[allow(dead_code)] // not every model's state is compared
            fn state(&self) -> BTreeMap<String, u64> {
                self.counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
            }
        }
    };
}

counts!(Leased, "parity.leased", "always", "postgres", exclusive);
counts!(Fencing, "parity.fencing", "never", "postgres");
counts!(
    Split,
    "parity.split",
    "on_shutdown",
    "postgres",
    segments = 2
);
counts!(Shown, "parity.shown", "on_shutdown", "postgres");
counts!(Measured, "parity.measured", "on_shutdown", "memory");

// ---- fencing ------------------------------------------------------------------------------

/// `model`'s checkpoint at `position` as `piece`, as a running model snapshots it.
fn snapshot(model: &mut Fencing, piece: Piece, position: u64) -> StoredCheckpoint {
    // The PostgreSQL storage's format.
    let format = CheckpointFormat::MessagePack;
    let mut bucket = match piece {
        Piece::Whole => CheckpointBucket::with_format(format),
        Piece::Delta(_) => CheckpointBucket::delta_with_format(format),
    };
    model.create_checkpoint(&mut bucket).expect("snapshot");
    model.checkpoint_taken();
    StoredCheckpoint::new(
        Fencing::NAME,
        CheckpointVersion::of::<Fencing>(),
        Position::new(position),
        bucket,
    )
    .with_piece(piece)
}

fn delta(base: u64, previous: u64, sequence: u32) -> Piece {
    Piece::Delta(Link {
        base: Position::new(base),
        previous: Position::new(previous),
        sequence,
    })
}

fn fence(holder: &str, epoch: u64) -> Fence {
    Fence {
        namespace: Fencing::NAME.to_owned(),
        holder: holder.to_owned(),
        epoch,
        ttl: Duration::from_secs(5),
    }
}

/// The chain's pieces, as `(sequence, position)`: the base is 0.
async fn chain(storage: &dyn CheckpointStorage, namespace: &str) -> Vec<(u32, u64)> {
    storage
        .pieces(namespace)
        .await
        .expect("pieces")
        .iter()
        .map(|p| match p.piece {
            Piece::Whole => (0, p.position.get()),
            Piece::Delta(link) => (link.sequence, p.position.get()),
        })
        .collect()
}

/// Holder `a` writes a base and a delta; `b` takes the lease over and goes on with the chain.
/// `a`'s next delta, whichever piece it says it follows, is refused with `Fenced` and nothing
/// of it is stored: the chain stays `b`'s, and `b` appends after it as before.
#[tokio::test]
async fn postgres_a_stale_holder_s_delta_is_fenced_and_never_joins_the_new_holder_s_chain() {
    let db = fresh_database().await;
    let storage = db.checkpoint_storage().await;
    let client = db.client().await;
    client
        .execute(
            "INSERT INTO krescent_leases (checkpoints, namespace, holder, epoch, expires_at)
             VALUES ('public.krescent_checkpoints', $1, 'a', 1, clock_timestamp() + interval '1 hour')",
            &[&Fencing::NAME],
        )
        .await
        .expect("a's lease");
    let a = storage.fenced(&fence("a", 1)).expect("postgres fences");
    let mut model_a = Fencing::default();
    model_a.counts.insert("x".to_owned(), 1);
    a.store(&snapshot(&mut model_a, Piece::Whole, 1))
        .await
        .expect("a's base");
    model_a.counts.insert("y".to_owned(), 2);
    a.store(&snapshot(&mut model_a, delta(1, 1, 1), 2))
        .await
        .expect("a's delta");

    // `b` takes over and continues the chain it restored.
    client
        .execute(
            "UPDATE krescent_leases SET holder = 'b', epoch = 2 WHERE namespace = $1",
            &[&Fencing::NAME],
        )
        .await
        .expect("takeover");
    let b = storage.fenced(&fence("b", 2)).expect("postgres fences");
    let mut model_b = Fencing {
        counts: model_a
            .counts
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect::<HashMap<_, _>>()
            .into(),
    };
    model_b.counts.insert("z".to_owned(), 3);
    b.store(&snapshot(&mut model_b, delta(1, 2, 2), 3))
        .await
        .expect("b's delta");
    let before = chain(&storage, Fencing::NAME).await;
    assert_eq!(before, vec![(0, 1), (1, 2), (2, 3)]);

    // `a` knows nothing of it: its delta after its own last piece, and one after `b`'s.
    model_a.counts.insert("stale".to_owned(), 9);
    for (piece, position) in [(delta(1, 2, 2), 4), (delta(1, 3, 3), 4)] {
        let refused = a
            .store(&snapshot(&mut model_a, piece, position))
            .await
            .expect_err("a stale holder's delta");
        assert!(
            matches!(&refused, StorageError::Fenced { namespace, epoch: 1, current: Some(2) } if namespace == Fencing::NAME),
            "{refused:?}"
        );
        assert_eq!(
            chain(&storage, Fencing::NAME).await,
            before,
            "nothing stored"
        );
    }
    // A stale base is refused too, and removes none of `b`'s deltas.
    let refused = a
        .store(&snapshot(&mut model_a, Piece::Whole, 5))
        .await
        .expect_err("a stale holder's base");
    assert!(
        matches!(refused, StorageError::Fenced { .. }),
        "{refused:?}"
    );
    assert_eq!(chain(&storage, Fencing::NAME).await, before);

    // `b`'s chain goes on, and restores `b`'s state: nothing of `a`'s stale writes.
    model_b.counts.insert("w".to_owned(), 4);
    b.store(&snapshot(&mut model_b, delta(1, 3, 3), 6))
        .await
        .expect("b's next delta");
    let krescent = Krescent::new(db.event_store().await).with_storage("postgres", storage.clone());
    let restored = krescent
        .restore_only(Fencing::default())
        .await
        .expect("restore");
    assert_eq!(
        restored.origin,
        Origin::Restored {
            position: Position::new(6)
        }
    );
    assert_eq!(restored.model.state(), model_b.state());
    assert!(!restored.model.counts.contains_key("stale"));
}

/// Another instance takes the lease over behind a running leased model's back: the model's
/// next checkpoint, a delta, is fenced, and the model steps down with `Error::Fenced` instead
/// of retrying it as a base; no piece is stored after the takeover.
#[tokio::test]
async fn postgres_a_leased_model_steps_down_when_its_delta_is_fenced() {
    let db = fresh_database().await;
    let storage = db.checkpoint_storage().await;
    let mut krescent =
        Krescent::new(db.event_store().await).with_storage("postgres", storage.clone());
    krescent
        .configure::<Leased>()
        .lease(LeaseConfig {
            ttl: Duration::from_secs(1),
            heartbeat: Duration::from_millis(300),
            poll: Duration::from_millis(50),
        })
        .expect("checkpointed");
    let client = db.client().await;
    let append = |from: u64, count: u64| {
        let events = (from..from + count)
            .map(|n| counted(format!("k{}", n % 7), n))
            .collect();
        let krescent = &krescent;
        async move {
            krescent
                .store()
                .append("counts", ExpectedVersion::Any, events)
                .await
                .expect("append")
        }
    };
    append(0, 20).await;
    let running = krescent.stream(Leased::default());
    running.reached(Position::new(20)).await.expect("runs");
    // The chain reaches the head: a base and deltas after it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = loop {
        let pieces = chain(&storage, Leased::NAME).await;
        if pieces.last().is_some_and(|&(_, at)| at == 20) {
            break pieces;
        }
        assert!(Instant::now() < deadline, "the chain stays at {pieces:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        before.len() >= 2 && before[0].0 == 0,
        "a base and deltas: {before:?}"
    );
    let updated = client
        .execute(
            "UPDATE krescent_leases SET holder = 'intruder', epoch = epoch + 1, expires_at = clock_timestamp() + interval '1 hour' WHERE namespace = $1",
            &[&Leased::NAME],
        )
        .await
        .expect("take over");
    assert_eq!(updated, 1);
    let mut from = 20;
    while !running.is_finished() {
        assert!(Instant::now() < deadline, "the fenced model kept running");
        append(from, 1).await;
        from += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let error = running.shutdown().await.expect_err("fenced");
    assert!(
        matches!(
            &error,
            Error::Fenced {
                model: "parity.leased",
                epoch: 1,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        chain(&storage, Leased::NAME).await,
        before,
        "nothing after the takeover"
    );
}

// ---- segments -----------------------------------------------------------------------------

/// Each segment of a split model keeps its own chain (namespace `<model>#i/N`): a base, then a
/// delta of its own streams' changes; each restores what a replay of its streams builds, and
/// together they hold every stream once.
#[tokio::test]
async fn segments_each_keep_a_chain_of_their_own() {
    let db = fresh_database().await;
    let storage = db.checkpoint_storage().await;
    let krescent = Krescent::new(db.event_store().await).with_storage("postgres", storage.clone());
    let mut expected = BTreeMap::new();
    let mut append_round = |round: u64| {
        let mut batches: Vec<(String, Vec<NewEvent>)> = Vec::new();
        for stream in 0..8 {
            let events = (0..5)
                .map(|i| {
                    let key = format!("s{stream}-k{}", (i + round) % 4);
                    let count = round * 100 + i;
                    expected.insert(
                        key.clone(),
                        (Segment::of(&format!("stream-{stream}"), 2), count),
                    );
                    counted(key, count)
                })
                .collect();
            batches.push((format!("stream-{stream}"), events));
        }
        batches
    };
    for round in 0..3 {
        for (stream, events) in append_round(round) {
            krescent
                .store()
                .append(&stream, ExpectedVersion::Any, events)
                .await
                .expect("append");
        }
        for segment in Segment::all(2) {
            krescent
                .for_segment(segment)
                .catch_up(Split::default())
                .await
                .expect("catch up");
        }
    }
    let mut seen = BTreeMap::new();
    for segment in Segment::all(2) {
        let namespace = segment.namespace(Split::NAME);
        let pieces = chain(&storage, &namespace).await;
        assert_eq!(
            pieces
                .iter()
                .map(|&(sequence, _)| sequence)
                .collect::<Vec<_>>(),
            vec![0, 1, 2],
            "{namespace}: a base and a delta per later run"
        );
        let restored = krescent
            .for_segment(segment)
            .restore_only(Split::default())
            .await
            .expect("restore");
        let mine: BTreeMap<String, u64> = expected
            .iter()
            .filter(|(_, (owner, _))| *owner == segment)
            .map(|(k, (_, v))| (k.clone(), *v))
            .collect();
        assert!(!mine.is_empty(), "{namespace} owns streams");
        assert_eq!(restored.model.state(), mine, "{namespace}");
        seen.extend(restored.model.state());
    }
    assert_eq!(seen.len(), expected.len(), "every stream once");
}

// ---- write models -------------------------------------------------------------------------

/// A write model with a tracked field: per stream, counts by key.
#[derive(Debug, EventModel, Default)]
#[model(name = "parity.tally", version = 1)]
#[checkpoint(strategy = "fixed_events(3)", storage = "memory")]
struct Tally {
    #[checkpoint(incremental)]
    counts: TrackedMap<String, u64>,
}

#[krescent::handlers]
impl Tally {
    fn counted(&mut self, e: &Counted) {
        self.counts.insert(e.key.clone(), e.count);
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

/// A write model's per-stream snapshot of a tracked field is whole (one piece, never a delta,
/// however many snapshots the stream had) and loads the state a replay of the stream builds.
#[tokio::test]
async fn write_model_snapshots_of_tracked_fields_are_whole() {
    let storage = Arc::new(InMemoryCheckpointStorage::new());
    let krescent =
        Krescent::new(InMemoryEventStore::new()).with_shared_storage("memory", storage.clone());
    let mut expected = BTreeMap::new();
    for i in 0..30_u64 {
        let key = format!("k{}", i % 4);
        expected.insert(key.clone(), i);
        let decided = krescent
            .decide::<Tally>("tally-1")
            .run(|_| Ok::<_, Never>(vec![counted(key.clone(), i)]))
            .await
            .expect("decide");
        if let Some(snapshot) = decided.snapshot {
            snapshot.written().await.expect("written");
        }
    }
    let namespace = snapshot_namespace::<Tally>("tally-1");
    let pieces = storage.pieces(&namespace).await.expect("pieces");
    assert_eq!(pieces.len(), 1, "{pieces:?}");
    assert_eq!(pieces[0].piece, Piece::Whole);
    let loaded = krescent.load::<Tally>("tally-1").await.expect("load");
    assert!(loaded.snapshot.is_some(), "loaded from its snapshot");
    assert!(loaded.read < 3, "only the events after it: {}", loaded.read);
    let state: BTreeMap<String, u64> = loaded
        .model
        .counts
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(state, expected);
}

// ---- the CLI ------------------------------------------------------------------------------

/// `krescent checkpoints show` of an incremental checkpoint lists its base and deltas with
/// their positions and sizes, in JSON and as a table.
#[tokio::test]
async fn checkpoints_show_lists_the_base_and_deltas_with_sizes() {
    let db = fresh_database().await;
    let storage = db.checkpoint_storage().await;
    let krescent = Krescent::new(db.event_store().await).with_storage("postgres", storage.clone());
    // A base of 200 keys, then two deltas of one key each.
    let events = (0..200).map(|i| counted(format!("k{i}"), i)).collect();
    krescent
        .store()
        .append("counts", ExpectedVersion::Any, events)
        .await
        .expect("append");
    krescent.catch_up(Shown::default()).await.expect("base");
    for n in 0..2 {
        krescent
            .store()
            .append(
                "counts",
                ExpectedVersion::Any,
                vec![counted("k1", 1000 + n)],
            )
            .await
            .expect("append");
        krescent.catch_up(Shown::default()).await.expect("delta");
    }
    let cli = || {
        let mut command = Command::new(workspace_binary("krescent-cli", "krescent"));
        command
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .args([
                "--database-url",
                db.url(),
                "checkpoints",
                "show",
                Shown::NAME,
            ]);
        command
    };
    let output = cli().arg("--json").output().expect("run krescent");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let pieces = shown["pieces"].as_array().expect("pieces");
    let names: Vec<&str> = pieces
        .iter()
        .map(|p| p["piece"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["base", "delta 1", "delta 2"], "{shown}");
    let positions: Vec<u64> = pieces
        .iter()
        .map(|p| p["position"].as_u64().expect("position"))
        .collect();
    assert_eq!(positions, [200, 201, 202]);
    let sizes: Vec<u64> = pieces
        .iter()
        .map(|p| p["size_bytes"].as_u64().expect("size"))
        .collect();
    assert!(sizes.iter().all(|&s| s > 0), "{sizes:?}");
    assert!(
        sizes[1] * 10 < sizes[0] && sizes[2] * 10 < sizes[0],
        "a delta of one key is small: {sizes:?}"
    );
    let stored = storage.pieces(Shown::NAME).await.expect("pieces");
    assert_eq!(sizes, stored.iter().map(|p| p.bytes).collect::<Vec<_>>());
    assert_eq!(shown["position"], 202);

    let output = cli().output().expect("run krescent");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.lines().any(|l| l.starts_with("PIECE")), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("delta 2")
            && l.contains("202")
            && l.contains(&sizes[2].to_string())),
        "{text}"
    );
}

// ---- metrics ------------------------------------------------------------------------------

/// The debugging recorder: the only one of this test binary.
fn snapshotter() -> &'static Mutex<Snapshotter> {
    static SNAPSHOTTER: OnceLock<Mutex<Snapshotter>> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this test binary");
        Mutex::new(snapshotter)
    })
}

/// The checkpoint bytes gauge of `model`, if a snapshot of the recorder sees it set.
fn checkpoint_bytes(model: &str) -> Option<f64> {
    let snapshotter = snapshotter().lock().unwrap_or_else(PoisonError::into_inner);
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find_map(|(key, _, _, value)| {
            let key = key.key();
            let ours = key.name() == CHECKPOINT_BYTES
                && key
                    .labels()
                    .any(|l| l.key() == "model" && l.value() == model);
            match value {
                DebugValue::Gauge(bytes) if ours => Some(bytes.into_inner()),
                _ => None,
            }
        })
}

/// `krescent_checkpoint_bytes` reports what each checkpoint wrote: the base's size after the
/// first run, then a delta's, which is the size of the delta the storage keeps.
#[tokio::test]
async fn the_checkpoint_bytes_metric_reports_a_delta_s_size() {
    let _ = snapshotter(); // installs the recorder
    let storage = Arc::new(InMemoryCheckpointStorage::new());
    let krescent =
        Krescent::new(InMemoryEventStore::new()).with_shared_storage("memory", storage.clone());
    let events = (0..500).map(|i| counted(format!("key-{i}"), i)).collect();
    krescent
        .store()
        .append("counts", ExpectedVersion::Any, events)
        .await
        .expect("append");
    krescent.catch_up(Measured::default()).await.expect("base");
    let base = checkpoint_bytes(Measured::NAME).expect("the base's bytes");
    krescent
        .store()
        .append("counts", ExpectedVersion::Any, vec![counted("key-7", 70)])
        .await
        .expect("append");
    krescent.catch_up(Measured::default()).await.expect("delta");
    let delta = checkpoint_bytes(Measured::NAME).expect("the delta's bytes");
    let pieces = storage.pieces(Measured::NAME).await.expect("pieces");
    assert_eq!(pieces.len(), 2, "{pieces:?}");
    assert_eq!(base, pieces[0].bytes as f64, "the base's size");
    assert_eq!(delta, pieces[1].bytes as f64, "the delta's size");
    assert!(
        delta * 50.0 < base,
        "one key's delta against 500 keys: {delta} / {base}"
    );
}

// ---- the snapshot budget ------------------------------------------------------------------

/// The keys in the replayed models' maps before the first event.
const BUDGET_KEYS: u64 = 100_000;
/// The events replayed.
const BUDGET_EVENTS: u64 = 20_000;
/// The keys the replayed events change: a delta holds at most these.
const HOT_KEYS: u64 = 20;

/// `$ty`: a map of [`BUDGET_KEYS`] keys checkpointed with `fixed_events(25)`, its field as
/// `$field` says.
macro_rules! budgeted {
    ($ty:ident, $name:literal, $map:ty, [$($field:tt)*]) => {
        #[derive(Debug, EventModel, Default)]
        #[model(name = $name, version = 1)]
        #[checkpoint(strategy = "fixed_events(25)", storage = "memory")]
        struct $ty {
            $($field)*
            counts: $map,
        }

        #[krescent::handlers]
        impl $ty {
            fn counted(&mut self, e: &Counted) {
                self.counts.insert(e.key.clone(), e.count);
            }
        }

        impl $ty {
            fn filled() -> Self {
                let filler: HashMap<String, u64> =
                    (0..BUDGET_KEYS).map(|i| (format!("filler-{i:06}"), i)).collect();
                Self { counts: filler.into_iter().collect() }
            }
        }
    };
}

budgeted!(BudgetTracked, "parity.budget.tracked", TrackedMap<String, u64>, [#[checkpoint(incremental)]]);
budgeted!(BudgetWhole, "parity.budget.whole", HashMap<String, u64>, [#[checkpoint]]);

/// The snapshot budget charges a checkpoint what it costs: in a replay into a large tracked
/// map whose events change a few keys, the base's cost spaces out the next base only, and the
/// small deltas follow at the strategy's pace, each charged its own cost; the same map written
/// whole spaces every checkpoint out by its whole cost. The deltas restore the replayed map.
/// (How many more checkpoints a replay takes is measured in release, `bench incremental_replay`;
/// a debug build's fixed cost per checkpoint, and a loaded machine, make a count here noise.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_budget_lets_small_deltas_keep_the_strategy_s_pace() {
    let storage = Arc::new(InMemoryCheckpointStorage::new());
    let krescent =
        Krescent::new(InMemoryEventStore::new()).with_shared_storage("memory", storage.clone());
    let events = (0..BUDGET_EVENTS)
        .map(|i| counted(format!("k{}", i % HOT_KEYS), i))
        .collect();
    krescent
        .store()
        .append("counts", ExpectedVersion::NoStream, events)
        .await
        .expect("append");
    let tracked = krescent
        .catch_up(BudgetTracked::filled())
        .await
        .expect("tracked");
    let whole = krescent
        .catch_up(BudgetWhole::filled())
        .await
        .expect("whole");
    // The base, 100,000 keys, costs what the whole map's checkpoint costs: the whole map's
    // next checkpoint waits for 39 times that (in a replay this short, the final one). The
    // base defers only the next base: the first delta follows at the strategy's pace, and
    // each delta is charged its own small cost.
    let pieces = storage.pieces(BudgetTracked::NAME).await.expect("pieces");
    assert_eq!(pieces[0].piece, Piece::Whole);
    assert_eq!(pieces[0].position, Position::new(25));
    assert_eq!(
        pieces[1].position,
        Position::new(50),
        "the first delta, at the strategy's pace"
    );
    assert!(
        pieces[1..]
            .iter()
            .all(|p| matches!(p.piece, Piece::Delta(_))),
        "{pieces:?}"
    );
    assert!(
        tracked.checkpoints > whole.checkpoints,
        "deltas: {} checkpoints, the whole map: {}",
        tracked.checkpoints,
        whole.checkpoints
    );
    let restored = krescent
        .restore_only(BudgetTracked::default())
        .await
        .expect("restore");
    assert_eq!(restored.model.counts.len(), tracked.model.counts.len());
    assert!(*restored.model.counts == *tracked.model.counts);
}

// ---- crashes at a projection's commit -----------------------------------------------------

/// A projection with a tracked field: its deltas commit in the transaction of its rows.
#[derive(EventModel, Debug)]
#[model(name = "parity.projected", version = 1)]
#[checkpoint(strategy = "on_shutdown", storage = "postgres", compact_at = "1%")]
struct Projected {
    #[checkpoint(support)]
    table: PostgresProjection,
    #[checkpoint(incremental)]
    counts: TrackedMap<String, u64>,
    insert: String,
}

#[krescent::handlers]
impl Projected {
    async fn counted(&mut self, e: &Counted, meta: &EventMeta) -> Result<(), ProjectionError> {
        let position = i64::try_from(meta.position.get()).expect("small");
        self.table.execute(&self.insert, &[&position]).await?;
        self.counts.insert(e.key.clone(), e.count);
        Ok(())
    }
}

impl Projected {
    fn new(storage: &PostgresCheckpointStorage) -> Self {
        let table = PostgresProjection::new(storage, 1)
            .table(
                "projected_rows",
                "CREATE TABLE {table} (position bigint NOT NULL)",
            )
            .expect("a valid table");
        let name = table
            .name_of("projected_rows")
            .expect("declared")
            .to_owned();
        Projected {
            table,
            counts: TrackedMap::new(),
            insert: format!("INSERT INTO {name} (position) VALUES ($1)"),
        }
    }
}

/// Makes the commits of transactions that wrote to the table a row of `stall` names sleep in
/// the server (a deferred constraint trigger runs at `COMMIT`), so that a test can end the
/// connection between the checkpoint's write and its commit.
async fn stall_commits(client: &tokio_postgres::Client) {
    client
        .batch_execute(
            "CREATE TABLE stall (what text PRIMARY KEY);
             CREATE FUNCTION stall_commit() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF EXISTS (SELECT 1 FROM stall WHERE what = TG_TABLE_NAME) THEN
                     PERFORM pg_sleep(60);
                 END IF;
                 RETURN NULL;
             END $$;
             CREATE CONSTRAINT TRIGGER stall_deltas AFTER INSERT ON krescent_checkpoint_deltas
                 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION stall_commit();
             CREATE CONSTRAINT TRIGGER stall_checkpoints AFTER INSERT OR UPDATE ON krescent_checkpoints
                 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION stall_commit();",
        )
        .await
        .expect("the stalling trigger");
}

/// Runs `catch_up` while commits writing to `table` stall, and ends the stalled connection
/// (as the process's death would): the catch-up fails.
async fn crash_at_commit(
    krescent: &Krescent<krescent::store::PostgresEventStore>,
    storage: &PostgresCheckpointStorage,
    client: &tokio_postgres::Client,
    table: &str,
) {
    client
        .execute("INSERT INTO stall (what) VALUES ($1)", &[&table])
        .await
        .expect("stall");
    let run = krescent.catch_up(Projected::new(storage));
    let kill = async {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let killed = client
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE wait_event = 'PgSleep' AND datname = current_database()",
                    &[],
                )
                .await
                .expect("terminate");
            if !killed.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "no commit stalled on `{table}`");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (run, ()) = tokio::join!(run, kill);
    run.expect_err("the connection died in the commit");
    client
        .execute("DELETE FROM stall", &[])
        .await
        .expect("unstall");
}

/// What is committed: the restored counts and position, the projected rows, the pieces.
async fn committed(
    krescent: &Krescent<krescent::store::PostgresEventStore>,
    storage: &PostgresCheckpointStorage,
    client: &tokio_postgres::Client,
) -> (BTreeMap<String, u64>, Origin, i64, Vec<(u32, u64)>) {
    let restored = krescent
        .restore_only(Projected::new(storage))
        .await
        .expect("restore");
    let rows: i64 = client
        .query_one("SELECT count(*) FROM projected_rows", &[])
        .await
        .expect("rows")
        .get(0);
    let counts = restored
        .model
        .counts
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    (
        counts,
        restored.origin,
        rows,
        chain(storage, Projected::NAME).await,
    )
}

/// A projection's delta written and its commit never done (the connection dies in the
/// `COMMIT`), then a compaction's base written and its commit never done: each time the
/// storage restores the state at the last committed checkpoint, with exactly the rows of its
/// transactions, and the next run goes on from there.
#[tokio::test]
async fn postgres_crashes_between_a_delta_s_write_and_its_commit_and_in_a_compaction() {
    let db = fresh_database().await;
    let storage = db.checkpoint_storage().await;
    let krescent = Krescent::new(db.event_store().await).with_storage("postgres", storage.clone());
    let client = db.client().await;
    stall_commits(&client).await;
    let mut expected = BTreeMap::new();
    let append = |from: u64, expected: &mut BTreeMap<String, u64>| {
        let events: Vec<NewEvent> = (from..from + 10)
            .map(|n| {
                expected.insert(format!("k{}", n % 6), n);
                counted(format!("k{}", n % 6), n)
            })
            .collect();
        let krescent = &krescent;
        async move {
            krescent
                .store()
                .append("counts", ExpectedVersion::Any, events)
                .await
                .expect("append");
        }
    };
    let at = |position: u64| Origin::Restored {
        position: Position::new(position),
    };

    append(0, &mut expected).await;
    krescent
        .catch_up(Projected::new(&storage))
        .await
        .expect("the base");
    let base = (expected.clone(), at(10), 10, vec![(0, 10)]);
    assert_eq!(committed(&krescent, &storage, &client).await, base);

    // A delta: written in the projection's transaction, its commit never done.
    append(10, &mut expected).await;
    crash_at_commit(&krescent, &storage, &client, "krescent_checkpoint_deltas").await;
    assert_eq!(committed(&krescent, &storage, &client).await, base);
    krescent
        .catch_up(Projected::new(&storage))
        .await
        .expect("the delta");
    let delta = (expected.clone(), at(20), 20, vec![(0, 10), (1, 20)]);
    assert_eq!(committed(&krescent, &storage, &client).await, delta);

    // The deltas outgrew 1% of the base: a compaction, its commit never done.
    append(20, &mut expected).await;
    crash_at_commit(&krescent, &storage, &client, "krescent_checkpoints").await;
    assert_eq!(committed(&krescent, &storage, &client).await, delta);
    krescent
        .catch_up(Projected::new(&storage))
        .await
        .expect("the compaction");
    assert_eq!(
        committed(&krescent, &storage, &client).await,
        (expected, at(30), 30, vec![(0, 30)])
    );
}
