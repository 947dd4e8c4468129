//! Checkpoints in cloud object storage: S3 and S3-compatible servers, or any
//! [`object_store::ObjectStore`] (feature `object-store`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt as _, PutMode, PutPayload, UpdateVersion,
};
use serde::{Deserialize, Serialize};

use super::{name, CheckpointStorage, StorageError, StoredCheckpoint};
use crate::checkpoint::bucket::packed;
use crate::checkpoint::{
    from_micros, to_micros, CheckpointBucket, CheckpointFormat, CheckpointVersion, Integrity,
};
use crate::fleet::Fence;
use crate::Position;

mod retention;

pub use retention::RetainedCheckpoint;

/// The object store crate this storage is built on (`object_store`, Apache Arrow's), re-exported
/// so that a store of your own (GCS, Azure, a tuned S3 client) needs no dependency of your own
/// of the same version.
pub use object_store;

/// The suffix of every checkpoint object's name.
const SUFFIX: &str = ".checkpoint";
/// The longest key S3 accepts, in bytes; a namespace whose key would be longer is refused.
pub const MAX_KEY_BYTES: usize = 1024;
/// The object layout's number, in every object's header.
const LAYOUT: u32 = 1;
/// How much of an object a `store` reads to find the stored header (the rest is the bucket).
const HEAD_READ: u64 = 16 * 1024;
/// How many times a `store` re-reads and retries after a concurrent write won the race.
const MAX_RACES: usize = 64;

/// Checkpoints as objects in a bucket (S3, GCS, Azure Blob Storage, an S3-compatible server, or
/// any [`ObjectStore`]), one object per namespace under a prefix.
///
/// **Key layout.** The checkpoint of `namespace` is the object
/// `<prefix>/<encoded namespace>.checkpoint`, where the namespace is one path segment: every
/// byte outside `[A-Za-z0-9._-]` (and a leading `.`) is percent-encoded as `%XX`, so `/`, `..`,
/// `%`, spaces, NUL and any UTF-8 stay inside the prefix and map back to the namespace
/// ([`list`](CheckpointStorage::list) decodes them). A segment's namespace (`model#2/4`) and a
/// write model's per-stream ones are namespaces like any other. S3 limits a key to
/// [`MAX_KEY_BYTES`] bytes: a namespace whose key would be longer is refused with
/// [`StorageError::Encode`], before anything is read or written.
///
/// **Object layout.** One line of JSON, the header (`{"krescent_checkpoint":1, "namespace",
/// "version", "position", "taken_at_micros", "checksum", "format", "epoch"}`), a newline, then
/// the bucket: one `MessagePack` document ([`CheckpointFormat::MessagePack`], the default) or a
/// JSON object ([`CheckpointFormat::Json`], set with [`with_format`](Self::with_format); the
/// whole object is then two JSON values, readable with `jq`). The
/// [`checksum`](StoredCheckpoint::checksum) is checked before anything is restored; a mismatch
/// is [`StorageError::Corrupt`].
///
/// **Writes.** A replace is one `PUT` of the whole object, which S3 (and every `object_store`
/// backend) makes atomic: a reader sees the old or the new checkpoint, and a write that fails
/// half-way (a crash, a lost connection) leaves the old one. Every `PUT` is conditional: on
/// the `ETag` of the object it replaces (`PutMode::Update`, `If-Match`), or on there being none
/// (`PutMode::Create`, `If-None-Match: *`), after the stored header was read (a ranged `GET` of
/// its first bytes, skipped when this storage wrote the object last). A write that lost a race
/// re-reads and tries again, so the stored position never moves backwards within a version, as
/// every storage's contract says, even with several writers.
///
/// **Fencing.** A leased model's writes carry its lease's epoch in the header; a write finding
/// a higher epoch stored fails with [`StorageError::Fenced`], and one finding a lower epoch
/// raises it even when it keeps the stored, later position (it rewrites the object with its own
/// epoch). A leased model also raises the epoch when it loads its checkpoint at start, so a
/// paused ex-holder's write after a takeover fails: its conditional `PUT` names an `ETag` that is
/// gone, it re-reads, and finds the new epoch. Leases are kept in PostgreSQL:
/// [`with_leases`](Self::with_leases) takes them from a
/// [`PostgresCheckpointStorage`](super::PostgresCheckpointStorage) and refuses a backend without
/// conditional puts; a fenced write first renews its lease there (one `UPDATE`), so a holder
/// that lost its lease is fenced at its next write even before the new holder has loaded.
///
/// Built from a URL and the environment with [`from_url`](Self::from_url), or around any store
/// with [`new`](Self::new):
///
/// ```
/// use std::sync::Arc;
///
/// use krescent::checkpoint::storage::object_store::memory::InMemory;
/// use krescent::checkpoint::{CheckpointStorage, ObjectStoreCheckpointStorage};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // S3, from the standard environment (`AWS_REGION`, credentials, `AWS_ENDPOINT_URL` for an
/// // S3-compatible server); nothing is contacted yet.
/// # std::env::set_var("AWS_REGION", "eu-west-1");
/// let s3 = ObjectStoreCheckpointStorage::from_url("s3://my-bucket/krescent/checkpoints")?;
/// assert_eq!(s3.location().as_deref(), Some("s3://my-bucket/krescent/checkpoints"));
/// assert_eq!(s3.key_of("books#2/4")?.as_ref(), "krescent/checkpoints/books%232%2F4.checkpoint");
///
/// // Any `object_store` backend: here one in memory.
/// let memory = ObjectStoreCheckpointStorage::new(Arc::new(InMemory::new()), "prefix", "memory");
/// memory.check_fencing().await?; // it has conditional puts
/// let krescent = krescent::Krescent::new(krescent::store::InMemoryEventStore::new())
///     .with_storage("bucket", memory);
/// # let _ = krescent;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ObjectStoreCheckpointStorage {
    store: Arc<dyn ObjectStore>,
    /// The prefix, without a leading or trailing `/` (empty: the bucket's root).
    prefix: String,
    /// The prefix as a path (its parts percent-encoded where `object_store` requires it).
    base: Path,
    /// Where the checkpoints are, as users name it (`s3://bucket/prefix`).
    location: String,
    format: CheckpointFormat,
    /// The lease every write must still hold.
    fence: Option<Arc<Fence>>,
    /// How many replaced checkpoints of each namespace to keep (`retention.rs`).
    retain: usize,
    /// The header and `ETag` of each object this storage wrote or read last, so a `store`
    /// need not read the header again; a stale entry only costs a failed conditional `PUT`.
    known: Arc<Mutex<HashMap<String, Known>>>,
    #[cfg(feature = "postgres")]
    leases: Option<crate::fleet::Leases>,
}

