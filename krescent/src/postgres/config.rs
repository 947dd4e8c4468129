//! What a Postgres store is called: its schema, tables and channel, validated and quoted.

use std::time::Duration;

use crate::store::StoreError;

/// Where a [`PostgresEventStore`](crate::store::PostgresEventStore) and its
/// [`PostgresCheckpointStorage`](crate::checkpoint::storage::PostgresCheckpointStorage) keep their data.
///
/// Every name must match `[a-z_][a-z0-9_]{0,62}` (a schema must not start with `pg_`); it is
/// checked when a store or storage is built and always quoted in SQL, so no name can change a
/// statement. Two stores with different tables in one database are independent; two with the
/// same tables are the same store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// The schema of the tables; created by `migrate()` when missing. Default `public`.
    pub schema: String,
    /// The events table. Default `krescent_events`.
    pub events_table: String,
    /// The checkpoints table. Default `krescent_checkpoints`.
    pub checkpoints_table: String,
    /// The channel appends notify on. Default `krescent_events`.
    pub notify_channel: String,
    /// The longest a live reader waits before reading again without a notification: the
    /// fallback when a notification is lost or the listening connection is down. Default 1 s.
    pub poll_interval: Duration,
    /// The connections of the store's pool ([`PostgresEventStore::connect_with`](crate::store::PostgresEventStore::connect_with)):
    /// reads, appends, checkpoint writes and leases, each holding one only for its statements.
    /// Default 16; at least 1.
    pub pool_size: usize,
    /// The connections of the pool of projection transactions: a
    /// [`PostgresProjection`](crate::projection::PostgresProjection) holds one from its
    /// transaction's first statement to its checkpoint's commit, so this many projections can
    /// be inside a transaction at once; the others wait. Default 16; at least 1.
    pub projection_pool_size: usize,
    /// The longest taking a connection of either pool waits before it fails with the transient
    /// [`PoolExhausted`](super::PoolExhausted) (a streaming model then restarts from its
    /// checkpoint with backoff). Default 30 s.
    pub pool_wait: Duration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            schema: "public".to_owned(),
            events_table: "krescent_events".to_owned(),
            checkpoints_table: "krescent_checkpoints".to_owned(),
            notify_channel: "krescent_events".to_owned(),
            poll_interval: Duration::from_secs(1),
            pool_size: 16,
            projection_pool_size: 16,
            pool_wait: Duration::from_secs(30),
        }
    }
}

impl PostgresConfig {
    /// The default configuration with its tables in `schema`.
    #[must_use]
    pub fn in_schema(schema: impl Into<String>) -> Self {
        PostgresConfig {
            schema: schema.into(),
            ..Self::default()
        }
    }

    /// Checks every name.
    ///
    /// # Errors
    /// [`StoreError::InvalidName`] naming the first name that is not a safe identifier.
    pub fn validate(&self) -> Result<(), StoreError> {
        self.names().map(drop)
    }

    pub(crate) fn names(&self) -> Result<Names, StoreError> {
        let schema = identifier("schema", &self.schema)?;
        if self.schema.starts_with("pg_") {
            return Err(invalid(
                "schema",
                &self.schema,
                "names starting with `pg_` are reserved by Postgres",
            ));
        }
        let events = identifier("events table", &self.events_table)?;
        let checkpoints = identifier("checkpoints table", &self.checkpoints_table)?;
        let channel = identifier("notify channel", &self.notify_channel)?;
        if self.events_table == self.checkpoints_table {
            return Err(invalid(
                "checkpoints table",
                &self.checkpoints_table,
                "it is also the events table",
            ));
        }
        Ok(Names {
            events: format!("{schema}.{events}"),
            checkpoints: format!("{schema}.{checkpoints}"),
            migrations: format!("{schema}.\"{MIGRATIONS_TABLE}\""),
            leases: format!("{schema}.\"{LEASES_TABLE}\""),
            parked: format!("{schema}.\"{PARKED_TABLE}\""),
            deltas: format!("{schema}.\"{DELTAS_TABLE}\""),
            versions: format!("{schema}.\"{VERSIONS_TABLE}\""),
            schema,
            listen: format!("LISTEN {channel}"),
            channel: self.notify_channel.clone(),
            events_plain: format!("{}.{}", self.schema, self.events_table),
            checkpoints_plain: format!("{}.{}", self.schema, self.checkpoints_table),
            schema_plain: self.schema.clone(),
            events_table_plain: self.events_table.clone(),
            checkpoints_table_plain: self.checkpoints_table.clone(),
        })
    }
}

