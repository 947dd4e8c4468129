//! Several bookstore models under one supervisor, on the embedded file store: each restarts
//! from its last checkpoint after a transient failure, a report line per model is printed
//! every `--report-every`, and SIGTERM or Ctrl-C stops them all gracefully, each with its
//! final checkpoint.
//!
//! ```text
//! cargo run --example supervisor [-- --data-dir DIR] [--events N] [--append-every MS]
//! cargo run --example supervisor -- --help
//! ```
//!
//! Output: `report: MODEL STATE position=P restarts=R` lines while it runs; after the signal,
//! one `stopped: MODEL position=P` line per model (or `failed: MODEL ERROR`, and exit code 1).

use std::collections::BTreeMap;
use std::error::Error;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser as _;
use krescent::checkpoint::FileCheckpointStorage;
use krescent::prelude::*;
use krescent::store::FileEventStore;
use krescent::supervisor::{RestartPolicy, Supervisor};
use tokio::signal::unix::{signal, SignalKind};

#[path = "shared/bookstore.rs"]
mod bookstore;

use bookstore::{append_batch, BookAdded, BookLent, BookRemoved, BookReturned};

/// Copies on the shelves, by book.
#[derive(EventModel, Default)]
#[model(name = "supervised.copies", version = 1)]
#[checkpoint(strategy = "fixed_events(100) | fixed_time(5s)", storage = "file")]
struct Copies {
    #[checkpoint]
    copies: BTreeMap<String, u32>,
}

#[krescent::handlers]
impl Copies {
    fn added(&mut self, e: &BookAdded) {
        *self.copies.entry(e.book_id.clone()).or_default() += e.copies;
    }

    fn removed(&mut self, e: &BookRemoved) {
        self.copies.remove(&e.book_id);
    }
}

/// Books on loan, by user.
#[derive(EventModel, Default)]
#[model(name = "supervised.loans", version = 1)]
#[checkpoint(strategy = "fixed_events(100) | fixed_time(5s)", storage = "file")]
struct Loans {
    #[checkpoint]
    by_user: BTreeMap<String, u32>,
}

#[krescent::handlers]
impl Loans {
    fn lent(&mut self, e: &BookLent) {
        *self.by_user.entry(e.user_id.clone()).or_default() += 1;
    }

    fn returned(&mut self, e: &BookReturned) {
        if let Some(n) = self.by_user.get_mut(&e.user_id) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Runs the bookstore's models under one supervisor until SIGTERM or Ctrl-C.
#[derive(clap::Parser)]
#[command(name = "supervisor")]
struct Options {
    /// The file data directory: `DIR/events/` and `DIR/checkpoints/`.
    #[arg(long, value_name = "DIR", default_value = "krescent-data")]
    data_dir: PathBuf,
    /// How many events to append at start.
    #[arg(long, value_name = "N", default_value_t = 500)]
    events: u32,
    /// Append 10 more events every MS milliseconds while running (0: never).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    append_every: u64,
    /// How often to print the report, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    report_every: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let options = Options::parse();
    let store = FileEventStore::open(options.data_dir.join("events"))?;
    let storage = FileCheckpointStorage::open(options.data_dir.join("checkpoints"))?;
    let krescent = Krescent::new(store).with_storage("file", storage);
    append_batch(krescent.store(), options.events).await?;

    let policy = RestartPolicy::default()
        .initial_backoff(Duration::from_millis(200))
        .max_backoff(Duration::from_secs(30));
    let supervisor = Supervisor::new(krescent.clone())
        .with_policy(policy)
        .model(Copies::default)
        .model(Loans::default);

    let mut terminate = signal(SignalKind::terminate())?;
    let mut report = tokio::time::interval(Duration::from_millis(options.report_every.max(1)));
    let append_every = Duration::from_millis(options.append_every);
    let mut append = tokio::time::interval(append_every.max(Duration::from_millis(1)));
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = report.tick() => {
                for model in supervisor.report() {
                    println!("report: {} {} position={} restarts={}", model.name, model.state, model.position, model.restarts);
                }
            }
            _ = append.tick(), if !append_every.is_zero() => append_batch(krescent.store(), 10).await?,
        }
    }

    let mut failed = false;
    for exit in supervisor.shutdown().await {
        match exit.result {
            Ok(position) => println!("stopped: {} position={position}", exit.name),
            Err(e) => {
                failed = true;
                println!("failed: {} {e}", exit.name);
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}
