//! A leased in-memory model checkpointing to a bucket of a real S3 server (`moto`), its leases
//! in a real PostgreSQL: two worker processes (`src/bin/fleet_worker.rs` with `FLEET_BUCKET`),
//! the holder stopped (`SIGSTOP`) past its lease while events are appended. The standby takes
//! over; the resumed ex-holder's checkpoint write is fenced; the stored checkpoint's position
//! never moves backwards.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use krescent::checkpoint::{CheckpointStorage, ObjectStoreCheckpointStorage};
use krescent::store::PostgresEventStore;
use krescent::tokio_postgres;
use krescent_testkit::postgres::fresh_database;
use krescent_testkit::s3::{MotoServer, REGION};

#[path = "fleet/worker.rs"]
#[allow(dead_code)] // shared with `fleet_failover.rs`, which uses all of it
mod worker;
use worker::Worker;

#[path = "fleet/ticks.rs"]
mod ticks;
use ticks::appender;

/// The lease of `fleet.counted`: the holder's pid, its epoch, whether it is live now.
async fn lease(client: &tokio_postgres::Client) -> Option<(u32, i64, bool)> {
    let row = client
        .query_opt(
            "SELECT holder, epoch, expires_at > clock_timestamp() FROM krescent_leases WHERE namespace = 'fleet.counted'",
            &[],
        )
        .await
        .ok()??;
    let holder: String = row.get(0);
    let pid = holder.split(':').next()?.parse().ok()?;
    Some((pid, row.get(1), row.get(2)))
}

/// Waits until a live lease is held under an epoch above `after`; its holder and epoch.
async fn new_holder(client: &tokio_postgres::Client, after: i64, within: Duration) -> (u32, i64) {
    let deadline = Instant::now() + within;
    loop {
        if let Some((pid, epoch, true)) = lease(client).await {
            if epoch > after {
                return (pid, epoch);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no instance took the lease over epoch {after} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_stopped_past_its_lease_is_fenced_in_the_bucket_when_it_resumes() {
    let db = fresh_database().await;
    let store: Arc<PostgresEventStore> = Arc::new(db.event_store().await);
    db.checkpoint_storage().await;
    let client = db.client().await;
    let (endpoint, bucket) = tokio::task::spawn_blocking(|| {
        let server = MotoServer::shared();
        (server.endpoint(), server.create_bucket())
    })
    .await
    .expect("server");
    let url = format!("s3://{bucket}/fleet");
    let reader = ObjectStoreCheckpointStorage::from_url_with(
        &url,
        [
            ("aws_endpoint", endpoint.as_str()),
            ("aws_region", REGION),
            ("aws_access_key_id", "test"),
            ("aws_secret_access_key", "test"),
        ],
    )
    .expect("storage");
    let env = [
        ("FLEET_BUCKET", url.as_str()),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_REGION", REGION),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("FLEET_TTL_MS", "1000"),
        ("FLEET_HEARTBEAT_MS", "300"),
        ("FLEET_POLL_MS", "100"),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let appending = appender(store.clone(), stop.clone(), Duration::from_millis(15));
    let (watching, backwards) = position_watcher(reader, stop.clone());
    let workers: Vec<Worker> = (0..2).map(|_| Worker::spawn(&db, &env)).collect();
    let (holder, epoch) = new_holder(&client, 0, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let paused = workers
        .iter()
        .find(|w| w.pid() == holder)
        .expect("the holder is a worker");
    paused.signal("-STOP");
    let (standby, new_epoch) = new_holder(&client, epoch, Duration::from_secs(10)).await;
    assert_ne!(standby, holder, "the paused process cannot renew its lease");
    // The new holder works for a while, then the paused one resumes and tries to write.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    paused.signal("-CONT");
    let deadline = Instant::now() + Duration::from_secs(15);
    while paused.fenced.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the resumed process's checkpoint write was never fenced"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("the resumed process (epoch {epoch}) was fenced; the lease is at epoch {new_epoch}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let appended = appending.await.expect("appender");
    let last = watching.await.expect("watcher");
    assert!(last > 0, "no checkpoint was seen");
    let backwards = backwards.lock().expect("lock").clone();
    assert!(
        backwards.is_empty(),
        "the checkpoint moved backwards: {backwards:?}"
    );
    // The new holder catches up with every event appended, in the bucket.
    let deadline = Instant::now() + Duration::from_secs(20);
    let checker =
        ObjectStoreCheckpointStorage::new(reader_store(&url, &endpoint), "fleet", "checker");
    loop {
        let checkpoint = checker
            .load("fleet.counted")
            .await
            .expect("load")
            .expect("a checkpoint");
        let ticks: u64 = checkpoint.bucket.get("ticks").expect("ticks");
        if checkpoint.position.get() == appended {
            assert_eq!(ticks, appended, "every event counted once");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the checkpoint stayed at {} of {appended}",
            checkpoint.position
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(workers);
}

/// Each time the stored position moved backwards: from, to.
type Backwards = Arc<Mutex<Vec<(u64, u64)>>>;

/// Reads the stored position every few milliseconds until stopped; the last one seen, and each
/// time it moved backwards.
fn position_watcher(
    reader: ObjectStoreCheckpointStorage,
    stop: Arc<AtomicBool>,
) -> (tokio::task::JoinHandle<u64>, Backwards) {
    let backwards = Backwards::default();
    let seen = backwards.clone();
    let task = tokio::spawn(async move {
        let mut last = 0;
        while !stop.load(Ordering::SeqCst) {
            if let Ok(Some(checkpoint)) = reader.load("fleet.counted").await {
                let position = checkpoint.position.get();
                if position < last {
                    seen.lock().expect("lock").push((last, position));
                }
                last = last.max(position);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        last
    });
    (task, backwards)
}

/// An S3 store on the test server, for a second reader.
fn reader_store(
    url: &str,
    endpoint: &str,
) -> Arc<dyn krescent::checkpoint::storage::object_store::ObjectStore> {
    let bucket = url
        .trim_start_matches("s3://")
        .split('/')
        .next()
        .expect("bucket");
    Arc::new(
        krescent::checkpoint::storage::object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(REGION)
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .expect("store"),
    )
}
