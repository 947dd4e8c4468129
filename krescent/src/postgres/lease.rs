//! The lease rows in `"<schema>"."krescent_leases"` (created by the checkpoint storage's
//! `migrate()`): the SQL under the lease protocol of [`crate::fleet`].

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;

use super::{store_connection, DbFailure, Names};
use tracing::debug;

use crate::fleet::{layout_of, Fence, Layout, LeaseError, LeaseTable, Leases};

/// The leases of the models checkpointing in one checkpoints table. Expiry is judged by the
/// server's clock only (`clock_timestamp()` in every statement).
#[derive(Debug)]
struct LeaseRows {
    pool: Pool,
    names: Arc<Names>,
}

impl Leases {
    /// The leases of the models checkpointing in `names`' checkpoints table, on `pool`.
    pub(crate) fn new(pool: Pool, names: Arc<Names>) -> Self {
        Leases::over(Arc::new(LeaseRows { pool, names }))
    }
}

/// A failure of the database while `doing`, as the lease protocol logs it.
fn failed(doing: &'static str) -> impl FnOnce(DbFailure) -> LeaseError {
    move |e| Box::new(e.storage(doing))
}

impl LeaseRows {
    async fn try_take(
        &self,
        namespace: &str,
        holder: &str,
        ttl: Duration,
        layout: Option<Layout<'_>>,
    ) -> Result<Option<u64>, DbFailure> {
        let sql = format!(
            "INSERT INTO {leases} AS lease (checkpoints, namespace, holder, epoch, expires_at)
             VALUES ($1, $2, $3, 1, clock_timestamp() + $4::float8 * interval '1 millisecond')
             ON CONFLICT (checkpoints, namespace) DO UPDATE
             SET holder = excluded.holder, epoch = lease.epoch + 1, expires_at = excluded.expires_at
             WHERE lease.expires_at <= clock_timestamp()
             RETURNING epoch",
            leases = self.names.leases
        );
        let mut client = store_connection(&self.pool).await?;
        let transaction = client.transaction().await?;
        if let Some(layout) = layout {
            // Checked and taken under one lock: two counts never both find the other idle. A
            // process paused (or cut off) while it holds the lock must not hold every other
            // instance's lease of the model with it: the server ends a session idle in this
            // transaction after `ttl`, which rolls back and frees the lock (set in the lock's
            // own statement, so that no pause falls between the two).
            transaction
                .execute(
                    "SELECT set_config('idle_in_transaction_session_timeout', $1, true), \
                     pg_advisory_xact_lock($2)",
                    &[
                        &super::idle_timeout(ttl).to_string(),
                        &self.names.layout_lock(layout.model),
                    ],
                )
                .await?;
            if let Some(other) = self.other_layout(&transaction, layout).await? {
                debug!(
                    namespace,
                    other, "another segment count of the model runs: waiting"
                );
                return Ok(None);
            }
        }
        let statement = transaction.prepare_cached(&sql).await?;
        let row = transaction
            .query_opt(
                &statement,
                &[
                    &self.names.checkpoints_plain,
                    &namespace,
                    &holder,
                    &millis(ttl),
                ],
            )
            .await?;
        transaction.commit().await?;
        match row {
            None => Ok(None),
            Some(row) => {
                let epoch: i64 = row.try_get(0)?;
                u64::try_from(epoch)
                    .map(Some)
                    .map_err(|_| DbFailure::Other(format!("lease epoch {epoch} is negative")))
            }
        }
    }

    /// A live lease of `layout`'s model for another segment count (or for the whole model),
    /// if there is one.
    async fn other_layout(
        &self,
        transaction: &deadpool_postgres::Transaction<'_>,
        layout: Layout<'_>,
    ) -> Result<Option<String>, DbFailure> {
        let sql = format!(
            "SELECT namespace FROM {} WHERE checkpoints = $1
             AND (namespace = $2 OR starts_with(namespace, $2 || '#'))
             AND expires_at > clock_timestamp()",
            self.names.leases
        );
        let statement = transaction.prepare_cached(&sql).await?;
        let rows = transaction
            .query(&statement, &[&self.names.checkpoints_plain, &layout.model])
            .await?;
        for row in rows {
            let namespace: String = row.try_get(0)?;
            if layout_of(layout.model, &namespace).is_some_and(|s| s.count() != layout.count) {
                return Ok(Some(namespace));
            }
        }
        Ok(None)
    }

