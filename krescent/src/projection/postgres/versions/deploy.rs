//! A build's side of its version: registering it (adopting a projection deployed before
//! versions, the first time), the check in each of its commits, and what follows a commit (an
//! automatic switch, the retirement of expired versions).

use std::collections::BTreeSet;

use deadpool_postgres::ClientWrapper;
use tracing::warn;

use super::registry::{qualified, quoted_schema, repoint, rows, set_state, Row, Tx};
use super::switch::{drop_retired, Target};
use super::{ProjectionVersions, Switch, VersionState, Versioning};
use crate::checkpoint::storage::{CheckpointStorage as _, PostgresCheckpointStorage};
use crate::checkpoint::{CheckpointVersion, StorageError};
use crate::postgres::{store_connection, DbFailure};
use crate::Position;

/// The checkpoint version text and tables of the projection the previous release deployed in
/// the stable schema, when there is one to adopt.
struct Legacy {
    checkpoint_version: String,
    revision: Option<u32>,
    tables: Vec<String>,
}

/// What a build of a versioned projection deploys: its model, checkpoint version, revision and
/// tables (plain names and `CREATE TABLE` statements with `{table}`).
pub(in crate::projection::postgres) struct Deploy<'a> {
    pub(in crate::projection::postgres) storage: &'a PostgresCheckpointStorage,
    pub(in crate::projection::postgres) model: &'a str,
    pub(in crate::projection::postgres) version: &'a CheckpointVersion,
    pub(in crate::projection::postgres) revision: u32,
    pub(in crate::projection::postgres) tables: Vec<(&'a str, &'a str)>,
    pub(in crate::projection::postgres) config: &'a Versioning,
}

/// Where a build's version is: its id, namespace and schema.
#[derive(Debug, Clone)]
pub(in crate::projection::postgres) struct Entered {
    pub(in crate::projection::postgres) model: String,
    pub(in crate::projection::postgres) version: String,
    pub(in crate::projection::postgres) namespace: String,
    pub(in crate::projection::postgres) schema: String,
    pub(in crate::projection::postgres) switch: Switch,
    /// This version was dropped (by this process, its grace over): its commits are refused.
    pub(in crate::projection::postgres) retired: bool,
}

/// What a commit of a version learned from the registry.
#[derive(Debug, Clone, Copy, Default)]
pub(in crate::projection::postgres) struct Checked {
    /// Building and within its lag of the active version: a switch may succeed.
    pub(in crate::projection::postgres) may_switch: bool,
    /// A previous version's grace is over.
    pub(in crate::projection::postgres) expired: bool,
}

