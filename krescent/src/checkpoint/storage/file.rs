//! Checkpoints kept as files, one per namespace, replaced atomically.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{
    checkpoint_only, name, replaces, CheckpointStorage, PieceInfo, StorageError, StoredCheckpoint,
};
use crate::checkpoint::incremental::{fold, link_follows};
use crate::checkpoint::{CheckpointVersion, Integrity, Link, Piece};
use crate::deadletter::ParkedEvent;
use crate::Position;

const SUFFIX: &str = ".checkpoint.json";
/// How a manifest starts (`StoredCheckpoint::encode` writes format 2 and its documents start
/// `{"format":2`; a manifest is written by this file only).
const MANIFEST_START: &[u8] = br#"{"format":3"#;
/// The manifest's format number.
const MANIFEST_FORMAT: u32 = 3;
/// The file of a namespace's parked events, beside its checkpoint.
const PARKED_SUFFIX: &str = ".parked.json";

/// Checkpoints as files in a directory: `<namespace>.checkpoint.json`, each replaced atomically
/// (written to a temporary file, synced, renamed over the old one, directory synced), so a crash
/// leaves either the old or the new checkpoint, never a torn one. Each file is one JSON document
/// ([`StoredCheckpoint::encode`]) with the checkpoint's checksum, checked when it is loaded; files
/// of krescent 0.1 (format 1, without one) are read as before.
///
/// A namespace's checkpoint made of a base and deltas ([`crate::checkpoint::incremental`]) is
/// a *manifest* in `<namespace>.checkpoint.json` (a small JSON document of format 3) naming the
/// pieces, each a document of its own, `<namespace>.<base position>-<n>.piece.json` (`n` = 0
/// for the base): a delta is written to its file first, and the manifest's atomic replace
/// commits it, so a crash between the two leaves the chain as it was (and an unreferenced file,
/// overwritten by the next delta). The manifest records each piece's checksum; a piece missing,
/// damaged or not the one named makes the whole checkpoint [`StorageError::Corrupt`]. The first
/// delta after a whole checkpoint hard-links that file as the base, without copying it; a whole
/// checkpoint replaces the manifest and removes the pieces it named.
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

/// The pieces of a chain, as `<namespace>.checkpoint.json` names them once deltas follow a base.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    version: String,
    base: PieceFile,
    deltas: Vec<PieceFile>,
}

/// A piece's file, position and checksum (none for a base written before checksums).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PieceFile {
    file: String,
    position: Position,
    checksum: Option<u32>,
}

/// The head of a whole checkpoint's document, read without decoding its bucket's values.
#[derive(Deserialize)]
struct Header {
    version: String,
    position: String,
    #[serde(default)]
    checksum: Option<u32>,
}

impl Manifest {
    /// The position of the chain's last piece.
    fn head(&self) -> Position {
        self.deltas
            .last()
            .map_or(self.base.position, |delta| delta.position)
    }

    /// Every piece's file.
    fn files(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&self.base)
            .chain(&self.deltas)
            .map(|piece| piece.file.as_str())
    }
}

/// What `<namespace>.checkpoint.json` holds.
enum Stored {
    Whole(Vec<u8>),
    Chain(Manifest),
}

fn read_stored(path: &Path) -> Result<Option<Stored>, StorageError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path)(e)),
    };
    if !bytes.starts_with(MANIFEST_START) {
        return Ok(Some(Stored::Whole(bytes)));
    }
    serde_json::from_slice(&bytes)
        .map(|manifest| Some(Stored::Chain(manifest)))
        .map_err(|e| StorageError::Corrupt {
            origin: format!("file `{}`", path.display()),
            reason: format!("undecodable manifest: {e}"),
        })
}

