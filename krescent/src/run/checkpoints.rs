//! When and how a running model checkpoints: snapshots handed to the background writer
//! within the snapshot budget, or commits of the model's own transaction.

use std::time::{Duration, Instant};

use tracing::warn;

// cycle: this is the checkpointing half of `Runner` (its `Checkpoints`, commits and
// snapshots); `runner.rs` holds the other half of the one type and keeps a `Checkpoints`.
use super::runner::Runner;
use crate::checkpoint::incremental::Cadence;
use crate::checkpoint::writer::Writer;
use crate::checkpoint::{
    CheckpointBucket, CheckpointFormat, CheckpointVersion, FlushError, Piece, SnapshotBudget,
    StoredCheckpoint, StrategyState, TaskWork,
};
use crate::fleet::Handover;
use crate::metrics::json_len;
use crate::model::EventModel;
use crate::{Error, Position};

/// The pause before retrying a checkpoint write that failed.
const WRITE_RETRY: Duration = Duration::from_secs(1);
/// Checkpoints may take at most 1 / (1 + this) of the model task's time: after a checkpoint that
/// took `d` of the task's CPU time (the snapshot and handing it to the writer; a pause in
/// between is not counted, see `TaskWork`), the next waits (pending) until `d *
/// SNAPSHOT_SPACING` has passed. Live models, whose events arrive slower than that,
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
    /// Whether the next checkpoint is a base or a delta ([`crate::checkpoint::incremental`]).
    pub(super) cadence: Cadence,
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
        if self.checkpoints.is_none() {
            return Ok(());
        }
        let started = Instant::now();
        self.flush_queued().await?;
        let Some(c) = &mut self.checkpoints else {
            return Ok(());
        };
        let checkpoint = snapshot(
            &mut self.model,
            c,
            &self.namespace,
            self.position,
            self.handover.as_ref(),
        )?;
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

    /// Sends the writes the handlers queued in the model's transaction; a failed one is the
    /// handler error of the event that queued it, and the transaction is rolled back.
    pub(super) async fn flush_queued(&mut self) -> Result<(), Error> {
        let Some(transaction) = self.model.transaction() else {
            return Ok(());
        };
        let Err(e) = transaction.flush(true).await else {
            return Ok(());
        };
        self.abandon().await;
        Err(match e {
            FlushError::Write {
                position,
                event_type,
                source,
                ..
            } => Error::Handler {
                model: M::NAME,
                event_type,
                position,
                source: crate::HandlerError::Failed(source),
            },
            FlushError::Storage(e) => Error::storage(&self.namespace, e),
        })
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
            // The chain may lack what failed: the next checkpoint is a base.
            c.cadence.broken();
            // A writer whose lease was taken over steps down rather than retry (`crate::fleet`).
            if matches!(e, crate::checkpoint::StorageError::Fenced { .. }) {
                return Err(Error::storage(&self.namespace, e));
            }
            warn!(model = &*self.namespace, error = %e, "checkpoint write failed; retrying with the next checkpoint");
            let now = Instant::now();
            c.budget.wait_until(now + WRITE_RETRY, now, self.processed);
            return Ok(());
        }
        let work = TaskWork::start();
        let checkpoint = snapshot(
            &mut self.model,
            c,
            &self.namespace,
            self.position,
            self.handover.as_ref(),
        )?;
        let bytes = json_len(&checkpoint.bucket);
        let base = checkpoint.piece == Piece::Whole;
        c.writer.start(checkpoint);
        // The budget covers all the model task spends on the checkpoint: the snapshot and
        // handing it to the writer, in CPU time (a pause in between is not the snapshot's).
        let cost = work.cost();
        let now = Instant::now();
        let spacing = cost * SNAPSHOT_SPACING;
        if base && c.cadence.enabled() {
            // The base of a model that writes deltas: the deltas after it are charged what
            // they cost, and the next base (a compaction) waits for this one's spacing.
            c.cadence.defer_bases_until(now + spacing);
        } else {
            c.budget.wait_until(now + spacing, now, self.processed);
        }
        c.record_taken();
        self.metrics.checkpoint_taken(work.elapsed(), bytes);
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
        let moved = self.transactional
            && self
                .checkpoints
                .as_ref()
                .is_some_and(|c| c.state.due_on_shutdown());
        if self.uncommitted || moved {
            return self.commit().await;
        }
        let Some(c) = &mut self.checkpoints else {
            return Ok(());
        };
        let earlier = c.writer.settle().await;
        if earlier.is_err() {
            c.cadence.broken();
        }
        if c.pending || c.state.due_on_shutdown() || (earlier.is_err() && c.state.has_unsaved()) {
            let started = Instant::now();
            let checkpoint = snapshot(
                &mut self.model,
                c,
                &self.namespace,
                self.position,
                self.handover.as_ref(),
            )?;
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

/// The model's state as a checkpoint of `namespace` at `position`, in the storage's format:
/// whole, or a delta of its incremental fields when the cadence says so. The fields' record of
/// changes is sealed: the checkpoint holds them now (a write that fails breaks the chain, and
/// the next checkpoint is whole).
pub(super) fn snapshot<M: EventModel>(
    model: &mut M,
    c: &mut Checkpoints,
    namespace: &str,
    position: Position,
    handover: Option<&Handover>,
) -> Result<StoredCheckpoint, Error> {
    let piece = c.cadence.next(position);
    let mut bucket = match piece {
        Piece::Whole => CheckpointBucket::with_format(c.format),
        Piece::Delta(_) => CheckpointBucket::delta_with_format(c.format),
    };
    model
        .create_checkpoint(&mut bucket)
        .map_err(|source| Error::Checkpoint {
            namespace: namespace.to_owned(),
            source,
        })?;
    // What a segment still skips after a rescale, until its position passes it.
    if let Some(mut handover) = handover.cloned() {
        handover.pass(position);
        if !handover.is_passed() {
            bucket
                .put(Handover::KEY, &handover)
                .map_err(|source| Error::Checkpoint {
                    namespace: namespace.to_owned(),
                    source,
                })?;
        }
    }
    model.checkpoint_taken();
    c.cadence.taken(piece, position, json_len(&bucket) as u64);
    Ok(StoredCheckpoint::new(namespace, c.version.clone(), position, bucket).with_piece(piece))
}
