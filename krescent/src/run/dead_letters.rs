//! What the runner does when a handler fails, as the model's error policy says
//! ([`crate::deadletter`]): retry the event, park it (and the later events of its stream behind
//! it), or stop; and handling parked events again.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::checkpoints::snapshot;
use super::runner::Runner;
use crate::checkpoint::FlushError;
use crate::deadletter::{causes, ParkedEvent, Then};
use crate::event::RecordedEvent;
use crate::model::EventModel;
use crate::store::EventStore;
use crate::{Error, HandlerError, Position};

/// The pause before the second attempt of an event; it doubles with each further attempt.
const FIRST_RETRY: Duration = Duration::from_millis(50);
/// The longest pause between two attempts.
const MAX_RETRY: Duration = Duration::from_secs(2);

/// The pause before attempt `attempt + 1` of an event.
fn backoff(attempt: u32) -> Duration {
    FIRST_RETRY
        .checked_mul(1 << attempt.saturating_sub(1).min(16))
        .map_or(MAX_RETRY, |d| d.min(MAX_RETRY))
}

impl<M: EventModel> Runner<M> {
    /// Handles `event` as the error policy says; whether it was applied (`false`: parked). On
    /// an error that ends the run, the open transaction is rolled back (or the write in flight
    /// awaited) first.
    pub(super) async fn handle(&mut self, event: &RecordedEvent) -> Result<bool, Error> {
        if self.parked_already(event).await? {
            return Ok(false);
        }
        let policy = self.parking.policy;
        let attempts = policy.attempts();
        // A transactional model retries or parks only when it can take back one event's writes.
        let mut guarded = self.transactional && (attempts > 1 || policy.parks());
        let mut attempt = 0;
        loop {
            attempt += 1;
            if guarded {
                guarded = self.begin_event().await?;
            }
            let handled = match self.model.handle(event).await {
                // The event's queued writes are sent now, so that a failed one is its failure.
                Ok(()) if guarded => self.flush_event().await?,
                handled => handled,
            };
            let Err(source) = handled else {
                return Ok(true);
            };
            let undoable = guarded || !self.transactional;
            let last = attempt >= attempts;
            if source.is_transient() || !undoable || (last && !policy.parks()) {
                self.abandon().await;
                return Err(handler_error::<M>(event, source));
            }
            if guarded {
                self.undo_event().await?;
            }
            if last {
                let parked = ParkedEvent {
                    namespace: self.namespace.to_string(),
                    position: event.position(),
                    stream_id: event.meta.stream_id.to_string(),
                    event_type: event.event_type().to_owned(),
                    error: source.to_string(),
                    chain: causes(&source),
                    attempts: attempt,
                    parked_at: SystemTime::now(),
                    behind: None,
                    retry: false,
                };
                self.park(parked).await?;
                return Ok(false);
            }
            warn!(model = &*self.namespace, position = %event.position(), stream = %event.meta.stream_id, attempt, error = %source, "handler failed; trying the event again");
            tokio::time::sleep(backoff(attempt)).await;
        }
    }

    /// Whether `event` is parked already (a replay meets an event parked before) or must
    /// wait behind a parked event of its stream, which parks it.
    async fn parked_already(&mut self, event: &RecordedEvent) -> Result<bool, Error> {
        let position = event.position();
        if self.parking.holds(position) {
            return Ok(true);
        }
        let Some(first) = self.parking.blocked_by(&event.meta.stream_id, position) else {
            return Ok(false);
        };
        let parked = ParkedEvent {
            namespace: self.namespace.to_string(),
            position,
            stream_id: event.meta.stream_id.to_string(),
            event_type: event.event_type().to_owned(),
            error: format!(
                "parked behind the event at position {first} of stream `{}`",
                event.meta.stream_id
            ),
            chain: Vec::new(),
            attempts: 0,
            parked_at: SystemTime::now(),
            behind: Some(first),
            retry: false,
        };
        self.park(parked).await?;
        Ok(true)
    }

    /// Records `parked`: into the open transaction, or to be written before the next
    /// checkpoint; the first parked event of a stream is logged.
    async fn park(&mut self, parked: ParkedEvent) -> Result<(), Error> {
        if parked.behind.is_none() {
            let ordered = matches!(self.parking.policy.then(), Then::Park { ordered: true });
            warn!(
                model = &*self.namespace,
                position = %parked.position,
                stream = %parked.stream_id,
                event_type = %parked.event_type,
                attempts = parked.attempts,
                error = %parked.describe(),
                "event parked{}",
                if ordered { "; the later events of its stream are parked behind it" } else { "" }
            );
        }
        if self.transactional {
            let Some(transaction) = self.model.transaction() else {
                return Err(Error::storage(
                    &self.namespace,
                    crate::checkpoint::StorageError::Database(
                        "the model's transaction went away".into(),
                    ),
                ));
            };
            if let Err(e) = transaction.park(std::slice::from_ref(&parked)).await {
                self.abandon().await;
                return Err(Error::storage(&self.namespace, e));
            }
        } else {
            self.unflushed.push(parked.clone());
        }
        self.parking.insert(parked);
        self.metrics.parked(self.parking.len(), 1);
        Ok(())
    }

