//! Checkpoint versions: which builds of a model may restore a checkpoint.

use std::fmt;

use crate::event::EventType;
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
        let mut hash = Fnv1a::default();
        hash.write(M::NAME);
        hash.write(M::FINGERPRINT);
        for event in events {
            hash.write(event.name);
            hash.write(&event.revision.to_string());
        }
        CheckpointVersion(format!("v{}-{:016x}", M::VERSION, hash.0))
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

/// FNV-1a, 64 bits: stable across builds and platforms, unlike `std`'s hashers. Each part is
/// followed by a separator so that `("ab", "c")` and `("a", "bc")` differ.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    fn write(&mut self, part: &str) {
        for byte in part.bytes().chain([0xff]) {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}
