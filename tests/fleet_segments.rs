//! A model split into segments, shared out over instances: 4 segments over 2 instances are
//! 2 + 2, a stopped instance's segments move to the other, a returning one takes its share
//! back, and every event is processed by exactly one segment — the one its stream hashes to.
//! Also: the whole model and one segment on the memory storage, the refusal to run a split
//! model whole, and a segment that rebuilds the shared tables while the others run.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use krescent::checkpoint::PostgresCheckpointStorage;
use krescent::fleet::{LeaseConfig, RunningSegments, Segment};
use krescent::prelude::*;
use krescent::projection::{PostgresProjection, ProjectionError};
use krescent::store::{InMemoryEventStore, PostgresEventStore};
use krescent::{tokio_postgres, Krescent};
use krescent_testkit::postgres::{fresh_database, TestDatabase};

#[derive(Event, Serialize, Deserialize)]
#[event(name = "segment.tick")]
struct Tick {
    n: u64,
}

/// One row per event, with the segment that projected it.
#[derive(EventModel)]
#[model(name = "segments.projected", segments = 4)]
#[checkpoint(strategy = "fixed_events(5)", storage = "postgres")]
struct Projected {
    #[checkpoint(support)]
    table: PostgresProjection,
    insert: String,
    segment: i64,
}

#[krescent::handlers]
impl Projected {
    async fn tick(&mut self, e: &Tick, meta: &EventMeta) -> Result<(), ProjectionError> {
        let position = i64::try_from(meta.position.get()).expect("small");
        let n = i64::try_from(e.n).expect("small");
        self.table
            .execute(
                &self.insert,
                &[&position, &&*meta.stream_id, &n, &self.segment],
            )
            .await?;
        Ok(())
    }
}

impl Projected {
    fn new(storage: &PostgresCheckpointStorage, segment: Segment) -> Self {
        let table = PostgresProjection::new(storage, 1)
            .table(
                "segment_rows",
                "CREATE TABLE {table} (position bigint NOT NULL, stream_id text NOT NULL, n bigint NOT NULL, segment bigint NOT NULL)",
            )
            .expect("a valid table");
        let name = table.name_of("segment_rows").expect("declared").to_owned();
        Projected {
            table,
            insert: format!(
                "INSERT INTO {name} (position, stream_id, n, segment) VALUES ($1, $2, $3, $4)"
            ),
            segment: i64::from(segment.index()),
        }
    }
}

/// State in memory, split in 3: counts the events of its segment's streams.
#[derive(EventModel, Default, Debug)]
#[model(name = "segments.counted", segments = 3)]
#[checkpoint(strategy = "fixed_events(4)", storage = "memory")]
struct Counted {
    #[checkpoint]
    streams: BTreeSet<String>,
    #[checkpoint]
    count: u64,
}

#[krescent::handlers]
impl Counted {
    fn tick(&mut self, _: &Tick, meta: &EventMeta) {
        self.streams.insert(meta.stream_id.to_string());
        self.count += 1;
    }
}

const FAST: LeaseConfig = LeaseConfig {
    ttl: Duration::from_secs(1),
    heartbeat: Duration::from_millis(300),
    poll: Duration::from_millis(100),
};

/// An instance: its own store (and pool) on `db`.
async fn instance(db: &TestDatabase) -> (Krescent<PostgresEventStore>, PostgresCheckpointStorage) {
    let store = db.event_store().await;
    let storage = db.checkpoint_storage().await;
    let mut krescent = Krescent::new(store).with_storage("postgres", storage.clone());
    krescent
        .configure::<Projected>()
        .lease(FAST)
        .expect("checkpointed");
    (krescent, storage)
}

fn run(
    krescent: &Krescent<PostgresEventStore>,
    storage: &PostgresCheckpointStorage,
) -> RunningSegments<Projected> {
    let storage = storage.clone();
    krescent.stream_segments(move |segment| Projected::new(&storage, segment))
}

