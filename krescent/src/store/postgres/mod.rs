//! Events in Postgres (feature `postgres`): [`PostgresEventStore`], whose documentation
//! describes the tables and how reading stays gap-free.

mod listener;
mod query;
mod segment;
mod slices;

use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use deadpool_postgres::Pool;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use listener::{wait_past, ListenTo, Listener};

use super::{
    AppendCondition, Appended, EventBatch, EventStore, ExpectedVersion, Query, SegmentBatch,
    StoreError,
};
use crate::checkpoint::storage::PostgresCheckpointStorage;
use crate::event::{EventMeta, NewEvent, RecordedEvent};
use crate::fleet::{Segment, Slice};
use crate::postgres::{checkout, migrate, pool, store_connection, Component, DbFailure, Names};
pub use crate::postgres::{PoolExhausted, PoolRole, PostgresConfig};
use crate::Position;

/// Events in a Postgres table, read back gap-free in commit order.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use krescent::store::{EventStore, ExpectedVersion, PostgresEventStore};
/// use krescent::{Krescent, NewEvent};
///
/// let store = PostgresEventStore::connect("postgres://app@localhost/app").await?;
/// store.migrate().await?;
/// let checkpoints = store.checkpoint_storage();
/// checkpoints.migrate().await?;
/// store.append("book-1", ExpectedVersion::NoStream, vec![NewEvent::from_json("book.added", r#"{"copies":2}"#)?]).await?;
/// let krescent = Krescent::new(store).with_storage("postgres", checkpoints);
/// # Ok(())
/// # }
/// ```
///
/// # Tables
///
/// [`migrate`](Self::migrate) creates the events table (by default
/// `public.krescent_events`; see [`PostgresConfig`]):
///
/// | column | type | |
/// | --- | --- | --- |
/// | `position` | `bigint` identity, primary key | the global order, from 1 |
/// | `stream_id` | `text` | |
/// | `stream_version` | `bigint` | from 1, unique per stream |
/// | `event_id` | `uuid` | unique |
/// | `event_type` | `text` | the recorded type name |
/// | `payload` | `jsonb` | |
/// | `recorded_at` | `timestamptz` | when the append ran |
/// | `revision` | `integer` | the revision of the event type it was appended with (1 for rows of earlier releases) |
/// | `metadata` | `jsonb`, nullable | the event's metadata; `NULL` for none |
/// | `slice` | `smallint` | the stream's [`Slice`], 0 to 1023; segments read by it |
///
/// The index of `(position, slice)` serves a segment's reads
/// ([`read_segment`](EventStore::read_segment)): a segment of a split model whose count is a
/// power of two is a range of slices, and is sent its own events only, in position order; the
/// head is read in the same snapshot, so a segment with nothing more of its own moves up to it.
///
/// Migrations are versioned in `<schema>.krescent_schema_migrations` and run under an advisory
/// lock, so running `migrate` twice, or from several processes at once, is safe.
///
/// # Gap-safe reading
///
/// A sequence hands out positions when rows are inserted, but rows become visible when their
/// transaction commits. With concurrent appends the two orders differ: position 8 can commit
/// before position 7, and a reader that has read 8 and continues "after 8" would never see 7.
///
/// This store makes the two orders the same. Every append transaction takes a
/// transaction-scoped advisory lock, `pg_advisory_xact_lock(k)` (`k` derived from the events
/// table's name), *before* it allocates positions, and holds it until it ends. Postgres
/// releases transaction locks only after the commit is visible to new snapshots
/// (`ProcArrayEndTransaction` runs before the locks are released), so:
///
/// 1. appends allocate positions one transaction at a time, each after the previous one has
///    committed or rolled back: the committed positions increase in commit order;
/// 2. hence any snapshot sees a *prefix* of the committed appends: if it sees the append that
///    holds position `p`, every append that committed a position below `p` finished before it
///    started and is visible too.
///
/// A reader therefore simply reads `WHERE position > $after ORDER BY position LIMIT $n`: once
/// it has seen `p`, no position below `p` can appear later. Rolled-back appends leave holes in
/// the numbering, which readers skip naturally. [`Position`] stays a plain number, and a
/// checkpoint's position is exact.
///
/// The price is that appends to one events table are serialized. The lock is held briefly: the
/// lock request and the one statement that checks the expected version, inserts the batch and
/// notifies are sent together, so the lock is held for that statement and the commit, about
/// two round trips. Reads never wait. Rows inserted into the table by anything that does not
/// take the same lock void the guarantee.
///
/// # Live reading
///
/// Each append notifies the configured channel with `pg_notify` once, at commit. A store keeps
/// one dedicated connection (outside the pool) that `LISTEN`s on it, started by the first
/// [`wait_for_append`](EventStore::wait_for_append); waiting resolves on a notification past
/// the reader's position, or after [`PostgresConfig::poll_interval`] at the latest, so a lost
/// notification delays a reader by one interval, never forever. The listening connection
/// reconnects with backoff and, once listening again, reads the head so that no append
/// committed in between is missed.
///
/// # Failures
///
/// A lost, refused or timed-out connection, or a server that is shutting down or starting up,
/// is a [`StoreError::Database`] with `transient: true`; a streaming model retries those with
/// backoff and so survives a server restart. The pool replaces dead connections by itself.
///
/// Keep `synchronous_commit` on (the default) for the events table: with it off, a server crash
/// loses the last acknowledged appends, which live readers (and their checkpoints) may already
/// have seen.
#[derive(Debug)]
pub struct PostgresEventStore {
    pool: Pool,
    /// The pool of projection transactions, apart so that they never starve reads.
    projections: Pool,
    config: PostgresConfig,
    names: Arc<Names>,
    sql: Sql,
    listen_config: tokio_postgres::Config,
    /// Started by the first live read; started again if its runtime went away.
    listener: Mutex<Option<Listener>>,
    /// Whether every row has its slice and the index of slices is built (`slices.rs`):
    /// [`UNKNOWN`], [`UNSLICED`] or [`SLICED`].
    sliced: AtomicU8,
}

