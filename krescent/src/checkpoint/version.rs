//! Checkpoint versions: which builds of a model may restore a checkpoint.

use std::fmt;

/// The version a model's checkpoints are written with; a checkpoint is restored only by a
/// build whose version is equal.
///
/// It combines the model's `version`, the name and revision of every event type it handles, and
/// the fingerprint of its checkpointed fields (names and types), as `v<version>-<hash>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CheckpointVersion(String);

// `CheckpointVersion::of::<M>()` is in `crate::model`: a model's declaration decides it.

impl CheckpointVersion {
    /// A version from its text, as a storage returns it.
    #[must_use]
    pub fn from_text(text: impl Into<String>) -> Self {
        CheckpointVersion(text.into())
    }

    /// The version as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CheckpointVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
