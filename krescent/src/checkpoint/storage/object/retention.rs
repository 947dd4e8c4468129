//! Retention: the last checkpoints a namespace replaced, kept beside it for a manual rollback.
//!
//! Before a `store` replaces a namespace's object, it copies the object (server-side: S3's
//! `CopyObject`, no bytes through this process) to
//! `<prefix>/retained/<encoded namespace>/<taken at, µs, 20 digits>-<position, 20 digits>.checkpoint`;
//! after the write it deletes all but the newest `keep` of them, oldest first. The names sort
//! by the time the checkpoints were taken; the header inside each object is what is restored.

use std::time::SystemTime;

use object_store::path::Path;
use object_store::{ObjectStoreExt as _, PutMode, PutPayload};

use super::{
    name, rewrite, split, Head, Known, ObjectStoreCheckpointStorage, MAX_KEY_BYTES, MAX_RACES,
};
use crate::checkpoint::storage::StorageError;
use crate::checkpoint::{from_micros, StoredCheckpoint};
use crate::Position;

/// The folder of the retained checkpoints under the prefix. Not a checkpoint's name: those end
/// in `.checkpoint`, and a listing of the prefix shows this one as a folder.
const RETAINED: &str = "retained";

/// A checkpoint kept after a newer one replaced it
/// ([`ObjectStoreCheckpointStorage::with_retention`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedCheckpoint {
    /// Its key in the bucket.
    pub key: Path,
    /// The position it was taken at.
    pub position: Position,
    /// When it was taken.
    pub taken_at: SystemTime,
}

impl ObjectStoreCheckpointStorage {
    /// This storage, keeping the last `keep` checkpoints of each namespace that a newer one
    /// replaced (0, the default: none), for a manual [`roll_back`](Self::roll_back). Each is a
    /// server-side copy of the replaced object, made before the replacing `PUT`; older ones are
    /// deleted after it, oldest first. A failure to delete is logged and retried at the next
    /// checkpoint: it never fails the checkpoint. Retained checkpoints cost their size in the
    /// bucket and one `COPY`, one `LIST` and the `DELETE`s per checkpoint;
    /// [`delete`](crate::checkpoint::CheckpointStorage::delete) leaves them (see
    /// [`retained`](Self::retained)).
    #[must_use]
    pub fn with_retention(mut self, keep: usize) -> Self {
        self.retain = keep;
        self
    }

    /// The retained checkpoints of `namespace`, oldest first.
    ///
    /// # Errors
    /// [`StorageError::Encode`] for a namespace too long for a key, [`StorageError::ObjectStore`]
    /// when the bucket cannot be listed.
    pub async fn retained(&self, namespace: &str) -> Result<Vec<RetainedCheckpoint>, StorageError> {
        let folder = self.retained_folder(namespace)?;
        let listed = self
            .store
            .list_with_delimiter(Some(&folder))
            .await
            .map_err(|e| self.error("list", &folder, e))?;
        let mut retained: Vec<RetainedCheckpoint> = listed
            .objects
            .into_iter()
            .filter_map(|object| {
                let (taken_at, position) = parse(object.location.filename()?)?;
                Some(RetainedCheckpoint {
                    key: object.location,
                    position,
                    taken_at,
                })
            })
            .collect();
        retained.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(retained)
    }

