//! Tables in Postgres, written in the transaction that commits the model's checkpoint.

use std::collections::BTreeMap;

use deadpool_postgres::{ClientWrapper, Object, PoolError};
use tokio_postgres::types::ToSql;

use crate::checkpoint::storage::{CheckpointStorage as _, PostgresCheckpointStorage};
use crate::checkpoint::{
    CheckpointBucket, CheckpointError, CheckpointSupport, CheckpointTransaction, CheckpointVersion,
    StorageError, StoredCheckpoint,
};
use crate::deadletter::ParkedEvent;
use crate::fleet::{Fence, Segment};
use crate::postgres::{
    check_fence, checkout, identifier, store_connection, transient_cause, DbFailure, FenceFailure,
    PoolRole,
};
use crate::store::StoreError;
use crate::Position;

mod segment;

const REVISION: &str = "revision";
const TABLES: &str = "tables";

/// What a projection handler's database work failed with.
///
/// [`is_transient`](Self::is_transient) says whether the connection went away (the server
/// restarted, the network failed): a streaming model then rolls back and restarts from its
/// last checkpoint ([`Error::is_transient`](crate::Error::is_transient)).
#[derive(Debug, thiserror::Error)]
#[error("projection write failed: {source}")]
pub struct ProjectionError {
    #[source]
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
    transient: bool,
}

impl ProjectionError {
    /// Whether retrying may succeed: the connection was lost, refused or timed out, or the
    /// server is shutting down or starting up.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        self.transient
    }
}

impl From<tokio_postgres::Error> for ProjectionError {
    fn from(e: tokio_postgres::Error) -> Self {
        ProjectionError {
            transient: transient_cause(&e).unwrap_or(false),
            source: Box::new(e),
        }
    }
}

impl From<PoolError> for ProjectionError {
    fn from(e: PoolError) -> Self {
        ProjectionError {
            transient: transient_cause(&e).unwrap_or(false),
            source: Box::new(e),
        }
    }
}

impl From<DbFailure> for ProjectionError {
    fn from(e: DbFailure) -> Self {
        ProjectionError {
            transient: e.is_transient(),
            source: e.into_source(),
        }
    }
}

/// A table of the projection: its quoted name, plain name and `CREATE TABLE` statement.
#[derive(Debug, Clone)]
struct Table {
    quoted: String,
    plain: String,
    create: String,
}

/// Tables a model projects into, exactly once: handlers write through
/// [`transaction`](Self::transaction), and the runner commits that transaction together with the
/// checkpoint row, so a crash can never separate the rows from the position they reflect.
///
/// Use it as a `#[checkpoint(support)]` field of a model whose storage is the
/// [`PostgresCheckpointStorage`] it was built from. Its checkpoint is a reference, not the
/// data: the revision and the shape (columns and types) of each table. On restore it is
/// checked against the database, so tables dropped or altered behind the model's back make the
/// checkpoint invalid: the model rebuilds (dropping and recreating its tables in the rebuild's
/// first transaction) or fails, as its `on_invalid` says.
///
/// With `always` the transaction spans one event; with `fixed_events(N)` up to N events. A
/// streaming model also commits when it has caught up and when it stops, so rows never wait
/// for more events. A handler error rolls back every write since the last checkpoint; the next
/// run resumes from that checkpoint.
#[derive(Debug)]
pub struct PostgresProjection {
    storage: PostgresCheckpointStorage,
    revision: u32,
    tables: Vec<Table>,
    /// The connection of the open transaction (none between transactions).
    client: Option<Object>,
    open: bool,
    /// The tables' shapes as the database has them, read by `prepare` and after a reset.
    shapes: BTreeMap<String, String>,
    /// The lease each commit must still hold (see [`crate::fleet`]).
    fence: Option<Fence>,
    /// The open transaction has a `krescent_event` savepoint.
    savepoint: bool,
    /// An event began: its savepoint is set before its first write (pipelined with it by
    /// [`execute`](Self::execute)), or not at all when it writes nothing.
    savepoint_due: bool,
}

