//! Write-model figures: decisions with and without snapshots on one long stream, decisions on
//! Postgres across 100 streams from 8 tasks, and the cost of an append condition checked
//! while many unrelated writers append.
//!
//! - `bench decide ratio=<with snapshots / without>`: decisions per second on a stream of
//!   10,000 events in memory, one event appended per decision, with `fixed_events(100)`
//!   snapshots against a model without (which replays the stream on each decision).
//! - `bench decide_throughput decisions_per_s=<n>`: decisions on Postgres, 8 tasks on 100
//!   streams, with snapshots in the Postgres checkpoint storage.
//! - `bench decide_condition ratio=<append_if / append>`: single-event appends per second from
//!   8 writers on their own streams, each under a condition naming its stream and one event
//!   type, against plain appends by the same writers.

use std::error::Error;
use std::sync::Arc;
use std::time::Instant;

use krescent::prelude::*;
use krescent::store::{AppendCondition, PostgresConfig, PostgresEventStore};

use crate::measure::{median, rate, throughput};
use crate::Options;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "bench.counted")]
struct Counted {
    by: u64,
}

#[derive(EventModel, Default)]
#[model(name = "bench.counter", version = 1)]
#[checkpoint(strategy = "fixed_events(100)", storage = "memory")]
struct Snapshotted {
    #[checkpoint]
    total: u64,
}

#[krescent::handlers]
impl Snapshotted {
    fn counted(&mut self, e: &Counted) {
        self.total += e.by;
    }
}

#[derive(EventModel, Default)]
#[model(name = "bench.counter.replayed", version = 1)]
struct Replayed {
    total: u64,
}

#[krescent::handlers]
impl Replayed {
    fn counted(&mut self, e: &Counted) {
        self.total += e.by;
    }
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct Encode(#[from] serde_json::Error);

fn count(by: u64) -> Result<Vec<NewEvent>, Encode> {
    Ok(vec![NewEvent::new(&Counted { by })?])
}

/// Decisions per task in `decide_throughput` (8 × 50 in all).
const PER_TASK: u64 = 50;

/// Stream length for the `decide` figure.
const STREAM: usize = 10_000;

pub(crate) async fn run(options: &Options) -> Result<(), Box<dyn Error>> {
    decide_ratio(options).await?;
    postgres(options).await
}

async fn long_stream<S: EventStore>(store: &S, stream: &str) -> Result<(), Box<dyn Error>> {
    for _ in 0..STREAM / 1_000 {
        let batch = (0..1_000)
            .map(|_| NewEvent::new(&Counted { by: 1 }))
            .collect::<Result<Vec<_>, _>>()?;
        store.append(stream, ExpectedVersion::Any, batch).await?;
    }
    Ok(())
}

async fn decide_ratio(options: &Options) -> Result<(), Box<dyn Error>> {
    let decisions = 200;
    let krescent = Krescent::new(InMemoryEventStore::new());
    long_stream(krescent.store(), "with").await?;
    long_stream(krescent.store(), "without").await?;
    // Warm the snapshot once, so the measured decisions start from it.
    let warm = krescent
        .decide::<Snapshotted>("with")
        .run(|_| count(1))
        .await?;
    if let Some(write) = warm.snapshot {
        write.written().await?;
    }
    let with = median(options.reps, || async {
        for _ in 0..decisions {
            krescent
                .decide::<Snapshotted>("with")
                .run(|_| count(1))
                .await?;
        }
        Ok::<_, Box<dyn Error>>(())
    })
    .await?;
    let without = median(options.reps, || async {
        for _ in 0..decisions {
            krescent
                .decide::<Replayed>("without")
                .run(|_| count(1))
                .await?;
        }
        Ok::<_, Box<dyn Error>>(())
    })
    .await?;
    throughput("decide", decisions, with, without);
    Ok(())
}

async fn postgres(options: &Options) -> Result<(), Box<dyn Error>> {
    let (url, _database) = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => (url, None),
        _ => {
            let database = krescent_testkit::postgres::fresh_database().await;
            (database.url().to_owned(), Some(database))
        }
    };
    let config = PostgresConfig::in_schema("krescent_bench_decide");
    let store = PostgresEventStore::connect_with(&url, config).await?;
    store.migrate().await?;
    let storage = store.checkpoint_storage();
    storage.migrate().await?;
    let krescent = Krescent::new(store).with_storage("memory", storage);
    // Unrelated history, so that the indexes have something to skip.
    for i in 0..options.events.min(100_000) / 1_000 {
        let batch = (0..1_000)
            .map(|_| NewEvent::new(&Counted { by: 1 }))
            .collect::<Result<Vec<_>, _>>()?;
        krescent
            .store()
            .append(&format!("history-{i}"), ExpectedVersion::Any, batch)
            .await?;
    }

    let time = median(options.reps, || async {
        let tasks: Vec<_> = (0..8u64)
            .map(|t| {
                let krescent = krescent.clone();
                tokio::spawn(async move {
                    for i in 0..PER_TASK {
                        let stream = format!("account-{}", (t * 37 + i * 13) % 100);
                        krescent
                            .decide::<Snapshotted>(stream)
                            .retries(50)
                            .run(|_| count(1))
                            .await?;
                    }
                    Ok::<_, Box<dyn Error + Send + Sync>>(())
                })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        Ok::<_, Box<dyn Error + Send + Sync>>(())
    })
    .await
    .map_err(|e| e as Box<dyn Error>)?;
    println!(
        "bench decide_throughput decisions_per_s={:.0} tasks=8 streams=100",
        rate(8 * 50, time)
    );
    condition_cost(options, krescent.shared_store()).await
}

/// `decide_condition`: 8 writers on streams of their own, conditional against plain appends.
async fn condition_cost(
    options: &Options,
    store: &Arc<PostgresEventStore>,
) -> Result<(), Box<dyn Error>> {
    let appends = 100;
    let writers = |conditional: bool| {
        let store = store.clone();
        async move {
            let start = Instant::now();
            let tasks: Vec<_> = (0..8)
                .map(|w| {
                    let store: Arc<PostgresEventStore> = store.clone();
                    tokio::spawn(async move {
                        let stream = format!("writer-{w}-{conditional}");
                        for _ in 0..appends {
                            let events = count(1)?;
                            if conditional {
                                let query = Query::stream(stream.clone()).or_type("bench.rare");
                                let read_at = store.head().await?;
                                let condition = AppendCondition::new(query, read_at);
                                store
                                    .append_if(&stream, ExpectedVersion::Any, events, &condition)
                                    .await?;
                            } else {
                                store.head().await?;
                                store.append(&stream, ExpectedVersion::Any, events).await?;
                            }
                        }
                        Ok::<_, Box<dyn Error + Send + Sync>>(())
                    })
                })
                .collect();
            for task in tasks {
                task.await??;
            }
            Ok::<_, Box<dyn Error + Send + Sync>>(start.elapsed())
        }
    };
    let mut plain = Vec::new();
    let mut conditional = Vec::new();
    for _ in 0..options.reps {
        plain.push(writers(false).await.map_err(|e| e as Box<dyn Error>)?);
        conditional.push(writers(true).await.map_err(|e| e as Box<dyn Error>)?);
    }
    plain.sort_unstable();
    conditional.sort_unstable();
    throughput(
        "decide_condition",
        8 * appends,
        conditional[conditional.len() / 2],
        plain[plain.len() / 2],
    );
    Ok(())
}
