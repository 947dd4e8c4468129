//! Checkpoint storages: where checkpoints are kept.

mod file;
mod memory;
mod name;
#[cfg(feature = "object-store")]
mod object;
#[cfg(feature = "postgres")]
mod postgres;

use std::path::PathBuf;

pub use file::FileCheckpointStorage;
pub use memory::InMemoryCheckpointStorage;
#[cfg(feature = "object-store")]
pub use object::{object_store, ObjectStoreCheckpointStorage, RetainedCheckpoint, MAX_KEY_BYTES};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresCheckpointStorage, PostgresPool};

// cycle: `StoredCheckpoint` (`../stored.rs`) encodes and decodes with `StorageError`; both are
// the checkpoint contract, of which this file is the storage's part.
use super::{CheckpointFormat, Integrity, StoredCheckpoint};
use crate::deadletter::ParkedEvent;
use crate::Position;

/// Keeps one checkpoint per namespace.
///
/// Storages are registered under a name with [`Krescent::with_storage`](crate::Krescent::with_storage)
/// and found by the name in a model's `#[checkpoint(storage = "...")]`. Implement it for your
/// own backend; the contract, which the tests check for every storage of this crate:
/// `store` replaces the namespace's checkpoint unless the stored one has the same version and a
/// later position (a position never moves backwards except through `delete`), and `load` returns
/// exactly what was stored (data, position, and time to the microsecond).
///
/// When a model finds its checkpoint unusable (corrupt, of another version, failing to
/// restore) and rebuilds, the runner first `delete`s it, so that it never holds back the
/// rebuild's checkpoints; `restore_only` leaves it in place.
///
/// Every storage of this crate records the checkpoint's
/// [`checksum`](StoredCheckpoint::checksum) with it and checks it in `load`: a checkpoint whose
/// stored bytes changed (a flipped bit, a bad restore of a backup) is
/// [`StorageError::Corrupt`], never a different state; the model then rebuilds or fails, as its
/// `on_invalid` says. A storage of your own gets the same by keeping
/// [`StoredCheckpoint::encode`]'s bytes and reading them with [`StoredCheckpoint::decode`].
///
/// A running model starts each `store` on its own task and moves it into a task of its own
/// only once it has to wait, so a `store` that completes at once (as the in-memory one does)
/// costs no task switch; keep the work before its first wait small (no blocking I/O there).
///
/// Storages are kept as `Arc<dyn CheckpointStorage>`, which a trait with native `async fn`s
/// does not allow; implement it with the `async-trait` attribute, re-exported as
/// [`krescent::async_trait`](crate::async_trait) (no dependency of your own needed):
///
/// ```
/// use krescent::checkpoint::{CheckpointStorage, StorageError, StoredCheckpoint};
///
/// /// Keeps nothing: every start replays the whole stream.
/// #[derive(Debug)]
/// struct Forgetful;
///
/// #[krescent::async_trait]
/// impl CheckpointStorage for Forgetful {
///     async fn load(&self, _: &str) -> Result<Option<StoredCheckpoint>, StorageError> {
///         Ok(None)
///     }
///     async fn store(&self, _: &StoredCheckpoint) -> Result<(), StorageError> {
///         Ok(())
///     }
///     async fn delete(&self, _: &str) -> Result<bool, StorageError> {
///         Ok(false)
///     }
///     async fn list(&self) -> Result<Vec<String>, StorageError> {
///         Ok(Vec::new())
///     }
/// }
///
/// let krescent = krescent::Krescent::new(krescent::store::InMemoryEventStore::new())
///     .with_storage("forgetful", Forgetful);
/// ```
#[async_trait::async_trait]
pub trait CheckpointStorage: Send + Sync + std::fmt::Debug {
    /// The checkpoint of `namespace`, if there is one.
    async fn load(&self, namespace: &str) -> Result<Option<StoredCheckpoint>, StorageError>;

    /// [`load`](Self::load), saying how the checkpoint's integrity was checked (for tools:
    /// `krescent checkpoints show` prints it). By default `load`'s checkpoint, reported as
    /// [`Integrity::Unchecked`]; the storages of this crate report what they checked.
    async fn load_checked(
        &self,
        namespace: &str,
    ) -> Result<Option<(StoredCheckpoint, Integrity)>, StorageError> {
        Ok(self
            .load(namespace)
            .await?
            .map(|checkpoint| (checkpoint, Integrity::Unchecked)))
    }

