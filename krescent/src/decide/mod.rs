//! Write models: load a model's state for a stream, decide a command from it, append what the
//! decision emits with optimistic concurrency, retry on conflict, and snapshot per stream.
//!
//! A write model is an ordinary [`EventModel`] that is also `Default`: its
//! `#[krescent::handlers]` apply events, its `#[checkpoint]` fields are its snapshot, and its
//! `#[checkpoint(strategy = "...", storage = "...")]` says when to snapshot a stream and where
//! (strategies count per stream: `fixed_events(N)` snapshots a stream after N of its events
//! since its last snapshot; `always` after every decision that appended; `fixed_time(D)` at the
//! first decision after D; `manual`, `on_shutdown` and `never` do not snapshot). A model without
//! the attribute replays the stream on every decision.
//!
//! ```
//! use krescent::prelude::*;
//!
//! #[derive(Event, Serialize, Deserialize)]
//! #[event(name = "counter.incremented")]
//! struct Incremented { by: u32 }
//!
//! #[derive(EventModel, Default)]
//! #[model(name = "counter", version = 1)]
//! #[checkpoint(strategy = "fixed_events(100)", storage = "memory")]
//! struct Counter {
//!     #[checkpoint]
//!     value: u32,
//! }
//!
//! #[krescent::handlers]
//! impl Counter {
//!     fn incremented(&mut self, e: &Incremented) { self.value += e.by; }
//! }
//!
//! #[derive(Debug, thiserror::Error)]
//! enum CounterError {
//!     #[error("the counter is at its limit")]
//!     Full,
//!     #[error(transparent)]
//!     Encode(#[from] serde_json::Error),
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let krescent = Krescent::new(InMemoryEventStore::new());
//! let decided = krescent
//!     .decide::<Counter>("counter-1")
//!     .run(|counter| {
//!         if counter.value >= 10 {
//!             return Err(CounterError::Full);
//!         }
//!         Ok(vec![NewEvent::new(&Incremented { by: 3 })?])
//!     })
//!     .await?;
//! assert_eq!(decided.model.value, 3);       // the state includes the emitted events
//! assert_eq!(decided.stream_version, 1);
//! # Ok(())
//! # }
//! ```
//!
//! **Guarantees.** The decision sees the state as of the stream's version when it was loaded;
//! its events are appended with that version as the expected version, so a concurrent append
//! to the stream makes the append fail ([`StoreError::Conflict`](crate::store::StoreError)),
//! and the decision is retried on the caught-up state (by default 3 retries, see
//! [`Decide::retries`]) and then returns [`DecideError::Conflict`]. A decision error appends
//! nothing. **A snapshot never contains an event that is not in the store**: it is taken only
//! from a state whose events are all stored (after the append returned, never between the
//! decision and its append, never after a failed append), and written on a task of its own,
//! off the decision's path ([`Decided::snapshot`]).
//!
//! **Beyond one stream.** [`Krescent::decide_on`] builds the state from every event matching a
//! [`Query`] (several streams, event types) and appends under an
//! [`AppendCondition`]: the append is refused when any matching
//! event was appended after the state was read. Such decisions take no snapshots.
//!
//! **Limits.** A decision is a synchronous closure over `&M` (it cannot mutate the state or
//! await); it may be called several times, once per attempt. Concurrent decisions on one stream
//! may write its snapshot in any order; storages keep the one with the later position. The
//! state after an append includes the emitted events with the store's versions and positions
//! but the decider's clock as their `recorded_at`.

mod error;
mod retry;
mod snapshot;
mod state;

use std::marker::PhantomData;
use std::time::Duration;

pub use error::{DecideError, LoadError};
pub use snapshot::{snapshot_namespace, SnapshotWrite};

use self::state::State;
use crate::model::EventModel;
use crate::store::{AppendCondition, Appended, EventStore, ExpectedVersion, Query};
use crate::{EventMeta, Krescent, Metadata, NewEvent, Position};

/// The retries after a conflict unless set otherwise.
pub const DEFAULT_RETRIES: u32 = 3;
/// The first retry's backoff ceiling unless set otherwise; it doubles with each retry, up to
/// 250 ms.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(5);

