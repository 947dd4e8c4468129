//! Group handlers: a model's one handler that receives its events a group at a time, in order,
//! to write set-based SQL per group (one multi-row upsert, one `COPY` per table) instead of
//! statements per event. Akka Projections' `groupedWithin`, with the groups the runner forms
//! anyway.
//!
//! Mark the handler `#[group(A, B, …)]` in `#[krescent::handlers]`, naming the event types it
//! receives: `async fn rebuild(&mut self, group: Group<'_>) -> Result<(), E>`. It replaces the
//! per-event handlers (a block has one or the other).
//!
//! **How groups are formed.** A group is the model's events (of the listed types, and of its
//! segment when split) of one read of the store, up to where the checkpoint strategy falls
//! due: with `fixed_events(1000)` a rebuild's groups are about 1,000 events, each committed
//! with its checkpoint right after the handler returns (a model that is not transactional
//! takes its checkpoint there when its writer is free, or at the end of a later group); a
//! read ends a group too, so a model
//! that has caught up never waits for more events to fill one (a live event is a group of
//! one, or of the few that arrived together). With an `on_error` policy that retries or parks,
//! every event is a group of its own, so that a failure is its event's.
//!
//! **Errors.** A group fails as a whole: a payload that does not decode is named at its own
//! event when the handler's error carries the [`DecodeError`] as itself or among its sources
//! (`#[error("…")] Decode(#[from] DecodeError)`, not `#[error(transparent)]`, which skips
//! it); any other error the handler returns, or a failed statement it queued,
//! is reported as [`Error::Handler`](crate::Error::Handler) at the group's **last** event (the
//! event the checkpoint would have covered; a queued statement's
//! [`ProjectionError::queued_by`](crate::projection::ProjectionError::queued_by) names it too),
//! and everything since the last checkpoint is rolled back, the group's writes with it.

use crate::event::{DecodeError, Event, EventMeta, RecordedEvent};
use crate::Position;

/// The events of one group, in order, for a `#[group(...)]` handler.
#[derive(Debug, Clone, Copy)]
pub struct Group<'a> {
    events: &'a [&'a RecordedEvent],
}

impl<'a> Group<'a> {
    /// A group of `events`, in their order.
    #[must_use]
    pub fn new(events: &'a [&'a RecordedEvent]) -> Self {
        Group { events }
    }

    /// How many events the group holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether the group holds no event (the runner never hands one over).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The position of the group's first event.
    #[must_use]
    pub fn first(&self) -> Option<Position> {
        self.events.first().map(|e| e.position())
    }

    /// The position of the group's last event: where its checkpoint stands.
    #[must_use]
    pub fn last(&self) -> Option<Position> {
        self.events.last().map(|e| e.position())
    }

    /// The group's events, in order.
    #[must_use]
    pub fn iter(&self) -> impl ExactSizeIterator<Item = GroupEvent<'a>> + 'a {
        self.events.iter().map(|event| GroupEvent { event })
    }
}

impl<'a> IntoIterator for Group<'a> {
    type Item = GroupEvent<'a>;
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, &'a RecordedEvent>,
        fn(&'a &'a RecordedEvent) -> GroupEvent<'a>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.events.iter().map(|event| GroupEvent { event })
    }
}

/// One event of a [`Group`], not yet decoded: decode it as the type it is.
#[derive(Debug, Clone, Copy)]
pub struct GroupEvent<'a> {
    event: &'a RecordedEvent,
}

impl<'a> GroupEvent<'a> {
    /// Where and when it was stored: its position, stream, type name, metadata.
    #[must_use]
    pub fn meta(&self) -> &'a EventMeta {
        &self.event.meta
    }

    /// Its position.
    #[must_use]
    pub fn position(&self) -> Position {
        self.event.meta.position
    }

    /// Whether it is an `E` (recorded under `E`'s name or one of its old names).
    #[must_use]
    pub fn is<E: Event>(&self) -> bool {
        crate::event::is_named(self.event.event_type(), E::NAME, E::OLD_NAMES)
    }

    /// The event decoded as `E` when it is one (through `E`'s upcasts when it was stored at an
    /// older revision); `None` when it is of another type.
    ///
    /// # Errors
    /// [`DecodeError`] naming the event's type, position and revision when it is an `E` whose
    /// payload does not decode.
    pub fn decode<E: Event>(&self) -> Result<Option<E>, DecodeError> {
        if self.is::<E>() {
            self.event.decode().map(Some)
        } else {
            Ok(None)
        }
    }

    /// The event as the store holds it.
    #[must_use]
    pub fn recorded(&self) -> &'a RecordedEvent {
        self.event
    }
}
