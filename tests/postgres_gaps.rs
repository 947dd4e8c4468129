//! Gap safety of the Postgres store: a live subscriber sees every committed event exactly once,
//! in increasing positions, while appenders hold their transactions open for random times and
//! roll some of them back.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use krescent::store::{
    EventStore, ExpectedVersion, PostgresConfig, PostgresEventStore, StoreError,
};
use krescent::{NewEvent, Position, RecordedEvent};
use krescent_testkit::postgres::fresh_database;
use tokio::sync::watch;

const APPENDERS: usize = 8;
const EVENTS: usize = 20_000;
const STREAMS: u64 = 16;

/// xorshift64*: enough randomness for delays and choices, seeded per appender.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What one appender did: the ids of the events it committed and of those rolled back.
#[derive(Default)]
struct Outcome {
    committed: Vec<String>,
    rolled_back: Vec<String>,
}

/// Appends batches of 1 to 12 events to random streams until `quota` events are committed.
async fn append_until_done(store: Arc<PostgresEventStore>, seed: u64, quota: usize) -> Outcome {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut outcome = Outcome::default();
    while outcome.committed.len() < quota {
        let size = usize::try_from(1 + rng.below(12))
            .expect("small")
            .min(quota - outcome.committed.len());
        let events: Vec<NewEvent> = (0..size)
            .map(|i| {
                NewEvent::from_json("gap.test", &format!(r#"{{"appender":{seed},"i":{i}}}"#))
                    .expect("JSON")
            })
            .collect();
        let ids: Vec<String> = events.iter().map(|e| e.event_id.to_string()).collect();
        let stream = format!("stream-{}", rng.below(STREAMS));
        let delay = if rng.below(8) == 0 {
            Duration::from_millis(1 + rng.below(3))
        } else {
            Duration::ZERO
        };
        let roll_back = rng.below(10) == 0;
        let before_commit = async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if roll_back {
                return Err(StoreError::Database {
                    source: "rolled back by the test".into(),
                    transient: false,
                });
            }
            Ok(())
        };
        match store
            .append_with(&stream, ExpectedVersion::Any, events, before_commit)
            .await
        {
            Ok(_) => outcome.committed.extend(ids),
            Err(StoreError::Database {
                transient: false, ..
            }) if roll_back => outcome.rolled_back.extend(ids),
            Err(e) => panic!("append failed: {e}"),
        }
    }
    outcome
}

/// Reads live from the start until `last` (known once the appenders are done) is reached.
async fn subscribe_until(
    store: Arc<PostgresEventStore>,
    mut last: watch::Receiver<Option<Position>>,
) -> Vec<RecordedEvent> {
    let mut subscription = store.subscribe(Position::START);
    let mut seen = Vec::new();
    loop {
        let at = subscription.position();
        tokio::select! {
            batch = subscription.next_batch() => seen.extend(batch.expect("read")),
            _ = last.wait_for(|last| last.is_some_and(|last| last <= at)) => return seen,
        }
    }
}

async fn one_round(round: u64) {
    let db = fresh_database().await;
    let config = PostgresConfig {
        poll_interval: Duration::from_millis(200),
        ..PostgresConfig::default()
    };
    let store = Arc::new(db.event_store_with(config).await);
    let (last_tx, last_rx) = watch::channel(None);
    let subscriber = tokio::spawn(subscribe_until(store.clone(), last_rx));
    // Let the subscriber start (and wait) before the first append.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    let quota = EVENTS / APPENDERS;
    let appenders: Vec<_> = (0..APPENDERS)
        .map(|i| {
            tokio::spawn(append_until_done(
                store.clone(),
                round * 100 + i as u64 + 1,
                quota,
            ))
        })
        .collect();
    let mut committed = HashSet::new();
    let mut rolled_back = HashSet::new();
    for appender in appenders {
        let outcome = appender.await.expect("appender");
        committed.extend(outcome.committed);
        rolled_back.extend(outcome.rolled_back);
    }
    let appending = started.elapsed();
    assert_eq!(committed.len(), EVENTS);
    assert!(
        !rolled_back.is_empty(),
        "some appends must have been rolled back"
    );

    let head = store.head().await.expect("head");
    last_tx.send_replace(Some(head));
    let seen = tokio::time::timeout(Duration::from_mins(1), subscriber)
        .await
        .expect("the subscriber caught up")
        .expect("subscriber");

    // Strictly increasing positions: nothing twice, nothing out of order.
    for pair in seen.windows(2) {
        assert!(
            pair[0].position() < pair[1].position(),
            "round {round}: {} then {}",
            pair[0].position(),
            pair[1].position()
        );
    }
    let seen_ids: Vec<String> = seen.iter().map(|e| e.meta.event_id.to_string()).collect();
    let seen_set: HashSet<&String> = seen_ids.iter().collect();
    assert_eq!(
        seen_set.len(),
        seen_ids.len(),
        "round {round}: an event was delivered twice"
    );
    assert!(
        seen_ids.iter().all(|id| !rolled_back.contains(id)),
        "round {round}: a rolled-back event was delivered"
    );
    assert_eq!(
        seen_ids.len(),
        EVENTS,
        "round {round}: the subscriber saw {} of {EVENTS} events",
        seen_ids.len()
    );
    assert!(
        seen_ids.iter().all(|id| committed.contains(id)),
        "round {round}: an unknown event was delivered"
    );

    // What it saw live is exactly what a reader sees afterwards, and streams have no gaps.
    let replay = store
        .read_after(Position::START, usize::MAX)
        .await
        .expect("read");
    assert_eq!(
        replay, seen,
        "round {round}: the live view differs from a later read"
    );
    let mut versions: HashMap<&str, u64> = HashMap::new();
    for event in &seen {
        let version = versions.entry(&event.meta.stream_id).or_default();
        *version += 1;
        assert_eq!(
            event.meta.stream_version, *version,
            "round {round}: stream `{}` skips a version",
            event.meta.stream_id
        );
    }
    eprintln!(
        "round {round}: {EVENTS} events, {} rolled back, appended in {appending:?}",
        rolled_back.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_live_subscriber_sees_every_committed_event_exactly_once_in_order() {
    for round in 0..3 {
        one_round(round).await;
    }
}
