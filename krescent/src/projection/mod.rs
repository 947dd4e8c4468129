//! Projections: model extensions that keep a model's state somewhere, checkpointed with it.
//!
//! - [`MemoryProjection`]: a map in memory, checkpointed by value.
//! - `PostgresProjection` (feature `postgres`): tables in Postgres, written in a transaction
//!   that commits together with the checkpoint, so that a crash can never separate the rows
//!   from the position they reflect; checkpointed by reference (its tables' shape and a
//!   revision), which is validated on restore. With `versioned`, each version of it has
//!   tables of its own, built beside the version readers see and switched to atomically
//!   (`ProjectionVersions`).
//!
//! Both are model fields marked `#[checkpoint(support)]`.

mod memory;
#[cfg(feature = "postgres")]
mod postgres;

pub use memory::MemoryProjection;
#[cfg(feature = "postgres")]
pub use postgres::{
    PostgresProjection, ProjectionError, ProjectionVersions, Switch, Switched, VersionError,
    VersionInfo, VersionState, Versioning,
};
