//! Checkpoints kept in memory.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{replaces, CheckpointStorage, StorageError, StoredCheckpoint};

/// Checkpoints in memory: for tests and models whose state need not survive the process.
/// Registered as `"memory"` in every [`Krescent`](crate::Krescent).
#[derive(Debug, Default)]
pub struct InMemoryCheckpointStorage {
    checkpoints: Mutex<BTreeMap<String, StoredCheckpoint>>,
}

impl InMemoryCheckpointStorage {
    /// An empty storage.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, StoredCheckpoint>> {
        // A panic while holding the lock cannot leave the map half-updated: every change is one call.
        self.checkpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl CheckpointStorage for InMemoryCheckpointStorage {
    async fn load(&self, namespace: &str) -> Result<Option<StoredCheckpoint>, StorageError> {
        Ok(self.lock().get(namespace).cloned())
    }

    async fn store(&self, checkpoint: &StoredCheckpoint) -> Result<(), StorageError> {
        let mut checkpoints = self.lock();
        if checkpoints
            .get(&checkpoint.namespace)
            .is_none_or(|old| replaces(old, checkpoint))
        {
            checkpoints.insert(checkpoint.namespace.clone(), checkpoint.clone());
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
}