/// A decision about to be made; built by [`Krescent::decide`] or [`Krescent::decide_on`], made
/// by [`run`](Self::run).
#[must_use = "a decision does nothing until `run` is awaited"]
#[derive(Debug)]
pub struct Decide<'k, S, M> {
    krescent: &'k Krescent<S>,
    stream_id: String,
    query: Option<Query>,
    retries: u32,
    backoff: Duration,
    /// Metadata every emitted event gets ([`Decide::metadata`], [`Decide::caused_by`]).
    metadata: Metadata,
    model: PhantomData<fn() -> M>,
}

/// A write model's state for a stream, loaded without deciding anything.
#[derive(Debug)]
pub struct Loaded<M> {
    /// The state.
    pub model: M,
    /// The stream's version it covers (0 for a stream without events).
    pub stream_version: u64,
    /// The position of the snapshot it was restored from, if any.
    pub snapshot: Option<Position>,
    /// The events read from the store to build it (after the snapshot).
    pub read: u64,
}

/// A decision that was made: the state after it, and where its events landed.
#[derive(Debug)]
pub struct Decided<M> {
    /// The state, including the events the decision emitted.
    pub model: M,
    /// The stream's version after the decision (its events included).
    pub stream_version: u64,
    /// Where the append landed; `None` when the decision emitted nothing.
    pub appended: Option<Appended>,
    /// How many times the decision was made (1 without conflict).
    pub attempts: u32,
    /// The events read from the store, over all attempts.
    pub read: u64,
    /// The snapshot this decision started writing, if its strategy was due.
    pub snapshot: Option<SnapshotWrite>,
}

impl<S: EventStore> Krescent<S> {
    /// A decision on `stream_id` with the write model `M`: `run` it with a closure that looks
    /// at the state and returns the events to append (or its own error).
    pub fn decide<M: EventModel + Default>(
        &self,
        stream_id: impl Into<String>,
    ) -> Decide<'_, S, M> {
        Decide {
            krescent: self,
            stream_id: stream_id.into(),
            query: None,
            retries: DEFAULT_RETRIES,
            backoff: DEFAULT_BACKOFF,
            metadata: Metadata::new(),
            model: PhantomData,
        }
    }

    /// A decision over every event matching `query` (from the start of the store, no
    /// snapshot), whose events are appended to `stream_id` on the condition that no event
    /// matching `query` was appended since it was read. Two such decisions conflict only when
    /// one appends an event the other's query matches (so name the appended-to stream in the
    /// query when decisions on it must exclude each other).
    pub fn decide_on<M: EventModel + Default>(
        &self,
        query: Query,
        stream_id: impl Into<String>,
    ) -> Decide<'_, S, M> {
        Decide {
            query: Some(query),
            ..self.decide(stream_id)
        }
    }

    /// `M`'s state for `stream_id`: its snapshot (if it has a usable one) and the stream's
    /// events after it.
    pub async fn load<M: EventModel + Default>(
        &self,
        stream_id: &str,
    ) -> Result<Loaded<M>, LoadError> {
        let storage = self.checkpointing_of::<M>()?.map(|c| c.storage);
        let state = State::<M>::load_stream(self.store(), storage.as_ref(), stream_id).await?;
        Ok(Loaded {
            model: state.model,
            stream_version: state.version,
            snapshot: state.snapshot_position,
            read: state.read,
        })
    }
}

/// The snapshot the strategy wants after `appended`, started; `None` when not due. The state
/// covers exactly the stream up to the append just made: every event it reflects is stored.
fn snapshot_after<M: EventModel + Default>(
    checkpointing: &crate::run::Checkpointing,
    stream_id: &str,
    state: &State<M>,
    appended: Appended,
) -> Option<SnapshotWrite> {
    if !snapshot::due(
        &checkpointing.strategy,
        appended.stream_version,
        state.snapshot,
    ) {
        return None;
    }
    snapshot::write(
        &checkpointing.storage,
        stream_id,
        &state.model,
        appended.stream_version,
        appended.position,
    )
    .inspect_err(|e| tracing::warn!(stream = stream_id, error = %e, "cannot take a snapshot"))
    .ok()
}

