//! Blue/green versions of a [`PostgresProjection`](super::PostgresProjection): each version's
//! tables in a schema of its own, its own checkpoint and lease, and readers on views in the
//! stable schema that a switch repoints in one transaction.
//!
//! The registry is the table `krescent_projection_versions` of the storage's schema (step 8 of
//! the checkpoints table's migrations). Every change of a model's versions (a deploy, a
//! switch, a drop) takes the model's advisory lock first, so they happen one at a time; a
//! commit of a version reads its own row `FOR SHARE`, so a switch or a drop waits for the
//! commits in flight and none commits into a version that was retired.

mod deploy;
mod registry;
mod switch;

use std::fmt;
use std::time::Duration;

use crate::checkpoint::storage::PostgresCheckpointStorage;
use crate::checkpoint::StorageError;
use crate::postgres::DbFailure;
use crate::Position;

pub(super) use deploy::{Deploy, Entered};

/// When a version that is building becomes the one readers see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    /// As soon as it has caught up: its checkpoint at or past the active version's position,
    /// less the allowed lag (checked after each of its commits).
    Automatic,
    /// Only when asked: [`ProjectionVersions::promote`] or `krescent versions promote`.
    Manual,
}

/// How the versions of a blue/green projection are switched and retired
/// ([`PostgresProjection::versioned`](super::PostgresProjection::versioned)).
#[derive(Debug, Clone)]
pub struct Versioning {
    switch: Switch,
    max_lag: u64,
    grace: Duration,
}

impl Versioning {
    /// Switches automatically when the new version has caught up, with no lag allowed and a
    /// grace period of an hour.
    #[must_use]
    pub fn automatic() -> Self {
        Versioning {
            switch: Switch::Automatic,
            max_lag: 0,
            grace: Duration::from_secs(3600),
        }
    }

    /// Switches only when asked, with no lag allowed and a grace period of an hour.
    #[must_use]
    pub fn manual() -> Self {
        Versioning {
            switch: Switch::Manual,
            ..Versioning::automatic()
        }
    }

    /// How many events the new version may be behind the active one when it is switched to
    /// (0: at or past the active version's position).
    #[must_use]
    pub fn max_lag(mut self, events: u64) -> Self {
        self.max_lag = events;
        self
    }

    /// How long the version switched away from keeps following, so that a rollback is one
    /// pointer change; after it, its tables and checkpoint are dropped.
    #[must_use]
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }
}

/// Where a version is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionState {
    /// Replaying beside the active version; readers do not see it.
    Building,
    /// What readers see through the stable names.
    Active,
    /// Switched away from, within its grace period: it keeps following, and a rollback makes
    /// it active again.
    Previous,
    /// Its tables and checkpoint are dropped (or about to be); a build of it refuses to start.
    Retired,
}

impl VersionState {
    /// The state as the registry stores it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Building => "building",
            VersionState::Active => "active",
            VersionState::Previous => "previous",
            VersionState::Retired => "retired",
        }
    }

    fn parse(text: &str) -> Result<Self, DbFailure> {
        Ok(match text {
            "building" => VersionState::Building,
            "active" => VersionState::Active,
            "previous" => VersionState::Previous,
            "retired" => VersionState::Retired,
            other => {
                return Err(DbFailure::Other(format!(
                    "unknown projection version state `{other}`"
                )))
            }
        })
    }
}

impl fmt::Display for VersionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One version of a model, as [`ProjectionVersions::list`] reports it.
#[derive(Debug, Clone)]
pub struct VersionInfo {
    /// The version's id (a hash of the checkpoint version, the revision and the tables'
    /// statements).
    pub version: String,
    /// The checkpoint version of the build that deployed it.
    pub checkpoint_version: String,
    /// The namespace of its checkpoint and lease.
    pub namespace: String,
    /// The schema of its tables.
    pub schema: String,
    /// Its tables (plain names, in `schema`).
    pub tables: Vec<String>,
    /// Its state.
    pub state: VersionState,
    /// The position of its checkpoint; `None` before its first commit (and once dropped).
    pub position: Option<Position>,
    /// How many positions it is behind the active version (0 at or past it); `None` when
    /// either has no checkpoint.
    pub lag: Option<u64>,
}

/// A switch that happened: readers now see `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switched {
    /// The version active before.
    pub from: String,
    /// The version active now.
    pub to: String,
    /// The position of `from`'s checkpoint at the switch.
    pub from_position: Position,
    /// The position of `to`'s checkpoint at the switch.
    pub to_position: Position,
}

/// What an operation on a model's versions failed with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VersionError {
    /// No such version of the model.
    #[error("model `{model}` has no version `{version}`; its versions: {}", if known.is_empty() { "none".to_owned() } else { known.join(", ") })]
    Unknown {
        /// The model.
        model: String,
        /// The version asked for.
        version: String,
        /// The versions it has.
        known: Vec<String>,
    },
    /// The active version cannot be dropped (switch to another one first).
    #[error("version `{version}` of `{model}` is the active one: readers see it; switch to another version first")]
    Active {
        /// The model.
        model: String,
        /// The version.
        version: String,
    },
    /// A rollback needs a previous version within its grace period.
    #[error("model `{model}` has no previous version to roll back to")]
    NoPrevious {
        /// The model.
        model: String,
    },
    /// The model has no active version (it never ran versioned).
    #[error("model `{model}` has no active version")]
    NoActive {
        /// The model.
        model: String,
    },
    /// The version cannot be switched to in its state (retired, or already active).
    #[error("version `{version}` of `{model}` is {state}: it cannot be switched to")]
    NotSwitchable {
        /// The model.
        model: String,
        /// The version.
        version: String,
        /// Its state.
        state: VersionState,
    },
    /// The version has not caught up with the active one.
    #[error("version `{version}` of `{model}` is at position {position}, behind the active version's {active} by more than {max_lag}")]
    Behind {
        /// The model.
        model: String,
        /// The version.
        version: String,
        /// Its checkpoint's position (0 without one).
        position: Position,
        /// The active version's.
        active: Position,
        /// The lag allowed.
        max_lag: u64,
    },
    /// The database failed (nothing changed).
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The versions of the blue/green projections checkpointing in a storage: listed, promoted,
/// rolled back and dropped, each in one transaction (what `krescent versions` does).
#[derive(Debug, Clone)]
pub struct ProjectionVersions {
    storage: PostgresCheckpointStorage,
}
