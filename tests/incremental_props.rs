//! Acceptance 1 of incremental checkpoints, as a state machine (proptest-state-machine): random
//! changes to a tracked map and set, random checkpoint points, random crashes (after a delta or
//! a base was written and before its commit, and after a compaction's commit before the old
//! pieces were removed) and random rebuild triggers (a checkpoint of another version, a damaged
//! piece), on the memory, file and PostgreSQL storages. After every step the storage restores
//! exactly the state at the last committed checkpoint, or nothing usable when it was damaged
//! since, never a partly restored state; a reference model of the events says which.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use krescent::checkpoint::{
    CheckpointBucket, CheckpointStorage, CheckpointVersion, FileCheckpointStorage,
    InMemoryCheckpointStorage, Integrity, Piece, PieceInfo, StorageError, StoredCheckpoint,
    TrackedMap, TrackedSet,
};
use krescent::prelude::*;
use krescent_testkit::postgres::{fresh_database, TestDatabase};
use proptest::prelude::*;
use proptest::test_runner::Config;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};

#[derive(Event, Serialize, Deserialize)]
#[event(name = "props.set")]
struct Set {
    key: u8,
    value: u16,
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "props.removed")]
struct Removed {
    key: u8,
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "props.toggled")]
struct Toggled {
    id: u8,
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "props.cleared")]
struct Cleared {}

#[derive(Debug, EventModel, Default)]
#[model(name = "props", version = 1)]
#[checkpoint(strategy = "on_shutdown", storage = "under_test", compact_at = "60%")]
struct Props {
    #[checkpoint(incremental)]
    values: TrackedMap<u8, u16>,
    #[checkpoint(incremental)]
    seen: TrackedSet<u8>,
    #[checkpoint]
    events: u64,
}

#[krescent::handlers]
impl Props {
    fn set(&mut self, e: &Set) {
        self.values.insert(e.key, e.value);
        self.events += 1;
    }
    fn removed(&mut self, e: &Removed) {
        self.values.remove(&e.key);
        self.events += 1;
    }
    fn toggled(&mut self, e: &Toggled) {
        if !self.seen.remove(&e.id) {
            self.seen.insert(e.id);
        }
        self.events += 1;
    }
    fn cleared(&mut self, _: &Cleared) {
        self.values.clear();
        self.events += 1;
    }
}

/// A state as plain collections, comparable with the reference's.
#[derive(Debug, Default, Clone, PartialEq)]
struct State {
    values: BTreeMap<u8, u16>,
    seen: BTreeSet<u8>,
    events: u64,
}

impl Props {
    fn state(&self) -> State {
        State {
            values: self.values.iter().map(|(k, v)| (*k, *v)).collect(),
            seen: self.seen.iter().copied().collect(),
            events: self.events,
        }
    }
}

/// One event.
#[derive(Debug, Clone)]
enum Op {
    Set(u8, u16),
    Remove(u8),
    Toggle(u8),
    Clear,
}

impl Op {
    fn event(&self) -> NewEvent {
        match *self {
            Op::Set(key, value) => NewEvent::new(&Set { key, value }),
            Op::Remove(key) => NewEvent::new(&Removed { key }),
            Op::Toggle(id) => NewEvent::new(&Toggled { id }),
            Op::Clear => NewEvent::new(&Cleared {}),
        }
        .expect("encode")
    }

    fn apply(&self, state: &mut State) {
        match *self {
            Op::Set(key, value) => {
                state.values.insert(key, value);
            }
            Op::Remove(key) => {
                state.values.remove(&key);
            }
            Op::Toggle(id) => {
                if !state.seen.remove(&id) {
                    state.seen.insert(id);
                }
            }
            Op::Clear => state.values.clear(),
        }
        state.events += 1;
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..40_u8, any::<u16>()).prop_map(|(k, v)| Op::Set(k, v)),
        3 => (0..40_u8).prop_map(Op::Remove),
        3 => (0..20_u8).prop_map(Op::Toggle),
        1 => Just(Op::Clear),
    ]
}

