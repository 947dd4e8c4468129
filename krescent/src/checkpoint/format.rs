//! How a checkpoint's field values are encoded: JSON, or compact binary `MessagePack`.

/// The encoding of the serde values in a [`CheckpointBucket`](super::CheckpointBucket).
///
/// A storage says which it wants ([`CheckpointStorage::format`](super::CheckpointStorage::format)),
/// and a running model snapshots its state into a bucket of that format. Restoring reads
/// either, whatever the storage is set to now: a stored checkpoint records its format, so
/// checkpoints written before a change of format (or by an older release, all JSON) still
/// restore.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum CheckpointFormat {
    /// JSON text: readable in the file or the table row. The default of the file and memory
    /// storages.
    #[default]
    Json,
    /// [MessagePack](https://msgpack.org) (`rmp-serde`, structs as maps with field names, so a
    /// value restores into any type whose serde shape matches, as with JSON): several times faster
    /// to write and read than JSON for a large state. The default of the Postgres storage.
    MessagePack,
}

impl CheckpointFormat {
    /// The number a storage records for the format: 1 for JSON, 2 for `MessagePack`.
    #[must_use]
    pub fn number(self) -> i16 {
        match self {
            CheckpointFormat::Json => 1,
            CheckpointFormat::MessagePack => 2,
        }
    }

    /// The format recorded as `number`, if this build knows it.
    #[must_use]
    pub fn from_number(number: i16) -> Option<Self> {
        match number {
            1 => Some(CheckpointFormat::Json),
            2 => Some(CheckpointFormat::MessagePack),
            _ => None,
        }
    }
}
