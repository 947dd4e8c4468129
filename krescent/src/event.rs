//! Events: the trait user types implement, and the events a store holds.

use std::sync::Arc;
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use crate::Position;

/// A domain event: a serde type with a stable type name and revision.
///
/// Usually derived: `#[derive(Event)]` with `#[event(name = "book.added", revision = 1)]`.
/// The name is what a store records and what handlers dispatch on; the revision is part of the
/// checkpoint version of every model that handles the event, so bumping it invalidates their
/// checkpoints.
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The recorded type name, such as `"book.added"`.
    const NAME: &'static str;
    /// The revision of the payload's shape; starts at 1.
    const REVISION: u32;
}

/// The name and revision of an event type, as a model's checkpoint version sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventType {
    /// The recorded type name.
    pub name: &'static str,
    /// The payload revision.
    pub revision: u32,
}

impl EventType {
    /// The type of `E`.
    #[must_use]
    pub const fn of<E: Event>() -> Self {
        EventType {
            name: E::NAME,
            revision: E::REVISION,
        }
    }
}

/// Where and when a recorded event was stored; handed to handlers that ask for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta {
    /// The event's unique id.
    pub event_id: Uuid,
    /// The stream the event was appended to.
    pub stream_id: Arc<str>,
    /// The event's version within its stream, from 1.
    pub stream_version: u64,
    /// The event's place in the store's global order.
    pub position: Position,
    /// When the store recorded the event.
    pub recorded_at: SystemTime,
    /// The recorded type name.
    pub event_type: Arc<str>,
}

/// An event as a store holds it: its metadata and its JSON payload, not yet decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Where and when it was stored.
    pub meta: EventMeta,
    /// The payload, as JSON text.
    pub payload: Arc<str>,
}

impl RecordedEvent {
    /// The recorded type name.
    #[must_use]
    pub fn event_type(&self) -> &str {
        &self.meta.event_type
    }

    /// The event's place in the global order.
    #[must_use]
    pub fn position(&self) -> Position {
        self.meta.position
    }

    /// Decodes the payload as `E`.
    ///
    /// # Errors
    /// [`DecodeError`] naming the event type and position when the payload is not a valid `E`.
    pub fn decode<E: Event>(&self) -> Result<E, DecodeError> {
        serde_json::from_str(&self.payload).map_err(|source| DecodeError {
            event_type: self.meta.event_type.to_string(),
            position: self.meta.position,
            source,
        })
    }
}

/// A payload that does not decode as the type its name says.
#[derive(Debug, thiserror::Error)]
#[error("malformed payload of `{event_type}` event at position {position}: {source}")]
pub struct DecodeError {
    /// The recorded type name.
    pub event_type: String,
    /// Where the event is.
    pub position: Position,
    /// What serde said.
    #[source]
    pub source: serde_json::Error,
}

/// An event to append: its type name, JSON payload and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The event's unique id.
    pub event_id: Uuid,
    /// The recorded type name.
    pub event_type: Arc<str>,
    /// The payload, as JSON text.
    pub payload: Arc<str>,
}

impl NewEvent {
    /// Serializes `event` with a fresh id.
    ///
    /// Ids are `UUIDv7`: time-ordered, so a store's unique index on them grows at its end instead
    /// of splitting pages at random.
    ///
    /// # Errors
    /// When serde cannot serialize the event (for example a map with non-string keys).
    pub fn new<E: Event>(event: &E) -> Result<Self, serde_json::Error> {
        Ok(NewEvent {
            event_id: Uuid::now_v7(),
            event_type: E::NAME.into(),
            payload: serde_json::to_string(event)?.into(),
        })
    }

    /// An event from an already encoded payload, with a fresh (`UUIDv7`) id; the payload must be
    /// JSON.
    ///
    /// # Errors
    /// When `payload` is not valid JSON.
    pub fn from_json(event_type: &str, payload: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str::<serde::de::IgnoredAny>(payload)?;
        Ok(NewEvent {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            payload: payload.into(),
        })
    }
}
