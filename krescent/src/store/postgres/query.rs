//! Queries of write models: one stream's (or several streams' and types') events, and the
//! check of an append condition inside the append's transaction.
//!
//! Both use the indexes of the events table's second migration step, `(stream_id, position)`
//! and `(event_type, position)`: a stream's or a type's events after a position are an index
//! range.
//!
//! A read is one range per stream and per type of the query: a `LATERAL` subquery for each
//! element of the array parameters reads the first `$2` events after `$1` of that stream or
//! type, and the statement returns the first `$2` of them all in position order, an event that
//! matches both a stream and a type once (`DISTINCT ON (position)`). It reads at most `$2`
//! events per stream and per type, whatever the table holds. The single filter it replaces,
//! `position > $1 AND (stream_id = ANY($3) OR event_type = ANY($4)) ORDER BY position LIMIT $2`,
//! did not: PostgreSQL 15 cannot read an index in order across the elements of an array, and
//! the generic plan, which a statement prepared on a pooled connection may get after five
//! executions and always gets under `plan_cache_mode = force_generic_plan`, does not know the
//! arrays and walked the primary key from `$1`, filtering every event. On 50,000 events nearly
//! all of one type, a read of an absent type touched 908 pages (50,006 events) to return
//! nothing; it touches 3 now.
//!
//! Each subquery bounds its stream or type by a range (`stream_id >= s.id AND stream_id <=
//! s.id`) and orders by the index's columns (`ORDER BY stream_id, position`). With an equality
//! the stream or type is a constant inside the subquery, so the primary key's order is the
//! order asked, and the planner, which does not know the element even in a custom plan, walked
//! the primary key again, expecting one event in n to be of a type when the table has n types.
//! With the range only the column's index gives the order; any other plan sorts every matching
//! event. For `text` in a deterministic collation (the database default always is) the range
//! is the equality.
//!
//! "The latest event matching the query after the position the decision read at" is one
//! backward probe per stream and per type (`position > $3 ORDER BY position DESC LIMIT 1`).
//! The position bound matters: without it, the planner may walk the primary key backwards
//! looking for a type that is rare or absent (when the statistics say one type is nearly every
//! row, an absent one cost a walk over the whole table); with it, whichever index it picks, it
//! reads at most the events appended since the decision read, or one index range.

use super::store_connection;

use deadpool_postgres::Pool;
use tokio_postgres::types::ToSql;

use crate::event::RecordedEvent;
use crate::postgres::{DbFailure, Names};
use crate::store::Query;
use crate::Position;

/// The statements of the queries, with the store's quoted table name in them.
#[derive(Debug)]
pub(super) struct QuerySql {
    /// Events of any of the streams `$3` (distinct) after `$1`, up to `$2`.
    pub(super) streams: String,
    /// Events of any of the streams `$3` or of the types `$4` after `$1`, up to `$2`.
    pub(super) any: String,
    /// The position of the latest event of any of the streams `$1` or types `$2` after
    /// position `$3` (0 for none).
    pub(super) latest: String,
}

const COLUMNS: &str =
    "position, stream_id, stream_version, event_id, event_type, payload, recorded_at, revision, metadata";

impl QuerySql {
    pub(super) fn new(names: &Names) -> Self {
        let events = &names.events;
        QuerySql {
            streams: format!(
                "SELECT {COLUMNS} FROM unnest($3::text[]) AS s(id)
                 CROSS JOIN LATERAL (
                     SELECT {COLUMNS} FROM {events} e
                     WHERE e.stream_id >= s.id AND e.stream_id <= s.id AND e.position > $1
                     ORDER BY e.stream_id, e.position LIMIT $2
                 ) AS e
                 ORDER BY position LIMIT $2"
            ),
            any: format!(
                "SELECT DISTINCT ON (position) {COLUMNS} FROM (
                     SELECT {COLUMNS} FROM unnest($3::text[]) AS s(id)
                     CROSS JOIN LATERAL (
                         SELECT {COLUMNS} FROM {events} e
                         WHERE e.stream_id >= s.id AND e.stream_id <= s.id AND e.position > $1
                         ORDER BY e.stream_id, e.position LIMIT $2
                     ) AS e
                     UNION ALL
                     SELECT {COLUMNS} FROM unnest($4::text[]) AS t(name)
                     CROSS JOIN LATERAL (
                         SELECT {COLUMNS} FROM {events} e
                         WHERE e.event_type >= t.name AND e.event_type <= t.name
                         AND e.position > $1
                         ORDER BY e.event_type, e.position LIMIT $2
                     ) AS e
                 ) AS matching
                 ORDER BY position LIMIT $2"
            ),
            latest: format!(
                "SELECT coalesce(max(latest.p), 0)::bigint FROM (
                     SELECT (SELECT e.position FROM {events} e WHERE e.stream_id = s.id
                             AND e.position > $3 ORDER BY e.position DESC LIMIT 1) AS p
                     FROM unnest($1::text[]) AS s(id)
                     UNION ALL
                     SELECT (SELECT e.position FROM {events} e WHERE e.event_type = t.name
                             AND e.position > $3 ORDER BY e.position DESC LIMIT 1)
                     FROM unnest($2::text[]) AS t(name)
                 ) AS latest"
            ),
        }
    }
}

/// The streams and types of `query`, as the statements' array parameters.
pub(super) fn arrays(query: &Query) -> (Vec<&str>, Vec<&str>) {
    (query.stream_ids().collect(), query.event_types().collect())
}

/// Up to `limit` events matching `query` after `after`.
pub(super) async fn read_matching(
    pool: &Pool,
    sql: &QuerySql,
    query: &Query,
    after: Position,
    limit: usize,
) -> Result<Vec<RecordedEvent>, DbFailure> {
    if query.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    let client = store_connection(pool).await?;
    let (streams, types) = arrays(query);
    let after = i64::try_from(after.get()).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = if types.is_empty() {
        let statement = client.prepare_cached(&sql.streams).await?;
        client
            .query(&statement, &[&after, &limit, &streams])
            .await?
    } else {
        let statement = client.prepare_cached(&sql.any).await?;
        client
            .query(&statement, &[&after, &limit, &streams, &types])
            .await?
    };
    let mut decoder = super::Decoder::default();
    rows.iter().map(|row| decoder.event(row)).collect()
}

/// The parameters of [`QuerySql::latest`]: the query's arrays and the position after which
/// an event is a conflict.
pub(super) fn latest_params<'a>(
    arrays: &'a (Vec<&'a str>, Vec<&'a str>),
    after: &'a i64,
) -> [&'a (dyn ToSql + Sync); 3] {
    [&arrays.0, &arrays.1, after]
}
