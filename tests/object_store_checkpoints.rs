//! Checkpoints in object storage: the storage contract against a real S3 server (`moto`,
//! started by the tests on a loopback port) and `object_store`'s in-memory store; hostile
//! namespaces; fencing by the lease's epoch; the server going away mid-write.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use krescent::checkpoint::storage::object_store::aws::AmazonS3Builder;
use krescent::checkpoint::storage::object_store::memory::InMemory;
use krescent::checkpoint::storage::object_store::path::Path;
use krescent::checkpoint::storage::object_store::{
    ObjectStore, ObjectStoreExt as _, PutPayload, RetryConfig,
};
use krescent::checkpoint::{
    CheckpointBucket, CheckpointFormat, CheckpointStorage, CheckpointVersion, Integrity,
    ObjectStoreCheckpointStorage, StorageError, StoredCheckpoint,
};
use krescent::fleet::Fence;
use krescent::Position;
use krescent_testkit::s3::{fresh_storage, MotoServer, REGION};

mod s3 {
    krescent_testkit::storage_contract!(krescent_testkit::s3::fresh_storage());
}

mod in_memory {
    krescent_testkit::storage_contract!(async {
        krescent::checkpoint::ObjectStoreCheckpointStorage::new(
            std::sync::Arc::new(
                krescent::checkpoint::storage::object_store::memory::InMemory::new(),
            ),
            "some/prefix",
            "memory://contract",
        )
    });
}

fn checkpoint(namespace: &str, position: u64) -> StoredCheckpoint {
    let mut bucket = CheckpointBucket::with_format(CheckpointFormat::MessagePack);
    bucket.put("position", &position).expect("put");
    bucket
        .put("name", &format!("at {position} — ✓"))
        .expect("put");
    bucket.put_bytes("raw", &[0, 1, 255]);
    let mut checkpoint = StoredCheckpoint::new(
        namespace,
        CheckpointVersion::from_text("v1"),
        Position::new(position),
        bucket,
    );
    checkpoint.taken_at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456 + position);
    checkpoint
}

/// Every key of the storage's bucket.
async fn all_keys(storage: &ObjectStoreCheckpointStorage) -> Vec<String> {
    let mut keys = Vec::new();
    let mut prefixes: Vec<Option<Path>> = vec![None];
    while let Some(prefix) = prefixes.pop() {
        let listed = storage
            .object_store()
            .list_with_delimiter(prefix.as_ref())
            .await
            .expect("list the bucket");
        keys.extend(listed.objects.iter().map(|o| o.location.to_string()));
        prefixes.extend(listed.common_prefixes.into_iter().map(Some));
    }
    keys.sort();
    keys
}

