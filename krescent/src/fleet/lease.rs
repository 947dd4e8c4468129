//! Taking, renewing and releasing a lease: the protocol, over the table that keeps the leases
//! (PostgreSQL's is `crate::postgres::lease`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::{Fence, LeaseConfig};

/// Why the lease table failed, ready to be logged: the lease protocol only logs and retries.
pub(crate) type LeaseError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The segment count a lease is taken for: the lease of a model's segment (or of the whole
/// model, count 1) is taken only while no lease of another count of the model is live, so
/// that two layouts never run at once (see [`crate::fleet::Handover`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout<'a> {
    /// The model's name.
    pub(crate) model: &'a str,
    /// Its segment count.
    pub(crate) count: u32,
}

/// The rows the leases are kept in, one per namespace: who holds it, under which epoch, until
/// when (by the database server's clock).
#[async_trait::async_trait]
pub(crate) trait LeaseTable: Send + Sync + std::fmt::Debug {
    /// Takes the lease of `namespace` for `holder` if it is free or expired, for `ttl`; its
    /// epoch then (one more than the last holder's), or `None` while another holds it, or
    /// (with a `layout`) while a lease of another segment count of the model is live.
    async fn try_take(
        &self,
        namespace: &str,
        holder: &str,
        ttl: Duration,
        layout: Option<Layout<'_>>,
    ) -> Result<Option<u64>, LeaseError>;

    /// Extends the lease `fence` names by `ttl`; whether it is still held.
    async fn renew(&self, fence: &Fence, ttl: Duration) -> Result<bool, LeaseError>;

    /// Lets the lease `fence` names expire now, if it is still held.
    async fn release(&self, fence: &Fence) -> Result<(), LeaseError>;

    /// Deletes the leases of namespaces starting with `prefix` that expired more than a minute
    /// ago.
    async fn delete_expired(&self, prefix: &str) -> Result<(), LeaseError>;

    /// The namespaces starting with `prefix` whose lease is live, in byte order.
    async fn live(&self, prefix: &str) -> Result<Vec<String>, LeaseError>;

    /// Which of `namespaces` have a live lease now, held by anyone: each with its holder
    /// (`<pid>:<id>`).
    async fn held(&self, namespaces: &[String]) -> Result<Vec<(String, String)>, LeaseError>;
}

/// The leases of the models checkpointing in one table; runtime plumbing, not an API.
#[derive(Debug, Clone)]
pub struct Leases {
    pub(super) table: Arc<dyn LeaseTable>,
}

/// A lease this run holds, renewed by a task of its own until released or dropped.
#[derive(Debug)]
pub(crate) struct HeldLease {
    leases: Leases,
    fence: Fence,
    /// Set by the heartbeat when it found the lease taken by another holder.
    lost: watch::Receiver<bool>,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Leases {
    /// The leases kept in `table`.
    pub(crate) fn over(table: Arc<dyn LeaseTable>) -> Self {
        Leases { table }
    }

    /// Whether the lease `fence` names is still held, extending it by the fence's ttl as a
    /// heartbeat does: asked before a write by a storage that cannot check the lease inside
    /// the write itself (a bucket's).
    #[cfg_attr(
        not(all(feature = "object-store", feature = "postgres")),
        allow(dead_code)
    )]
    pub(crate) async fn still_held(&self, fence: &Fence) -> Result<bool, LeaseError> {
        self.table.renew(fence, fence.ttl).await
    }

    /// Waits until this run holds the lease of `namespace`, trying every `config.poll`; `None`
    /// when `stop` is set first. With a `layout`, it also waits while a lease of another
    /// segment count of the model is live: the old layout runs until its last instance stops,
    /// then the new one takes over. Database failures while waiting are logged and retried.
    pub(crate) async fn acquire(
        &self,
        namespace: &str,
        layout: Option<Layout<'_>>,
        config: LeaseConfig,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<HeldLease> {
        let holder = format!("{}:{}", std::process::id(), uuid::Uuid::new_v4().simple());
        loop {
            if *stop.borrow() {
                return None;
            }
            match self
                .table
                .try_take(namespace, &holder, config.ttl, layout)
                .await
            {
                Ok(Some(epoch)) => {
                    info!(namespace, epoch, holder, "took the lease");
                    let fence = Fence {
                        namespace: namespace.to_owned(),
                        holder,
                        epoch,
                        ttl: config.ttl,
                    };
                    let (found_lost, lost) = watch::channel(false);
                    let heartbeat =
                        tokio::spawn(heartbeat(self.clone(), fence.clone(), config, found_lost));
                    return Some(HeldLease {
                        leases: self.clone(),
                        fence,
                        lost,
                        heartbeat,
                    });
                }
                Ok(None) => {}
                Err(error) => {
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

    /// Set when the heartbeat finds that another holder has taken the lease (never set after
    /// a release: the heartbeat is gone then).
    pub(crate) fn lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Whether another holder has taken the lease: the heartbeat found it so, or (asked now,
    /// renewing it as a heartbeat does) the table says so. A failure to ask counts as still
    /// held: only a lease known to be lost is reported lost.
    pub(crate) async fn is_lost(&self) -> bool {
        if *self.lost.borrow() {
            return true;
        }
        matches!(
            self.leases.table.renew(&self.fence, self.fence.ttl).await,
            Ok(false)
        )
    }

    /// Stops renewing and lets the lease expire now, so that a standby takes over at its next
    /// poll. A failure is logged: the lease then expires by itself.
    pub(crate) async fn release(self) {
        self.heartbeat.abort();
        if let Err(error) = self.leases.table.release(&self.fence).await {
            warn!(namespace = self.fence.namespace, %error, "releasing the lease failed; it expires by itself");
        }
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// Renews the lease every `config.heartbeat` until it is lost, then sets `lost`.
async fn heartbeat(leases: Leases, fence: Fence, config: LeaseConfig, lost: watch::Sender<bool>) {
    loop {
        tokio::time::sleep(config.heartbeat).await;
        match leases.table.renew(&fence, config.ttl).await {
            Ok(true) => {}
            Ok(false) => {
                warn!(
                    namespace = fence.namespace,
                    epoch = fence.epoch,
                    "lost the lease: another instance took it; stopping"
                );
                lost.send_replace(true);
                return;
            }
            Err(error) => {
                warn!(namespace = fence.namespace, %error, "renewing the lease failed; retrying");
            }
        }
    }
}
