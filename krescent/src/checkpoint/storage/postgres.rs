//! Checkpoints in a Postgres table (feature `postgres`).

use std::sync::Arc;
use std::time::SystemTime;

use deadpool_postgres::{ClientWrapper, Pool};
use serde_json::value::RawValue;
use tokio_postgres::types::private::BytesMut;
use tokio_postgres::types::{to_sql_checked, IsNull, Json, ToSql, Type};
use tokio_postgres::Row;

use super::{checkpoint_only, CheckpointStorage, PieceInfo, StorageError, StoredCheckpoint};
use crate::checkpoint::bucket::packed;
use crate::checkpoint::incremental::fold;
use crate::checkpoint::{
    truncate_to_micros, CheckpointBucket, CheckpointFormat, CheckpointVersion, Integrity,
};
use crate::checkpoint::{Link, Piece};
use crate::deadletter::ParkedEvent;
use crate::fleet::{Fence, LeaseHolder, Leases};
use crate::postgres::{
    check_fence, migrate, store_connection, Component, DbFailure, FenceFailure, Names,
};
use crate::postgres::{PostgresConfig, DELTAS_TABLE as DELTAS, LEASES_TABLE};
use crate::store::StoreError;
use crate::Position;

/// The connection pool [`PostgresCheckpointStorage::new`] takes: deadpool-postgres's `Pool`
/// (the crate is re-exported as `krescent::deadpool_postgres`), as
/// [`PostgresEventStore::pool`](crate::store::PostgresEventStore::pool) returns it.
pub use deadpool_postgres::Pool as PostgresPool;

/// Checkpoints in a Postgres table, one row per namespace.
///
/// [`migrate`](Self::migrate) creates the table ([`PostgresConfig::checkpoints_table`], by
/// default `public.krescent_checkpoints`): `namespace text` (primary key, byte order),
/// `version text`, `position numeric(20,0)` (every [`Position`], compared as a number),
/// `taken_at timestamptz` (exact to the microsecond), `format smallint` and the bucket: in
/// `data json` (format 1, [`CheckpointFormat::Json`]; `json`, not `jsonb`, so that it comes
/// back byte for byte) or in `data_binary bytea` (format 2, [`CheckpointFormat::MessagePack`],
/// the default: one `MessagePack` document, stored without the server's compression, which
/// costs more time than it saves space on `MessagePack` of random ids), and `checksum bigint`,
/// the checkpoint's [`checksum`](StoredCheckpoint::checksum), checked before a row is restored
/// (a mismatch is [`StorageError::Corrupt`]; rows written before checksums have none and
/// restore as before). Set the format with [`with_format`](Self::with_format);
/// a checkpoint restores in the format its row records, so rows written in the other format, or
/// by krescent 0.1 (which wrote JSON only), still restore. A store is one upsert that keeps the stored
/// row when it has the same version and a later position, so a position never moves backwards
/// even with several writers.
///
/// Usually obtained from the store: [`PostgresEventStore::checkpoint_storage`](crate::store::PostgresEventStore::checkpoint_storage).
#[derive(Debug, Clone)]
pub struct PostgresCheckpointStorage {
    pool: Pool,
    /// Where projections committing here take the connections of their transactions.
    transactions: Pool,
    format: CheckpointFormat,
    names: Arc<Names>,
    sql: Arc<Sql>,
    /// The lease every store must still hold (a leased model's storage; see [`crate::fleet`]).
    fence: Option<Arc<Fence>>,
}

/// The statements, with the quoted table name in them.
#[derive(Debug)]
struct Sql {
    load: String,
    load_base: String,
    store: String,
    append: String,
    pieces: String,
    delete_base: String,
    pieces_base: String,
    clear_base: String,
    delete: String,
    list: String,
    clear: String,
}

impl PostgresCheckpointStorage {
    /// A storage on `pool` (a [`PostgresPool`]), in the schema and table `config` names. Nothing is contacted yet;
    /// call [`migrate`](Self::migrate) before the first use.
    ///
    /// # Errors
    /// [`StoreError::InvalidName`] when a name of `config` is not a safe identifier.
    pub fn new(pool: Pool, config: &PostgresConfig) -> Result<Self, StoreError> {
        Ok(Self::from_names(pool, Arc::new(config.names()?)))
    }