/// Not yet looked up (by `migrate`, or by the first segment's read).
const UNKNOWN: u8 = 0;
/// Old rows were still being filled when looked up: segments read the whole log.
const UNSLICED: u8 = 1;
/// Segments' reads are filtered by the server.
const SLICED: u8 = 2;

/// The statements of a store, with its quoted table name in them.
#[derive(Debug)]
struct Sql {
    stream_version: String,
    append: String,
    read: Arc<str>,
    /// A segment's read (`segment.rs`).
    segment: Arc<str>,
    head: String,
    query: query::QuerySql,
}

/// Takes the append lock of a table until the transaction ends.
const LOCK: &str = "SELECT pg_advisory_xact_lock($1)";
/// Makes the transaction's statements use their generic plans (for the append condition's).
const GENERIC_PLANS: &str = "SET LOCAL plan_cache_mode = force_generic_plan";

impl Sql {
    fn new(names: &Names) -> Self {
        let events = &names.events;
        Sql {
            stream_version: format!("SELECT coalesce(max(stream_version), 0) FROM {events} WHERE stream_id = $1"),
            // One statement checks the expected version ($2: -1 any, else the version), inserts
            // the batch in order when it matches, and notifies once (delivered at commit). It
            // returns the stream's version before the append and the last position appended
            // (NULL when nothing was).
            append: format!(
                "WITH current AS (
                     SELECT coalesce(max(stream_version), 0) AS version FROM {events} WHERE stream_id = $1
                 ), appended AS (
                     INSERT INTO {events} (stream_id, stream_version, event_id, event_type, payload, recorded_at, revision, metadata, slice)
                     SELECT $1, current.version + e.ord, e.id, e.type, e.payload::jsonb, statement_timestamp(), e.revision, e.metadata::jsonb, $10::smallint
                     FROM current, unnest($3::uuid[], $4::text[], $5::text[], $8::int[], $9::text[]) WITH ORDINALITY AS e(id, type, payload, revision, metadata, ord)
                     WHERE $2::bigint < 0 OR current.version = $2::bigint
                     ORDER BY e.ord
                     RETURNING position
                 ), notified AS (
                     SELECT max(position) AS last, pg_notify($6, $7 || max(position)::text)
                     FROM appended HAVING count(*) > 0
                 )
                 SELECT current.version, (SELECT last FROM notified) FROM current"
            ),
            read: format!(
                "SELECT position, stream_id, stream_version, event_id, event_type, payload, recorded_at, revision, metadata
                 FROM {events} WHERE position > $1 ORDER BY position LIMIT $2"
            )
            .into(),
            segment: segment::statement(names),
            head: format!("SELECT coalesce(max(position), 0)::bigint FROM {events}"),
            query: query::QuerySql::new(names),
        }
    }
}

/// The prefix of this table's notification payloads: `schema.table ` then the position.
fn notify_prefix(names: &Names) -> String {
    format!("{} ", names.events_plain)
}

