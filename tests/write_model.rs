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
use krescent_testkit::postgres::tokio_postgres::types::ToSql;
use krescent_testkit::postgres::tokio_postgres::ToStatement;
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

/// `count` events of `event_type`, `{"n": 0}` on.
fn numbered(event_type: &str, count: usize) -> Vec<NewEvent> {
    (0..count)
        .map(|n| NewEvent::from_json(event_type, &format!("{{\"n\":{n}}}")).expect("json"))
        .collect()
}

/// The append condition's check is index probes, not a scan: its plan on a table of 50,000
/// events has no sequential scan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_condition_check_uses_indexes() {
    let db = krescent_testkit::postgres::fresh_database().await;
    let store = db.event_store().await;
    for i in 0..50 {
        store
            .append(
                &format!("stream-{i}"),
                ExpectedVersion::Any,
                numbered("bench.counted", 1_000),
            )
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
    let plan = plan_of(&client, &explain, &[&streams, &types, &0_i64]).await;
    assert!(!plan.contains("Seq Scan"), "{plan}");
    assert!(plan.contains("Index"), "{plan}");

    // A type no event has, in a table whose statistics say one type is every row: the check
    // still reads only what was appended after the decision read, not the whole table, in the
    // custom plans and in the generic one.
    let head = i64::try_from(store.head().await.expect("head").get()).expect("head");
    let args = format!(
        "{}, {}, {}",
        text_array(&streams),
        text_array(&["bench.absent".to_owned()]),
        head - 5
    );
    for mode in PLAN_CACHE_MODES {
        set_plan_cache_mode(&client, mode).await;
        let (touched, plan) = most_pages(
            &client,
            "text[], text[], bigint",
            store.condition_statement(),
            &args,
        )
        .await;
        eprintln!("{mode}: the check read at most {touched} pages");
        assert!(
            touched < 100,
            "{mode}: the check read {touched} pages of 50,000 events:\n{plan}"
        );
    }
}

