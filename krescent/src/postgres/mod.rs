//! The crate-internal PostgreSQL layer (feature `postgres`): what the event store, the
//! checkpoint storage, the projections and the leases share — the names of the tables, the
//! connection pools, the migrations, the driver's failures, the lease rows and the fence check.
//! It knows the contracts it serves (`StoreError`, `StorageError`, `fleet`), never the stores or
//! storages built on it.

mod config;
mod error;
mod fence;
mod lease;
mod pool;
mod schema;

pub use config::PostgresConfig;
pub(crate) use config::{identifier, Names, DELTAS_TABLE, LEASES_TABLE};
pub(crate) use error::{transient_cause, DbFailure};
pub(crate) use fence::{check_fence, idle_bound, idle_timeout, FenceFailure};
pub(crate) use pool::{checkout, pool, store_connection};
pub use pool::{PoolExhausted, PoolRole};
pub(crate) use schema::{migrate, Component};
