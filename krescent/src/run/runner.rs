//! The runner: drives one model through the events it is given, checkpointing as its
//! strategy says (`checkpoints.rs`).

use std::sync::Arc;

use tracing::warn;

use super::checkpoints::Checkpoints;
use super::plan::{CaughtUp, Checkpointing};
use super::restore::Start;
use crate::checkpoint::incremental::Cadence;
use crate::checkpoint::writer::Writer;
use crate::checkpoint::{CheckpointTrigger, CheckpointVersion, SnapshotBudget, StrategyState};
use crate::deadletter::{ErrorPolicy, ParkedEvent, Parking};
use crate::event::{DecodeError, RecordedEvent};
use crate::fleet::{Handover, Segment};
use crate::group::Group;
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
    /// What the segment skips, after the segment count changed, of the slices that the old
    /// count's segments had processed further than its position; `None` once passed.
    pub(super) handover: Option<Handover>,
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
            chain,
            handover,
        } = start;
        let (uncommitted, rescaled) =
            match Self::check_and_reset(&mut model, &origin, checkpointing.as_ref()).await {
                Ok(reset) => reset,
                Err(e) => return Err((e, model)),
            };
        // A segment that took over the old count's checkpoints continues from them.
        let (origin, position, handover) = match rescaled {
            Some(rescaled) => (
                Origin::Restored {
                    position: rescaled.start(),
                },
                rescaled.start(),
                Some(rescaled),
            ),
            None => (origin, position, handover),
        };
        let parked =
            match Self::load_parked(&mut model, &origin, checkpointing.as_ref(), on_error).await {
                Ok(parked) => parked,
                Err(e) => return Err((e, model)),
            };
        let mut runner =
            Self::started(model, origin, position, checkpointing, trigger, uncommitted);
        if let (Some(c), Some((piece, bytes))) = (&mut runner.checkpoints, chain) {
            c.cadence.restored(piece, position, bytes);
        }
        runner.handover = handover.filter(|h| !h.is_passed());
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
    /// a reset uncommitted, and where a segment continues from when it took over the
    /// checkpoints of another segment count.
    async fn check_and_reset(
        model: &mut M,
        origin: &Origin,
        checkpointing: Option<&Checkpointing>,
    ) -> Result<(bool, Option<Handover>), Error> {
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
        let mut rescaled = None;
        if let (Some(transaction), None) = (model.transaction(), origin.restored_from()) {
            rescaled = match checkpointing.and_then(|c| c.segment) {
                Some(segment) => {
                    let version = CheckpointVersion::of::<M>();
                    transaction.reset_segment(M::NAME, segment, &version).await
                }
                None => transaction.reset(namespace).await.map(|()| None),
            }
            .map_err(|e| Error::storage(namespace, e))?;
            uncommitted = true;
        }
        Ok((uncommitted, rescaled))
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
        // Deltas only where they are kept: by the storage, or by the transaction that commits
        // the checkpoints.
        let deltas = model.tracks_changes()
            && match model.transaction() {
                Some(transaction) => transaction.keeps_deltas(),
                None => checkpointing
                    .as_ref()
                    .is_some_and(|c| c.storage.keeps_deltas()),
            };
        let checkpoints = checkpointing.map(|c| Checkpoints {
            cadence: Cadence::new(deltas, M::COMPACT_AT_PERCENT),
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
            handover: None,
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
        // With retries or parking every event is a group of its own: `handle` below.
        if M::GROUPED && self.parking.is_plain() {
            return self.apply_grouped(batch).await;
        }
        let processed_before = self.processed;
        for event in batch {
            if self.takes(event) {
                if self.transactional {
                    if let Some(transaction) = self.model.transaction() {
                        transaction.handling(event);
                    }
                }
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
                if let Some(c) = &mut self.checkpoints {
                    if c.state.after_event() {
                        c.pending = true;
                    }
                }
                self.checkpoint_if_pending().await?;
            } else {
                self.position = event.position();
            }
        }
        self.applied(batch, processed_before).await
    }

    /// Whether the model handles `event`: one of its types, of its segment's streams, and not
    /// processed already by the old count's segment that the handover names.
    fn takes(&self, event: &RecordedEvent) -> bool {
        M::handles(event.event_type())
            && self
                .segment
                .is_none_or(|segment| segment.contains(&event.meta.stream_id))
            && !self
                .handover
                .as_ref()
                .is_some_and(|h| h.processed(&event.meta.stream_id, event.position()))
    }

    /// What every batch ends with: the handover passed up to the position, parked events made
    /// durable before any checkpoint covers them, and the metrics, once per batch rather than
    /// per event.
    async fn applied(
        &mut self,
        batch: &[RecordedEvent],
        processed_before: u64,
    ) -> Result<(), Error> {
        self.pass_handover();
        self.flush_parked().await?;
        self.metrics
            .processed(self.processed - processed_before, self.processed);
        if let Some(last) = batch.last() {
            self.metrics.lag(self.position, last.meta.recorded_at);
        }
        Ok(())
    }

    /// Takes the pending checkpoint: a transactional model's at once (its commit), another's
    /// when its writer and snapshot budget allow.
    async fn checkpoint_if_pending(&mut self) -> Result<(), Error> {
        let Some(c) = &mut self.checkpoints else {
            return Ok(());
        };
        if c.pending && self.transactional {
            self.commit().await?;
        } else if c.pending && !c.writer.is_busy() && !c.budget.waits(self.processed) {
            // Checked here first: while the writer or the budget holds a pending checkpoint
            // back, every event passes this way.
            self.flush_parked().await?;
            self.checkpoint_if_free().await?;
        }
        Ok(())
    }

    /// [`apply`](Self::apply) for a group handler: the model's events of the batch handed over
    /// in groups, each ending where the strategy falls due (and its checkpoint taken right
    /// after) or at the end of the batch (see [`crate::group`]).
    async fn apply_grouped(&mut self, batch: &[RecordedEvent]) -> Result<(), Error> {
        let processed_before = self.processed;
        let mut group: Vec<&RecordedEvent> = Vec::new();
        for event in batch {
            if !self.takes(event) {
                if group.is_empty() {
                    self.position = event.position();
                }
                continue;
            }
            group.push(event);
            let transactional = self.transactional;
            let ends = self.checkpoints.as_mut().is_some_and(|c| {
                // Newly due: a checkpoint the writer or the budget holds back stays due, and
                // is taken at the end of a later group, not after every event meanwhile.
                let due = c.state.after_event() && !c.pending;
                c.pending |= due;
                // A transactional model commits every pending checkpoint at once.
                due || (transactional && c.pending)
            });
            if ends {
                self.handle_group(&group, processed_before).await?;
                group.clear();
                self.checkpoint_if_pending().await?;
            }
        }
        if !group.is_empty() {
            self.handle_group(&group, processed_before).await?;
            self.checkpoint_if_pending().await?;
        }
        if let Some(last) = batch.last() {
            self.position = self.position.max(last.position());
        }
        self.applied(batch, processed_before).await
    }

    /// Hands `group` (not empty) to the group handler. A failure fails the whole group at its
    /// last event (a payload that does not decode, at its own), and rolls back the open
    /// transaction.
    async fn handle_group(
        &mut self,
        group: &[&RecordedEvent],
        processed_before: u64,
    ) -> Result<(), Error> {
        let Some(last) = group.last() else {
            return Ok(());
        };
        if self.transactional {
            if let Some(transaction) = self.model.transaction() {
                // What the group queues is named after its last event.
                transaction.handling(last);
            }
        }
        match self.model.handle_group(Group::new(group)).await {
            Ok(()) => {
                self.processed += group.len() as u64;
                self.position = last.position();
                self.uncommitted = self.transactional;
                Ok(())
            }
            Err(source) => {
                self.abandon().await;
                self.metrics
                    .processed(self.processed - processed_before, self.processed);
                let (event_type, position) = match undecoded(&source) {
                    Some(e) => (e.event_type.clone(), e.position),
                    None => (last.event_type().to_owned(), last.position()),
                };
                Err(Error::Handler {
                    model: M::NAME,
                    event_type,
                    position,
                    source,
                })
            }
        }
    }

    /// Moves up to `read_to`, past events that were not this segment's (a segment's read saw
    /// every event up to there); the checkpoint follows at the strategy's pace (by time, or
    /// at shutdown: see `StrategyState::moved`), or with the next event's.
    pub(crate) fn advance(&mut self, read_to: Position) {
        if read_to > self.position {
            self.position = read_to;
            self.pass_handover();
            if let Some(c) = &mut self.checkpoints {
                c.state.moved();
            }
        }
    }

    /// Forgets what the handover skips up to the runner's position.
    fn pass_handover(&mut self) {
        if let Some(handover) = &mut self.handover {
            handover.pass(self.position);
            if handover.is_passed() {
                self.handover = None;
            }
        }
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

/// The payload that did not decode, when `error` is that failure or has it among its sources
/// (a handler's error type that wraps the [`DecodeError`] as its source).
fn undecoded(error: &crate::HandlerError) -> Option<&DecodeError> {
    match error {
        crate::HandlerError::Decode(e) => Some(e),
        crate::HandlerError::Failed(e) => {
            let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&**e);
            while let Some(e) = next {
                if let Some(decode) = e.downcast_ref::<DecodeError>() {
                    return Some(decode);
                }
                next = e.source();
            }
            None
        }
    }
}
