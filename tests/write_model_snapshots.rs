//! Per-stream snapshots: a long stream loads from its snapshot, reading only what follows it;
//! a new version of the model ignores old snapshots.

#[path = "write_model/lending.rs"]
mod lending;

use std::collections::BTreeSet;

use krescent::prelude::*;
use krescent::store::FileEventStore;
use krescent_testkit::counting::CountingStore;
use lending::{replay, Book, BookLent, BookReturned, CopiesAdded};

/// The same book, at version 2 of the model: its snapshots are not version 1's.
#[derive(EventModel, Default, Debug, PartialEq)]
#[model(name = "lending.book", version = 2)]
#[checkpoint(strategy = "fixed_events(3)", storage = "memory")]
struct BookV2 {
    #[checkpoint]
    copies: u32,
    #[checkpoint]
    lent: BTreeSet<String>,
}

#[krescent::handlers]
impl BookV2 {
    fn added(&mut self, e: &CopiesAdded) {
        self.copies += e.copies;
    }

    fn lent(&mut self, e: BookLent) {
        self.lent.insert(e.member);
    }

    fn returned(&mut self, e: &BookReturned) {
        self.lent.remove(&e.member);
    }
}

const EVENTS: u64 = 100_000;

async fn a_snapshot_at_the_tail_of_a_long_stream<S: EventStore>(store: S) {
    let krescent = Krescent::new(CountingStore::new(store));
    // 100,000 events, in large batches: lends and returns of one copy.
    let mut version = krescent
        .store()
        .append(
            "book-long",
            ExpectedVersion::NoStream,
            vec![NewEvent::new(&CopiesAdded { copies: 20 }).expect("encode")],
        )
        .await
        .expect("append")
        .stream_version;
    for batch in 0..EVENTS / 1_000 {
        let events: Vec<NewEvent> = (0..1_000)
            .map(|i| {
                let member = format!("m{}", batch * 500 + i / 2);
                if i % 2 == 0 {
                    NewEvent::new(&BookLent { member })
                } else {
                    NewEvent::new(&BookReturned { member })
                }
                .expect("encode")
            })
            .collect();
        version = krescent
            .store()
            .append("book-long", ExpectedVersion::Exact(version), events)
            .await
            .expect("append")
            .stream_version;
    }
    // A decision at the tail: `fixed_events(3)` is due, the snapshot covers all 100,002 events.
    let decided = krescent
        .decide::<Book>("book-long")
        .run(|book| book.add(1))
        .await
        .expect("decide");
    assert_eq!(
        decided.read,
        EVENTS + 1,
        "no snapshot yet: the whole stream"
    );
    decided
        .snapshot
        .expect("due")
        .written()
        .await
        .expect("written");

    krescent.store().take_read();
    let loaded = krescent.load::<Book>("book-long").await.expect("load");
    assert_eq!(loaded.read, 0);
    assert_eq!(
        krescent.store().take_read(),
        0,
        "nothing after the snapshot"
    );
    assert_eq!(loaded.stream_version, EVENTS + 2);
    assert_eq!(loaded.model.copies, 21);

    // Ten more events: the load reads exactly those ten.
    let more: Vec<NewEvent> = (0..10)
        .map(|i| {
            NewEvent::new(&BookLent {
                member: format!("late-{i}"),
            })
            .expect("encode")
        })
        .collect();
    krescent
        .store()
        .append("book-long", ExpectedVersion::Exact(EVENTS + 2), more)
        .await
        .expect("append");
    let loaded = krescent.load::<Book>("book-long").await.expect("load");
    assert_eq!(loaded.read, 10);
    assert_eq!(krescent.store().take_read(), 10);
    assert_eq!(
        loaded.model,
        replay(krescent.store().inner(), "book-long").await.0
    );

    // A new version of the model ignores the old snapshot and replays the stream.
    krescent.store().take_read();
    let bumped = krescent.load::<BookV2>("book-long").await.expect("load");
    assert_eq!(bumped.snapshot, None);
    assert_eq!(bumped.read, EVENTS + 12);
    assert_eq!(bumped.model.lent, loaded.model.lent);
    assert_eq!(bumped.model.copies, loaded.model.copies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_snapshot_at_the_tail_of_a_long_stream() {
    a_snapshot_at_the_tail_of_a_long_stream(InMemoryEventStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_a_snapshot_at_the_tail_of_a_long_stream() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let store = FileEventStore::open(dir.path().join("events")).expect("open");
    a_snapshot_at_the_tail_of_a_long_stream(store).await;
}

/// A snapshot that does not decode is ignored: the stream is replayed, and the next snapshot
/// replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_snapshot_is_ignored_and_replaced() {
    use krescent::checkpoint::{CheckpointBucket, CheckpointVersion, StoredCheckpoint};
    let krescent = Krescent::new(InMemoryEventStore::new());
    for _ in 0..3 {
        krescent
            .decide::<Book>("b")
            .run(|book| book.add(1))
            .await
            .expect("add");
    }
    let storage = krescent.storage("memory").expect("memory").clone();
    let namespace = krescent::decide::snapshot_namespace::<Book>("b");
    let mut bucket = CheckpointBucket::new();
    bucket.put("stream_version", &"not a number").expect("put");
    storage
        .store(&StoredCheckpoint::new(
            namespace.clone(),
            CheckpointVersion::of::<Book>(),
            Position::new(99),
            bucket,
        ))
        .await
        .expect("store");
    let loaded = krescent.load::<Book>("b").await.expect("load");
    assert_eq!(
        (loaded.snapshot, loaded.read, loaded.model.copies),
        (None, 3, 3)
    );
    assert_eq!(
        krescent::decide::snapshot_namespace::<Book>("a/b c%"),
        "lending.book@a%2Fb%20c%25"
    );
}
