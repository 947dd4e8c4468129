//! Dead letters: what a model does when a handler fails on an event, and the events it parked.
//!
//! A model's [`ErrorPolicy`] is set by `#[model(on_error = "...")]` and overridden at start-up
//! by [`Configure::on_error`](crate::Configure::on_error):
//!
//! - `stop` (the default): the model stops with the handler's error, as it always did.
//! - `retry(N)`: the event is handled up to N times (the first included), 50 ms apart and
//!   doubling, then the next policy applies (`retry(N)` alone: then `stop`).
//! - `park`: the event is recorded as a [`ParkedEvent`] (its position, stream, type, the
//!   error's text and chain, the attempts and when) and the model goes on. Parking keeps each
//!   stream's order: while a stream has a parked event, its later events are parked behind it
//!   unhandled; other streams go on.
//! - `park(unordered)`: only the failing event is parked; its stream's later events are
//!   handled. For models that keep no state per stream (a counter, an append-only log).
//!
//! Only errors that are not transient count: a [`Transient`](crate::Transient) failure (the
//! database went away) restarts the model as its restart policy says, whatever the error
//! policy. Write models ([`Krescent::decide`](crate::Krescent::decide)) are never parked: a
//! decision's error goes to its caller.
//!
//! Parked events are kept where the model's checkpoints are
//! ([`CheckpointStorage::park`](crate::checkpoint::CheckpointStorage::park)): a row of
//! PostgreSQL's `krescent_parked` table, a `<namespace>.parked.json` file, or memory. A
//! [`PostgresProjection`](crate::projection::PostgresProjection) parks in its own transaction:
//! the failed event's writes are rolled back to a savepoint taken before it, and the parked
//! record commits with the checkpoint, so a crash neither loses nor repeats a parking. Other
//! models write their parked events to the storage before the checkpoint that covers them.
//!
//! [`Krescent::retry_parked`](crate::Krescent::retry_parked) handles a model's parked events
//! again, in position order, once the handler is fixed; those that fail again stay parked
//! with one more attempt. From outside the process, `krescent parked retry` marks them
//! ([`ParkedEvent::retry`]): a running model with parked events reads its parked set every
//! few seconds while it is idle, and handles the marked ones the same way (a model that is not
//! running does so when it starts).

mod parking;

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::Position;

pub use krescent_strategy::{ErrorPolicy, ErrorPolicyError, Then};
pub(crate) use parking::Parking;

/// An event a model did not apply: it failed (or waits behind one of its stream that did).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedEvent {
    /// The model's checkpoint namespace (its name, or its segment's namespace).
    pub namespace: String,
    /// The event's position in the store.
    pub position: Position,
    /// The event's stream.
    pub stream_id: String,
    /// The event's recorded type.
    pub event_type: String,
    /// The handler's error, or for an event parked behind another, which one.
    pub error: String,
    /// The error's causes, outermost first.
    pub chain: Vec<String>,
    /// How many times the handler failed on it (0: parked behind another, never handled).
    pub attempts: u32,
    /// When it was parked (or last retried).
    pub parked_at: SystemTime,
    /// The parked event of the same stream it waits behind; `None` when it failed itself.
    pub behind: Option<Position>,
    /// An operator asked for it to be handled again (`krescent parked retry`): the running
    /// model does so when it next polls its parked set, or when it next starts.
    #[serde(default)]
    pub retry: bool,
}

impl ParkedEvent {
    /// The error's text and its causes, as one line.
    #[must_use]
    pub fn describe(&self) -> String {
        let mut text = self.error.clone();
        for cause in &self.chain {
            text.push_str(": ");
            text.push_str(cause);
        }
        text
    }
}

/// The causes of `error`, outermost first (not `error` itself).
#[must_use]
pub fn causes(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut chain = Vec::new();
    let mut cause = error.source();
    while let Some(e) = cause {
        chain.push(e.to_string());
        cause = e.source();
    }
    chain
}
