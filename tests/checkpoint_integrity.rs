//! A checkpoint whose stored bytes changed is never restored: every single-bit flip of a
//! checkpoint file, of a Postgres checkpoint row (both formats) and of a write model's
//! snapshot is found by the checksum, with `on_invalid = "rebuild"` and `"fail"` alike; a row
//! written by the previous release, in the previous schema, migrates and restores.

use std::future::Future;

use krescent::checkpoint::{
    CheckpointFormat, CheckpointStorage, FileCheckpointStorage, Integrity,
    PostgresCheckpointStorage,
};
use krescent::prelude::*;
use krescent::store::InMemoryEventStore;
use krescent_testkit::postgres::fresh_database;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "integrity.counted")]
struct Counted {
    key: String,
}

/// The same model under both `on_invalid` modes.
macro_rules! tally {
    ($name:ident, $on_invalid:literal) => {
        #[derive(EventModel, Default, Debug, PartialEq)]
        #[model(name = "integrity.tally")]
        #[checkpoint(strategy = "always", storage = "under_test", on_invalid = $on_invalid)]
        struct $name {
            #[checkpoint]
            count: u64,
            #[checkpoint]
            last: String,
        }

        #[krescent::handlers]
        impl $name {
            fn counted(&mut self, e: &Counted) {
                self.count += 1;
                self.last = format!("last={}", e.key);
            }
        }
    };
}

tally!(Rebuilding, "rebuild");
tally!(Failing, "fail");

const EVENTS: u64 = 40;

/// A store of [`EVENTS`] events, the last with key `k4`, and a krescent on it whose storage
/// `under_test` is `storage`.
async fn krescent_with(storage: impl CheckpointStorage + 'static) -> Krescent<InMemoryEventStore> {
    let krescent = Krescent::new(InMemoryEventStore::new()).with_storage("under_test", storage);
    for i in 0..EVENTS {
        let key = format!("k{}", i % 5);
        krescent
            .store()
            .append(
                "tally",
                ExpectedVersion::Any,
                vec![NewEvent::new(&Counted { key }).expect("event")],
            )
            .await
            .expect("append");
    }
    krescent
}

fn expected() -> (u64, String) {
    (EVENTS, "last=k4".to_owned())
}

/// Flips each bit of `original` in turn, stores it with `write` (which says whether the damaged
/// bytes could be stored at all), and checks that neither model restores it: `Rebuilding` sees
/// it unusable, `Failing` fails with `InvalidCheckpoint`. Returns the flips tried.
async fn every_flip_is_found<W, F>(
    krescent: &Krescent<InMemoryEventStore>,
    original: &[u8],
    write: W,
) -> usize
where
    W: Fn(Vec<u8>) -> F,
    F: Future<Output = bool>,
{
    let mut tried = 0;
    for bit in 0..original.len() * 8 {
        let mut flipped = original.to_vec();
        flipped[bit / 8] ^= 1 << (bit % 8);
        if !write(flipped).await {
            continue;
        }
        tried += 1;
        let restored = krescent
            .restore_only(Rebuilding::default())
            .await
            .expect("an unusable checkpoint is no error under `rebuild`");
        assert!(
            matches!(restored.origin, Origin::Unusable { .. }),
            "bit {bit}: restored {:?} as {:?}",
            restored.model,
            restored.origin
        );
        match krescent.restore_only(Failing::default()).await {
            Err(Error::InvalidCheckpoint { namespace, .. }) => {
                assert_eq!(namespace, "integrity.tally");
            }
            other => panic!(
                "bit {bit}: expected InvalidCheckpoint, got {:?}",
                other.map(|r| (r.model, r.origin))
            ),
        }
    }
    assert!(write(original.to_vec()).await, "the original bytes store");
    let restored = krescent
        .restore_only(Rebuilding::default())
        .await
        .expect("restore");
    assert_eq!(
        restored.origin,
        Origin::Restored {
            position: Position::new(EVENTS)
        }
    );
    assert_eq!((restored.model.count, restored.model.last), expected());
    tried
}

#[tokio::test]
async fn every_flipped_bit_of_a_checkpoint_file_is_found() {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = FileCheckpointStorage::open(dir.path()).expect("storage");
    let path = storage.path_of("integrity.tally");
    let krescent = krescent_with(storage.clone()).await;
    krescent
        .catch_up(Rebuilding::default())
        .await
        .expect("catch up");
    let (_, integrity) = storage
        .load_checked("integrity.tally")
        .await
        .expect("load")
        .expect("a checkpoint");
    assert!(matches!(integrity, Integrity::Verified { .. }));
    let original = std::fs::read(&path).expect("read the file");
    let tried = every_flip_is_found(&krescent, &original, |bytes| {
        let path = path.clone();
        async move {
            std::fs::write(&path, bytes).expect("write");
            true
        }
    })
    .await;
    assert_eq!(tried, original.len() * 8);

    // Under `rebuild`, a run over a damaged checkpoint replays everything and ends right.
    let mut damaged = original;
    let at = damaged.len() / 2;
    damaged[at] ^= 0x04;
    std::fs::write(&path, damaged).expect("write");
    let caught_up = krescent
        .catch_up(Rebuilding::default())
        .await
        .expect("catch up");
    assert!(matches!(caught_up.origin, Origin::Rebuilt { .. }));
    assert_eq!((caught_up.model.count, caught_up.model.last), expected());
}