/// The validated names, quoted for SQL (`"schema"."table"`) and plain for messages and keys.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// `"schema"`.
    pub(crate) schema: String,
    /// `"schema"."events_table"`.
    pub(crate) events: String,
    /// `"schema"."checkpoints_table"`.
    pub(crate) checkpoints: String,
    /// `"schema"."krescent_schema_migrations"`.
    pub(crate) migrations: String,
    /// `"schema"."krescent_leases"`: the leases of the models checkpointing in this schema.
    pub(crate) leases: String,
    /// `"schema"."krescent_parked"`: the events parked by the models checkpointing in this
    /// schema ([`crate::deadletter`]).
    pub(crate) parked: String,
    /// `"schema"."krescent_checkpoint_deltas"`: the deltas of incremental checkpoints in this
    /// schema ([`crate::checkpoint::incremental`]).
    pub(crate) deltas: String,
    /// `"schema"."krescent_projection_versions"`: the versions of the blue/green projections
    /// checkpointing in this schema.
    pub(crate) versions: String,
    /// `LISTEN "channel"`.
    pub(crate) listen: String,
    /// The channel, as `pg_notify` takes it.
    pub(crate) channel: String,
    /// `schema.events_table`.
    pub(crate) events_plain: String,
    /// `schema.checkpoints_table`.
    pub(crate) checkpoints_plain: String,
    /// `schema`.
    pub(crate) schema_plain: String,
    /// `events_table`.
    pub(crate) events_table_plain: String,
    /// `checkpoints_table`.
    pub(crate) checkpoints_table_plain: String,
}

/// The table `migrate()` records the schema's versions in, in every schema it migrates.
const MIGRATIONS_TABLE: &str = "krescent_schema_migrations";

/// The table of the leases of the models that checkpoint in a schema (see [`crate::fleet`]).
pub(crate) const LEASES_TABLE: &str = "krescent_leases";

/// The table of the events parked by the models that checkpoint in a schema.
pub(crate) const PARKED_TABLE: &str = "krescent_parked";

/// The table of the deltas of the incremental checkpoints in a schema.
pub(crate) const DELTAS_TABLE: &str = "krescent_checkpoint_deltas";

/// The table of the versions of the blue/green projections in a schema.
pub(crate) const VERSIONS_TABLE: &str = "krescent_projection_versions";

impl Names {
    /// Why `table` (in this schema) is taken: it is one of the store's or the storage's own
    /// tables; `None` when it is free.
    pub(crate) fn owner_of(&self, table: &str) -> Option<&'static str> {
        if table == self.events_table_plain {
            Some("it is the store's events table")
        } else if table == self.checkpoints_table_plain {
            Some("it is the checkpoints table")
        } else if table == MIGRATIONS_TABLE {
            Some("it is the table `migrate()` records schema versions in")
        } else if table == LEASES_TABLE {
            Some("it is the table models' leases are kept in")
        } else if table == PARKED_TABLE {
            Some("it is the table models' parked events are kept in")
        } else if table == DELTAS_TABLE {
            Some("it is the table incremental checkpoints' deltas are kept in")
        } else if table == VERSIONS_TABLE {
            Some("it is the table projection versions are kept in")
        } else {
            None
        }
    }

    /// The advisory lock every append of this events table holds until it commits.
    pub(crate) fn append_lock(&self) -> i64 {
        lock_key(&["krescent.append", &self.events_plain])
    }

    /// The advisory lock `migrate()` holds for this schema.
    pub(crate) fn migrate_lock(&self) -> i64 {
        lock_key(&["krescent.migrate", &self.schema_plain])
    }

    /// The advisory lock the filling of this events table's slices holds (one filler at a
    /// time: `store/postgres/slices.rs`).
    pub(crate) fn slices_lock(&self) -> i64 {
        lock_key(&["krescent.slices", &self.events_plain])
    }

    /// The name of the index of this events table's slices, `krescent_slices_<hash>` (in the
    /// table's schema; short, so that no table name makes it too long).
    pub(crate) fn slices_index(&self) -> String {
        format!(
            "krescent_slices_{:016x}",
            crate::hash::stable_hash([self.events_plain.as_str()])
        )
    }

    /// The advisory lock the switches, drops and deploys of the versions of the blue/green
    /// projection `model`, checkpointing in this table, take one at a time.
    pub(crate) fn versions_lock(&self, model: &str) -> i64 {
        lock_key(&["krescent.versions", &self.checkpoints_plain, model])
    }

    /// The advisory lock a segment of the split projection `model`, checkpointing in this
    /// table, holds while it decides how to start without a checkpoint.
    pub(crate) fn segments_lock(&self, model: &str) -> i64 {
        lock_key(&["krescent.segments", &self.checkpoints_plain, model])
    }

    /// The key of the advisory lock under which a lease of `model` is taken after checking
    /// that no lease of another segment count is live.
    pub(crate) fn layout_lock(&self, model: &str) -> i64 {
        lock_key(&["krescent.layout", &self.checkpoints_plain, model])
    }
}

