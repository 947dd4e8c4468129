//! A projection model that parks, for `tests/parked_kills.rs`: it projects every
//! `parking.step` event into the table `parking_steps` (one row per event, no unique key, so an
//! event applied twice shows as two rows); a step marked poison fails its handler after its row
//! was written (so that the row must be rolled back), unless `PARKING_FIXED` is set. Holds the
//! model's lease while it runs, with a fast lease (1 s), and restarts the model whenever it
//! ends.
//!
//! ```text
//! parking_worker DATABASE_URL
//! ```
//!
//! Environment: `PARKING_SLOW_MS` (a pause in every handler, so that a transaction is open most
//! of the time), `PARKING_FIXED` (poison steps succeed: the handler is "fixed").

use std::error::Error;
use std::time::Duration;

use krescent::fleet::LeaseConfig;
use krescent::prelude::*;
use krescent::projection::{PostgresProjection, ProjectionError};
use krescent::store::PostgresEventStore;

/// The event the test appends.
#[derive(Event, Serialize, Deserialize)]
#[event(name = "parking.step")]
struct Step {
    seq: i64,
    poison: bool,
}

/// What the handler fails with: its write, or a poison step.
#[derive(Debug)]
enum StepError {
    Projection(ProjectionError),
    Poison(i64),
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepError::Projection(e) => e.fmt(f),
            StepError::Poison(seq) => write!(f, "poison step {seq}"),
        }
    }
}

impl Error for StepError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            // Its own source: a transient failure must be seen as one through it.
            StepError::Projection(e) => Some(e),
            StepError::Poison(_) => None,
        }
    }
}

/// One row per event in `parking_steps`.
#[derive(EventModel)]
#[model(name = "parking.steps", on_error = "park")]
#[checkpoint(strategy = "fixed_events(7)", storage = "postgres")]
struct Steps {
    #[checkpoint(support)]
    table: PostgresProjection,
    insert: String,
    slow: Duration,
    fixed: bool,
}

#[krescent::handlers]
impl Steps {
    async fn step(&mut self, e: &Step, meta: &EventMeta) -> Result<(), StepError> {
        if !self.slow.is_zero() {
            tokio::time::sleep(self.slow).await;
        }
        let position = i64::try_from(meta.position.get()).unwrap_or(i64::MAX);
        let stream: &str = &meta.stream_id;
        self.table
            .execute(&self.insert, &[&position, &stream, &e.seq])
            .await
            .map_err(StepError::Projection)?;
        if e.poison && !self.fixed {
            return Err(StepError::Poison(e.seq));
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let url = std::env::args()
        .nth(1)
        .ok_or("usage: parking_worker DATABASE_URL")?;
    let slow = match std::env::var("PARKING_SLOW_MS") {
        Ok(ms) => Duration::from_millis(
            ms.parse()
                .map_err(|e| format!("PARKING_SLOW_MS={ms}: {e}"))?,
        ),
        Err(_) => Duration::ZERO,
    };
    let fixed = std::env::var_os("PARKING_FIXED").is_some();
    let store = PostgresEventStore::connect(&url).await?;
    store.migrate().await?;
    let storage = store.checkpoint_storage();
    storage.migrate().await?;
    let mut krescent = Krescent::new(store).with_storage("postgres", storage.clone());
    krescent.configure::<Steps>().lease(LeaseConfig {
        ttl: Duration::from_secs(1),
        heartbeat: Duration::from_millis(300),
        poll: Duration::from_millis(100),
    })?;
    loop {
        let table = PostgresProjection::new(&storage, 1).table(
            "parking_steps",
            "CREATE TABLE {table} (position bigint NOT NULL, stream_id text NOT NULL, seq bigint NOT NULL)",
        )?;
        let name = table.name_of("parking_steps").ok_or("declared")?.to_owned();
        let model = Steps {
            table,
            insert: format!("INSERT INTO {name} (position, stream_id, seq) VALUES ($1, $2, $3)"),
            slow,
            fixed,
        };
        let running = krescent.stream(model);
        while !running.is_finished() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Err(e) = running.shutdown().await {
            println!("error {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