/// What a storage knows of a stored object.
#[derive(Debug, Clone)]
struct Known {
    head: Head<'static>,
    version: UpdateVersion,
}

/// The first line of every object.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Head<'a> {
    krescent_checkpoint: u32,
    namespace: Cow<'a, str>,
    version: Cow<'a, str>,
    position: String,
    taken_at_micros: i64,
    checksum: u32,
    format: i16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    epoch: Option<u64>,
}

impl Head<'_> {
    fn into_owned(self) -> Head<'static> {
        Head {
            namespace: Cow::Owned(self.namespace.into_owned()),
            version: Cow::Owned(self.version.into_owned()),
            ..self
        }
    }

    /// The stored checkpoint's version and position, for [`replaces`].
    fn replaced_by(&self, new: &StoredCheckpoint) -> bool {
        let position = self.position.parse::<Position>().ok();
        match position {
            Some(position) => self.version != new.version.as_str() || new.position >= position,
            // An unreadable header is replaced: it could never be restored anyway.
            None => true,
        }
    }
}

impl ObjectStoreCheckpointStorage {
    /// A storage in `store` under `prefix` (`""`: the bucket's root; leading and trailing `/`
    /// are ignored); `location` names it in errors and tells storages apart
    /// ([`CheckpointStorage::location`]), e.g. `s3://bucket/prefix`.
    #[must_use]
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, location: impl Into<String>) -> Self {
        let prefix = prefix.trim_matches('/').to_owned();
        let base = Path::parse(&prefix).unwrap_or_else(|_| {
            prefix
                .split('/')
                .filter(|part| !part.is_empty())
                .collect::<Path>()
        });
        ObjectStoreCheckpointStorage {
            store,
            prefix,
            base,
            location: location.into(),
            format: CheckpointFormat::MessagePack,
            fence: None,
            retain: 0,
            known: Arc::default(),
            #[cfg(feature = "postgres")]
            leases: None,
        }
    }

    /// A storage at `url` (`s3://bucket` or `s3://bucket/prefix`), configured from the standard
    /// environment as the AWS tools are: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`, `AWS_REGION` / `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` (an
    /// S3-compatible server: `MinIO`, Ceph, R2, a local test server; an `http://` endpoint is
    /// allowed without TLS), `AWS_ALLOW_HTTP`, web identity and instance credentials (see
    /// `object_store::aws::AmazonS3Builder::from_env`).
    ///
    /// # Errors
    /// [`StorageError::ObjectStore`] when the URL is not an `s3://` URL or the configuration is
    /// incomplete (no region, no bucket).
    pub fn from_url(url: &str) -> Result<Self, StorageError> {
        Self::from_url_with(url, std::iter::empty::<(&str, &str)>())
    }

    /// [`from_url`](Self::from_url), then `options` over the environment: pairs of an
    /// `object_store::aws::AmazonS3ConfigKey` name (`aws_endpoint`, `aws_region`,
    /// `aws_access_key_id`, `aws_allow_http`, `aws_conditional_put`, …) and its value.
    ///
    /// # Errors
    /// As [`from_url`](Self::from_url), and for an unknown option.
    pub fn from_url_with<K: AsRef<str>, V: Into<String>>(
        url: &str,
        options: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, StorageError> {
        use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
        let failed = |source: object_store::Error| StorageError::ObjectStore {
            origin: format!("configure `{url}`"),
            transient: false,
            source: Box::new(source),
        };
        let Some(rest) = url
            .strip_prefix("s3://")
            .or_else(|| url.strip_prefix("s3a://"))
        else {
            return Err(failed(object_store::Error::Generic {
                store: "S3",
                source: format!("`{url}` is not an s3:// URL").into(),
            }));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
            .into_iter()
            .find_map(|name| std::env::var(name).ok());
        if let Some(endpoint) = endpoint {
            builder = builder.with_endpoint(&endpoint);
            if endpoint.starts_with("http://") {
                builder = builder.with_allow_http(true);
            }
        }
        for (key, value) in options {
            let key: AmazonS3ConfigKey = key.as_ref().parse().map_err(failed)?;
            let value: String = value.into();
            if key == AmazonS3ConfigKey::Endpoint && value.starts_with("http://") {
                builder = builder.with_allow_http(true);
            }
            builder = builder.with_config(key, value);
        }
        let store = builder.build().map_err(failed)?;
        let location = format!("s3://{bucket}/{}", prefix.trim_matches('/'));
        Ok(Self::new(
            Arc::new(store),
            prefix,
            location.trim_end_matches('/'),
        ))
    }

    /// This storage, putting new checkpoints in `format` (by default
    /// [`CheckpointFormat::MessagePack`]; [`CheckpointFormat::Json`] to read them with `jq`).
    /// Objects of either format are read whatever it is set to.
    #[must_use]
    pub fn with_format(mut self, format: CheckpointFormat) -> Self {
        self.format = format;
        self
    }

    /// This storage, its models leased through `postgres`'s leases (kept in its database, in
    /// the leases table beside its checkpoints table), their checkpoints still written to the
    /// bucket and fenced there by the lease's epoch (see the type's docs). Which models take a
    /// lease is as with the PostgreSQL storage: an exclusive model, or one with a projection.
    ///
    /// First checks that the backend has conditional puts by creating, replacing (on its
    /// `ETag`) and deleting `<prefix>/krescent-probe-<random id>`: fencing depends on them. S3
    /// (since November 2024), GCS, Azure, `MinIO`, R2, `object_store`'s local files and memory
    /// have them; an S3 store built with `aws_conditional_put=disabled` does not.
    ///
    /// # Errors
    /// [`StorageError::CannotFence`] when the backend refuses a conditional put;
    /// [`StorageError::ObjectStore`] when it cannot be reached.
    #[cfg(feature = "postgres")]
    pub async fn with_leases(
        mut self,
        postgres: &super::PostgresCheckpointStorage,
    ) -> Result<Self, StorageError> {
        self.check_fencing().await?;
        self.leases = postgres.leases();
        Ok(self)
    }

    /// Checks that the backend can fence writes (has conditional puts), as
    /// [`with_leases`](Self::with_leases) does: creates `<prefix>/krescent-probe-<random id>`,
    /// replaces it on its `ETag`, and deletes it.
    ///
    /// # Errors
    /// [`StorageError::CannotFence`] when the backend refuses a conditional put;
    /// [`StorageError::ObjectStore`] when it cannot be reached.
    pub async fn check_fencing(&self) -> Result<(), StorageError> {
        // Not a checkpoint's name (`list` never shows it), and one of its own, so that
        // instances starting together do not race on it.
        let path = self.child(&format!("krescent-probe-{}", uuid::Uuid::new_v4().simple()));
        let cannot = |e: object_store::Error| match e {
            object_store::Error::NotImplemented { .. }
            | object_store::Error::NotSupported { .. } => StorageError::CannotFence {
                location: self.location.clone(),
                reason: e.to_string(),
            },
            other => self.error("probe conditional puts at", &path, other),
        };
        let created = self
            .store
            .put_opts(&path, PutPayload::from_static(b"1"), PutMode::Create.into())
            .await
            .map_err(cannot)?;
        let version = UpdateVersion {
            e_tag: created.e_tag,
            version: created.version,
        };
        if version.e_tag.is_none() && version.version.is_none() {
            return Err(StorageError::CannotFence {
                location: self.location.clone(),
                reason: "the backend returns neither an ETag nor a version".to_owned(),
            });
        }
        self.store
            .put_opts(
                &path,
                PutPayload::from_static(b"2"),
                PutMode::Update(version).into(),
            )
            .await
            .map_err(cannot)?;
        self.store.delete(&path).await.map_err(cannot)?;
        Ok(())
    }

    /// The prefix, without leading or trailing `/`.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The object store.
    #[must_use]
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The key of `namespace`'s checkpoint: `<prefix>/<encoded namespace>.checkpoint`.
    ///
    /// # Errors
    /// [`StorageError::Encode`] when the key would be longer than [`MAX_KEY_BYTES`].
    pub fn key_of(&self, namespace: &str) -> Result<Path, StorageError> {
        let segment = name::encode(namespace, "");
        let path = self.path(&segment);
        if path.as_ref().len() > MAX_KEY_BYTES {
            return Err(StorageError::Encode {
                namespace: namespace.to_owned(),
                reason: format!(
                    "its key under `{}` would be {} bytes, over the {MAX_KEY_BYTES} that S3 accepts",
                    self.location,
                    path.as_ref().len()
                ),
            });
        }
        Ok(path)
    }

    /// `<prefix>/<segment>.checkpoint`, `segment` already encoded.
    fn path(&self, segment: &str) -> Path {
        self.child(&format!("{segment}{SUFFIX}"))
    }

    /// `<prefix>/<name>`, `name` a valid path segment of ours (`[A-Za-z0-9._%-]`, not `.` or
    /// `..`), which `Path::child` would percent-encode again.
    fn child(&self, name: &str) -> Path {
        let key = if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{name}", self.base)
        };
        // Both parts are valid already; the fallback is never taken.
        Path::parse(&key).unwrap_or_else(|_| self.base.clone().join(name))
    }

    fn origin(&self, namespace: &str) -> String {
        format!("`{}`, namespace `{namespace}`", self.location)
    }

    fn error(&self, doing: &str, path: &Path, source: object_store::Error) -> StorageError {
        StorageError::ObjectStore {
            origin: format!("{doing} `{}` in `{}`", path, self.location),
            transient: is_transient(&source),
            source: Box::new(source),
        }
    }

    fn known(&self) -> MutexGuard<'_, HashMap<String, Known>> {
        // Every change of the map is one call: a panic cannot leave it half-updated.
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The whole object of `namespace`, decoded, with its header and version; `None` when
    /// there is none.
    async fn read(
        &self,
        namespace: &str,
    ) -> Result<Option<(StoredCheckpoint, Integrity, Known, bytes::Bytes)>, StorageError> {
        let path = self.key_of(namespace)?;
        let result = match self.store.get(&path).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.error("read", &path, e)),
        };
        let version = UpdateVersion {
            e_tag: result.meta.e_tag.clone(),
            version: result.meta.version.clone(),
        };
        let bytes = result
            .bytes()
            .await
            .map_err(|e| self.error("read", &path, e))?;
        let origin = self.origin(namespace);
        let (head, body) = split(&bytes, &origin)?;
        let checkpoint = decode(&head, body, namespace, &origin)?;
        let integrity = checkpoint.verify(head.checksum, &origin)?;
        let known = Known {
            head: head.into_owned(),
            version,
        };
        Ok(Some((checkpoint, integrity, known, bytes)))
    }

    /// The header and version of `namespace`'s object, read from its first bytes; `None`
    /// when there is none. An unreadable header is `Some` with an unparsable position.
    async fn read_head(&self, namespace: &str, path: &Path) -> Result<Option<Known>, StorageError> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(0..HEAD_READ)),
            ..GetOptions::default()
        };
        let result = match self.store.get_opts(path, options).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.error("read the header of", path, e)),
        };
        let version = UpdateVersion {
            e_tag: result.meta.e_tag.clone(),
            version: result.meta.version.clone(),
        };
        let whole = result.meta.size <= HEAD_READ;
        let mut bytes = result
            .bytes()
            .await
            .map_err(|e| self.error("read the header of", path, e))?;
        if !whole && !bytes.contains(&b'\n') {
            // A header longer than the first read (a very long version text).
            let options = GetOptions {
                if_match: version.e_tag.clone(),
                ..GetOptions::default()
            };
            bytes = match self.store.get_opts(path, options).await {
                Ok(result) => result.bytes().await,
                Err(e) => Err(e),
            }
            .map_err(|e| self.error("read", path, e))?;
        }
        let head = split(&bytes, &self.origin(namespace)).map_or_else(
            |_| Head {
                krescent_checkpoint: LAYOUT,
                namespace: Cow::Owned(namespace.to_owned()),
                version: Cow::Borrowed(""),
                position: "unreadable".to_owned(),
                taken_at_micros: 0,
                checksum: 0,
                format: 0,
                epoch: None,
            },
            |(head, _)| head.into_owned(),
        );
        Ok(Some(Known { head, version }))
    }

    /// The object of `checkpoint` under `epoch`: its header line and its bucket.
    fn encode(
        &self,
        checkpoint: &StoredCheckpoint,
        epoch: Option<u64>,
    ) -> Result<(PutPayload, Head<'static>), StorageError> {
        let failed = |reason: String| StorageError::Encode {
            namespace: checkpoint.namespace.clone(),
            reason,
        };
        let head = Head {
            krescent_checkpoint: LAYOUT,
            namespace: Cow::Owned(checkpoint.namespace.clone()),
            version: Cow::Owned(checkpoint.version.as_str().to_owned()),
            position: checkpoint.position.to_string(),
            taken_at_micros: to_micros(checkpoint.taken_at),
            checksum: checkpoint.checksum(),
            format: self.format.number(),
            epoch,
        };
        let mut bytes = serde_json::to_vec(&head).map_err(|e| failed(e.to_string()))?;
        bytes.push(b'\n');
        let payload = match self.format {
            // The bucket's large values go out as they are, shared rather than copied.
            CheckpointFormat::MessagePack => packed::encode_shared(&checkpoint.bucket, bytes)
                .map_err(|e| failed(e.to_string()))?
                .into_iter()
                .collect(),
            CheckpointFormat::Json => {
                serde_json::to_writer(&mut bytes, &checkpoint.bucket)
                    .map_err(|e| failed(e.to_string()))?;
                PutPayload::from(bytes)
            }
        };
        Ok((payload, head))
    }

    /// Rewrites the stored object (`known`, `bytes`) with `epoch` in its header, on its
    /// version: a new lease holder's claim. `Ok(false)` when another write came first.
    async fn claim(
        &self,
        path: &Path,
        known: &Known,
        bytes: &[u8],
        epoch: u64,
    ) -> Result<Option<Known>, StorageError> {
        let origin = self.origin(&known.head.namespace);
        let (_, body) = split(bytes, &origin)?;
        let head = Head {
            epoch: Some(epoch),
            ..known.head.clone()
        };
        let claimed = rewrite(&head, body)?;
        let mode = PutMode::Update(known.version.clone());
        match self.store.put_opts(path, claimed.into(), mode.into()).await {
            Ok(put) => Ok(Some(Known {
                head,
                version: UpdateVersion {
                    e_tag: put.e_tag,
                    version: put.version,
                },
            })),
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => Ok(None),
            Err(e) => Err(self.error("claim", path, e)),
        }
    }

    /// The checkpoint of `namespace`, a leased storage raising the stored epoch to its own.
    async fn load_fenced(
        &self,
        namespace: &str,
        fence: &Fence,
    ) -> Result<Option<(StoredCheckpoint, Integrity)>, StorageError> {
        let path = self.key_of(namespace)?;
        for _ in 0..MAX_RACES {
            let Some((checkpoint, integrity, known, bytes)) = self.read(namespace).await? else {
                self.known().remove(namespace);
                return Ok(None);
            };
            let stored = known.head.epoch.unwrap_or(0);
            if stored > fence.epoch {
                return Err(fenced(fence, stored));
            }
            if known.head.epoch == Some(fence.epoch) {
                self.known().insert(namespace.to_owned(), known);
                return Ok(Some((checkpoint, integrity)));
            }
            if let Some(claimed) = self.claim(&path, &known, &bytes, fence.epoch).await? {
                self.known().insert(namespace.to_owned(), claimed);
                return Ok(Some((checkpoint, integrity)));
            }
        }
        Err(self.raced(namespace))
    }

    /// Keeps the stored checkpoint (`stored`, at a later position) but raises its epoch to
    /// `epoch`: a new lease holder's first write.
    async fn raise_epoch(
        &self,
        namespace: &str,
        path: &Path,
        stored: &Known,
        epoch: Option<u64>,
    ) -> Result<Attempt, StorageError> {
        let Some((_, _, now, bytes)) = self.read(namespace).await? else {
            return Ok(Attempt::Again(None));
        };
        if now.version != stored.version {
            return Ok(Attempt::Again(Some(now)));
        }
        match self
            .claim(path, &now, &bytes, epoch.unwrap_or_default())
            .await?
        {
            Some(claimed) => {
                self.known().insert(namespace.to_owned(), claimed);
                Ok(Attempt::Done)
            }
            None => Ok(Attempt::Again(None)),
        }
    }

    /// Whether a fenced storage's lease still holds (see [`Leases`](crate::fleet::Leases)),
    /// renewing it.
    #[cfg_attr(not(feature = "postgres"), allow(clippy::unused_async))]
    async fn check_lease(&self) -> Result<(), StorageError> {
        #[cfg(feature = "postgres")]
        if let (Some(fence), Some(leases)) = (&self.fence, &self.leases) {
            // A holder that lost its lease writes nothing more; a pause between this check and
            // the `PUT` is caught by the epoch, once the new holder has loaded.
            return match leases.still_held(fence).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(StorageError::Fenced {
                    namespace: fence.namespace.clone(),
                    epoch: fence.epoch,
                    current: None,
                }),
                Err(e) => Err(StorageError::Database(e)),
            };
        }
        Ok(())
    }

    /// One conditional `PUT` of `payload` over `stored` (none: the object must not exist).
    async fn put(
        &self,
        path: &Path,
        payload: PutPayload,
        head: Head<'static>,
        stored: Option<&Known>,
    ) -> Result<Attempt, StorageError> {
        let namespace = head.namespace.to_string();
        let mode = match stored {
            Some(stored) => PutMode::Update(stored.version.clone()),
            None => PutMode::Create,
        };
        match self
            .store
            .put_opts(path, payload.clone(), mode.into())
            .await
        {
            Ok(put) => {
                let version = UpdateVersion {
                    e_tag: put.e_tag,
                    version: put.version,
                };
                let mut known = self.known();
                if version.e_tag.is_some() || version.version.is_some() {
                    known.insert(namespace, Known { head, version });
                } else {
                    known.remove(&namespace);
                }
                Ok(Attempt::Done)
            }
            // Another writer came first: read what it wrote and decide again.
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. }
                | object_store::Error::NotFound { .. },
            ) => {
                self.known().remove(&namespace);
                Ok(Attempt::Again(None))
            }
            Err(
                e @ (object_store::Error::NotImplemented { .. }
                | object_store::Error::NotSupported { .. }),
            ) => {
                self.known().remove(&namespace);
                if self.fence.is_some() {
                    return Err(StorageError::CannotFence {
                        location: self.location.clone(),
                        reason: e.to_string(),
                    });
                }
                // A backend without conditional puts: the check before and one plain `PUT`
                // (never backwards for one writer at a time).
                self.store
                    .put_opts(path, payload, PutMode::Overwrite.into())
                    .await
                    .map(|_| Attempt::Done)
                    .map_err(|e| self.error("write", path, e))
            }
            Err(e) => {
                self.known().remove(&namespace);
                Err(self.error("write", path, e))
            }
        }
    }

    fn raced(&self, namespace: &str) -> StorageError {
        StorageError::ObjectStore {
            origin: self.origin(namespace),
            transient: true,
            source: format!("{MAX_RACES} concurrent writes in a row won the race").into(),
        }
    }
}