    pub(crate) fn from_names(pool: Pool, names: Arc<Names>) -> Self {
        let table = &names.checkpoints;
        let deltas = &names.deltas;
        let sql = Sql {
            load_base: format!(
                "SELECT version, position::text, taken_at, format, data::text, data_binary, checksum, 0 AS sequence, NULL::text, NULL::text, 0
                 FROM {table} WHERE namespace = $1"
            ),
            // The base's row (sequence 0) and its deltas, in one statement: one snapshot. Not
            // ordered by the server: a sort of the union would copy the base's bytes (tens of
            // MB) into the sort; the rows are put in order here.
            load: format!(
                "SELECT version, position::text, taken_at, format, data::text, data_binary, checksum, 0 AS sequence, NULL::text, NULL::text, deltas
                 FROM {table} WHERE namespace = $1
                 UNION ALL
                 SELECT version, position::text, taken_at, format, data::text, data_binary, checksum, sequence, base::text, previous::text, 0
                 FROM {deltas} WHERE checkpoints = $2 AND namespace = $1"
            ),
            // A whole checkpoint replaces the row unless the stored chain (its base or its last
            // delta) is of the same version and later, and removes the chain's deltas.
            store: format!(
                "WITH stored AS (
                     INSERT INTO {table} AS stored (namespace, version, position, taken_at, format, data, data_binary, checksum)
                     VALUES ($1, $2, $3::text::numeric, $4, $5, $6::json, $7, $8)
                     ON CONFLICT (namespace) DO UPDATE
                     SET version = excluded.version, position = excluded.position, taken_at = excluded.taken_at,
                         format = excluded.format, data = excluded.data, data_binary = excluded.data_binary,
                         checksum = excluded.checksum, deltas = 0
                     WHERE stored.version <> excluded.version
                        OR excluded.position >= GREATEST(stored.position, (
                            SELECT max(d.position) FROM {deltas} d
                            WHERE d.checkpoints = $9::text AND d.namespace = excluded.namespace))
                     RETURNING 1
                 )
                 DELETE FROM {deltas} WHERE checkpoints = $9::text AND namespace = $1 AND EXISTS (SELECT 1 FROM stored)"
            ),
            // A delta is appended only after the stored chain's last piece: the base row of its
            // version and position (locked until the commit, so a whole checkpoint replacing it
            // waits), then deltas 1 to sequence - 1, the last at `previous`; the base row counts
            // it.
            append: format!(
                "WITH appended AS (
                 INSERT INTO {deltas} (checkpoints, namespace, sequence, version, base, previous, position, taken_at, format, data, data_binary, checksum)
                 SELECT $1::text, $2::text, $3::integer, $4::text, $5::text::numeric, $6::text::numeric, $7::text::numeric,
                        $8::timestamptz, $9::smallint, $10::json, $11::bytea, $12::bigint
                 FROM {table} AS stored
                 WHERE stored.namespace = $2::text AND stored.version = $4::text AND stored.position = $5::text::numeric
                   AND $3::integer - 1 = (SELECT count(*) FROM {deltas} WHERE checkpoints = $1::text AND namespace = $2::text)
                   AND $6::text::numeric = COALESCE((SELECT position FROM {deltas}
                       WHERE checkpoints = $1::text AND namespace = $2::text AND sequence = $3::integer - 1), stored.position)
                 FOR SHARE OF stored
                 RETURNING 1
                 )
                 UPDATE {table} SET deltas = $3::integer
                 WHERE namespace = $2::text AND EXISTS (SELECT 1 FROM appended)"
            ),
            pieces: format!(
                "SELECT 0 AS sequence, position::text, NULL::text, NULL::text, coalesce(octet_length(data_binary), octet_length(data::text), 0)
                 FROM {table} WHERE namespace = $1
                 UNION ALL
                 SELECT sequence, position::text, base::text, previous::text, coalesce(octet_length(data_binary), octet_length(data::text), 0)
                 FROM {deltas} WHERE checkpoints = $2 AND namespace = $1
                 ORDER BY 1"
            ),
            delete: format!(
                "WITH deltas AS (DELETE FROM {deltas} WHERE checkpoints = $2 AND namespace = $1)
                 DELETE FROM {table} WHERE namespace = $1"
            ),
            delete_base: format!("DELETE FROM {table} WHERE namespace = $1"),
            pieces_base: format!(
                "SELECT 0 AS sequence, position::text, NULL::text, NULL::text, coalesce(octet_length(data_binary), octet_length(data::text), 0)
                 FROM {table} WHERE namespace = $1"
            ),
            list: format!("SELECT namespace FROM {table} ORDER BY namespace"),
            clear_base: format!("DELETE FROM {table}"),
            clear: format!(
                "WITH deltas AS (DELETE FROM {deltas} WHERE checkpoints = $1)
                 DELETE FROM {table}"
            ),
        };
        PostgresCheckpointStorage {
            transactions: pool.clone(),
            pool,
            format: CheckpointFormat::MessagePack,
            names,
            sql: Arc::new(sql),
            fence: None,
        }
    }

    /// Creates the schema and the checkpoints table, or brings them up to this build's
    /// version. Safe to run repeatedly and concurrently.
    ///
    /// # Errors
    /// [`StorageError::Database`] when the database refuses.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        migrate(&self.pool, &self.names, Component::Checkpoints)
            .await
            .map(drop)
            .map_err(|e| e.storage(format!("migrate `{}`", self.names.checkpoints_plain)))
    }

    /// This storage, putting new checkpoints in `format` (by default
    /// [`CheckpointFormat::MessagePack`]; [`CheckpointFormat::Json`] to read them in the table).
    #[must_use]
    pub fn with_format(mut self, format: CheckpointFormat) -> Self {
        self.format = format;
        self
    }

    /// This storage, its [`PostgresProjection`](crate::projection::PostgresProjection)s
    /// taking the connections of their transactions from `pool` (by default the storage's own
    /// pool; [`PostgresEventStore::checkpoint_storage`](crate::store::PostgresEventStore::checkpoint_storage)
    /// gives the store's pool of projection transactions). A projection holds its connection
    /// from its transaction's first statement to its checkpoint's commit, while its model reads
    /// events through the store's pool: with both in one pool, as many projections as the pool
    /// has connections could hold them all and leave none to read the events they wait for.
    #[must_use]
    pub fn with_transaction_pool(mut self, pool: Pool) -> Self {
        self.transactions = pool;
        self
    }

    /// The pool.
    #[must_use]
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The pool projections take the connections of their transactions from.
    pub(crate) fn transaction_pool(&self) -> &Pool {
        &self.transactions
    }

    pub(crate) fn names(&self) -> &Names {
        &self.names
    }

    /// Who holds the lease of `namespace` now (a lease that expired is held by no one), for
    /// tools that must not act behind a running model's back; `None` also before `migrate()`
    /// created the leases table.
    ///
    /// # Errors
    /// [`StorageError::Database`] when the database refuses.
    pub async fn lease(&self, namespace: &str) -> Result<Option<LeaseHolder>, StorageError> {
        let run = async {
            let client = store_connection(&self.pool).await?;
            let table = format!("{}.{}", self.names.schema_plain, LEASES_TABLE);
            let exists: bool = client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
                .await?
                .try_get(0)?;
            if !exists {
                return Ok(None);
            }
            let sql = format!(
                "SELECT holder, epoch FROM {} WHERE checkpoints = $1 AND namespace = $2 AND expires_at > clock_timestamp()",
                self.names.leases
            );
            let row = client
                .query_opt(&sql, &[&self.names.checkpoints_plain, &namespace])
                .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            let epoch: i64 = row.try_get(1)?;
            Ok::<_, DbFailure>(Some(LeaseHolder {
                holder: row.try_get(0)?,
                epoch: u64::try_from(epoch)
                    .map_err(|_| DbFailure::Other(format!("lease epoch {epoch} is negative")))?,
            }))
        };
        run.await
            .map_err(|e| e.storage(format!("read the lease of `{namespace}`")))
    }

    /// Upserts `checkpoint` in a transaction of its own that first checks `fence`.
    async fn store_fenced(
        &self,
        checkpoint: &StoredCheckpoint,
        fence: &Fence,
    ) -> Result<(), StorageError> {
        let doing = || format!("store into {}", self.origin(&checkpoint.namespace));
        let client = store_connection(&self.pool)
            .await
            .map_err(|e| e.storage(doing()))?;
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| DbFailure::from(e).storage(doing()))?;
        let run = async {
            check_fence(&client, &self.names, fence).await?;
            self.upsert_bucket(&client, checkpoint).await?;
            client.batch_execute("COMMIT").await?;
            Ok::<_, FenceFailure>(())
        };
        match run.await {
            Ok(()) => Ok(()),
            Err(e) => {
                // The connection goes back to the pool: it must not keep the transaction.
                if client.batch_execute("ROLLBACK").await.is_err() {
                    drop(deadpool_postgres::Object::take(client));
                }
                Err(e.storage(fence, doing()))
            }
        }
    }

    /// The bucket of `checkpoint` as the `data` column holds it.
    pub(crate) fn encode(checkpoint: &StoredCheckpoint) -> Result<Box<RawValue>, StorageError> {
        serde_json::value::to_raw_value(&checkpoint.bucket).map_err(|e| StorageError::Encode {
            namespace: checkpoint.namespace.clone(),
            reason: e.to_string(),
        })
    }

    /// Upserts `checkpoint`, its bucket encoded as `data`, through `client`, in whatever
    /// transaction it has open.
    pub(crate) async fn store_in(
        &self,
        client: &ClientWrapper,
        checkpoint: &StoredCheckpoint,
        data: &RawValue,
    ) -> Result<(), DbFailure> {
        self.upsert(client, checkpoint, Data::Json(&Json(data)))
            .await
    }

    /// Upserts `checkpoint` with its bucket in the storage's format, through `client`, in
    /// whatever transaction it has open.
    async fn upsert_bucket(
        &self,
        client: &ClientWrapper,
        checkpoint: &StoredCheckpoint,
    ) -> Result<(), DbFailure> {
        match self.format {
            // Serialized straight into the statement's message, with no copy in between (a
            // bucket always serializes: string keys, and non-finite floats as text).
            CheckpointFormat::Json => {
                self.upsert(client, checkpoint, Data::Json(&Json(&checkpoint.bucket)))
                    .await
            }
            // Likewise encoded straight into the statement's message (a large state's bucket
            // is tens of MB: an intermediate `Vec` cost a copy and its growth).
            CheckpointFormat::MessagePack => {
                self.upsert(
                    client,
                    checkpoint,
                    Data::Binary(&Packed(&checkpoint.bucket)),
                )
                .await
            }
        }
    }

    /// The upsert, with `data` a `json` parameter: sent as JSON, the server checks it once
    /// (`$5::text::json` had it take the text in and then parse a copy: ~0.1 s more for the
    /// 45 MB checkpoint of a 1,000,000-key map).
    async fn upsert(
        &self,
        client: &ClientWrapper,
        checkpoint: &StoredCheckpoint,
        data: Data<'_>,
    ) -> Result<(), DbFailure> {
        let position = checkpoint.position.to_string();
        let taken_at = truncate_to_micros(checkpoint.taken_at);
        let none_json: Option<Json<()>> = None;
        let none_binary: Option<&[u8]> = None;
        let (format, json, binary): (_, &(dyn ToSql + Sync), &(dyn ToSql + Sync)) = match data {
            Data::Json(json) => (CheckpointFormat::Json, json, &none_binary),
            Data::Binary(binary) => (CheckpointFormat::MessagePack, &none_json, binary),
        };
        let checksum = i64::from(checkpoint.checksum());
        let table = &self.names.checkpoints_table_plain;
        if let Piece::Delta(link) = checkpoint.piece {
            let statement = client.prepare_cached(&self.sql.append).await?;
            let sequence = i32::try_from(link.sequence).map_err(|_| {
                DbFailure::Other(format!("delta {} is past the last", link.sequence))
            })?;
            let appended = client
                .execute(
                    &statement,
                    &[
                        table,
                        &checkpoint.namespace,
                        &sequence,
                        &checkpoint.version.as_str(),
                        &link.base.to_string(),
                        &link.previous.to_string(),
                        &position,
                        &taken_at,
                        &format.number(),
                        json,
                        binary,
                        &checksum,
                    ],
                )
                .await?;
            if appended == 0 {
                return Err(DbFailure::Other(format!(
                    "delta {} of `{}` (after position {} on the base at {}) does not follow the stored chain",
                    link.sequence, checkpoint.namespace, link.previous, link.base
                )));
            }
            return Ok(());
        }
        let statement = client.prepare_cached(&self.sql.store).await?;
        client
            .execute(
                &statement,
                &[
                    &checkpoint.namespace,
                    &checkpoint.version.as_str(),
                    &position,
                    &taken_at,
                    &format.number(),
                    json,
                    binary,
                    &checksum,
                    table,
                ],
            )
            .await?;
        Ok(())
    }

    /// Deletes the checkpoint of `namespace` through `client`, in whatever transaction it has open.
    pub(crate) async fn delete_in(
        &self,
        client: &ClientWrapper,
        namespace: &str,
    ) -> Result<u64, DbFailure> {
        if !self.has_deltas(client).await? {
            let statement = client.prepare_cached(&self.sql.delete_base).await?;
            return Ok(client.execute(&statement, &[&namespace]).await?);
        }
        let statement = client.prepare_cached(&self.sql.delete).await?;
        Ok(client
            .execute(
                &statement,
                &[&namespace, &self.names.checkpoints_table_plain],
            )
            .await?)
    }

    /// Whether the deltas' table exists: an older build's migration (before step 7) did not
    /// create it, and tools that read a database without migrating it (`krescent`) meet such
    /// tables.
    async fn has_deltas(&self, client: &ClientWrapper) -> Result<bool, DbFailure> {
        let statement = client
            .prepare_cached("SELECT to_regclass($1) IS NOT NULL")
            .await?;
        Ok(client
            .query_one(&statement, &[&self.names.deltas])
            .await?
            .try_get(0)?)
    }

    /// Upserts `parked` through `client`, in whatever transaction it has open.
    pub(crate) async fn park_in(
        &self,
        client: &ClientWrapper,
        parked: &[ParkedEvent],
    ) -> Result<(), DbFailure> {
        if parked.is_empty() {
            return Ok(());
        }
        let statement = client
            .prepare_cached(&format!(
                "INSERT INTO {} (checkpoints, namespace, position, stream_id, event_type, error, chain, attempts, parked_at, behind, retry)
                 VALUES ($1, $2, $3::text::numeric, $4, $5, $6, $7, $8, $9, $10::text::numeric, $11)
                 ON CONFLICT (checkpoints, namespace, position) DO UPDATE
                 SET stream_id = excluded.stream_id, event_type = excluded.event_type, error = excluded.error,
                     chain = excluded.chain, attempts = excluded.attempts, parked_at = excluded.parked_at,
                     behind = excluded.behind, retry = excluded.retry",
                self.names.parked
            ))
            .await?;
        for event in parked {
            let attempts = i32::try_from(event.attempts).unwrap_or(i32::MAX);
            let behind = event.behind.map(|p| p.to_string());
            client
                .execute(
                    &statement,
                    &[
                        &self.names.checkpoints_table_plain,
                        &event.namespace,
                        &event.position.to_string(),
                        &event.stream_id,
                        &event.event_type,
                        &event.error,
                        &Json(&event.chain),
                        &attempts,
                        &truncate_to_micros(event.parked_at),
                        &behind,
                        &event.retry,
                    ],
                )
                .await?;
        }
        Ok(())
    }

    /// Deletes the parked events of `namespace` at `positions` (all of them when `None`)
    /// through `client`, in whatever transaction it has open.
    pub(crate) async fn unpark_in(
        &self,
        client: &ClientWrapper,
        namespace: &str,
        positions: Option<&[Position]>,
    ) -> Result<u64, DbFailure> {
        let table = &self.names.parked;
        let Some(positions) = positions else {
            let statement = client
                .prepare_cached(&format!(
                    "DELETE FROM {table} WHERE checkpoints = $1 AND namespace = $2"
                ))
                .await?;
            return Ok(client
                .execute(
                    &statement,
                    &[&self.names.checkpoints_table_plain, &namespace],
                )
                .await?);
        };
        let positions: Vec<String> = positions.iter().map(ToString::to_string).collect();
        let statement = client
            .prepare_cached(&format!(
                "DELETE FROM {table} WHERE checkpoints = $1 AND namespace = $2 AND position = ANY($3::text[]::numeric[])"
            ))
            .await?;
        Ok(client
            .execute(
                &statement,
                &[&self.names.checkpoints_table_plain, &namespace, &positions],
            )
            .await?)
    }

    /// The parked events of `namespace`, in position order.
    async fn try_parked(&self, namespace: &str) -> Result<Vec<ParkedEvent>, DbFailure> {
        let client = store_connection(&self.pool).await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT position::text, stream_id, event_type, error, chain, attempts, parked_at, behind::text, retry
                 FROM {} WHERE checkpoints = $1 AND namespace = $2 ORDER BY position",
                self.names.parked
            ))
            .await?;
        let rows = client
            .query(
                &statement,
                &[&self.names.checkpoints_table_plain, &namespace],
            )
            .await?;
        let origin = || format!("table `{}`, namespace `{namespace}`", self.names.parked);
        let position = |text: &str| {
            text.parse::<Position>()
                .map_err(|e| DbFailure::Other(format!("{}: position `{text}`: {e}", origin())))
        };
        let mut parked = Vec::with_capacity(rows.len());
        for row in rows {
            let at: String = row.try_get(0)?;
            let chain: Json<Vec<String>> = row.try_get(4)?;
            let attempts: i32 = row.try_get(5)?;
            let behind: Option<String> = row.try_get(7)?;
            parked.push(ParkedEvent {
                namespace: namespace.to_owned(),
                position: position(&at)?,
                stream_id: row.try_get(1)?,
                event_type: row.try_get(2)?,
                error: row.try_get(3)?,
                chain: chain.0,
                attempts: u32::try_from(attempts).unwrap_or(0),
                parked_at: row.try_get::<_, SystemTime>(6)?,
                behind: behind.as_deref().map(position).transpose()?,
                retry: row.try_get(8)?,
            });
        }
        Ok(parked)
    }

    /// Where a namespace's row is, for error messages.
    fn origin(&self, namespace: &str) -> String {
        format!(
            "table `{}`, namespace `{namespace}`",
            self.names.checkpoints_plain
        )
    }

    /// The row of `namespace`; its `data` column is read in place, not copied out (a large
    /// state's checkpoint is tens of MB).
    async fn try_load(&self, namespace: &str) -> Result<Vec<Row>, DbFailure> {
        let client = store_connection(&self.pool).await?;
        let statement = match client.prepare_cached(&self.sql.load).await {
            Ok(statement) => statement,
            // A table that an older build migrated, before the deltas' table (step 7) existed,
            // has no deltas: its row alone, for tools that read without migrating.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                let statement = client.prepare_cached(&self.sql.load_base).await?;
                return Ok(client.query(&statement, &[&namespace]).await?);
            }
            Err(e) => return Err(e.into()),
        };
        Ok(client
            .query(
                &statement,
                &[&namespace, &self.names.checkpoints_table_plain],
            )
            .await?)
    }

    /// The checkpoint (a base, or a delta) in `row` of [`Sql::load`], checked against its
    /// checksum.
    fn decode_row(
        &self,
        namespace: &str,
        row: &Row,
    ) -> Result<(StoredCheckpoint, Integrity), StorageError> {
        #[allow(clippy::type_complexity)] // the row's columns, in order
        let columns = || -> Result<
            (
                String,
                String,
                SystemTime,
                i16,
                Option<&str>,
                Option<&[u8]>,
                Option<i64>,
                i32,
                Option<String>,
                Option<String>,
            ),
            DbFailure,
        > {
            Ok((
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
                row.try_get(4)?,
                row.try_get(5)?,
                row.try_get(6)?,
                row.try_get(7)?,
                row.try_get(8)?,
                row.try_get(9)?,
            ))
        };
        let (version, position, taken_at, format, json, binary, checksum, sequence, base, previous) =
            columns().map_err(|e| e.storage(format!("load from {}", self.origin(namespace))))?;
        let origin = if sequence == 0 {
            self.origin(namespace)
        } else {
            format!(
                "table `{}.{DELTAS}`, namespace `{namespace}`, delta {sequence}",
                self.names.schema_plain
            )
        };
        let corrupt = |reason: String| StorageError::Corrupt {
            origin: origin.clone(),
            reason,
        };
        let parse = |text: &str| {
            text.parse::<Position>()
                .map_err(|e: crate::PositionParseError| corrupt(e.to_string()))
        };
        let position = parse(&position)?;
        let piece = match (base, previous) {
            (Some(base), Some(previous)) => Piece::Delta(Link {
                base: parse(&base)?,
                previous: parse(&previous)?,
                sequence: u32::try_from(sequence)
                    .map_err(|_| corrupt(format!("delta number {sequence}")))?,
            }),
            _ => Piece::Whole,
        };
        let bucket: CheckpointBucket = match (CheckpointFormat::from_number(format), json, binary) {
            (Some(CheckpointFormat::Json), Some(json), _) => {
                serde_json::from_str(json).map_err(|e| corrupt(format!("undecodable data: {e}")))?
            }
            (Some(CheckpointFormat::MessagePack), _, Some(binary)) => packed::decode(binary)
                .map_err(|e| corrupt(format!("undecodable data_binary: {e}")))?,
            (Some(format), _, _) => {
                return Err(corrupt(format!(
                    "format {format:?} with no data in its column"
                )));
            }
            (None, _, _) => {
                return Err(corrupt(format!(
                    "unknown format {format} (this build reads 1 and 2)"
                )));
            }
        };
        let checkpoint = StoredCheckpoint {
            namespace: namespace.to_owned(),
            version: CheckpointVersion::from_text(version),
            position,
            taken_at,
            bucket,
            piece,
        };
        let integrity = match checksum {
            Some(checksum) => {
                let checksum = u32::try_from(checksum)
                    .map_err(|_| corrupt(format!("checksum {checksum} is out of range")))?;
                checkpoint.verify(checksum, &origin)?
            }
            None => Integrity::Unchecked,
        };
        Ok((checkpoint, integrity))
    }

    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, DbFailure> {
        let client = store_connection(&self.pool).await?;
        let statement = client.prepare_cached(sql).await?;
        Ok(client.execute(&statement, params).await?)
    }
}