    async fn renew(&self, fence: &Fence, ttl: Duration) -> Result<bool, DbFailure> {
        let sql = format!(
            "UPDATE {} SET expires_at = clock_timestamp() + $5::float8 * interval '1 millisecond'
             WHERE checkpoints = $1 AND namespace = $2 AND holder = $3 AND epoch = $4",
            self.names.leases
        );
        let client = store_connection(&self.pool).await?;
        let statement = client.prepare_cached(&sql).await?;
        let epoch = epoch_value(fence.epoch);
        let updated = client
            .execute(
                &statement,
                &[
                    &self.names.checkpoints_plain,
                    &fence.namespace,
                    &fence.holder,
                    &epoch,
                    &millis(ttl),
                ],
            )
            .await?;
        Ok(updated == 1)
    }

    async fn release(&self, fence: &Fence) -> Result<(), DbFailure> {
        let sql = format!(
            "UPDATE {} SET expires_at = '-infinity'
             WHERE checkpoints = $1 AND namespace = $2 AND holder = $3 AND epoch = $4",
            self.names.leases
        );
        let client = store_connection(&self.pool).await?;
        let statement = client.prepare_cached(&sql).await?;
        client
            .execute(
                &statement,
                &[
                    &self.names.checkpoints_plain,
                    &fence.namespace,
                    &fence.holder,
                    &epoch_value(fence.epoch),
                ],
            )
            .await?;
        Ok(())
    }

    async fn delete_expired(&self, prefix: &str) -> Result<(), DbFailure> {
        let sql = format!(
            "DELETE FROM {} WHERE checkpoints = $1 AND starts_with(namespace, $2)
             AND expires_at < clock_timestamp() - interval '1 minute'",
            self.names.leases
        );
        let client = store_connection(&self.pool).await?;
        client
            .execute(&sql, &[&self.names.checkpoints_plain, &prefix])
            .await?;
        Ok(())
    }

    async fn live(&self, prefix: &str) -> Result<Vec<String>, DbFailure> {
        let sql = format!(
            "SELECT namespace FROM {} WHERE checkpoints = $1 AND starts_with(namespace, $2)
             AND expires_at > clock_timestamp() ORDER BY namespace COLLATE \"C\"",
            self.names.leases
        );
        let client = store_connection(&self.pool).await?;
        let rows = client
            .query(&sql, &[&self.names.checkpoints_plain, &prefix])
            .await?;
        rows.iter()
            .map(|row| row.try_get(0).map_err(DbFailure::from))
            .collect()
    }

    async fn held(&self, namespaces: &[String]) -> Result<Vec<(String, String)>, DbFailure> {
        let sql = format!(
            "SELECT namespace, holder FROM {} WHERE checkpoints = $1 AND namespace = ANY($2)
             AND expires_at > clock_timestamp()",
            self.names.leases
        );
        let client = store_connection(&self.pool).await?;
        let rows = client
            .query(&sql, &[&self.names.checkpoints_plain, &namespaces])
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }
}

#[async_trait::async_trait]
impl LeaseTable for LeaseRows {
    async fn try_take(
        &self,
        namespace: &str,
        holder: &str,
        ttl: Duration,
        layout: Option<Layout<'_>>,
    ) -> Result<Option<u64>, LeaseError> {
        LeaseRows::try_take(self, namespace, holder, ttl, layout)
            .await
            .map_err(failed("take the lease"))
    }

    async fn renew(&self, fence: &Fence, ttl: Duration) -> Result<bool, LeaseError> {
        LeaseRows::renew(self, fence, ttl)
            .await
            .map_err(failed("renew the lease"))
    }

    async fn release(&self, fence: &Fence) -> Result<(), LeaseError> {
        LeaseRows::release(self, fence)
            .await
            .map_err(failed("release the lease"))
    }

    async fn delete_expired(&self, prefix: &str) -> Result<(), LeaseError> {
        LeaseRows::delete_expired(self, prefix)
            .await
            .map_err(failed("delete expired members"))
    }

    async fn live(&self, prefix: &str) -> Result<Vec<String>, LeaseError> {
        LeaseRows::live(self, prefix)
            .await
            .map_err(failed("read the fleet"))
    }

    async fn held(&self, namespaces: &[String]) -> Result<Vec<(String, String)>, LeaseError> {
        LeaseRows::held(self, namespaces)
            .await
            .map_err(failed("read the fleet"))
    }
}

#[allow(clippy::cast_precision_loss)] // durations of leases are far below 2^52 ms
fn millis(d: Duration) -> f64 {
    d.as_millis() as f64
}

fn epoch_value(epoch: u64) -> i64 {
    i64::try_from(epoch).unwrap_or(i64::MAX)
}
