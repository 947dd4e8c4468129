//! Incremental checkpoints: a model with tracked collections writes a base and then deltas, on
//! the memory, file and PostgreSQL storages; restores what a replay builds; writes a new base
//! once the deltas outgrow the base; and treats a chain with a damaged or missing piece, a
//! piece of another version, or deltas without their base as unusable (a rebuild, or
//! `Error::InvalidCheckpoint` with `on_invalid = "fail"`), never as a partly restored state.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use krescent::checkpoint::{
    CheckpointStorage, FileCheckpointStorage, InMemoryCheckpointStorage, Piece,
    PostgresCheckpointStorage, TrackedMap, TrackedSet,
};
use krescent::prelude::*;
use krescent::Error;
use krescent_testkit::postgres::{fresh_database, TestDatabase};

#[derive(Event, Serialize, Deserialize)]
#[event(name = "ledger.set")]
struct Set {
    key: String,
    value: u64,
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "ledger.removed")]
struct Removed {
    key: String,
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "ledger.toggled")]
struct Toggled {
    id: u64,
}

/// A ledger model `$ty` named `$name` whose unusable checkpoints do `$on_invalid`.
#[rustfmt::skip] // rustfmt indents the attribute further on every run
macro_rules! ledger {
    ($ty:ident, $name:literal, $on_invalid:literal) => {
        #[derive(Debug, EventModel, Default)]
        #[model(name = $name, version = 1)]
        #[checkpoint(
            strategy = "on_shutdown",
            storage = "under_test",
            on_invalid = $on_invalid,
            compact_at = "50%"
        )]
        struct $ty {
            #[checkpoint(incremental)]
            values: TrackedMap<String, u64>,
            #[checkpoint(incremental)]
            seen: TrackedSet<u64>,
            #[checkpoint]
            events: u64,
        }

        #[krescent::handlers]
        impl $ty {
            fn set(&mut self, e: &Set) {
                self.values.insert(e.key.clone(), e.value);
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
        }

        impl $ty {
            #[allow(dead_code)] // the strict ledger's state is never compared
            fn state(&self) -> State {
                State {
                    values: self.values.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                    seen: self.seen.iter().copied().collect(),
                    events: self.events,
                }
            }
        }
    };
}

ledger!(Ledger, "ledger", "rebuild");
ledger!(StrictLedger, "ledger.strict", "fail");

/// The state a replay builds, as plain collections.
#[derive(Debug, Default, Clone, PartialEq)]
struct State {
    values: BTreeMap<String, u64>,
    seen: BTreeSet<u64>,
    events: u64,
}

/// One change to the ledger.
enum Op {
    Set(u64, u64),
    Remove(u64),
    Toggle(u64),
}

impl Op {
    fn event(&self) -> NewEvent {
        match *self {
            Op::Set(key, value) => NewEvent::new(&Set {
                key: format!("k{key}"),
                value,
            }),
            Op::Remove(key) => NewEvent::new(&Removed {
                key: format!("k{key}"),
            }),
            Op::Toggle(id) => NewEvent::new(&Toggled { id }),
        }
        .expect("encode")
    }

    fn apply(&self, state: &mut State) {
        match *self {
            Op::Set(key, value) => {
                state.values.insert(format!("k{key}"), value);
            }
            Op::Remove(key) => {
                state.values.remove(&format!("k{key}"));
            }
            Op::Toggle(id) => {
                if !state.seen.remove(&id) {
                    state.seen.insert(id);
                }
            }
        }
        state.events += 1;
    }
}

/// A store and `storage` under `"under_test"`, and the reference state of what it holds.
struct Ledgers {
    krescent: Krescent<InMemoryEventStore>,
    expected: State,
    version: u64,
}

impl Ledgers {
    fn new(storage: Arc<dyn CheckpointStorage>) -> Self {
        Ledgers {
            krescent: Krescent::new(InMemoryEventStore::new())
                .with_shared_storage("under_test", storage),
            expected: State::default(),
            version: 0,
        }
    }

