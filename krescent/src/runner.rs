//! The runner: drives one model through a store, checkpointing as its strategy says.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::checkpoint::writer::Writer;
use crate::checkpoint::{
    CheckpointBucket, CheckpointFormat, CheckpointTrigger, CheckpointVersion, OnInvalid,
    SnapshotBudget, StoredCheckpoint, StrategyState,
};
use crate::event::RecordedEvent;
use crate::fleet::Segment;
use crate::krescent::Checkpointing;
use crate::metrics::{json_len, ModelMetrics};
use crate::model::{EventModel, Origin};
use crate::store::EventStore;
use crate::{CaughtUp, Error, Position};

/// How many events the runner reads at once, at most. (The in-memory log hands out at most
/// one chunk of 1024; for Postgres, 4096 rows a query cost the server ~10 % less per event than
/// 1024 in the benchmark's replay, and 16384 no less than 4096.)
pub(crate) const BATCH: usize = 4096;
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

/// A model and where it stands, while it runs.
pub(crate) struct Runner<M> {
    pub(crate) model: M,
    pub(crate) origin: Origin,
    pub(crate) position: Position,
    pub(crate) processed: u64,
    /// Where its checkpoints go: the model's name, or its segment's namespace.
    namespace: Arc<str>,
    /// The segment it runs, if the model is split: events of other streams are skipped.
    segment: Option<Segment>,
    checkpoints: Option<Checkpoints>,
    /// The model writes into a database transaction that each checkpoint commits
    /// ([`CheckpointTransaction`](crate::checkpoint::CheckpointTransaction)).
    transactional: bool,
    /// The open transaction holds writes (or a reset) that no checkpoint has committed yet.
    uncommitted: bool,
    /// The model's metrics, recorded once per batch.
    metrics: ModelMetrics,
}

/// The checkpointing part of a runner: strategy state, writer and the pending flag.
struct Checkpoints {
    state: StrategyState,
    writer: Writer,
    version: CheckpointVersion,
    /// The storage's format, which snapshots are put in.
    format: CheckpointFormat,
    /// A checkpoint fell due while the writer was busy; take it at the next event boundary.
    pending: bool,
    /// No snapshot before an instant: the snapshot budget, or the pause after a failed write.
    budget: SnapshotBudget,
    /// Checkpoints taken in this run.
    taken: u64,
}

impl Checkpoints {
    /// Counts a checkpoint just taken, whatever asked for it; the strategy's counters restart.
    fn record_taken(&mut self) {
        self.taken += 1;
        self.state.checkpoint_taken();
        self.pending = false;
    }
}

/// A storage failure of the checkpoints of `namespace`.
fn storage_failed(namespace: &str, source: crate::checkpoint::StorageError) -> Error {
    Error::Storage {
        namespace: namespace.to_owned(),
        source,
    }
}

/// Where a runner's model starts, before any event.
pub(crate) struct Start<M> {
    pub(crate) model: M,
    pub(crate) origin: Origin,
    pub(crate) position: Position,
}

/// Loads and checks the model's checkpoint (of `checkpointing`'s namespace) and restores it;
/// with [`OnInvalid::Rebuild`] an unusable checkpoint means starting from scratch.
pub(crate) async fn restore<M: EventModel>(
    model: M,
    checkpointing: Option<&Checkpointing>,
) -> Result<Start<M>, Error> {
    restore_keeping(model, checkpointing)
        .await
        .map_err(|(e, _)| e)
}

/// [`restore`], handing the model back on failure (for a restart in place).
pub(crate) async fn restore_keeping<M: EventModel>(
    mut model: M,
    checkpointing: Option<&Checkpointing>,
) -> Result<Start<M>, (Error, M)> {
    if let Err(e) = check_event_names::<M>() {
        return Err((e, model));
    }
    let scratch = |model| Start {
        model,
        origin: Origin::Scratch,
        position: Position::START,
    };
    let Some(Checkpointing {
        storage, namespace, ..
    }) = checkpointing
    else {
        return Ok(scratch(model));
    };
    let on_invalid = M::checkpointing().map(|c| c.on_invalid).unwrap_or_default();
    let namespace = &**namespace;
    let invalid = |model, reason: String| match on_invalid {
        OnInvalid::Fail => Err((
            Error::InvalidCheckpoint {
                namespace: namespace.to_owned(),
                reason,
            },
            model,
        )),
        OnInvalid::Rebuild => {
            warn!(model = namespace, %reason, "discarding the checkpoint and rebuilding from the start of the stream");
            Ok(Start {
                model,
                origin: Origin::Rebuilt { reason },
                position: Position::START,
            })
        }
    };
    if let Some(transaction) = model.transaction() {
        if let Err(e) = transaction.prepare().await {
            return Err((storage_failed(namespace, e), model));
        }
    }
    let checkpoint = match storage.load(namespace).await {
        Ok(Some(checkpoint)) => checkpoint,
        Ok(None) => return Ok(scratch(model)),
        Err(e) if e.is_corrupt() => return invalid(model, e.to_string()),
        Err(source) => return Err((storage_failed(namespace, source), model)),
    };
    let version = CheckpointVersion::of::<M>();
    if checkpoint.version != version {
        return invalid(
            model,
            format!(
                "it was written by version `{}`, this build is version `{version}`",
                checkpoint.version
            ),
        );
    }
    if !model.validate_checkpoint(&checkpoint.bucket) {
        return invalid(model, "it failed validation".to_owned());
    }
    if let Err(e) = model.restore_checkpoint(&checkpoint.bucket) {
        return invalid(model, e.to_string());
    }
    debug!(model = namespace, position = %checkpoint.position, "restored from checkpoint");
    Ok(Start {
        model,
        origin: Origin::Restored {
            position: checkpoint.position,
        },
        position: checkpoint.position,
    })
}

