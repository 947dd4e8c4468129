//! A replica of a projection model, for the fleet tests: it projects every `fleet.tick` event
//! into the table `projected` (one row per event, no unique key, so an event applied twice
//! shows as two rows) and counts them in the one row of `counted` (a row every commit
//! locks), with queued writes, holding the model's lease while it runs and waiting as a
//! standby while another replica holds it. Fenced, it says so and becomes a standby again.
//!
//! ```text
//! fleet_worker DATABASE_URL
//! ```
//!
//! Environment: `FLEET_TTL_MS`, `FLEET_HEARTBEAT_MS`, `FLEET_POLL_MS` (the lease's timing,
//! default [`LeaseConfig::default`]); `FLEET_SLOW_MS` (a pause in every handler, so that the
//! process is in the middle of a batch most of the time). Prints `status=<status>` on every change of status
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
//! processes change and `fenced total=<N>` whenever a segment of it was fenced. With
//! `FLEET_SEGMENTS=8`, the 8-segment model `fleet.segmented8` (table `segmented8`) the same
//! way. With `FLEET_RESCALE=2`, `4` or `8`, the model `fleet.rescaled` in that many segments
//! (table `rescaled`, the same rows plus the segment count and the time of the insert), the
//! same way: workers of different counts are a rolling deploy that changes the count.
//!
//! With `FLEET_VERSION=1` or `2` it runs that version of the blue/green model
//! `fleet.versioned` (table `versioned`, the same rows, version 2's with one more column),
//! switched to automatically when caught up, the previous version following for 10 minutes;
//! it prints `version=<N> pid=<pid>` first.

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
    count: String,
    slow: Duration,
}