impl PostgresEventStore {
    /// A store on `pool`; appends are announced to a dedicated connection opened with `listen`
    /// (usually the configuration the pool connects with), which starts with the first live
    /// read. Projection transactions take their connections from a pool of their own, to
    /// `listen` as well, of [`PostgresConfig::projection_pool_size`] (see
    /// [`checkpoint_storage`](Self::checkpoint_storage)). Nothing is contacted yet; call
    /// [`migrate`](Self::migrate) before the first use.
    ///
    /// # Errors
    /// [`StoreError::InvalidName`] when a name of `config` is not a safe identifier.
    pub fn new(
        pool: Pool,
        listen: tokio_postgres::Config,
        config: PostgresConfig,
    ) -> Result<Self, StoreError> {
        let names = config.names()?;
        let projections = self::pool(
            listen.clone(),
            config.projection_pool_size,
            config.pool_wait,
        )
        .map_err(|e| e.store("build the projection transactions' pool"))?;
        Ok(PostgresEventStore {
            pool,
            projections,
            sql: Sql::new(&names),
            names: Arc::new(names),
            config,
            listen_config: listen,
            listener: Mutex::new(None),
            sliced: AtomicU8::new(UNKNOWN),
        })
    }

    /// Connects to `url` (`postgres://user:password@host/db` or `host=… dbname=…`) with the
    /// default [`PostgresConfig`]: a pool of up to 16 connections and one of up to 16 for
    /// projection transactions, without TLS.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the URL is malformed or the server cannot be reached
    /// (transient then).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, PostgresConfig::default()).await
    }

    /// Like [`connect`](Self::connect), with `config`.
    ///
    /// # Errors
    /// [`StoreError::InvalidName`] for a bad name of `config`; [`StoreError::Database`] when
    /// the URL is malformed or the server cannot be reached (transient then).
    pub async fn connect_with(url: &str, config: PostgresConfig) -> Result<Self, StoreError> {
        config.validate()?;
        let pg = tokio_postgres::Config::from_str(url)
            .map_err(|e| DbFailure::from(e).store("parse the database URL"))?;
        let pool = pool(pg.clone(), config.pool_size, config.pool_wait)
            .map_err(|e| e.store("build the connection pool"))?;
        let store = Self::new(pool, pg, config)?;
        drop(
            store_connection(&store.pool)
                .await
                .map_err(|e| e.store("connect to the event database"))?,
        );
        Ok(store)
    }

    /// Creates the schema and the events table, or brings them up to this build's version.
    /// Safe to run repeatedly and concurrently.
    ///
    /// After the migration steps, it gives the rows appended before events had slices theirs
    /// (see [`Slice`]) in batches that never hold appends up, and builds the index segments
    /// read through; until that is done (in this call, or in another process's, which this
    /// one waits for), segments read the whole log. Measured (`bench slices_fill`): 80 s for
    /// 1,000,000 rows while an older release appended as fast as it could, no append waiting
    /// longer than 0.3 s.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the database refuses (for example for lack of privileges).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        migrate(&self.pool, &self.names, Component::Events)
            .await
            .map_err(|e| e.store(format!("migrate `{}`", self.names.events_plain)))?;
        slices::fill(&self.pool, &self.names)
            .await
            .map_err(|e| e.store(format!("fill the slices of `{}`", self.names.events_plain)))?;
        self.sliced.store(SLICED, Ordering::Relaxed);
        Ok(())
    }

    /// Whether segments' reads may be filtered by the server: every row has its slice, and
    /// the index is built. Looked up once, unless [`migrate`](Self::migrate) said so.
    async fn is_sliced(&self) -> Result<bool, DbFailure> {
        match self.sliced.load(Ordering::Relaxed) {
            SLICED => Ok(true),
            UNSLICED => Ok(false),
            _ => {
                let client = store_connection(&self.pool).await?;
                let sliced = slices::filled(&client, &self.names).await?;
                let state = if sliced { SLICED } else { UNSLICED };
                // `migrate` may have said so meanwhile: never from sliced back to not.
                let _ = self.sliced.compare_exchange(
                    UNKNOWN,
                    state,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                Ok(self.sliced.load(Ordering::Relaxed) == SLICED)
            }
        }
    }

    /// A segment's events after `after`, filtered by the server when its slices are a range
    /// and the table is sliced; otherwise every event (the segment's run skips the others').
    async fn try_read_segment(
        &self,
        segment: Segment,
        after: Position,
        limit: usize,
        ahead: bool,
    ) -> Result<SegmentBatch, DbFailure> {
        let range = segment.slices();
        let (Some(range), true) = (range, self.is_sliced().await?) else {
            let events = self.try_read_after(after, limit, ahead).await?;
            return Ok(SegmentBatch::unfiltered(events.into(), after));
        };
        let Ok(after_sql) = i64::try_from(after.get()) else {
            return Ok(SegmentBatch::unfiltered(EventBatch::default(), after));
        };
        let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
        let slices = (
            i16::try_from(*range.start()).unwrap_or(i16::MAX),
            i16::try_from(*range.end()).unwrap_or(i16::MAX),
        );
        let read = segment::read(
            self.pool.clone(),
            self.sql.segment.clone(),
            after_sql,
            limit_sql,
            slices,
        );
        let read = if ahead {
            // In a task of its own, as `try_read_after` explains.
            let read = tokio::spawn(read);
            let _abort = AbortOnDrop(read.abort_handle());
            read.await
                .unwrap_or_else(|e| Err(DbFailure::Other(format!("the read task failed: {e}"))))?
        } else {
            read.await?
        };
        // A full batch may be followed by more of the segment's events: it read up to its
        // last; a shorter one read everything up to the head.
        let read_to = if read.events.len() >= limit {
            read.events.last().map_or(after, RecordedEvent::position)
        } else {
            read.head
        };
        Ok(SegmentBatch::new(read.events.into(), after, read_to))
    }

    /// The checkpoint storage in the same database and schema (its table is
    /// [`PostgresConfig::checkpoints_table`]), sharing this store's pool, and its projections'
    /// transactions in this store's pool of projection transactions
    /// ([`PostgresCheckpointStorage::with_transaction_pool`]).
    #[must_use]
    pub fn checkpoint_storage(&self) -> PostgresCheckpointStorage {
        PostgresCheckpointStorage::from_names(self.pool.clone(), self.names.clone())
            .with_transaction_pool(self.projections.clone())
    }

    /// The pool.
    #[must_use]
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &PostgresConfig {
        &self.config
    }

    /// The version of `stream_id` (0 when it has no events).
    ///
    /// # Errors
    /// [`StoreError::Database`] when the database fails.
    pub async fn stream_version(&self, stream_id: &str) -> Result<u64, StoreError> {
        let run = async {
            let client = store_connection(&self.pool).await?;
            let statement = client.prepare_cached(&self.sql.stream_version).await?;
            let version: i64 = client.query_one(&statement, &[&stream_id]).await?.get(0);
            non_negative(version, "stream version")
        };
        run.await
            .map_err(|e| e.store(format!("read the version of stream `{stream_id}`")))
    }

    /// [`append`](EventStore::append), awaiting `before_commit` inside the append's transaction
    /// after the events are inserted and before the commit; an error from it rolls the append
    /// back and is returned. For tests that need to stretch or abort appends.
    #[doc(hidden)]
    pub async fn append_with(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        before_commit: impl Future<Output = Result<(), StoreError>> + Send,
    ) -> Result<Appended, StoreError> {
        super::check_payloads(stream_id, &events)?;
        refuse_nul(stream_id, &events)?;
        match self
            .try_append(stream_id, expected, events, None, before_commit)
            .await
        {
            Ok(outcome) => outcome,
            Err(e) => Err(e.store(format!(
                "append to stream `{stream_id}` in `{}`",
                self.names.events_plain
            ))),
        }
    }

    /// The statement that finds the latest event matching an append condition after a
    /// position (`$1` the streams, `$2` the types, as `text[]`, `$3` the position, `bigint`),
    /// for tests that check its plan.
    #[doc(hidden)]
    #[must_use]
    pub fn condition_statement(&self) -> &str {
        &self.sql.query.latest
    }

    /// The statement that reads the events of any of some streams or of some types after a
    /// position (`$1` the position and `$2` the limit, `bigint`; `$3` the streams and `$4` the
    /// types, `text[]`), for tests that check its plan.
    #[doc(hidden)]
    #[must_use]
    pub fn any_statement(&self) -> &str {
        &self.sql.query.any
    }

    /// The statement that reads the events of any of some streams after a position (`$1` the
    /// position and `$2` the limit, `bigint`; `$3` the streams, `text[]`), for tests that check
    /// its plan.
    #[doc(hidden)]
    #[must_use]
    pub fn streams_statement(&self) -> &str {
        &self.sql.query.streams
    }

    /// The statement of a segment's read (`$1` the position and `$2` the limit, `bigint`; `$3`
    /// and `$4` the first and last slice, `smallint`), for tests that check its plan. It runs
    /// with `enable_incremental_sort` off.
    #[doc(hidden)]
    #[must_use]
    pub fn segment_statement(&self) -> &str {
        &self.sql.segment
    }

    /// [`append_if`](EventStore::append_if), with `before_commit` as in
    /// [`append_with`](Self::append_with).
    #[doc(hidden)]
    pub async fn append_if_with(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        condition: &AppendCondition,
        before_commit: impl Future<Output = Result<(), StoreError>> + Send,
    ) -> Result<Appended, StoreError> {
        super::check_payloads(stream_id, &events)?;
        refuse_nul(stream_id, &events)?;
        match self
            .try_append(stream_id, expected, events, Some(condition), before_commit)
            .await
        {
            Ok(outcome) => outcome,
            Err(e) => Err(e.store(format!(
                "append to stream `{stream_id}` in `{}` under the condition {}",
                self.names.events_plain, condition.query
            ))),
        }
    }

    /// The append; the outer error is the database's, the inner one a conflict or the hook's.
    ///
    /// With a condition, the latest event matching its query is looked up in the append's
    /// transaction, after the lock is taken and before the events are inserted: every earlier
    /// append has committed by then and no later one can start until this one ends, so the
    /// check sees exactly the events that precede this append. It costs one backward probe per
    /// stream and type of the query, bounded by the condition's position (see `query.rs`), sent
    /// in the same round trip.
    async fn try_append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        condition: Option<&AppendCondition>,
        before_commit: impl Future<Output = Result<(), StoreError>> + Send,
    ) -> Result<Result<Appended, StoreError>, DbFailure> {
        let mut client = store_connection(&self.pool).await?;
        if events.is_empty() && condition.is_none() {
            return self.check_version(&client, stream_id, expected).await;
        }
        let latest = match condition {
            Some(_) => Some(client.prepare_cached(&self.sql.query.latest).await?),
            None => None,
        };
        if events.is_empty() {
            // An empty append under a condition: check it under the lock, append nothing.
            let tx = client.transaction().await?;
            let lock = tx.prepare_cached(LOCK).await?;
            tx.execute(&lock, &[&self.names.append_lock()]).await?;
            if let Some(refused) =
                Self::check_condition(&tx, latest.as_ref(), stream_id, condition).await?
            {
                return Ok(Err(refused));
            }
            let outcome = self.check_version(&tx, stream_id, expected).await?;
            tx.commit().await?;
            return Ok(outcome);
        }
        let lock = client.prepare_cached(LOCK).await?;
        let append = client.prepare_cached(&self.sql.append).await?;
        let count = events.len() as u64;
        let expected_version = match expected {
            ExpectedVersion::Any => -1,
            ExpectedVersion::NoStream => 0,
            ExpectedVersion::Exact(version) => i64::try_from(version).unwrap_or(i64::MAX),
        };
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let types: Vec<&str> = events.iter().map(|e| &*e.event_type).collect();
        let payloads: Vec<&str> = events.iter().map(|e| &*e.payload).collect();
        let (revisions, metadata) = envelopes(&events);
        let prefix = notify_prefix(&self.names);
        let slice = i16::try_from(Slice::of(stream_id).get()).unwrap_or(i16::MAX);
        // Dropping the transaction unfinished (an error, a cancelled future) rolls it back.
        let tx = client.transaction().await?;
        // Sent together, run one after the other: the append's statement starts (and takes its
        // snapshot) only once the lock is held, so it sees every earlier append committed;
        // see the documentation of `PostgresEventStore`.
        let key = self.names.append_lock();
        let lock_params: [&(dyn ToSql + Sync); 1] = [&key];
        let append_params: [&(dyn ToSql + Sync); 10] = [
            &stream_id,
            &expected_version,
            &ids,
            &types,
            &payloads,
            &self.names.channel,
            &prefix,
            &revisions,
            &metadata,
            &slice,
        ];
        // The condition's statement is planned once per connection, not on every append under
        // the lock: its generic plan is safe, as every probe is bounded by the condition's
        // position (see `query.rs`), while a custom plan costs ~0.25 ms of planning each time.
        let generic = async {
            match condition {
                Some(_) => tx.batch_execute(GENERIC_PLANS).await,
                None => Ok(()),
            }
        };
        let (generic, locked, refused, appended) = tokio::join!(
            generic,
            tx.execute(&lock, &lock_params),
            Self::check_condition(&tx, latest.as_ref(), stream_id, condition),
            tx.query_one(&append, &append_params)
        );
        generic?;
        locked?;
        if let Some(refused) = refused? {
            drop(appended);
            tx.rollback().await?;
            return Ok(Err(refused));
        }
        let row = match appended {
            Ok(row) => row,
            Err(e) => {
                let failure = DbFailure::from(e);
                let Some(duplicate) = duplicate_event(stream_id, &events, &failure) else {
                    return Err(failure);
                };
                tx.rollback().await?;
                return Ok(Err(duplicate));
            }
        };
        let actual = non_negative(row.try_get(0)?, "stream version")?;
        let last: Option<i64> = row.try_get(1)?;
        let Some(last) = last else {
            tx.rollback().await?;
            if expected.matches(actual) {
                return Err(DbFailure::Other("the append inserted nothing".to_owned()));
            }
            return Ok(Err(StoreError::conflict(stream_id, expected, actual)));
        };
        if let Err(e) = before_commit.await {
            tx.rollback().await?;
            return Ok(Err(e));
        }
        tx.commit().await?;
        Ok(Ok(Appended {
            position: Position::new(non_negative(last, "position")?),
            stream_version: actual + count,
        }))
    }

    /// The conflict `condition` finds, if any: the latest event matching its query when it is
    /// after the condition's position. Run in the append's transaction, after the lock; the
    /// statement is prepared beforehand, so that pipelined with the append it runs before it.
    async fn check_condition(
        tx: &deadpool_postgres::Transaction<'_>,
        statement: Option<&tokio_postgres::Statement>,
        stream_id: &str,
        condition: Option<&AppendCondition>,
    ) -> Result<Option<StoreError>, DbFailure> {
        let (Some(condition), Some(statement)) = (condition, statement) else {
            return Ok(None);
        };
        let arrays = query::arrays(&condition.query);
        let read_at = i64::try_from(condition.read_at.get()).unwrap_or(i64::MAX);
        let row = tx
            .query_one(statement, &query::latest_params(&arrays, &read_at))
            .await?;
        let latest = Position::new(non_negative(row.try_get(0)?, "position")?);
        Ok(
            (latest > condition.read_at).then(|| StoreError::QueryConflict {
                stream: stream_id.to_owned(),
                query: condition.query.to_string(),
                read_at: condition.read_at,
                found: latest,
            }),
        )
    }

    /// An empty append: only checks the expected version.
    async fn check_version(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        stream_id: &str,
        expected: ExpectedVersion,
    ) -> Result<Result<Appended, StoreError>, DbFailure> {
        let version = client.prepare_cached(&self.sql.stream_version).await?;
        let head = client.prepare_cached(&self.sql.head).await?;
        let params: [&(dyn ToSql + Sync); 1] = [&stream_id];
        let (version, head) = tokio::join!(
            client.query_one(&version, &params),
            client.query_one(&head, &[])
        );
        let actual = non_negative(version?.try_get(0)?, "stream version")?;
        let head = non_negative(head?.try_get(0)?, "position")?;
        if !expected.matches(actual) {
            return Ok(Err(StoreError::conflict(stream_id, expected, actual)));
        }
        Ok(Ok(Appended {
            position: Position::new(head),
            stream_version: actual,
        }))
    }

    /// The head the listening connection publishes; starts it if it does not run.
    fn listened_head(&self) -> tokio::sync::watch::Receiver<Position> {
        let mut listener = self.listener.lock().unwrap_or_else(PoisonError::into_inner);
        match &*listener {
            Some(running) if running.is_alive() => running.head(),
            _ => {
                let started = Listener::spawn(ListenTo {
                    config: self.listen_config.clone(),
                    listen: self.names.listen.clone(),
                    head_query: self.sql.head.clone(),
                    prefix: notify_prefix(&self.names),
                });
                let head = started.head();
                *listener = Some(started);
                head
            }
        }
    }

    /// Up to `limit` events after `after`; in a task of its own when `ahead`.
    async fn try_read_after(
        &self,
        after: Position,
        limit: usize,
        ahead: bool,
    ) -> Result<Vec<RecordedEvent>, DbFailure> {
        let Ok(after) = i64::try_from(after.get()) else {
            return Ok(Vec::new());
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let read = read_events(self.pool.clone(), self.sql.read.clone(), after, limit);
        if !ahead {
            return read.await;
        }
        // A read ahead runs in a task of its own, on a runtime thread that also drives the
        // connection: the rows become events there as they arrive, rather than crossing to the
        // reader's thread message by message while it applies the previous batch. Measured on
        // the benchmark's replay: ~15 % less client CPU per event. (A live read, which the
        // model waits for, stays on the model's task: one thread switch less.)
        let read = tokio::spawn(read);
        let _abort = AbortOnDrop(read.abort_handle());
        read.await
            .unwrap_or_else(|e| Err(DbFailure::Other(format!("the read task failed: {e}"))))
    }

    fn read_error(&self, after: Position) -> impl FnOnce(DbFailure) -> StoreError + '_ {
        move |e| {
            e.store(format!(
                "read `{}` after position {after}",
                self.names.events_plain
            ))
        }
    }

    fn segment_error(
        &self,
        segment: Segment,
        after: Position,
    ) -> impl FnOnce(DbFailure) -> StoreError + '_ {
        move |e| {
            e.store(format!(
                "read segment {segment} of `{}` after position {after}",
                self.names.events_plain
            ))
        }
    }

    async fn try_head(&self) -> Result<Position, DbFailure> {
        let client = store_connection(&self.pool).await?;
        let statement = client.prepare_cached(&self.sql.head).await?;
        let head: i64 = client.query_one(&statement, &[]).await?.get(0);
        Ok(Position::new(non_negative(head, "position")?))
    }
}

