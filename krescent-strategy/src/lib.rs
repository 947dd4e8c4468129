//! The checkpoint strategy grammar of [krescent](https://docs.rs/krescent): the [`Strategy`]
//! value and its one parser, [`Strategy::parse`]; and the error policy grammar
//! ([`ErrorPolicy::parse`], `#[model(on_error = "...")]`).
//!
//! This crate is an implementation detail of `krescent`, which re-exports its items as
//! `krescent::checkpoint::{Strategy, StrategyError}`. It exists so that the derive (which
//! parses `#[checkpoint(strategy = "...")]` at compile time) and the runtime (which parses an
//! operator's override at start-up) share one grammar instead of two copies of it.
//!
//! ```
//! use krescent_strategy::Strategy;
//! use std::time::Duration;
//!
//! let strategy = Strategy::parse("fixed_events(1000) | fixed_time(5s)")?;
//! assert_eq!(strategy.parts()[1], Strategy::FixedTime(Duration::from_secs(5)));
//! assert_eq!(strategy.to_string(), "fixed_events(1000) | fixed_time(5s)");
//!
//! let mistake = Strategy::parse("fixed_evnts(5)").unwrap_err();
//! assert!(mistake.to_string().starts_with("unknown checkpoint strategy `fixed_evnts`; expected one of"));
//! # Ok::<(), krescent_strategy::StrategyError>(())
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod on_error;
mod parse;
mod strategy;

pub use on_error::{ErrorPolicy, ErrorPolicyError, Then, EXPECTED_POLICIES};
pub use parse::StrategyError;
pub use strategy::Strategy;

/// The strategies, as messages list them.
pub const EXPECTED: &str =
    "`fixed_events(N)`, `fixed_time(D)`, `always`, `manual`, `on_shutdown`, `never`";
