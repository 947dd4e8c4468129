//! A checkpoint the runner judged unusable never holds back the next one: on every storage, a
//! rebuild's checkpoints replace it, even when it has this build's version and a later
//! position (it failed to restore), or a position no event can have (a corrupt row).

use std::sync::Arc;

use krescent::checkpoint::{
    CheckpointBucket, CheckpointStorage, CheckpointVersion, FileCheckpointStorage,
    InMemoryCheckpointStorage, StoredCheckpoint,
};
use krescent::prelude::*;
use krescent_testkit::postgres::fresh_database;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "tally.added")]
struct Added {
    n: u32,
}

#[derive(Debug, EventModel, Default)]
#[model(name = "tally", version = 1)]
#[checkpoint(strategy = "fixed_events(5)", storage = "under_test")]
struct Tally {
    #[checkpoint]
    seen: Vec<u32>,
}

#[krescent::handlers]
impl Tally {
    fn added(&mut self, e: &Added) {
        self.seen.push(e.n);
    }
}

/// How many events the store holds.
const EVENTS: u32 = 12;

/// A store with [`EVENTS`] events and `storage` registered as `"under_test"`.
async fn krescent_with(storage: Arc<dyn CheckpointStorage>) -> Krescent<InMemoryEventStore> {
    let krescent =
        Krescent::new(InMemoryEventStore::new()).with_shared_storage("under_test", storage);
    let events: Vec<NewEvent> = (1..=EVENTS)
        .map(|n| NewEvent::new(&Added { n }).expect("encode"))
        .collect();
    krescent
        .store()
        .append("tally-1", ExpectedVersion::NoStream, events)
        .await
        .expect("append");
    krescent
}

/// A checkpoint of this build's version, far ahead of the store, whose state does not
/// restore (`seen` is not a list).
fn unrestorable() -> StoredCheckpoint {
    let mut bucket = CheckpointBucket::new();
    bucket.put("seen", "not a list").expect("put");
    StoredCheckpoint::new(
        "tally",
        CheckpointVersion::of::<Tally>(),
        Position::new(1000),
        bucket,
    )
}

/// With the unusable checkpoint in place: the model rebuilds, its checkpoints replace it, and
/// the next start restores the rebuild's last one.
async fn rebuild_replaces_it(krescent: &Krescent<InMemoryEventStore>, case: &str) {
    let rebuilt = krescent.catch_up(Tally::default()).await.expect("rebuild");
    assert!(
        matches!(rebuilt.origin, Origin::Rebuilt { .. }),
        "{case}: {:?}",
        rebuilt.origin
    );
    assert_eq!(
        rebuilt.model.seen,
        (1..=EVENTS).collect::<Vec<_>>(),
        "{case}"
    );
    let storage = krescent.storage("under_test").expect("registered");
    let stored = storage
        .load("tally")
        .await
        .expect("load")
        .expect("a checkpoint");
    assert_eq!(
        stored.position,
        Position::new(u64::from(EVENTS)),
        "{case}: the rebuild's checkpoint replaced the unusable one"
    );
    let resumed = krescent.catch_up(Tally::default()).await.expect("resume");
    assert_eq!(
        resumed.origin,
        Origin::Restored {
            position: Position::new(u64::from(EVENTS))
        },
        "{case}"
    );
    assert_eq!(resumed.processed, 0, "{case}");
}

/// A rebuild's first checkpoint is taken at the fifth event; it lands although the unusable
/// checkpoint claims position 1000.
async fn intermediate_checkpoints_land(storage: Arc<dyn CheckpointStorage>, case: &str) {
    let krescent =
        Krescent::new(InMemoryEventStore::new()).with_shared_storage("under_test", storage.clone());
    let events: Vec<NewEvent> = (1..=5)
        .map(|n| NewEvent::new(&Added { n }).expect("encode"))
        .collect();
    krescent
        .store()
        .append("tally-1", ExpectedVersion::NoStream, events)
        .await
        .expect("append");
    let running = krescent.stream(Tally::default());
    running.reached(Position::new(5)).await.expect("reached");
    let mut stored = None;
    for _ in 0..200 {
        stored = storage.load("tally").await.expect("load");
        if stored
            .as_ref()
            .is_some_and(|s| s.position == Position::new(5))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        stored.map(|s| s.position),
        Some(Position::new(5)),
        "{case}: the checkpoint at the fifth event, while the model still runs"
    );
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn memory_an_unrestorable_checkpoint_is_replaced_by_the_rebuild() {
    let storage: Arc<dyn CheckpointStorage> = Arc::new(InMemoryCheckpointStorage::new());
    storage.store(&unrestorable()).await.expect("plant");
    rebuild_replaces_it(&krescent_with(storage).await, "memory").await;

    let storage: Arc<dyn CheckpointStorage> = Arc::new(InMemoryCheckpointStorage::new());
    storage.store(&unrestorable()).await.expect("plant");
    intermediate_checkpoints_land(storage, "memory").await;
}

#[tokio::test]
async fn file_an_unusable_checkpoint_is_replaced_by_the_rebuild() {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = FileCheckpointStorage::open(dir.path()).expect("storage");
    storage.store(&unrestorable()).await.expect("plant");
    rebuild_replaces_it(
        &krescent_with(Arc::new(storage.clone())).await,
        "file, unrestorable",
    )
    .await;

    let dir = tempfile::tempdir().expect("temp dir");
    let storage = FileCheckpointStorage::open(dir.path()).expect("storage");
    storage.store(&unrestorable()).await.expect("plant");
    intermediate_checkpoints_land(Arc::new(storage), "file, unrestorable").await;

    for position in ["18446744073709551616", "99999999999999999999", "NaN"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = FileCheckpointStorage::open(dir.path()).expect("storage");
        let mut planted = unrestorable();
        planted.bucket = CheckpointBucket::new();
        planted.bucket.put("seen", &[1_u32]).expect("put");
        storage.store(&planted).await.expect("plant");
        let path = storage.path_of("tally");
        let text = std::fs::read_to_string(&path).expect("read");
        let corrupt = text.replacen(
            "\"position\":\"1000\"",
            &format!("\"position\":\"{position}\""),
            1,
        );
        assert_ne!(corrupt, text);
        std::fs::write(&path, corrupt).expect("write");
        rebuild_replaces_it(&krescent_with(Arc::new(storage)).await, position).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_unusable_checkpoint_is_replaced_by_the_rebuild() {
    let db = fresh_database().await;
    let storage = db.checkpoint_storage().await;
    storage.store(&unrestorable()).await.expect("plant");
    rebuild_replaces_it(
        &krescent_with(Arc::new(storage.clone())).await,
        "postgres, unrestorable",
    )
    .await;

    storage.delete("tally").await.expect("delete");
    storage.store(&unrestorable()).await.expect("plant");
    intermediate_checkpoints_land(Arc::new(storage.clone()), "postgres, unrestorable").await;

    let client = db.client().await;
    for position in ["18446744073709551616", "99999999999999999999", "NaN"] {
        storage.delete("tally").await.expect("delete");
        storage.store(&unrestorable()).await.expect("plant");
        let changed = client
            .execute(
                "UPDATE krescent_checkpoints SET position = $1::text::numeric WHERE namespace = 'tally'",
                &[&position],
            )
            .await
            .expect("corrupt the position");
        assert_eq!(changed, 1);
        assert!(
            storage.load("tally").await.is_err(),
            "{position} does not load"
        );
        rebuild_replaces_it(&krescent_with(Arc::new(storage.clone())).await, position).await;
    }
}
