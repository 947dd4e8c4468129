//! The events the fleet workers (`src/bin/fleet_worker.rs`) count and project, and a test's
//! appender of them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use krescent::prelude::*;
use krescent::store::PostgresEventStore;

/// One tick; `n` counts the ticks appended before it.
#[derive(Event, Serialize, Deserialize)]
#[event(name = "fleet.tick")]
pub struct Tick {
    /// Its number.
    pub n: u64,
}

/// Appends five ticks to one of a few streams every `every` until stopped; the number appended.
pub fn appender(
    store: Arc<PostgresEventStore>,
    stop: Arc<AtomicBool>,
    every: Duration,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let events = (0..5)
                .map(|i| NewEvent::new(&Tick { n: n + i }).expect("encode"))
                .collect();
            store
                .append(&format!("ticks-{}", n % 7), ExpectedVersion::Any, events)
                .await
                .expect("append");
            n += 5;
            tokio::time::sleep(every).await;
        }
        n
    })
}