/// What a write attempt came to.
enum Attempt {
    /// Written, or nothing to write.
    Done,
    /// Another writer came first: again, knowing what is stored now, if it was read.
    Again(Option<Known>),
}

fn fenced(fence: &Fence, current: u64) -> StorageError {
    StorageError::Fenced {
        namespace: fence.namespace.clone(),
        epoch: fence.epoch,
        current: Some(current),
    }
}

/// The namespace of an object's file name, if it is a checkpoint's.
fn namespace_of(file_name: &str) -> Option<String> {
    name::decode(file_name, SUFFIX)
}

/// The object of `head` over a stored object's bucket bytes `body`: a claim's new epoch, a
/// rollback's retained checkpoint.
fn rewrite(head: &Head<'_>, body: &[u8]) -> Result<Vec<u8>, StorageError> {
    let mut object = serde_json::to_vec(head).map_err(|e| StorageError::Encode {
        namespace: head.namespace.to_string(),
        reason: e.to_string(),
    })?;
    object.push(b'\n');
    object.extend_from_slice(body);
    Ok(object)
}

/// An object's header and its bucket's bytes.
fn split<'a>(bytes: &'a [u8], origin: &str) -> Result<(Head<'a>, &'a [u8]), StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt {
        origin: origin.to_owned(),
        reason,
    };
    let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
        return Err(corrupt("no header line".to_owned()));
    };
    let (line, body) = (&bytes[..end], &bytes[end + 1..]);
    let head: Head<'a> =
        serde_json::from_slice(line).map_err(|e| corrupt(format!("undecodable header: {e}")))?;
    if head.krescent_checkpoint != LAYOUT {
        return Err(corrupt(format!(
            "unknown layout {} (this build reads {LAYOUT})",
            head.krescent_checkpoint
        )));
    }
    Ok((head, body))
}