#[krescent::handlers]
impl Projected {
    async fn tick(&mut self, e: &Tick, meta: &EventMeta) -> Result<(), ProjectionError> {
        project(&mut self.table, &self.insert, self.slow, e, meta, None).await?;
        self.table.queue(&self.count, &[]).await
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
        None => table.queue(insert, &[&position, &stream, &n, &pid]).await,
        Some(segment) => {
            table
                .queue(insert, &[&position, &stream, &n, &pid, &segment])
                .await
        }
    }
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

/// [`Segmented`] split into 8: one row per event in `segmented8`.
#[derive(EventModel)]
#[model(name = "fleet.segmented8", segments = 8)]
#[checkpoint(strategy = "fixed_events(10)", storage = "postgres")]
struct Segmented8 {
    #[checkpoint(support)]
    table: PostgresProjection,
    insert: String,
    slow: Duration,
    segment: i64,
}

#[krescent::handlers]
impl Segmented8 {
    async fn tick(&mut self, e: &Tick, meta: &EventMeta) -> Result<(), ProjectionError> {
        let segment = Some(self.segment);
        project(&mut self.table, &self.insert, self.slow, e, meta, segment).await
    }
}

/// `fleet.rescaled`, the model run in 2, 4 or 8 segments (`FLEET_RESCALE`): one row per event
/// in `rescaled`, with the segment count that projected it and when.
macro_rules! rescaled {
    ($model:ident, $count:literal) => {
        #[doc = concat!("`fleet.rescaled` in ", stringify!($count), " segments.")]
        #[derive(EventModel)]
        #[model(name = "fleet.rescaled", segments = $count)]
        #[checkpoint(strategy = "fixed_events(10)", storage = "postgres")]
        struct $model {
            #[checkpoint(support)]
            table: PostgresProjection,
            insert: String,
            slow: Duration,
            segment: i64,
        }

        #[krescent::handlers]
        impl $model {
            async fn tick(&mut self, e: &Tick, meta: &EventMeta) -> Result<(), ProjectionError> {
                let segment = Some(self.segment);
                project(&mut self.table, &self.insert, self.slow, e, meta, segment).await
            }
        }
    };
}

rescaled!(Rescaled2, 2);
rescaled!(Rescaled4, 4);
rescaled!(Rescaled8, 8);

/// Version 1 of the blue/green model `fleet.versioned`: one row per event in its version's
/// `versioned`.
#[derive(EventModel)]
#[model(name = "fleet.versioned", version = 1)]
#[checkpoint(strategy = "fixed_events(10)", storage = "postgres")]
struct VersionedV1 {
    #[checkpoint(support)]
    table: PostgresProjection,
    slow: Duration,
}

#[krescent::handlers]
impl VersionedV1 {
    async fn tick(&mut self, e: &Tick, meta: &EventMeta) -> Result<(), VersionedError> {
        let insert = versioned_insert(&self.table, "")?;
        Ok(project(&mut self.table, &insert, self.slow, e, meta, None).await?)
    }
}

/// Version 2 of `fleet.versioned`: its table has the column `v2` too.
#[derive(EventModel)]
#[model(name = "fleet.versioned", version = 2)]
#[checkpoint(strategy = "fixed_events(10)", storage = "postgres")]
struct VersionedV2 {
    #[checkpoint(support)]
    table: PostgresProjection,
    slow: Duration,
}

#[krescent::handlers]
impl VersionedV2 {
    async fn tick(&mut self, e: &Tick, meta: &EventMeta) -> Result<(), VersionedError> {
        let insert = versioned_insert(&self.table, ", v2")?;
        Ok(project(&mut self.table, &insert, self.slow, e, meta, None).await?)
    }
}

/// The insert of a projected event into this version's `versioned` (its name is known once
/// the run entered the version), with `extra` columns set to true.
fn versioned_insert(table: &PostgresProjection, extra: &str) -> Result<String, VersionedError> {
    let name = table.name_of("versioned").ok_or(VersionedError::Unplaced)?;
    let values = if extra.is_empty() { "" } else { ", true" };
    Ok(format!(
        "INSERT INTO {name} (position, stream_id, n, pid{extra}) VALUES ($1, $2, $3, $4{values})"
    ))
}

/// What a handler of `fleet.versioned` fails with.
#[derive(Debug)]
enum VersionedError {
    Projection(ProjectionError),
    /// Its table's name is asked for before the run entered the version (never, as the run
    /// enters it before any event).
    Unplaced,
}

impl std::fmt::Display for VersionedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VersionedError::Projection(e) => e.fmt(f),
            VersionedError::Unplaced => f.write_str("the version's table is not known yet"),
        }
    }
}

impl Error for VersionedError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            VersionedError::Projection(e) => Some(e),
            VersionedError::Unplaced => None,
        }
    }
}

impl From<ProjectionError> for VersionedError {
    fn from(e: ProjectionError) -> Self {
        VersionedError::Projection(e)
    }
}

/// Runs version `version` of `fleet.versioned` for good.
async fn versioned(
    krescent: &Krescent<PostgresEventStore>,
    storage: &krescent::checkpoint::storage::PostgresCheckpointStorage,
    slow: Duration,
    version: &str,
) -> Result<(), Box<dyn Error>> {
    println!("version={version} pid={}", std::process::id());
    let switching = krescent::projection::Versioning::automatic().grace(Duration::from_mins(10));
    loop {
        let extra = if version == "2" {
            ", v2 boolean NOT NULL"
        } else {
            ""
        };
        let (table, _) = projection(storage, "versioned", extra)?;
        let table = table.versioned(switching.clone());
        let ended = if version == "2" {
            report(krescent.stream(VersionedV2 { table, slow })).await
        } else {
            report(krescent.stream(VersionedV1 { table, slow })).await
        };
        if ended {
            return Ok(());
        }
    }
}

/// The parts of a segment's model: its table, its insert statement, the pause, its index.
type Parts = (PostgresProjection, String, Duration, i64);

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
            println!("error {}", with_causes(&e));
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

