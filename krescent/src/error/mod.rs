//! The errors of running a model, from every layer below, and which of them a restart may
//! cure.

mod transient;

use crate::checkpoint::{CheckpointError, StorageError, StrategyError};
use crate::deadletter::ErrorPolicyError;
use crate::model::HandlerError;
use crate::store::StoreError;
use crate::Position;

/// Why a model could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model names a checkpoint storage that was never registered; no event was processed.
    #[error("model `{model}` uses checkpoint storage `{name}`, which is not registered (registered: {})", registered.join(", "))]
    UnknownStorage {
        /// The model.
        model: &'static str,
        /// The storage name from its `#[checkpoint(storage = "...")]` or its override.
        name: String,
        /// The names that are registered.
        registered: Vec<String>,
    },
    /// A strategy given to [`Configure::strategy`](crate::Configure::strategy) does not parse.
    #[error("invalid checkpoint strategy `{}` for model `{model}`: {source}", source.text())]
    InvalidStrategy {
        /// The model.
        model: &'static str,
        /// What is wrong with the strategy.
        #[source]
        source: StrategyError,
    },
    /// An error policy given to [`Configure::on_error`](crate::Configure::on_error) (or a
    /// hand-written [`EventModel::ON_ERROR`](crate::EventModel::ON_ERROR)) does not parse.
    #[error("invalid error policy `{}` for model `{model}`: {source}", source.text())]
    InvalidErrorPolicy {
        /// The model.
        model: &'static str,
        /// What is wrong with the policy.
        #[source]
        source: ErrorPolicyError,
    },
    /// A model whose projection commits its checkpoints itself is registered with a storage
    /// somewhere else, where it would never find them; it does not start.
    #[error("model `{model}` commits its checkpoints into {expected}, but its storage `{storage}` keeps them {}; register the projection's storage under `{storage}`", found.as_deref().map_or_else(|| "elsewhere".to_owned(), |f| format!("in {f}")))]
    StorageMismatch {
        /// The model.
        model: &'static str,
        /// The name of the storage it is registered with.
        storage: String,
        /// Where its projection commits checkpoints.
        expected: String,
        /// Where that storage keeps them, if it says.
        found: Option<String>,
    },
    /// The model handles two event types with the same recorded name; it does not start.
    #[error("model `{model}` handles two event types named `{name}`; give each its own `#[event(name = \"...\")]`")]
    DuplicateEventName {
        /// The model.
        model: &'static str,
        /// The name both event types have.
        name: &'static str,
    },
    /// A checkpoint override for a model that does not checkpoint.
    #[error("model `{model}` has no `#[checkpoint(strategy = ..., storage = ...)]` attribute, so it has no checkpointing to configure")]
    NotCheckpointed {
        /// The model.
        model: &'static str,
    },
    /// The stored checkpoint cannot be used and the model asked to fail rather than rebuild.
    #[error("checkpoint of `{namespace}` cannot be used: {reason}")]
    InvalidCheckpoint {
        /// The checkpoint's namespace.
        namespace: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A handler failed; the event and everything after it are delivered again on the next run.
    #[error("model `{model}` failed on `{event_type}` event at position {position}")]
    Handler {
        /// The model.
        model: &'static str,
        /// The event's type name.
        event_type: String,
        /// The event's position.
        position: Position,
        /// What failed.
        #[source]
        source: HandlerError,
    },
    /// The model's state could not be written into a checkpoint bucket.
    #[error("cannot checkpoint `{namespace}`")]
    Checkpoint {
        /// The checkpoint's namespace.
        namespace: String,
        /// What failed.
        #[source]
        source: CheckpointError,
    },
    /// The checkpoint storage failed.
    #[error("checkpoint storage of `{namespace}` failed")]
    Storage {
        /// The checkpoint's namespace.
        namespace: String,
        /// What failed.
        #[source]
        source: StorageError,
    },
    /// The event store failed.
    #[error("event store failed while running `{model}`")]
    Store {
        /// The model.
        model: &'static str,
        /// What failed.
        #[source]
        source: StoreError,
    },
    /// A streaming model's task ended before it reached a position
    /// ([`Running::reached`](crate::Running::reached)); [`Running::shutdown`](crate::Running::shutdown) returns why.
    #[error("model `{model}` stopped at position {position} before it reached {wanted}; `shutdown` returns why")]
    Stopped {
        /// The model.
        model: &'static str,
        /// The last position it processed.
        position: Position,
        /// The position it was waited for to reach.
        wanted: Position,
    },
    /// The model's lease was taken over by another instance (it was paused or cut off past its
    /// lease): its last commit was rejected and rolled back, or its heartbeat found the lease
    /// taken (or it failed once the lease was taken), and the model stopped. Run it again to
    /// make it a standby; see [`crate::fleet`].
    #[error("model `{model}` was fenced: its lease of `{namespace}` (epoch {epoch}) was taken over by another instance; its uncommitted work was rolled back")]
    Fenced {
        /// The model.
        model: &'static str,
        /// The lease's namespace.
        namespace: String,
        /// The epoch it held.
        epoch: u64,
    },
    /// A model split by `#[model(segments = N)]` was run whole, or a model was run as a
    /// segment it does not have ([`Krescent::for_segment`](crate::Krescent::for_segment)).
    #[error("model `{model}` is split into {segments} segment(s); {}", asked.map_or_else(|| "run it with `Krescent::stream_segments`, or one segment with `Krescent::for_segment`".to_owned(), |s| format!("segment {s} is not one of them")))]
    Segmented {
        /// The model.
        model: &'static str,
        /// Its segment count.
        segments: u32,
        /// The segment it was run as; `None`: it was run whole.
        asked: Option<crate::fleet::Segment>,
    },
    /// The model's task ended abnormally (it panicked or was aborted).
    #[error("model `{model}` stopped abnormally: {reason}")]
    Aborted {
        /// The model.
        model: &'static str,
        /// What happened.
        reason: String,
    },
}

impl Error {
    /// A storage failure of the checkpoints of `namespace`.
    pub(crate) fn storage(namespace: &str, source: StorageError) -> Self {
        Error::Storage {
            namespace: namespace.to_owned(),
            source,
        }
    }

    /// Whether restarting the model from its last checkpoint may succeed: the event store or
    /// the checkpoint storage lost its database connection, a projection's write failed
    /// because the connection went away, or a handler returned an error the application
    /// marked [`Transient`](crate::Transient). Everything else (a handler bug, a payload that
    /// does not decode, an unusable checkpoint with `on_invalid = "fail"`, a configuration
    /// mistake) is permanent: restarting would fail the same way.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Handler { source, .. } => source.is_transient(),
            Error::Storage { source, .. } => source.is_transient(),
            Error::Store { source, .. } => source.is_transient(),
            Error::UnknownStorage { .. }
            | Error::InvalidStrategy { .. }
            | Error::InvalidErrorPolicy { .. }
            | Error::StorageMismatch { .. }
            | Error::DuplicateEventName { .. }
            | Error::NotCheckpointed { .. }
            | Error::InvalidCheckpoint { .. }
            | Error::Checkpoint { .. }
            | Error::Stopped { .. }
            | Error::Fenced { .. }
            | Error::Segmented { .. }
            | Error::Aborted { .. } => false,
        }
    }
}

/// An error and its causes, on one line.
pub(crate) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}