impl PostgresProjection {
    /// A projection whose checkpoints go into `storage`'s table, at `revision` (bump it when the
    /// tables' meaning changes without their shape changing).
    #[must_use]
    pub fn new(storage: &PostgresCheckpointStorage, revision: u32) -> Self {
        PostgresProjection {
            storage: storage.clone(),
            revision,
            tables: Vec::new(),
            client: None,
            open: false,
            shapes: BTreeMap::new(),
            fence: None,
            savepoint: false,
            savepoint_due: false,
        }
    }

    /// Adds the table `name` (in the storage's schema), created by `create`, a `CREATE TABLE`
    /// statement in which `{table}` stands for the quoted, schema-qualified name.
    ///
    /// # Errors
    /// [`StoreError::InvalidName`] when `name` is not a safe identifier, or is one of the
    /// store's or the storage's own tables in that schema (events, checkpoints, migrations):
    /// a rebuild drops and recreates its tables.
    pub fn table(mut self, name: &str, create: &str) -> Result<Self, StoreError> {
        if let Some(owner) = self.storage.names().owner_of(name) {
            return Err(StoreError::InvalidName {
                what: "projection table",
                name: name.to_owned(),
                reason: owner,
            });
        }
        let quoted = format!(
            "{}.{}",
            self.storage.names().schema,
            identifier("projection table", name)?
        );
        let plain = format!("{}.{name}", self.storage.names().schema_plain);
        self.tables.push(Table {
            create: create.replace("{table}", &quoted),
            quoted,
            plain,
        });
        Ok(self)
    }

    /// The quoted, schema-qualified name of the table `name`, for the handlers' SQL.
    #[must_use]
    pub fn name_of(&self, name: &str) -> Option<&str> {
        let plain = format!("{}.{name}", self.storage.names().schema_plain);
        self.tables
            .iter()
            .find(|t| t.plain == plain)
            .map(|t| t.quoted.as_str())
    }

    /// The open transaction's connection, beginning a transaction if none is open. Everything a
    /// handler writes through it commits with the next checkpoint.
    ///
    /// The connection is taken from the storage's pool of projection transactions
    /// ([`PostgresCheckpointStorage::with_transaction_pool`]) when the transaction begins and
    /// given back when it commits or rolls back, so a projection holds none between
    /// transactions; when none becomes free within
    /// [`PostgresConfig::pool_wait`](crate::store::PostgresConfig::pool_wait), the handler fails
    /// with a transient [`ProjectionError`] whose source is a
    /// [`PoolExhausted`](crate::store::PoolExhausted). One lost inside the open
    /// transaction fails the handler's statement with a transient [`ProjectionError`]: the
    /// runner rolls back, and a model run by
    /// [`Krescent::stream_with`](crate::Krescent::stream_with) or the
    /// [`Supervisor`](crate::supervisor::Supervisor) restarts from its last checkpoint.
    ///
    /// # Errors
    /// When no connection can be had or `BEGIN` fails.
    pub async fn transaction(&mut self) -> Result<&ClientWrapper, ProjectionError> {
        // The event's savepoint first: what the caller writes through the connection must be
        // undoable alone.
        if let Some(savepoint) = self.take_savepoint() {
            self.open_client().await?.batch_execute(savepoint).await?;
        }
        self.open_client().await
    }

    /// The open transaction's connection, beginning a transaction if none is open.
    async fn open_client(&mut self) -> Result<&ClientWrapper, ProjectionError> {
        let client = match self.client.take() {
            Some(client) => client,
            None => checkout(self.storage.transaction_pool(), PoolRole::Projections).await?,
        };
        if !self.open {
            if let Err(e) = client.batch_execute("BEGIN").await {
                // Its state is unknown: closed, not handed back to the pool.
                drop(Object::take(client));
                return Err(e.into());
            }
            self.open = true;
        }
        Ok(&**self.client.insert(client))
    }

