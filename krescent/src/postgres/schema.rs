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
    #[allow(clippy::too_many_lines)] // one statement per step, appended for good: the list grows
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
            ), format!(
                // Step 3: the event envelope, each event's revision and metadata
                // (`EventMeta::revision`, `EventMeta::metadata`). Rows written before read as
                // revision 1 without metadata. What it costs: a column with a constant default
                // and a nullable one are catalog changes since PostgreSQL 11 (the default is
                // kept as the column's missing value), so no row is rewritten; the check is
                // added `NOT VALID`, so the old rows (all revision 1) are not scanned either.
                // The `ACCESS EXCLUSIVE` lock is held for milliseconds, whatever the size.
                "ALTER TABLE {events}
                     ADD COLUMN revision integer NOT NULL DEFAULT 1,
                     ADD COLUMN metadata jsonb,
                     ADD CHECK (revision > 0) NOT VALID",
                events = names.events
            ), slices_step(names)],
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
            ), format!(
                // Step 7: the deltas of incremental checkpoints (`crate::checkpoint::incremental`),
                // one table per schema shared by its checkpoint tables, keyed by the checkpoints
                // table, the namespace and the delta's number in its chain; the base is the
                // namespace's row in the checkpoints table, whose new column `deltas` counts the
                // deltas committed after it (a missing last delta is found). A new table and a
                // column with a constant default: no existing row is rewritten.
                "CREATE TABLE IF NOT EXISTS {deltas} (
                     checkpoints text COLLATE \"C\" NOT NULL,
                     namespace text COLLATE \"C\" NOT NULL,
                     sequence integer NOT NULL CHECK (sequence > 0),
                     version text NOT NULL,
                     base numeric(20, 0) NOT NULL CHECK (base >= 0),
                     previous numeric(20, 0) NOT NULL CHECK (previous >= 0),
                     position numeric(20, 0) NOT NULL CHECK (position >= 0),
                     taken_at timestamptz NOT NULL,
                     format smallint NOT NULL,
                     data json,
                     data_binary bytea,
                     checksum bigint NOT NULL CHECK (checksum BETWEEN 0 AND 4294967295),
                     PRIMARY KEY (checkpoints, namespace, sequence)
                 );
                 ALTER TABLE {deltas} ALTER COLUMN data_binary SET STORAGE EXTERNAL;
                 COMMENT ON TABLE {deltas} IS 'krescent checkpoint deltas: the changes of incremental fields after a base in the checkpoints table';
                 ALTER TABLE {checkpoints} ADD COLUMN deltas integer NOT NULL DEFAULT 0 CHECK (deltas >= 0)",
                deltas = names.deltas,
                checkpoints = names.checkpoints
            ), format!(
                // Step 8: the versions of blue/green projections
                // (`crate::projection::PostgresProjection::versioned`), one table per schema
                // shared by its checkpoint tables, keyed by the checkpoints table, the model and
                // the version's id: where each version's tables and checkpoint are, and its
                // state. A new table: no existing row changes; a projection deployed before it
                // is adopted by its first versioned start.
                "CREATE TABLE IF NOT EXISTS {versions} (
                     checkpoints text COLLATE \"C\" NOT NULL,
                     model text COLLATE \"C\" NOT NULL,
                     version text COLLATE \"C\" NOT NULL,
                     checkpoint_version text NOT NULL,
                     namespace text COLLATE \"C\" NOT NULL,
                     schema text NOT NULL,
                     tables text[] NOT NULL,
                     state text NOT NULL CHECK (state IN ('building', 'active', 'previous', 'retired')),
                     max_lag bigint NOT NULL CHECK (max_lag >= 0),
                     grace_ms bigint NOT NULL CHECK (grace_ms >= 0),
                     created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                     switched_at timestamptz,
                     retired_at timestamptz,
                     PRIMARY KEY (checkpoints, model, version)
                 );
                 CREATE UNIQUE INDEX IF NOT EXISTS krescent_projection_versions_active
                     ON {versions} (checkpoints, model) WHERE state = 'active';
                 COMMENT ON TABLE {versions} IS 'krescent projection versions: each version''s tables and checkpoint, and which one readers see'",
                versions = names.versions
            )],
        }
    }
}

/// Step 4 of the events table: each event's slice (`crate::fleet::Slice`).
fn slices_step(names: &Names) -> String {
    format!(
        // Step 4: each event's slice (`crate::fleet::Slice`), which the store computes
        // at append time. Existing rows get theirs afterwards, in batches
        // (`store/postgres/slices.rs`), and the index that serves segments' reads is
        // built concurrently after that: this step only changes the catalog (a
        // nullable column without a default and a check that is `NOT VALID` rewrite
        // and scan nothing), so appends wait for it a moment only. The trigger gives a
        // slice to a row inserted without one (an older krescent still appending, a
        // hand-written `INSERT` or `COPY`): `krescent_slice` is the same function as
        // `Slice::of`, FNV-1a modulo 1024 with its bits reversed, computed modulo 1024
        // throughout (the low bits of a product depend on the low bits of its factors
        // only: 805 and 435 are the offset basis and the prime modulo 1024). An empty
        // table gets its index of slices here; one with rows, once they are filled.
        "ALTER TABLE {events} ADD COLUMN slice smallint,
                     ADD CHECK (slice IS NOT NULL AND slice BETWEEN 0 AND 1023) NOT VALID;
                 CREATE OR REPLACE FUNCTION {schema}.krescent_slice(stream_id text)
                 RETURNS smallint LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
                 DECLARE
                     bytes bytea := convert_to(stream_id, 'UTF8');
                     h integer := 805;
                     r integer := 0;
                 BEGIN
                     FOR i IN 0 .. length(bytes) - 1 LOOP
                         h := ((h # get_byte(bytes, i)) * 435) & 1023;
                     END LOOP;
                     h := ((h # 255) * 435) & 1023;
                     FOR i IN 1 .. 10 LOOP
                         r := (r << 1) | (h & 1);
                         h := h >> 1;
                     END LOOP;
                     RETURN r;
                 END
                 $$;
                 CREATE OR REPLACE FUNCTION {schema}.krescent_slice_row()
                 RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN
                     NEW.slice := {schema}.krescent_slice(NEW.stream_id);
                     RETURN NEW;
                 END
                 $$;
                 CREATE TRIGGER krescent_slice BEFORE INSERT ON {events} FOR EACH ROW
                     WHEN (NEW.slice IS NULL) EXECUTE FUNCTION {schema}.krescent_slice_row();
                 DO $$
                 BEGIN
                     IF NOT EXISTS (SELECT 1 FROM {events}) THEN
                         CREATE INDEX {index} ON {events} (position, slice);
                     END IF;
                 END
                 $$",
        events = names.events,
        schema = names.schema,
        index = names.slices_index()
    )
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
