//! The background checkpoint writer: at most one write in flight per running model.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::task::JoinHandle;

use super::{CheckpointStorage, StorageError, StoredCheckpoint};

/// Writes checkpoints off the model's task. The model snapshots its state only when the writer is
/// free, so no snapshot is ever made that a newer one would replace before it is written.
///
/// A write starts on the model's task: the storage's future is polled once there, and only if
/// it has to wait (for a database, a file, a lock) does it continue in a task of its own. A
/// storage that finishes at once, such as the in-memory one, so costs no task and no wake-up of
/// another thread; one that waits costs the model's task only the work before its first wait.
#[derive(Debug)]
pub(crate) struct Writer {
    storage: Arc<dyn CheckpointStorage>,
    state: State,
}

#[derive(Debug)]
enum State {
    Idle,
    /// Finished when it started; its outcome not yet settled.
    Done(Result<(), StorageError>),
    InFlight(JoinHandle<Result<(), StorageError>>),
}

impl Writer {
    pub(crate) fn new(storage: Arc<dyn CheckpointStorage>) -> Self {
        Writer {
            storage,
            state: State::Idle,
        }
    }

    /// Whether a write is still running.
    #[inline]
    pub(crate) fn is_busy(&self) -> bool {
        matches!(&self.state, State::InFlight(write) if !write.is_finished())
    }

    /// Starts writing `checkpoint`; call only when not busy, after [`settle`](Self::settle).
    pub(crate) fn start(&mut self, checkpoint: StoredCheckpoint) {
        debug_assert!(!self.is_busy(), "one checkpoint write at a time");
        let storage = self.storage.clone();
        let mut write: Pin<Box<dyn Future<Output = _> + Send>> =
            Box::pin(async move { storage.store(&checkpoint).await });
        // Polled without a waker: a future that is not ready registers it with whatever it waits
        // for, and the task it moves into polls it again with its own.
        self.state = match write.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(outcome) => State::Done(outcome),
            Poll::Pending => State::InFlight(tokio::spawn(write)),
        };
    }

    /// Waits for the write in flight, if any, and returns its outcome.
    pub(crate) async fn settle(&mut self) -> Result<(), StorageError> {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Idle => Ok(()),
            State::Done(outcome) => outcome,
            State::InFlight(write) => write
                .await
                .unwrap_or_else(|e| Err(StorageError::Database(e.to_string().into()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{CheckpointBucket, CheckpointVersion};
    use crate::Position;

    /// A storage whose writes wait for a permit, then fail or succeed.
    #[derive(Debug)]
    struct Gated {
        permits: tokio::sync::Semaphore,
        fail: bool,
    }

    #[async_trait::async_trait]
    impl CheckpointStorage for Gated {
        async fn load(&self, _: &str) -> Result<Option<StoredCheckpoint>, StorageError> {
            Ok(None)
        }
        async fn store(&self, _: &StoredCheckpoint) -> Result<(), StorageError> {
            self.permits.acquire().await.expect("open").forget();
            if self.fail {
                return Err(StorageError::Database("refused".into()));
            }
            Ok(())
        }
        async fn delete(&self, _: &str) -> Result<bool, StorageError> {
            Ok(false)
        }
        async fn list(&self) -> Result<Vec<String>, StorageError> {
            Ok(Vec::new())
        }
    }

    fn checkpoint() -> StoredCheckpoint {
        StoredCheckpoint::new(
            "m",
            CheckpointVersion::from_text("v"),
            Position::new(1),
            CheckpointBucket::new(),
        )
    }

    fn writer_of(permits: usize, fail: bool) -> Writer {
        Writer::new(Arc::new(Gated {
            permits: tokio::sync::Semaphore::new(permits),
            fail,
        }))
    }

    #[tokio::test]
    async fn a_write_that_need_not_wait_finishes_on_the_spot() {
        let mut writer = writer_of(1, false);
        writer.start(checkpoint());
        assert!(matches!(writer.state, State::Done(Ok(()))));
        assert!(!writer.is_busy());
        assert!(writer.settle().await.is_ok());

        let mut failing = writer_of(1, true);
        failing.start(checkpoint());
        assert!(!failing.is_busy());
        assert!(failing.settle().await.is_err(), "its failure is kept");
        assert!(failing.settle().await.is_ok(), "and settled once");
    }

    #[tokio::test]
    async fn a_write_that_waits_goes_on_in_its_own_task() {
        let storage = Arc::new(Gated {
            permits: tokio::sync::Semaphore::new(0),
            fail: false,
        });
        let mut writer = Writer::new(storage.clone());
        writer.start(checkpoint());
        assert!(writer.is_busy());
        storage.permits.add_permits(1);
        assert!(writer.settle().await.is_ok());
        assert!(!writer.is_busy());
    }
}