    /// The statement that sets the event's savepoint, when one is due before the next write
    /// (releasing the previous event's, so that one savepoint is kept at a time); counted as
    /// set from now on.
    fn take_savepoint(&mut self) -> Option<&'static str> {
        if !std::mem::take(&mut self.savepoint_due) {
            return None;
        }
        let released = std::mem::replace(&mut self.savepoint, true);
        Some(if released {
            "RELEASE SAVEPOINT krescent_event; SAVEPOINT krescent_event"
        } else {
            "SAVEPOINT krescent_event"
        })
    }

    /// Runs `sql` with `params` in the open transaction (beginning one if needed), as a
    /// statement prepared once per connection; the number of rows it changed.
    ///
    /// # Errors
    /// When the statement fails.
    pub async fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, ProjectionError> {
        let savepoint = self.take_savepoint();
        let client = self.open_client().await?;
        let statement = client.prepare_cached(sql).await?;
        match savepoint {
            // Pipelined: the savepoint and the statement share one round trip.
            Some(savepoint) => {
                let (set, executed) = tokio::join!(
                    client.batch_execute(savepoint),
                    client.execute(&statement, params)
                );
                set?;
                Ok(executed?)
            }
            None => Ok(client.execute(&statement, params).await?),
        }
    }

    /// Deletes the model completely: drops its tables and deletes its checkpoint (of
    /// `namespace`, the model's name), in one transaction. Its next start rebuilds from scratch.
    ///
    /// # Errors
    /// [`StorageError::Database`] when the database refuses; nothing is deleted then.
    pub async fn delete_model(&self, namespace: &str) -> Result<(), StorageError> {
        self.delete_models(&[namespace]).await
    }

    /// Deletes a model kept under several namespaces (a split model's segments, say
    /// `books#0/4` … `books#3/4`, which share one set of tables): drops the tables and deletes
    /// the checkpoint of every namespace, in one transaction, so that no checkpoint is left
    /// claiming rows that are gone.
    ///
    /// # Errors
    /// [`StorageError::Database`] when the database refuses; nothing is deleted then.
    pub async fn delete_models(&self, namespaces: &[&str]) -> Result<(), StorageError> {
        let run = async {
            let client = store_connection(self.storage.pool()).await?;
            let result = self.delete_in(&client, namespaces).await;
            if result.is_err() {
                // Inside a failed transaction: closed (the server rolls it back), not handed
                // back to the pool.
                drop(Object::take(client));
            }
            result
        };
        run.await
            .map_err(|e| e.storage(format!("delete model `{}`", namespaces.join("`, `"))))
    }

    /// The transaction of [`delete_models`](Self::delete_models), through `client`.
    async fn delete_in(
        &self,
        client: &ClientWrapper,
        namespaces: &[&str],
    ) -> Result<(), DbFailure> {
        client.batch_execute("BEGIN").await?;
        for table in &self.tables {
            client
                .batch_execute(&format!("DROP TABLE IF EXISTS {}", table.quoted))
                .await?;
        }
        for namespace in namespaces {
            self.storage.delete_in(client, namespace).await?;
        }
        client.batch_execute("COMMIT").await?;
        Ok(())
    }

    /// The projection a stored checkpoint refers to, enough for [`delete_model`](Self::delete_model)
    /// (not for running a model): every table named by a projection's reference in
    /// `bucket`, a model's checkpoint bucket, in `storage`'s schema; `None` when the bucket holds
    /// no reference of a `PostgresProjection`. This is how `krescent models delete` finds the
    /// tables of a model it cannot compile.
    #[must_use]
    pub fn from_checkpoint(
        storage: &PostgresCheckpointStorage,
        bucket: &CheckpointBucket,
    ) -> Option<Self> {
        Self::from_checkpoints(storage, [bucket])
    }

    /// Like [`from_checkpoint`](Self::from_checkpoint), for several checkpoints (the segments
    /// of a split model): every table any of the `buckets` names, each once; `None` when none
    /// holds a reference of a `PostgresProjection`. Enough for
    /// [`delete_models`](Self::delete_models).
    #[must_use]
    pub fn from_checkpoints<'a>(
        storage: &PostgresCheckpointStorage,
        buckets: impl IntoIterator<Item = &'a CheckpointBucket>,
    ) -> Option<Self> {
        let mut projection = PostgresProjection::new(storage, 0);
        let prefix = format!("{}.", storage.names().schema_plain);
        let mut found = false;
        for (revision, tables) in buckets.into_iter().flat_map(references) {
            found = true;
            projection.revision = revision;
            for plain in tables {
                let name = plain.strip_prefix(&prefix).unwrap_or(&plain);
                if projection.name_of(name).is_some() {
                    continue; // named by another segment's checkpoint too
                }
                // A name that is not an identifier cannot be one of its tables: skipped.
                if let Ok(mut with_table) = projection.clone_tables().table(name, "") {
                    projection.tables = std::mem::take(&mut with_table.tables);
                }
            }
        }
        found.then_some(projection)
    }

    /// The names of the tables, schema-qualified and unquoted (`schema.table`).
    pub fn table_names(&self) -> impl Iterator<Item = &str> {
        self.tables.iter().map(|t| t.plain.as_str())
    }

    /// A projection with the same storage, revision and tables, and no connection.
    fn clone_tables(&self) -> Self {
        let mut projection = PostgresProjection::new(&self.storage, self.revision);
        projection.tables.clone_from(&self.tables);
        projection
    }

    /// Reads the shape of every table: `column type, …`; a missing table has none.
    async fn read_shapes(
        &self,
        client: &ClientWrapper,
    ) -> Result<BTreeMap<String, String>, DbFailure> {
        let statement = client
            .prepare_cached(
                "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
                 FROM pg_catalog.pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
            )
            .await?;
        let mut shapes = BTreeMap::new();
        for table in &self.tables {
            let shape: Option<String> = client
                .query_one(&statement, &[&table.quoted])
                .await?
                .try_get(0)?;
            if let Some(shape) = shape {
                shapes.insert(table.plain.clone(), shape);
            }
        }
        Ok(shapes)
    }

    /// Drops and recreates every table, in `client`'s open transaction.
    async fn recreate_tables(&self, client: &ClientWrapper) -> Result<(), DbFailure> {
        for table in &self.tables {
            client
                .batch_execute(&format!(
                    "DROP TABLE IF EXISTS {}; {}",
                    table.quoted, table.create
                ))
                .await?;
        }
        Ok(())
    }

    /// After a reset: the tables' new shapes, or the failure (the connection is discarded).
    fn reset_done(
        &mut self,
        result: Result<BTreeMap<String, String>, DbFailure>,
        doing: impl FnOnce() -> String,
    ) -> Result<(), StorageError> {
        match result {
            Ok(shapes) => {
                self.shapes = shapes;
                Ok(())
            }
            Err(e) => {
                self.discard();
                Err(e.storage(doing()))
            }
        }
    }

    async fn open_transaction(&mut self) -> Result<(), StorageError> {
        self.open_client()
            .await
            .map(drop)
            .map_err(|e| StorageError::Database(Box::new(e)))
    }

    /// After a failure the connection's state is unknown (lost, or inside a failed
    /// transaction): it is taken out of the pool and closed rather than handed back, so no one
    /// is given it again; the next transaction gets a new one.
    fn discard(&mut self) {
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
        self.open = false;
        self.savepoint = false;
        self.savepoint_due = false;
    }

    /// Runs `sql` in the open transaction; a failure discards the connection (the server
    /// rolls the transaction back).
    async fn run_in_transaction(&mut self, sql: &str, doing: &str) -> Result<(), StorageError> {
        let result = match self.client.as_deref() {
            Some(client) => client.batch_execute(sql).await.map_err(DbFailure::from),
            None => Err(DbFailure::Other(
                "the projection has no connection".to_owned(),
            )),
        };
        if let Err(e) = result {
            self.discard();
            return Err(e.storage(doing));
        }
        Ok(())
    }
}