/// Runs this process's share of the segments of `M` (projecting into `table`, built by
/// `make` from its parts), for good.
async fn segmented<M: EventModel>(
    krescent: &Krescent<PostgresEventStore>,
    storage: &krescent::checkpoint::storage::PostgresCheckpointStorage,
    slow: Duration,
    table: &'static str,
    make: fn(Parts) -> M,
) -> Result<(), Box<dyn Error>> {
    // A rescaled model's rows say which count projected them, and when.
    let rescaled = table == "rescaled";
    let (columns, layout) = if rescaled {
        (
            ", segment bigint NOT NULL, layout bigint NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp()",
            format!(", layout) VALUES ($1, $2, $3, $4, $5, {})", M::SEGMENTS),
        )
    } else {
        (
            ", segment bigint NOT NULL",
            ") VALUES ($1, $2, $3, $4, $5)".to_owned(),
        )
    };
    loop {
        let storage = storage.clone();
        let layout = layout.clone();
        let running = krescent.stream_segments(move |segment| {
            let (projection, name) = projection(&storage, table, columns)
                .unwrap_or_else(|e| panic!("the table is valid: {e}"));
            let insert =
                format!("INSERT INTO {name} (position, stream_id, n, pid, segment{layout}");
            make((projection, insert, slow, i64::from(segment.index())))
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
            println!("error {}", with_causes(&e));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn rescaled2(p: Parts) -> Rescaled2 {
    Rescaled2 {
        table: p.0,
        insert: p.1,
        slow: p.2,
        segment: p.3,
    }
}

fn rescaled4(p: Parts) -> Rescaled4 {
    Rescaled4 {
        table: p.0,
        insert: p.1,
        slow: p.2,
        segment: p.3,
    }
}

fn rescaled8(p: Parts) -> Rescaled8 {
    Rescaled8 {
        table: p.0,
        insert: p.1,
        slow: p.2,
        segment: p.3,
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
    krescent.configure::<Segmented8>().lease(lease)?;
    krescent.configure::<Rescaled2>().lease(lease)?;
    krescent.configure::<Rescaled4>().lease(lease)?;
    krescent.configure::<Rescaled8>().lease(lease)?;
    krescent.configure::<VersionedV1>().lease(lease)?;
    krescent.configure::<VersionedV2>().lease(lease)?;
    if let Ok(version) = std::env::var("FLEET_VERSION") {
        return versioned(&krescent, &storage, slow, &version).await;
    }
    match std::env::var("FLEET_RESCALE").as_deref() {
        Ok("2") => return segmented(&krescent, &storage, slow, "rescaled", rescaled2).await,
        Ok("4") => return segmented(&krescent, &storage, slow, "rescaled", rescaled4).await,
        Ok("8") => return segmented(&krescent, &storage, slow, "rescaled", rescaled8).await,
        Ok(other) => return Err(format!("FLEET_RESCALE={other}: expected 2, 4 or 8").into()),
        Err(_) => {}
    }
    match std::env::var("FLEET_SEGMENTS").as_deref() {
        Ok("8") => {
            return segmented(&krescent, &storage, slow, "segmented8", |p| Segmented8 {
                table: p.0,
                insert: p.1,
                slow: p.2,
                segment: p.3,
            })
            .await;
        }
        Ok(_) => {
            return segmented(&krescent, &storage, slow, "segmented", |p| Segmented {
                table: p.0,
                insert: p.1,
                slow: p.2,
                segment: p.3,
            })
            .await;
        }
        Err(_) => {}
    }
    loop {
        let (table, name) = projection(&storage, "projected", "")?;
        let table = table.table(
            "counted",
            "CREATE TABLE {table} (id integer PRIMARY KEY, events bigint NOT NULL)",
        )?;
        let counted = table.name_of("counted").ok_or("declared")?;
        let count = format!("INSERT INTO {counted} AS c (id, events) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET events = c.events + 1");
        let model = Projected {
            table,
            insert: format!(
                "INSERT INTO {name} (position, stream_id, n, pid) VALUES ($1, $2, $3, $4)"
            ),
            count,
            slow,
        };
        if report(krescent.stream(model)).await {
            return Ok(());
        }
    }
}

/// `error` and its causes, on one line.
fn with_causes(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}
