//! The registry of a storage's projection versions (`krescent_projection_versions`): its rows,
//! the transaction every change of a model's versions runs in, and the statements a switch
//! and a drop are made of.

use deadpool_postgres::{ClientWrapper, Object};

use super::VersionState;
use crate::checkpoint::storage::PostgresCheckpointStorage;
use crate::postgres::{identifier, store_connection, DbFailure};
use crate::Position;

/// A row of the registry.
#[derive(Debug, Clone)]
pub(super) struct Row {
    pub(super) version: String,
    pub(super) checkpoint_version: String,
    pub(super) namespace: String,
    pub(super) schema: String,
    pub(super) tables: Vec<String>,
    pub(super) state: VersionState,
    pub(super) max_lag: u64,
    pub(super) expired: bool,
}

pub(super) const COLUMNS: &str =
    "version, checkpoint_version, namespace, schema, tables, state, max_lag, \
    (state = 'previous' AND switched_at + grace_ms * interval '1 millisecond' < clock_timestamp())";

impl Row {
    pub(super) fn read(row: &tokio_postgres::Row) -> Result<Self, DbFailure> {
        let max_lag: i64 = row.try_get(6)?;
        Ok(Row {
            version: row.try_get(0)?,
            checkpoint_version: row.try_get(1)?,
            namespace: row.try_get(2)?,
            schema: row.try_get(3)?,
            tables: row.try_get(4)?,
            state: VersionState::parse(row.try_get(5)?)?,
            max_lag: u64::try_from(max_lag).unwrap_or(0),
            expired: row.try_get::<_, Option<bool>>(7)?.unwrap_or(false),
        })
    }
}

/// A connection inside `BEGIN`, rolled back (the connection closed) unless committed.
pub(super) struct Tx {
    client: Option<Object>,
}

impl Tx {
    pub(super) async fn begin(
        storage: &PostgresCheckpointStorage,
        model: &str,
    ) -> Result<Self, DbFailure> {
        let client = store_connection(storage.pool()).await?;
        let tx = Tx {
            client: Some(client),
        };
        tx.client().batch_execute("BEGIN").await?;
        tx.client()
            .execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&storage.names().versions_lock(model)],
            )
            .await?;
        Ok(tx)
    }

    pub(super) fn client(&self) -> &ClientWrapper {
        // Set by `begin`, taken only by `commit` and `drop`.
        self.client.as_deref().expect("a transaction's connection")
    }

    pub(super) async fn commit(mut self) -> Result<(), DbFailure> {
        let result = self.client().batch_execute("COMMIT").await;
        if result.is_ok() {
            // Back to the pool, outside any transaction.
            self.client = None;
        }
        Ok(result?)
    }
}

impl Drop for Tx {
    /// Not committed: the connection is closed, so the server rolls the transaction back and
    /// the pool never hands it out in the middle of one.
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }
}

/// The registry rows of `model`, locked `FOR UPDATE` (under the model's advisory lock).
pub(super) async fn rows(
    client: &ClientWrapper,
    storage: &PostgresCheckpointStorage,
    model: &str,
) -> Result<Vec<Row>, DbFailure> {
    let names = storage.names();
    let sql = format!(
        "SELECT {COLUMNS} FROM {} WHERE checkpoints = $1 AND model = $2 ORDER BY version FOR UPDATE",
        names.versions
    );
    client
        .query(&sql, &[&names.checkpoints_plain, &model])
        .await?
        .iter()
        .map(Row::read)
        .collect()
}

pub(super) fn quoted_schema(schema: &str) -> Result<String, DbFailure> {
    identifier("projection version schema", schema).map_err(|e| DbFailure::Other(e.to_string()))
}

/// `"schema"."table"`.
pub(super) fn qualified(schema: &str, table: &str) -> Result<String, DbFailure> {
    let table =
        identifier("projection table", table).map_err(|e| DbFailure::Other(e.to_string()))?;
    Ok(format!("{}.{table}", quoted_schema(schema)?))
}