/// The projection references in a checkpoint's bucket: each one's revision and the plain names
/// (`schema.table`) of the tables it names.
fn references(bucket: &CheckpointBucket) -> Vec<(u32, Vec<String>)> {
    let mut found = Vec::new();
    for (_, value) in bucket.iter() {
        let crate::checkpoint::BucketValue::Bucket(nested) = value else {
            continue;
        };
        let (Ok(revision), Ok(shapes)) = (
            nested.get::<u32>(REVISION),
            nested.get::<BTreeMap<String, String>>(TABLES),
        ) else {
            continue;
        };
        found.push((revision, shapes.into_keys().collect()));
    }
    found
}

impl Drop for PostgresProjection {
    /// A projection dropped inside a transaction (its model's task ended on an error that
    /// left it open, or was aborted) closes the connection: the server rolls the transaction
    /// back, and the pool never hands out a connection in the middle of one.
    fn drop(&mut self) {
        if self.open {
            self.discard();
        }
    }
}

impl CheckpointSupport for PostgresProjection {
    fn create_checkpoint(&self, bucket: &mut CheckpointBucket) -> Result<(), CheckpointError> {
        bucket.put(REVISION, &self.revision)?;
        bucket.put(TABLES, &self.shapes)
    }

    fn restore_checkpoint(&mut self, bucket: &CheckpointBucket) -> Result<(), CheckpointError> {
        // The data is in the tables; the reference must still hold.
        let revision: u32 = bucket.get(REVISION)?;
        let shapes: BTreeMap<String, String> = bucket.get(TABLES)?;
        if revision != self.revision {
            return Err(CheckpointError::StaleReference {
                reference: "projection revision".to_owned(),
                reason: format!(
                    "the checkpoint is of revision {revision}, the projection is at {}",
                    self.revision
                ),
            });
        }
        if shapes != self.shapes {
            let tables: Vec<&str> = self.tables.iter().map(|t| t.plain.as_str()).collect();
            return Err(CheckpointError::StaleReference {
                reference: tables.join(", "),
                reason: "the tables were dropped or changed since the checkpoint".to_owned(),
            });
        }
        Ok(())
    }

