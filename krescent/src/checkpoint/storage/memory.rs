//! Checkpoints kept in memory.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{checkpoint_only, CheckpointStorage, PieceInfo, StorageError, StoredCheckpoint};
use crate::checkpoint::incremental::{fold, link_follows};
use crate::checkpoint::{Integrity, Piece};
use crate::deadletter::ParkedEvent;
use crate::metrics::json_len;
use crate::Position;

/// Checkpoints in memory: for tests and models whose state need not survive the process.
/// Registered as `"memory"` in every [`Krescent`](crate::Krescent).
///
/// Each checkpoint is kept with its [`checksum`](StoredCheckpoint::checksum), checked when it
/// is loaded, as every storage does. It keeps deltas ([`crate::checkpoint::incremental`]):
/// each with its own checksum, after the base they follow; a whole checkpoint replaces them.
#[derive(Debug, Default)]
pub struct InMemoryCheckpointStorage {
    checkpoints: Mutex<BTreeMap<String, Entry>>,
    /// The parked events, by namespace and position.
    parked: Mutex<BTreeMap<String, BTreeMap<Position, ParkedEvent>>>,
}

/// A checkpoint and the checksum taken when it was stored, and the deltas stored after it,
/// each with its checksum.
#[derive(Debug)]
struct Entry {
    checkpoint: StoredCheckpoint,
    checksum: u32,
    deltas: Vec<(StoredCheckpoint, u32)>,
}

impl Entry {
    /// The position of the chain's last piece.
    fn head(&self) -> Position {
        self.deltas
            .last()
            .map_or(self.checkpoint.position, |(delta, _)| delta.position)
    }
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
        let origin = format!("memory, namespace `{namespace}`");
        let Some(checkpoint) = self.lock().get(namespace).map(|entry| {
            let integrity = entry.checkpoint.verify(entry.checksum, &origin)?;
            let mut deltas = Vec::with_capacity(entry.deltas.len());
            for (i, (delta, checksum)) in entry.deltas.iter().enumerate() {
                delta.verify(*checksum, &format!("{origin}, delta {}", i + 1))?;
                deltas.push(delta.clone());
            }
            Ok::<_, StorageError>((entry.checkpoint.clone(), deltas, integrity))
        }) else {
            return Ok(None);
        };
        let (base, deltas, integrity) = checkpoint?;
        Ok(Some((fold(base, deltas, &origin)?, integrity)))
    }

    fn keeps_deltas(&self) -> bool {
        true
    }

    async fn pieces(&self, namespace: &str) -> Result<Vec<PieceInfo>, StorageError> {
        let kept = self.lock();
        let Some(entry) = kept.get(namespace) else {
            return Ok(Vec::new());
        };
        let info = |checkpoint: &StoredCheckpoint| PieceInfo {
            piece: checkpoint.piece,
            position: checkpoint.position,
            bytes: json_len(&checkpoint.bucket) as u64,
        };
        Ok(std::iter::once(&entry.checkpoint)
            .chain(entry.deltas.iter().map(|(delta, _)| delta))
            .map(info)
            .collect())
    }

    async fn store(&self, checkpoint: &StoredCheckpoint) -> Result<(), StorageError> {
        let checksum = checkpoint.checksum();
        let mut checkpoints = self.lock();
        if let Piece::Delta(link) = checkpoint.piece {
            let refused = |reason: String| StorageError::Chain {
                namespace: checkpoint.namespace.clone(),
                reason,
            };
            let Some(entry) = checkpoints.get_mut(&checkpoint.namespace) else {
                return Err(refused("no checkpoint is stored".to_owned()));
            };
            if entry.checkpoint.version != checkpoint.version {
                return Err(refused(format!(
                    "the stored checkpoint is of version `{}`",
                    entry.checkpoint.version
                )));
            }
            link_follows(
                &link,
                entry.checkpoint.position,
                entry.head(),
                entry.deltas.len(),
            )
            .map_err(refused)?;
            entry.deltas.push((checkpoint.clone(), checksum));
            return Ok(());
        }
        if checkpoints.get(&checkpoint.namespace).is_none_or(|old| {
            // Against the chain's last piece: a position never moves backwards.
            old.checkpoint.version != checkpoint.version || checkpoint.position >= old.head()
        }) {
            checkpoints.insert(
                checkpoint.namespace.clone(),
                Entry {
                    checkpoint: checkpoint.clone(),
                    checksum,
                    deltas: Vec::new(),
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
                    BucketValue::MessagePack(packed) => packed.to_vec(),
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
                        BucketValue::MessagePack(_) => BucketValue::MessagePack(flipped.into()),
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