impl<S: EventStore, M: EventModel + Default> Decide<'_, S, M> {
    /// Retry at most `retries` times after a conflict (default [`DEFAULT_RETRIES`]); 0 returns
    /// the first conflict.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Adds `metadata` to every event the decision emits (a key an event sets itself keeps the
    /// event's value): a command's correlation id, its user, its tenant.
    pub fn metadata(mut self, metadata: Metadata) -> Self {
        self.metadata.extend(metadata);
        self
    }

    /// Marks every event the decision emits as caused by the event `cause` (a process manager
    /// deciding on what it handled): the events carry `cause`'s correlation id and its event id
    /// as their causation id, as [`NewEvent::caused_by`] sets them.
    pub fn caused_by(mut self, cause: &EventMeta) -> Self {
        self.metadata.extend(cause.causation());
        self
    }

    /// `events` with the decision's metadata under their own.
    fn with_metadata(&self, mut events: Vec<NewEvent>) -> Vec<NewEvent> {
        if !self.metadata.is_empty() {
            for event in &mut events {
                let mut metadata = self.metadata.clone();
                metadata.extend(std::mem::take(&mut event.metadata));
                event.metadata = metadata;
            }
        }
        events
    }

    /// The ceiling of the first retry's jittered wait (default [`DEFAULT_BACKOFF`]); it
    /// doubles with each retry, up to 250 ms, and each wait is uniformly random below it.
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// Appends a decision's `events` as the state says: with its version expected, or under
    /// the condition that nothing matching the query changed since it was read.
    async fn append(
        &self,
        state: &State<M>,
        events: Vec<NewEvent>,
    ) -> Result<Appended, crate::store::StoreError> {
        let store = self.krescent.store();
        match &self.query {
            None => {
                let expected = match state.version {
                    0 => ExpectedVersion::NoStream,
                    v => ExpectedVersion::Exact(v),
                };
                store.append(&self.stream_id, expected, events).await
            }
            Some(query) => {
                let condition = AppendCondition::new(query.clone(), state.read_at);
                store
                    .append_if(&self.stream_id, ExpectedVersion::Any, events, &condition)
                    .await
            }
        }
    }

    /// Loads the state, calls `decide` with it, and appends the events it returns; on a
    /// conflict catches up with what the other writer appended and decides again.
    ///
    /// # Errors
    /// [`DecideError::Rejected`] with `decide`'s error (nothing appended),
    /// [`DecideError::Conflict`] once the retries are spent, and the store's, storage's or
    /// handlers' failures.
    pub async fn run<E, F>(self, mut decide: F) -> Result<Decided<M>, DecideError<E>>
    where
        F: FnMut(&M) -> Result<Vec<NewEvent>, E> + Send,
    {
        let stream_id = self.stream_id.as_str();
        let checkpointing = self
            .krescent
            .checkpointing_of::<M>()
            .map_err(DecideError::Setup)?;
        let store = self.krescent.store();
        let query = self
            .query
            .clone()
            .unwrap_or_else(|| Query::stream(stream_id));
        let mut state = match &self.query {
            None => State::<M>::load_stream(
                store,
                checkpointing.as_ref().map(|c| &c.storage),
                stream_id,
            )
            .await
            .map_err(LoadError::widen)?,
            Some(query) => State::<M>::load_query(store, query, stream_id)
                .await
                .map_err(LoadError::widen)?,
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            let events = decide(&state.model).map_err(|error| DecideError::Rejected {
                stream: stream_id.to_owned(),
                error,
            })?;
            let events = self.with_metadata(events);
            if events.is_empty() {
                return Ok(Decided {
                    stream_version: state.version,
                    model: state.model,
                    appended: None,
                    attempts,
                    read: state.read,
                    snapshot: None,
                });
            }
            let outcome = self.append(&state, events.clone()).await;
            match outcome {
                Ok(appended) => {
                    state
                        .apply_appended(stream_id, events, appended)
                        .await
                        .map_err(LoadError::widen)?;
                    let snapshot = match (&checkpointing, &self.query) {
                        (Some(c), None) => snapshot_after(c, stream_id, &state, appended),
                        _ => None,
                    };
                    return Ok(Decided {
                        model: state.model,
                        stream_version: appended.stream_version,
                        appended: Some(appended),
                        attempts,
                        read: state.read,
                        snapshot,
                    });
                }
                Err(source) if source.is_conflict() => {
                    if attempts > self.retries {
                        return Err(DecideError::Conflict {
                            stream: stream_id.to_owned(),
                            attempts,
                            source,
                        });
                    }
                    tokio::time::sleep(retry::delay(self.backoff, attempts - 1)).await;
                    state
                        .catch_up(store, &query, stream_id)
                        .await
                        .map_err(LoadError::widen)?;
                }
                Err(source) => {
                    return Err(DecideError::Store {
                        stream: stream_id.to_owned(),
                        source,
                    })
                }
            }
        }
    }
}