    fn validate_checkpoint(&self, bucket: &CheckpointBucket) -> bool {
        bucket
            .get::<u32>(REVISION)
            .is_ok_and(|r| r == self.revision)
            && bucket
                .get::<BTreeMap<String, String>>(TABLES)
                .is_ok_and(|shapes| shapes == self.shapes && shapes.len() == self.tables.len())
    }

    fn transaction(&mut self) -> Option<&mut dyn CheckpointTransaction> {
        Some(self)
    }
}

#[async_trait::async_trait]
impl CheckpointTransaction for PostgresProjection {
    fn checkpoint_location(&self) -> Option<String> {
        self.storage.location()
    }

    async fn prepare(&mut self) -> Result<(), StorageError> {
        let run = async {
            let client = store_connection(self.storage.pool()).await?;
            self.read_shapes(&client).await
        };
        self.shapes = run
            .await
            .map_err(|e| e.storage("read the projection's tables"))?;
        Ok(())
    }

    async fn reset(&mut self, namespace: &str) -> Result<(), StorageError> {
        self.open_transaction().await?;
        let Some(client) = self.client.as_deref() else {
            return Err(StorageError::Database(
                "the projection has no connection".into(),
            ));
        };
        let run = async {
            self.recreate_tables(client).await?;
            // The old checkpoint goes in the same transaction: it described the dropped rows;
            // so do the events it parked, which the rebuild meets (and parks) again.
            self.storage.delete_in(client, namespace).await?;
            self.storage.unpark_in(client, namespace, None).await?;
            self.read_shapes(client).await
        };
        let result = run.await;
        self.reset_done(result, || format!("reset the tables of `{namespace}`"))
    }

    async fn reset_segment(
        &mut self,
        model: &str,
        segment: Segment,
        version: &CheckpointVersion,
    ) -> Result<(), StorageError> {
        self.open_transaction().await?;
        let Some(client) = self.client.as_deref() else {
            return Err(StorageError::Database(
                "the projection has no connection".into(),
            ));
        };
        let run = async {
            self.reset_segment_in(client, model, segment, version)
                .await?;
            self.read_shapes(client).await
        };
        let result = run.await;
        self.reset_done(result, || {
            format!("reset the tables of segment {segment} of `{model}`")
        })
    }