    /// Makes the retained checkpoint `to` the current checkpoint of `namespace` again: an
    /// operator's rollback, done while the model is stopped (a running model would go on from
    /// its own state and overwrite it at its next checkpoint). The current checkpoint is
    /// retained in turn, so the rollback can be undone. The rolled-back object keeps the highest
    /// lease epoch either held, so an ex-holder paused before the rollback stays fenced.
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] when `to` is not a whole checkpoint of `namespace` (its
    /// checksum is checked first), [`StorageError::ObjectStore`] when the bucket fails.
    pub async fn roll_back(
        &self,
        namespace: &str,
        to: &RetainedCheckpoint,
    ) -> Result<StoredCheckpoint, StorageError> {
        let path = self.key_of(namespace)?;
        let bytes = self
            .store
            .get(&to.key)
            .await
            .map_err(|e| self.error("read", &to.key, e))?
            .bytes()
            .await
            .map_err(|e| self.error("read", &to.key, e))?;
        let origin = format!("`{}` (retained)", to.key);
        let (head, body) = split(&bytes, &origin)?;
        let checkpoint = super::decode(&head, body, namespace, &origin)?;
        checkpoint.verify(head.checksum, &origin)?;
        for _ in 0..MAX_RACES {
            let stored = self.read_head(namespace, &path).await?;
            let epoch = head
                .epoch
                .max(stored.as_ref().and_then(|stored| stored.head.epoch));
            let restored = Head {
                epoch,
                ..head.clone()
            };
            let object = rewrite(&restored, body)?;
            let mode = match &stored {
                Some(stored) => {
                    self.retain(&path, stored).await?;
                    PutMode::Update(stored.version.clone())
                }
                None => PutMode::Create,
            };
            self.known().remove(namespace);
            match self
                .store
                .put_opts(&path, PutPayload::from(object), mode.into())
                .await
            {
                Ok(_) => {
                    self.trim(namespace).await;
                    return Ok(checkpoint);
                }
                Err(
                    object_store::Error::Precondition { .. }
                    | object_store::Error::AlreadyExists { .. }
                    | object_store::Error::NotFound { .. },
                ) => {}
                Err(e) => return Err(self.error("roll back", &path, e)),
            }
        }
        Err(self.raced(namespace))
    }

    /// Copies the stored object at `path` (`stored`, about to be replaced) to its retained key,
    /// when this storage retains. An object already gone has nothing to retain.
    pub(super) async fn retain(&self, path: &Path, stored: &Known) -> Result<(), StorageError> {
        if self.retain == 0 {
            return Ok(());
        }
        let Some(key) = self.retained_key(&stored.head)? else {
            // An unreadable header: there is no checkpoint to keep.
            return Ok(());
        };
        match self.store.copy(path, &key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("retain", path, e)),
        }
    }

    /// Deletes all but the newest retained checkpoints of `namespace`, oldest first; a failure
    /// is logged, and the next checkpoint tries again.
    pub(super) async fn trim(&self, namespace: &str) {
        if self.retain == 0 {
            return;
        }
        let trimmed = async {
            let retained = self.retained(namespace).await?;
            let surplus = retained.len().saturating_sub(self.retain);
            for old in &retained[..surplus] {
                match self.store.delete(&old.key).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(self.error("delete", &old.key, e)),
                }
            }
            Ok::<_, StorageError>(())
        };
        if let Err(error) = trimmed.await {
            tracing::warn!(%namespace, %error, "could not delete old retained checkpoints");
        }
    }

    /// `<prefix>/retained/<encoded namespace>`.
    fn retained_folder(&self, namespace: &str) -> Result<Path, StorageError> {
        // The key's length check, on the longer key of a retained checkpoint.
        self.key_of(namespace)?;
        Ok(self.child(&format!("{RETAINED}/{}", name::encode(namespace, ""))))
    }

    /// The key `head`'s checkpoint is retained under; `None` for an unreadable header.
    fn retained_key(&self, head: &Head<'_>) -> Result<Option<Path>, StorageError> {
        let Ok(position) = head.position.parse::<Position>() else {
            return Ok(None);
        };
        let folder = self.retained_folder(&head.namespace)?;
        let taken_at = u64::try_from(head.taken_at_micros).unwrap_or(0);
        let key = folder.clone().join(format!(
            "{taken_at:020}-{:020}{}",
            position.get(),
            super::SUFFIX
        ));
        if key.as_ref().len() > MAX_KEY_BYTES {
            return Err(StorageError::Encode {
                namespace: head.namespace.to_string(),
                reason: format!(
                    "its retained checkpoints' keys under `{}` would be {} bytes, over the \
                     {MAX_KEY_BYTES} that S3 accepts",
                    self.location,
                    key.as_ref().len()
                ),
            });
        }
        Ok(Some(key))
    }
}

/// The time and position of a retained checkpoint's file name.
fn parse(file_name: &str) -> Option<(SystemTime, Position)> {
    let stem = file_name.strip_suffix(super::SUFFIX)?;
    let (taken_at, position) = stem.split_once('-')?;
    let taken_at: i64 = taken_at.parse().ok()?;
    Some((from_micros(taken_at), Position::new(position.parse().ok()?)))
}
