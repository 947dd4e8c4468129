//! Test support for krescent: contract suites every store and storage must pass, a throwaway
//! `PostgreSQL` server, a throwaway S3 server (`moto`), a recording checkpoint storage, and the
//! seeded benchmark workload of `WORKLOAD.md`.

// The contract suites and the test server are assertions: panicking is how they report.
#![allow(clippy::missing_panics_doc)]

pub mod contract;
pub mod counting;
pub mod examples;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod recording;
#[cfg(feature = "object-store")]
pub mod s3;
#[cfg(any(feature = "postgres", feature = "object-store"))]
mod watchdog;
pub mod workload;
