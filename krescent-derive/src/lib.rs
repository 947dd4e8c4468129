//! The derives and the `#[handlers]` attribute of [krescent](https://docs.rs/krescent); an
//! implementation detail of that crate, which re-exports them and documents them in full.
//!
//! ```
//! use krescent::prelude::*;
//! use std::collections::HashMap;
//!
//! #[derive(Event, Serialize, Deserialize)]
//! #[event(name = "book.added", revision = 1)]
//! struct BookAdded { book_id: String, copies: u32 }
//!
//! #[derive(EventModel, Default)]
//! #[model(name = "books.available", version = 1)]
//! #[checkpoint(strategy = "fixed_events(100) | fixed_time(5s)", storage = "memory")]
//! struct AvailableBooks {
//!     #[checkpoint]
//!     available: HashMap<String, u32>,
//!     lookups: u64,
//! }
//!
//! #[krescent::handlers]
//! impl AvailableBooks {
//!     fn added(&mut self, e: &BookAdded) {
//!         *self.available.entry(e.book_id.clone()).or_default() += e.copies;
//!     }
//! }
//! ```
//!
//! # Attributes
//!
//! | attribute | where | meaning |
//! | --- | --- | --- |
//! | `#[event(name = "...", revision = N)]` | event type | recorded type name (required); payload revision, from 1 (default 1), recorded with every appended event |
//! | `#[event(upcast(1 = V1, 2 = json(f), …))]` | event type | one hop from each older revision: a struct reading that revision's payloads and converting into the next revision's (`From`/`TryFrom`), or a `fn(serde_json::Value) -> Result<serde_json::Value, E>` over its JSON (JSON hops first); every older revision needs one, revision 1 has none |
//! | `#[event(old_names("...", …))]` | event type | names the type was recorded under before: handlers handle those events too |
//! | `#[event(compatible_since = N)]` | event type | revisions from `N` on only add what older events can supply: bumping the revision past `N` keeps checkpoints (needs `upcast`) |
//! | `#[model(name = "...", version = N)]` | model struct | name and checkpoint namespace (required); version (default 1) |
//! | `#[model(crate = "path")]`, `#[event(crate = "path")]`, `#[handlers(crate = "path")]` | | where the `krescent` crate is, when renamed |
//! | `#[model(exclusive)]` | model struct | one instance at a time runs it, holding its lease |
//! | `#[model(segments = N)]` | model struct | split into N segments (1 to 1024) by a stable hash of the stream id, each with its own checkpoint and lease; needs `#[checkpoint]`; a projection whose N changes between powers of two carries its checkpoints over (`krescent::fleet`, "Changing the count") |
//! | `#[checkpoint(strategy = "...", storage = "...")]` | model struct | when and where to checkpoint; without it the model replays everything on every start |
//! | `#[checkpoint(on_invalid = "rebuild" \| "fail")]` | model struct | what an unusable checkpoint does (default `rebuild`) |
//! | `#[checkpoint]` | field | serialized under the field's name; a `Vec<u8>` field is stored as bytes |
//! | `#[checkpoint(key = "...")]` | field | … under another key |
//! | `#[checkpoint(support)]` | field | the field's own `CheckpointSupport`, as a nested bucket under its key |
//! | `#[on_start]`, `#[on_caught_up]` | method in `#[handlers]` | `fn(&mut self, origin: &Origin)`, `fn(&mut self, position: Position)` |
//! | `#[group(A, B, …)]` | method in `#[handlers]` | the group handler, `fn(&mut self, group: Group<'_>)`: receives the events of the listed types a group at a time (see `krescent::group`); a block has it or per-event handlers, not both |
//!
//! Strategies are parsed at compile time: `fixed_events(N)` (N ≥ 1), `fixed_time(D)` with `D`
//! a whole number of `ms`, `s`, `m` or `h`, `always`, `manual`, `on_shutdown`, `never`, and any of
//! them joined with `|`.
//!
//! Every method of a `#[handlers]` block handles one event type: it takes `&mut self`, a
//! reference to the event and optionally `&EventMeta`, may be `async`, and returns `()` or
//! `Result<(), E>` with `E: Error + Send + Sync + 'static`. Other methods go in another `impl`
//! block.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod ast;
mod attr;
mod check;
mod ctxt;
mod expand;
mod strategy;
#[cfg(test)]
mod tests;
mod upcast;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Implements `krescent::Event`: `#[event(name = "book.added", revision = 1)]`, optionally
/// with `upcast(1 = BookAddedV1, …)`, `old_names("…")` and `compatible_since = N`.
///
/// The name is what a store records and what handlers dispatch on; the revision (default 1) is
/// recorded with every appended event and is part of the checkpoint version of every model
/// that handles the event. Events stored at an older revision are decoded through the
/// `upcast` hops. The type also needs serde's `Serialize` and `Deserialize`.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive_event(&input).into()
}

/// Implements `krescent::EventModel` and `krescent::CheckpointSupport` for a struct with named
/// fields: `#[model(name = "...", version = N)]`, optionally
/// `#[checkpoint(strategy = "...", storage = "...", on_invalid = "...")]`, and `#[checkpoint]`
/// on the fields that belong in a checkpoint.
///
/// The model's handlers come from a [`macro@handlers`] block.
#[proc_macro_derive(EventModel, attributes(model, checkpoint))]
pub fn derive_model(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive_model(&input).into()
}

/// Implements `krescent::Handlers` from an inherent `impl` block whose every method handles
/// one event type, with `#[on_start]` and `#[on_caught_up]` marking the lifecycle hooks.
///
/// Events are dispatched on their recorded type name before their payload is decoded.
#[proc_macro_attribute]
pub fn handlers(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::handlers(args.into(), input.into()).into()
}