/// Aborts a task when the future awaiting it is dropped (a cancelled read stops reading).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Up to `limit` events after position `after`, with the store's read statement `sql`.
async fn read_events(
    pool: Pool,
    sql: Arc<str>,
    after: i64,
    limit: i64,
) -> Result<Vec<RecordedEvent>, DbFailure> {
    let client = checkout(&pool, PoolRole::Store).await?;
    let statement = client.prepare_cached(&sql).await?;
    // Streamed: each row becomes an event as it arrives and is freed at once, rather than all
    // rows of the batch collected first.
    let params: [&(dyn ToSql + Sync); 2] = [&after, &limit];
    let rows = client.query_raw(&statement, params).await?;
    let mut rows = std::pin::pin!(rows);
    let mut events = Vec::with_capacity(usize::try_from(limit).unwrap_or(0).min(super::BATCH));
    let mut decoder = Decoder::default();
    while let Some(row) = futures_util::TryStreamExt::try_next(&mut rows).await? {
        events.push(decoder.event(&row)?);
    }
    Ok(events)
}

/// Rows of the read statements' first nine columns (position, stream, version, id, type,
/// payload, time, revision, metadata) as events; the events of one stream in a row, and of one type, share its
/// allocation.
#[derive(Default)]
struct Decoder {
    stream: Option<Arc<str>>,
    types: Vec<Arc<str>>,
}