#[async_trait::async_trait]
impl CheckpointStorage for PostgresCheckpointStorage {
    /// The table, as ``postgres table `schema.table` ``; the database is not part of it.
    fn location(&self) -> Option<String> {
        Some(format!("postgres table `{}`", self.names.checkpoints_plain))
    }

    async fn load(&self, namespace: &str) -> Result<Option<StoredCheckpoint>, StorageError> {
        self.load_checked(namespace).await.map(checkpoint_only)
    }

    async fn load_checked(
        &self,
        namespace: &str,
    ) -> Result<Option<(StoredCheckpoint, Integrity)>, StorageError> {
        let rows = self
            .try_load(namespace)
            .await
            .map_err(|e| e.storage(format!("load from {}", self.origin(namespace))))?;
        let mut rows = rows;
        rows.sort_by_key(|row| row.try_get::<_, i32>(7).unwrap_or(i32::MAX));
        let mut rows = rows.iter();
        let Some(first) = rows.next() else {
            return Ok(None);
        };
        let (base, integrity) = self.decode_row(namespace, first)?;
        let counted: i32 = first.try_get(10).map_err(|e| {
            DbFailure::from(e).storage(format!("load from {}", self.origin(namespace)))
        })?;
        if base.piece == Piece::Whole && usize::try_from(counted).ok() != Some(rows.len()) {
            return Err(StorageError::Corrupt {
                origin: self.origin(namespace),
                reason: format!(
                    "{counted} deltas were committed after it, {} are stored",
                    rows.len()
                ),
            });
        }
        if base.piece != Piece::Whole {
            return Err(StorageError::Corrupt {
                origin: self.origin(namespace),
                reason: format!(
                    "deltas without their base (the first is delta {:?})",
                    base.piece
                ),
            });
        }
        let deltas = rows
            .map(|row| self.decode_row(namespace, row).map(|(delta, _)| delta))
            .collect::<Result<Vec<_>, _>>()?;
        let checkpoint = fold(base, deltas, &self.origin(namespace))?;
        Ok(Some((checkpoint, integrity)))
    }