/// A step.
#[derive(Debug, Clone)]
enum Step {
    /// Events appended, not yet processed.
    Append(Vec<Op>),
    /// A run that processes the new events and commits a checkpoint.
    Checkpoint,
    /// A run whose checkpoint was written but not committed when the process died (a delta's
    /// file without its manifest, a rolled-back transaction).
    CrashBeforeCommit,
    /// A run whose checkpoint committed, and the process died before the pieces it replaced
    /// were removed (mid-compaction) or before it knew.
    CrashAfterCommit,
    /// A checkpoint of another version replaces the chain: the next run rebuilds.
    OtherVersion,
    /// A stored piece is damaged (file, PostgreSQL): the chain is unusable.
    Damage(prop::sample::Index),
}

/// The reference: the events, and how many the last committed checkpoint covers.
#[derive(Debug, Clone, Default)]
struct Reference {
    ops: Vec<Op>,
    /// Events covered by the committed checkpoint; `None`: no usable one.
    committed: Option<usize>,
    /// Whether the stored checkpoint is unusable (restores nothing).
    unusable: bool,
    /// Whether pieces can be damaged (file and PostgreSQL storages).
    damageable: bool,
}

impl Reference {
    fn state_at(&self, events: usize) -> State {
        let mut state = State::default();
        for op in &self.ops[..events] {
            op.apply(&mut state);
        }
        state
    }

    /// Whether a run has events to process: new ones, or all of them after a rebuild.
    fn run_has_events(&self) -> bool {
        match self.committed {
            Some(covered) if !self.unusable => self.ops.len() > covered,
            _ => !self.ops.is_empty(),
        }
    }
}

macro_rules! reference {
    ($machine:ident, $damageable:expr) => {
        struct $machine;

        impl ReferenceStateMachine for $machine {
            type State = Reference;
            type Transition = Step;

            fn init_state() -> BoxedStrategy<Reference> {
                Just(Reference {
                    damageable: $damageable,
                    ..Reference::default()
                })
                .boxed()
            }

            fn transitions(_: &Reference) -> BoxedStrategy<Step> {
                prop_oneof![
                    4 => prop::collection::vec(op(), 1..12).prop_map(Step::Append),
                    4 => Just(Step::Checkpoint),
                    1 => Just(Step::CrashBeforeCommit),
                    1 => Just(Step::CrashAfterCommit),
                    1 => Just(Step::OtherVersion),
                    1 => any::<prop::sample::Index>().prop_map(Step::Damage),
                ]
                .boxed()
            }

            fn preconditions(state: &Reference, step: &Step) -> bool {
                match step {
                    Step::Append(_) => true,
                    Step::Checkpoint | Step::CrashBeforeCommit | Step::CrashAfterCommit => {
                        state.run_has_events()
                    }
                    Step::OtherVersion => true,
                    Step::Damage(_) => {
                        state.damageable && state.committed.is_some() && !state.unusable
                    }
                }
            }

            fn apply(mut state: Reference, step: &Step) -> Reference {
                match step {
                    Step::Append(ops) => state.ops.extend(ops.iter().cloned()),
                    Step::Checkpoint | Step::CrashAfterCommit => {
                        state.committed = Some(state.ops.len());
                        state.unusable = false;
                    }
                    Step::CrashBeforeCommit => {
                        // The run rebuilt (when the chain was unusable): the runner deleted it
                        // before replaying, and the failed write left nothing.
                        if state.unusable {
                            state.committed = None;
                            state.unusable = false;
                        }
                    }
                    Step::OtherVersion | Step::Damage(_) => {
                        state.committed = Some(state.committed.unwrap_or(0));
                        state.unusable = true;
                    }
                }
                state
            }
        }
    };
}