/// The checkpoint of `head` and `body`, not yet checked against its checksum.
fn decode(
    head: &Head<'_>,
    body: &[u8],
    namespace: &str,
    origin: &str,
) -> Result<StoredCheckpoint, StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt {
        origin: origin.to_owned(),
        reason,
    };
    if head.namespace != namespace {
        return Err(corrupt(format!(
            "the object holds the checkpoint of `{}`",
            head.namespace
        )));
    }
    let position: Position = head
        .position
        .parse()
        .map_err(|e: crate::PositionParseError| corrupt(e.to_string()))?;
    let bucket: CheckpointBucket = match CheckpointFormat::from_number(head.format) {
        Some(CheckpointFormat::MessagePack) => {
            packed::decode(body).map_err(|e| corrupt(format!("undecodable bucket: {e}")))?
        }
        Some(CheckpointFormat::Json) => {
            serde_json::from_slice(body).map_err(|e| corrupt(format!("undecodable bucket: {e}")))?
        }
        None => {
            return Err(corrupt(format!(
                "unknown format {} (this build reads 1 and 2)",
                head.format
            )))
        }
    };
    Ok(StoredCheckpoint {
        namespace: namespace.to_owned(),
        version: CheckpointVersion::from_text(head.version.to_string()),
        position,
        taken_at: from_micros(head.taken_at_micros),
        bucket,
        piece: crate::checkpoint::Piece::Whole,
    })
}

