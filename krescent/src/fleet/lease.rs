//! Taking, renewing and releasing a lease row.

use crate::store::postgres::store_connection;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{Fence, LeaseConfig};
use crate::store::postgres::{DbFailure, Names};

/// The leases of the models checkpointing in one table; runtime plumbing, not an API.
#[derive(Debug, Clone)]
pub struct Leases {
    pub(super) pool: Pool,
    pub(super) names: Arc<Names>,
}

/// A lease this run holds, renewed by a task of its own until released or dropped.
#[derive(Debug)]
pub(crate) struct HeldLease {
    leases: Leases,
    fence: Fence,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Leases {
    pub(crate) fn new(pool: Pool, names: Arc<Names>) -> Self {
        Leases { pool, names }
    }

    /// Takes the lease of `namespace` for `holder` if it is free or expired; its epoch then.
    async fn try_take(
        &self,
        namespace: &str,
        holder: &str,
        ttl: Duration,
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
        let client = store_connection(&self.pool).await?;
        let statement = client.prepare_cached(&sql).await?;
        let row = client
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

    /// Extends the lease `fence` names; whether it is still held.
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

    /// Lets the lease `fence` names expire now, if it is still held.
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

    /// Waits until this run holds the lease of `namespace`, trying every `config.poll`; `None`
    /// when `stop` is set first. Database failures while waiting are logged and retried.
    pub(crate) async fn acquire(
        &self,
        namespace: &str,
        config: LeaseConfig,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<HeldLease> {
        let holder = format!("{}:{}", std::process::id(), uuid::Uuid::new_v4().simple());
        loop {
            if *stop.borrow() {
                return None;
            }
            match self.try_take(namespace, &holder, config.ttl).await {
                Ok(Some(epoch)) => {
                    info!(namespace, epoch, holder, "took the lease");
                    let fence = Fence {
                        namespace: namespace.to_owned(),
                        holder,
                        epoch,
                        ttl: config.ttl,
                    };
                    let heartbeat = tokio::spawn(heartbeat(self.clone(), fence.clone(), config));
                    return Some(HeldLease {
                        leases: self.clone(),
                        fence,
                        heartbeat,
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    let error = e.storage("take the lease");
                    warn!(namespace, %error, "taking the lease failed; retrying");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(config.poll) => {}
                _ = stop.wait_for(|s| *s) => return None,
            }
        }
    }
}

impl HeldLease {
    /// The fence every commit of this run checks.
    pub(crate) fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Stops renewing and lets the lease expire now, so that a standby takes over at its next
    /// poll. A failure is logged: the lease then expires by itself.
    pub(crate) async fn release(self) {
        self.heartbeat.abort();
        if let Err(e) = self.leases.release(&self.fence).await {
            let error = e.storage("release the lease");
            warn!(namespace = self.fence.namespace, %error, "releasing the lease failed; it expires by itself");
        }
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// Renews the lease every `config.heartbeat` until it is lost.
async fn heartbeat(leases: Leases, fence: Fence, config: LeaseConfig) {
    loop {
        tokio::time::sleep(config.heartbeat).await;
        match leases.renew(&fence, config.ttl).await {
            Ok(true) => {}
            Ok(false) => {
                warn!(
                    namespace = fence.namespace,
                    epoch = fence.epoch,
                    "lost the lease: another instance took it; the next commit is fenced"
                );
                return;
            }
            Err(e) => {
                let error = e.storage("renew the lease");
                warn!(namespace = fence.namespace, %error, "renewing the lease failed; retrying");
            }
        }
    }
}

#[allow(clippy::cast_precision_loss)] // durations of leases are far below 2^52 ms
fn millis(d: Duration) -> f64 {
    d.as_millis() as f64
}

fn epoch_value(epoch: u64) -> i64 {
    i64::try_from(epoch).unwrap_or(i64::MAX)
}