    fn keeps_deltas(&self) -> bool {
        true
    }

    async fn pieces(&self, namespace: &str) -> Result<Vec<PieceInfo>, StorageError> {
        let run = async {
            let client = store_connection(&self.pool).await?;
            let rows = if self.has_deltas(&client).await? {
                let statement = client.prepare_cached(&self.sql.pieces).await?;
                client
                    .query(
                        &statement,
                        &[&namespace, &self.names.checkpoints_table_plain],
                    )
                    .await?
            } else {
                let statement = client.prepare_cached(&self.sql.pieces_base).await?;
                client.query(&statement, &[&namespace]).await?
            };
            let parse = |text: String| {
                text.parse::<Position>()
                    .map_err(|e| DbFailure::Other(format!("position `{text}`: {e}")))
            };
            let mut pieces = Vec::with_capacity(rows.len());
            for row in rows {
                let sequence: i32 = row.try_get(0)?;
                let base: Option<String> = row.try_get(2)?;
                let previous: Option<String> = row.try_get(3)?;
                let bytes: i32 = row.try_get(4)?;
                let piece = match (base, previous) {
                    (Some(base), Some(previous)) => Piece::Delta(Link {
                        base: parse(base)?,
                        previous: parse(previous)?,
                        sequence: u32::try_from(sequence).unwrap_or(0),
                    }),
                    _ => Piece::Whole,
                };
                pieces.push(PieceInfo {
                    piece,
                    position: parse(row.try_get(1)?)?,
                    bytes: u64::try_from(bytes).unwrap_or(0),
                });
            }
            Ok::<_, DbFailure>(pieces)
        };
        run.await
            .map_err(|e| e.storage(format!("read the pieces of {}", self.origin(namespace))))
    }