/// Whether retrying may succeed: the connection failed, was cut or timed out, or the server
/// answered 5xx or 429 (`object_store` has already retried by its `RetryConfig`).
fn is_transient(error: &object_store::Error) -> bool {
    use object_store::client::{HttpError, HttpErrorKind};
    let object_store::Error::Generic { source, .. } = error else {
        return false;
    };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&**source);
    while let Some(e) = cause {
        if let Some(http) = e.downcast_ref::<HttpError>() {
            return matches!(
                http.kind(),
                HttpErrorKind::Connect
                    | HttpErrorKind::Request
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted
            );
        }
        if e.is::<std::io::Error>() {
            return true;
        }
        // `object_store`'s retry error (not a public type) says so of a status.
        let text = e.to_string();
        if text.contains("status code: 5") || text.contains("status code: 429") {
            return true;
        }
        cause = e.source();
    }
    false
}

#[async_trait::async_trait]
impl CheckpointStorage for ObjectStoreCheckpointStorage {
    /// The URL it was built from (`s3://bucket/prefix`), or the location [`new`](Self::new) was
    /// given.
    fn location(&self) -> Option<String> {
        Some(self.location.clone())
    }

    fn format(&self) -> CheckpointFormat {
        self.format
    }

    async fn load(&self, namespace: &str) -> Result<Option<StoredCheckpoint>, StorageError> {
        Ok(self
            .load_checked(namespace)
            .await?
            .map(|(checkpoint, _)| checkpoint))
    }

