//! A replica of a projection model, for the fleet tests: it projects every `fleet.tick` event
//! into the table `projected` (one row per event, no unique key, so an event applied twice
//! shows as two rows), holding the model's lease while it runs and waiting as a standby while
//! another replica holds it. Fenced, it says so and becomes a standby again.
//!
//! ```text
//! fleet_worker DATABASE_URL
//! ```
//!
//! Environment: `FLEET_TTL_MS`, `FLEET_HEARTBEAT_MS`, `FLEET_POLL_MS` (the lease's timing,
//! default [`LeaseConfig::default`]); `FLEET_SLOW_MS` (a pause in every handler, so that a
//! transaction is open most of the time). Prints `status=<status>` on every change of status
//! and `fenced epoch=<E>` when a commit was fenced.
//!
//! With `FLEET_BUCKET=s3://bucket/prefix` (and the AWS environment: `AWS_ENDPOINT_URL`, region,
//! credentials) it runs the exclusive in-memory model `fleet.counted` instead, checkpointing
//! after every event to that bucket ([`ObjectStoreCheckpointStorage`], its leases in the
//! database); it prints the same lines.
//!
//! With `FLEET_SEGMENTS=1` it runs the 4-segment model `fleet.segmented` instead (table
//! `segmented`, the same rows plus the segment's index), with its share of the segments
//! ([`Krescent::stream_segments`]); it prints `segments=<i,j,...>` whenever the segments it
//! processes change and `fenced total=<N>` whenever a segment of it was fenced.

use std::error::Error;
use std::time::Duration;

use krescent::checkpoint::ObjectStoreCheckpointStorage;
use krescent::fleet::LeaseConfig;
use krescent::prelude::*;
use krescent::projection::{PostgresProjection, ProjectionError};
use krescent::store::PostgresEventStore;

/// The event the tests append.
#[derive(Event, Serialize, Deserialize)]
#[event(name = "fleet.tick")]
struct Tick {
    n: u64,
}

/// One row per event in `projected`.
#[derive(EventModel)]
#[model(name = "fleet.projected")]
#[checkpoint(strategy = "fixed_events(10)", storage = "postgres")]
struct Projected {
    #[checkpoint(support)]
    table: PostgresProjection,
    insert: String,
    slow: Duration,
}

#[krescent::handlers]
impl Projected {
    async fn tick(&mut self, e: &Tick, meta: &EventMeta) -> Result<(), ProjectionError> {
        project(&mut self.table, &self.insert, self.slow, e, meta, None).await
    }
}

/// Inserts the row of `e` (after a pause of `slow`), with the segment's index if given.
async fn project(
    table: &mut PostgresProjection,
    insert: &str,
    slow: Duration,
    e: &Tick,
    meta: &EventMeta,
    segment: Option<i64>,
) -> Result<(), ProjectionError> {
    if !slow.is_zero() {
        tokio::time::sleep(slow).await;
    }
    let position = i64::try_from(meta.position.get()).unwrap_or(i64::MAX);
    let n = i64::try_from(e.n).unwrap_or(i64::MAX);
    let pid = i64::from(std::process::id());
    let stream: &str = &meta.stream_id;
    match segment {
        None => {
            table
                .execute(insert, &[&position, &stream, &n, &pid])
                .await?
        }
        Some(segment) => {
            table
                .execute(insert, &[&position, &stream, &n, &pid, &segment])
                .await?
        }
    };
    Ok(())
}

/// [`Projected`], split into 4 segments: one row per event in `segmented`.
#[derive(EventModel)]
#[model(name = "fleet.segmented", segments = 4)]
#[checkpoint(strategy = "fixed_events(10)", storage = "postgres")]
struct Segmented {
    #[checkpoint(support)]
    table: PostgresProjection,
    insert: String,
    slow: Duration,
    segment: i64,
}

#[krescent::handlers]
impl Segmented {
    async fn tick(&mut self, e: &Tick, meta: &EventMeta) -> Result<(), ProjectionError> {
        let segment = Some(self.segment);
        project(&mut self.table, &self.insert, self.slow, e, meta, segment).await
    }
}

/// Counts the ticks, in memory; exclusive, so it holds a lease; checkpoints to a bucket.
#[derive(EventModel, Default)]
#[model(name = "fleet.counted", exclusive)]
#[checkpoint(strategy = "always", storage = "bucket")]
struct Counted {
    #[checkpoint]
    ticks: u64,
}

#[krescent::handlers]
impl Counted {
    fn tick(&mut self, _: &Tick) {
        self.ticks += 1;
    }
}

