//! The bookstore: a read model of the books on the shelves, checkpointed every 25 events.
//!
//! Each run appends a batch of new, seeded events (books added, lent, returned, removed) to the
//! store, catches the model up, and prints one summary line. The first run replays everything;
//! later runs restore the checkpoint and replay only the new events.
//!
//! ```text
//! cargo run --example bookstore [-- --data-dir DIR] [--events N]      # file store (default)
//! DATABASE_URL=postgres://… cargo run --example bookstore             # PostgreSQL
//! cargo run --example bookstore -- --help
//! ```
//!
//! On a terminal, a progress line shows the replay's rate and ETA; off a terminal, only the
//! summary is printed.
//!
//! ```text
//! ```

use std::collections::BTreeMap;
use std::error::Error;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser as _;
use indicatif::{ProgressBar, ProgressStyle};
use krescent::checkpoint::FileCheckpointStorage;
use krescent::prelude::*;
use krescent::store::{EventStore, FileEventStore};
use krescent::Position;

#[path = "shared/bookstore.rs"]
mod bookstore;

use bookstore::{append_batch, BookAdded, BookLent, BookRemoved, BookReturned};

#[derive(Debug, Default, Serialize, Deserialize)]
struct Book {
    title: String,
    copies: u32,
    on_loan: u32,
}

/// The books on the shelves. The storage name is logical: `main` registers the file or the
/// PostgreSQL storage under it.
#[derive(EventModel, Default)]
#[model(name = "bookstore.books", version = 1)]
#[checkpoint(strategy = "fixed_events(25)", storage = "bookstore")]
struct Books {
    #[checkpoint]
    books: BTreeMap<String, Book>,
}

#[krescent::handlers]
impl Books {
    fn added(&mut self, e: &BookAdded) {
        let book = self.books.entry(e.book_id.clone()).or_default();
        book.title.clone_from(&e.title);
        book.copies += e.copies;
    }

    fn lent(&mut self, e: &BookLent) {
        if let Some(book) = self.books.get_mut(&e.book_id) {
            book.on_loan = (book.on_loan + 1).min(book.copies);
        }
    }

    fn returned(&mut self, e: &BookReturned) {
        if let Some(book) = self.books.get_mut(&e.book_id) {
            book.on_loan = book.on_loan.saturating_sub(1);
        }
    }

    fn removed(&mut self, e: &BookRemoved) {
        self.books.remove(&e.book_id);
    }
}

/// The bookstore: each run appends a batch of seeded events and catches the read model up,
/// printing one summary line: `summary: restored_from=P|none replayed=N books=B`.
#[derive(clap::Parser)]
#[command(name = "bookstore")]
struct Options {
    /// The file data directory: `DIR/events/` and `DIR/checkpoints/` (a `DIR/events.log` of krescent 0.1 is imported once).
    #[arg(long, value_name = "DIR", default_value = "krescent-data")]
    data_dir: PathBuf,
    /// How many events this run appends.
    #[arg(long, value_name = "N", default_value_t = 500)]
    events: u32,
    /// Run on PostgreSQL instead of the file store.
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    database_url: Option<String>,
}

/// Appends the run's batch, catches the model up (showing progress on a terminal) and prints
/// the summary line.
async fn run<S: EventStore>(krescent: Krescent<S>, events: u32) -> Result<(), Box<dyn Error>> {
    append_batch(krescent.store(), events).await?;
    let head = krescent.store().head().await?;
    let running = krescent.stream(Books::default());
    // A progress line with rate and ETA on a terminal; nothing off it.
    let progress = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(head.get());
        bar.set_style(
            ProgressStyle::with_template("replaying {pos}/{len} [{bar:30}] {per_sec} ETA {eta}")?
                .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    while !running.is_finished() && running.position() < head {
        progress.set_position(running.position().get());
        tokio::select! {
            // A model that stopped early says why at `shutdown` below.
            _ = running.reached(head) => {}
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    progress.set_position(running.position().get());
    progress.finish_and_clear();
    let caught_up = running.shutdown().await?;
    let restored_from = caught_up
        .origin
        .restored_from()
        .map_or_else(|| "none".to_owned(), |p: Position| p.to_string());
    println!(
        "summary: restored_from={restored_from} replayed={} books={}",
        caught_up.processed,
        caught_up.model.books.len()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let options = Options::parse();
    if let Some(url) = &options.database_url {
        return postgres::run_on(url, options.events).await;
    }
    let store = FileEventStore::open(options.data_dir.join("events"))?;
    // A data directory of krescent 0.1 kept its events in one file: import them once.
    let legacy = options.data_dir.join("events.log");
    if legacy.is_file() && store.head().await? == Position::START {
        let imported = store.import_legacy(&legacy).await?;
        std::fs::rename(&legacy, options.data_dir.join("events.log.imported"))?;
        eprintln!("imported {imported} events from {}", legacy.display());
    }
    let storage = FileCheckpointStorage::open(options.data_dir.join("checkpoints"))?;
    run(
        Krescent::new(store).with_storage("bookstore", storage),
        options.events,
    )
    .await
}

mod postgres {
    use krescent::store::PostgresEventStore;

    use super::{run, Error, Krescent};

    /// The same run against PostgreSQL: events and checkpoints in the database, tables created
    /// on first use.
    pub(super) async fn run_on(url: &str, events: u32) -> Result<(), Box<dyn Error>> {
        let store = PostgresEventStore::connect(url).await?;
        store.migrate().await?;
        let storage = store.checkpoint_storage();
        storage.migrate().await?;
        run(
            Krescent::new(store).with_storage("bookstore", storage),
            events,
        )
        .await
    }
}