    async fn load_checked(
        &self,
        namespace: &str,
    ) -> Result<Option<(StoredCheckpoint, Integrity)>, StorageError> {
        if let Some(fence) = &self.fence {
            return self.load_fenced(namespace, fence).await;
        }
        Ok(self
            .read(namespace)
            .await?
            .map(|(checkpoint, integrity, _, _)| (checkpoint, integrity)))
    }

    async fn store(&self, checkpoint: &StoredCheckpoint) -> Result<(), StorageError> {
        let namespace = checkpoint.namespace.as_str();
        // It keeps no deltas (`keeps_deltas` is false): running models write whole checkpoints
        // here, and a delta handed in by hand is refused rather than stored as if whole.
        if let crate::checkpoint::Piece::Delta(link) = checkpoint.piece {
            return Err(StorageError::Chain {
                namespace: namespace.to_owned(),
                reason: format!(
                    "the object store keeps whole checkpoints only, not delta {} of the base at {}",
                    link.sequence, link.base
                ),
            });
        }
        let path = self.key_of(namespace)?;
        let mut encoded: Option<(Option<u64>, PutPayload, Head<'static>)> = None;
        let mut known = self.known().get(namespace).cloned();
        for _ in 0..MAX_RACES {
            // What this storage wrote last is only a guess of what is stored: good for a
            // conditional `PUT` (which fails if it is stale), not for deciding not to write.
            let (stored, remembered) = match known.take() {
                Some(known) => (Some(known), true),
                None => (self.read_head(namespace, &path).await?, false),
            };
            let stored_epoch = stored.as_ref().and_then(|s| s.head.epoch);
            // A fenced write carries its epoch; an unfenced one keeps the stored epoch.
            let epoch = match (&self.fence, stored_epoch) {
                (Some(fence), Some(current)) if current > fence.epoch && !remembered => {
                    return Err(fenced(fence, current));
                }
                (Some(fence), _) => Some(fence.epoch),
                (None, stored) => stored,
            };
            if let Some(stored) = &stored {
                if !stored.head.replaced_by(checkpoint) {
                    if remembered {
                        continue;
                    }
                    if stored_epoch >= epoch {
                        return Ok(());
                    }
                    match self.raise_epoch(namespace, &path, stored, epoch).await? {
                        Attempt::Done => return Ok(()),
                        Attempt::Again(now) => {
                            known = now;
                            continue;
                        }
                    }
                }
            }
            self.check_lease().await?;
            let (payload, head) = match &encoded {
                Some((e, payload, head)) if *e == epoch => (payload.clone(), head.clone()),
                _ => {
                    let (payload, head) = self.encode(checkpoint, epoch)?;
                    encoded = Some((epoch, payload.clone(), head.clone()));
                    (payload, head)
                }
            };
            if let Some(stored) = &stored {
                self.retain(&path, stored).await?;
            }
            if let Attempt::Done = self.put(&path, payload, head, stored.as_ref()).await? {
                self.trim(namespace).await;
                return Ok(());
            }
        }
        Err(self.raced(namespace))
    }

    async fn delete(&self, namespace: &str) -> Result<bool, StorageError> {
        let path = self.key_of(namespace)?;
        self.known().remove(namespace);
        // S3 answers a delete of a missing key with success: ask first, to say whether there
        // was one.
        match self.store.head(&path).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(self.error("delete", &path, e)),
        }
        match self.store.delete(&path).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error("delete", &path, e)),
        }
    }

    async fn list(&self) -> Result<Vec<String>, StorageError> {
        let prefix = (!self.prefix.is_empty()).then(|| self.base.clone());
        let listed = self
            .store
            .list_with_delimiter(prefix.as_ref())
            .await
            .map_err(|e| self.error("list", prefix.as_ref().unwrap_or(&Path::default()), e))?;
        let mut namespaces: Vec<String> = listed
            .objects
            .iter()
            .filter_map(|object| object.location.filename().and_then(namespace_of))
            .collect();
        namespaces.sort();
        Ok(namespaces)
    }

    #[cfg(feature = "postgres")]
    fn leases(&self) -> Option<crate::fleet::Leases> {
        self.leases.clone()
    }

    fn fenced(&self, fence: &Fence) -> Option<Arc<dyn CheckpointStorage>> {
        Some(Arc::new(ObjectStoreCheckpointStorage {
            fence: Some(Arc::new(fence.clone())),
            known: Arc::default(),
            ..self.clone()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip_to_namespaces() {
        let long = "é".repeat(200);
        for namespace in [
            "books.available",
            "a/b",
            "..",
            ".",
            "ü%",
            ".hidden",
            "",
            "nul\0byte",
            "model#2/4",
            "%2F",
            long.as_str(),
        ] {
            let segment = name::encode(namespace, "");
            assert!(
                !segment.contains('/') && !segment.starts_with('.'),
                "{segment}"
            );
            let name = format!("{segment}{SUFFIX}");
            assert_eq!(namespace_of(&name).as_deref(), Some(namespace));
            let path = Path::parse(format!("pre/fix/{name}")).expect("a valid path");
            assert_eq!(path.filename(), Some(name.as_str()));
        }
        assert_eq!(namespace_of("%2ekrescent.checkpoint"), None);
        assert_eq!(namespace_of("krescent-probe"), None);
        assert_eq!(namespace_of("x%2.checkpoint"), None);
    }
}