const MAX_LEN: usize = 63;

fn invalid(what: &'static str, name: &str, reason: &'static str) -> StoreError {
    StoreError::InvalidName {
        what,
        name: name.to_owned(),
        reason,
    }
}

/// `name` quoted, if it matches `[a-z_][a-z0-9_]{0,62}`.
pub(crate) fn identifier(what: &'static str, name: &str) -> Result<String, StoreError> {
    let Some(first) = name.bytes().next() else {
        return Err(invalid(what, name, "it is empty"));
    };
    if name.len() > MAX_LEN {
        return Err(invalid(what, name, "it is longer than 63 bytes"));
    }
    if !(first.is_ascii_lowercase() || first == b'_') {
        return Err(invalid(
            what,
            name,
            "it must start with a lowercase ASCII letter or `_`",
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(invalid(
            what,
            name,
            "it may contain only lowercase ASCII letters, digits and `_`",
        ));
    }
    Ok(format!("\"{name}\""))
}

/// A stable 64-bit advisory lock key for `parts`, the same in every build and process.
fn lock_key(parts: &[&str]) -> i64 {
    i64::from_ne_bytes(crate::hash::stable_hash(parts.iter().copied()).to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_schema(schema: &str) -> PostgresConfig {
        PostgresConfig::in_schema(schema)
    }

    #[test]
    fn accepts_safe_identifiers() {
        for name in ["public", "_", "a", "app_1", &"x".repeat(63)] {
            assert!(with_schema(name).validate().is_ok(), "{name}");
        }
        assert!(PostgresConfig::default().validate().is_ok());
    }

    #[test]
    fn refuses_hostile_names() {
        let hostile = [
            "",
            "Public",
            "1abc",
            "a-b",
            "a b",
            "a\"b",
            "a;drop table x",
            "ä",
            "a\0",
            "pg_catalog",
            "a.b",
            &"x".repeat(64),
        ];
        for name in hostile {
            match with_schema(name).validate() {
                Err(StoreError::InvalidName {
                    what: "schema",
                    name: n,
                    ..
                }) => assert_eq!(n, name),
                other => panic!("{name:?}: {other:?}"),
            }
        }
        let config = PostgresConfig {
            events_table: "events\"; --".into(),
            ..PostgresConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(StoreError::InvalidName {
                what: "events table",
                ..
            })
        ));
        let config = PostgresConfig {
            notify_channel: "Chan".into(),
            ..PostgresConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(StoreError::InvalidName {
                what: "notify channel",
                ..
            })
        ));
        let config = PostgresConfig {
            checkpoints_table: "krescent_events".into(),
            ..PostgresConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(StoreError::InvalidName {
                what: "checkpoints table",
                ..
            })
        ));
    }

    #[test]
    fn quotes_every_name() {
        let names = PostgresConfig::in_schema("app").names().unwrap();
        assert_eq!(names.events, "\"app\".\"krescent_events\"");
        assert_eq!(names.checkpoints, "\"app\".\"krescent_checkpoints\"");
        assert_eq!(names.listen, "LISTEN \"krescent_events\"");
    }

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        let a = PostgresConfig::in_schema("a").names().unwrap();
        let b = PostgresConfig::in_schema("b").names().unwrap();
        assert_ne!(a.append_lock(), b.append_lock());
        assert_ne!(a.append_lock(), a.migrate_lock());
        assert_eq!(
            a.append_lock(),
            PostgresConfig::in_schema("a")
                .names()
                .unwrap()
                .append_lock()
        );
    }
}
