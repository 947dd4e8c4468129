//! Event-sourced models with declarative checkpointing.
//!
//! A model is a struct that derives [`EventModel`], marks the fields that belong in a checkpoint,
//! and handles events in ordinary methods. krescent replays the store into it, saves its state
//! with the position of the last event it processed when the strategy says so, and on the next
//! start resumes from there instead of replaying everything.
//!
//! ```
//! use krescent::prelude::*;
//! use std::collections::HashMap;
//!
//! #[derive(Event, Serialize, Deserialize)]
//! #[event(name = "book.added")]
//! struct BookAdded { book_id: String, copies: u32 }
//!
//! #[derive(EventModel, Default)]
//! #[model(name = "books.available", version = 1)]
//! #[checkpoint(strategy = "fixed_events(25)", storage = "memory")]
//! struct AvailableBooks {
//!     #[checkpoint]
//!     available: HashMap<String, u32>,
//! }
//!
//! #[krescent::handlers]
//! impl AvailableBooks {
//!     fn added(&mut self, e: &BookAdded) {
//!         *self.available.entry(e.book_id.clone()).or_default() += e.copies;
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let krescent = Krescent::new(InMemoryEventStore::new());
//! let added = BookAdded { book_id: "dune".into(), copies: 2 };
//! krescent.store().append("book-dune", ExpectedVersion::NoStream, vec![NewEvent::new(&added)?]).await?;
//!
//! let caught_up = krescent.catch_up(AvailableBooks::default()).await?;
//! assert_eq!(caught_up.model.available["dune"], 2);
//! assert_eq!(caught_up.origin, Origin::Scratch);
//! assert_eq!(caught_up.position, Position::new(1));
//! # Ok(())
//! # }
//! ```
//!
//! # Attributes
//!
//! | attribute | where | meaning |
//! | --- | --- | --- |
//! | `#[event(name = "...", revision = N)]` | event struct | recorded type name; payload revision (default 1) |
//! | `#[model(name = "...", version = N)]` | model struct | checkpoint namespace; model version |
//! | `#[model(crate = "path")]` | model struct | where the `krescent` crate is, when renamed |
//! | `#[model(exclusive)]` | model struct | one instance at a time runs it, holding its lease (PostgreSQL; see [`fleet`]) |
//! | `#[model(on_error = "...")]` | model struct | what a handler's failure does: `stop` (default), `retry(N)`, `park`, `park(unordered)`, `retry(N) \| park` (see [`deadletter`]) |
//! | `#[checkpoint(strategy = "...", storage = "...")]` | model struct | when and where to checkpoint; without it the model replays everything on every start |
//! | `#[checkpoint(on_invalid = "rebuild" \| "fail")]` | model struct | what an unusable checkpoint does (default `rebuild`) |
//! | `#[checkpoint]` | field | serialized into the checkpoint under the field's name |
//! | `#[checkpoint(key = "...")]` | field | … under another key |
//! | `#[checkpoint(support)]` | field | an extension with its own [`CheckpointSupport`], under its key |
//!
//! In a `#[krescent::handlers]` block every method handles one event type, named by its first
//! parameter: `&BookAdded`, or `BookAdded` by value to move the event's data into the model
//! without cloning it. It may also take `&EventMeta`, be `async`, and return `()` or
//! `Result<(), E>`. Two hooks may join them: `#[on_start] fn started(&mut self, origin: &Origin)`
//! and `#[on_caught_up] fn caught_up(&mut self, position: Position)`. Other methods belong in
//! another `impl` block. Instead of per-event handlers, a block may have one group handler,
//! `#[group(BookAdded, BookLent)] async fn books(&mut self, group: Group<'_>)`, which receives
//! the model's events a [`Group`] at a time (up to each checkpoint), for set-based writes: see
//! the [`group`] module.
//!
//! Strategies: `fixed_events(N)`, `fixed_time(D)` (`ms`, `s`, `m`, `h`), `always`, `manual`,
//! `on_shutdown`, `never`, and any of them joined with `|`.
//! Storages are named and resolved when a model starts (an unknown name is an error before any
//! event is processed). Only `"memory"` is registered by default; register the others under
//! the name your models use with [`Krescent::with_storage`]:
//! [`FileCheckpointStorage`](checkpoint::FileCheckpointStorage) (for example as `"file"`) and,
//! with the `postgres` feature, [`PostgresCheckpointStorage`](checkpoint::PostgresCheckpointStorage)
//! (for example as `"postgres"`), with the `object-store` feature,
//! [`ObjectStoreCheckpointStorage`](checkpoint::ObjectStoreCheckpointStorage) (S3 and
//! S3-compatible buckets, or any `object_store` backend).
//!
//! The attribute's strategy and storage are defaults: [`Krescent::configure`] overrides them
//! at start-up, parsed by the same grammar, for example from a configuration file.
//! `manual` checkpoints only when asked through [`Running::request_checkpoint`], so a model
//! run by [`Krescent::catch_up`] with `manual` alone never checkpoints.
//!
//! A streaming model is restarted from its last checkpoint after a backoff when a failure is
//! transient ([`Error::is_transient`]: the database went away, or a handler error marked
//! [`Transient`]): [`Krescent::stream`] restores its one model value in place,
//! [`Krescent::stream_with`] builds a fresh one; the [`supervisor`] runs many models that way
//! in one process and reports each.
//!
//! **Write models** decide commands from a stream's state: [`Krescent::decide`] loads a
//! `Default` model from the stream's snapshot and events, calls the decision with `&M`, appends
//! what it returns with the loaded version as the expected version, retries on conflict, and
//! snapshots per stream (never from state with an event the store does not hold);
//! [`Krescent::decide_on`] decides over a [`Query`](store::Query) of several streams or event
//! types with an [`AppendCondition`](store::AppendCondition). See the [`decide`] module.
//!
//! Every running model records its progress, checkpoints and lag through the `metrics`
//! facade (the [`metrics` module](crate::metrics) lists the names); the application installs the
//! recorder, krescent none.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