    async fn store(&self, checkpoint: &StoredCheckpoint) -> Result<(), StorageError> {
        if let Some(fence) = &self.fence {
            return self.store_fenced(checkpoint, fence).await;
        }
        let run = async {
            let client = store_connection(&self.pool).await?;
            self.upsert_bucket(&client, checkpoint).await
        };
        run.await
            .map_err(|e| e.storage(format!("store into {}", self.origin(&checkpoint.namespace))))
    }

    fn format(&self) -> CheckpointFormat {
        self.format
    }

    fn leases(&self) -> Option<Leases> {
        Some(Leases::new(self.pool.clone(), self.names.clone()))
    }

    fn fenced(&self, fence: &Fence) -> Option<Arc<dyn CheckpointStorage>> {
        Some(Arc::new(PostgresCheckpointStorage {
            fence: Some(Arc::new(fence.clone())),
            ..self.clone()
        }))
    }

    async fn delete(&self, namespace: &str) -> Result<bool, StorageError> {
        let run = async {
            let client = store_connection(&self.pool).await?;
            self.delete_in(&client, namespace).await
        };
        run.await
            .map(|deleted| deleted > 0)
            .map_err(|e| e.storage(format!("delete from {}", self.origin(namespace))))
    }

    async fn list(&self) -> Result<Vec<String>, StorageError> {
        let run = async {
            let client = store_connection(&self.pool).await?;
            let statement = client.prepare_cached(&self.sql.list).await?;
            let rows = client.query(&statement, &[]).await?;
            rows.iter()
                .map(|row| row.try_get(0).map_err(DbFailure::from))
                .collect::<Result<Vec<String>, _>>()
        };
        run.await
            .map_err(|e| e.storage(format!("list `{}`", self.names.checkpoints_plain)))
    }