/// Appends `count` ticks from `from` over 12 streams, one append each.
async fn append(krescent: &Krescent<PostgresEventStore>, from: u64, count: u64) {
    for n in from..from + count {
        let event = NewEvent::new(&Tick { n }).expect("encode");
        krescent
            .store()
            .append(
                &format!("ticks-{}", n % 12),
                ExpectedVersion::Any,
                vec![event],
            )
            .await
            .expect("append");
    }
}

/// Waits until `wanted` holds of the instances' held segments.
async fn wait_for(
    what: &str,
    instances: &[&RunningSegments<Projected>],
    wanted: impl Fn(&[Vec<Segment>]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let held: Vec<Vec<Segment>> = instances.iter().map(|i| i.held()).collect();
        if wanted(&held) {
            println!("{what}: {held:?}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the segments stayed {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `held` splits the 4 segments into `shares`, disjoint.
fn split(held: &[Vec<Segment>], shares: &[usize]) -> bool {
    let all: BTreeSet<Segment> = held.iter().flatten().copied().collect();
    held.iter().map(Vec::len).collect::<Vec<_>>() == shares && all.len() == 4
}

/// Waits until the table has a row per event (rows commit only with their segment's
/// checkpoint), then checks that every event is in it exactly once, projected by the segment of
/// its stream.
async fn assert_each_event_once_by_its_segment(client: &tokio_postgres::Client) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM krescent_events), (SELECT count(*) FROM segment_rows)",
                &[],
            )
            .await
            .expect("counts");
        let (events, rows): (i64, i64) = (row.get(0), row.get(1));
        if rows >= events {
            break;
        }
        assert!(Instant::now() < deadline, "{rows} rows for {events} events");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events: Vec<(i64, String)> = client
        .query(
            "SELECT position, stream_id FROM krescent_events ORDER BY position",
            &[],
        )
        .await
        .expect("events")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let rows: Vec<(i64, String, i64)> = client
        .query(
            "SELECT position, stream_id, segment FROM segment_rows ORDER BY position",
            &[],
        )
        .await
        .expect("rows")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(rows.len(), events.len(), "events lost or doubled");
    for ((position, stream), (row_position, row_stream, segment)) in events.iter().zip(&rows) {
        assert_eq!((position, stream), (row_position, row_stream));
        assert_eq!(
            *segment,
            i64::from(Segment::of(stream, 4).index()),
            "event {position} of `{stream}` was projected by segment {segment}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_segments_spread_two_and_two_move_to_the_survivor_and_rebalance() {
    let db = fresh_database().await;
    let client = db.client().await;
    let (a, a_storage) = instance(&db).await;
    let (b, b_storage) = instance(&db).await;
    append(&a, 0, 60).await;
    let first = run(&a, &a_storage);
    wait_for("one instance", &[&first], |h| split(h, &[4])).await;
    let second = run(&b, &b_storage);
    wait_for("two instances", &[&first, &second], |h| split(h, &[2, 2])).await;
    append(&a, 60, 60).await;
    let ended = first.shutdown().await.expect("a graceful stop");
    assert_eq!(
        ended.len(),
        2,
        "the first instance ran two segments at the end"
    );
    wait_for("the survivor", &[&second], |h| split(h, &[4])).await;
    append(&b, 120, 60).await;
    let back = run(&a, &a_storage);
    wait_for("rebalanced", &[&back, &second], |h| split(h, &[2, 2])).await;
    append(&a, 180, 60).await;
    assert_each_event_once_by_its_segment(&client).await;
    assert_eq!(
        back.fenced() + second.fenced(),
        0,
        "a graceful move fences nothing"
    );
    back.shutdown().await.expect("stop");
    second.shutdown().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_segment_starts_the_shared_tables_over_and_the_others_follow() {
    let db = fresh_database().await;
    let client = db.client().await;
    let (a, storage) = instance(&db).await;
    append(&a, 0, 48).await;
    let running = run(&a, &storage);
    wait_for("one instance", &[&running], |h| split(h, &[4])).await;
    assert_each_event_once_by_its_segment(&client).await;
    // One segment's checkpoint becomes unusable behind the running instance's back.
    client
        .execute(
            "UPDATE krescent_checkpoints SET version = 'v0-stale' WHERE namespace = 'segments.projected#1/4'",
            &[],
        )
        .await
        .expect("spoil the checkpoint");
    // A row no event made: gone once the tables start over.
    client
        .execute("INSERT INTO segment_rows VALUES (-1, 'marker', 0, 0)", &[])
        .await
        .expect("a marker row");
    let (b, b_storage) = instance(&db).await;
    running.shutdown().await.expect("stop");
    let restarted = run(&b, &b_storage);
    wait_for("restarted", &[&restarted], |h| split(h, &[4])).await;
    append(&b, 48, 24).await;
    assert_each_event_once_by_its_segment(&client).await;
    println!("segments fenced by the rebuild: {}", restarted.fenced());
    restarted.shutdown().await.expect("stop");
}

#[tokio::test]
async fn without_leases_one_instance_runs_every_segment_and_each_counts_its_streams() {
    let krescent = Krescent::new(InMemoryEventStore::new());
    for n in 0..90u64 {
        let event = NewEvent::new(&Tick { n }).expect("encode");
        krescent
            .store()
            .append(&format!("s-{}", n % 9), ExpectedVersion::Any, vec![event])
            .await
            .expect("append");
    }
    let whole = krescent.catch_up(Counted::default()).await;
    assert!(
        matches!(
            whole,
            Err(krescent::Error::Segmented {
                model: "segments.counted",
                segments: 3,
                asked: None
            })
        ),
        "a split model does not run whole: {whole:?}"
    );
    let wrong = krescent
        .for_segment(Segment::new(0, 4).expect("0 < 4"))
        .catch_up(Counted::default())
        .await;
    assert!(
        matches!(wrong, Err(krescent::Error::Segmented { .. })),
        "{wrong:?}"
    );
    let mut total = 0;
    for segment in Segment::all(3) {
        let caught_up = krescent
            .for_segment(segment)
            .catch_up(Counted::default())
            .await
            .expect("one segment");
        assert!(caught_up.model.streams.iter().all(|s| segment.contains(s)));
        total += caught_up.model.count;
    }
    assert_eq!(total, 90, "each event counted by exactly one segment");
    let running = krescent.stream_segments(|_| Counted::default());
    let deadline = Instant::now() + Duration::from_secs(10);
    while running.held().len() < 3 {
        assert!(Instant::now() < deadline, "{:?}", running.segments());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ended = running.shutdown().await.expect("stop");
    assert_eq!(ended.len(), 3);
    // Each restored from the checkpoint of its own segment and processed nothing new.
    assert_eq!(ended.iter().map(|(_, c)| c.model.count).sum::<u64>(), 90);
    assert!(krescent
        .delete_checkpoint::<Counted>()
        .await
        .expect("delete"));
}

#[tokio::test]
async fn a_supervisor_runs_the_segments_of_a_split_model_as_one_entry() {
    use krescent::supervisor::{ModelState, Supervisor};
    let krescent = Krescent::new(InMemoryEventStore::new());
    let mut head = Position::START;
    for n in 0..40u64 {
        let event = NewEvent::new(&Tick { n }).expect("encode");
        head = krescent
            .store()
            .append(&format!("s-{}", n % 5), ExpectedVersion::Any, vec![event])
            .await
            .expect("append")
            .position;
    }
    let supervisor = Supervisor::new(krescent).segments(|_| Counted::default());
    tokio::time::timeout(Duration::from_secs(10), supervisor.reached(head))
        .await
        .expect("every segment reaches the head");
    let report = supervisor.report();
    assert_eq!(report.len(), 1);
    assert_eq!(report[0].name, "segments.counted");
    assert_eq!(report[0].state, ModelState::Running);
    assert!(report[0].position >= head, "{:?}", report[0]);
    let exits = supervisor.shutdown().await;
    assert!(exits[0].result.is_ok(), "{:?}", exits[0].result);
}
