//! Checkpoints kept as files, one per namespace, replaced atomically.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{checkpoint_only, name, replaces, CheckpointStorage, StorageError, StoredCheckpoint};
use crate::checkpoint::Integrity;
use crate::deadletter::ParkedEvent;
use crate::Position;

const SUFFIX: &str = ".checkpoint.json";
/// The file of a namespace's parked events, beside its checkpoint.
const PARKED_SUFFIX: &str = ".parked.json";

/// Checkpoints as files in a directory: `<namespace>.checkpoint.json`, each replaced atomically
/// (written to a temporary file, synced, renamed over the old one, directory synced), so a crash
/// leaves either the old or the new checkpoint, never a torn one. Each file is one JSON document
/// ([`StoredCheckpoint::encode`]) with the checkpoint's checksum, checked when it is loaded; files
/// of krescent 0.1 (format 1, without one) are read as before.
///
/// A namespace's parked events ([`crate::deadletter`]) are one JSON array in
/// `<namespace>.parked.json`, replaced atomically the same way.
#[derive(Debug, Clone)]
pub struct FileCheckpointStorage {
    dir: Arc<Path>,
    /// Serializes writers of this storage, so that the "never backwards" check and the rename are one step.
    write_lock: Arc<tokio::sync::Mutex<()>>,
}

impl FileCheckpointStorage {
    /// A storage in `dir`, created if missing.
    ///
    /// # Errors
    /// [`StorageError::Io`] when the directory cannot be created.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StorageError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| StorageError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(FileCheckpointStorage {
            dir: dir.into(),
            write_lock: Arc::default(),
        })
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `namespace`: the name with every byte outside `[A-Za-z0-9._-]` percent-encoded.
    #[must_use]
    pub fn path_of(&self, namespace: &str) -> PathBuf {
        self.file_of(namespace, SUFFIX)
    }

    /// The file of `namespace`'s parked events, named like [`path_of`](Self::path_of)'s.
    #[must_use]
    pub fn parked_path_of(&self, namespace: &str) -> PathBuf {
        self.file_of(namespace, PARKED_SUFFIX)
    }

    fn file_of(&self, namespace: &str, suffix: &str) -> PathBuf {
        self.dir.join(name::encode(namespace, suffix))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Path) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || work(&dir))
            .await
            .map_err(|e| StorageError::Io {
                path: self.dir.to_path_buf(),
                source: io::Error::other(e.to_string()),
            })?
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read(path: &Path) -> Result<Option<(StoredCheckpoint, Integrity)>, StorageError> {
    match fs::read(path) {
        Ok(bytes) => {
            StoredCheckpoint::decode_checked(&bytes, &format!("file `{}`", path.display()))
                .map(Some)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path)(e)),
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    crate::durable::write_atomically(path, bytes).map_err(io_error(path))
}

fn namespace_of(file_name: &str) -> Option<String> {
    name::decode(file_name, SUFFIX)
}

/// The parked events in `path`, in position order; none when it does not exist.
fn read_parked(path: &Path) -> Result<Vec<ParkedEvent>, StorageError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StorageError::Corrupt {
            origin: format!("file `{}`", path.display()),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_error(path)(e)),
    }
}

/// Replaces the parked events in `path` with `events` (the file goes when there are none).
fn write_parked(path: &Path, events: &[ParkedEvent]) -> Result<(), StorageError> {
    if events.is_empty() {
        return match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(path)(e)),
        };
    }
    let bytes = serde_json::to_vec_pretty(events).map_err(|e| StorageError::Encode {
        namespace: events[0].namespace.clone(),
        reason: e.to_string(),
    })?;
    write_atomically(path, &bytes)
}

#[async_trait::async_trait]
impl CheckpointStorage for FileCheckpointStorage {
    async fn load(&self, namespace: &str) -> Result<Option<StoredCheckpoint>, StorageError> {
        self.load_checked(namespace).await.map(checkpoint_only)
    }

    async fn load_checked(
        &self,
        namespace: &str,
    ) -> Result<Option<(StoredCheckpoint, Integrity)>, StorageError> {
        let path = self.path_of(namespace);
        self.blocking(move |_| read(&path)).await
    }

