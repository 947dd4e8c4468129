//! Test support for krescent: contract suites every store and storage must pass, a throwaway
//! PostgreSQL server, and the seeded benchmark workload of `WORKLOAD.md`.

pub mod contract;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod workload;