async fn every_flipped_bit_of_a_postgres_row_is_found(format: CheckpointFormat) {
    let db = fresh_database().await;
    let storage: PostgresCheckpointStorage = db.checkpoint_storage().await.with_format(format);
    let krescent = krescent_with(storage.clone()).await;
    krescent
        .catch_up(Rebuilding::default())
        .await
        .expect("catch up");
    let client = db.client().await;
    let column = match format {
        CheckpointFormat::Json => "data::text::bytea",
        CheckpointFormat::MessagePack => "data_binary",
    };
    let row = client
        .query_one(
            &format!("SELECT {column}, checksum FROM krescent_checkpoints WHERE namespace = 'integrity.tally'"),
            &[],
        )
        .await
        .expect("the row");
    let (original, checksum): (Vec<u8>, Option<i64>) = (row.get(0), row.get(1));
    assert!(checksum.is_some(), "a new row has a checksum");
    let client = &client;
    let tried = every_flip_is_found(&krescent, &original, |bytes| async move {
        let stored = match format {
            CheckpointFormat::MessagePack => {
                client
                    .execute(
                        "UPDATE krescent_checkpoints SET data_binary = $1 WHERE namespace = 'integrity.tally'",
                        &[&bytes],
                    )
                    .await
            }
            // The server takes only valid JSON into a `json` column: other flips cannot be
            // stored, so they cannot be restored either.
            CheckpointFormat::Json => {
                let Ok(text) = String::from_utf8(bytes) else {
                    return false;
                };
                client
                    .execute(
                        "UPDATE krescent_checkpoints SET data = $1::text::json WHERE namespace = 'integrity.tally'",
                        &[&text],
                    )
                    .await
            }
        };
        stored.is_ok()
    })
    .await;
    assert!(tried > original.len(), "{tried} flips stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flipped_bit_of_a_message_pack_row_is_found() {
    every_flipped_bit_of_a_postgres_row_is_found(CheckpointFormat::MessagePack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flipped_bit_of_a_json_row_is_found() {
    every_flipped_bit_of_a_postgres_row_is_found(CheckpointFormat::Json).await;
}

/// A write model whose snapshots go to `under_test`.
#[derive(EventModel, Default, Debug, PartialEq)]
#[model(name = "integrity.account")]
#[checkpoint(strategy = "fixed_events(5)", storage = "under_test")]
struct Account {
    #[checkpoint]
    count: u64,
    #[checkpoint]
    last: String,
}

#[krescent::handlers]
impl Account {
    fn counted(&mut self, e: &Counted) {
        self.count += 1;
        self.last = format!("last={}", e.key);
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

#[tokio::test]
async fn a_write_model_ignores_every_flipped_bit_of_its_snapshot() {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = FileCheckpointStorage::open(dir.path()).expect("storage");
    let krescent = Krescent::new(InMemoryEventStore::new()).with_storage("under_test", storage);
    for i in 0..10 {
        let decided = krescent
            .decide::<Account>("account-1")
            .run(|_| {
                Ok::<_, Never>(vec![NewEvent::new(&Counted {
                    key: format!("k{i}"),
                })
                .expect("event")])
            })
            .await
            .expect("decide");
        if let Some(snapshot) = decided.snapshot {
            snapshot.written().await.expect("snapshot written");
        }
    }
    let loaded = krescent.load::<Account>("account-1").await.expect("load");
    assert_eq!(
        loaded.snapshot,
        Some(Position::new(10)),
        "the snapshot is used"
    );
    let truth = (loaded.model.count, loaded.model.last.clone());
    assert_eq!(truth, (10, "last=k9".to_owned()));

    let path = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|entry| entry.expect("entry").path())
        .find(|path| {
            path.to_string_lossy()
                .contains("integrity.account%40account-1")
        })
        .expect("the snapshot's file");
    let original = std::fs::read(&path).expect("read");
    for bit in 0..original.len() * 8 {
        let mut flipped = original.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        std::fs::write(&path, &flipped).expect("write");
        let loaded = krescent.load::<Account>("account-1").await.expect("load");
        assert_eq!(
            loaded.snapshot, None,
            "bit {bit}: the damaged snapshot was used"
        );
        assert_eq!((loaded.model.count, loaded.model.last), truth, "bit {bit}");
    }
}

/// The checkpoints table as the previous release left it (schema version 4) with a row it
/// wrote: `migrate` adds the checksum column, the row restores unchecked, and the next
/// checkpoint writes a checksum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_of_the_previous_release_migrates_and_restores() {
    let db = fresh_database().await;
    let client = db.client().await;
    client
        .batch_execute(include_str!("fixtures/checkpoints-schema-4.sql"))
        .await
        .expect("the previous release's table and row");
    let storage = PostgresCheckpointStorage::new(
        krescent::store::PostgresEventStore::connect(db.url())
            .await
            .expect("connect")
            .pool()
            .clone(),
        &krescent::store::PostgresConfig::default(),
    )
    .expect("storage");
    storage.migrate().await.expect("migrate");
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
    assert_eq!(checkpoint.position, Position::new(7));
    assert_eq!(checkpoint.bucket.get::<u64>("total").expect("total"), 7);
    assert_eq!(
        checkpoint.bucket.get::<String>("label").expect("label"),
        "front desk"
    );
    storage.store(&checkpoint).await.expect("store again");
    let (_, integrity) = storage
        .load_checked("fixture.counts")
        .await
        .expect("load")
        .expect("the row");
    assert!(matches!(integrity, Integrity::Verified { .. }));
}