/// Namespaces that would escape a naive key layout, or that S3 or a path would mangle, and
/// `long` ones.
fn hostile_namespaces(long: &[&str]) -> Vec<String> {
    [
        "",
        ".",
        "..",
        "../..",
        "../../etc/passwd",
        "/",
        "//",
        "/leading",
        "trailing/",
        "a/../b",
        "a//b",
        "%",
        "%%",
        "%2F",
        "%2e%2e",
        "%zz",
        "100%",
        "\0",
        "nul\0in",
        "\n",
        "\r\n",
        "\t",
        "\u{7f}",
        "\u{feff}bom",
        "😀",
        "é",
        "\\",
        "..\\..\\x",
        "?query",
        "#fragment",
        "a#2/4",
        "*",
        "[a]",
        "{b}",
        "~user",
        "$HOME",
        "`cmd`",
        "'quoted'",
        "\"dq\"",
        "<>",
        "a b",
        " ",
        "  ",
        ".hidden",
        "x.checkpoint",
        "krescent-probe",
        "CON",
        "nul",
        ":colon",
        "a:b",
        "+",
        "=",
        "&",
        "@",
        "!",
        "^",
        "|",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(long.iter().map(|name| (*name).to_owned()))
    .collect()
}

/// Namespaces that would escape a naive key layout, or that S3 or a path would mangle: each
/// round-trips, or is refused with a typed error before anything is written; every key stays
/// under the prefix, and an object beside the prefix is neither listed nor touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_namespaces_round_trip_or_are_refused_and_stay_under_the_prefix() {
    let storage = fresh_storage().await;
    let beside = Path::from("other/x.checkpoint");
    storage
        .object_store()
        .put(&beside, PutPayload::from_static(b"not ours"))
        .await
        .expect("put beside");
    let (fits, kilobyte_ascii, kilobyte_utf8) =
        ("x".repeat(900), "n".repeat(1024), "é".repeat(512));
    let hostile = hostile_namespaces(&[&fits, &kilobyte_ascii, &kilobyte_utf8]);
    let mut accepted = Vec::new();
    for (i, namespace) in hostile.iter().enumerate() {
        let stored = checkpoint(namespace, i as u64 + 1);
        match storage.store(&stored).await {
            Ok(()) => {
                let loaded = storage.load_checked(namespace).await.expect("load");
                assert!(
                    matches!(&loaded, Some((c, Integrity::Verified { .. })) if *c == stored),
                    "{namespace:?}: {loaded:?}"
                );
                accepted.push(namespace.clone());
            }
            Err(StorageError::Encode {
                namespace: named,
                reason,
            }) => {
                assert_eq!(&named, namespace);
                assert!(reason.contains("1024"), "{reason}");
                assert!(matches!(
                    storage.load(namespace).await,
                    Err(StorageError::Encode { .. })
                ));
                assert!(matches!(
                    storage.delete(namespace).await,
                    Err(StorageError::Encode { .. })
                ));
            }
            Err(other) => panic!("{namespace:?}: {other}"),
        }
    }
    // The long ones are refused (their keys would pass S3's 1024 bytes), the rest accepted.
    assert!(accepted.contains(&fits));
    assert!(!accepted.contains(&kilobyte_ascii) && !accepted.contains(&kilobyte_utf8));
    assert_eq!(accepted.len(), hostile.len() - 2);
    accepted.sort();
    assert_eq!(storage.list().await.expect("list"), accepted);
    let keys = all_keys(&storage).await;
    assert_eq!(keys.len(), accepted.len() + 1, "{keys:?}");
    for key in &keys {
        assert!(
            key.starts_with("checkpoints/") && key.ends_with(".checkpoint")
                || *key == beside.to_string(),
            "a key outside the prefix: {key}"
        );
        assert_eq!(key.matches('/').count(), 1, "{key}");
    }
    storage.clear().await.expect("clear");
    assert_eq!(all_keys(&storage).await, [beside.to_string()]);
    let kept = storage
        .object_store()
        .get(&beside)
        .await
        .expect("get")
        .bytes()
        .await;
    assert_eq!(&kept.expect("bytes")[..], b"not ours");
}

/// Both formats round-trip; `MessagePack` is the default; a JSON checkpoint is readable JSON (a
/// header line, then the bucket), and a changed byte is found by the checksum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_formats_round_trip_and_a_changed_byte_is_corrupt() {
    let messagepack = fresh_storage().await;
    assert_eq!(messagepack.format(), CheckpointFormat::MessagePack);
    let json = ObjectStoreCheckpointStorage::new(
        messagepack.object_store().clone(),
        messagepack.prefix(),
        "same bucket, json",
    )
    .with_format(CheckpointFormat::Json);
    messagepack
        .store(&checkpoint("packed", 1))
        .await
        .expect("store");
    json.store(&checkpoint("text", 2)).await.expect("store");
    // Either storage reads either format.
    for storage in [&messagepack, &json] {
        assert_eq!(
            storage.load("packed").await.expect("load"),
            Some(checkpoint("packed", 1))
        );
        assert_eq!(
            storage.load("text").await.expect("load"),
            Some(checkpoint("text", 2))
        );
    }
    let key = json.key_of("text").expect("key");
    let bytes = json
        .object_store()
        .get(&key)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes");
    let text = std::str::from_utf8(&bytes).expect("JSON text");
    let (head, bucket) = text.split_once('\n').expect("a header line");
    let head: serde_json::Value = serde_json::from_str(head).expect("the header is JSON");
    assert_eq!(head["namespace"], "text");
    assert_eq!(head["position"], "2");
    assert_eq!(head["checksum"], checkpoint("text", 2).checksum());
    let bucket: serde_json::Value = serde_json::from_str(bucket).expect("the bucket is JSON");
    assert!(bucket["position"].is_object(), "{bucket}");
    // One changed byte of the value.
    let changed = text.replace("at 2 —", "at 3 —");
    json.object_store()
        .put(&key, PutPayload::from(changed.into_bytes()))
        .await
        .expect("put");
    let error = json.load("text").await.expect_err("changed");
    assert!(error.is_corrupt(), "{error}");
    assert!(error.to_string().contains("checksum"), "{error}");
    // Garbage under a checkpoint's key is corrupt too, never a panic.
    for garbage in [
        &b""[..],
        b"\n",
        b"{}\n",
        b"no header",
        b"{\"krescent_checkpoint\":9}\n",
    ] {
        json.object_store()
            .put(&key, PutPayload::from(garbage.to_vec()))
            .await
            .expect("put");
        assert!(json.load("text").await.expect_err("garbage").is_corrupt());
    }
    // A store replaces an unreadable object.
    json.store(&checkpoint("text", 1)).await.expect("store");
    assert_eq!(
        json.load("text").await.expect("load"),
        Some(checkpoint("text", 1))
    );
}

