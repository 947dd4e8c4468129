//! The bookstore stream projected into a PostgreSQL table, exactly once.
//!
//! The `shelf` table gets one row per book. Every handler queues its statement in the
//! model's `PostgresProjection`, and every 25 events the queued statements are sent pipelined
//! and committed together with the checkpoint in one short transaction: killed at any moment,
//! the next run resumes from the last commit and the table never misses an event nor applies
//! one twice. With `--grouped` a group handler (`#[group(...)]`) receives each checkpoint's
//! events at once instead; the two share their checkpoints.
//!
//! ```text
//! DATABASE_URL=postgres://… cargo run --example projection -- [--append N] [--grouped]
//! ```

use std::error::Error;

use clap::Parser as _;

use krescent::prelude::*;
use krescent::projection::{PostgresProjection, ProjectionError};
use krescent::store::PostgresEventStore;

#[path = "shared/bookstore.rs"]
mod bookstore;

use bookstore::{append_batch, BookAdded, BookLent, BookRemoved, BookReturned};

/// The statements, with the table's qualified name in them.
struct Sql {
    added: String,
    lent: String,
    returned: String,
    removed: String,
}

/// A bookstore event, decoded.
enum Shelved<'a> {
    Added(&'a BookAdded),
    Lent(&'a BookLent),
    Returned(&'a BookReturned),
    Removed(&'a BookRemoved),
}

impl Sql {
    /// Queues `event`'s statement in `table`.
    async fn queue(
        &self,
        table: &mut PostgresProjection,
        event: Shelved<'_>,
    ) -> Result<(), ProjectionError> {
        match event {
            Shelved::Added(e) => {
                let copies = i32::try_from(e.copies).unwrap_or(i32::MAX);
                table
                    .queue(&self.added, &[&e.book_id, &e.title, &copies])
                    .await
            }
            Shelved::Lent(e) => table.queue(&self.lent, &[&e.book_id]).await,
            Shelved::Returned(e) => table.queue(&self.returned, &[&e.book_id]).await,
            Shelved::Removed(e) => table.queue(&self.removed, &[&e.book_id]).await,
        }
    }
}

/// The shelf: a row per book, in Postgres; each handler queues its event's statement.
#[derive(EventModel)]
#[model(name = "bookstore.shelf", version = 1)]
#[checkpoint(strategy = "fixed_events(25)", storage = "postgres")]
struct Shelf {
    #[checkpoint(support)]
    table: PostgresProjection,
    sql: Sql,
}

#[krescent::handlers]
impl Shelf {
    async fn added(&mut self, e: &BookAdded) -> Result<(), ProjectionError> {
        self.sql.queue(&mut self.table, Shelved::Added(e)).await
    }

    async fn lent(&mut self, e: &BookLent) -> Result<(), ProjectionError> {
        self.sql.queue(&mut self.table, Shelved::Lent(e)).await
    }

    async fn returned(&mut self, e: &BookReturned) -> Result<(), ProjectionError> {
        self.sql.queue(&mut self.table, Shelved::Returned(e)).await
    }

    async fn removed(&mut self, e: &BookRemoved) -> Result<(), ProjectionError> {
        self.sql.queue(&mut self.table, Shelved::Removed(e)).await
    }
}

/// Why the grouped shelf failed.
#[derive(Debug, thiserror::Error)]
enum ShelfError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Projection(#[from] ProjectionError),
}

/// The same shelf written by a group handler (`--grouped`): the events up to each checkpoint
/// handed over at once. Its checkpoints are the per-event shelf's (the same name, events and
/// checkpointed fields), so either resumes where the other stopped.
#[derive(EventModel)]
#[model(name = "bookstore.shelf", version = 1)]
#[checkpoint(strategy = "fixed_events(25)", storage = "postgres")]
struct GroupedShelf {
    #[checkpoint(support)]
    table: PostgresProjection,
    sql: Sql,
}

#[krescent::handlers]
impl GroupedShelf {
    /// The group's statements queued in order: a loan's effect depends on the row as the
    /// events before it left it, so this shelf's SQL is not set-based; the group saves the
    /// runner's work per event, and everything is sent at the commit either way.
    #[group(BookAdded, BookLent, BookReturned, BookRemoved)]
    async fn shelve(&mut self, group: Group<'_>) -> Result<(), ShelfError> {
        for event in group {
            let (table, sql) = (&mut self.table, &self.sql);
            if let Some(e) = event.decode::<BookAdded>()? {
                sql.queue(table, Shelved::Added(&e)).await?;
            } else if let Some(e) = event.decode::<BookLent>()? {
                sql.queue(table, Shelved::Lent(&e)).await?;
            } else if let Some(e) = event.decode::<BookReturned>()? {
                sql.queue(table, Shelved::Returned(&e)).await?;
            } else if let Some(e) = event.decode::<BookRemoved>()? {
                sql.queue(table, Shelved::Removed(&e)).await?;
            }
        }
        Ok(())
    }
}

impl Shelf {
    /// The shelf, its checkpoints in `store`'s checkpoint table.
    fn new(store: &PostgresEventStore) -> Result<Self, Box<dyn Error>> {
        let table = PostgresProjection::new(&store.checkpoint_storage(), 1).table(
            "shelf",
            "CREATE TABLE {table} (book_id text PRIMARY KEY, title text NOT NULL, copies integer NOT NULL, on_loan integer NOT NULL)",
        )?;
        let shelf = table
            .name_of("shelf")
            .ok_or("the shelf table is declared")?
            .to_owned();
        let sql = Sql {
            added: format!(
                "INSERT INTO {shelf} AS s (book_id, title, copies, on_loan) VALUES ($1, $2, $3, 0)
                 ON CONFLICT (book_id) DO UPDATE SET title = excluded.title, copies = s.copies + excluded.copies"
            ),
            lent: format!("UPDATE {shelf} SET on_loan = least(on_loan + 1, copies) WHERE book_id = $1"),
            returned: format!("UPDATE {shelf} SET on_loan = greatest(on_loan - 1, 0) WHERE book_id = $1"),
            removed: format!("DELETE FROM {shelf} WHERE book_id = $1"),
        };
        Ok(Shelf { table, sql })
    }
}

/// The bookstore stream projected into the PostgreSQL table `shelf`, exactly once; prints
/// `summary: restored_from=P|none replayed=N checkpoints=C`.
#[derive(clap::Parser)]
#[command(name = "projection")]
struct Options {
    /// The database.
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Append this many seeded bookstore events first.
    #[arg(long, value_name = "N", default_value_t = 0)]
    append: u32,
    /// Project through the group handler (`GroupedShelf`) instead of the per-event handlers.
    #[arg(long)]
    grouped: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let Options {
        database_url,
        append,
        grouped,
    } = Options::parse();
    let url = database_url.ok_or("set DATABASE_URL or pass `--database-url URL`")?;
    let store = PostgresEventStore::connect(&url).await?;
    store.migrate().await?;
    let storage = store.checkpoint_storage();
    storage.migrate().await?;
    if append > 0 {
        append_batch(&store, append).await?;
    }
    let Shelf { table, sql } = Shelf::new(&store)?;
    let krescent = Krescent::new(store).with_storage("postgres", storage);
    let (origin, processed, checkpoints) = if grouped {
        let caught_up = krescent.catch_up(GroupedShelf { table, sql }).await?;
        (caught_up.origin, caught_up.processed, caught_up.checkpoints)
    } else {
        let caught_up = krescent.catch_up(Shelf { table, sql }).await?;
        (caught_up.origin, caught_up.processed, caught_up.checkpoints)
    };
    let restored_from = origin
        .restored_from()
        .map_or_else(|| "none".to_owned(), |p| p.to_string());
    println!(
        "summary: restored_from={restored_from} replayed={processed} checkpoints={checkpoints}"
    );
    Ok(())
}