    fn storage(&self) -> &Arc<dyn CheckpointStorage> {
        self.krescent.storage("under_test").expect("registered")
    }

    /// Appends `ops` and applies them to the reference.
    async fn append(&mut self, ops: &[Op]) {
        let expected = if self.version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(self.version)
        };
        self.krescent
            .store()
            .append("ledger-1", expected, ops.iter().map(Op::event).collect())
            .await
            .expect("append");
        self.version += ops.len() as u64;
        for op in ops {
            op.apply(&mut self.expected);
        }
    }

    /// Catches the ledger up (one checkpoint at its end) and checks its state.
    async fn catch_up(&self) -> Origin {
        let caught = self
            .krescent
            .catch_up(Ledger::default())
            .await
            .expect("caught up");
        assert_eq!(caught.model.state(), self.expected);
        caught.origin
    }

    /// The stored pieces: base first.
    async fn pieces(&self, namespace: &str) -> Vec<Piece> {
        self.storage()
            .pieces(namespace)
            .await
            .expect("pieces")
            .into_iter()
            .map(|p| p.piece)
            .collect()
    }
}

/// 200 keys and 50 ids, then rounds of a few changes: a base and one delta per round, the
/// restored state always the replay's; a round that changes most keys makes the next
/// checkpoint a base again, and the superseded pieces go.
async fn a_chain_grows_restores_and_compacts(storage: Arc<dyn CheckpointStorage>, case: &str) {
    let mut ledgers = Ledgers::new(storage);
    let initial: Vec<Op> = (0..200)
        .map(|k| Op::Set(k, k))
        .chain((0..50).map(Op::Toggle))
        .collect();
    ledgers.append(&initial).await;
    assert_eq!(ledgers.catch_up().await, Origin::Scratch, "{case}");
    assert_eq!(ledgers.pieces("ledger").await, [Piece::Whole], "{case}");
    for round in 1..=4_u64 {
        ledgers
            .append(&[
                Op::Set(round, 1000 + round),
                Op::Remove(100 + round),
                Op::Toggle(round),
                Op::Toggle(500 + round),
            ])
            .await;
        let origin = ledgers.catch_up().await;
        assert!(
            matches!(origin, Origin::Restored { .. }),
            "{case}: {origin:?}"
        );
        let pieces = ledgers.pieces("ledger").await;
        assert_eq!(pieces.len() as u64, 1 + round, "{case}: {pieces:?}");
        assert!(
            matches!(pieces.last(), Some(Piece::Delta(link)) if u64::from(link.sequence) == round),
            "{case}: {pieces:?}"
        );
    }
    // Most keys change: this delta outgrows half the base, and the next checkpoint is a base.
    let most: Vec<Op> = (0..200).map(|k| Op::Set(k, 7 * k)).collect();
    ledgers.append(&most).await;
    ledgers.catch_up().await;
    assert_eq!(ledgers.pieces("ledger").await.len(), 6, "{case}");
    ledgers.append(&[Op::Set(3, 3)]).await;
    ledgers.catch_up().await;
    assert_eq!(
        ledgers.pieces("ledger").await,
        [Piece::Whole],
        "{case}: compacted into a new base"
    );
    ledgers.append(&[Op::Set(4, 4), Op::Toggle(9)]).await;
    ledgers.catch_up().await;
    assert_eq!(ledgers.pieces("ledger").await.len(), 2, "{case}");
    // Restored again from the new chain, with nothing to replay.
    let resumed = ledgers
        .krescent
        .catch_up(Ledger::default())
        .await
        .expect("resumed");
    assert_eq!(resumed.processed, 0, "{case}");
    assert_eq!(resumed.model.state(), ledgers.expected, "{case}");
}

#[tokio::test]
async fn memory_chains_grow_restore_and_compact() {
    a_chain_grows_restores_and_compacts(Arc::new(InMemoryCheckpointStorage::new()), "memory").await;
}