// The modules are layered, lowest first: values (position, event, group, hash, durable, transient),
// fleet, model (model, metrics, checkpoint, the store's contract), postgres, the checkpoint
// storages, the stores, projection, error, run, the API (krescent, decide), supervisor.
// A module uses only the layers below it: docs/architecture.md, checked by .ci/layers.py.
pub mod checkpoint;
pub mod deadletter;
pub mod decide;
mod durable;
mod error;
pub mod event;
pub mod fleet;
pub mod group;
mod hash;
mod krescent;
pub mod metadata;
pub mod metrics;
pub mod model;
mod position;
#[cfg(feature = "postgres")]
mod postgres;
pub mod projection;
mod run;
pub mod store;
pub mod supervisor;
mod transient;
pub mod upcast;

pub use checkpoint::{CheckpointBucket, CheckpointSupport};
pub use decide::{Decide, DecideError, Decided, Loaded};
pub use error::Error;
pub use event::{DecodeError, Event, EventMeta, EventType, NewEvent, RecordedEvent};
pub use group::{Group, GroupEvent};
pub use krescent::{Configure, Krescent};
pub use krescent_derive::{handlers, Event, EventModel};
pub use metadata::Metadata;
pub use model::{EventModel, HandlerError, Handlers, Origin};
pub use position::{Position, PositionParseError};
pub use run::{CaughtUp, Restored, Running, Status};
pub use transient::Transient;

/// The attribute that implements [`CheckpointStorage`](checkpoint::CheckpointStorage) and
/// [`CheckpointTransaction`](checkpoint::CheckpointTransaction) need: `#[krescent::async_trait]`
/// (the `async-trait` crate, re-exported; those traits are used as `dyn` objects, which a
/// native `async fn` in a trait does not allow).
pub use async_trait::async_trait;

/// The PostgreSQL driver the `postgres` feature uses, re-exported so that parameters of
/// [`PostgresProjection::execute`](projection::PostgresProjection::execute) (`ToSql`) and the
/// pool match krescent's versions.
#[cfg(feature = "postgres")]
pub use tokio_postgres;

/// The connection pool the `postgres` feature uses ([`checkpoint::PostgresPool`] is its `Pool`).
#[cfg(feature = "postgres")]
pub use deadpool_postgres;

/// What a first program needs: `use krescent::prelude::*;` brings the derives and
/// `#[handlers]`, the entry point and what it returns ([`Krescent`], [`Origin`], [`Position`],
/// [`Error`] and its [`HandlerError`] and [`DecodeError`]), the store trait with the in-memory
/// store and [`ExpectedVersion`](store::ExpectedVersion), a streaming model's [`Running`] and
/// its [`Status`], event [`Metadata`], the write side ([`DecideError`],
/// [`Decided`], [`Query`](store::Query)), and serde's derives.
pub mod prelude {
    pub use crate::store::{EventStore, ExpectedVersion, InMemoryEventStore, Query};
    pub use crate::{
        handlers, CaughtUp, DecideError, Decided, DecodeError, Error, Event, EventMeta, EventModel,
        Group, HandlerError, Krescent, Metadata, NewEvent, Origin, Position, Running, Status,
    };
    pub use serde::{Deserialize, Serialize};
}

#[doc(hidden)]
pub mod __private;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
