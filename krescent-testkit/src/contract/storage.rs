//! The checkpoint storage contract.

use std::time::{Duration, UNIX_EPOCH};

use krescent::checkpoint::{
    BucketValue, CheckpointBucket, CheckpointStorage, CheckpointVersion, StoredCheckpoint,
};
use krescent::Position;

fn bucket(seed: u8) -> CheckpointBucket {
    let mut bucket = CheckpointBucket::new();
    bucket
        .put("name", &format!("state {seed} — ✓ \"quoted\""))
        .expect("put");
    bucket.put("count", &(i64::from(seed) - 100)).expect("put");
    bucket.put("big", &u64::MAX).expect("put");
    bucket.put("ratio", &0.1f64).expect("put");
    bucket.put("flag", &true).expect("put");
    bucket
        .put(
            "map",
            &std::collections::BTreeMap::from([("k", vec![Some(1), None])]),
        )
        .expect("put");
    bucket.put_bytes("raw", &[0, seed, 255]);
    let mut nested = CheckpointBucket::new();
    nested.put("table", "books_v1").expect("put");
    bucket.insert("extension", BucketValue::Bucket(nested));
    bucket
}

fn checkpoint(namespace: &str, version: &str, position: u64, seed: u8) -> StoredCheckpoint {
    let mut checkpoint = StoredCheckpoint::new(
        namespace,
        CheckpointVersion::from_text(version),
        Position::new(position),
        bucket(seed),
    );
    // A time with microseconds, far from now, to catch truncation and time-zone mistakes.
    checkpoint.taken_at =
        UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456 + u64::from(seed));
    checkpoint
}

/// Loading a namespace that has no checkpoint gives `None`.
pub async fn load_of_unknown_namespace_is_none<S: CheckpointStorage>(storage: &S) {
    assert_eq!(storage.load("nobody").await.expect("load"), None);
    assert!(!storage.delete("nobody").await.expect("delete"));
}

/// What is stored comes back exactly: data, version, position and time.
pub async fn store_then_load_round_trips_exactly<S: CheckpointStorage>(storage: &S) {
    let stored = checkpoint("books.available", "v1-0123", 42, 7);
    storage.store(&stored).await.expect("store");
    assert_eq!(
        storage.load("books.available").await.expect("load"),
        Some(stored)
    );
    let now = StoredCheckpoint::new(
        "now",
        CheckpointVersion::from_text("v1"),
        Position::new(u64::MAX >> 1),
        CheckpointBucket::new(),
    );
    storage.store(&now).await.expect("store");
    assert_eq!(storage.load("now").await.expect("load"), Some(now));
}

/// A later checkpoint replaces the earlier one.
pub async fn store_overrides<S: CheckpointStorage>(storage: &S) {
    storage
        .store(&checkpoint("m", "v1", 10, 1))
        .await
        .expect("store");
    let newer = checkpoint("m", "v1", 20, 2);
    storage.store(&newer).await.expect("store");
    assert_eq!(storage.load("m").await.expect("load"), Some(newer));
}

/// A checkpoint of the same version never replaces one at a later position.
pub async fn position_never_moves_backwards_within_a_version<S: CheckpointStorage>(storage: &S) {
    let newer = checkpoint("m", "v1", 20, 2);
    storage.store(&newer).await.expect("store");
    storage
        .store(&checkpoint("m", "v1", 10, 1))
        .await
        .expect("store");
    assert_eq!(storage.load("m").await.expect("load"), Some(newer));
}

/// A checkpoint of another version replaces the stored one whatever its position (a rebuild).
pub async fn another_version_replaces<S: CheckpointStorage>(storage: &S) {
    storage
        .store(&checkpoint("m", "v1", 20, 2))
        .await
        .expect("store");
    let rebuilt = checkpoint("m", "v2", 5, 3);
    storage.store(&rebuilt).await.expect("store");
    assert_eq!(storage.load("m").await.expect("load"), Some(rebuilt));
}

/// Deleting removes one namespace's checkpoint and leaves the others.
pub async fn delete_removes_one<S: CheckpointStorage>(storage: &S) {
    storage
        .store(&checkpoint("a", "v1", 1, 1))
        .await
        .expect("store");
    let b = checkpoint("b", "v1", 2, 2);
    storage.store(&b).await.expect("store");
    assert!(storage.delete("a").await.expect("delete"));
    assert!(!storage.delete("a").await.expect("delete"));
    assert_eq!(storage.load("a").await.expect("load"), None);
    assert_eq!(storage.load("b").await.expect("load"), Some(b));
}

/// Listing names every namespace; clearing removes them all.
pub async fn list_and_clear<S: CheckpointStorage>(storage: &S) {
    for (i, namespace) in ["x.one", "a/two", "m three"].into_iter().enumerate() {
        storage
            .store(&checkpoint(
                namespace,
                "v1",
                1,
                u8::try_from(i).expect("small"),
            ))
            .await
            .expect("store");
    }
    assert_eq!(
        storage.list().await.expect("list"),
        ["a/two", "m three", "x.one"]
    );
    storage.clear().await.expect("clear");
    assert!(storage.list().await.expect("list").is_empty());
    assert_eq!(storage.load("x.one").await.expect("load"), None);
}