/// Two handled event types with one recorded name would make the second handler unreachable;
/// `#[handlers]` refuses them at compile time where it can, this is for the rest (a generic
/// block, a hand-written [`Handlers`](crate::model::Handlers) impl).
fn check_event_names<M: EventModel>() -> Result<(), Error> {
    for (i, later) in M::EVENTS.iter().enumerate() {
        if M::EVENTS[..i]
            .iter()
            .any(|earlier| earlier.name == later.name)
        {
            return Err(Error::DuplicateEventName {
                model: M::NAME,
                name: later.name,
            });
        }
    }
    Ok(())
}

impl<M: EventModel> Runner<M> {
    /// A runner from a restored start; `checkpointing` is `None` when the model does not checkpoint.
    /// A transactional model that starts without a checkpoint resets its data first.
    pub(crate) async fn begin(
        start: Start<M>,
        checkpointing: Option<Checkpointing>,
        trigger: CheckpointTrigger,
    ) -> Result<Self, Error> {
        Self::begin_keeping(start, checkpointing, trigger)
            .await
            .map_err(|(e, _)| e)
    }

    /// [`begin`](Self::begin), handing the model back on failure (for a restart in place).
    pub(crate) async fn begin_keeping(
        start: Start<M>,
        checkpointing: Option<Checkpointing>,
        trigger: CheckpointTrigger,
    ) -> Result<Self, (Error, M)> {
        let Start {
            mut model,
            origin,
            position,
        } = start;
        let uncommitted =
            match Self::check_and_reset(&mut model, &origin, checkpointing.as_ref()).await {
                Ok(uncommitted) => uncommitted,
                Err(e) => return Err((e, model)),
            };
        Ok(Self::started(
            model,
            origin,
            position,
            checkpointing,
            trigger,
            uncommitted,
        ))
    }

    /// What [`begin`](Self::begin) checks and does before the runner exists; whether it left
    /// a reset uncommitted.
    async fn check_and_reset(
        model: &mut M,
        origin: &Origin,
        checkpointing: Option<&Checkpointing>,
    ) -> Result<bool, Error> {
        let transactional = model.transaction().is_some();
        let namespace = checkpointing.map_or(M::NAME, |c| &*c.namespace);
        if transactional && checkpointing.is_none() {
            return Err(Error::InvalidCheckpoint {
                namespace: M::NAME.to_owned(),
                reason: "a model with a transactional extension needs `#[checkpoint(strategy = ..., storage = ...)]`".to_owned(),
            });
        }
        let commits_to = model.transaction().and_then(|t| t.checkpoint_location());
        if let (Some(expected), Some(c)) = (commits_to, checkpointing) {
            let found = c.storage.location();
            if found.as_deref() != Some(expected.as_str()) {
                return Err(Error::StorageMismatch {
                    model: M::NAME,
                    storage: c.name.clone(),
                    expected,
                    found,
                });
            }
        }
        if let (Origin::Rebuilt { .. }, Some(c), false) = (origin, checkpointing, transactional) {
            // An explicit reset: the unusable checkpoint (of this version at a later position,
            // or with a position that does not even parse) must not hold back the rebuild's.
            c.storage
                .delete(namespace)
                .await
                .map_err(|e| storage_failed(namespace, e))?;
        }
        let mut uncommitted = false;
        if let (Some(transaction), None) = (model.transaction(), origin.restored_from()) {
            let reset = match checkpointing.and_then(|c| c.segment) {
                Some(segment) => {
                    let version = CheckpointVersion::of::<M>();
                    transaction.reset_segment(M::NAME, segment, &version).await
                }
                None => transaction.reset(namespace).await,
            };
            reset.map_err(|e| storage_failed(namespace, e))?;
            uncommitted = true;
        }
        Ok(uncommitted)
    }