    /// Writes the events parked since the last flush to the storage (a model that is not
    /// transactional), before a checkpoint can cover their positions.
    pub(super) async fn flush_parked(&mut self) -> Result<(), Error> {
        if self.unflushed.is_empty() {
            return Ok(());
        }
        let Some(c) = &self.checkpoints else {
            return Ok(());
        };
        c.storage
            .park(&self.unflushed)
            .await
            .map_err(|e| Error::storage(&self.namespace, e))?;
        self.unflushed.clear();
        Ok(())
    }

    /// Marks where the event's writes begin; whether they can be taken back alone.
    async fn begin_event(&mut self) -> Result<bool, Error> {
        let Some(transaction) = self.model.transaction() else {
            return Ok(false);
        };
        match transaction.begin_event().await {
            Ok(undoable) => Ok(undoable),
            Err(e) => {
                self.abandon().await;
                Err(Error::storage(&self.namespace, e))
            }
        }
    }

    /// Sends the event's queued writes: `Err` with the handler error of a failed one (the
    /// transaction is kept, for the event's savepoint), or the run's error when the
    /// transaction itself failed.
    async fn flush_event(&mut self) -> Result<Result<(), HandlerError>, Error> {
        let Some(transaction) = self.model.transaction() else {
            return Ok(Ok(()));
        };
        match transaction.flush(false).await {
            Ok(()) => Ok(Ok(())),
            Err(FlushError::Write { source, .. }) => Ok(Err(HandlerError::Failed(source))),
            Err(FlushError::Storage(e)) => {
                self.abandon().await;
                Err(Error::storage(&self.namespace, e))
            }
        }
    }

    /// Takes back the failed event's writes.
    async fn undo_event(&mut self) -> Result<(), Error> {
        let Some(transaction) = self.model.transaction() else {
            return Ok(());
        };
        if let Err(e) = transaction.undo_event().await {
            self.abandon().await;
            return Err(Error::storage(&self.namespace, e));
        }
        Ok(())
    }

    /// Handles the model's parked events again, in position order, before it reads anything
    /// else: each one that succeeds is applied and removed from the parked set (for a
    /// transactional model, in one transaction with a checkpoint at the model's position); one
    /// that fails again stays parked with one more attempt, and so do the later parked events
    /// of its stream (unless the policy is `park(unordered)`). An event the model's checkpoint
    /// does not cover yet is only removed: the replay that follows handles it in order.
    ///
    /// With `requested_only`, only the events an operator marked ([`ParkedEvent::retry`]);
    /// in stream order, a marked event behind an unmarked one of its stream stays parked.
    pub(crate) async fn retry_parked<S: EventStore>(
        &mut self,
        store: &S,
        requested_only: bool,
    ) -> Result<(), Error> {
        let parked: Vec<ParkedEvent> = self.parking.events().cloned().collect();
        if parked.is_empty() {
            return Ok(());
        }
        let ordered = !matches!(self.parking.policy.then(), Then::Park { ordered: false });
        let mut failed_streams: HashSet<String> = HashSet::new();
        let mut applied: Vec<Position> = Vec::new();
        let mut failed: Vec<ParkedEvent> = Vec::new();
        for mut record in parked {
            if requested_only && !record.retry {
                failed_streams.insert(record.stream_id.clone());
                continue;
            }
            if ordered && failed_streams.contains(&record.stream_id) {
                continue;
            }
            if record.position > self.position {
                self.unpark(&[record.position]).await?;
                applied.push(record.position);
                continue;
            }
            let event = read_one::<S, M>(store, record.position).await?;
            let guarded = self.transactional && self.begin_event().await?;
            match self.model.handle(&event).await {
                Ok(()) => {
                    self.parking.remove(record.position);
                    self.processed += 1;
                    if self.transactional {
                        // Applied and removed in one transaction, with the checkpoint.
                        self.unpark(&[record.position]).await?;
                        self.commit().await?;
                    }
                    applied.push(record.position);
                }
                Err(source) if source.is_transient() || (self.transactional && !guarded) => {
                    self.abandon().await;
                    return Err(handler_error::<M>(&event, source));
                }
                Err(source) => {
                    if guarded {
                        self.undo_event().await?;
                    }
                    failed_streams.insert(record.stream_id.clone());
                    record.attempts += 1;
                    record.error = source.to_string();
                    record.chain = causes(&source);
                    record.parked_at = SystemTime::now();
                    record.behind = None;
                    record.retry = false;
                    warn!(model = &*self.namespace, position = %record.position, stream = %record.stream_id, attempts = record.attempts, error = %record.describe(), "parked event failed again; it stays parked");
                    if self.transactional {
                        self.park_again(&record).await?;
                    }
                    self.parking.insert(record.clone());
                    failed.push(record);
                }
            }
        }
        if self.transactional {
            if self.uncommitted {
                self.commit().await?;
            }
        } else {
            self.settle_retry(&applied, &failed).await?;
        }
        self.metrics.parked(self.parking.len(), 0);
        info!(
            model = &*self.namespace,
            applied = applied.len(),
            failed = failed.len(),
            "parked events handled again"
        );
        Ok(())
    }