fn fence(namespace: &str, holder: &str, epoch: u64) -> Fence {
    Fence {
        namespace: namespace.to_owned(),
        holder: holder.to_owned(),
        epoch,
        ttl: Duration::from_secs(3),
    }
}

/// The position stored now.
async fn stored_position(storage: &ObjectStoreCheckpointStorage, namespace: &str) -> u64 {
    storage
        .load(namespace)
        .await
        .expect("load")
        .expect("a checkpoint")
        .position
        .get()
}

/// A holder paused past its lease (driven here through its fence: the lease of epoch 1, then
/// a new holder's of epoch 2): once the new holder has loaded its checkpoint, every write of
/// the old one is `Fenced`, whether it remembers the object's `ETag` from its last write or
/// reads it anew; the stored position never moves backwards. Without a checkpoint to load, the
/// old holder's write before the new holder's first one lands, and the new holder's first
/// write raises the epoch while it keeps the later position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_ex_holders_write_is_fenced_and_the_position_never_moves_back() {
    let storage = fresh_storage().await;
    let ns = "fenced.model";
    let old = storage.fenced(&fence(ns, "old", 1)).expect("fences");
    assert_eq!(old.load(ns).await.expect("load"), None);
    old.store(&checkpoint(ns, 10)).await.expect("store");
    old.store(&checkpoint(ns, 20)).await.expect("store");
    // The old holder pauses; the new one takes the lease and loads.
    let new = storage.fenced(&fence(ns, "new", 2)).expect("fences");
    assert_eq!(
        new.load(ns).await.expect("load").map(|c| c.position),
        Some(Position::new(20))
    );
    // The old holder resumes: its PUT names the ETag of its last write, which is gone.
    let error = old.store(&checkpoint(ns, 30)).await.expect_err("fenced");
    assert!(
        matches!(&error, StorageError::Fenced { namespace, epoch: 1, current: Some(2) } if namespace == ns),
        "{error:?}"
    );
    assert!(!error.is_transient());
    assert_eq!(stored_position(&storage, ns).await, 20);
    // Another instance of the old holder's storage (no ETag remembered) is fenced too.
    let old_again = storage.fenced(&fence(ns, "old", 1)).expect("fences");
    assert!(matches!(
        old_again.store(&checkpoint(ns, 40)).await,
        Err(StorageError::Fenced {
            epoch: 1,
            current: Some(2),
            ..
        })
    ));
    // The new holder goes on; never backwards.
    new.store(&checkpoint(ns, 25)).await.expect("store");
    new.store(&checkpoint(ns, 22)).await.expect("store");
    assert_eq!(stored_position(&storage, ns).await, 25);
    // An unfenced storage's write keeps the epoch: the old holder stays fenced.
    storage.store(&checkpoint(ns, 26)).await.expect("store");
    assert!(matches!(
        old.store(&checkpoint(ns, 50)).await,
        Err(StorageError::Fenced { .. })
    ));
    assert_eq!(stored_position(&storage, ns).await, 26);

    // No checkpoint when the new holder loads.
    let ns = "fenced.fresh";
    let old = storage.fenced(&fence(ns, "old", 1)).expect("fences");
    let new = storage.fenced(&fence(ns, "new", 2)).expect("fences");
    assert_eq!(new.load(ns).await.expect("load"), None);
    old.store(&checkpoint(ns, 40))
        .await
        .expect("before the new holder's first write");
    new.store(&checkpoint(ns, 35)).await.expect("store");
    assert_eq!(stored_position(&storage, ns).await, 40);
    assert!(matches!(
        old.store(&checkpoint(ns, 50)).await,
        Err(StorageError::Fenced {
            epoch: 1,
            current: Some(2),
            ..
        })
    ));
    assert_eq!(stored_position(&storage, ns).await, 40);
    new.store(&checkpoint(ns, 45)).await.expect("store");
    assert_eq!(stored_position(&storage, ns).await, 45);
}