#[tokio::test]
async fn file_chains_grow_restore_and_compact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = FileCheckpointStorage::open(dir.path()).expect("open");
    a_chain_grows_restores_and_compacts(Arc::new(storage), "file").await;
    let files = std::fs::read_dir(dir.path()).expect("dir").count();
    assert_eq!(
        files, 3,
        "the manifest, the base and its delta: the compacted chain's files are gone"
    );
}

#[tokio::test]
async fn postgres_chains_grow_restore_and_compact() {
    let db = fresh_database().await;
    let storage = db.checkpoint_storage().await;
    a_chain_grows_restores_and_compacts(Arc::new(storage), "postgres").await;
}

/// A base and two deltas of `Ledger` and of `StrictLedger` in `storage`.
async fn a_chain_of_three(storage: Arc<dyn CheckpointStorage>) -> Ledgers {
    let mut ledgers = Ledgers::new(storage);
    let initial: Vec<Op> = (0..50).map(|k| Op::Set(k, k)).collect();
    ledgers.append(&initial).await;
    for round in 0..3 {
        if round > 0 {
            ledgers
                .append(&[Op::Set(round, 99), Op::Toggle(round)])
                .await;
        }
        ledgers.catch_up().await;
        ledgers
            .krescent
            .catch_up(StrictLedger::default())
            .await
            .expect("strict caught up");
    }
    for namespace in ["ledger", "ledger.strict"] {
        assert_eq!(ledgers.pieces(namespace).await.len(), 3, "{namespace}");
    }
    ledgers
}

/// After `damage` to both chains: `Ledger` rebuilds the replay's state, and `StrictLedger`
/// fails with `InvalidCheckpoint`.
async fn unusable(ledgers: &Ledgers, case: &str) {
    let origin = ledgers.catch_up().await;
    assert!(
        matches!(origin, Origin::Rebuilt { .. }),
        "{case}: {origin:?}"
    );
    let strict = ledgers.krescent.catch_up(StrictLedger::default()).await;
    assert!(
        matches!(&strict, Err(Error::InvalidCheckpoint { namespace, .. }) if namespace == "ledger.strict"),
        "{case}: {:?}",
        strict.map(|c| c.origin)
    );
    // The rebuild's checkpoint replaced the chain: a whole one, restored next.
    assert_eq!(ledgers.pieces("ledger").await, [Piece::Whole], "{case}");
    assert!(
        matches!(ledgers.catch_up().await, Origin::Restored { .. }),
        "{case}"
    );
}

/// The files of `namespace`'s pieces in `dir`, base first.
fn piece_files(dir: &Path, namespace: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.ends_with(".piece.json")
                && name
                    .strip_prefix(namespace)
                    .and_then(|rest| rest.strip_prefix('.'))
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .collect();
    files.sort_by_key(|p| {
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let n: u32 = name
            .trim_end_matches(".piece.json")
            .rsplit('-')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(u32::MAX);
        n
    });
    files
}

/// Flips one bit in the middle of `path`.
fn flip(path: &Path) {
    let mut bytes = std::fs::read(path).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(path, bytes).expect("write");
}

#[tokio::test]
async fn file_a_damaged_or_missing_piece_makes_the_chain_unusable() {
    type Damage = fn(&[std::path::PathBuf]);
    let cases: [(&str, Damage); 5] = [
        ("a damaged delta", |files| flip(&files[1])),
        ("a missing delta", |files| {
            std::fs::remove_file(&files[2]).expect("remove");
        }),
        ("a missing base", |files| {
            std::fs::remove_file(&files[0]).expect("remove");
        }),
        ("a delta of another chain", |files| {
            std::fs::copy(&files[2], &files[1]).expect("copy");
        }),
        // Well formed, with a checksum of its own: written by another version of the model.
        ("a delta of another version", |files| {
            let bytes = std::fs::read(&files[2]).expect("read");
            let mut delta = krescent::checkpoint::StoredCheckpoint::decode(&bytes, "the delta")
                .expect("a delta");
            delta.version = krescent::checkpoint::CheckpointVersion::from_text("another build");
            std::fs::write(&files[2], delta.encode().expect("encode")).expect("write");
        }),
    ];
    for (case, damage) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = FileCheckpointStorage::open(dir.path()).expect("open");
        let ledgers = a_chain_of_three(Arc::new(storage)).await;
        for namespace in ["ledger", "ledger.strict"] {
            let files = piece_files(dir.path(), namespace);
            assert_eq!(files.len(), 3, "{case}: {files:?}");
            damage(&files);
        }
        unusable(&ledgers, case).await;
    }
}

