//! Checkpoints in Postgres: the storage contract, exactness, corrupt rows, concurrent writers,
//! and a model declared with `storage = "postgres"` resuming after a restart.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use krescent::checkpoint::{
    BucketValue, CheckpointBucket, CheckpointStorage, CheckpointVersion, StorageError,
    StoredCheckpoint,
};
use krescent::prelude::*;
use krescent::store::{EventStore, ExpectedVersion, PostgresEventStore};
use krescent::{Origin, Position};
use krescent_testkit::postgres::fresh_database;

mod postgres {
    krescent_testkit::storage_contract!(async {
        krescent_testkit::postgres::fresh_database()
            .await
            .checkpoint_storage()
            .await
    });
}

fn checkpoint(namespace: &str, version: &str, position: u64) -> StoredCheckpoint {
    let mut bucket = CheckpointBucket::new();
    bucket.put("position", &position).expect("put");
    StoredCheckpoint::new(
        namespace,
        CheckpointVersion::from_text(version),
        Position::new(position),
        bucket,
    )
}

/// Times come back exactly, to the microsecond, before and after 1970 and 2000 alike; the
/// largest position survives; JSON in the bucket keeps its exact text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_checkpoints_round_trip_exactly() {
    let db = fresh_database().await;
    let storage = db.checkpoint_storage().await;
    let times = [
        UNIX_EPOCH + Duration::from_micros(946_684_800_000_001),
        UNIX_EPOCH + Duration::from_micros(946_684_799_999_999),
        UNIX_EPOCH - Duration::from_micros(1),
        UNIX_EPOCH - Duration::from_micros(3_155_760_000_123_457),
        UNIX_EPOCH + Duration::from_micros(4_102_444_800_654_321),
    ];
    for (i, taken_at) in times.into_iter().enumerate() {
        let mut stored = checkpoint(&format!("time.{i}"), "v1", u64::MAX);
        stored.taken_at = taken_at;
        let raw =
            serde_json::value::RawValue::from_string(r#"{ "b" : 1,"a":[2, 3.10] }"#.to_owned())
                .expect("JSON");
        stored.bucket.insert("raw", BucketValue::Json(raw));
        stored
            .bucket
            .insert("negative zero", BucketValue::Float(-0.0));
        storage.store(&stored).await.expect("store");
        assert_eq!(
            storage.load(&stored.namespace).await.expect("load"),
            Some(stored)
        );
    }
}

/// A row whose data or position does not decode is reported as corrupt, naming the table and
/// the namespace; a model facing it would rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_corrupt_checkpoint_names_table_and_namespace() {
    let db = fresh_database().await;
    let storage = db.checkpoint_storage().await;
    storage
        .store(&checkpoint("books.available", "v1", 7))
        .await
        .expect("store");
    storage
        .store(&checkpoint("books.lent", "v1", 7))
        .await
        .expect("store");
    let client = db.client().await;
    client
        .batch_execute(
            r#"UPDATE krescent_checkpoints SET format = 1, data = '{"count": {"no_such_kind": 1}}' WHERE namespace = 'books.available';
               UPDATE krescent_checkpoints SET data_binary = '\x0102' WHERE namespace = 'books.lent';"#,
        )
        .await
        .expect("corrupt");
    for namespace in ["books.available", "books.lent"] {
        match storage.load(namespace).await {
            Err(e @ StorageError::Corrupt { .. }) => {
                let message = e.to_string();
                assert!(
                    message.contains("public.krescent_checkpoints") && message.contains(namespace),
                    "{message}"
                );
            }
            other => panic!("expected a corrupt checkpoint, got {other:?}"),
        }
    }
    // The position column is intact, so the rule stays "never backwards": the rebuild that
    // follows a corrupt checkpoint replaces it once it has passed the stored position.
    storage
        .store(&checkpoint("books.lent", "v1", 3))
        .await
        .expect("store");
    assert!(storage
        .load("books.lent")
        .await
        .is_err_and(|e| e.is_corrupt()));
    storage
        .store(&checkpoint("books.lent", "v1", 7))
        .await
        .expect("store");
    assert_eq!(
        storage
            .load("books.lent")
            .await
            .expect("load")
            .map(|c| c.position),
        Some(Position::new(7))
    );
}