impl Deploy<'_> {
    /// The version's id: the checkpoint version, the revision and the tables' statements,
    /// hashed (12 hex digits).
    pub(in crate::projection::postgres) fn id(&self) -> String {
        let revision = self.revision.to_string();
        let mut parts = vec![self.model, self.version.as_str(), revision.as_str()];
        for (name, create) in &self.tables {
            parts.push(name);
            parts.push(create);
        }
        format!(
            "{:012x}",
            crate::hash::stable_hash(parts) & 0xffff_ffff_ffff
        )
    }

    /// The schema of version `id`'s tables.
    fn schema(&self, id: &str) -> String {
        format!("{}_{id}", self.storage.names().schema_plain)
    }

    /// Registers this build's version (adopting the tables of a projection deployed before
    /// versions, the first time), creates its schema and tables, and says where they are:
    /// active when no version is, building beside the active one otherwise (superseding a
    /// version still building: it is retired and dropped). A retired version refuses.
    pub(in crate::projection::postgres) async fn enter(&self) -> Result<Entered, StorageError> {
        let id = self.id();
        let doing = || format!("deploy version `{id}` of `{}`", self.model);
        let legacy = self.legacy().await.map_err(|e| e.storage(doing()))?;
        let tx = Tx::begin(self.storage, self.model)
            .await
            .map_err(|e| e.storage(doing()))?;
        let entered = self
            .enter_in(tx.client(), &id, legacy)
            .await
            .map_err(|e| e.storage(doing()))?;
        tx.commit().await.map_err(|e| e.storage(doing()))?;
        let (entered, dropped) = entered;
        drop_retired(self.storage, self.model, &dropped).await;
        entered
    }

    /// The registry's side of [`enter`](Self::enter); the versions superseded, to drop after
    /// the commit.
    async fn enter_in(
        &self,
        client: &ClientWrapper,
        id: &str,
        legacy: Option<Legacy>,
    ) -> Result<(Result<Entered, StorageError>, Vec<String>), DbFailure> {
        let names = self.storage.names();
        let mut rows = rows(client, self.storage, self.model).await?;
        if rows.is_empty() {
            if let Some(legacy) = legacy {
                rows.push(self.adopt(client, id, legacy).await?);
            }
        }
        let entered = |row: &Row| Entered {
            model: self.model.to_owned(),
            version: row.version.clone(),
            namespace: row.namespace.clone(),
            schema: row.schema.clone(),
            switch: self.config.switch,
            retired: false,
        };
        let retired = || StorageError::Retired {
            model: self.model.to_owned(),
            version: id.to_owned(),
        };
        if let Some(row) = rows.iter().find(|r| r.version == id) {
            return Ok(match row.state {
                VersionState::Retired => (Err(retired()), Vec::new()),
                // Its grace is over: it retires rather than follows.
                VersionState::Previous if row.expired => {
                    (Err(retired()), vec![row.version.clone()])
                }
                _ => {
                    self.create_tables(client, &row.schema).await?;
                    (Ok(entered(row)), Vec::new())
                }
            });
        }
        let active = rows.iter().find(|r| r.state == VersionState::Active);
        let state = if active.is_some() {
            VersionState::Building
        } else {
            VersionState::Active
        };
        // A deploy of a third version while the second builds: the newest wins, the one it
        // replaces is retired (its processes stop at their next commit) and dropped.
        let superseded: Vec<String> = rows
            .iter()
            .filter(|r| r.state == VersionState::Building)
            .map(|r| r.version.clone())
            .collect();
        set_state(
            client,
            self.storage,
            self.model,
            &superseded,
            VersionState::Retired,
        )
        .await?;
        let schema = self.schema(id);
        let row = Row {
            version: id.to_owned(),
            checkpoint_version: self.version.as_str().to_owned(),
            namespace: format!("{}@{id}", self.model),
            schema: schema.clone(),
            tables: self.tables.iter().map(|(n, _)| (*n).to_owned()).collect(),
            state,
            max_lag: self.config.max_lag,
            expired: false,
        };
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                quoted_schema(&schema)?
            ))
            .await?;
        self.create_tables(client, &schema).await?;
        self.insert(client, &row).await?;
        if state == VersionState::Active {
            repoint(client, &names.schema_plain, None, &row).await?;
        }
        Ok((Ok(entered(&row)), superseded))
    }

    /// Creates the tables of the version in `schema` that are missing.
    async fn create_tables(&self, client: &ClientWrapper, schema: &str) -> Result<(), DbFailure> {
        for (name, create) in &self.tables {
            let table = qualified(schema, name)?;
            let exists: bool = client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
                .await?
                .try_get(0)?;
            if !exists {
                client
                    .batch_execute(&create.replace("{table}", &table))
                    .await?;
            }
        }
        Ok(())
    }

    async fn insert(&self, client: &ClientWrapper, row: &Row) -> Result<(), DbFailure> {
        let names = self.storage.names();
        let max_lag = i64::try_from(row.max_lag).unwrap_or(i64::MAX);
        let grace = i64::try_from(self.config.grace.as_millis()).unwrap_or(i64::MAX);
        client
            .execute(
                &format!(
                    "INSERT INTO {} (checkpoints, model, version, checkpoint_version, namespace, schema,
                         tables, state, max_lag, grace_ms, switched_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                         CASE WHEN $8 = 'active' THEN clock_timestamp() END)",
                    names.versions
                ),
                &[
                    &names.checkpoints_plain,
                    &self.model,
                    &row.version,
                    &row.checkpoint_version,
                    &row.namespace,
                    &row.schema,
                    &row.tables,
                    &row.state.as_str(),
                    &max_lag,
                    &grace,
                ],
            )
            .await?;
        Ok(())
    }

    /// The projection a release before versions deployed: the tables its checkpoint (of the
    /// model's own namespace) names in the stable schema, or failing one, this build's tables
    /// found there as tables.
    async fn legacy(&self) -> Result<Option<Legacy>, DbFailure> {
        let names = self.storage.names();
        let client = store_connection(self.storage.pool()).await?;
        let registered: bool = client
            .query_one(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM {} WHERE checkpoints = $1 AND model = $2)",
                    names.versions
                ),
                &[&names.checkpoints_plain, &self.model],
            )
            .await?
            .try_get(0)?;
        if registered {
            return Ok(None);
        }
        drop(client);
        let stored = match self.storage.load(self.model).await {
            Ok(stored) => stored,
            Err(e) => return Err(DbFailure::Other(e.to_string())),
        };
        let prefix = format!("{}.", names.schema_plain);
        let (checkpoint_version, revision, candidates) = match &stored {
            Some(stored) => {
                let reference = super::super::reference::references(&stored.bucket)
                    .into_iter()
                    .next();
                let (revision, tables) =
                    reference.map_or((None, Vec::new()), |(r, t)| (Some(r), t));
                let tables: Vec<String> = tables
                    .iter()
                    .filter_map(|t| t.strip_prefix(&prefix).map(str::to_owned))
                    .collect();
                (stored.version.as_str().to_owned(), revision, tables)
            }
            None => (
                String::new(),
                None,
                self.tables.iter().map(|(n, _)| (*n).to_owned()).collect(),
            ),
        };
        let client = store_connection(self.storage.pool()).await?;
        let mut tables = Vec::new();
        for table in candidates {
            let is_table: bool = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                         WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p'))",
                    &[&names.schema_plain, &table],
                )
                .await?
                .try_get(0)?;
            if is_table {
                tables.push(table);
            }
        }
        if tables.is_empty() {
            return Ok(None);
        }
        Ok(Some(Legacy {
            checkpoint_version,
            revision,
            tables,
        }))
    }

    /// Adopts the tables of a projection deployed before versions as the active version,
    /// without a rebuild: they move (a catalog change, no row is copied) into the version's
    /// schema, views take their place, and the checkpoint stays where it is (its reference
    /// names the stable tables, which the projection keeps as their names). When the build is
    /// of the same version (checkpoint version, revision, tables), the adopted version is
    /// this build's; otherwise it is the previous release's, and this build builds beside it.
    async fn adopt(
        &self,
        client: &ClientWrapper,
        id: &str,
        legacy: Legacy,
    ) -> Result<Row, DbFailure> {
        let names = self.storage.names();
        let mine: BTreeSet<&str> = self.tables.iter().map(|(n, _)| *n).collect();
        let theirs: BTreeSet<&str> = legacy.tables.iter().map(String::as_str).collect();
        let same = legacy.checkpoint_version == self.version.as_str()
            && legacy.revision == Some(self.revision)
            && mine == theirs;
        let adopted = if same {
            id.to_owned()
        } else {
            format!(
                "{:012x}",
                crate::hash::stable_hash([self.model, "adopted", &legacy.checkpoint_version])
                    & 0xffff_ffff_ffff
            )
        };
        let schema = self.schema(&adopted);
        let row = Row {
            version: adopted,
            checkpoint_version: legacy.checkpoint_version,
            namespace: self.model.to_owned(),
            schema: schema.clone(),
            tables: legacy.tables,
            state: VersionState::Active,
            max_lag: self.config.max_lag,
            expired: false,
        };
        let mut statements = vec![format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            quoted_schema(&schema)?
        )];
        for table in &row.tables {
            statements.push(format!(
                "ALTER TABLE {} SET SCHEMA {}",
                qualified(&names.schema_plain, table)?,
                quoted_schema(&schema)?
            ));
        }
        client.batch_execute(&statements.join(";\n")).await?;
        self.insert(client, &row).await?;
        repoint(client, &names.schema_plain, None, &row).await?;
        Ok(row)
    }
}