/// Runs `sql` on the deltas or checkpoints of both ledgers.
async fn damage_rows(db: &TestDatabase, sql: &str) {
    let client = db.client().await;
    let changed = client.execute(sql, &[]).await.expect(sql);
    assert_eq!(changed, 2, "{sql}: one row of each ledger");
}

#[tokio::test]
async fn postgres_a_damaged_or_missing_row_makes_the_chain_unusable() {
    let cases = [
        (
            "a damaged delta",
            "UPDATE krescent_checkpoint_deltas
             SET data_binary = set_byte(data_binary, octet_length(data_binary) / 2,
                                        get_byte(data_binary, octet_length(data_binary) / 2) # 1)
             WHERE sequence = 1",
        ),
        (
            "a missing delta",
            "DELETE FROM krescent_checkpoint_deltas WHERE sequence = 1",
        ),
        (
            "a delta of another version",
            "UPDATE krescent_checkpoint_deltas SET version = version || '-other' WHERE sequence = 2",
        ),
        (
            "a base missing under its deltas",
            "DELETE FROM krescent_checkpoints WHERE namespace LIKE 'ledger%'",
        ),
    ];
    for (case, sql) in cases {
        let db = fresh_database().await;
        let storage: PostgresCheckpointStorage = db.checkpoint_storage().await;
        let ledgers = a_chain_of_three(Arc::new(storage)).await;
        damage_rows(&db, sql).await;
        unusable(&ledgers, case).await;
    }
}

#[tokio::test]
async fn memory_a_delta_that_does_not_follow_the_chain_is_refused() {
    let storage: Arc<dyn CheckpointStorage> = Arc::new(InMemoryCheckpointStorage::new());
    let ledgers = a_chain_of_three(storage.clone()).await;
    let head = storage
        .load("ledger")
        .await
        .expect("load")
        .expect("a chain");
    let Piece::Delta(link) = head.piece else {
        panic!("a chain ends in a delta: {:?}", head.piece);
    };
    assert_eq!(link.sequence, 2);
    // The same delta again: it follows delta 1, which the chain is past.
    let stale = krescent::checkpoint::StoredCheckpoint::new(
        "ledger",
        head.version.clone(),
        head.position,
        krescent::checkpoint::CheckpointBucket::new(),
    )
    .with_piece(Piece::Delta(link));
    let refused = storage.store(&stale).await;
    assert!(
        matches!(
            refused,
            Err(krescent::checkpoint::StorageError::Chain { .. })
        ),
        "{refused:?}"
    );
    assert_eq!(ledgers.pieces("ledger").await.len(), 3);
}

/// A table at schema 6 (before the deltas' table) migrates in place: step 7 adds the table and
/// changes no row; the row restores as it was, and deltas follow it.
#[tokio::test]
async fn a_table_at_schema_6_migrates_and_keeps_deltas_after_its_rows() {
    use krescent::checkpoint::{CheckpointBucket, Integrity, Link, StoredCheckpoint};
    let db = fresh_database().await;
    let client = db.client().await;
    client
        .batch_execute(include_str!("fixtures/checkpoints-schema-6.sql"))
        .await
        .expect("the schema 6 tables and row");
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
    assert_eq!(version, 8);
    let (base, integrity) = storage
        .load_checked("fixture.counts")
        .await
        .expect("load")
        .expect("the fixture's row");
    assert_eq!(integrity, Integrity::Unchecked);
    assert_eq!(base.position.get(), 7);
    assert_eq!(base.piece, Piece::Whole);

    let mut bucket = CheckpointBucket::new();
    bucket.put("label", "after the fixture").expect("put");
    let delta = StoredCheckpoint::new(
        "fixture.counts",
        base.version.clone(),
        Position::new(9),
        bucket.clone(),
    )
    .with_piece(Piece::Delta(Link {
        base: Position::new(7),
        previous: Position::new(7),
        sequence: 1,
    }));
    storage.store(&delta).await.expect("a delta after the row");
    let pieces = storage.pieces("fixture.counts").await.expect("pieces");
    assert_eq!(pieces.len(), 2);
    assert!(pieces.iter().all(|p| p.bytes > 0), "{pieces:?}");
    let head = storage
        .load("fixture.counts")
        .await
        .expect("load")
        .expect("the chain");
    assert_eq!(head.position.get(), 9);
    assert_eq!(head.bucket, bucket, "the delta's fields, none incremental");
    // The same delta again does not follow the chain: refused, nothing stored.
    assert!(storage.store(&delta).await.is_err());
    assert_eq!(
        storage
            .pieces("fixture.counts")
            .await
            .expect("pieces")
            .len(),
        2
    );
    assert!(storage.delete("fixture.counts").await.expect("delete"));
    assert!(storage
        .pieces("fixture.counts")
        .await
        .expect("pieces")
        .is_empty());
}

#[derive(Debug, EventModel, Default)]
#[model(name = "ledger.replayed", version = 1)]
// Compaction far off: however the writer spaces the checkpoints, the run ends on its base's
// chain, so the pieces below are the base and every delta since.
#[checkpoint(
    strategy = "fixed_events(10)",
    storage = "under_test",
    compact_at = "10000%"
)]
struct Replayed {
    #[checkpoint(incremental)]
    values: TrackedMap<String, u64>,
}

