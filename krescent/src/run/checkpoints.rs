//! When and how a running model checkpoints: snapshots handed to the background writer
//! within the snapshot budget, or commits of the model's own transaction.

use std::time::{Duration, Instant};

use tracing::warn;

// cycle: this is the checkpointing half of `Runner` (its `Checkpoints`, commits and
// snapshots); `runner.rs` holds the other half of the one type and keeps a `Checkpoints`.
use super::runner::Runner;
use crate::checkpoint::writer::Writer;
use crate::checkpoint::{
    CheckpointBucket, CheckpointFormat, CheckpointVersion, SnapshotBudget, StoredCheckpoint,
    StrategyState,
};
use crate::metrics::json_len;
use crate::model::EventModel;
use crate::{Error, Position};

/// The pause before retrying a checkpoint write that failed.
const WRITE_RETRY: Duration = Duration::from_secs(1);
/// Checkpoints may take at most 1 / (1 + this) of the model task's time: after a checkpoint that
/// took `d` on the task (the snapshot and handing it to the writer), the next waits (pending)
/// until `d * SNAPSHOT_SPACING` has passed. Live models, whose events arrive slower than that,
/// checkpoint exactly as their strategy says; a fast replay of a large state checkpoints less
/// often instead of slowing down.
///
/// 2.5 %: a snapshot also slows the events after it (caches and allocator refill after tens of
/// KiB of JSON), by about as much again as it took (measured on the benchmark's replay with
/// `fixed_events(100)`: 1/20 cost ~9 % in all, 1/40 ~5.5 %), which keeps the whole cost within the
/// 10 % of the performance budget. Between two checkpoints lie at most 40 times a snapshot's
/// time of replay, which is what a crash can cost on top of the strategy.
const SNAPSHOT_SPACING: u32 = 39;

/// The checkpointing part of a runner: strategy state, writer and the pending flag.
pub(super) struct Checkpoints {
    /// The storage, for what the writer does not write (parked events).
    pub(super) storage: std::sync::Arc<dyn crate::checkpoint::CheckpointStorage>,
    pub(super) state: StrategyState,
    pub(super) writer: Writer,
    pub(super) version: CheckpointVersion,
    /// The storage's format, which snapshots are put in.
    pub(super) format: CheckpointFormat,
    /// A checkpoint fell due while the writer was busy; take it at the next event boundary.
    pub(super) pending: bool,
    /// No snapshot before an instant: the snapshot budget, or the pause after a failed write.
    pub(super) budget: SnapshotBudget,
    /// Checkpoints taken in this run.
    pub(super) taken: u64,
}

impl Checkpoints {
    /// Counts a checkpoint just taken, whatever asked for it; the strategy's counters restart.
    pub(super) fn record_taken(&mut self) {
        self.taken += 1;
        self.state.checkpoint_taken();
        self.pending = false;
    }
}

impl<M: EventModel> Runner<M> {
    /// Commits the model's transaction with a checkpoint of its state, in line: the next
    /// events' writes go into the next transaction.
    pub(super) async fn commit(&mut self) -> Result<(), Error> {
        let Some(c) = &mut self.checkpoints else {
            return Ok(());
        };
        let started = Instant::now();
        let checkpoint = snapshot(&self.model, c, &self.namespace, self.position)?;
        if let Some(transaction) = self.model.transaction() {
            transaction
                .commit(&checkpoint)
                .await
                .map_err(|e| Error::storage(&self.namespace, e))?;
        }
        self.uncommitted = false;
        c.record_taken();
        self.metrics
            .checkpoint_taken(started.elapsed(), json_len(&checkpoint.bucket));
        Ok(())
    }

