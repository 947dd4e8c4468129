//! Write models on every store: concurrent deciders, the double-apply trap, decisions over
//! several streams.

#[path = "write_model/lending.rs"]
mod lending;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

use krescent::decide::snapshot_namespace;
use krescent::prelude::*;
use krescent::store::{FileEventStore, StoreError};
use krescent_testkit::counting::CountingStore;
use lending::{lends, replay, Book, LendError};

/// Eight deciders lend from one book with five copies at once: five succeed, three are told
/// that no copy is available, and the stream has exactly five lend events.
async fn eight_deciders_five_copies<S: EventStore>(krescent: Krescent<S>) {
    krescent
        .decide::<Book>("book-dune")
        .run(|book| book.add(5))
        .await
        .expect("add copies");
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let krescent = krescent.clone();
            tokio::spawn(async move {
                krescent
                    .decide::<Book>("book-dune")
                    .retries(20)
                    .run(|book| book.lend(&format!("member-{i}")))
                    .await
            })
        })
        .collect();
    let (mut lent, mut unavailable) = (0, 0);
    for task in tasks {
        match task.await.expect("decider task") {
            Ok(decided) => {
                lent += 1;
                decided.model.check();
                assert!(decided.model.lent.len() <= 5);
            }
            Err(error) => {
                assert!(
                    matches!(error.rejected(), Some(LendError::NotAvailable)),
                    "{error}"
                );
                unavailable += 1;
            }
        }
    }
    assert_eq!((lent, unavailable), (5, 3));
    let (book, events) = replay(krescent.store(), "book-dune").await;
    assert_eq!(lends(&events), 5);
    assert_eq!(book.lent.len(), 5);
    let loaded = krescent.load::<Book>("book-dune").await.expect("load");
    assert_eq!(loaded.model, book);
    assert_eq!(loaded.stream_version, 6);
}

/// With a snapshot after every decision, an append that fails after the decision leaves no
/// trace: no snapshot of the undone state, and the next load equals a replay of the store.
async fn a_failed_append_is_never_snapshotted<S: EventStore>(store: S) {
    let mut krescent = Krescent::new(CountingStore::new(store));
    krescent
        .configure::<Book>()
        .strategy("always")
        .expect("strategy");
    let decided = krescent
        .decide::<Book>("book-1")
        .run(|book| book.add(2))
        .await
        .expect("add");
    let snapshot = decided.snapshot.expect("`always` snapshots");
    let covered = snapshot.position;
    snapshot.written().await.expect("snapshot written");

    krescent.store().fail_appends(1);
    let failed = krescent
        .decide::<Book>("book-1")
        .retries(0)
        .run(|book| book.lend("ada"))
        .await;
    assert!(
        matches!(
            failed,
            Err(DecideError::Store {
                source: StoreError::Rejected { .. },
                ..
            })
        ),
        "{failed:?}"
    );
    let storage = krescent.storage("memory").expect("memory storage");
    let stored = storage
        .load(&snapshot_namespace::<Book>("book-1"))
        .await
        .expect("load")
        .expect("the first snapshot");
    assert_eq!(
        stored.position, covered,
        "no snapshot of the failed decision"
    );

    let loaded = krescent.load::<Book>("book-1").await.expect("load");
    let (replayed, events) = replay(krescent.store().inner(), "book-1").await;
    assert_eq!(loaded.model, replayed);
    assert!(
        loaded.model.lent.is_empty(),
        "the failed lend is not applied"
    );
    assert_eq!(lends(&events), 0);

    // And the next decision works from the true state.
    let decided = krescent
        .decide::<Book>("book-1")
        .run(|book| book.lend("ada"))
        .await
        .expect("lend");
    decided
        .snapshot
        .expect("snapshot")
        .written()
        .await
        .expect("written");
    let loaded = krescent.load::<Book>("book-1").await.expect("load");
    assert_eq!(
        loaded.model,
        replay(krescent.store().inner(), "book-1").await.0
    );
    assert_eq!(loaded.read, 0, "restored from the snapshot at the tail");
}