reference!(MemoryReference, false);
reference!(FileReference, true);
reference!(PostgresReference, true);

/// The one runtime every machine runs on (the PostgreSQL server's pools live in it).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// What a store of the fault-injecting storage does next.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    BeforeCommit,
    AfterCommit,
}

/// A storage that fails its next store as a crash would, around the real one.
#[derive(Debug)]
struct Crashing {
    inner: Arc<dyn CheckpointStorage>,
    /// The file storage's directory, where a crash leaves files behind.
    dir: Option<PathBuf>,
    fault: Mutex<Fault>,
}

impl Crashing {
    fn crashed(what: &str) -> StorageError {
        StorageError::Database(format!("the process died {what}").into())
    }

    /// Leaves what a write that never committed leaves in the directory: the delta's file,
    /// unreferenced (a torn one), or the base's temporary file.
    fn leave_uncommitted(&self, checkpoint: &StoredCheckpoint) {
        let Some(dir) = &self.dir else {
            return;
        };
        let path = match checkpoint.piece {
            Piece::Delta(link) => dir.join(format!(
                "{}.{}-{}.piece.json",
                checkpoint.namespace, link.base, link.sequence
            )),
            Piece::Whole => dir.join(format!("{}.checkpoint.json.tmp-1", checkpoint.namespace)),
        };
        std::fs::write(path, b"{\"format\":2,\"torn").expect("leave a torn file");
    }
}

#[krescent::async_trait]
impl CheckpointStorage for Crashing {
    async fn load(&self, namespace: &str) -> Result<Option<StoredCheckpoint>, StorageError> {
        self.inner.load(namespace).await
    }
    async fn load_checked(
        &self,
        namespace: &str,
    ) -> Result<Option<(StoredCheckpoint, Integrity)>, StorageError> {
        self.inner.load_checked(namespace).await
    }
    fn format(&self) -> krescent::checkpoint::CheckpointFormat {
        self.inner.format()
    }
    fn keeps_deltas(&self) -> bool {
        self.inner.keeps_deltas()
    }
    async fn pieces(&self, namespace: &str) -> Result<Vec<PieceInfo>, StorageError> {
        self.inner.pieces(namespace).await
    }
    async fn store(&self, checkpoint: &StoredCheckpoint) -> Result<(), StorageError> {
        let fault = std::mem::replace(&mut *self.fault.lock().expect("fault"), Fault::None);
        match fault {
            Fault::None => self.inner.store(checkpoint).await,
            Fault::BeforeCommit => {
                self.leave_uncommitted(checkpoint);
                Err(Self::crashed("before the checkpoint committed"))
            }
            Fault::AfterCommit => {
                // The pieces a compaction replaces, kept to put back as a crash before their
                // removal leaves them.
                let kept: Vec<(PathBuf, Vec<u8>)> = self
                    .dir
                    .iter()
                    .flat_map(|dir| std::fs::read_dir(dir).expect("dir"))
                    .map(|e| e.expect("entry").path())
                    .filter(|p| p.to_string_lossy().ends_with(".piece.json"))
                    .filter_map(|p| std::fs::read(&p).ok().map(|bytes| (p, bytes)))
                    .collect();
                self.inner.store(checkpoint).await?;
                for (path, bytes) in kept {
                    if !path.exists() {
                        std::fs::write(path, bytes).expect("an orphaned piece");
                    }
                }
                Err(Self::crashed("after the checkpoint committed"))
            }
        }
    }
    async fn delete(&self, namespace: &str) -> Result<bool, StorageError> {
        self.inner.delete(namespace).await
    }
    async fn list(&self) -> Result<Vec<String>, StorageError> {
        self.inner.list().await
    }
}

/// How a machine damages a stored piece.
enum Damager {
    None,
    Files(PathBuf),
    Rows(Arc<TestDatabase>),
}