    /// Takes the due checkpoint if the writer is free; otherwise it stays pending.
    pub(super) async fn checkpoint_if_free(&mut self) -> Result<(), Error> {
        let Some(c) = &mut self.checkpoints else {
            return Ok(());
        };
        if c.writer.is_busy() || c.budget.waits(self.processed) {
            return Ok(());
        }
        // The finished write's outcome: a failure is retried with this newer state.
        if let Err(e) = c.writer.settle().await {
            // A writer whose lease was taken over steps down rather than retry (`crate::fleet`).
            if matches!(e, crate::checkpoint::StorageError::Fenced { .. }) {
                return Err(Error::storage(&self.namespace, e));
            }
            warn!(model = &*self.namespace, error = %e, "checkpoint write failed; retrying with the next checkpoint");
            let now = Instant::now();
            c.budget.wait_until(now + WRITE_RETRY, now, self.processed);
            return Ok(());
        }
        let started = Instant::now();
        let checkpoint = snapshot(&self.model, c, &self.namespace, self.position)?;
        let bytes = json_len(&checkpoint.bucket);
        c.writer.start(checkpoint);
        // The budget covers all the model task spends on the checkpoint: the snapshot and
        // handing it to the writer.
        let now = Instant::now();
        let spacing = now.saturating_duration_since(started) * SNAPSHOT_SPACING;
        c.budget.wait_until(now + spacing, now, self.processed);
        c.record_taken();
        self.metrics.checkpoint_taken(now - started, bytes);
        Ok(())
    }

    /// Whether an idle streaming model has a checkpoint to take now.
    pub(crate) fn due_when_idle(&self) -> bool {
        self.uncommitted
            || self
                .checkpoints
                .as_ref()
                .is_some_and(|c| c.pending || c.state.due_when_idle())
    }

    /// When an idle streaming model should wake to checkpoint, if ever.
    pub(crate) fn idle_deadline(&self) -> Option<Instant> {
        let c = self.checkpoints.as_ref()?;
        let retry = c
            .pending
            .then(|| c.budget.until().unwrap_or_else(Instant::now) + Duration::from_millis(10));
        [retry, c.state.idle_deadline()].into_iter().flatten().min()
    }

    /// Takes the checkpoint an idle model has due, waiting for the writer if needed.
    pub(crate) async fn checkpoint_idle(&mut self) -> Result<(), Error> {
        if self.transactional {
            return self.commit().await;
        }
        if let Some(c) = &mut self.checkpoints {
            if c.writer.is_busy() {
                return Ok(());
            }
            c.pending = true;
            c.budget.check_clock();
        }
        self.checkpoint_if_free().await
    }

    /// Ends the run: takes the final checkpoint the strategy asks for and waits until every
    /// write is done.
    pub(crate) async fn finish(&mut self) -> Result<(), Error> {
        if self.uncommitted {
            return self.commit().await;
        }
        let Some(c) = &mut self.checkpoints else {
            return Ok(());
        };
        let earlier = c.writer.settle().await;
        if c.pending || c.state.due_on_shutdown() || (earlier.is_err() && c.state.has_unsaved()) {
            let started = Instant::now();
            let checkpoint = snapshot(&self.model, c, &self.namespace, self.position)?;
            let bytes = json_len(&checkpoint.bucket);
            c.writer.start(checkpoint);
            c.record_taken();
            let namespace = &self.namespace;
            let written = c
                .writer
                .settle()
                .await
                .map_err(|e| Error::storage(namespace, e));
            self.metrics.checkpoint_taken(started.elapsed(), bytes);
            return written;
        }
        earlier.map_err(|e| Error::storage(&self.namespace, e))
    }
}

/// The model's state as a checkpoint of `namespace` at `position`, in the storage's format.
pub(super) fn snapshot<M: EventModel>(
    model: &M,
    c: &Checkpoints,
    namespace: &str,
    position: Position,
) -> Result<StoredCheckpoint, Error> {
    let mut bucket = CheckpointBucket::with_format(c.format);
    model
        .create_checkpoint(&mut bucket)
        .map_err(|source| Error::Checkpoint {
            namespace: namespace.to_owned(),
            source,
        })?;
    Ok(StoredCheckpoint::new(
        namespace,
        c.version.clone(),
        position,
        bucket,
    ))
}