impl Decoder {
    fn event(&mut self, row: &tokio_postgres::Row) -> Result<RecordedEvent, DbFailure> {
        let stream_id: &str = row.try_get(1)?;
        let stream_id = match &self.stream {
            Some(last) if **last == *stream_id => last.clone(),
            _ => self.stream.insert(Arc::from(stream_id)).clone(),
        };
        let event_type: &str = row.try_get(4)?;
        let event_type = if let Some(known) = self.types.iter().find(|t| ***t == *event_type) {
            known.clone()
        } else {
            let new: Arc<str> = Arc::from(event_type);
            self.types.push(new.clone());
            new
        };
        let payload: JsonbText<'_> = row.try_get(5)?;
        let recorded_at: SystemTime = row.try_get(6)?;
        let (revision, metadata) = envelope(row, 7)?;
        Ok(RecordedEvent {
            meta: EventMeta {
                event_id: row.try_get(3)?,
                stream_id,
                stream_version: non_negative(row.try_get(2)?, "stream version")?,
                position: Position::new(non_negative(row.try_get(0)?, "position")?),
                recorded_at,
                event_type,
                revision,
                metadata,
            },
            payload: Arc::from(payload.0),
        })
    }
}

/// The revisions and metadata (JSON text, `None` for none) of `events`, as the append's arrays.
fn envelopes(events: &[NewEvent]) -> (Vec<i32>, Vec<Option<String>>) {
    let revisions = events
        .iter()
        .map(|e| i32::try_from(e.revision).unwrap_or(i32::MAX))
        .collect();
    (
        revisions,
        events.iter().map(|e| e.metadata.to_json()).collect(),
    )
}

