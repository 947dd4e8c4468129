//! Errors of event stores.

use std::path::PathBuf;

use crate::Position;

/// An event store that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The stream's version is not the expected one; nothing was written.
    #[error("version conflict on stream `{stream}`: expected {expected}, found version {actual}")]
    Conflict {
        /// The stream.
        stream: String,
        /// What the writer expected, as text (`any`, `no stream`, or a version).
        expected: String,
        /// The stream's version (0 for none).
        actual: u64,
    },
    /// An event matching the append's condition was appended after the position the decider
    /// read at; nothing was written.
    #[error("append to stream `{stream}` refused: an event matching {query} was appended at position {found}, after position {read_at} where the decision read")]
    QueryConflict {
        /// The stream appended to.
        stream: String,
        /// The condition's query, as text.
        query: String,
        /// Where the decider had read up to.
        read_at: Position,
        /// The latest matching event's position.
        found: Position,
    },
    /// The store does not implement this operation (a store of your own that kept the trait's
    /// default); nothing was written.
    #[error("this event store does not support {operation}")]
    Unsupported {
        /// What was asked of it.
        operation: &'static str,
    },
    /// The file system failed.
    #[error("event log `{}`: {source}", path.display())]
    Io {
        /// The log file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The log holds a damaged record that is not a torn tail.
    #[error("corrupt event log `{}` at byte {offset}: {reason}", path.display())]
    Corrupt {
        /// The log file.
        path: PathBuf,
        /// Where the damaged record starts.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A store directory of another format than this build reads; nothing was changed.
    #[error("event log `{}` has format {found}; this build reads formats 1 to {supported}", path.display())]
    UnsupportedFormat {
        /// The segment file.
        path: PathBuf,
        /// The format it says it has.
        found: u32,
        /// The format this build writes, the newest it reads (it reads every older one).
        supported: u32,
    },
    /// A path that does not hold an event store (and is not made one).
    #[error("`{}` is not a krescent event store: {reason}", path.display())]
    NotAStore {
        /// The path.
        path: PathBuf,
        /// What is there instead.
        reason: String,
    },
    /// Another process has the store open.
    #[error("event store `{}` is open in another process", path.display())]
    Locked {
        /// The store's directory.
        path: PathBuf,
    },
    /// The store cannot hold these events as they are; nothing was written.
    #[error("append to stream `{stream}` refused: {reason}")]
    Rejected {
        /// The stream appended to.
        stream: String,
        /// What the store cannot hold.
        reason: String,
    },
    /// An event of the append has an id that is already stored; nothing was written.
    ///
    /// An append that failed with a transient error (the connection was lost) may still have
    /// committed; retried with the same events, it ends here when it had. Only the PostgreSQL
    /// store checks ids (its `event_id` column is unique); the memory and file stores do not.
    #[error("append to stream `{stream}`: an event with id {event_id} is already stored, nothing was written (an earlier attempt of this append may have committed)")]
    DuplicateEvent {
        /// The stream appended to.
        stream: String,
        /// The id that is taken.
        event_id: uuid::Uuid,
    },
    /// An event could not be encoded.
    #[error("cannot encode event at position {position}: {reason}")]
    Encode {
        /// The position it would have had.
        position: Position,
        /// What failed.
        reason: String,
    },
    /// A name (schema, table) that is not a safe identifier.
    #[error("invalid {what} name `{name}`: {reason}")]
    InvalidName {
        /// Which name.
        what: &'static str,
        /// The name.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The database failed; `transient` when retrying may help (a lost connection).
    #[error("event database: {source}")]
    Database {
        /// What the driver said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
        /// Whether the failure is a lost or refused connection.
        transient: bool,
    },
}

impl StoreError {
    /// Whether the append was refused because another writer got there first: a
    /// [`Conflict`](Self::Conflict) on the stream's version or a
    /// [`QueryConflict`](Self::QueryConflict) on an append condition. Reading again and
    /// deciding again may succeed.
    #[must_use]
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            StoreError::Conflict { .. } | StoreError::QueryConflict { .. }
        )
    }

    /// Whether retrying may succeed: a lost or refused connection.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Database {
                transient: true,
                ..
            }
        )
    }

    // cycle: `StoreError` and `ExpectedVersion` (`mod.rs`) are one contract, the store's; the
    // conflict it reports names the version the writer expected.
    pub(crate) fn conflict(stream: &str, expected: super::ExpectedVersion, actual: u64) -> Self {
        let expected = match expected {
            super::ExpectedVersion::Any => "any version".to_owned(),
            super::ExpectedVersion::NoStream => "no stream".to_owned(),
            super::ExpectedVersion::Exact(v) => format!("version {v}"),
        };
        StoreError::Conflict {
            stream: stream.to_owned(),
            expected,
            actual,
        }
    }
}
