//! The connection pools: building them, and taking a connection with a bounded wait.

use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType,
};
use tokio_postgres::NoTls;

// cycle: a pool that hands out no connection fails with a `DbFailure` (`error.rs`), whose
// `Exhausted` carries this file's `PoolExhausted`.
use super::DbFailure;

/// Which of a store's pools a connection is taken from, as errors name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolRole {
    /// The store's pool ([`PostgresConfig::pool_size`](super::PostgresConfig::pool_size)):
    /// reads, appends, checkpoint writes and leases, each holding a connection only for its
    /// statements.
    Store,
    /// The pool of projection transactions
    /// ([`PostgresConfig::projection_pool_size`](super::PostgresConfig::projection_pool_size)):
    /// a [`PostgresProjection`](crate::projection::PostgresProjection) holds one connection of it
    /// from its transaction's first statement to its checkpoint's commit.
    Projections,
}

impl PoolRole {
    fn setting(self) -> &'static str {
        match self {
            PoolRole::Store => "pool_size",
            PoolRole::Projections => "projection_pool_size",
        }
    }
}

impl std::fmt::Display for PoolRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PoolRole::Store => "store",
            PoolRole::Projections => "projection transactions",
        })
    }
}

/// No connection of a pool became free within the pool's wait bound
/// ([`PostgresConfig::pool_wait`](super::PostgresConfig::pool_wait)): all of them were in use.
///
/// It is transient: a streaming model restarts from its last checkpoint with backoff. Seen
/// often, the pool is too small for the models the process runs: the README's "Connections"
/// says what each model costs.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no connection of the {pool} pool became free within {}: all {size} are in use (raise `PostgresConfig::{}`, or run fewer models here)", waited.map_or_else(|| "its wait bound".to_owned(), |w| format!("{w:?}")), pool.setting())]
pub struct PoolExhausted {
    /// The pool.
    pub pool: PoolRole,
    /// Its size.
    pub size: usize,
    /// How long the wait was bounded to, when the pool has a bound.
    pub waited: Option<Duration>,
}

/// A pool of up to `size` connections to `config` (at least one), without TLS, replacing
/// closed ones; taking a connection waits at most `wait`.
pub(crate) fn pool(
    config: tokio_postgres::Config,
    size: usize,
    wait: Duration,
) -> Result<Pool, DbFailure> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(wait))
        .create_timeout(Some(Duration::from_secs(10)))
        .recycle_timeout(Some(Duration::from_secs(10)))
        .build()
        .map_err(|e| DbFailure::Other(e.to_string()))
}

/// A connection of `pool`, the `role` it plays named when none became free in time.
pub(crate) async fn checkout(pool: &Pool, role: PoolRole) -> Result<Object, DbFailure> {
    pool.get().await.map_err(|e| exhausted(pool, role, e))
}

/// A connection of a store's pool ([`PoolRole::Store`]).
pub(crate) async fn store_connection(pool: &Pool) -> Result<Object, DbFailure> {
    checkout(pool, PoolRole::Store).await
}

/// `error`, a failure to take a connection of `pool`: [`PoolExhausted`] when the wait for a free
/// one timed out, else as it is.
fn exhausted(pool: &Pool, role: PoolRole, error: PoolError) -> DbFailure {
    match error {
        PoolError::Timeout(TimeoutType::Wait) => DbFailure::Exhausted(PoolExhausted {
            pool: role,
            size: pool.status().max_size,
            waited: pool.timeouts().wait,
        }),
        other => DbFailure::Pool(other),
    }
}