impl Entered {
    /// In a commit's transaction, before the checkpoint is stored: this version's row, read
    /// `FOR SHARE` (a switch or drop waits for the commit, the commit for them); `None` when
    /// the version is retired, and nothing may commit.
    pub(in crate::projection::postgres) async fn check(
        &self,
        client: &ClientWrapper,
        storage: &PostgresCheckpointStorage,
        position: Position,
    ) -> Result<Option<Checked>, DbFailure> {
        let names = storage.names();
        let sql = format!(
            "SELECT v.state,
                 EXISTS (SELECT 1 FROM {versions} p WHERE p.checkpoints = v.checkpoints
                     AND p.model = v.model AND p.state = 'previous'
                     AND p.switched_at + p.grace_ms * interval '1 millisecond' < clock_timestamp()),
                 (SELECT c.position::text FROM {versions} a JOIN {checkpoints} c ON c.namespace = a.namespace
                     WHERE a.checkpoints = v.checkpoints AND a.model = v.model AND a.state = 'active'),
                 v.max_lag
             FROM {versions} v WHERE v.checkpoints = $1 AND v.model = $2 AND v.version = $3
             FOR SHARE OF v",
            versions = names.versions,
            checkpoints = names.checkpoints
        );
        let statement = client.prepare_cached(&sql).await?;
        let row = client
            .query_opt(
                &statement,
                &[&names.checkpoints_plain, &self.model, &self.version],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let state = VersionState::parse(row.try_get(0)?)?;
        if state == VersionState::Retired {
            return Ok(None);
        }
        let active: Option<String> = row.try_get(2)?;
        let max_lag: i64 = row.try_get(3)?;
        let active = active.and_then(|a| a.parse::<u64>().ok()).unwrap_or(0);
        let max_lag = u64::try_from(max_lag).unwrap_or(0);
        Ok(Some(Checked {
            may_switch: state == VersionState::Building
                && self.switch == Switch::Automatic
                && position.get().saturating_add(max_lag) >= active,
            expired: row.try_get(1)?,
        }))
    }

    /// After a commit: switches to this version when it caught up (automatic switch), and
    /// drops the previous versions whose grace is over (this one included: it is then
    /// retired). Failures are logged: the next commit tries again.
    pub(in crate::projection::postgres) async fn after_commit(
        &mut self,
        storage: &PostgresCheckpointStorage,
        checked: Checked,
    ) {
        let versions = ProjectionVersions::new(storage);
        if checked.may_switch {
            match versions
                .switch(&self.model, Target::Caught(&self.version))
                .await
            {
                Ok(Some(switched)) => {
                    tracing::info!(model = %self.model, from = %switched.from, to = %switched.to,
                        position = %switched.to_position, "switched readers to the new projection version");
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(model = %self.model, error = %e, "switching to the new projection version failed");
                }
            }
        }
        if checked.expired {
            match versions
                .retire_expired_as(&self.model, Some(&self.namespace))
                .await
            {
                Ok(dropped) => {
                    if dropped.contains(&self.version) {
                        self.retired = true;
                    }
                }
                Err(e) => {
                    warn!(model = %self.model, error = %e, "retiring projection versions failed");
                }
            }
        }
    }

    /// The error of a commit refused because this version is retired.
    pub(in crate::projection::postgres) fn retired_error(&self) -> StorageError {
        StorageError::Retired {
            model: self.model.clone(),
            version: self.version.clone(),
        }
    }
}
