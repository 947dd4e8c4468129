//! The operations on a model's versions: list, switch (promote, roll back, a build's
//! automatic switch), drop and retire, each one transaction under the model's advisory lock.

use tracing::warn;

use super::registry::{drop_in, positions, repoint, rows, set_state, Row, Tx, COLUMNS};
use super::{ProjectionVersions, Switched, VersionError, VersionInfo, VersionState};
use crate::checkpoint::storage::PostgresCheckpointStorage;
use crate::postgres::{store_connection, DbFailure};
use crate::Position;

/// What to switch to.
#[derive(Debug, Clone, Copy)]
pub(super) enum Target<'a> {
    /// This version (building or previous).
    Version(&'a str),
    /// The previous version (a rollback).
    Previous,
    /// This version, only while it is building, and quietly not when behind (a build that
    /// caught up).
    Caught(&'a str),
}

impl Target<'_> {
    /// The row of the version to switch to; `None` when a build that caught up has nothing to
    /// do (it is no longer building).
    fn row<'r>(self, model: &str, rows: &'r [Row]) -> Result<Option<&'r Row>, VersionError> {
        Ok(Some(match self {
            Target::Version(v) | Target::Caught(v) => {
                let Some(row) = rows.iter().find(|r| r.version == v) else {
                    return Err(unknown(model, v, rows));
                };
                if let Target::Caught(_) = self {
                    if row.state != VersionState::Building {
                        return Ok(None);
                    }
                }
                if matches!(row.state, VersionState::Active | VersionState::Retired) {
                    return Err(VersionError::NotSwitchable {
                        model: model.to_owned(),
                        version: v.to_owned(),
                        state: row.state,
                    });
                }
                row
            }
            Target::Previous => {
                let Some(row) = rows.iter().find(|r| r.state == VersionState::Previous) else {
                    return Err(VersionError::NoPrevious {
                        model: model.to_owned(),
                    });
                };
                row
            }
        }))
    }
}

/// Drops the versions `retired` of `model`, each in a transaction of its own; a failure is
/// logged (the next deploy, switch or `krescent versions drop` tries again).
pub(super) async fn drop_retired(
    storage: &PostgresCheckpointStorage,
    model: &str,
    retired: &[String],
) {
    for version in retired {
        if let Err(e) = ProjectionVersions::new(storage)
            .drop_any(model, version)
            .await
        {
            warn!(model, version = %version, error = %e, "dropping a retired projection version failed");
        }
    }
}

impl ProjectionVersions {
    /// The versions of the projections checkpointing in `storage`.
    #[must_use]
    pub fn new(storage: &PostgresCheckpointStorage) -> Self {
        ProjectionVersions {
            storage: storage.clone(),
        }
    }

    /// The versions of `model`, oldest first, with their positions and lag.
    ///
    /// # Errors
    /// [`VersionError::Storage`] when the database refuses.
    pub async fn list(&self, model: &str) -> Result<Vec<VersionInfo>, VersionError> {
        let run = async {
            let names = self.storage.names();
            let client = store_connection(self.storage.pool()).await?;
            let sql = format!(
                "SELECT {COLUMNS} FROM {} WHERE checkpoints = $1 AND model = $2 ORDER BY created_at, version",
                names.versions
            );
            let rows = client
                .query(&sql, &[&names.checkpoints_plain, &model])
                .await?
                .iter()
                .map(Row::read)
                .collect::<Result<Vec<_>, _>>()?;
            let mut infos = Vec::with_capacity(rows.len());
            for row in &rows {
                let position = positions(&client, &self.storage, &[row.namespace.as_str()])
                    .await?
                    .into_iter()
                    .next()
                    .filter(|p| *p != Position::START || row.state != VersionState::Retired);
                infos.push((row, position));
            }
            let active = infos
                .iter()
                .find(|(r, _)| r.state == VersionState::Active)
                .and_then(|(_, p)| *p);
            Ok::<_, DbFailure>(
                infos
                    .into_iter()
                    .map(|(row, position)| VersionInfo {
                        version: row.version.clone(),
                        checkpoint_version: row.checkpoint_version.clone(),
                        namespace: row.namespace.clone(),
                        schema: row.schema.clone(),
                        tables: row.tables.clone(),
                        state: row.state,
                        lag: match (position, active) {
                            (Some(p), Some(a)) => Some(a.get().saturating_sub(p.get())),
                            _ => None,
                        },
                        position,
                    })
                    .collect(),
            )
        };
        run.await
            .map_err(|e| e.storage(format!("list the versions of `{model}`")).into())
    }