    /// The format a running model puts its checkpoints' values in for this storage; by default
    /// [`CheckpointFormat::Json`]. A storage must still load checkpoints of either format.
    fn format(&self) -> CheckpointFormat {
        CheckpointFormat::Json
    }

    /// Stores `checkpoint` under its namespace.
    async fn store(&self, checkpoint: &StoredCheckpoint) -> Result<(), StorageError>;

    /// Deletes the checkpoint of `namespace`; whether there was one.
    async fn delete(&self, namespace: &str) -> Result<bool, StorageError>;

    /// The namespaces that have a checkpoint, sorted.
    async fn list(&self) -> Result<Vec<String>, StorageError>;

    /// Where the checkpoints are, for telling storages apart: two storages with the same
    /// location keep the same checkpoints. `None` (the default) when it cannot be said.
    /// A model whose projection commits its checkpoints itself (a
    /// [`CheckpointTransaction`](crate::checkpoint::CheckpointTransaction)) starts only with a
    /// storage at the location it commits to.
    fn location(&self) -> Option<String> {
        None
    }

    /// Whether this storage keeps deltas ([`crate::checkpoint::incremental`]): a `store` of a
    /// [`Piece::Delta`](crate::checkpoint::Piece::Delta) appends it to the stored chain
    /// atomically, or fails when it does not follow the chain's last piece
    /// ([`StorageError::Chain`]; PostgreSQL: a [`StorageError::Database`] naming the delta)
    /// and stores nothing, and `load` returns the chain folded into one checkpoint, or
    /// [`StorageError::Corrupt`] when any piece is missing or damaged. `false` (the default, and
    /// the object store's): running models write whole checkpoints here, incremental fields
    /// included.
    fn keeps_deltas(&self) -> bool {
        false
    }

    /// The pieces of the checkpoint of `namespace` as stored, base first, each with the size
    /// of its encoding in bytes, for tools (`krescent checkpoints show`); by default none known.
    async fn pieces(&self, namespace: &str) -> Result<Vec<PieceInfo>, StorageError> {
        let _ = namespace;
        Ok(Vec::new())
    }

    /// The leases of the models checkpointing here, when this storage keeps them (PostgreSQL);
    /// `None`, the default: models run without leases. Used by the runtime, not meant to be
    /// called or implemented by applications.
    #[cfg(feature = "postgres")]
    #[doc(hidden)]
    fn leases(&self) -> Option<crate::fleet::Leases> {
        None
    }

    /// This storage, its writes checked against `fence`; `None` (the default) when it cannot
    /// check one. Used by the runtime, not meant to be called or implemented by applications.
    #[doc(hidden)]
    fn fenced(&self, fence: &crate::fleet::Fence) -> Option<std::sync::Arc<dyn CheckpointStorage>> {
        let _ = fence;
        None
    }

    /// Keeps `parked`, the events models parked ([`crate::deadletter`]), each under its
    /// namespace and position, replacing one kept at the same place. The default refuses (a
    /// storage of your own keeps no parked events unless it says how): a model whose error
    /// policy parks then stops with this error when it would park.
    async fn park(&self, parked: &[ParkedEvent]) -> Result<(), StorageError> {
        if parked.is_empty() {
            return Ok(());
        }
        Err(StorageError::Database(
            format!("{self:?} keeps no parked events").into(),
        ))
    }

    /// The events parked under `namespace`, in position order; by default none.
    async fn parked(&self, namespace: &str) -> Result<Vec<ParkedEvent>, StorageError> {
        let _ = namespace;
        Ok(Vec::new())
    }

    /// Removes the parked events of `namespace` at `positions`; how many there were.
    async fn unpark(&self, namespace: &str, positions: &[Position]) -> Result<u64, StorageError> {
        let _ = (namespace, positions);
        Ok(0)
    }

