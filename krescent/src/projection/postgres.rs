//! Tables in Postgres, written in the transaction that commits the model's checkpoint.

use std::collections::BTreeMap;

use deadpool_postgres::{ClientWrapper, Object, PoolError};
use tokio_postgres::types::ToSql;

use crate::checkpoint::storage::{CheckpointStorage as _, PostgresCheckpointStorage};
use crate::checkpoint::{
    CheckpointBucket, CheckpointError, CheckpointSupport, CheckpointTransaction, CheckpointVersion,
    FlushError, StorageError, StoredCheckpoint,
};
use crate::deadletter::ParkedEvent;
use crate::event::RecordedEvent;
use crate::fleet::{Fence, Handover, Segment};
use crate::postgres::{
    check_fence, checkout, identifier, store_connection, transient_cause, DbFailure, FenceFailure,
    PoolRole,
};
use crate::store::StoreError;
use crate::Position;

mod copy;
mod queue;
mod reference;
mod rescale;
mod segment;
mod versions;

use queue::{EventAt, Failed, Queue};
use reference::{references, REVISION, TABLES};
pub use versions::{
    ProjectionVersions, Switch, Switched, VersionError, VersionInfo, VersionState, Versioning,
};

/// What a projection handler's database work failed with.
///
/// [`is_transient`](Self::is_transient) says whether the connection went away (the server
/// restarted, the network failed): a streaming model then rolls back and restarts from its
/// last checkpoint ([`Error::is_transient`](crate::Error::is_transient)). A write queued with
/// [`PostgresProjection::queue`] that fails names the event that queued it
/// ([`queued_by`](Self::queued_by)).
#[derive(Debug)]
pub struct ProjectionError {
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
    transient: bool,
    event: Option<EventAt>,
}

impl std::fmt::Display for ProjectionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.event {
            Some(event) => write!(
                f,
                "projection write queued by {event} failed: {}",
                self.source
            ),
            None => write!(f, "projection write failed: {}", self.source),
        }
    }
}

impl std::error::Error for ProjectionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

impl ProjectionError {
    /// The failure of a write queued by `event`.
    fn queued(mut self, event: &EventAt) -> Self {
        self.event = Some(event.clone());
        self
    }

    /// The position, type and stream of the event whose queued write failed; `None` for a
    /// failure of a statement run at once, or of the transaction itself.
    #[must_use]
    pub fn queued_by(&self) -> Option<(Position, &str, &str)> {
        self.event
            .as_ref()
            .map(|e| (e.position, &*e.event_type, &*e.stream_id))
    }

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
            event: None,
        }
    }
}

impl From<PoolError> for ProjectionError {
    fn from(e: PoolError) -> Self {
        ProjectionError {
            transient: transient_cause(&e).unwrap_or(false),
            source: Box::new(e),
            event: None,
        }
    }
}

impl From<DbFailure> for ProjectionError {
    fn from(e: DbFailure) -> Self {
        ProjectionError {
            transient: e.is_transient(),
            source: e.into_source(),
            event: None,
        }
    }
}