/// Writers racing on one namespace (conditional puts, retried after a lost race): the stored
/// position only ever grows, and ends at the highest written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_never_move_the_position_backwards() {
    let storage = fresh_storage().await;
    let ns = "raced";
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let reader = ObjectStoreCheckpointStorage::new(
            storage.object_store().clone(),
            storage.prefix(),
            "reader",
        );
        let done = done.clone();
        tokio::spawn(async move {
            let mut last = 0;
            let mut backwards = Vec::new();
            while !done.load(Ordering::SeqCst) {
                if let Some(c) = reader.load(ns).await.expect("load") {
                    if c.position.get() < last {
                        backwards.push((last, c.position.get()));
                    }
                    last = last.max(c.position.get());
                }
            }
            backwards
        })
    };
    let next = Arc::new(AtomicU64::new(1));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let writer = ObjectStoreCheckpointStorage::new(
                storage.object_store().clone(),
                storage.prefix(),
                "writer",
            );
            let next = next.clone();
            tokio::spawn(async move {
                for _ in 0..15 {
                    let position = next.fetch_add(1, Ordering::SeqCst);
                    writer
                        .store(&checkpoint(ns, position))
                        .await
                        .expect("store");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    done.store(true, Ordering::SeqCst);
    assert_eq!(watcher.await.expect("watcher"), Vec::<(u64, u64)>::new());
    assert_eq!(stored_position(&storage, ns).await, 60);
}

/// A TCP proxy in front of the S3 server that can be cut (every connection closed, the port
/// refusing) and started again on the same port: the server "goes away" without `moto`
/// losing its objects, which a real restart of it would.
struct Proxy {
    port: u16,
    upstream: std::net::SocketAddr,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    forwarded: Arc<AtomicU64>,
}

impl Proxy {
    async fn start(upstream: std::net::SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let proxy = Proxy {
            port,
            upstream,
            tasks: Arc::default(),
            forwarded: Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (upstream, tasks, forwarded) =
            (self.upstream, self.tasks.clone(), self.forwarded.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let forwarded = forwarded.clone();
                let connection = tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut from_client, mut to_client) = client.split();
                    let (mut from_server, mut to_server) = {
                        let server = server;
                        server.into_split()
                    };
                    let up = async {
                        let mut buffer = vec![0; 64 * 1024];
                        loop {
                            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                            let n = match from_client.read(&mut buffer).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            forwarded.fetch_add(n as u64, Ordering::SeqCst);
                            if to_server.write_all(&buffer[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    let down = tokio::io::copy(&mut from_server, &mut to_client);
                    tokio::select! {
                        () = up => {}
                        _ = down => {}
                    }
                });
                tasks.lock().expect("lock").push(connection);
            }
        });
        self.tasks.lock().expect("lock").push(accept);
    }

    /// Closes every connection and the port.
    fn cut(&self) {
        for task in self.tasks.lock().expect("lock").drain(..) {
            task.abort();
        }
    }

    /// Listens on the same port again.
    async fn restart(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind the same port again");
        self.serve(listener);
    }
}

/// The server goes away in the middle of a large checkpoint's `PUT` and comes back: the write
/// fails with a transient error, the stored checkpoint is the previous one, whole and verified,
/// and the write retried succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_going_away_mid_write_is_transient_and_leaves_a_whole_checkpoint() {
    let server = tokio::task::spawn_blocking(MotoServer::shared)
        .await
        .expect("server");
    let bucket = tokio::task::spawn_blocking(|| MotoServer::shared().create_bucket())
        .await
        .expect("bucket");
    let proxy = Proxy::start(server.address()).await;
    let retry = RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(2),
        ..RetryConfig::default()
    };
    let store = AmazonS3Builder::new()
        .with_bucket_name(&bucket)
        .with_region(REGION)
        .with_endpoint(format!("http://127.0.0.1:{}", proxy.port))
        .with_allow_http(true)
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_retry(retry)
        .build()
        .expect("store");
    let storage = ObjectStoreCheckpointStorage::new(Arc::new(store), "cut", "s3 via a proxy");
    let ns = "large";
    let small = checkpoint(ns, 1);
    storage.store(&small).await.expect("store");
    let mut large = checkpoint(ns, 2);
    let noise: Vec<u8> = (0..40_000_000_u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
        .collect();
    large.bucket.put_bytes("noise", &noise);
    let write = {
        let (storage, large) = (storage.clone(), large.clone());
        tokio::spawn(async move { storage.store(&large).await })
    };
    // Cut once a few MB of the PUT went through.
    let start = proxy.forwarded.load(Ordering::SeqCst);
    while proxy.forwarded.load(Ordering::SeqCst) < start + 4_000_000 {
        assert!(
            !write.is_finished(),
            "the write finished before it could be cut"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    proxy.cut();
    let error = write.await.expect("task").expect_err("cut mid-write");
    assert!(error.is_transient(), "{error}");
    assert!(
        matches!(
            error,
            StorageError::ObjectStore {
                transient: true,
                ..
            }
        ),
        "{error:?}"
    );
    // Still away: reads fail, transiently.
    assert!(storage.load(ns).await.expect_err("away").is_transient());
    proxy.restart().await;
    let loaded = storage.load_checked(ns).await.expect("load");
    assert!(
        matches!(&loaded, Some((c, Integrity::Verified { .. })) if *c == small),
        "not the previous checkpoint, whole"
    );
    storage.store(&large).await.expect("the retried write");
    assert_eq!(storage.load(ns).await.expect("load"), Some(large));
}

/// A storage built from its URL and options (as from the environment: `AWS_ENDPOINT_URL`,
/// region, credentials) names its location, and the same URL reaches the same checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_from_a_url_reaches_the_same_checkpoints() {
    let (bucket, options) = tokio::task::spawn_blocking(|| {
        let server = MotoServer::shared();
        (server.create_bucket(), server.options())
    })
    .await
    .expect("server");
    let url = format!("s3://{bucket}/a/b/");
    let one = ObjectStoreCheckpointStorage::from_url_with(&url, options.clone()).expect("storage");
    assert_eq!(
        one.location().as_deref(),
        Some(format!("s3://{bucket}/a/b").as_str())
    );
    one.store(&checkpoint("m", 3)).await.expect("store");
    let two = ObjectStoreCheckpointStorage::from_url_with(&url, options.clone()).expect("storage");
    assert_eq!(two.list().await.expect("list"), ["m"]);
    assert_eq!(
        two.key_of("m").expect("key").to_string(),
        "a/b/m.checkpoint"
    );
    let root =
        ObjectStoreCheckpointStorage::from_url_with(&format!("s3://{bucket}"), options.clone())
            .expect("storage");
    assert!(root.list().await.expect("list").is_empty());
    assert!(matches!(
        ObjectStoreCheckpointStorage::from_url_with("gs://bucket/x", options.clone()),
        Err(StorageError::ObjectStore {
            transient: false,
            ..
        })
    ));
    assert!(matches!(
        ObjectStoreCheckpointStorage::from_url_with(&url, [("no_such_option", "1")]),
        Err(StorageError::ObjectStore { .. })
    ));
    // Fencing needs conditional puts: checked, and refused where they are disabled.
    one.check_fencing()
        .await
        .expect("moto has conditional puts");
    // The probe is gone: the bucket holds the one checkpoint.
    assert_eq!(all_keys(&one).await, ["a/b/m.checkpoint"]);
    let mut disabled = options;
    disabled.push(("aws_conditional_put", "disabled".to_owned()));
    let cannot = ObjectStoreCheckpointStorage::from_url_with(&url, disabled).expect("storage");
    let error = cannot
        .check_fencing()
        .await
        .expect_err("no conditional puts");
    assert!(
        matches!(error, StorageError::CannotFence { .. }),
        "{error:?}"
    );
    // In-memory has them.
    ObjectStoreCheckpointStorage::new(Arc::new(InMemory::new()), "", "memory")
        .check_fencing()
        .await
        .expect("in-memory has conditional puts");
}

/// A backend without conditional puts still keeps checkpoints (one plain `PUT` after the
/// never-backwards check), but cannot fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_conditional_puts_unfenced_writes_work_and_fenced_ones_are_refused() {
    let (bucket, mut options) = tokio::task::spawn_blocking(|| {
        let server = MotoServer::shared();
        (server.create_bucket(), server.options())
    })
    .await
    .expect("server");
    options.push(("aws_conditional_put", "disabled".to_owned()));
    let storage = ObjectStoreCheckpointStorage::from_url_with(&format!("s3://{bucket}/p"), options)
        .expect("storage");
    storage.store(&checkpoint("m", 2)).await.expect("store");
    storage.store(&checkpoint("m", 1)).await.expect("store");
    assert_eq!(stored_position(&storage, "m").await, 2);
    let fenced = storage.fenced(&fence("m", "h", 1)).expect("fences");
    assert!(matches!(
        fenced.store(&checkpoint("m", 3)).await,
        Err(StorageError::CannotFence { .. })
    ));
}

mod leased {
    //! A leased in-memory model checkpointing to the bucket, its leases in PostgreSQL.

    use std::time::Duration;

    use krescent::checkpoint::{CheckpointStorage, ObjectStoreCheckpointStorage};
    use krescent::fleet::LeaseConfig;
    use krescent::prelude::*;
    use krescent::store::PostgresEventStore;
    use krescent::{tokio_postgres, Krescent, Status};
    use krescent_testkit::postgres::fresh_database;
    use krescent_testkit::s3::fresh_storage;

    #[derive(Event, Serialize, Deserialize)]
    #[event(name = "bucket.tick")]
    struct Tick {
        n: u64,
    }

    #[derive(EventModel, Default, Debug)]
    #[model(name = "bucket.counted", exclusive)]
    #[checkpoint(strategy = "always", storage = "bucket")]
    struct Counted {
        #[checkpoint]
        count: u64,
    }

    #[krescent::handlers]
    impl Counted {
        fn tick(&mut self, _: &Tick) {
            self.count += 1;
        }
    }

    const FAST: LeaseConfig = LeaseConfig {
        ttl: Duration::from_secs(1),
        heartbeat: Duration::from_millis(300),
        poll: Duration::from_millis(50),
    };

    async fn append(krescent: &Krescent<PostgresEventStore>, from: u64, count: u64) -> Position {
        let events = (from..from + count)
            .map(|n| NewEvent::new(&Tick { n }).expect("encode"))
            .collect();
        krescent
            .store()
            .append("ticks", ExpectedVersion::Any, events)
            .await
            .expect("append");
        Position::new(from + count)
    }

    async fn wait_status<M: EventModel>(running: &krescent::Running<M>, status: Status) {
        let mut changes = running.status_changes();
        tokio::time::timeout(Duration::from_secs(10), changes.wait_for(|s| *s == status))
            .await
            .unwrap_or_else(|_| panic!("status stayed {}, not {status}", running.status()))
            .expect("the task is alive");
    }

    /// The epoch in the header of the model's object.
    async fn stored_epoch(bucket: &ObjectStoreCheckpointStorage) -> Option<u64> {
        use krescent::checkpoint::storage::object_store::ObjectStoreExt as _;
        let key = bucket.key_of("bucket.counted").expect("key");
        let bytes = bucket
            .object_store()
            .get(&key)
            .await
            .ok()?
            .bytes()
            .await
            .ok()?;
        let line = bytes.split(|&b| b == b'\n').next()?;
        let head: serde_json::Value = serde_json::from_slice(line).ok()?;
        head["epoch"].as_u64()
    }

    /// Waits until the model's checkpoint is at `position` under `epoch`.
    async fn wait_stored(bucket: &ObjectStoreCheckpointStorage, position: Position, epoch: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let at = bucket
                .load("bucket.counted")
                .await
                .expect("load")
                .map(|c| c.position);
            let stored = stored_epoch(bucket).await;
            if at == Some(position) && stored == Some(epoch) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the checkpoint is at {at:?} under epoch {stored:?}, not {position} under {epoch}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Two instances: the second waits as a standby, takes over when the first stops, restores
    /// from the bucket and raises the object's epoch; after a takeover behind the holder's back
    /// (as after a pause past its lease), the holder's next checkpoint write is fenced and the
    /// stored position does not move.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leased_model_checkpoints_to_the_bucket_and_a_stale_holder_is_fenced() {
        let db = fresh_database().await;
        let store = db.event_store().await;
        let postgres = db.checkpoint_storage().await;
        let bucket = fresh_storage()
            .await
            .with_leases(&postgres)
            .await
            .expect("moto has conditional puts");
        assert!(bucket.leases().is_some());
        let mut krescent = Krescent::new(store).with_storage("bucket", bucket.clone());
        krescent
            .configure::<Counted>()
            .lease(FAST)
            .expect("checkpointed");
        let head = append(&krescent, 0, 4).await;
        let a = krescent.stream(Counted::default());
        a.reached(head).await.expect("a runs");
        let b = krescent.stream(Counted::default());
        wait_status(&b, Status::Standby).await;
        wait_stored(&bucket, head, 1).await;
        let a = a.shutdown().await.expect("a");
        assert_eq!(a.model.count, 4);
        wait_status(&b, Status::Running).await;
        let head = append(&krescent, 4, 2).await;
        b.reached(head).await.expect("b runs");
        wait_stored(&bucket, head, 2).await;

        // Another instance takes the lease behind b's back.
        let client: tokio_postgres::Client = db.client().await;
        let updated = client
            .execute(
                "UPDATE krescent_leases SET holder = 'intruder', epoch = epoch + 1, expires_at = clock_timestamp() + interval '1 hour' WHERE namespace = 'bucket.counted'",
                &[],
            )
            .await
            .expect("take over");
        assert_eq!(updated, 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut from = 6;
        while !b.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the fenced model kept running"
            );
            append(&krescent, from, 1).await;
            from += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let error = b.shutdown().await.expect_err("fenced");
        assert!(matches!(error, Error::Fenced { epoch: 2, .. }), "{error:?}");
        assert_eq!(
            bucket
                .load("bucket.counted")
                .await
                .expect("load")
                .map(|c| c.position),
            Some(head),
            "a fenced writer moved the checkpoint"
        );
    }
}

/// `krescent --checkpoints s3://…` lists, shows and deletes the checkpoints of a bucket,
/// configured from the standard AWS environment; the data directory gives the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_shows_and_deletes_checkpoints_in_a_bucket() {
    use std::process::{Command, Stdio};
    let storage = fresh_storage().await;
    storage
        .store(&checkpoint("books.available", 7))
        .await
        .expect("store");
    storage
        .store(&checkpoint("a/b #2", 3))
        .await
        .expect("store");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    {
        let store = krescent::store::FileEventStore::open(dir.path().join("events")).expect("open");
        let events = (0..9)
            .map(|n| krescent::NewEvent::from_json("tick", &format!("{{\"n\":{n}}}")))
            .collect::<Result<Vec<_>, _>>()
            .expect("events");
        krescent::store::EventStore::append(
            &store,
            "s",
            krescent::store::ExpectedVersion::Any,
            events,
        )
        .await
        .expect("append");
    }
    std::fs::create_dir(dir.path().join("checkpoints")).expect("mkdir");
    let url = format!(
        "s3://{}/{}",
        storage
            .location()
            .expect("location")
            .trim_start_matches("s3://")
            .split('/')
            .next()
            .expect("bucket"),
        storage.prefix()
    );
    let binary = krescent_testkit::examples::workspace_binary("krescent-cli", "krescent");
    let endpoint = tokio::task::spawn_blocking(|| MotoServer::shared().endpoint())
        .await
        .expect("server");
    let krescent = |args: &[&str]| {
        let output = Command::new(&binary)
            .env_remove("DATABASE_URL")
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_REGION", REGION)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--checkpoints", &url, "--json"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run krescent");
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&output.stdout).expect("JSON")
    };
    let listed = krescent(&["checkpoints", "list"]);
    let rows = listed["checkpoints"].as_array().expect("rows");
    let names: Vec<&str> = rows
        .iter()
        .filter_map(|r| r["namespace"].as_str())
        .collect();
    assert_eq!(names, ["a/b #2", "books.available"]);
    assert_eq!(rows[1]["lag"], 2);
    assert_eq!(rows[1]["integrity"], "verified");
    let shown = krescent(&["checkpoints", "show", "books.available"]);
    assert_eq!(shown["position"], 7);
    let deleted = krescent(&["checkpoints", "delete", "a/b #2", "--yes"]);
    assert_eq!(deleted["deleted"], true);
    assert_eq!(storage.list().await.expect("list"), ["books.available"]);
}

