//! Checkpoint formats: checkpoints written by krescent 0.1 (JSON buckets, kept as a fixture)
//! still restore from a file and from a Postgres row; new Postgres checkpoints are `MessagePack`
//! and restore too; a storage set to JSON keeps the row readable.

use std::collections::{BTreeMap, HashMap};

use krescent::checkpoint::{
    CheckpointFormat, CheckpointStorage, CheckpointVersion, FileCheckpointStorage,
    PostgresCheckpointStorage,
};
use krescent::prelude::*;
use krescent::store::InMemoryEventStore;
use krescent::{Origin, Position};
use krescent_testkit::postgres::fresh_database;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "fixture.counted")]
struct Counted {
    key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Shelf {
    titles: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// The model the fixture was written by.
#[derive(EventModel, Default)]
#[model(name = "fixture.counts", version = 1)]
#[checkpoint(strategy = "always", storage = "under_test")]
struct Tally {
    #[checkpoint]
    counts: HashMap<String, u64>,
    #[checkpoint]
    shelves: BTreeMap<String, Shelf>,
    #[checkpoint]
    label: String,
    #[checkpoint]
    total: u64,
}

#[krescent::handlers]
impl Tally {
    fn counted(&mut self, e: &Counted) {
        *self.counts.entry(e.key.clone()).or_default() += 1;
        self.total += 1;
    }
}

/// The checkpoint file `FileCheckpointStorage` of krescent 0.1 wrote for `Tally` at position 7.
const FIXTURE: &str = include_str!("fixtures/checkpoint-0.1.json");

fn expected() -> Tally {
    Tally {
        counts: HashMap::from([("dune".to_owned(), 3), ("emma".to_owned(), 4)]),
        shelves: BTreeMap::from([(
            "classics".to_owned(),
            Shelf {
                titles: vec!["Emma".to_owned(), "Ulysses \"1922\" ü".to_owned()],
                note: None,
            },
        )]),
        label: "front desk".to_owned(),
        total: 7,
    }
}

fn assert_restored(restored: &Tally, origin: &Origin) {
    let expected = expected();
    assert_eq!(
        origin,
        &Origin::Restored {
            position: Position::new(7)
        }
    );
    assert_eq!(restored.counts, expected.counts);
    assert_eq!(restored.shelves, expected.shelves);
    assert_eq!(restored.label, expected.label);
    assert_eq!(restored.total, expected.total);
}

async fn restore(storage: impl CheckpointStorage + 'static) -> (Tally, Origin) {
    let krescent = Krescent::new(InMemoryEventStore::new()).with_storage("under_test", storage);
    let restored = krescent
        .restore_only(Tally::default())
        .await
        .expect("restore");
    (restored.model, restored.origin)
}

/// The fixture is what this build's model version expects, so the tests below exercise the
/// restore rather than a version mismatch.
#[test]
fn fixture_matches_the_model_version() {
    let fixture: serde_json::Value = serde_json::from_str(FIXTURE).expect("fixture is JSON");
    assert_eq!(fixture["format"], 1);
    assert_eq!(
        fixture["version"].as_str(),
        Some(CheckpointVersion::of::<Tally>().as_str())
    );
}

#[tokio::test]
async fn a_0_1_checkpoint_file_restores() {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = FileCheckpointStorage::open(dir.path()).expect("storage");
    std::fs::write(storage.path_of("fixture.counts"), FIXTURE).expect("write fixture");
    let (restored, origin) = restore(storage).await;
    assert_restored(&restored, &origin);
}

/// A row as krescent 0.1 wrote it: the columns it knew, the bucket as JSON in `data`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_0_1_checkpoint_row_restores() {
    let db = fresh_database().await;
    let storage = db.checkpoint_storage().await;
    let fixture: serde_json::Value = serde_json::from_str(FIXTURE).expect("fixture is JSON");
    let client = db.client().await;
    client
        .execute(
            "INSERT INTO krescent_checkpoints (namespace, version, position, taken_at, data)
             VALUES ('fixture.counts', $1, 7, now(), $2::text::json)",
            &[
                &fixture["version"].as_str().expect("version"),
                &fixture["bucket"].to_string(),
            ],
        )
        .await
        .expect("insert the 0.1 row");
    let (restored, origin) = restore(storage).await;
    assert_restored(&restored, &origin);
}

/// A model's checkpoint into Postgres is `MessagePack` by default (format 2, in `data_binary`)
/// and restores; with the storage set to JSON it is readable JSON in `data` and restores too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_checkpoints_restore_in_either_format() {
    let db = fresh_database().await;
    for (format, number) in [
        (CheckpointFormat::MessagePack, 2),
        (CheckpointFormat::Json, 1),
    ] {
        let storage: PostgresCheckpointStorage = db.checkpoint_storage().await.with_format(format);
        assert_eq!(storage.format(), format);
        let krescent =
            Krescent::new(InMemoryEventStore::new()).with_storage("under_test", storage.clone());
        let mut model = expected();
        model.total = 0;
        model.counts.clear();
        let store = krescent.store();
        for key in ["dune", "dune", "dune", "emma", "emma", "emma", "emma"] {
            krescent::store::EventStore::append(
                store,
                key,
                krescent::store::ExpectedVersion::Any,
                vec![NewEvent::new(&Counted {
                    key: key.to_owned(),
                })
                .expect("event")],
            )
            .await
            .expect("append");
        }
        let caught_up = krescent.catch_up(model).await.expect("catch up");
        assert!(caught_up.checkpoints > 0);
        let row = db
            .client()
            .await
            .query_one(
                "SELECT format, data IS NOT NULL, data_binary IS NOT NULL FROM krescent_checkpoints WHERE namespace = 'fixture.counts'",
                &[],
            )
            .await
            .expect("row");
        let (stored_format, json, binary): (i16, bool, bool) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(
            (stored_format, json, binary),
            (number, number == 1, number == 2)
        );
        let (restored, origin) = restore(storage.clone()).await;
        assert_restored(&restored, &origin);
        storage.delete("fixture.counts").await.expect("delete");
    }
}