    async fn commit(&mut self, checkpoint: &StoredCheckpoint) -> Result<(), StorageError> {
        let data = PostgresCheckpointStorage::encode(checkpoint)?;
        self.open_transaction().await?;
        let Some(client) = self.client.as_deref() else {
            return Err(StorageError::Database(
                "the projection has no connection".into(),
            ));
        };
        let fence = self.fence.as_ref();
        let run = async {
            // Fenced: the lease row is locked `FOR SHARE` until the commit, so a takeover
            // waits for it, and a writer that lost its lease commits nothing.
            if let Some(fence) = fence {
                check_fence(client, self.storage.names(), fence).await?;
            }
            self.storage.store_in(client, checkpoint, &data).await?;
            client.batch_execute("COMMIT").await?;
            Ok::<_, FenceFailure>(())
        };
        let result = run.await;
        let doing = || {
            format!(
                "commit the projection of `{}` at position {}",
                checkpoint.namespace, checkpoint.position
            )
        };
        match result {
            Ok(()) => {
                // Back to the pool: a projection holds a connection only inside a transaction.
                self.open = false;
                self.savepoint = false;
                self.savepoint_due = false;
                self.client = None;
                Ok(())
            }
            Err(FenceFailure::Lost { current }) => {
                // Nothing of this transaction may commit: roll it back before the connection
                // goes back to the pool.
                let fence = self.fence.clone();
                if let Some(client) = self.client.take() {
                    if client.batch_execute("ROLLBACK").await.is_err() {
                        drop(Object::take(client));
                    }
                }
                self.discard();
                let lost = FenceFailure::Lost { current };
                Err(match &fence {
                    Some(fence) => lost.storage(fence, doing()),
                    None => StorageError::Database(doing().into()),
                })
            }
            Err(FenceFailure::Db(e)) => {
                self.open = false;
                self.discard();
                Err(e.storage(doing()))
            }
        }
    }

    fn set_fence(&mut self, fence: Option<Fence>) {
        self.fence = fence;
    }

    /// No round trip of its own: the event's savepoint is set with its first write
    /// ([`execute`](Self::execute) pipelines the two), and not at all when it writes nothing.
    async fn begin_event(&mut self) -> Result<bool, StorageError> {
        self.open_transaction().await?;
        self.savepoint_due = true;
        Ok(true)
    }

    async fn undo_event(&mut self) -> Result<(), StorageError> {
        if std::mem::take(&mut self.savepoint_due) {
            // The event wrote nothing: nothing to take back.
            return Ok(());
        }
        if !self.open || !self.savepoint {
            return Err(StorageError::Database(
                "no event's writes to take back: no savepoint in the open transaction".into(),
            ));
        }
        self.run_in_transaction(
            "ROLLBACK TO SAVEPOINT krescent_event",
            "take back the failed event's writes",
        )
        .await
    }

    async fn park(&mut self, parked: &[ParkedEvent]) -> Result<(), StorageError> {
        self.open_transaction().await?;
        let Some(client) = self.client.as_deref() else {
            return Err(StorageError::Database(
                "the projection has no connection".into(),
            ));
        };
        let result = self.storage.park_in(client, parked).await;
        if let Err(e) = result {
            self.discard();
            return Err(e.storage("park events in the projection's transaction"));
        }
        Ok(())
    }

    async fn unpark(
        &mut self,
        namespace: &str,
        positions: Option<&[Position]>,
    ) -> Result<(), StorageError> {
        self.open_transaction().await?;
        let Some(client) = self.client.as_deref() else {
            return Err(StorageError::Database(
                "the projection has no connection".into(),
            ));
        };
        let result = self.storage.unpark_in(client, namespace, positions).await;
        if let Err(e) = result {
            self.discard();
            return Err(e.storage(format!(
                "remove parked events of `{namespace}` in the projection's transaction"
            )));
        }
        Ok(())
    }

    async fn rollback(&mut self) -> Result<(), StorageError> {
        if !self.open {
            return Ok(());
        }
        let result = match &self.client {
            Some(client) => client
                .batch_execute("ROLLBACK")
                .await
                .map_err(|e| DbFailure::from(e).storage("roll back the projection")),
            None => Ok(()),
        };
        if result.is_err() {
            // Lost with its transaction (the server rolls it back): a new connection next.
            self.discard();
        }
        self.open = false;
        self.savepoint = false;
        self.savepoint_due = false;
        // Back to the pool: a projection holds a connection only inside a transaction.
        self.client = None;
        result
    }
}