/// The revision and metadata of a row, from its columns `at` and `at + 1`.
pub(super) fn envelope(
    row: &tokio_postgres::Row,
    at: usize,
) -> Result<(u32, crate::Metadata), DbFailure> {
    let revision: i32 = row.try_get(at)?;
    let revision = u32::try_from(revision)
        .ok()
        .filter(|&r| r > 0)
        .ok_or_else(|| {
            DbFailure::Other(format!(
                "a stored revision is {revision}; revisions start at 1"
            ))
        })?;
    let metadata = match row.try_get::<_, Option<JsonbText<'_>>>(at + 1)? {
        None => crate::Metadata::new(),
        Some(JsonbText(json)) => crate::Metadata::from_json(json).map_err(|e| {
            DbFailure::Other(format!("stored event metadata is not a JSON object: {e}"))
        })?,
    };
    Ok((revision, metadata))
}

/// A `jsonb` value's JSON text, borrowed from the row: in the binary protocol, a version byte
/// (1) and the text. Read so rather than cast to `text` on the server, which costs the server a
/// conversion per row.
struct JsonbText<'a>(&'a str);

impl<'a> tokio_postgres::types::FromSql<'a> for JsonbText<'a> {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        match raw.split_first() {
            Some((1, text)) => Ok(JsonbText(std::str::from_utf8(text)?)),
            Some((version, _)) => Err(format!("unsupported jsonb format version {version}").into()),
            None => Err("an empty jsonb value".into()),
        }
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::JSONB
    }
}