/// Retention: the last `keep` replaced checkpoints stay beside the current one, oldest deleted
/// first, out of `list`'s sight; a rollback makes one current again (retaining the one it
/// replaces), checks it first, and keeps the highest epoch so a paused ex-holder stays fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_checkpoints_are_kept_trimmed_and_rolled_back_to() {
    let storage = fresh_storage().await.with_retention(2);
    let ns = "kept/model #1";
    let old = storage.fenced(&fence(ns, "old", 1)).expect("fences");
    for position in [10, 20, 30, 40, 50] {
        old.store(&checkpoint(ns, position)).await.expect("store");
    }
    let retained = storage.retained(ns).await.expect("retained");
    let positions: Vec<u64> = retained.iter().map(|r| r.position.get()).collect();
    assert_eq!(positions, [30, 40], "the newest two replaced, oldest first");
    assert_eq!(
        retained[0].taken_at,
        checkpoint(ns, 30).taken_at,
        "named after the checkpoint's time"
    );
    assert_eq!(storage.list().await.expect("list"), [ns]);
    let keys = all_keys(&storage).await;
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(
        keys.iter().all(|k| k.starts_with(storage.prefix())),
        "{keys:?}"
    );

    // A new holder takes the lease; the operator rolls back to position 30 (written at epoch 1).
    let new = storage.fenced(&fence(ns, "new", 2)).expect("fences");
    assert_eq!(
        new.load(ns).await.expect("load").map(|c| c.position.get()),
        Some(50)
    );
    let restored = storage
        .roll_back(ns, &retained[0])
        .await
        .expect("roll back");
    assert_eq!(restored, checkpoint(ns, 30));
    assert_eq!(
        storage.load(ns).await.expect("load"),
        Some(checkpoint(ns, 30))
    );
    let positions: Vec<u64> = storage
        .retained(ns)
        .await
        .expect("retained")
        .iter()
        .map(|r| r.position.get())
        .collect();
    assert_eq!(positions, [40, 50], "the replaced 50 retained, 30 trimmed");
    // The ex-holder is still fenced: the rolled-back object kept epoch 2.
    assert!(matches!(
        old.store(&checkpoint(ns, 60)).await,
        Err(StorageError::Fenced {
            epoch: 1,
            current: Some(2),
            ..
        })
    ));
    // A damaged retained checkpoint is refused, and the current one stays.
    let damaged = storage.retained(ns).await.expect("retained").remove(0);
    let mut bytes = storage
        .object_store()
        .get(&damaged.key)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes")
        .to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    storage
        .object_store()
        .put(&damaged.key, PutPayload::from(bytes))
        .await
        .expect("put");
    let error = storage.roll_back(ns, &damaged).await.expect_err("corrupt");
    assert!(matches!(error, StorageError::Corrupt { .. }), "{error:?}");
    assert_eq!(stored_position(&storage, ns).await, 30);
    // Without retention nothing is kept.
    let plain = fresh_storage().await;
    for position in [1, 2, 3] {
        plain
            .store(&checkpoint("plain", position))
            .await
            .expect("store");
    }
    assert!(plain.retained("plain").await.expect("retained").is_empty());
    assert_eq!(all_keys(&plain).await.len(), 1);
}