    /// For a model that is not transactional: a checkpoint of the state with the applied
    /// events first, then the parked set changed (a crash in between handles them once more on
    /// the next retry: at least once).
    async fn settle_retry(
        &mut self,
        applied: &[Position],
        failed: &[ParkedEvent],
    ) -> Result<(), Error> {
        let Some(c) = &mut self.checkpoints else {
            return Ok(());
        };
        // A write in flight first: the checkpoint below is the latest.
        if let Err(e) = c.writer.settle().await {
            c.cadence.broken();
            warn!(model = &*self.namespace, error = %e, "checkpoint write failed; the retry's checkpoint follows");
        }
        if !applied.is_empty() {
            let checkpoint = snapshot(
                &mut self.model,
                c,
                &self.namespace,
                self.position,
                self.handover.as_ref(),
            )?;
            c.writer.start(checkpoint);
            c.record_taken();
            c.writer
                .settle()
                .await
                .map_err(|e| Error::storage(&self.namespace, e))?;
        }
        let storage = c.storage.clone();
        storage
            .unpark(&self.namespace, applied)
            .await
            .map_err(|e| Error::storage(&self.namespace, e))?;
        storage
            .park(failed)
            .await
            .map_err(|e| Error::storage(&self.namespace, e))
    }

    /// Removes parked events in the open transaction.
    async fn unpark(&mut self, positions: &[Position]) -> Result<(), Error> {
        for position in positions {
            self.parking.remove(*position);
        }
        if !self.transactional {
            return Ok(());
        }
        let namespace = self.namespace.clone();
        let Some(transaction) = self.model.transaction() else {
            return Ok(());
        };
        if let Err(e) = transaction.unpark(&namespace, Some(positions)).await {
            self.abandon().await;
            return Err(Error::storage(&namespace, e));
        }
        self.uncommitted = true;
        Ok(())
    }

    /// Writes a parked event that failed again into the open transaction.
    async fn park_again(&mut self, record: &ParkedEvent) -> Result<(), Error> {
        let Some(transaction) = self.model.transaction() else {
            return Ok(());
        };
        if let Err(e) = transaction.park(std::slice::from_ref(record)).await {
            self.abandon().await;
            return Err(Error::storage(&self.namespace, e));
        }
        self.uncommitted = true;
        Ok(())
    }
}

impl<M: EventModel> Runner<M> {
    /// While idle with parked events: every [`POLL_PARKED`], reads the parked set again (an
    /// operator may have dropped events or asked for a retry) and handles the marked ones.
    pub(crate) async fn poll_parked<S: EventStore>(&mut self, store: &S) -> Result<(), Error> {
        if self.parking.len() == 0 || self.parked_polled.elapsed() < POLL_PARKED {
            return Ok(());
        }
        self.parked_polled = std::time::Instant::now();
        let Some(c) = &self.checkpoints else {
            return Ok(());
        };
        let parked = c
            .storage
            .parked(&self.namespace)
            .await
            .map_err(|e| Error::storage(&self.namespace, e))?;
        self.parking = crate::deadletter::Parking::new(self.parking.policy, parked);
        self.metrics.parked(self.parking.len(), 0);
        if self.parking.requested() {
            self.retry_parked(store, true).await?;
        }
        Ok(())
    }

    /// How many events the model has parked.
    pub(crate) fn parked(&self) -> usize {
        self.parking.len()
    }

    /// When an idle model with parked events should wake to poll them.
    pub(crate) fn parked_deadline(&self) -> Option<std::time::Instant> {
        (self.parking.len() > 0).then(|| self.parked_polled + POLL_PARKED)
    }
}

/// How often an idle model with parked events reads its parked set again.
const POLL_PARKED: Duration = Duration::from_secs(5);

/// The event at `position`, read from `store`.
async fn read_one<S: EventStore, M: EventModel>(
    store: &S,
    position: Position,
) -> Result<RecordedEvent, Error> {
    let before = Position::new(position.get().saturating_sub(1));
    let events = store
        .read_after(before, 1)
        .await
        .map_err(|source| Error::Store {
            model: M::NAME,
            source,
        })?;
    match events.into_iter().next() {
        Some(event) if event.position() == position => Ok(event),
        _ => Err(Error::Aborted {
            model: M::NAME,
            reason: format!("the parked event at position {position} is not in the store"),
        }),
    }
}

/// The error that ends a run on `event`.
fn handler_error<M: EventModel>(event: &RecordedEvent, source: HandlerError) -> Error {
    Error::Handler {
        model: M::NAME,
        event_type: event.event_type().to_owned(),
        position: event.position(),
        source,
    }
}
