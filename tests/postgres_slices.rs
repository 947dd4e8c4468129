//! Slices in the PostgreSQL store: a table of the schema before them migrates in place (every
//! row gets its slice, appends during the migration are kept), a segment's read returns its
//! own events only, in order, up to the head it saw, through the index of slices (its plan,
//! custom and generic), and a quiet segment moves up to the head.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use krescent::fleet::{Segment, Slice};
use krescent::prelude::*;
use krescent::store::{EventStore, ExpectedVersion, PostgresEventStore};
use krescent::{Krescent, Position};
use krescent_testkit::postgres::fresh_database;

fn event(n: u64) -> NewEvent {
    NewEvent::from_json("test.numbered", &format!(r#"{{"n":{n}}}"#)).expect("valid JSON")
}

/// Every row's `(stream, slice)`, checked against `Slice::of`.
async fn check_slices(client: &krescent::tokio_postgres::Client) -> usize {
    let rows = client
        .query("SELECT stream_id, slice FROM krescent_events", &[])
        .await
        .expect("slices");
    for row in &rows {
        let stream: &str = row.get(0);
        let slice: Option<i16> = row.get(1);
        assert_eq!(
            slice,
            Some(i16::try_from(Slice::of(stream).get()).expect("small")),
            "the slice of `{stream}`"
        );
    }
    rows.len()
}

/// A table at events schema 3 (the one before the slices' step 4) with 60,000 rows (the fixture's five and more of the same
/// kind) migrates in place while an appender of the previous release (its `INSERT`, without
/// slices) keeps appending: every row, old or appended meanwhile, gets the slice `Slice::of`
/// gives, no append is lost, and segments then read their own events only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_at_events_schema_3_migrates_with_every_row_sliced() {
    let db = fresh_database().await;
    let client = db.client().await;
    client
        .batch_execute(include_str!("fixtures/events-schema-3.sql"))
        .await
        .expect("the schema 3 table and rows");
    client
        .batch_execute(
            "INSERT INTO krescent_events (stream_id, stream_version, event_id, event_type, payload)
             SELECT 'stream-' || (i % 997), i / 997 + 1, gen_random_uuid(), 'test.numbered',
                    jsonb_build_object('n', i)
             FROM generate_series(0, 59994) AS i",
        )
        .await
        .expect("more rows");
    // The previous release's appender, one event a statement, until the migration is over.
    let done = Arc::new(AtomicBool::new(false));
    let old_release = {
        let done = done.clone();
        let appending = db.client().await;
        tokio::spawn(async move {
            let mut appended = 0_u64;
            while !done.load(Ordering::Relaxed) {
                appended += 1;
                appending
                    .execute(
                        "INSERT INTO krescent_events (stream_id, stream_version, event_id, event_type, payload)
                         VALUES ('old-' || $1::bigint, 1, gen_random_uuid(), 'test.numbered', '{}')",
                        &[&i64::try_from(appended).expect("small")],
                    )
                    .await
                    .expect("an append of the previous release");
            }
            appended
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let store = PostgresEventStore::connect(db.url())
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    tokio::time::sleep(Duration::from_millis(100)).await;
    done.store(true, Ordering::Relaxed);
    let appended = old_release.await.expect("appender");
    assert!(appended > 0, "the appender appended during the migration");
    store.migrate().await.expect("migrate again: nothing to do");
    store
        .append("new", ExpectedVersion::NoStream, vec![event(1)])
        .await
        .expect("an append of this release");

    let version: i32 = client
        .query_one(
            "SELECT version FROM krescent_schema_migrations WHERE component = 'events:krescent_events'",
            &[],
        )
        .await
        .expect("version")
        .get(0);
    assert_eq!(version, 4);
    let rows = check_slices(&client).await;
    let appended = usize::try_from(appended).expect("small");
    assert_eq!(rows, 60_000 + appended + 1, "every row is there");

    let mut read = BTreeSet::new();
    for segment in Segment::all(4) {
        let mut after = Position::START;
        loop {
            let batch = store
                .read_segment(segment, after, 7_000)
                .await
                .expect("read");
            for e in batch.events().iter() {
                assert!(
                    segment.contains(&e.meta.stream_id),
                    "{segment}: {}",
                    e.meta.stream_id
                );
                assert!(read.insert(e.position()), "read twice: {}", e.position());
            }
            if batch.read_to() == after {
                break;
            }
            after = batch.read_to();
        }
    }
    assert_eq!(read.len(), rows, "the segments read every event once");
}

/// `count` events over 40 streams, one append of five each.
async fn append(store: &PostgresEventStore, streams: &[String], count: u64) {
    for n in 0..count / 5 {
        let stream = &streams[usize::try_from(n).expect("small") % streams.len()];
        store
            .append(
                stream,
                ExpectedVersion::Any,
                (0..5).map(|i| event(n * 5 + i)).collect(),
            )
            .await
            .expect("append");
    }
}

fn streams(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("stream-{i}")).collect()
}

/// A segment's read returns its own events in order, fewer than asked for only at the end,
/// and then reads up to the head; a segment of a count that is not a power of two reads every
/// event (its run skips the others').
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_reads_its_own_events_up_to_the_head() {
    let db = fresh_database().await;
    let store = db.event_store().await;
    append(&store, &streams(40), 2_000).await;
    let head = store.head().await.expect("head");
    for count in [1, 2, 8] {
        let mut total = 0;
        for segment in Segment::all(count) {
            let mut after = Position::START;
            loop {
                let batch = store.read_segment(segment, after, 100).await.expect("read");
                let events = batch.events();
                assert!(events.windows(2).all(|w| w[0].position() < w[1].position()));
                assert!(events.iter().all(|e| segment.contains(&e.meta.stream_id)));
                total += events.len();
                if events.len() < 100 {
                    assert_eq!(batch.read_to(), head, "{segment}: read to the head");
                    break;
                }
                assert_eq!(batch.read_to(), events[99].position());
                after = batch.read_to();
            }
        }
        assert_eq!(total, 2_000, "{count} segments");
    }
    let unsliced = Segment::new(0, 3).expect("0 < 3");
    let batch = store
        .read_segment(unsliced, Position::START, 100)
        .await
        .expect("read");
    assert_eq!(
        batch.events().len(),
        100,
        "every event, not only the segment's"
    );
    assert_eq!(batch.read_to(), batch.events()[99].position());
}

/// The plan of a segment's read, custom and generic, with the setting it runs with
/// (`enable_incremental_sort` off): the index of slices, in position order (no sort), the
/// slices checked in the index; the primary key is not walked row by row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segments_read_uses_the_index_of_slices() {
    let db = fresh_database().await;
    let store = db.event_store().await;
    append(&store, &streams(200), 50_000).await;
    let client = db.client().await;
    client
        .batch_execute("ANALYZE public.krescent_events")
        .await
        .expect("analyze");
    let index: String = client
        .query_one(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'krescent_events' AND indexdef LIKE '%(\"position\", slice)%'",
            &[],
        )
        .await
        .expect("the index of slices")
        .get(0);
    let segment = Segment::new(1, 4).expect("1 < 4");
    let slices = segment.slices().expect("a power of two");
    client
        .batch_execute("SET enable_incremental_sort = off")
        .await
        .expect("the read's setting");
    client
        .batch_execute(&format!(
            "PREPARE krescent_segment(bigint, bigint, smallint, smallint) AS {}",
            store.segment_statement()
        ))
        .await
        .expect("prepare");
    for mode in ["auto", "force_generic_plan"] {
        client
            .batch_execute(&format!("SET plan_cache_mode = {mode}"))
            .await
            .expect("plan cache mode");
        for _ in 0..7 {
            let plan: Vec<String> = client
                .query(
                    &format!(
                        "EXPLAIN EXECUTE krescent_segment(1000, 4096, {}, {})",
                        slices.start(),
                        slices.end()
                    ),
                    &[],
                )
                .await
                .expect("explain")
                .iter()
                .map(|row| row.get(0))
                .collect();
            let plan = plan.join("\n");
            assert!(
                plan.contains(&format!("Index Scan using {index}")),
                "{mode}:\n{plan}"
            );
            assert!(!plan.contains("Sort"), "{mode}:\n{plan}");
            assert!(!plan.contains("Seq Scan"), "{mode}:\n{plan}");
            let cond = plan
                .lines()
                .skip_while(|l| !l.contains(&index))
                .nth(1)
                .unwrap_or_default();
            assert!(
                cond.contains("Index Cond") && cond.contains("slice"),
                "{mode}:\n{plan}"
            );
        }
    }
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "test.numbered")]
struct Numbered {
    n: u64,
}

/// Counts its segment's events, split in 4.
#[derive(EventModel, Default, Debug)]
#[model(name = "slices.counted", segments = 4)]
#[checkpoint(strategy = "fixed_events(10)", storage = "postgres")]
struct Counted {
    #[checkpoint]
    count: u64,
}

#[krescent::handlers]
impl Counted {
    fn numbered(&mut self, _: &Numbered) {
        self.count += 1;
    }
}

/// Events of one stream only: three of the four segments have none, and still move up to the
/// head while running, and their checkpoints are there after a stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_segments_move_up_to_the_head() {
    let db = fresh_database().await;
    let store = db.event_store().await;
    let storage = db.checkpoint_storage().await;
    let krescent = Krescent::new(store).with_storage("postgres", storage.clone());
    let running = krescent.stream_segments(|_| Counted::default());
    for n in 0..50 {
        krescent
            .store()
            .append("busy", ExpectedVersion::Any, vec![event(n)])
            .await
            .expect("append");
    }
    let head = krescent.store().head().await.expect("head");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while running.held().len() < 4 || running.position() < head {
        assert!(
            tokio::time::Instant::now() < deadline,
            "segments at {}",
            running.position()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ended = running.shutdown().await.expect("shutdown");
    assert_eq!(ended.len(), 4);
    let busy = Segment::of("busy", 4);
    for (segment, caught_up) in &ended {
        assert_eq!(caught_up.position, head, "{segment}");
        let expected = if *segment == busy { 50 } else { 0 };
        assert_eq!(caught_up.model.count, expected, "{segment}");
        let stored = krescent::checkpoint::CheckpointStorage::load(
            &storage,
            &segment.namespace("slices.counted"),
        )
        .await
        .expect("load")
        .expect("a checkpoint of every segment");
        assert_eq!(stored.position, head, "{segment}'s checkpoint");
    }
}
