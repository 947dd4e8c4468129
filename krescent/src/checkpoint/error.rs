//! Errors about the contents of a checkpoint bucket.

/// A checkpoint bucket that cannot be written or read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// A value could not be serialized.
    #[error("cannot serialize checkpoint key `{key}`: {reason}")]
    Serialize {
        /// The bucket key.
        key: String,
        /// What serde said.
        reason: String,
    },
    /// An expected key is absent.
    #[error("checkpoint key `{key}` is missing")]
    Missing {
        /// The bucket key.
        key: String,
    },
    /// A key holds a value of the wrong kind or one that does not decode.
    #[error("checkpoint key `{key}` is invalid: {reason}")]
    Invalid {
        /// The bucket key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Data the checkpoint refers to (a table, a file) is gone or changed.
    #[error("checkpoint reference `{reference}` is stale: {reason}")]
    StaleReference {
        /// What the checkpoint refers to.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
}