    async fn store(&self, checkpoint: &StoredCheckpoint) -> Result<(), StorageError> {
        let bytes = checkpoint.encode()?;
        let path = self.path_of(&checkpoint.namespace);
        let checkpoint = checkpoint.clone();
        let _guard = self.write_lock.lock().await;
        self.blocking(move |_| {
            // An unreadable old checkpoint is replaced: it could never be restored anyway.
            if read(&path)
                .ok()
                .flatten()
                .is_some_and(|(old, _)| !replaces(&old, &checkpoint))
            {
                return Ok(());
            }
            write_atomically(&path, &bytes)
        })
        .await
    }

    async fn delete(&self, namespace: &str) -> Result<bool, StorageError> {
        let path = self.path_of(namespace);
        let _guard = self.write_lock.lock().await;
        self.blocking(move |_| match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error(&path)(e)),
        })
        .await
    }

    async fn list(&self) -> Result<Vec<String>, StorageError> {
        self.blocking(|dir| {
            let mut namespaces = Vec::new();
            for entry in fs::read_dir(dir).map_err(io_error(dir))? {
                let entry = entry.map_err(io_error(dir))?;
                if let Some(namespace) = entry.file_name().to_str().and_then(namespace_of) {
                    namespaces.push(namespace);
                }
            }
            namespaces.sort();
            Ok(namespaces)
        })
        .await
    }

    async fn park(&self, parked: &[ParkedEvent]) -> Result<(), StorageError> {
        let mut by_namespace: std::collections::BTreeMap<String, Vec<ParkedEvent>> =
            std::collections::BTreeMap::new();
        for event in parked {
            by_namespace
                .entry(event.namespace.clone())
                .or_default()
                .push(event.clone());
        }
        let _guard = self.write_lock.lock().await;
        for (namespace, events) in by_namespace {
            let path = self.parked_path_of(&namespace);
            self.blocking(move |_| {
                let mut kept: std::collections::BTreeMap<Position, ParkedEvent> =
                    read_parked(&path)?
                        .into_iter()
                        .map(|e| (e.position, e))
                        .collect();
                for event in events {
                    kept.insert(event.position, event);
                }
                write_parked(&path, &kept.into_values().collect::<Vec<_>>())
            })
            .await?;
        }
        Ok(())
    }

    async fn parked(&self, namespace: &str) -> Result<Vec<ParkedEvent>, StorageError> {
        let path = self.parked_path_of(namespace);
        self.blocking(move |_| {
            let mut events = read_parked(&path)?;
            events.sort_by_key(|e| e.position);
            Ok(events)
        })
        .await
    }

    async fn unpark(&self, namespace: &str, positions: &[Position]) -> Result<u64, StorageError> {
        let path = self.parked_path_of(namespace);
        let positions = positions.to_vec();
        let _guard = self.write_lock.lock().await;
        self.blocking(move |_| {
            let events = read_parked(&path)?;
            let before = events.len();
            let kept: Vec<ParkedEvent> = events
                .into_iter()
                .filter(|e| !positions.contains(&e.position))
                .collect();
            let removed = before - kept.len();
            if removed > 0 {
                write_parked(&path, &kept)?;
            }
            Ok(removed as u64)
        })
        .await
    }

    async fn parked_namespaces(&self) -> Result<Vec<String>, StorageError> {
        self.blocking(|dir| {
            let mut namespaces = Vec::new();
            for entry in fs::read_dir(dir).map_err(io_error(dir))? {
                let entry = entry.map_err(io_error(dir))?;
                if let Some(namespace) = entry
                    .file_name()
                    .to_str()
                    .and_then(|name| name::decode(name, PARKED_SUFFIX))
                {
                    namespaces.push(namespace);
                }
            }
            namespaces.sort();
            Ok(namespaces)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_to_namespaces() {
        let storage = FileCheckpointStorage {
            dir: Path::new("/x").into(),
            write_lock: Arc::default(),
        };
        for namespace in ["books.available", "a/b", "..", "ü%", ".hidden", ""] {
            let path = storage.path_of(namespace);
            let name = path.file_name().unwrap().to_str().unwrap();
            assert!(!name.starts_with('.') || namespace.is_empty(), "{name}");
            assert_eq!(namespace_of(name).as_deref(), Some(namespace));
        }
    }
}