/// The system under test: a store, the storage, and a way to damage it.
struct Harness {
    krescent: Krescent<InMemoryEventStore>,
    storage: Arc<Crashing>,
    damager: Damager,
    appended: u64,
    /// Kept until the case ends.
    _dir: Option<tempfile::TempDir>,
}

impl Harness {
    fn new(
        inner: Arc<dyn CheckpointStorage>,
        dir: Option<tempfile::TempDir>,
        damager: Damager,
    ) -> Self {
        let storage = Arc::new(Crashing {
            inner,
            dir: dir.as_ref().map(|d| d.path().to_owned()),
            fault: Mutex::new(Fault::None),
        });
        Harness {
            krescent: Krescent::new(InMemoryEventStore::new())
                .with_shared_storage("under_test", storage.clone()),
            storage,
            damager,
            appended: 0,
            _dir: dir,
        }
    }

    fn run(&self, fault: Fault) -> Result<(), String> {
        *self.storage.fault.lock().expect("fault") = fault;
        runtime()
            .block_on(self.krescent.catch_up(Props::default()))
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn step(&mut self, step: &Step) {
        match step {
            Step::Append(ops) => {
                let expected = if self.appended == 0 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(self.appended)
                };
                runtime()
                    .block_on(self.krescent.store().append(
                        "props-1",
                        expected,
                        ops.iter().map(Op::event).collect(),
                    ))
                    .expect("append");
                self.appended += ops.len() as u64;
            }
            Step::Checkpoint => self.run(Fault::None).expect("a checkpoint"),
            Step::CrashBeforeCommit => {
                self.run(Fault::BeforeCommit).expect_err("a crash");
            }
            Step::CrashAfterCommit => {
                self.run(Fault::AfterCommit).expect_err("a crash");
            }
            Step::OtherVersion => {
                let mut bucket = CheckpointBucket::new();
                bucket.put("events", &0_u64).expect("put");
                let other = StoredCheckpoint::new(
                    "props",
                    CheckpointVersion::from_text("another build"),
                    Position::new(u64::MAX - 1),
                    bucket,
                );
                runtime()
                    .block_on(self.storage.inner.store(&other))
                    .expect("another version's checkpoint");
            }
            Step::Damage(index) => self.damage(*index),
        }
    }

    /// Damages one stored piece, `index` choosing which.
    fn damage(&self, index: prop::sample::Index) {
        match &self.damager {
            Damager::None => {}
            Damager::Files(dir) => {
                let mut pieces: Vec<PathBuf> = std::fs::read_dir(dir)
                    .expect("dir")
                    .map(|e| e.expect("entry").path())
                    .filter(|p| {
                        let name = p.to_string_lossy();
                        name.ends_with(".checkpoint.json")
                    })
                    .collect();
                // The manifest names the pieces; a whole checkpoint is one file.
                pieces.extend(referenced_pieces(dir));
                pieces.sort();
                let path = index.get(&pieces);
                flip_middle(path);
            }
            Damager::Rows(db) => {
                let client = runtime().block_on(db.client());
                let rows: i64 = runtime()
                    .block_on(client.query_one(
                        "SELECT count(*) FROM krescent_checkpoint_deltas WHERE namespace = 'props'",
                        &[],
                    ))
                    .expect("count")
                    .get(0);
                let n = index.index(usize::try_from(rows).expect("count") + 1);
                let sql = if n == 0 {
                    "UPDATE krescent_checkpoints SET checksum = (checksum + 1) % 4294967296 WHERE namespace = 'props'".to_owned()
                } else {
                    format!("DELETE FROM krescent_checkpoint_deltas WHERE namespace = 'props' AND sequence = {n}")
                };
                let changed = runtime().block_on(client.execute(&sql, &[])).expect(&sql);
                assert_eq!(changed, 1, "{sql}");
            }
        }
    }

    /// What the storage restores now.
    fn restored(&self) -> (Origin, State) {
        let restored = runtime()
            .block_on(self.krescent.restore_only(Props::default()))
            .expect("restore");
        (restored.origin, restored.model.state())
    }
}

