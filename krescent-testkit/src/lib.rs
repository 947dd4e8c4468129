//! Test support for krescent: contract suites every store and storage must pass, a throwaway
//! PostgreSQL server, and the seeded benchmark workload.

pub mod contract;