/// A table of the projection: its quoted name, plain name and `CREATE TABLE` statement, and
/// its name and statement as given (`{table}` in it), for a versioned projection's tables,
/// which move into the version's schema ([`versioned`](PostgresProjection::versioned)).
#[derive(Debug, Clone)]
struct Table {
    quoted: String,
    plain: String,
    create: String,
    name: String,
    template: String,
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
/// With `always` a batch spans one event; with `fixed_events(N)` up to N events. A streaming
/// model also commits when it has caught up and when it stops, so rows never wait for more
/// events. A handler error rolls back every write since the last checkpoint; the next run
/// resumes from that checkpoint.
///
/// # Versions side by side (blue/green)
///
/// With [`versioned`](Self::versioned), each version of the model's projection has tables of
/// its own (a schema per version), a new version builds beside the one readers see, and the
/// switch repoints views in the stable schema in one transaction; [`ProjectionVersions`]
/// lists, promotes, rolls back and drops versions. Without it, a new version rebuilds the
/// tables in place, as described above.
///
/// # Queued writes
///
/// [`queue`](Self::queue) does not wait for the database: the statement is encoded and kept,
/// and the batch's statements are sent pipelined (each one out before any answer is awaited)
/// when they are flushed: before the checkpoint commits, before anything is read or run at
/// once through the projection ([`query`](Self::query), [`execute`](Self::execute),
/// [`transaction`](Self::transaction)), and on [`flush`](Self::flush). A rebuild of a
/// thousand events then costs a few round trips instead of a thousand. A queued statement
/// that fails fails the batch at its flush, naming the event that queued it
/// ([`ProjectionError::queued_by`], and [`Error::Handler`](crate::Error::Handler) at that
/// event's position), and everything since the last checkpoint is rolled back.
///
/// **Group handlers.** A model whose SQL is set-based writes per group of events instead:
/// a `#[group(...)]` handler receives the events up to each checkpoint at once, folds them,
/// and queues one multi-row statement per table (see [`crate::group`]).
///
/// **Short transactions.** While a batch's handlers only queue, no transaction is open: it
/// begins at the flush, pipelined with the batch's statements, and ends at the commit. A
/// paused process then holds no row locks between flushes. A handler that reads or runs a
/// statement at once opens the transaction there, and it stays open until the commit, as the
/// rebuild's first transaction (which drops and recreates the tables) does, and that of a model
/// whose error policy retries or parks (its writes are flushed after each event).
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
    /// [`execute`](Self::execute), queued before it by [`queue`](Self::queue)), or not at all
    /// when it writes nothing.
    savepoint_due: bool,
    /// The event's savepoint is queued, not sent: where in the queue, and whether a savepoint
    /// was set before it.
    savepoint_queued: Option<(usize, bool)>,
    /// The writes queued since the last flush.
    queue: Queue,
    /// Blue/green versions: how they switch (`None`: one set of tables, rebuilt in place).
    /// (Boxed, as the entered version: a projection lives in its model, which the run's
    /// futures hold.)
    versioning: Option<Box<Versioning>>,
    /// The version this build runs, once the run entered it.
    entered: Option<Box<versions::Entered>>,
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
            savepoint_queued: None,
            queue: Queue::default(),
            versioning: None,
            entered: None,
        }
    }

    /// Keeps each version of the model's projection in tables of its own, built beside the
    /// version readers see and switched to in one transaction (blue/green; see the README's
    /// "Blue/green projection versions"). A version is the model's checkpoint version with
    /// the projection's revision and tables' statements: changing any of them deploys a new
    /// version. Its tables are in the schema `<schema>_<id>` (a 12-digit hash), its checkpoint
    /// and lease under `<model>@<id>`; readers query the stable names (`<schema>.<table>`),
    /// views of the active version's tables. Handlers must name the tables with
    /// [`name_of`](Self::name_of): the stable names are views of the active version, not
    /// this build's tables. Not for models split into segments.
    #[must_use]
    pub fn versioned(mut self, versioning: Versioning) -> Self {
        self.versioning = Some(Box::new(versioning));
        self
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
            name: name.to_owned(),
            template: create.to_owned(),
        });
        Ok(self)
    }

    /// The quoted, schema-qualified name of the table `name`, for the handlers' SQL.
    ///
    /// A [`versioned`](Self::versioned) projection's tables are its version's, known once the
    /// run entered the version: before that (a projection just built, not yet run) this is
    /// `None`, so that no handler writes through the stable name, which shows the active
    /// version. Ask for it in the handler.
    #[must_use]
    pub fn name_of(&self, name: &str) -> Option<&str> {
        if self.versioning.is_some() && self.entered.is_none() {
            return None;
        }
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

    /// The open transaction's connection, beginning a transaction if none is open, after the
    /// queued writes are sent.
    async fn open_client(&mut self) -> Result<&ClientWrapper, ProjectionError> {
        self.flush().await?;
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

    /// Queues `sql` with `params`, to be sent pipelined with the batch's other statements at
    /// the next flush (see [Queued writes](Self#queued-writes)); the parameters are encoded
    /// now, so they need not outlive the call. The statement is described by the server the
    /// first time this projection queues its text (one round trip, on a connection of the
    /// projection pool that is handed back at once), never again.
    ///
    /// # Errors
    /// At once, naming the event being handled: when the server refuses to describe the
    /// statement (a syntax error, an unknown table), or a parameter cannot be encoded as the
    /// statement's type, or their number is wrong. A statement that fails when it runs fails
    /// the flush, named after the event that queued it.
    pub async fn queue(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(), ProjectionError> {
        let statement = if let Some(statement) = self.queue.described(sql) {
            statement
        } else {
            let described = self.describe(sql).await;
            described.map_err(|e| e.queued(self.queue.current()))?
        };
        self.queue_savepoint();
        let pushed = self.queue.push_write(statement, params);
        pushed.map_err(|source| self.refused(source))
    }

    /// Queues a row for the table `name` (one of this projection's, as given to
    /// [`table`](Self::table)), `values` in the order of its columns, to be loaded with one
    /// binary `COPY` per table at the flush: the physical ceiling for inserting rows, for a
    /// table that a batch only inserts into (an event log, a history).
    ///
    /// Order is kept for what can see it: the rows are loaded before the first statement queued
    /// after them whose text names the table (so a later `UPDATE` or read of the table finds
    /// them), before the next event's savepoint, and otherwise at the end of the flush, after
    /// the batch's statements. A statement that reaches the table without naming it (through
    /// a view, a trigger, a function) runs before rows copied earlier are there: write such
    /// tables with [`queue`](Self::queue). The columns' types are described by the server the
    /// first time (one round trip).
    ///
    /// # Errors
    /// At once, naming the event being handled: `name` is not a table of this projection, a
    /// value cannot be encoded as its column's type (or in the binary format), or the number
    /// of values is not the number of columns. A row the server refuses (a constraint, a
    /// duplicate key) fails the flush, named after the event that inserted it.
    pub async fn insert(
        &mut self,
        name: &str,
        values: &[&(dyn ToSql + Sync)],
    ) -> Result<(), ProjectionError> {
        let Some(quoted) = self.name_of(name).map(str::to_owned) else {
            return Err(self.refused(format!("`{name}` is not a table of this projection").into()));
        };
        let target = if let Some(target) = self.queue.target(&quoted) {
            target
        } else {
            let described = self.describe(&format!("SELECT * FROM {quoted}")).await;
            let columns = described.map_err(|e| e.queued(self.queue.current()))?;
            self.queue
                .add_target(&quoted, name, columns.columns.clone())
        };
        self.queue_savepoint();
        let pushed = self.queue.push_copy(target, values);
        pushed.map_err(|source| self.refused(source))
    }

    /// A value or statement refused when it was queued, named after the event being handled.
    fn refused(&self, source: Box<dyn std::error::Error + Send + Sync>) -> ProjectionError {
        let e = ProjectionError {
            source,
            transient: false,
            event: None,
        };
        e.queued(self.queue.current())
    }

    /// Queues the event's savepoint when it is due before its first write.
    fn queue_savepoint(&mut self) {
        let mark = self.queue.len();
        if let Some(savepoint) = self.take_savepoint() {
            self.savepoint_queued = Some((mark, savepoint.starts_with("RELEASE")));
            self.queue.push_simple(savepoint);
        }
    }

    /// The parameter types of `sql`, as the server describes them.
    async fn describe(
        &mut self,
        sql: &str,
    ) -> Result<std::sync::Arc<queue::Described>, ProjectionError> {
        let prepared = if let Some(client) = self.client.as_deref() {
            client.prepare_cached(sql).await?
        } else {
            let client = checkout(self.storage.transaction_pool(), PoolRole::Projections).await?;
            client.prepare_cached(sql).await?
        };
        let columns = prepared
            .columns()
            .iter()
            .map(|c| c.type_().clone())
            .collect();
        Ok(self
            .queue
            .describe(sql, prepared.params().to_vec(), columns))
    }

    /// Sends the queued writes now, pipelined, in the open transaction (beginning it with
    /// them when none is open). The runner flushes before every commit, and reads through
    /// the projection flush first, so a handler needs this only to learn of a queued
    /// statement's failure early.
    ///
    /// # Errors
    /// The first queued statement that failed, naming the event that queued it
    /// ([`ProjectionError::queued_by`]); the batch is then rolled back by the runner.
    pub async fn flush(&mut self) -> Result<(), ProjectionError> {
        self.flush_in(false).await
    }

    /// Sends the queued writes; `bounded`: only the commit follows, so a transaction this
    /// begins has the lease's ttl as its `idle_in_transaction_session_timeout`.
    async fn flush_in(&mut self, bounded: bool) -> Result<(), ProjectionError> {
        if self.queue.is_empty() {
            return Ok(());
        }
        self.savepoint_queued = None;
        let client = match self.client.take() {
            Some(client) => client,
            None => match checkout(self.storage.transaction_pool(), PoolRole::Projections).await {
                Ok(client) => client,
                Err(e) => {
                    self.queue.clear();
                    return Err(e.into());
                }
            },
        };
        // A fenced transaction begun for the commit that sits idle longer than the lease's
        // ttl (its process paused between the writes and the commit) is ended by the server:
        // the rows it locked cannot hold back a takeover for longer.
        let begin = (!self.open).then(|| match self.fence.as_ref().filter(|_| bounded) {
            Some(fence) => format!("BEGIN; {}", crate::postgres::idle_bound(fence.ttl)),
            None => "BEGIN".to_owned(),
        });
        let sent = self.queue.send(&client, begin.as_deref()).await;
        self.client = Some(client);
        match sent {
            Ok(()) => {
                self.open = true;
                Ok(())
            }
            Err(Failed {
                event: Some(event),
                source,
            }) if transient_cause(&source) != Some(true) => {
                // A statement failed after `BEGIN` went through: the transaction is open and
                // failed, kept for the runner's rollback (or its event's savepoint).
                self.open = true;
                Err(ProjectionError::from(source).queued(&event))
            }
            Err(Failed { event, source }) => {
                self.discard();
                let e = ProjectionError::from(source);
                Err(match &event {
                    Some(event) => e.queued(event),
                    None => e,
                })
            }
        }
    }

    /// Runs `sql` with `params` in the open transaction (beginning one if needed) and waits
    /// for it, as a statement prepared once per connection: the number of rows it changed.
    /// The queued writes are sent first. One round trip per call: a handler that does not
    /// need the count [`queue`](Self::queue)s instead.
    ///
    /// # Errors
    /// When the statement fails, or a queued one sent before it.
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

    /// Runs the query `sql` with `params` in the open transaction (beginning one if needed)
    /// after the queued writes are sent, so it sees them: the rows.
    ///
    /// # Errors
    /// When the query fails, or a queued statement sent before it.
    pub async fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, ProjectionError> {
        let client = self.open_client().await?;
        let statement = client.prepare_cached(sql).await?;
        Ok(client.query(&statement, params).await?)
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

    /// Drops and recreates every table, in `client`'s open transaction; a version's tables,
    /// which views may show, are emptied instead (their statements are the version's).
    async fn recreate_tables(&self, client: &ClientWrapper) -> Result<(), DbFailure> {
        if self.entered.is_some() {
            let tables: Vec<&str> = self.tables.iter().map(|t| t.quoted.as_str()).collect();
            client
                .batch_execute(&format!("TRUNCATE {}", tables.join(", ")))
                .await?;
            return Ok(());
        }
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
        self.savepoint_queued = None;
        self.queue.clear();
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

    /// The deltas of incremental checkpoints commit with the rows, as the storage keeps them.
    fn keeps_deltas(&self) -> bool {
        true
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
            // So do the checkpoints of segments the model was split into before.
            self.drop_segments(client, namespace).await?;
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
    ) -> Result<Option<Handover>, StorageError> {
        self.open_transaction().await?;
        let Some(client) = self.client.as_deref() else {
            return Err(StorageError::Database(
                "the projection has no connection".into(),
            ));
        };
        let run = async {
            let handover = self
                .reset_segment_in(client, model, segment, version)
                .await?;
            Ok((handover, self.read_shapes(client).await?))
        };
        let (handover, result) = match run.await {
            Ok((handover, shapes)) => (handover, Ok(shapes)),
            Err(e) => (None, Err(e)),
        };
        self.reset_done(result, || {
            format!("reset the tables of segment {segment} of `{model}`")
        })?;
        Ok(handover)
    }

    async fn commit(&mut self, checkpoint: &StoredCheckpoint) -> Result<(), StorageError> {
        let data = PostgresCheckpointStorage::encode(checkpoint)?;
        // The queued writes go first (the runner has flushed them already, to name a failure's
        // event as the handler's error).
        if let Err(e) = self.flush_in(true).await {
            let _ = CheckpointTransaction::rollback(self).await;
            return Err(StorageError::Database(Box::new(e)));
        }
        self.open_transaction().await?;
        let Some(client) = self.client.as_deref() else {
            return Err(StorageError::Database(
                "the projection has no connection".into(),
            ));
        };
        let fence = self.fence.as_ref();
        let entered = self.entered.as_ref();
        let run = async {
            // Fenced: the lease row is locked `FOR SHARE` until the commit, so a takeover
            // waits for it, and a writer that lost its lease commits nothing.
            if let Some(fence) = fence {
                check_fence(client, self.storage.names(), fence).await?;
            }
            // A version commits only while it is not retired (its row locked `FOR SHARE`).
            let checked = match entered {
                Some(entered) if !entered.retired => {
                    match entered
                        .check(client, &self.storage, checkpoint.position)
                        .await?
                    {
                        Some(checked) => Some(checked),
                        None => return Ok(Err(entered.retired_error())),
                    }
                }
                Some(entered) => return Ok(Err(entered.retired_error())),
                None => None,
            };
            self.storage.store_in(client, checkpoint, &data).await?;
            client.batch_execute("COMMIT").await?;
            Ok::<_, FenceFailure>(Ok(checked))
        };
        let result = run.await;
        let doing = || {
            format!(
                "commit the projection of `{}` at position {}",
                checkpoint.namespace, checkpoint.position
            )
        };
        match result {
            Ok(Ok(checked)) => {
                // Back to the pool: a projection holds a connection only inside a transaction.
                self.open = false;
                self.savepoint = false;
                self.savepoint_due = false;
                self.client = None;
                if let (Some(entered), Some(checked)) = (self.entered.as_mut(), checked) {
                    entered.after_commit(&self.storage, checked).await;
                }
                Ok(())
            }
            Ok(Err(retired)) => {
                let _ = CheckpointTransaction::rollback(self).await;
                Err(retired)
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

    async fn enter_version(
        &mut self,
        model: &str,
        version: &CheckpointVersion,
    ) -> Result<Option<String>, StorageError> {
        let Some(config) = &self.versioning else {
            return Ok(None);
        };
        if let Some(entered) = &self.entered {
            return Ok(Some(entered.namespace.clone()));
        }
        let deploy = versions::Deploy {
            storage: &self.storage,
            model,
            version,
            revision: self.revision,
            tables: self
                .tables
                .iter()
                .map(|t| (t.name.as_str(), t.template.as_str()))
                .collect(),
            config,
        };
        let entered = deploy.enter().await?;
        // The tables are the version's; their plain names (the checkpoint's reference) stay
        // the stable ones, so an adopted projection's checkpoint still holds.
        for table in &mut self.tables {
            table.quoted = format!(
                "{}.{}",
                identifier("projection version schema", &entered.schema)
                    .map_err(|e| StorageError::Database(Box::new(e)))?,
                identifier("projection table", &table.name)
                    .map_err(|e| StorageError::Database(Box::new(e)))?
            );
            table.create = table.template.replace("{table}", &table.quoted);
        }
        let namespace = entered.namespace.clone();
        self.entered = Some(Box::new(entered));
        Ok(Some(namespace))
    }

    /// No round trip of its own: the event's savepoint is set with its first write
    /// ([`execute`](Self::execute) pipelines the two, [`queue`](Self::queue) queues it before
    /// the write), and not at all when it writes nothing.
    async fn begin_event(&mut self) -> Result<bool, StorageError> {
        self.savepoint_due = true;
        Ok(true)
    }

    fn handling(&mut self, event: &RecordedEvent) {
        self.queue.handling(event);
    }

    async fn flush(&mut self, before_commit: bool) -> Result<(), FlushError> {
        // A version this process retired writes nothing more (its tables are gone).
        if let Some(entered) = self.entered.as_ref().filter(|e| e.retired) {
            let retired = entered.retired_error();
            let _ = CheckpointTransaction::rollback(self).await;
            return Err(FlushError::Storage(retired));
        }
        self.flush_in(before_commit)
            .await
            .map_err(|e| match e.queued_by() {
                Some((position, event_type, stream_id)) => FlushError::Write {
                    position,
                    event_type: event_type.to_owned(),
                    stream_id: stream_id.to_owned(),
                    source: Box::new(e),
                },
                None => FlushError::Storage(StorageError::Database(Box::new(e))),
            })
    }

    async fn undo_event(&mut self) -> Result<(), StorageError> {
        if std::mem::take(&mut self.savepoint_due) {
            // The event wrote nothing: nothing to take back.
            return Ok(());
        }
        if let Some((mark, set_before)) = self.savepoint_queued.take() {
            // Nothing of the event was sent: forgotten, with its savepoint.
            self.queue.truncate(mark);
            self.savepoint = set_before;
            return Ok(());
        }
        // Sent since its savepoint: what is still queued is the event's too.
        self.queue.clear();
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
        self.queue.clear();
        self.savepoint_queued = None;
        if !self.open {
            self.savepoint_due = false;
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
