//! Versioned, idempotent migrations of the events and checkpoints tables.
//!
//! `"<schema>"."krescent_schema_migrations"` holds one row per migrated table with the number of
//! steps applied. `migrate` takes a transaction-scoped advisory lock of the schema first, so
//! concurrent migrations run one after the other, and each applies only the steps that are
//! missing; all steps of one call commit together or not at all.

use super::store_connection;
use deadpool_postgres::Pool;

use super::config::Names;
use super::error::DbFailure;

/// A table krescent migrates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Component {
    /// The events table.
    Events,
    /// The checkpoints table.
    Checkpoints,
}

impl Component {
    /// The key of the table's row in the migrations table.
    fn key(self, names: &Names) -> String {
        match self {
            Component::Events => format!("events:{}", names.events_table_plain),
            Component::Checkpoints => format!("checkpoints:{}", names.checkpoints_table_plain),
        }
    }

    /// The steps, oldest first; a step is never changed once released, only new ones appended.
    ///
    /// The checkpoints table stores its data lz4-compressed where the server can (PostgreSQL 14
    /// and later, built with lz4; others keep the default pglz): a checkpoint is tens of KiB of
    /// JSON rewritten as often as the writer keeps up, and pglz cost the server ~0.4 ms per
    /// 22 KiB checkpoint against ~0.06 ms for lz4, at the same size. (Part of the table's
    /// creation step, which no release has shipped yet.)
    fn steps(self, names: &Names) -> Vec<String> {
        match self {
            Component::Events => vec![format!(
                "CREATE TABLE {events} (
                     position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                     stream_id text NOT NULL,
                     stream_version bigint NOT NULL CHECK (stream_version > 0),
                     event_id uuid NOT NULL UNIQUE,
                     event_type text NOT NULL,
                     payload jsonb NOT NULL,
                     recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                     UNIQUE (stream_id, stream_version)
                 );
                 COMMENT ON TABLE {events} IS 'krescent events. Append only through krescent: appends hold an advisory lock until they commit so that positions become visible in order.'",
                events = names.events
            ), format!(
                // Step 2: the indexes of write models' queries. A stream's events after a
                // position are a range of the first; the latest event of a stream or of a type
                // (an append condition's check) is one backward probe of either. Unnamed:
                // Postgres picks names that cannot collide, whatever the table's name's length.
                "CREATE INDEX ON {events} (stream_id, position);
                 CREATE INDEX ON {events} (event_type, position)",
                events = names.events
            )],
            Component::Checkpoints => vec![format!(
                "CREATE TABLE {checkpoints} (
                     namespace text COLLATE \"C\" PRIMARY KEY,
                     version text NOT NULL,
                     position numeric(20, 0) NOT NULL CHECK (position >= 0),
                     taken_at timestamptz NOT NULL,
                     data json NOT NULL
                 );
                 COMMENT ON TABLE {checkpoints} IS 'krescent checkpoints: one per namespace';
                 DO $$
                 BEGIN
                     EXECUTE 'ALTER TABLE {checkpoints} ALTER COLUMN data SET COMPRESSION lz4';
                 EXCEPTION WHEN feature_not_supported OR syntax_error THEN
                     NULL;
                 END
                 $$",
                checkpoints = names.checkpoints
            ), format!(
                // Step 2: the MessagePack format (2) in its own `bytea` column; rows written
                // before it are JSON (format 1).
                "ALTER TABLE {checkpoints}
                     ADD COLUMN format smallint NOT NULL DEFAULT 1,
                     ADD COLUMN data_binary bytea,
                     ALTER COLUMN data DROP NOT NULL;
                 DO $$
                 BEGIN
                     EXECUTE 'ALTER TABLE {checkpoints} ALTER COLUMN data_binary SET COMPRESSION lz4';
                 EXCEPTION WHEN feature_not_supported OR syntax_error THEN
                     NULL;
                 END
                 $$",
                checkpoints = names.checkpoints
            ), format!(
                // Step 3: the leases of the models checkpointing here (`crate::fleet`), one
                // table per schema shared by its checkpoint tables, keyed by both. A row is
                // never deleted, so an epoch only grows.
                "CREATE TABLE IF NOT EXISTS {leases} (
                     checkpoints text COLLATE \"C\" NOT NULL,
                     namespace text COLLATE \"C\" NOT NULL,
                     holder text NOT NULL,
                     epoch bigint NOT NULL CHECK (epoch > 0),
                     expires_at timestamptz NOT NULL,
                     PRIMARY KEY (checkpoints, namespace)
                 );
                 COMMENT ON TABLE {leases} IS 'krescent leases: who may write a model''s checkpoint, under which fencing epoch'",
                leases = names.leases
            ), format!(
                // Step 4: the MessagePack bucket stored out of line without compression: the
                // server's lz4 spent ~0.1 s on the 43 MB checkpoint of a 1,000,000-key map and
                // saved 0.1 % of it (the benchmark's `large_state`); a state that compresses
                // well is stored larger. Rows written before keep their compression.
                "ALTER TABLE {checkpoints} ALTER COLUMN data_binary SET STORAGE EXTERNAL",
                checkpoints = names.checkpoints
            ), format!(
                // Step 5: each checkpoint's checksum (`StoredCheckpoint::checksum`), checked
                // before it is restored. Rows written before have none (NULL) and restore as
                // they did; the next checkpoint of each namespace writes one. Adding a nullable
                // column without a default rewrites no row.
                "ALTER TABLE {checkpoints} ADD COLUMN checksum bigint
                     CHECK (checksum BETWEEN 0 AND 4294967295)",
                checkpoints = names.checkpoints
            ), format!(
                // Step 6: the events models parked (`crate::deadletter`), one table per schema
                // shared by its checkpoint tables, keyed by the checkpoints table, the
                // namespace and the position. A new table: no existing row changes.
                "CREATE TABLE IF NOT EXISTS {parked} (
                     checkpoints text COLLATE \"C\" NOT NULL,
                     namespace text COLLATE \"C\" NOT NULL,
                     position numeric(20, 0) NOT NULL CHECK (position > 0),
                     stream_id text NOT NULL,
                     event_type text NOT NULL,
                     error text NOT NULL,
                     chain jsonb NOT NULL,
                     attempts integer NOT NULL CHECK (attempts >= 0),
                     parked_at timestamptz NOT NULL,
                     behind numeric(20, 0),
                     retry boolean NOT NULL DEFAULT false,
                     PRIMARY KEY (checkpoints, namespace, position)
                 );
                 COMMENT ON TABLE {parked} IS 'krescent parked events: what a model did not apply, and why'",
                parked = names.parked
            )],
        }
    }
}

