//! The runner: drives one model through the events it is given, checkpointing as its
//! strategy says (`checkpoints.rs`).

use std::sync::Arc;

use tracing::warn;

use super::checkpoints::Checkpoints;
use super::plan::{CaughtUp, Checkpointing};
use super::restore::Start;
use crate::checkpoint::writer::Writer;
use crate::checkpoint::{CheckpointTrigger, CheckpointVersion, SnapshotBudget, StrategyState};
use crate::deadletter::{ErrorPolicy, ParkedEvent, Parking};
use crate::event::RecordedEvent;
use crate::fleet::Segment;
use crate::metrics::ModelMetrics;
use crate::model::{EventModel, Origin};
use crate::store::EventStore;
use crate::{Error, Position};

/// A model and where it stands, while it runs.
pub(crate) struct Runner<M> {
    pub(crate) model: M,
    pub(crate) origin: Origin,
    pub(crate) position: Position,
    pub(crate) processed: u64,
    /// Where its checkpoints go: the model's name, or its segment's namespace.
    pub(super) namespace: Arc<str>,
    /// The segment it runs, if the model is split: events of other streams are skipped.
    pub(super) segment: Option<Segment>,
    pub(super) checkpoints: Option<Checkpoints>,
    /// The model writes into a database transaction that each checkpoint commits
    /// ([`CheckpointTransaction`](crate::checkpoint::CheckpointTransaction)).
    pub(super) transactional: bool,
    /// The open transaction holds writes (or a reset) that no checkpoint has committed yet.
    pub(super) uncommitted: bool,
    /// The model's metrics, recorded once per batch.
    pub(super) metrics: ModelMetrics,
    /// Its error policy and parked events (`dead_letters.rs`).
    pub(super) parking: Parking,
    /// Events parked since the last flush, for a model that is not transactional: written to
    /// the storage before the next checkpoint is taken.
    pub(super) unflushed: Vec<ParkedEvent>,
    /// When the parked set was last read from the storage.
    pub(super) parked_polled: std::time::Instant,
}

impl<M: EventModel> Runner<M> {
    /// A runner from a restored start, or the error and the model back (for a restart in
    /// place); `checkpointing` is `None` when the model does not checkpoint. A transactional
    /// model that starts without a checkpoint resets its data first.
    pub(crate) async fn begin(
        start: Start<M>,
        checkpointing: Option<Checkpointing>,
        trigger: CheckpointTrigger,
        on_error: ErrorPolicy,
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
        let parked =
            match Self::load_parked(&mut model, &origin, checkpointing.as_ref(), on_error).await {
                Ok(parked) => parked,
                Err(e) => return Err((e, model)),
            };
        let mut runner =
            Self::started(model, origin, position, checkpointing, trigger, uncommitted);
        runner.parking = Parking::new(on_error, parked);
        runner.metrics.parked(runner.parking.len(), 0);
        Ok(runner)
    }

    /// The events the model parked before, as its storage keeps them; none for a
    /// transactional model that starts over (its reset deletes them in the open transaction).
    async fn load_parked(
        model: &mut M,
        origin: &Origin,
        checkpointing: Option<&Checkpointing>,
        on_error: ErrorPolicy,
    ) -> Result<Vec<ParkedEvent>, Error> {
        let Some(c) = checkpointing else {
            if on_error.parks() {
                return Err(Error::InvalidCheckpoint {
                    namespace: M::NAME.to_owned(),
                    reason: format!("the error policy `{on_error}` parks events where the checkpoints are; the model needs `#[checkpoint(strategy = ..., storage = ...)]`"),
                });
            }
            return Ok(Vec::new());
        };
        if model.transaction().is_some() && origin.restored_from().is_none() {
            return Ok(Vec::new());
        }
        c.storage
            .parked(&c.namespace)
            .await
            .map_err(|e| Error::storage(&c.namespace, e))
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
                .map_err(|e| Error::storage(namespace, e))?;
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
            reset.map_err(|e| Error::storage(namespace, e))?;
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
            storage: c.storage.clone(),
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
            parking: Parking::default(),
            unflushed: Vec::new(),
            parked_polled: std::time::Instant::now(),
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
                // Without parked events and with `stop`, the handler alone (the hot path).
                let handled = if self.parking.is_plain() {
                    match self.model.handle(event).await {
                        Ok(()) => Ok(true),
                        Err(source) => {
                            self.abandon().await;
                            Err(Error::Handler {
                                model: M::NAME,
                                event_type: event.event_type().to_owned(),
                                position: event.position(),
                                source,
                            })
                        }
                    }
                } else {
                    self.handle(event).await
                };
                let applied = match handled {
                    Ok(applied) => applied,
                    Err(error) => {
                        self.metrics
                            .processed(self.processed - processed_before, self.processed);
                        return Err(error);
                    }
                };
                if applied {
                    self.processed += 1;
                }
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
                    self.flush_parked().await?;
                    self.checkpoint_if_free().await?;
                }
            } else {
                self.position = event.position();
            }
        }
        // Parked events are durable before any checkpoint covers them.
        self.flush_parked().await?;
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

    /// After a handler failed: rolls back the open transaction, or waits for the write in
    /// flight, so that the next run finds the last checkpoint in place.
    pub(super) async fn abandon(&mut self) {
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
}