    /// The namespaces that have parked events, sorted; by default none.
    async fn parked_namespaces(&self) -> Result<Vec<String>, StorageError> {
        Ok(Vec::new())
    }

    /// Deletes every checkpoint.
    async fn clear(&self) -> Result<(), StorageError> {
        for namespace in self.list().await? {
            self.delete(&namespace).await?;
        }
        Ok(())
    }
}

/// The checkpoint of what [`CheckpointStorage::load_checked`] loaded, for the storages whose
/// `load` is theirs without the report.
pub(crate) fn checkpoint_only(
    loaded: Option<(StoredCheckpoint, Integrity)>,
) -> Option<StoredCheckpoint> {
    loaded.map(|(checkpoint, _)| checkpoint)
}

/// Whether `new` may replace `old`: a later or equal position, or another version.
pub(crate) fn replaces(old: &StoredCheckpoint, new: &StoredCheckpoint) -> bool {
    old.version != new.version || new.position >= old.position
}

/// One stored piece of a checkpoint ([`CheckpointStorage::pieces`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceInfo {
    /// The base, or a delta.
    pub piece: crate::checkpoint::Piece,
    /// The last event it covers.
    pub position: Position,
    /// The size of its stored encoding, in bytes.
    pub bytes: u64,
}

/// A storage that failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The file system failed.
    #[error("checkpoint file `{}`: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A stored checkpoint does not decode.
    #[error("corrupt checkpoint in {origin}: {reason}")]
    Corrupt {
        /// Where it is stored (a file, a table row).
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A checkpoint could not be encoded.
    #[error("cannot encode the checkpoint of `{namespace}`: {reason}")]
    Encode {
        /// The namespace.
        namespace: String,
        /// What failed.
        reason: String,
    },
    /// The database failed.
    #[error("checkpoint database: {0}")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// An object store (a bucket) failed (feature `object-store`).
    #[error("checkpoint object store, {origin}: {source}")]
    ObjectStore {
        /// What was done where (the object, the bucket).
        origin: String,
        /// Whether retrying may succeed (a lost connection, a timeout, a 5xx answer).
        transient: bool,
        /// What the store said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The storage cannot fence a leased model's writes: its backend has no conditional puts
    /// (feature `object-store`). Refused when the leases are set, before any model starts.
    #[error("checkpoint storage `{location}` cannot fence leased models' writes: {reason}")]
    CannotFence {
        /// The storage.
        location: String,
        /// What the backend said.
        reason: String,
    },
    /// A delta does not follow the stored checkpoint (another writer, or a compaction, moved
    /// the chain on): nothing was stored. The running model writes a whole checkpoint next.
    #[error("checkpoint delta of `{namespace}` refused: {reason}")]
    Chain {
        /// The namespace.
        namespace: String,
        /// Why it does not follow.
        reason: String,
    },
    /// The version of a blue/green projection this build runs is retired (switched away from
    /// and past its grace period, superseded by a newer deploy, or dropped): it neither
    /// rebuilds nor follows. See
    /// [`PostgresProjection::versioned`](crate::projection::PostgresProjection::versioned).
    #[error("version `{version}` of `{model}` is retired: another version serves readers, and this build must not run (deploy the active version's build)")]
    Retired {
        /// The model.
        model: String,
        /// The version's id.
        version: String,
    },
    /// The writer no longer holds the lease of `namespace` it took under `epoch` (another
    /// instance took it over): the write was rolled back, and this writer must step down.
    /// See [`crate::fleet`].
    #[error("checkpoint of `{namespace}` fenced: this writer's lease of epoch {epoch} was taken over (the lease is now at {})", current.map_or_else(|| "no epoch".to_owned(), |c| format!("epoch {c}")))]
    Fenced {
        /// The namespace.
        namespace: String,
        /// The epoch this writer held.
        epoch: u64,
        /// The lease's epoch now, when it has one.
        current: Option<u64>,
    },
}

impl StorageError {
    /// Whether the failure is in the stored data (retrying will not help, a rebuild will).
    #[must_use]
    pub fn is_corrupt(&self) -> bool {
        matches!(self, StorageError::Corrupt { .. })
    }

    // `is_transient` is in `crate::error::transient`, which knows every layer's errors.
}
