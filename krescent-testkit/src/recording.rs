//! A checkpoint storage that records what it is asked to write, for tests of strategies.

use std::sync::{Mutex, PoisonError};

use krescent::checkpoint::{
    CheckpointStorage, InMemoryCheckpointStorage, StorageError, StoredCheckpoint,
};

/// A memory storage that records the position of every checkpoint written to it, in order
/// (also those it keeps out because a later one is stored).
#[derive(Debug, Default)]
pub struct RecordingStorage {
    inner: InMemoryCheckpointStorage,
    written: Mutex<Vec<u64>>,
}

impl RecordingStorage {
    /// An empty storage.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The positions of the checkpoints written so far.
    pub fn written(&self) -> Vec<u64> {
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[krescent::async_trait]
impl CheckpointStorage for RecordingStorage {
    async fn load(&self, namespace: &str) -> Result<Option<StoredCheckpoint>, StorageError> {
        self.inner.load(namespace).await
    }

    async fn store(&self, checkpoint: &StoredCheckpoint) -> Result<(), StorageError> {
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(checkpoint.position.get());
        self.inner.store(checkpoint).await
    }

    async fn delete(&self, namespace: &str) -> Result<bool, StorageError> {
        self.inner.delete(namespace).await
    }

    async fn list(&self) -> Result<Vec<String>, StorageError> {
        self.inner.list().await
    }
}