    /// Switches readers to `version` of `model` (building, or previous), in one transaction:
    /// both versions' checkpoint positions are read under locks, `version` must be at or past
    /// the active one's less its allowed lag, and the pointer (the registry's states and the
    /// views) changes from the active version to it. The version active before becomes
    /// previous: it keeps following for its grace period.
    ///
    /// # Errors
    /// [`VersionError::Unknown`], [`VersionError::NotSwitchable`] (retired, or already
    /// active), [`VersionError::Behind`], [`VersionError::NoActive`], or
    /// [`VersionError::Storage`]; nothing changed then.
    pub async fn promote(&self, model: &str, version: &str) -> Result<Switched, VersionError> {
        self.switch(model, Target::Version(version))
            .await
            .and_then(|s| s.ok_or_else(|| no_active(model)))
    }

    /// Switches readers back to the previous version of `model` (within its grace period),
    /// as [`promote`](Self::promote) does; the version active before becomes previous.
    ///
    /// # Errors
    /// [`VersionError::NoPrevious`], [`VersionError::Behind`], or [`VersionError::Storage`];
    /// nothing changed then.
    pub async fn rollback(&self, model: &str) -> Result<Switched, VersionError> {
        self.switch(model, Target::Previous)
            .await
            .and_then(|s| s.ok_or_else(|| no_active(model)))
    }

    /// Drops `version` of `model`: its tables, schema and checkpoint go, and it is marked
    /// retired (a build of it refuses to start), in one transaction. The active version is
    /// never dropped.
    ///
    /// # Errors
    /// [`VersionError::Unknown`], [`VersionError::Active`], or [`VersionError::Storage`];
    /// nothing changed then.
    pub async fn drop_version(&self, model: &str, version: &str) -> Result<(), VersionError> {
        self.drop_any(model, version).await
    }

    /// Drops the previous versions of `model` whose grace period is over and that no running
    /// process follows (their lease is free: a running one retires itself at its next
    /// commit, and its run ends with
    /// [`StorageError::Retired`](crate::checkpoint::storage::StorageError::Retired)); their
    /// ids.
    ///
    /// # Errors
    /// [`VersionError::Storage`] when the database refuses.
    pub async fn retire_expired(&self, model: &str) -> Result<Vec<String>, VersionError> {
        self.retire_expired_as(model, None).await
    }