/// Brings `component`'s table up to this build's version; returns that version.
pub(crate) async fn migrate(
    pool: &Pool,
    names: &Names,
    component: Component,
) -> Result<u32, DbFailure> {
    let mut client = store_connection(pool).await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&names.migrate_lock()])
        .await?;
    let schema_exists = tx
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1",
            &[&names.schema_plain],
        )
        .await?
        .is_some();
    if !schema_exists {
        tx.batch_execute(&format!("CREATE SCHEMA {}", names.schema))
            .await?;
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {} (
             component text PRIMARY KEY,
             version integer NOT NULL,
             migrated_at timestamptz NOT NULL DEFAULT now()
         )",
        names.migrations
    ))
    .await?;
    let key = component.key(names);
    let current: i32 = tx
        .query_opt(
            &format!(
                "SELECT version FROM {} WHERE component = $1",
                names.migrations
            ),
            &[&key],
        )
        .await?
        .map_or(0, |row| row.get(0));
    let steps = component.steps(names);
    let latest = u32::try_from(steps.len()).unwrap_or(u32::MAX);
    let current = u32::try_from(current).unwrap_or(u32::MAX);
    if current > latest {
        return Err(DbFailure::Other(format!(
            "`{key}` is at schema version {current}, newer than this build of krescent knows ({latest})"
        )));
    }
    if current == latest {
        return Ok(latest);
    }
    for step in steps.iter().skip(current as usize) {
        tx.batch_execute(step).await?;
    }
    let version = i32::try_from(latest).unwrap_or(i32::MAX);
    tx.execute(
        &format!(
            "INSERT INTO {} (component, version) VALUES ($1, $2)
             ON CONFLICT (component) DO UPDATE SET version = excluded.version, migrated_at = now()",
            names.migrations
        ),
        &[&key, &version],
    )
    .await?;
    tx.commit().await?;
    Ok(latest)
}