/// The checkpoint in `path`: a whole one, or a chain read piece by piece and folded.
fn read_chain(path: &Path) -> Result<Option<(StoredCheckpoint, Integrity)>, StorageError> {
    let manifest = match read_stored(path)? {
        None => return Ok(None),
        Some(Stored::Whole(bytes)) => {
            return StoredCheckpoint::decode_checked(&bytes, &format!("file `{}`", path.display()))
                .map(Some)
        }
        Some(Stored::Chain(manifest)) => manifest,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let piece = |file: &PieceFile| {
        let piece_path = dir.join(&file.file);
        let origin = format!("file `{}`", piece_path.display());
        let bytes = fs::read(&piece_path).map_err(|e| StorageError::Corrupt {
            origin: origin.clone(),
            reason: format!(
                "a piece of the chain `{}` names is unreadable: {e}",
                path.display()
            ),
        })?;
        let (checkpoint, integrity) = StoredCheckpoint::decode_checked(&bytes, &origin)?;
        let checksum = match integrity {
            Integrity::Verified { checksum } => Some(checksum),
            Integrity::Unchecked => None,
        };
        if checksum != file.checksum || checkpoint.position != file.position {
            return Err(StorageError::Corrupt {
                origin,
                reason: format!(
                    "not the piece `{}` names (checksum {checksum:?} at {}, expected {:?} at {})",
                    path.display(),
                    checkpoint.position,
                    file.checksum,
                    file.position
                ),
            });
        }
        Ok((checkpoint, integrity))
    };
    let (base, integrity) = piece(&manifest.base)?;
    if base.version.as_str() != manifest.version {
        return Err(StorageError::Corrupt {
            origin: format!("file `{}`", path.display()),
            reason: format!(
                "the manifest is of version `{}`, its base of `{}`",
                manifest.version, base.version
            ),
        });
    }
    let deltas = manifest
        .deltas
        .iter()
        .map(|delta| piece(delta).map(|(checkpoint, _)| checkpoint))
        .collect::<Result<Vec<_>, _>>()?;
    let origin = format!("file `{}`", path.display());
    Ok(Some((fold(base, deltas, &origin)?, integrity)))
}

/// The file of piece `n` of the chain on the base at `base`.
fn piece_name(namespace: &str, base: Position, n: usize) -> String {
    name::encode(namespace, &format!(".{base}-{n}.piece.json"))
}

/// Appends the delta `checkpoint` (its `link`, its encoding `bytes`) to the chain in `path`.
fn append(
    path: &Path,
    checkpoint: &StoredCheckpoint,
    link: Link,
    bytes: &[u8],
) -> Result<(), StorageError> {
    let refused = |reason: String| StorageError::Chain {
        namespace: checkpoint.namespace.clone(),
        reason,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut manifest = match read_stored(path)? {
        None => return Err(refused("no checkpoint is stored".to_owned())),
        Some(Stored::Chain(manifest)) => manifest,
        Some(Stored::Whole(whole)) => {
            let header: Header =
                serde_json::from_slice(&whole).map_err(|e| StorageError::Corrupt {
                    origin: format!("file `{}`", path.display()),
                    reason: e.to_string(),
                })?;
            let position: Position =
                header
                    .position
                    .parse()
                    .map_err(
                        |e: crate::position::PositionParseError| StorageError::Corrupt {
                            origin: format!("file `{}`", path.display()),
                            reason: e.to_string(),
                        },
                    )?;
            // Checked before the base is linked: a delta of another base links nothing.
            link_follows(&link, position, position, 0).map_err(refused)?;
            let file = piece_name(&checkpoint.namespace, position, 0);
            let base = dir.join(&file);
            match fs::remove_file(&base) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&base)(e)),
            }
            fs::hard_link(path, &base).map_err(io_error(&base))?;
            Manifest {
                format: MANIFEST_FORMAT,
                version: header.version,
                base: PieceFile {
                    file,
                    position,
                    checksum: header.checksum,
                },
                deltas: Vec::new(),
            }
        }
    };
    if CheckpointVersion::from_text(manifest.version.clone()) != checkpoint.version {
        return Err(refused(format!(
            "the stored checkpoint is of version `{}`",
            manifest.version
        )));
    }
    link_follows(
        &link,
        manifest.base.position,
        manifest.head(),
        manifest.deltas.len(),
    )
    .map_err(refused)?;
    let file = piece_name(
        &checkpoint.namespace,
        manifest.base.position,
        manifest.deltas.len() + 1,
    );
    write_atomically(&dir.join(&file), bytes)?;
    manifest.deltas.push(PieceFile {
        file,
        position: checkpoint.position,
        checksum: Some(checkpoint.checksum()),
    });
    let encoded = serde_json::to_vec(&manifest).map_err(|e| StorageError::Encode {
        namespace: checkpoint.namespace.clone(),
        reason: e.to_string(),
    })?;
    // The commit.
    write_atomically(path, &encoded)
}