/// Repoints the stable names: drops the views of `from`'s tables, creates those of `to`'s.
pub(super) async fn repoint(
    client: &ClientWrapper,
    stable: &str,
    from: Option<&Row>,
    to: &Row,
) -> Result<(), DbFailure> {
    let mut statements = Vec::new();
    for table in from.map(|r| r.tables.as_slice()).unwrap_or_default() {
        statements.push(format!("DROP VIEW IF EXISTS {}", qualified(stable, table)?));
    }
    for table in &to.tables {
        statements.push(format!(
            "CREATE VIEW {} AS SELECT * FROM {}",
            qualified(stable, table)?,
            qualified(&to.schema, table)?
        ));
    }
    client.batch_execute(&statements.join(";\n")).await?;
    Ok(())
}

/// Sets the state of `versions` of `model`, with the time of the switch (to active or
/// previous) or of the retirement.
pub(super) async fn set_state(
    client: &ClientWrapper,
    storage: &PostgresCheckpointStorage,
    model: &str,
    versions: &[String],
    state: VersionState,
) -> Result<(), DbFailure> {
    if versions.is_empty() {
        return Ok(());
    }
    let names = storage.names();
    let sql = format!(
        "UPDATE {} SET state = $4::text,
             switched_at = CASE WHEN $4::text IN ('active', 'previous') THEN clock_timestamp() ELSE switched_at END,
             retired_at = CASE WHEN $4::text = 'retired' THEN COALESCE(retired_at, clock_timestamp()) END
         WHERE checkpoints = $1 AND model = $2 AND version = ANY($3)",
        names.versions
    );
    client
        .execute(
            &sql,
            &[&names.checkpoints_plain, &model, &versions, &state.as_str()],
        )
        .await?;
    Ok(())
}

/// The positions of the checkpoints of `namespaces` (their rows locked `FOR SHARE`, so no
/// commit moves them until the transaction ends); a namespace without one is at 0.
pub(super) async fn positions(
    client: &ClientWrapper,
    storage: &PostgresCheckpointStorage,
    namespaces: &[&str],
) -> Result<Vec<Position>, DbFailure> {
    let names = storage.names();
    client
        .execute(
            &format!(
                "SELECT 1 FROM {} WHERE namespace = ANY($1) FOR SHARE",
                names.checkpoints
            ),
            &[&namespaces],
        )
        .await?;
    let sql = format!(
        "SELECT GREATEST(c.position, COALESCE((SELECT max(d.position) FROM {deltas} d
                 WHERE d.checkpoints = $2 AND d.namespace = c.namespace), 0))::text
         FROM {checkpoints} c WHERE c.namespace = $1",
        deltas = names.deltas,
        checkpoints = names.checkpoints
    );
    let mut found = Vec::with_capacity(namespaces.len());
    for namespace in namespaces {
        let row = client
            .query_opt(&sql, &[namespace, &names.checkpoints_table_plain])
            .await?;
        let position = match row {
            Some(row) => {
                let text: String = row.try_get(0)?;
                let n = text.parse::<u64>().map_err(|_| {
                    DbFailure::Other(format!(
                        "checkpoint of `{namespace}` has position `{text}`, not a position"
                    ))
                })?;
                Position::new(n)
            }
            None => Position::START,
        };
        found.push(position);
    }
    Ok(found)
}

/// Drops the tables and checkpoint of `row` and marks it retired, in `client`'s transaction
/// (the model's advisory lock held): its tables are locked first, so a batch of its writer in
/// flight commits (or fails) before they go.
pub(super) async fn drop_in(
    client: &ClientWrapper,
    storage: &PostgresCheckpointStorage,
    model: &str,
    row: &Row,
) -> Result<(), DbFailure> {
    let mut existing = Vec::new();
    for table in &row.tables {
        let name = qualified(&row.schema, table)?;
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
            .await?
            .try_get(0)?;
        if exists {
            existing.push(name);
        }
    }
    if !existing.is_empty() {
        client
            .batch_execute(&format!(
                "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
                existing.join(", ")
            ))
            .await?;
    }
    set_state(
        client,
        storage,
        model,
        std::slice::from_ref(&row.version),
        VersionState::Retired,
    )
    .await?;
    let mut statements: Vec<String> = existing.iter().map(|t| format!("DROP TABLE {t}")).collect();
    statements.push(format!(
        "DROP SCHEMA IF EXISTS {}",
        quoted_schema(&row.schema)?
    ));
    client.batch_execute(&statements.join(";\n")).await?;
    storage.delete_in(client, &row.namespace).await?;
    storage.unpark_in(client, &row.namespace, None).await?;
    Ok(())
}
