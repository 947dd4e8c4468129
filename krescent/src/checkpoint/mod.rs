//! Checkpointing: buckets, the support trait, strategies, stored checkpoints and storages, and
//! incremental checkpoints of tracked collections ([`incremental`]).

mod bucket;
mod budget;
mod checksum;
mod config;
mod error;
pub(crate) mod field;
mod format;
pub mod incremental;
pub mod storage;
mod stored;
mod strategy;
mod support;
mod transaction;
mod version;
pub(crate) mod writer;

pub use bucket::{BucketValue, CheckpointBucket};
pub(crate) use budget::{SnapshotBudget, TaskWork};
pub use config::{CheckpointConfig, OnInvalid};
pub use error::CheckpointError;
pub use format::CheckpointFormat;
pub use incremental::{Link, Piece, TrackedMap, TrackedSet};
pub use storage::{
    CheckpointStorage, FileCheckpointStorage, InMemoryCheckpointStorage, PieceInfo, StorageError,
};
#[cfg(feature = "object-store")]
pub use storage::{ObjectStoreCheckpointStorage, RetainedCheckpoint};
#[cfg(feature = "postgres")]
pub use storage::{PostgresCheckpointStorage, PostgresPool};
pub(crate) use stored::{from_micros, to_micros, truncate_to_micros};
pub use stored::{Integrity, StoredCheckpoint};
pub(crate) use strategy::StrategyState;
pub use strategy::{CheckpointTrigger, Strategy, StrategyError};
pub use support::CheckpointSupport;
pub use transaction::{CheckpointTransaction, FlushError};
pub use version::CheckpointVersion;