    async fn clear(&self) -> Result<(), StorageError> {
        let run = async {
            let client = store_connection(&self.pool).await?;
            if !self.has_deltas(&client).await? {
                return self.execute(&self.sql.clear_base, &[]).await;
            }
            self.execute(&self.sql.clear, &[&self.names.checkpoints_table_plain])
                .await
        };
        run.await
            .map(drop)
            .map_err(|e| e.storage(format!("clear `{}`", self.names.checkpoints_plain)))
    }

    async fn park(&self, parked: &[ParkedEvent]) -> Result<(), StorageError> {
        let run = async {
            let client = store_connection(&self.pool).await?;
            let result = async {
                client.batch_execute("BEGIN").await?;
                self.park_in(&client, parked).await?;
                client.batch_execute("COMMIT").await?;
                Ok::<_, DbFailure>(())
            }
            .await;
            if result.is_err() {
                // Inside a failed transaction: closed (the server rolls it back), not handed
                // back to the pool.
                drop(deadpool_postgres::Object::take(client));
            }
            result
        };
        run.await
            .map_err(|e| e.storage(format!("park events in `{}`", self.names.parked)))
    }

    async fn parked(&self, namespace: &str) -> Result<Vec<ParkedEvent>, StorageError> {
        self.try_parked(namespace).await.map_err(|e| {
            e.storage(format!(
                "read the parked events of `{namespace}` in `{}`",
                self.names.parked
            ))
        })
    }