/// A write model's read is index ranges, not a walk of the table: on 50,000 events nearly all
/// of one type, reading an absent type, an absent type and a small stream, a rare type, or
/// small streams touches a few pages, in the custom plans and in the generic one; and the
/// statements return what the plain filter returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queries_read_index_ranges() {
    let db = krescent_testkit::postgres::fresh_database().await;
    let store = db.event_store().await;
    for i in 0..50 {
        if i == 25 {
            store
                .append("small", ExpectedVersion::Any, numbered("bench.counted", 3))
                .await
                .expect("append");
        }
        store
            .append(
                &format!("stream-{i}"),
                ExpectedVersion::Any,
                numbered("bench.counted", 1_000),
            )
            .await
            .expect("append");
    }
    store
        .append("rare", ExpectedVersion::Any, numbered("bench.rare", 3))
        .await
        .expect("append");
    let client = db.client().await;
    client
        .batch_execute("ANALYZE public.krescent_events")
        .await
        .expect("analyze");
    reads_match_the_filter(&store, &client).await;

    let mut failures = Vec::new();
    for mode in PLAN_CACHE_MODES {
        set_plan_cache_mode(&client, mode).await;
        for case in &READS {
            let mut args = format!("0, 100, {}", text_array(&owned(case.streams)));
            let (signature, statement) = match case.types {
                Some(types) => {
                    args = format!("{args}, {}", text_array(&owned(types)));
                    ("bigint, bigint, text[], text[]", store.any_statement())
                }
                None => ("bigint, bigint, text[]", store.streams_statement()),
            };
            let (touched, plan) = most_pages(&client, signature, statement, &args).await;
            let what = case.what;
            eprintln!(
                "{mode}, {what}: at most {touched} pages, {} rows removed by a filter",
                rows_removed(&plan)
            );
            if touched >= 50 {
                failures.push(format!(
                    "{mode}, {what}: {touched} pages of 50,000 events:\n{plan}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A read of [`postgres_queries_read_index_ranges`].
struct Read {
    what: &'static str,
    streams: &'static [&'static str],
    /// `None`: the streams statement.
    types: Option<&'static [&'static str]>,
    /// How many events match.
    matching: usize,
}

const READS: [Read; 8] = [
    Read {
        what: "an absent type",
        streams: &[],
        types: Some(&["bench.absent"]),
        matching: 0,
    },
    Read {
        what: "an absent type and a small stream",
        streams: &["small"],
        types: Some(&["bench.absent"]),
        matching: 3,
    },
    Read {
        what: "a rare type",
        streams: &[],
        types: Some(&["bench.rare"]),
        matching: 3,
    },
    Read {
        what: "a rare type and its stream",
        streams: &["rare"],
        types: Some(&["bench.rare"]),
        matching: 3,
    },
    Read {
        what: "a rare and a common type",
        streams: &[],
        types: Some(&["bench.rare", "bench.counted"]),
        matching: 50_006,
    },
    Read {
        what: "a rare type, a small and a large stream",
        streams: &["small", "stream-3"],
        types: Some(&["bench.rare"]),
        matching: 1_006,
    },
    Read {
        what: "a small stream",
        streams: &["small"],
        types: None,
        matching: 3,
    },
    Read {
        what: "two small streams and a large one",
        streams: &["small", "rare", "stream-40"],
        types: None,
        matching: 1_006,
    },
];

/// The statements return the plain filter's rows: in position order, each once, at most the
/// limit.
async fn reads_match_the_filter(
    store: &krescent::store::PostgresEventStore,
    client: &krescent_testkit::postgres::tokio_postgres::Client,
) {
    let head = i64::try_from(store.head().await.expect("head").get()).expect("head");
    let filter = client
        .prepare(
            "SELECT position FROM public.krescent_events
             WHERE position > $1 AND (stream_id = ANY($3::text[]) OR event_type = ANY($4::text[]))
             ORDER BY position LIMIT $2",
        )
        .await
        .expect("prepare");
    let positions = |rows: Vec<krescent_testkit::postgres::tokio_postgres::Row>| -> Vec<i64> {
        rows.iter().map(|row| row.get(0)).collect()
    };
    for case in &READS {
        let (streams, types) = (owned(case.streams), case.types.map(owned));
        let statement = if types.is_some() {
            store.any_statement()
        } else {
            store.streams_statement()
        };
        let read = client.prepare(statement).await.expect("prepare");
        for (after, limit) in [
            (0_i64, 100_000_i64),
            (0, 100),
            (0, 1),
            (1_000, 7),
            (25_000, 5_000),
            (head - 2, 100),
            (head, 100),
        ] {
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&after, &limit, &streams];
            params.extend(types.as_ref().map(|types| types as &(dyn ToSql + Sync)));
            let got = positions(client.query(&read, &params).await.expect("read"));
            let all = types.clone().unwrap_or_default();
            let want = client
                .query(&filter, &[&after, &limit, &streams, &all])
                .await;
            let want = positions(want.expect("filter"));
            let what = case.what;
            assert_eq!(got, want, "{what}, after {after}, up to {limit}");
            if limit == 100_000 {
                assert_eq!(got.len(), case.matching, "{what}");
            }
        }
    }
}

fn owned(names: &[&str]) -> Vec<String> {
    names.iter().map(|&name| name.to_owned()).collect()
}

/// The plan cache modes a prepared statement meets: the server's choice (custom plans for
/// five executions, then the generic plan if it does not cost more) and the generic plan
/// from the first execution.
const PLAN_CACHE_MODES: [&str; 2] = ["auto", "force_generic_plan"];

async fn set_plan_cache_mode(
    client: &krescent_testkit::postgres::tokio_postgres::Client,
    mode: &str,
) {
    client
        .batch_execute(&format!("SET plan_cache_mode = {mode}"))
        .await
        .expect("set plan_cache_mode");
}

/// The most pages one of eight executions of `statement` with `args` (SQL literals of
/// `types`) touched, and that execution's plan. The statement is prepared with `PREPARE` and
/// run with `EXPLAIN (ANALYZE, BUFFERS) EXECUTE`: an `EXPLAIN` of a statement prepared through
/// the protocol plans it afresh with the parameters' values each time, so the generic plan the
/// server may keep for a statement shows only this way.
async fn most_pages(
    client: &krescent_testkit::postgres::tokio_postgres::Client,
    types: &str,
    statement: &str,
    args: &str,
) -> (u64, String) {
    client
        .batch_execute(&format!("PREPARE krescent_plan({types}) AS {statement}"))
        .await
        .expect("prepare");
    let explain = format!("EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) EXECUTE krescent_plan({args})");
    let mut most = (0, String::new());
    for _ in 0..8 {
        let plan = plan_of(client, &explain, &[]).await;
        let touched = pages_touched(&plan);
        if touched >= most.0 {
            most = (touched, plan);
        }
    }
    client
        .batch_execute("DEALLOCATE krescent_plan")
        .await
        .expect("deallocate");
    most
}

/// The plan `explain` prints for `params`.
async fn plan_of<T: ToStatement + ?Sized>(
    client: &krescent_testkit::postgres::tokio_postgres::Client,
    explain: &T,
    params: &[&(dyn ToSql + Sync)],
) -> String {
    let plan: Vec<String> = client
        .query(explain, params)
        .await
        .expect("explain")
        .iter()
        .map(|row| row.get(0))
        .collect();
    plan.join("\n")
}

/// `names` as an SQL `text[]` literal (names without quotes).
fn text_array(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|name| format!("'{name}'")).collect();
    format!("ARRAY[{}]::text[]", quoted.join(", "))
}

/// The shared pages (hit or read) the execution of an `EXPLAIN (ANALYZE, BUFFERS)` plan
/// touched: its top node's figure, which counts its children's (the planning's are not).
fn pages_touched(plan: &str) -> u64 {
    plan.lines()
        .take_while(|line| line.trim() != "Planning:")
        .filter_map(|line| line.trim().strip_prefix("Buffers: shared "))
        .map(|rest| {
            rest.split(',')
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|part| part.split_once('='))
                .filter(|(key, _)| matches!(*key, "hit" | "read"))
                .filter_map(|(_, n)| n.parse::<u64>().ok())
                .sum()
        })
        .max()
        .unwrap_or(0)
}

/// The rows the nodes of an `EXPLAIN ANALYZE` plan read and dropped for not matching.
fn rows_removed(plan: &str) -> u64 {
    plan.lines()
        .filter_map(|line| line.trim().strip_prefix("Rows Removed by Filter: "))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}