    /// [`retire_expired`](Self::retire_expired), by the process following `own` (whose lease
    /// it holds: its own version is dropped too when expired).
    pub(super) async fn retire_expired_as(
        &self,
        model: &str,
        own: Option<&str>,
    ) -> Result<Vec<String>, VersionError> {
        let doing = || format!("retire the expired versions of `{model}`");
        let run = async {
            let names = self.storage.names();
            let tx = Tx::begin(&self.storage, model).await?;
            let leased = format!(
                "SELECT EXISTS (SELECT 1 FROM {} WHERE checkpoints = $1 AND namespace = $2
                     AND expires_at > clock_timestamp())",
                names.leases
            );
            let mut expired = Vec::new();
            for row in rows(tx.client(), &self.storage, model).await? {
                if !row.expired {
                    continue;
                }
                let followed: bool = tx
                    .client()
                    .query_one(&leased, &[&names.checkpoints_plain, &row.namespace])
                    .await?
                    .try_get(0)?;
                if followed && own != Some(row.namespace.as_str()) {
                    continue;
                }
                drop_in(tx.client(), &self.storage, model, &row).await?;
                expired.push(row.version);
            }
            tx.commit().await?;
            Ok::<_, DbFailure>(expired)
        };
        run.await.map_err(|e| e.storage(doing()).into())
    }

    async fn drop_any(&self, model: &str, version: &str) -> Result<(), VersionError> {
        let doing = || format!("drop version `{version}` of `{model}`");
        let tx = Tx::begin(&self.storage, model)
            .await
            .map_err(|e| e.storage(doing()))?;
        let rows = rows(tx.client(), &self.storage, model)
            .await
            .map_err(|e| e.storage(doing()))?;
        let Some(row) = rows.iter().find(|r| r.version == version) else {
            return Err(unknown(model, version, &rows));
        };
        if row.state == VersionState::Active {
            return Err(VersionError::Active {
                model: model.to_owned(),
                version: version.to_owned(),
            });
        }
        drop_in(tx.client(), &self.storage, model, row)
            .await
            .map_err(|e| e.storage(doing()))?;
        tx.commit().await.map_err(|e| e.storage(doing()))?;
        Ok(())
    }

    /// The switch of [`promote`](Self::promote) and [`rollback`](Self::rollback); `None`
    /// when a build that caught up finds nothing to do (no longer building, or behind).
    pub(super) async fn switch(
        &self,
        model: &str,
        target: Target<'_>,
    ) -> Result<Option<Switched>, VersionError> {
        let doing = || format!("switch the versions of `{model}`");
        let tx = Tx::begin(&self.storage, model)
            .await
            .map_err(|e| e.storage(doing()))?;
        let rows = rows(tx.client(), &self.storage, model)
            .await
            .map_err(|e| e.storage(doing()))?;
        let Some(active) = rows.iter().find(|r| r.state == VersionState::Active) else {
            return match target {
                Target::Caught(_) => Ok(None),
                _ => Err(VersionError::NoActive {
                    model: model.to_owned(),
                }),
            };
        };
        let Some(to) = target.row(model, &rows)? else {
            return Ok(None);
        };
        let found = positions(
            tx.client(),
            &self.storage,
            &[active.namespace.as_str(), to.namespace.as_str()],
        )
        .await
        .map_err(|e| e.storage(doing()))?;
        let (from_position, to_position) = (found[0], found[1]);
        if to_position.get().saturating_add(to.max_lag) < from_position.get() {
            if let Target::Caught(_) = target {
                return Ok(None);
            }
            return Err(VersionError::Behind {
                model: model.to_owned(),
                version: to.version.clone(),
                position: to_position,
                active: from_position,
                max_lag: to.max_lag,
            });
        }
        let run = async {
            let names = self.storage.names();
            // One previous version at a time: another one (switched away from earlier) is
            // retired now and dropped after the commit.
            let others: Vec<String> = rows
                .iter()
                .filter(|r| r.state == VersionState::Previous && r.version != to.version)
                .map(|r| r.version.clone())
                .collect();
            // The active one steps down first, so that the unique index of active versions
            // holds at every row.
            let client = tx.client();
            set_state(
                client,
                &self.storage,
                model,
                std::slice::from_ref(&active.version),
                VersionState::Previous,
            )
            .await?;
            set_state(client, &self.storage, model, &others, VersionState::Retired).await?;
            set_state(
                client,
                &self.storage,
                model,
                std::slice::from_ref(&to.version),
                VersionState::Active,
            )
            .await?;
            repoint(tx.client(), &names.schema_plain, Some(active), to).await?;
            Ok::<_, DbFailure>(others)
        };
        let others = run.await.map_err(|e| e.storage(doing()))?;
        tx.commit().await.map_err(|e| e.storage(doing()))?;
        drop_retired(&self.storage, model, &others).await;
        Ok(Some(Switched {
            from: active.version.clone(),
            to: to.version.clone(),
            from_position,
            to_position,
        }))
    }
}

/// What a promote or rollback says when there is nothing to switch from (only a build's
/// automatic switch finds nothing to do quietly).
fn no_active(model: &str) -> VersionError {
    VersionError::NoActive {
        model: model.to_owned(),
    }
}

fn unknown(model: &str, version: &str, rows: &[Row]) -> VersionError {
    VersionError::Unknown {
        model: model.to_owned(),
        version: version.to_owned(),
        known: rows.iter().map(|r| r.version.clone()).collect(),
    }
}