#[krescent::handlers]
impl Replayed {
    fn set(&mut self, e: &Set) {
        self.values.insert(e.key.clone(), e.value);
    }
    fn removed(&mut self, e: &Removed) {
        self.values.remove(&e.key);
    }
}

/// One run over many events: a base, then deltas every ten events as the writer frees up,
/// and the chain restores the replay's map.
async fn a_run_writes_deltas(storage: Arc<dyn CheckpointStorage>, case: &str) {
    let mut ledgers = Ledgers::new(storage);
    let ops: Vec<Op> = (0..300_u64)
        .map(|i| {
            if i % 3 == 2 {
                Op::Remove(i % 50)
            } else {
                Op::Set(i % 50, i)
            }
        })
        .collect();
    ledgers.append(&ops).await;
    let running = ledgers.krescent.stream(Replayed::default());
    running
        .reached(Position::new(ops.len() as u64))
        .await
        .expect("reached");
    let stopped = running.shutdown().await.expect("stopped");
    assert!(stopped.checkpoints >= 2, "{case}: {}", stopped.checkpoints);
    let pieces = ledgers.pieces("ledger.replayed").await;
    assert!(
        pieces.len() >= 2 && pieces[1..].iter().all(|p| matches!(p, Piece::Delta(_))),
        "{case}: a base and deltas, {pieces:?} after {} checkpoints",
        stopped.checkpoints
    );
    let restored = ledgers
        .krescent
        .restore_only(Replayed::default())
        .await
        .expect("restored");
    let expected: BTreeMap<String, u64> = ledgers.expected.values.clone();
    let got: BTreeMap<String, u64> = restored
        .model
        .values
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(got, expected, "{case}");
}

#[tokio::test]
async fn memory_a_run_writes_deltas_after_its_base() {
    a_run_writes_deltas(Arc::new(InMemoryCheckpointStorage::new()), "memory").await;
}

#[tokio::test]
async fn postgres_a_run_writes_deltas_after_its_base() {
    let db = fresh_database().await;
    a_run_writes_deltas(Arc::new(db.checkpoint_storage().await), "postgres").await;
}