impl EventStore for PostgresEventStore {
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        self.append_with(stream_id, expected, events, std::future::ready(Ok(())))
            .await
    }

    async fn append_if(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        condition: &AppendCondition,
    ) -> Result<Appended, StoreError> {
        self.append_if_with(
            stream_id,
            expected,
            events,
            condition,
            std::future::ready(Ok(())),
        )
        .await
    }

    async fn read_matching(
        &self,
        query: &Query,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        query::read_matching(&self.pool, &self.sql.query, query, after, limit)
            .await
            .map_err(|e| {
                e.store(format!(
                    "read {query} after position {after} in `{}`",
                    self.names.events_plain
                ))
            })
    }

    async fn read_after(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.try_read_after(after, limit, false)
            .await
            .map_err(self.read_error(after))
    }

    async fn read_ahead(&self, after: Position, limit: usize) -> Result<EventBatch, StoreError> {
        self.try_read_after(after, limit, true)
            .await
            .map(EventBatch::from)
            .map_err(self.read_error(after))
    }

    async fn read_segment(
        &self,
        segment: Segment,
        after: Position,
        limit: usize,
    ) -> Result<SegmentBatch, StoreError> {
        self.try_read_segment(segment, after, limit, false)
            .await
            .map_err(self.segment_error(segment, after))
    }

    async fn read_segment_ahead(
        &self,
        segment: Segment,
        after: Position,
        limit: usize,
    ) -> Result<SegmentBatch, StoreError> {
        self.try_read_segment(segment, after, limit, true)
            .await
            .map_err(self.segment_error(segment, after))
    }

    async fn head(&self) -> Result<Position, StoreError> {
        self.try_head()
            .await
            .map_err(|e| e.store(format!("read the head of `{}`", self.names.events_plain)))
    }

    async fn wait_for_append(&self, after: Position) -> Result<(), StoreError> {
        wait_past(self.listened_head(), after, self.config.poll_interval).await;
        Ok(())
    }
}