/// Runs [`Counted`] for good, checkpointing to the bucket at `url`.
async fn counted(
    store: PostgresEventStore,
    storage: &krescent::checkpoint::storage::PostgresCheckpointStorage,
    url: &str,
    lease: LeaseConfig,
) -> Result<(), Box<dyn Error>> {
    let bucket = ObjectStoreCheckpointStorage::from_url(url)?
        .with_leases(storage)
        .await?;
    let mut krescent = Krescent::new(store).with_storage("bucket", bucket);
    krescent.configure::<Counted>().lease(lease)?;
    loop {
        // Stopped cleanly or not, it runs again: the bucket worker ends only when killed.
        report(krescent.stream(Counted::default())).await;
    }
}

/// Prints `running`'s status changes until it stops, then how it ended; whether it ended
/// without an error.
async fn report<M: EventModel>(running: krescent::Running<M>) -> bool {
    let mut status = running.status_changes();
    loop {
        let now = *status.borrow_and_update();
        println!("status={now}");
        if now == krescent::Status::Stopped || status.changed().await.is_err() {
            break;
        }
    }
    match running.shutdown().await {
        Err(krescent::Error::Fenced { epoch, .. }) => println!("fenced epoch={epoch}"),
        Err(e) => {
            println!("error {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(_) => return true,
    }
    false
}

/// The projection of `table` (the columns of a projected event, and `extra`).
fn projection(
    storage: &krescent::checkpoint::storage::PostgresCheckpointStorage,
    table: &str,
    extra: &str,
) -> Result<(PostgresProjection, String), Box<dyn Error>> {
    let projection = PostgresProjection::new(storage, 1).table(
        table,
        &format!("CREATE TABLE {{table}} (position bigint NOT NULL, stream_id text NOT NULL, n bigint NOT NULL, pid bigint NOT NULL{extra})"),
    )?;
    let name = projection.name_of(table).ok_or("declared")?.to_owned();
    Ok((projection, name))
}

/// Runs this process's share of `fleet.segmented`'s segments, for good.
async fn segmented(
    krescent: &Krescent<PostgresEventStore>,
    storage: &krescent::checkpoint::storage::PostgresCheckpointStorage,
    slow: Duration,
) -> Result<(), Box<dyn Error>> {
    loop {
        let storage = storage.clone();
        let running = krescent.stream_segments(move |segment| {
            let (table, name) = projection(&storage, "segmented", ", segment bigint NOT NULL")
                .unwrap_or_else(|e| panic!("the table is valid: {e}"));
            Segmented {
                table,
                insert: format!("INSERT INTO {name} (position, stream_id, n, pid, segment) VALUES ($1, $2, $3, $4, $5)"),
                slow,
                segment: i64::from(segment.index()),
            }
        });
        let (mut held, mut fenced) = (None, 0);
        while !running.is_finished() {
            let now: Vec<String> = running
                .held()
                .iter()
                .map(|s| s.index().to_string())
                .collect();
            if held.as_ref() != Some(&now) {
                println!("segments={}", now.join(","));
                held = Some(now);
            }
            if running.fenced() != fenced {
                fenced = running.fenced();
                println!("fenced total={fenced}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Err(e) = running.shutdown().await {
            println!("error {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn millis(name: &str) -> Result<Option<Duration>, Box<dyn Error>> {
    match std::env::var(name) {
        Ok(value) => Ok(Some(Duration::from_millis(
            value.parse().map_err(|e| format!("{name}={value}: {e}"))?,
        ))),
        Err(_) => Ok(None),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let url = std::env::args()
        .nth(1)
        .ok_or("usage: fleet_worker DATABASE_URL")?;
    let defaults = LeaseConfig::default();
    let lease = LeaseConfig {
        ttl: millis("FLEET_TTL_MS")?.unwrap_or(defaults.ttl),
        heartbeat: millis("FLEET_HEARTBEAT_MS")?.unwrap_or(defaults.heartbeat),
        poll: millis("FLEET_POLL_MS")?.unwrap_or(defaults.poll),
    };
    let slow = millis("FLEET_SLOW_MS")?.unwrap_or_default();
    let store = PostgresEventStore::connect(&url).await?;
    store.migrate().await?;
    let storage = store.checkpoint_storage();
    storage.migrate().await?;
    if let Ok(bucket) = std::env::var("FLEET_BUCKET") {
        return counted(store, &storage, &bucket, lease).await;
    }
    let mut krescent = Krescent::new(store).with_storage("postgres", storage.clone());
    krescent.configure::<Projected>().lease(lease)?;
    krescent.configure::<Segmented>().lease(lease)?;
    if std::env::var_os("FLEET_SEGMENTS").is_some() {
        return segmented(&krescent, &storage, slow).await;
    }
    loop {
        let (table, name) = projection(&storage, "projected", "")?;
        let model = Projected {
            table,
            insert: format!(
                "INSERT INTO {name} (position, stream_id, n, pid) VALUES ($1, $2, $3, $4)"
            ),
            slow,
        };
        if report(krescent.stream(model)).await {
            return Ok(());
        }
    }
}
