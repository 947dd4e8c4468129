//! A model's checkpoint configuration, as the derive writes it.

use super::Strategy;

/// How a model checkpoints: generated from `#[checkpoint(strategy = "...", storage = "...")]`;
/// the strategy and the storage may be overridden at start-up with
/// [`Krescent::configure`](crate::Krescent::configure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointConfig {
    /// When checkpoints are taken.
    pub strategy: Strategy,
    /// The name of the storage, resolved when the model starts.
    pub storage: &'static str,
    /// What to do with a checkpoint that cannot be used.
    pub on_invalid: OnInvalid,
}

/// What a model does when its stored checkpoint cannot be used: written by an older or newer
/// build (version mismatch), corrupt, or failing validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnInvalid {
    /// Delete it and replay the whole stream (the default); the rebuild's checkpoints take its place.
    #[default]
    Rebuild,
    /// Stop with [`Error::InvalidCheckpoint`](crate::Error::InvalidCheckpoint) before processing any event.
    Fail,
}
