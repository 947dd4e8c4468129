//! Checkpoints kept in memory.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{checkpoint_only, replaces, CheckpointStorage, StorageError, StoredCheckpoint};
use crate::checkpoint::Integrity;
use crate::deadletter::ParkedEvent;
use crate::Position;

/// Checkpoints in memory: for tests and models whose state need not survive the process.
/// Registered as `"memory"` in every [`Krescent`](crate::Krescent).
///
/// Each checkpoint is kept with its [`checksum`](StoredCheckpoint::checksum), checked when it
/// is loaded, as every storage does.
#[derive(Debug, Default)]
pub struct InMemoryCheckpointStorage {
    checkpoints: Mutex<BTreeMap<String, Entry>>,
    /// The parked events, by namespace and position.
    parked: Mutex<BTreeMap<String, BTreeMap<Position, ParkedEvent>>>,
}

/// A checkpoint and the checksum taken when it was stored.
#[derive(Debug)]
struct Entry {
    checkpoint: StoredCheckpoint,
    checksum: u32,
}

impl InMemoryCheckpointStorage {
    /// An empty storage.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        // A panic while holding the lock cannot leave the map half-updated: every change is one call.
        self.checkpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl CheckpointStorage for InMemoryCheckpointStorage {
    async fn load(&self, namespace: &str) -> Result<Option<StoredCheckpoint>, StorageError> {
        self.load_checked(namespace).await.map(checkpoint_only)
    }

    async fn load_checked(
        &self,
        namespace: &str,
    ) -> Result<Option<(StoredCheckpoint, Integrity)>, StorageError> {
        let Some(checkpoint) = self.lock().get(namespace).map(|entry| {
            let origin = format!("memory, namespace `{namespace}`");
            let integrity = entry.checkpoint.verify(entry.checksum, &origin);
            integrity.map(|integrity| (entry.checkpoint.clone(), integrity))
        }) else {
            return Ok(None);
        };
        checkpoint.map(Some)
    }

    async fn store(&self, checkpoint: &StoredCheckpoint) -> Result<(), StorageError> {
        let checksum = checkpoint.checksum();
        let mut checkpoints = self.lock();
        if checkpoints
            .get(&checkpoint.namespace)
            .is_none_or(|old| replaces(&old.checkpoint, checkpoint))
        {
            checkpoints.insert(
                checkpoint.namespace.clone(),
                Entry {
                    checkpoint: checkpoint.clone(),
                    checksum,
                },
            );
        }
        Ok(())
    }

    async fn delete(&self, namespace: &str) -> Result<bool, StorageError> {
        Ok(self.lock().remove(namespace).is_some())
    }

    async fn list(&self) -> Result<Vec<String>, StorageError> {
        Ok(self.lock().keys().cloned().collect())
    }

    async fn clear(&self) -> Result<(), StorageError> {
        self.lock().clear();
        Ok(())
    }

    async fn park(&self, parked: &[ParkedEvent]) -> Result<(), StorageError> {
        let mut kept = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        for event in parked {
            kept.entry(event.namespace.clone())
                .or_default()
                .insert(event.position, event.clone());
        }
        Ok(())
    }

    async fn parked(&self, namespace: &str) -> Result<Vec<ParkedEvent>, StorageError> {
        let kept = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(kept
            .get(namespace)
            .map(|events| events.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn unpark(&self, namespace: &str, positions: &[Position]) -> Result<u64, StorageError> {
        let mut kept = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(events) = kept.get_mut(namespace) else {
            return Ok(0);
        };
        let removed = positions
            .iter()
            .filter(|p| events.remove(p).is_some())
            .count();
        if events.is_empty() {
            kept.remove(namespace);
        }
        Ok(removed as u64)
    }

    async fn parked_namespaces(&self) -> Result<Vec<String>, StorageError> {
        let kept = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(kept.keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{BucketValue, CheckpointBucket, CheckpointFormat, CheckpointVersion};
    use crate::Position;

    /// Puts `value` under `key` in the kept checkpoint, as damage in memory would.
    fn keep(storage: &InMemoryCheckpointStorage, key: &str, value: BucketValue) {
        let mut kept = storage.lock();
        let entry = kept.get_mut("flips").expect("kept");
        entry.checkpoint.bucket.insert(key, value);
    }

    /// Every single-bit flip of a kept value is found at load, in either format.
    #[tokio::test]
    async fn every_flipped_bit_of_a_kept_checkpoint_is_found() {
        for format in [CheckpointFormat::Json, CheckpointFormat::MessagePack] {
            let mut bucket = CheckpointBucket::with_format(format);
            bucket
                .put("counts", &[("a", 40_u32), ("b", 2)])
                .expect("put");
            bucket.put("label", "last=k4").expect("put");
            let checkpoint = StoredCheckpoint::new(
                "flips",
                CheckpointVersion::from_text("v1".to_owned()),
                Position::new(40),
                bucket,
            );
            let storage = InMemoryCheckpointStorage::new();
            storage.store(&checkpoint).await.expect("store");
            let integrity = storage.load_checked("flips").await.expect("load");
            assert!(matches!(integrity, Some((_, Integrity::Verified { .. }))));
            let original = storage.lock()["flips"].checkpoint.clone();
            let mut flips = 0;
            for key in ["counts", "label"] {
                let bytes = match original.bucket.value(key).expect("value") {
                    BucketValue::Json(raw) => raw.get().as_bytes().to_vec(),
                    BucketValue::MessagePack(packed) => packed.clone(),
                    BucketValue::Str(s) => s.as_bytes().to_vec(),
                    other => panic!("unexpected {other:?}"),
                };
                for bit in 0..bytes.len() * 8 {
                    let mut flipped = bytes.clone();
                    flipped[bit / 8] ^= 1 << (bit % 8);
                    let value = match original.bucket.value(key).expect("value") {
                        BucketValue::Json(_) => {
                            let Ok(text) = String::from_utf8(flipped) else {
                                continue;
                            };
                            let Ok(raw) = serde_json::value::RawValue::from_string(text) else {
                                continue;
                            };
                            BucketValue::Json(raw)
                        }
                        BucketValue::MessagePack(_) => BucketValue::MessagePack(flipped),
                        _ => {
                            let Ok(text) = String::from_utf8(flipped) else {
                                continue;
                            };
                            BucketValue::Str(text)
                        }
                    };
                    keep(&storage, key, value);
                    let error = storage.load("flips").await.expect_err("a flipped bit");
                    assert!(error.is_corrupt(), "{error}");
                    flips += 1;
                }
                keep(
                    &storage,
                    key,
                    original.bucket.value(key).expect("value").clone(),
                );
            }
            assert!(flips > 40, "{flips} flips tried");
            assert!(storage.load("flips").await.expect("restored").is_some());
        }
    }
}