/// Two decisions over queries, each blocked until both have read: `overlapping` queries (both
/// append to a stream both read) conflict, disjoint ones do not.
async fn two_query_decisions<S: EventStore>(
    krescent: &Krescent<S>,
    a: (Query, &'static str),
    b: (Query, &'static str),
    retries: u32,
    round: &'static str,
) -> Vec<Result<Decided<Book>, DecideError<LendError>>> {
    let barrier = Arc::new(Barrier::new(2));
    let tasks: Vec<_> = [a, b]
        .into_iter()
        .enumerate()
        .map(|(i, (query, stream))| {
            let (krescent, barrier) = (krescent.clone(), barrier.clone());
            let first = AtomicBool::new(true);
            tokio::spawn(async move {
                krescent
                    .decide_on::<Book>(query, stream)
                    .retries(retries)
                    .run(move |book| {
                        if first.swap(false, Ordering::SeqCst) {
                            // Both deciders have read before either appends; the worker
                            // hands its other tasks to another thread while it waits.
                            tokio::task::block_in_place(|| barrier.wait());
                        }
                        book.lend(&format!("{round}-member-{i}"))
                    })
                    .await
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("decider task"));
    }
    results
}

async fn decisions_across_streams<S: EventStore>(krescent: Krescent<S>) {
    for shelf in ["s1", "s2", "s3", "s4"] {
        krescent
            .decide::<Book>(shelf)
            .run(|book| book.add(3))
            .await
            .expect("add");
    }
    let q = |streams: [&str; 2]| Query::streams(streams);

    // Disjoint queries: both succeed at the first attempt.
    let results = two_query_decisions(
        &krescent,
        (q(["s1", "s2"]), "s1"),
        (q(["s3", "s4"]), "s3"),
        0,
        "disjoint",
    )
    .await;
    for result in &results {
        let decided = result
            .as_ref()
            .expect("no conflict between disjoint queries");
        assert_eq!(decided.attempts, 1);
    }

    // Overlapping queries, no retry: one wins, the other gets the typed conflict.
    let results = two_query_decisions(
        &krescent,
        (q(["s1", "s2"]), "s1"),
        (q(["s1", "s3"]), "s1"),
        0,
        "overlap",
    )
    .await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{results:?}");
    let lost = results
        .iter()
        .find_map(|r| r.as_ref().err())
        .expect("one lost");
    assert!(
        matches!(
            lost,
            DecideError::Conflict {
                source: StoreError::QueryConflict { .. },
                attempts: 1,
                ..
            }
        ),
        "{lost}"
    );

    // Overlapping queries with retries: the loser reads the winner's event and decides again.
    let results = two_query_decisions(
        &krescent,
        (q(["s2", "s4"]), "s2"),
        (q(["s2", "s3"]), "s2"),
        3,
        "retry",
    )
    .await;
    let mut attempts: Vec<u32> = results
        .iter()
        .map(|r| r.as_ref().expect("both succeed").attempts)
        .collect();
    attempts.sort_unstable();
    assert_eq!(attempts, [1, 2]);
    let (s2, events) = replay(krescent.store(), "s2").await;
    assert_eq!(lends(&events), 2);
    assert_eq!(s2.lent.len(), 2);
}

fn file_store() -> (tempfile::TempDir, FileEventStore) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let store = FileEventStore::open(dir.path().join("events")).expect("open");
    (dir, store)
}

mod memory {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn eight_deciders_five_copies() {
        super::eight_deciders_five_copies(Krescent::new(InMemoryEventStore::new())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_failed_append_is_never_snapshotted() {
        super::a_failed_append_is_never_snapshotted(InMemoryEventStore::new()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn decisions_across_streams() {
        super::decisions_across_streams(Krescent::new(InMemoryEventStore::new())).await;
    }
}

mod file {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn eight_deciders_five_copies() {
        let (_dir, store) = file_store();
        super::eight_deciders_five_copies(Krescent::new(store)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_failed_append_is_never_snapshotted() {
        let (_dir, store) = file_store();
        super::a_failed_append_is_never_snapshotted(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn decisions_across_streams() {
        let (_dir, store) = file_store();
        super::decisions_across_streams(Krescent::new(store)).await;
    }
}

mod postgres {
    use super::*;
    use krescent_testkit::postgres::fresh_database;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn eight_deciders_five_copies() {
        let db = fresh_database().await;
        super::eight_deciders_five_copies(Krescent::new(db.event_store().await)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_failed_append_is_never_snapshotted() {
        let db = fresh_database().await;
        super::a_failed_append_is_never_snapshotted(db.event_store().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn decisions_across_streams() {
        let db = fresh_database().await;
        super::decisions_across_streams(Krescent::new(db.event_store().await)).await;
    }

    /// Snapshots through the Postgres checkpoint storage: the trap again, and a snapshot at the
    /// tail that the next load restores.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn snapshots_in_the_postgres_storage() {
        let db = fresh_database().await;
        let mut krescent = Krescent::new(CountingStore::new(db.event_store().await))
            .with_storage("memory", db.checkpoint_storage().await);
        krescent
            .configure::<Book>()
            .strategy("always")
            .expect("strategy");
        let decided = krescent
            .decide::<Book>("book \"odd\"/é")
            .run(|book| book.add(1))
            .await
            .expect("add");
        decided
            .snapshot
            .expect("snapshot")
            .written()
            .await
            .expect("written");
        krescent.store().fail_appends(1);
        let failed = krescent
            .decide::<Book>("book \"odd\"/é")
            .run(|book| book.lend("ada"))
            .await;
        assert!(
            matches!(failed, Err(DecideError::Store { .. })),
            "{failed:?}"
        );
        krescent.store().take_read();
        let loaded = krescent.load::<Book>("book \"odd\"/é").await.expect("load");
        assert!(loaded.snapshot.is_some());
        assert_eq!(loaded.read, 0);
        assert_eq!(krescent.store().take_read(), 0);
        assert_eq!(
            loaded.model,
            replay(krescent.store().inner(), "book \"odd\"/é").await.0
        );
    }
}

/// The append condition's check is index probes, not a scan: its plan on a table of 50,000
/// events has no sequential scan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_condition_check_uses_indexes() {
    let db = krescent_testkit::postgres::fresh_database().await;
    let store = db.event_store().await;
    for i in 0..50 {
        let batch = (0..1_000)
            .map(|n| NewEvent::from_json("bench.counted", &format!("{{\"n\":{n}}}")).expect("json"))
            .collect();
        store
            .append(&format!("stream-{i}"), ExpectedVersion::Any, batch)
            .await
            .expect("append");
    }
    let client = db.client().await;
    client
        .batch_execute("ANALYZE public.krescent_events")
        .await
        .expect("analyze");
    let explain = format!("EXPLAIN {}", store.condition_statement());
    let streams = vec!["stream-7".to_owned(), "stream-9".to_owned()];
    let types = vec!["bench.counted".to_owned()];
    let explain = client.prepare(&explain).await.expect("prepare");
    let plan = plan_of(&client, &explain, &streams, &types, 0).await;
    assert!(!plan.contains("Seq Scan"), "{plan}");
    assert!(plan.contains("Index"), "{plan}");

    // A type no event has, in a table whose statistics say one type is every row: the check
    // still reads only what was appended after the decision read, not the whole table.
    let head = i64::try_from(store.head().await.expect("head").get()).expect("head");
    let analyze = format!(
        "EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) {}",
        store.condition_statement()
    );
    let analyze = client.prepare(&analyze).await.expect("prepare");
    let absent = vec!["bench.absent".to_owned()];
    for _ in 0..8 {
        // Past the five custom plans, to the generic one the server may keep for a statement.
        let plan = plan_of(&client, &analyze, &streams, &absent, head - 5).await;
        let touched: u64 = plan
            .lines()
            .filter_map(|line| line.trim().strip_prefix("Buffers: shared hit="))
            .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .filter_map(|n| n.parse().ok())
            .max()
            .unwrap_or(0);
        assert!(
            touched < 100,
            "the check read {touched} pages of 50,000 events:\n{plan}"
        );
    }
}

/// The plan `explain` prints for the condition's parameters.
async fn plan_of(
    client: &krescent_testkit::postgres::tokio_postgres::Client,
    explain: &krescent_testkit::postgres::tokio_postgres::Statement,
    streams: &Vec<String>,
    types: &Vec<String>,
    after: i64,
) -> String {
    let plan: Vec<String> = client
        .query(explain, &[streams, types, &after])
        .await
        .expect("explain")
        .iter()
        .map(|row| row.get(0))
        .collect();
    plan.join("\n")
}