    /// The runner, once [`check_and_reset`](Self::check_and_reset) passed.
    fn started(
        mut model: M,
        origin: Origin,
        position: Position,
        checkpointing: Option<Checkpointing>,
        trigger: CheckpointTrigger,
        uncommitted: bool,
    ) -> Self {
        let transactional = model.transaction().is_some();
        let namespace: Arc<str> = checkpointing
            .as_ref()
            .map_or_else(|| M::NAME.into(), |c| c.namespace.clone());
        let segment = checkpointing.as_ref().and_then(|c| c.segment);
        let checkpoints = checkpointing.map(|c| Checkpoints {
            state: StrategyState::new(&c.strategy, trigger),
            format: c.storage.format(),
            writer: Writer::new(c.storage),
            version: CheckpointVersion::of::<M>(),
            pending: false,
            budget: SnapshotBudget::default(),
            taken: 0,
        });
        model.on_start(&origin);
        Runner {
            model,
            origin,
            position,
            processed: 0,
            metrics: ModelMetrics::new(&namespace),
            namespace,
            segment,
            checkpoints,
            transactional,
            uncommitted,
        }
    }

    /// Applies a batch in order, checkpointing when due. On a handler error nothing of the
    /// failed event is checkpointed; the write in flight is awaited first.
    pub(crate) async fn apply(&mut self, batch: &[RecordedEvent]) -> Result<(), Error> {
        let processed_before = self.processed;
        for event in batch {
            let ours = self
                .segment
                .is_none_or(|segment| segment.contains(&event.meta.stream_id));
            if ours && M::handles(event.event_type()) {
                if let Err(source) = self.model.handle(event).await {
                    self.metrics
                        .processed(self.processed - processed_before, self.processed);
                    self.abandon().await;
                    return Err(Error::Handler {
                        model: M::NAME,
                        event_type: event.event_type().to_owned(),
                        position: event.position(),
                        source,
                    });
                }
                self.processed += 1;
                self.position = event.position();
                self.uncommitted = self.transactional;
                let Some(c) = &mut self.checkpoints else {
                    continue;
                };
                if c.state.after_event() {
                    c.pending = true;
                }
                if c.pending && self.transactional {
                    self.commit().await?;
                } else if c.pending && !c.writer.is_busy() && !c.budget.waits(self.processed) {
                    // Checked here first: while the writer or the budget holds a pending
                    // checkpoint back, every event passes this way.
                    self.checkpoint_if_free().await?;
                }
            } else {
                self.position = event.position();
            }
        }
        // Once per batch, not per event.
        self.metrics
            .processed(self.processed - processed_before, self.processed);
        if let Some(last) = batch.last() {
            self.metrics.lag(self.position, last.meta.recorded_at);
        }
        Ok(())
    }

    /// Reads the store's head for the lag metrics, when it is due (at most once a second); a
    /// failure only leaves the lag as it was.
    pub(crate) async fn observe_head<S: EventStore>(&mut self, store: &S) {
        if self.metrics.head_due() {
            if let Ok(head) = store.head().await {
                self.metrics.head_read(head);
            }
        }
    }

    /// The model has read every event: no lag.
    pub(crate) fn caught_up(&mut self) {
        self.metrics.caught_up(self.position);
    }

    /// Commits the model's transaction with a checkpoint of its state, in line: the next
    /// events' writes go into the next transaction.
    async fn commit(&mut self) -> Result<(), Error> {
        let Some(c) = &mut self.checkpoints else {
            return Ok(());
        };
        let started = Instant::now();
        let checkpoint = snapshot(&self.model, c, &self.namespace, self.position)?;
        if let Some(transaction) = self.model.transaction() {
            transaction
                .commit(&checkpoint)
                .await
                .map_err(|e| storage_failed(&self.namespace, e))?;
        }
        self.uncommitted = false;
        c.record_taken();
        self.metrics
            .checkpoint_taken(started.elapsed(), json_len(&checkpoint.bucket));
        Ok(())
    }

    /// After a handler failed: rolls back the open transaction, or waits for the write in
    /// flight, so that the next run finds the last checkpoint in place.
    async fn abandon(&mut self) {
        let result = match self.model.transaction() {
            Some(transaction) => transaction.rollback().await,
            None => match &mut self.checkpoints {
                Some(c) => c.writer.settle().await,
                None => Ok(()),
            },
        };
        if let Err(e) = result {
            warn!(model = &*self.namespace, error = %e, "cleaning up after the failed handler failed too");
        }
    }

    /// Takes the due checkpoint if the writer is free; otherwise it stays pending.
    async fn checkpoint_if_free(&mut self) -> Result<(), Error> {
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
                return Err(storage_failed(&self.namespace, e));
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

    /// What the run did, with the model.
    pub(crate) fn into_caught_up(self) -> CaughtUp<M> {
        CaughtUp {
            model: self.model,
            origin: self.origin,
            position: self.position,
            processed: self.processed,
            checkpoints: self.checkpoints.as_ref().map_or(0, |c| c.taken),
        }
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
                .map_err(|e| storage_failed(namespace, e));
            self.metrics.checkpoint_taken(started.elapsed(), bytes);
            return written;
        }
        earlier.map_err(|e| storage_failed(&self.namespace, e))
    }
}

/// The model's state as a checkpoint of `namespace` at `position`, in the storage's format.
fn snapshot<M: EventModel>(
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
