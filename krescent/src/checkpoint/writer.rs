//! The background checkpoint writer: at most one write in flight per running model.

use std::sync::Arc;

use tokio::task::JoinHandle;

use super::{CheckpointStorage, StorageError, StoredCheckpoint};

/// Writes checkpoints off the model's task. The model snapshots its state only when the writer is
/// free, so no snapshot is ever made that a newer one would replace before it is written.
#[derive(Debug)]
pub(crate) struct Writer {
    storage: Arc<dyn CheckpointStorage>,
    in_flight: Option<JoinHandle<Result<(), StorageError>>>,
}

impl Writer {
    pub(crate) fn new(storage: Arc<dyn CheckpointStorage>) -> Self {
        Writer {
            storage,
            in_flight: None,
        }
    }

    /// Whether a write is still running.
    pub(crate) fn is_busy(&self) -> bool {
        self.in_flight
            .as_ref()
            .is_some_and(|write| !write.is_finished())
    }

    /// Starts writing `checkpoint`; call only when not busy, after [`settle`](Self::settle).
    pub(crate) fn start(&mut self, checkpoint: StoredCheckpoint) {
        debug_assert!(!self.is_busy(), "one checkpoint write at a time");
        let storage = self.storage.clone();
        self.in_flight = Some(tokio::spawn(
            async move { storage.store(&checkpoint).await },
        ));
    }

    /// Waits for the write in flight, if any, and returns its outcome.
    pub(crate) async fn settle(&mut self) -> Result<(), StorageError> {
        match self.in_flight.take() {
            Some(write) => write
                .await
                .unwrap_or_else(|e| Err(StorageError::Database(e.to_string().into()))),
            None => Ok(()),
        }
    }
}