/// Removes the pieces `old` named (after what replaced it was committed); a piece already
/// gone is no error.
fn remove_pieces(dir: &Path, old: Option<&Manifest>) -> Result<(), StorageError> {
    for file in old.into_iter().flat_map(Manifest::files) {
        let path = dir.join(file);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&path)(e)),
        }
    }
    Ok(())
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
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
        self.blocking(move |_| read_chain(&path)).await
    }

    fn keeps_deltas(&self) -> bool {
        true
    }

    async fn pieces(&self, namespace: &str) -> Result<Vec<PieceInfo>, StorageError> {
        let path = self.path_of(namespace);
        self.blocking(move |dir| {
            let size = |path: &Path| fs::metadata(path).map(|m| m.len()).map_err(io_error(path));
            match read_stored(&path)? {
                None => Ok(Vec::new()),
                Some(Stored::Whole(bytes)) => {
                    let header: Header =
                        serde_json::from_slice(&bytes).map_err(|e| StorageError::Corrupt {
                            origin: format!("file `{}`", path.display()),
                            reason: e.to_string(),
                        })?;
                    let position = header.position.parse().map_err(
                        |e: crate::position::PositionParseError| StorageError::Corrupt {
                            origin: format!("file `{}`", path.display()),
                            reason: e.to_string(),
                        },
                    )?;
                    Ok(vec![PieceInfo {
                        piece: Piece::Whole,
                        position,
                        bytes: bytes.len() as u64,
                    }])
                }
                Some(Stored::Chain(manifest)) => {
                    let mut pieces = vec![PieceInfo {
                        piece: Piece::Whole,
                        position: manifest.base.position,
                        bytes: size(&dir.join(&manifest.base.file))?,
                    }];
                    let mut previous = manifest.base.position;
                    for (i, delta) in manifest.deltas.iter().enumerate() {
                        pieces.push(PieceInfo {
                            piece: Piece::Delta(Link {
                                base: manifest.base.position,
                                previous,
                                sequence: u32::try_from(i + 1).unwrap_or(u32::MAX),
                            }),
                            position: delta.position,
                            bytes: size(&dir.join(&delta.file))?,
                        });
                        previous = delta.position;
                    }
                    Ok(pieces)
                }
            }
        })
        .await
    }

    async fn store(&self, checkpoint: &StoredCheckpoint) -> Result<(), StorageError> {
        let bytes = checkpoint.encode()?;
        let path = self.path_of(&checkpoint.namespace);
        let checkpoint = checkpoint.clone();
        let _guard = self.write_lock.lock().await;
        self.blocking(move |dir| {
            if let Piece::Delta(link) = checkpoint.piece {
                return append(&path, &checkpoint, link, &bytes);
            }
            // An unreadable old checkpoint is replaced: it could never be restored anyway.
            let old = match read_stored(&path).ok().flatten() {
                Some(Stored::Chain(manifest)) => {
                    // Against the chain's last piece: a position never moves backwards.
                    if CheckpointVersion::from_text(manifest.version.clone()) == checkpoint.version
                        && checkpoint.position < manifest.head()
                    {
                        return Ok(());
                    }
                    Some(manifest)
                }
                Some(Stored::Whole(old)) => {
                    let origin = format!("file `{}`", path.display());
                    if StoredCheckpoint::decode(&old, &origin)
                        .is_ok_and(|old| !replaces(&old, &checkpoint))
                    {
                        return Ok(());
                    }
                    None
                }
                None => None,
            };
            write_atomically(&path, &bytes)?;
            remove_pieces(dir, old.as_ref())
        })
        .await
    }

    async fn delete(&self, namespace: &str) -> Result<bool, StorageError> {
        let path = self.path_of(namespace);
        let _guard = self.write_lock.lock().await;
        self.blocking(move |dir| {
            let old = match read_stored(&path) {
                Ok(Some(Stored::Chain(manifest))) => Some(manifest),
                _ => None,
            };
            let deleted = match fs::remove_file(&path) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => return Err(io_error(&path)(e)),
            };
            remove_pieces(dir, old.as_ref())?;
            Ok(deleted)
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
