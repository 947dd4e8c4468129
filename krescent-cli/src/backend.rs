//! The store a command works on: a file data directory or PostgreSQL.

use krescent::checkpoint::{
    CheckpointStorage, Integrity, ObjectStoreCheckpointStorage, PostgresCheckpointStorage,
    StoredCheckpoint,
};
use krescent::store::{EventBatch, EventStore, FileEventStore, PostgresConfig, PostgresEventStore};
use krescent::Position;

use crate::cli::StoreOptions;
use crate::data_dir;
use crate::error::CliError;
use crate::output::quoted;

/// An event store and its checkpoint storage, and the bucket `--checkpoints` names.
#[allow(clippy::large_enum_variant)] // one per process
pub enum Backend {
    File {
        store: FileEventStore,
        storage: krescent::checkpoint::FileCheckpointStorage,
        bucket: Option<ObjectStoreCheckpointStorage>,
    },
    Postgres {
        store: PostgresEventStore,
        storage: PostgresCheckpointStorage,
        bucket: Option<ObjectStoreCheckpointStorage>,
    },
}

impl Backend {
    /// Opens the store the options name, changing nothing in it (no migration, no files).
    pub async fn open(options: &StoreOptions) -> Result<Self, CliError> {
        let bucket = options
            .checkpoints
            .as_deref()
            .map(ObjectStoreCheckpointStorage::from_url)
            .transpose()?;
        if let Some(dir) = &options.data_dir {
            let data_dir::DataDir { store, storage } = data_dir::open(dir)?;
            return Ok(Backend::File {
                store,
                storage,
                bucket,
            });
        }
        let url = options.database_url.as_deref().ok_or(CliError::NoStore)?;
        let store =
            PostgresEventStore::connect_with(url, PostgresConfig::in_schema(&options.schema))
                .await?;
        let storage = store.checkpoint_storage();
        Ok(Backend::Postgres {
            store,
            storage,
            bucket,
        })
    }

    /// The checkpoint storage: the bucket `--checkpoints` names, or the store's own.
    pub fn storage(&self) -> &dyn CheckpointStorage {
        match self {
            Backend::File {
                bucket: Some(bucket),
                ..
            }
            | Backend::Postgres {
                bucket: Some(bucket),
                ..
            } => bucket,
            Backend::File { storage, .. } => storage,
            Backend::Postgres { storage, .. } => storage,
        }
    }

    /// The position of the last event.
    pub async fn head(&self) -> Result<Position, CliError> {
        Ok(match self {
            Backend::File { store, .. } => store.head().await?,
            Backend::Postgres { store, .. } => store.head().await?,
        })
    }

    /// Events after `after`; empty only when none follows.
    pub async fn read_batch(&self, after: Position, limit: usize) -> Result<EventBatch, CliError> {
        Ok(match self {
            Backend::File { store, .. } => store.read_batch(after, limit).await?,
            Backend::Postgres { store, .. } => store.read_batch(after, limit).await?,
        })
    }

    /// Waits until events after `after` may have been appended (PostgreSQL only: the file
    /// store sees only what it held when opened).
    pub async fn wait_for_append(&self, after: Position) -> Result<(), CliError> {
        match self {
            Backend::File { .. } => Err(CliError::follow_needs_postgres()),
            Backend::Postgres { store, .. } => Ok(store.wait_for_append(after).await?),
        }
    }

    /// Refuses with [`CliError::Leased`] while a running instance holds the lease of
    /// `namespace` (PostgreSQL; a file store is opened by one process at a time anyway).
    pub async fn refuse_if_leased(&self, namespace: &str, force: bool) -> Result<(), CliError> {
        let Backend::Postgres { storage, .. } = self else {
            return Ok(());
        };
        match storage.lease(namespace).await? {
            Some(lease) if !force => Err(CliError::Leased {
                namespace: namespace.to_owned(),
                holder: lease.holder,
                epoch: lease.epoch,
            }),
            _ => Ok(()),
        }
    }

    /// The checkpoint of `namespace` and how its integrity was checked, or an error naming the
    /// namespaces there are; one whose checksum fails is the storage's `Corrupt` error.
    pub async fn checkpoint(
        &self,
        namespace: &str,
    ) -> Result<(StoredCheckpoint, Integrity), CliError> {
        if let Some(checkpoint) = self.storage().load_checked(namespace).await? {
            return Ok(checkpoint);
        }
        self.unknown(namespace).await
    }

    /// [`CliError::UnknownNamespace`] for `namespace`, naming the namespaces there are.
    pub async fn unknown<T>(&self, namespace: &str) -> Result<T, CliError> {
        let namespaces = self.storage().list().await?;
        let known = if namespaces.is_empty() {
            "there are no checkpoints".to_owned()
        } else {
            format!(
                "there are checkpoints of {}",
                quoted(namespaces.iter().map(String::as_str))
            )
        };
        Err(CliError::UnknownNamespace {
            namespace: namespace.to_owned(),
            known,
        })
    }
}
