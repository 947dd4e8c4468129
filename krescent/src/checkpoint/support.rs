//! The trait by which a model or an extension writes itself into a checkpoint.

use super::{CheckpointBucket, CheckpointError, CheckpointTransaction};

/// Writes a model's (or an extension's) state into a [`CheckpointBucket`] and reads it back.
///
/// `#[derive(EventModel)]` generates it from the `#[checkpoint]` fields; a field marked
/// `#[checkpoint(support)]` delegates to its own impl under its own key. Hand-written impls are
/// welcome; they must keep one rule: `restore_checkpoint` either restores everything or returns
/// an error having changed nothing, so that a failed restore can fall back to a rebuild.
pub trait CheckpointSupport {
    /// Writes the state into `bucket`.
    ///
    /// # Errors
    /// When a value cannot be serialized.
    fn create_checkpoint(&self, bucket: &mut CheckpointBucket) -> Result<(), CheckpointError>;

    /// Restores the state from `bucket`, all or nothing.
    ///
    /// # Errors
    /// When a value is missing or does not decode; `self` is then unchanged.
    fn restore_checkpoint(&mut self, bucket: &CheckpointBucket) -> Result<(), CheckpointError>;

    /// Whether `bucket` holds what [`restore_checkpoint`](Self::restore_checkpoint) needs: every
    /// expected key, each of the right kind, and any referenced outside data still in place.
    fn validate_checkpoint(&self, bucket: &CheckpointBucket) -> bool;

    /// The database transaction this state's checkpoints commit in, if it writes to a database
    /// (see [`CheckpointTransaction`]). The derive forwards to the `#[checkpoint(support)]`
    /// fields; other impls have none.
    fn transaction(&mut self) -> Option<&mut dyn CheckpointTransaction> {
        None
    }

    /// Whether some of the state is `#[checkpoint(incremental)]`: it can write deltas (a
    /// bucket made with [`CheckpointBucket::delta_with_format`]) rather than the whole state.
    /// By default it cannot.
    fn tracks_changes(&self) -> bool {
        false
    }

    /// Forgets the changes the incremental fields recorded: a checkpoint holds them now.
    /// Called after every checkpoint is taken; by default nothing.
    fn checkpoint_taken(&mut self) {}
}