    async fn unpark(&self, namespace: &str, positions: &[Position]) -> Result<u64, StorageError> {
        let run = async {
            let client = store_connection(&self.pool).await?;
            self.unpark_in(&client, namespace, Some(positions)).await
        };
        run.await.map_err(|e| {
            e.storage(format!(
                "remove parked events of `{namespace}` from `{}`",
                self.names.parked
            ))
        })
    }

    async fn parked_namespaces(&self) -> Result<Vec<String>, StorageError> {
        let run = async {
            let client = store_connection(&self.pool).await?;
            let statement = client
                .prepare_cached(&format!(
                    "SELECT DISTINCT namespace FROM {} WHERE checkpoints = $1 ORDER BY namespace",
                    self.names.parked
                ))
                .await?;
            let rows = client
                .query(&statement, &[&self.names.checkpoints_table_plain])
                .await?;
            rows.iter()
                .map(|row| row.try_get(0).map_err(DbFailure::from))
                .collect::<Result<Vec<String>, _>>()
        };
        run.await
            .map_err(|e| e.storage(format!("list `{}`", self.names.parked)))
    }
}

/// A checkpoint's bucket as the upsert sends it.
#[derive(Clone, Copy)]
enum Data<'a> {
    /// Into `data` (format 1).
    Json(&'a (dyn ToSql + Sync)),
    /// Into `data_binary` (format 2).
    Binary(&'a (dyn ToSql + Sync)),
}

/// A bucket as a `bytea` parameter: one `MessagePack` document ([`packed::encode_into`]),
/// written into the statement's message as it is sent.
#[derive(Debug)]
struct Packed<'a>(&'a CheckpointBucket);

impl ToSql for Packed<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.reserve(packed::size_hint(self.0));
        packed::encode_into(self.0, &mut Appender(out))?;
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::BYTEA
    }

    to_sql_checked!();
}

/// Writes append to the buffer.
struct Appender<'a>(&'a mut BytesMut);

impl std::io::Write for Appender<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