/// Many writers storing checkpoints of one namespace at once: the stored position is the
/// highest one written, never an older one that arrived later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_checkpoint_writers_never_move_backwards() {
    let db = fresh_database().await;
    let storage = Arc::new(db.checkpoint_storage().await);
    let writers: Vec<_> = (0..8u64)
        .map(|writer| {
            let storage = storage.clone();
            tokio::spawn(async move {
                for i in 0..50u64 {
                    // Interleaved, each writer's positions out of order.
                    let position = (i * 7919 + writer * 31) % 400 + 1;
                    storage
                        .store(&checkpoint("contended", "v1", position))
                        .await
                        .expect("store");
                    let loaded = storage
                        .load("contended")
                        .await
                        .expect("load")
                        .expect("present");
                    assert!(
                        loaded.position.get() >= position,
                        "{} after storing {position}",
                        loaded.position
                    );
                }
            })
        })
        .collect();
    let mut highest = 0;
    for writer in 0..8u64 {
        highest = (0..50u64)
            .map(|i| (i * 7919 + writer * 31) % 400 + 1)
            .fold(highest, u64::max);
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let stored = storage
        .load("contended")
        .await
        .expect("load")
        .expect("present");
    assert_eq!(stored.position, Position::new(highest));
    assert_eq!(
        stored.bucket.get::<u64>("position").expect("bucket"),
        highest
    );
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "pg.amount")]
struct Amount {
    n: u64,
}

#[derive(EventModel, Default, Debug)]
#[model(name = "pg.totals", version = 1)]
#[checkpoint(strategy = "fixed_events(10)", storage = "postgres")]
struct Totals {
    #[checkpoint]
    sum: u64,
    #[checkpoint]
    count: u64,
    /// Not checkpointed: what this run handled.
    handled: u64,
}

#[krescent::handlers]
impl Totals {
    fn amount(&mut self, e: &Amount) {
        self.sum += e.n;
        self.count += 1;
        self.handled += 1;
    }
}

/// A process's view of the database: a new pool, store and storage each time.
async fn start(url: &str) -> Krescent<PostgresEventStore> {
    let store = PostgresEventStore::connect(url).await.expect("connect");
    store.migrate().await.expect("migrate");
    let storage = store.checkpoint_storage();
    storage.migrate().await.expect("migrate");
    Krescent::new(store).with_storage("postgres", storage)
}

async fn append(krescent: &Krescent<PostgresEventStore>, from: u64, to: u64) {
    for n in from..=to {
        let event = NewEvent::new(&Amount { n }).expect("encode");
        krescent
            .store()
            .append(
                &format!("account-{}", n % 3),
                ExpectedVersion::Any,
                vec![event],
            )
            .await
            .expect("append");
    }
}

/// A model declared with `storage = "postgres"` checkpoints into the checkpoints table; after
/// a restart (new connections, new store) it resumes from the checkpoint and reads only the
/// newer events, ending in the state of a full replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_model_checkpoints_and_resumes_after_a_restart() {
    let db = fresh_database().await;
    let first = start(db.url()).await;
    append(&first, 1, 95).await;
    let run = first.catch_up(Totals::default()).await.expect("catch up");
    assert_eq!(
        (run.origin.clone(), run.model.count, run.model.sum),
        (Origin::Scratch, 95, (1..=95).sum())
    );
    let stored = first
        .storage("postgres")
        .expect("registered")
        .load("pg.totals")
        .await
        .expect("load")
        .expect("checkpointed");
    assert_eq!(stored.position, first.store().head().await.expect("head"));
    assert_eq!(stored.version, CheckpointVersion::of::<Totals>());
    drop(first);

    let second = start(db.url()).await;
    let resumed_from = second.store().head().await.expect("head");
    append(&second, 96, 100).await;
    let run = second.catch_up(Totals::default()).await.expect("catch up");
    assert_eq!(
        run.origin,
        Origin::Restored {
            position: resumed_from
        }
    );
    assert_eq!((run.model.handled, run.processed), (5, 5));
    assert_eq!((run.model.count, run.model.sum), (100, (1..=100).sum()));
    assert_eq!(run.position, second.store().head().await.expect("head"));

    // The same as a replay from scratch.
    assert!(second.delete_checkpoint::<Totals>().await.expect("delete"));
    let replay = second.catch_up(Totals::default()).await.expect("replay");
    assert_eq!(replay.origin, Origin::Scratch);
    assert_eq!(
        (replay.model.count, replay.model.sum),
        (run.model.count, run.model.sum)
    );
}
