//! The bookstore stream projected into a PostgreSQL table, exactly once.
//!
//! The `shelf` table gets one row per book. Every handler writes into the transaction of the
//! model's `PostgresProjection`, and every 25 events that transaction commits together with the
//! checkpoint: killed at any moment, the next run resumes from the last commit and the table
//! never misses an event nor applies one twice.
//!
//! ```text
//! DATABASE_URL=postgres://… cargo run --example projection -- [--append N]
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

/// The shelf: a row per book, in Postgres.
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
        let copies = i32::try_from(e.copies).unwrap_or(i32::MAX);
        self.table
            .execute(&self.sql.added, &[&e.book_id, &e.title, &copies])
            .await?;
        Ok(())
    }

    async fn lent(&mut self, e: &BookLent) -> Result<(), ProjectionError> {
        self.table.execute(&self.sql.lent, &[&e.book_id]).await?;
        Ok(())
    }

    async fn returned(&mut self, e: &BookReturned) -> Result<(), ProjectionError> {
        self.table
            .execute(&self.sql.returned, &[&e.book_id])
            .await?;
        Ok(())
    }

    async fn removed(&mut self, e: &BookRemoved) -> Result<(), ProjectionError> {
        self.table.execute(&self.sql.removed, &[&e.book_id]).await?;
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
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let Options {
        database_url,
        append,
    } = Options::parse();
    let url = database_url.ok_or("set DATABASE_URL or pass `--database-url URL`")?;
    let store = PostgresEventStore::connect(&url).await?;
    store.migrate().await?;
    let storage = store.checkpoint_storage();
    storage.migrate().await?;
    if append > 0 {
        append_batch(&store, append).await?;
    }
    let shelf = Shelf::new(&store)?;
    let krescent = Krescent::new(store).with_storage("postgres", storage);
    let caught_up = krescent.catch_up(shelf).await?;
    let restored_from = caught_up
        .origin
        .restored_from()
        .map_or_else(|| "none".to_owned(), |p| p.to_string());
    println!(
        "summary: restored_from={restored_from} replayed={} checkpoints={}",
        caught_up.processed, caught_up.checkpoints
    );
    Ok(())
}
