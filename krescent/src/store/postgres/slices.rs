//! Giving the events appended before the events table had slices theirs, in batches that
//! never hold appends up, then the index that serves segments' reads.
//!
//! The third migration step of the events table adds the `slice` column, and a trigger that
//! gives one to every row inserted without it; it changes only the catalog. The rows already
//! there are filled afterwards by [`fill`], outside the migration's transaction: the streams of
//! at most [`FILL_BATCH`] positions are read, their slices computed here (`Slice::of`: the
//! trigger's PL/pgSQL took ~80 µs a row), and written by one `UPDATE`, its own transaction,
//! which locks only the old rows it changes, so appends (new rows) never wait for it. Then the index of
//! `(position, slice)` is built with `CREATE INDEX CONCURRENTLY`, which does not block appends
//! either, and the table is marked filled (`slices:<table>` in the migrations table): from
//! then on, segments' reads are filtered by the server. Until then a segment reads the whole
//! log and skips the other segments' events, as it always did: correct, only slower.
//!
//! One filler at a time: it holds a session advisory lock on a connection of its own, which is
//! closed when the fill ends, so that a filler that dies or is cancelled releases it.

use deadpool_postgres::{Object, Pool};

use super::store_connection;
use crate::fleet::Slice;
use crate::postgres::{DbFailure, Names};

/// The positions one `UPDATE` covers, whose rows only it locks while it runs.
pub(super) const FILL_BATCH: i64 = 10_000;

/// The key of the marker row in the migrations table.
fn marker(names: &Names) -> String {
    format!("slices:{}", names.events_table_plain)
}

/// Whether the slices of every row are filled and indexed (the marker row is there).
pub(super) async fn filled(
    client: &tokio_postgres::Client,
    names: &Names,
) -> Result<bool, DbFailure> {
    let row = client
        .query_opt(
            &format!("SELECT 1 FROM {} WHERE component = $1", names.migrations),
            &[&marker(names)],
        )
        .await?;
    Ok(row.is_some())
}

/// Fills the slices of the rows that have none and builds the index of slices, unless done
/// already; waits for another process doing it.
pub(super) async fn fill(pool: &Pool, names: &Names) -> Result<(), DbFailure> {
    let client = store_connection(pool).await?;
    if filled(&client, names).await? {
        return Ok(());
    }
    // A connection of its own, closed when it is dropped: the session lock goes with it.
    let client = Object::take(client);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&names.slices_lock()])
        .await?;
    if filled(&client, names).await? {
        return Ok(());
    }
    // Every row appended since the migration step has its slice: the step waited for the
    // appends in flight, and every later insert sets it. So the rows to fill end here.
    let head: i64 = client
        .query_one(
            &format!(
                "SELECT coalesce(max(position), 0)::bigint FROM {}",
                names.events
            ),
            &[],
        )
        .await?
        .get(0);
    let select = client
        .prepare(&format!(
            "SELECT position, stream_id FROM {}
             WHERE position > $1 AND position <= $2 AND slice IS NULL",
            names.events
        ))
        .await?;
    let update = client
        .prepare(&format!(
            "UPDATE {} AS e SET slice = f.slice
             FROM unnest($1::bigint[], $2::smallint[]) AS f(position, slice)
             WHERE e.position = f.position AND e.slice IS NULL",
            names.events
        ))
        .await?;
    let mut from = 0_i64;
    while from < head {
        let to = from.saturating_add(FILL_BATCH);
        let rows = client.query(&select, &[&from, &to]).await?;
        let mut positions = Vec::with_capacity(rows.len());
        let mut slices = Vec::with_capacity(rows.len());
        for row in &rows {
            let stream: &str = row.try_get(1)?;
            positions.push(row.try_get::<_, i64>(0)?);
            slices.push(i16::try_from(Slice::of(stream).get()).unwrap_or(i16::MAX));
        }
        if !positions.is_empty() {
            client.execute(&update, &[&positions, &slices]).await?;
        }
        from = to;
    }
    index(&client, names).await?;
    client
        .execute(
            &format!(
                "INSERT INTO {} (component, version) VALUES ($1, 1) ON CONFLICT (component) DO NOTHING",
                names.migrations
            ),
            &[&marker(names)],
        )
        .await?;
    Ok(())
}

/// Builds the index of slices, concurrently, unless a valid one is there; drops an invalid one
/// (left by a build that was interrupted) first.
async fn index(client: &tokio_postgres::Client, names: &Names) -> Result<(), DbFailure> {
    let index = names.slices_index();
    let valid: Option<bool> = client
        .query_opt(
            "SELECT i.indisvalid FROM pg_catalog.pg_index i
             JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relname = $1 AND n.nspname = $2",
            &[&index, &names.schema_plain],
        )
        .await?
        .map(|row| row.get(0));
    match valid {
        Some(true) => return Ok(()),
        Some(false) => {
            client
                .batch_execute(&format!(
                    "DROP INDEX CONCURRENTLY IF EXISTS {}.{index}",
                    names.schema
                ))
                .await?;
        }
        None => {}
    }
    client
        .batch_execute(&format!(
            "CREATE INDEX CONCURRENTLY {index} ON {} (position, slice)",
            names.events
        ))
        .await?;
    Ok(())
}
