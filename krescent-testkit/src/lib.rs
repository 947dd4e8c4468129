//! Test support for krescent: contract suites every store and storage must pass, a throwaway
//! PostgreSQL server, and the seeded benchmark workload of `WORKLOAD.md`.

pub mod contract;
pub mod workload;
