//! Checking a lease's fence inside a commit's own transaction.

use deadpool_postgres::ClientWrapper;

use super::{DbFailure, Names};
use crate::fleet::Fence;

/// Why a fenced commit may not go on.
pub(crate) enum FenceFailure {
    /// The lease is held by another holder or under another epoch (`None`: no lease row).
    Lost { current: Option<u64> },
    /// The database failed.
    Db(DbFailure),
}

impl From<DbFailure> for FenceFailure {
    fn from(e: DbFailure) -> Self {
        FenceFailure::Db(e)
    }
}

impl From<tokio_postgres::Error> for FenceFailure {
    fn from(e: tokio_postgres::Error) -> Self {
        FenceFailure::Db(e.into())
    }
}

/// A lease's `ttl` as a value of `idle_in_transaction_session_timeout` (milliseconds, at least
/// 1, at most the setting's maximum): a transaction of a lease holder that sits idle longer,
/// its process paused or cut off, is ended by the server and frees what it locked.
pub(crate) fn idle_timeout(ttl: std::time::Duration) -> u128 {
    ttl.as_millis().clamp(1, i32::MAX as u128)
}

/// The statement that bounds the rest of the open transaction's idle time by `ttl`
/// ([`idle_timeout`]).
pub(crate) fn idle_bound(ttl: std::time::Duration) -> String {
    format!(
        "SET LOCAL idle_in_transaction_session_timeout = {}",
        idle_timeout(ttl)
    )
}

/// Checks, in `client`'s open transaction, that `fence` still holds, and locks the lease
/// row `FOR SHARE` until the transaction ends, so that a takeover waits for this commit.
pub(crate) async fn check_fence(
    client: &ClientWrapper,
    names: &Names,
    fence: &Fence,
) -> Result<(), FenceFailure> {
    client.batch_execute(&idle_bound(fence.ttl)).await?;
    let sql = format!(
        "SELECT holder, epoch FROM {} WHERE checkpoints = $1 AND namespace = $2 FOR SHARE",
        names.leases
    );
    let statement = client.prepare_cached(&sql).await?;
    let row = client
        .query_opt(&statement, &[&names.checkpoints_plain, &fence.namespace])
        .await?;
    let Some(row) = row else {
        return Err(FenceFailure::Lost { current: None });
    };
    let holder: String = row.try_get(0)?;
    let epoch: i64 = row.try_get(1)?;
    let epoch = u64::try_from(epoch).ok();
    if holder == fence.holder && epoch == Some(fence.epoch) {
        Ok(())
    } else {
        Err(FenceFailure::Lost { current: epoch })
    }
}

impl FenceFailure {
    /// As a storage error about `fence`, saying what was being done.
    pub(crate) fn storage(
        self,
        fence: &Fence,
        doing: impl Into<String>,
    ) -> crate::checkpoint::StorageError {
        match self {
            FenceFailure::Lost { current } => crate::checkpoint::StorageError::Fenced {
                namespace: fence.namespace.clone(),
                epoch: fence.epoch,
                current,
            },
            FenceFailure::Db(e) => e.storage(doing),
        }
    }
}
