//! Checkpoint versions: which builds of a model may restore a checkpoint.

use std::fmt;

use crate::event::EventType;
use crate::hash::stable_hash;
use crate::model::EventModel;

/// The version a model's checkpoints are written with; a checkpoint is restored only by a
/// build whose version is equal.
///
/// It combines the model's `version`, the name and revision of every event type it handles, and
/// the fingerprint of its checkpointed fields (names and types), as `v<version>-<hash>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CheckpointVersion(String);

impl CheckpointVersion {
    /// The version of `M`'s checkpoints.
    #[must_use]
    pub fn of<M: EventModel>() -> Self {
        let mut events: Vec<EventType> = M::EVENTS.to_vec();
        events.sort_unstable();
        let revisions: Vec<String> = events.iter().map(|e| e.revision.to_string()).collect();
        let parts = [M::NAME, M::FINGERPRINT].into_iter().chain(
            events
                .iter()
                .zip(&revisions)
                .flat_map(|(event, revision)| [event.name, revision.as_str()]),
        );
        CheckpointVersion(format!("v{}-{:016x}", M::VERSION, stable_hash(parts)))
    }

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
