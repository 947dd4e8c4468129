//! A segment's read: its events only, filtered by the server through the index of slices.
//!
//! A segment that is a range of slices ([`Segment::slices`](crate::fleet::Segment::slices))
//! reads `position > $1 AND slice BETWEEN $3 AND $4 ORDER BY position, slice LIMIT $2`. The
//! index of `(position, slice)` (`slices.rs`) gives that order, so nothing is sorted, and the
//! slice is checked in the index entry, so the server fetches only the segment's rows from the
//! table: the window the server walks is bounded by the limit's worth of the segment's events,
//! or by the head. The primary key gives the same order (positions are unique), but every row
//! of the window is fetched to test its slice: on 1,000,000 events, a batch of 4,096 of a
//! segment of 4 cost the server 2.8 ms that way against 1.9 ms through the index of slices.
//! The planner does not see it (it discounts the order of a multi-column index: its
//! correlation counts 0.75 of the first column's), and chose the primary key for `ORDER BY
//! position`, and for `ORDER BY position, slice` with an incremental sort on top. So the read
//! orders by both of the index's columns and runs with `enable_incremental_sort` off, in a
//! read-only transaction of its own (`SET LOCAL`, so the pooled connection keeps its
//! settings): then only the index of slices gives the order without sorting the whole rest
//! of the table, in custom and generic plans alike.
//!
//! In the same statement, so in the same snapshot, it reads the head: when fewer than the limit
//! of the segment's events follow, the segment has seen every event up to that head, which is
//! where a quiet segment moves to. The gap rule of the store holds as for any read: appends
//! hold the append lock until they commit, so a snapshot sees a prefix of the positions, and no
//! event can commit later at a position up to the head it saw.

use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio_postgres::types::ToSql;

use super::{checkout, Decoder, PoolRole};
use crate::event::RecordedEvent;
use crate::postgres::{DbFailure, Names};
use crate::Position;

/// The statement of a segment's read: `$1` after, `$2` limit, `$3`..=`$4` the slices; the
/// event's columns then the head, in a row with only the head when no event follows.
pub(super) fn statement(names: &Names) -> Arc<str> {
    format!(
        "SELECT e.position, e.stream_id, e.stream_version, e.event_id, e.event_type, e.payload,
                e.recorded_at, e.revision, e.metadata, h.head
         FROM (SELECT coalesce(max(position), 0)::bigint AS head FROM {events}) AS h
         LEFT JOIN LATERAL (
             SELECT position, stream_id, stream_version, event_id, event_type, payload, recorded_at,
                    revision, metadata
             FROM {events}
             WHERE position > $1 AND slice >= $3 AND slice <= $4
             ORDER BY position, slice LIMIT $2
         ) AS e ON true",
        events = names.events
    )
    .into()
}

/// The setting a segment's read runs with, in its transaction.
pub(super) const ORDERED: &str = "SET LOCAL enable_incremental_sort = off";

/// What a segment's read returned: its events, and the head in the read's snapshot.
pub(super) struct Read {
    pub(super) events: Vec<RecordedEvent>,
    pub(super) head: Position,
}

/// Up to `limit` events after `after` whose slices are in `slices`, with the statement `sql`.
pub(super) async fn read(
    pool: Pool,
    sql: Arc<str>,
    after: i64,
    limit: i64,
    slices: (i16, i16),
) -> Result<Read, DbFailure> {
    let mut client = checkout(&pool, PoolRole::Store).await?;
    let statement = client.prepare_cached(&sql).await?;
    let tx = client.build_transaction().read_only(true).start().await?;
    tx.batch_execute(ORDERED).await?;
    let params: [&(dyn ToSql + Sync); 4] = [&after, &limit, &slices.0, &slices.1];
    let rows = tx.query_raw(&statement, params).await?;
    let mut rows = std::pin::pin!(rows);
    let mut events: Vec<RecordedEvent> =
        Vec::with_capacity(usize::try_from(limit).unwrap_or(0).min(super::super::BATCH));
    let mut decoder = Decoder::default();
    let mut head = None;
    while let Some(row) = futures_util::TryStreamExt::try_next(&mut rows).await? {
        head = Some(row.try_get::<_, i64>(9)?);
        if row.try_get::<_, Option<i64>>(0)?.is_none() {
            continue;
        }
        let event = decoder.event(&row)?;
        // The order comes from the plan (the lateral subquery's, kept by the join over the
        // one row of the head); a plan that lost it must not make a segment skip events.
        if events
            .last()
            .is_some_and(|last| last.position() >= event.position())
        {
            return Err(DbFailure::Other(format!(
                "a segment's read returned position {} after {}",
                event.position(),
                events
                    .last()
                    .map_or(Position::START, RecordedEvent::position)
            )));
        }
        events.push(event);
    }
    tx.commit().await?;
    let head = head.ok_or_else(|| DbFailure::Other("a segment's read returned no head".into()))?;
    Ok(Read {
        events,
        head: Position::new(super::non_negative(head, "position")?),
    })
}