/// `value` as a `u64`, or an error naming the column.
fn non_negative(value: i64, what: &str) -> Result<u64, DbFailure> {
    u64::try_from(value)
        .map_err(|_| DbFailure::Other(format!("the database returned a negative {what}: {value}")))
}

/// [`StoreError::DuplicateEvent`] when `failure` is the unique `event_id` constraint refusing
/// one of `events`, named in the violation's detail (the constraint's name, chosen by
/// PostgreSQL, is `<table>_event_id_key`, the table's part shortened when long).
fn duplicate_event(
    stream_id: &str,
    events: &[NewEvent],
    failure: &DbFailure,
) -> Option<StoreError> {
    let detail = failure.unique_violation("_event_id_key")?;
    let event = events
        .iter()
        .find(|e| detail.contains(&e.event_id.to_string()))?;
    Some(StoreError::DuplicateEvent {
        stream: stream_id.to_owned(),
        event_id: event.event_id,
    })
}

/// PostgreSQL's `text` holds no NUL character and its `jsonb` no `\u0000` escape: such events
/// are refused before the append starts, rather than failing inside it.
fn refuse_nul(stream_id: &str, events: &[NewEvent]) -> Result<(), StoreError> {
    let refuse = |what: String| {
        Err(StoreError::Rejected {
            stream: stream_id.to_owned(),
            reason: format!("{what} holds a NUL character, which PostgreSQL cannot store"),
        })
    };
    if stream_id.contains('\0') {
        return refuse("the stream id".into());
    }
    for (i, event) in events.iter().enumerate() {
        if event.event_type.contains('\0') {
            return refuse(format!("the type of event {i}"));
        }
        if escapes_nul(&event.payload) {
            return refuse(format!("the payload of event {i} (`{}`)", event.event_type));
        }
        if event
            .metadata
            .to_json()
            .is_some_and(|json| escapes_nul(&json))
        {
            return refuse(format!(
                "the metadata of event {i} (`{}`)",
                event.event_type
            ));
        }
    }
    Ok(())
}

/// Whether JSON text holds the escape `\u0000` (not an escaped backslash followed by `u0000`).
fn escapes_nul(json: &str) -> bool {
    json.match_indices("u0000").any(|(at, _)| {
        let backslashes = json[..at].bytes().rev().take_while(|&b| b == b'\\').count();
        backslashes % 2 == 1
    })
}
