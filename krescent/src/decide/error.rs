//! The errors of a decision.

use crate::checkpoint::StorageError;
use crate::model::HandlerError;
use crate::store::StoreError;
use crate::Position;

/// Why a decision did not complete: its own error, a conflict that outlasted the retries, or a
/// failure of the store, the storage or a handler.
///
/// Only [`Handler`](Self::Handler) with `appended: true` follows an append that happened;
/// every other variant means that the decision's events were not appended.
#[derive(Debug, thiserror::Error)]
pub enum DecideError<E> {
    /// The decision returned an error; nothing was appended.
    #[error("the decision on stream `{stream}` was rejected: {error}")]
    Rejected {
        /// The stream decided on.
        stream: String,
        /// What the decision returned.
        error: E,
    },
    /// Other writers changed the stream (or the query's events) on every attempt; nothing was
    /// appended.
    #[error("the decision on stream `{stream}` conflicted {attempts} times; giving up: {source}")]
    Conflict {
        /// The stream decided on.
        stream: String,
        /// How many times it was decided and refused.
        attempts: u32,
        /// The last refusal: [`StoreError::Conflict`] or [`StoreError::QueryConflict`].
        #[source]
        source: StoreError,
    },
    /// The store failed while loading or appending; whether the append happened is unknown
    /// only if the failure is a lost connection during the commit (as with any database).
    #[error("the decision on stream `{stream}` failed in the event store: {source}")]
    Store {
        /// The stream decided on.
        stream: String,
        /// What the store said.
        #[source]
        source: StoreError,
    },
    /// The snapshot storage failed while loading the stream's snapshot (a snapshot that cannot
    /// be used is ignored instead, and the stream replayed).
    #[error("cannot load the snapshot `{namespace}`: {source}")]
    Storage {
        /// The snapshot's namespace.
        namespace: String,
        /// What the storage said.
        #[source]
        source: StorageError,
    },
    /// A handler failed on an event of the stream: a payload that does not decode, or the
    /// handler's own error. With `appended`, on one of the events this decision appended (they
    /// are in the store; the returned state would not reflect them).
    #[error("a handler failed on stream `{stream}` at position {position}: {source}")]
    Handler {
        /// The stream decided on.
        stream: String,
        /// The event's position.
        position: Position,
        /// Whether the event is one this decision had just appended.
        appended: bool,
        /// What failed.
        #[source]
        source: HandlerError,
    },
    /// The model cannot be loaded as configured (an unregistered storage, two event types with
    /// one name); nothing was read.
    #[error(transparent)]
    Setup(#[from] crate::Error),
}

impl<E> DecideError<E> {
    /// The decision's own error, if that is what this is.
    pub fn rejected(&self) -> Option<&E> {
        match self {
            DecideError::Rejected { error, .. } => Some(error),
            _ => None,
        }
    }

    /// Whether this is a conflict that outlasted the retries.
    pub fn is_conflict(&self) -> bool {
        matches!(self, DecideError::Conflict { .. })
    }
}

/// Why a write model could not be loaded: [`DecideError`] without a decision.
pub type LoadError = DecideError<std::convert::Infallible>;

impl LoadError {
    /// The same failure, as the error of a decision.
    pub(crate) fn widen<E>(self) -> DecideError<E> {
        match self {
            DecideError::Rejected { error, .. } => match error {},
            DecideError::Conflict {
                stream,
                attempts,
                source,
            } => DecideError::Conflict {
                stream,
                attempts,
                source,
            },
            DecideError::Store { stream, source } => DecideError::Store { stream, source },
            DecideError::Storage { namespace, source } => {
                DecideError::Storage { namespace, source }
            }
            DecideError::Handler {
                stream,
                position,
                appended,
                source,
            } => DecideError::Handler {
                stream,
                position,
                appended,
                source,
            },
            DecideError::Setup(e) => DecideError::Setup(e),
        }
    }
}
