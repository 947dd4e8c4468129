//! What a command can fail with, and the exit code each failure means.

use std::path::PathBuf;

use krescent::checkpoint::StorageError;
use krescent::store::StoreError;

/// A failed command: one line on stderr, exit code [`exit_code`](Self::exit_code).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Neither a data directory nor a database was named.
    #[error("no store named: pass `--data-dir DIR` or `--database-url URL` (or set DATABASE_URL)")]
    NoStore,
    /// The directory is not one a krescent program wrote.
    #[error("`{}` is not a krescent data directory: {reason}", path.display())]
    NotADataDir {
        /// The directory.
        path: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The checkpoint storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// No checkpoint has this namespace.
    #[error("no checkpoint of `{namespace}`; {known}")]
    UnknownNamespace {
        /// The namespace asked for.
        namespace: String,
        /// The namespaces there are, as a phrase.
        known: String,
    },
    /// The command needs PostgreSQL.
    #[error("{what} needs PostgreSQL (`--database-url URL`): {why}")]
    NeedsPostgres {
        /// The command or flag.
        what: &'static str,
        /// Why the file store cannot.
        why: &'static str,
    },
    /// The namespace has no parked events.
    #[error("no parked events of `{namespace}`; {known}")]
    NothingParked {
        /// The namespace asked for.
        namespace: String,
        /// The namespaces that have some, as a phrase.
        known: String,
    },
    /// No event of the namespace is parked at the position.
    #[error("no parked event of `{namespace}` at position {position}; `krescent parked list {namespace}` shows those there are; nothing was changed")]
    NotParked {
        /// The namespace.
        namespace: String,
        /// The position asked for.
        position: krescent::Position,
    },
    /// The checkpoint refers to no projection tables.
    #[error("the checkpoint of `{0}` names no `PostgresProjection` tables; `krescent checkpoints delete {0}` deletes a checkpoint alone")]
    NoProjection(String),
    /// The namespace is one segment of a split model: its segments share one set of
    /// `PostgresProjection` tables, so one segment cannot be deleted alone.
    #[error("`{namespace}` is segment {segment} of the split model `{model}`, whose segments share their tables: deleting one segment alone would drop the other segments' rows, or leave its own; `krescent models delete {model}` deletes the whole model; nothing was deleted")]
    SegmentOfSplitModel {
        /// The namespace asked for.
        namespace: String,
        /// The model it is a segment of.
        model: String,
        /// The segment, `index/count`.
        segment: String,
    },
    /// A running instance holds the model's lease: deleting behind its back would be undone
    /// or worse.
    #[error("model `{namespace}` is running: {holder} holds its lease (epoch {epoch}); stop it first, or pass `--force`")]
    Leased {
        /// The namespace.
        namespace: String,
        /// The lease's holder.
        holder: String,
        /// The lease's epoch.
        epoch: u64,
    },
    /// A change of a model's versions was refused (an unknown version, the active one
    /// dropped, a version behind).
    #[error(transparent)]
    Version(#[from] krescent::projection::VersionError),
    /// The model has no blue/green versions.
    #[error("model `{0}` has no projection versions (it never ran with `PostgresProjection::versioned`)")]
    NoVersions(String),
    /// The operator did not confirm a destructive step.
    #[error("not confirmed (no answer, or stdin is not a terminal); nothing was changed; pass `--yes` to skip the question")]
    NotConfirmed,
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
    /// The async runtime did not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl CliError {
    /// `--follow` on a data directory.
    pub fn follow_needs_postgres() -> Self {
        CliError::NeedsPostgres {
            what: "`--follow`",
            why: "the file store sees the events it held when it was opened",
        }
    }

    /// `models delete` on a data directory.
    pub fn models_delete_needs_postgres() -> Self {
        CliError::NeedsPostgres {
            what: "`models delete`",
            why: "projections keep their tables in PostgreSQL",
        }
    }

    /// `versions` on a data directory.
    pub fn versions_need_postgres() -> Self {
        CliError::NeedsPostgres {
            what: "`versions`",
            why: "projection versions are PostgreSQL schemas",
        }
    }

    /// `models delete` with `--checkpoints`.
    pub fn models_delete_with_a_bucket() -> Self {
        CliError::NeedsPostgres {
            what: "`models delete` (without `--checkpoints`)",
            why: "a projection's checkpoint is in its PostgreSQL table, never in a bucket",
        }
    }

    /// 2 for bad usage, 1 for every other failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::NoStore | CliError::NeedsPostgres { .. } => 2,
            _ => 1,
        }
    }

    /// Whether the output's reader went away.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}