/// The piece files a manifest in `dir` names.
fn referenced_pieces(dir: &Path) -> Vec<PathBuf> {
    let manifest = dir.join("props.checkpoint.json");
    let Ok(bytes) = std::fs::read(&manifest) else {
        return Vec::new();
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    if let Some(base) = value
        .get("base")
        .and_then(|b| b.get("file"))
        .and_then(|f| f.as_str())
    {
        files.push(dir.join(base));
    }
    for delta in value
        .get("deltas")
        .and_then(|d| d.as_array())
        .into_iter()
        .flatten()
    {
        if let Some(file) = delta.get("file").and_then(|f| f.as_str()) {
            files.push(dir.join(file));
        }
    }
    files
}

fn flip_middle(path: &Path) {
    let mut bytes = std::fs::read(path).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x04;
    std::fs::write(path, bytes).expect("write");
}

/// The invariant: the storage restores the state at the committed checkpoint, or nothing
/// usable.
fn check(harness: &Harness, reference: &Reference) {
    let (origin, state) = harness.restored();
    match reference.committed {
        _ if reference.unusable => {
            assert!(matches!(origin, Origin::Unusable { .. }), "{origin:?}");
            assert_eq!(state, State::default(), "nothing restored");
        }
        None => assert_eq!(origin, Origin::Scratch),
        Some(covered) => {
            assert_eq!(
                origin,
                Origin::Restored {
                    position: Position::new(covered as u64)
                }
            );
            assert_eq!(state, reference.state_at(covered));
        }
    }
}

macro_rules! machine {
    ($test:ident, $reference:ident, $make:expr) => {
        struct $test;

        impl StateMachineTest for $test {
            type SystemUnderTest = Harness;
            type Reference = $reference;

            fn init_test(_: &Reference) -> Harness {
                $make()
            }

            fn apply(mut harness: Harness, reference: &Reference, step: Step) -> Harness {
                harness.step(&step);
                check(&harness, reference);
                harness
            }
        }
    };
}

machine!(MemoryMachine, MemoryReference, || Harness::new(
    Arc::new(InMemoryCheckpointStorage::new()),
    None,
    Damager::None
));

machine!(FileMachine, FileReference, || {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = FileCheckpointStorage::open(dir.path()).expect("open");
    let damager = Damager::Files(dir.path().to_owned());
    Harness::new(Arc::new(storage), Some(dir), damager)
});

/// The database every PostgreSQL case shares, each case starting with its tables empty.
fn database() -> Arc<TestDatabase> {
    static DATABASE: OnceLock<Arc<TestDatabase>> = OnceLock::new();
    DATABASE
        .get_or_init(|| Arc::new(runtime().block_on(fresh_database())))
        .clone()
}

machine!(PostgresMachine, PostgresReference, || {
    let db = database();
    let storage = runtime().block_on(db.checkpoint_storage());
    runtime().block_on(storage.clear()).expect("clear");
    Harness::new(Arc::new(storage), None, Damager::Rows(db))
});

prop_state_machine! {
    #![proptest_config(Config {
        cases: 24,
        failure_persistence: None,
        .. Config::default()
    })]

    #[test]
    fn memory_restores_the_last_committed_checkpoint(sequential 1..30 => MemoryMachine);
}

prop_state_machine! {
    #![proptest_config(Config {
        cases: 24,
        failure_persistence: None,
        .. Config::default()
    })]

    #[test]
    fn file_restores_the_last_committed_checkpoint(sequential 1..30 => FileMachine);
}

prop_state_machine! {
    #![proptest_config(Config {
        cases: 12,
        failure_persistence: None,
        .. Config::default()
    })]

    #[test]
    fn postgres_restores_the_last_committed_checkpoint(sequential 1..25 => PostgresMachine);
}
