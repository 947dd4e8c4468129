//! Queries over the events of a store, and the condition an append may be made under.

use std::collections::BTreeSet;
use std::fmt;

use crate::event::RecordedEvent;
use crate::Position;

/// Which events a reader is interested in: those of any of its streams, and those of any of its
/// event types (a union: an event matches when its stream **or** its type is named).
///
/// ```
/// use krescent::store::Query;
///
/// let query = Query::stream("book-dune").or_stream("member-ada").or_type("library.closed");
/// assert!(query.names_stream("member-ada"));
/// assert!(!Query::default().names_stream("book-dune"), "the empty query matches nothing");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Query {
    streams: BTreeSet<String>,
    types: BTreeSet<String>,
}

impl Query {
    /// The events of `stream_id`.
    #[must_use]
    pub fn stream(stream_id: impl Into<String>) -> Self {
        Query::default().or_stream(stream_id)
    }

    /// The events of any of `stream_ids`.
    #[must_use]
    pub fn streams<I: IntoIterator<Item = T>, T: Into<String>>(stream_ids: I) -> Self {
        Query {
            streams: stream_ids.into_iter().map(Into::into).collect(),
            types: BTreeSet::new(),
        }
    }

    /// The events of any of the recorded type names `event_types`, in every stream.
    #[must_use]
    pub fn types<I: IntoIterator<Item = T>, T: Into<String>>(event_types: I) -> Self {
        Query {
            streams: BTreeSet::new(),
            types: event_types.into_iter().map(Into::into).collect(),
        }
    }

    /// This query, and also the events of `stream_id`.
    #[must_use]
    pub fn or_stream(mut self, stream_id: impl Into<String>) -> Self {
        self.streams.insert(stream_id.into());
        self
    }

    /// This query, and also the events of the recorded type name `event_type`.
    #[must_use]
    pub fn or_type(mut self, event_type: impl Into<String>) -> Self {
        self.types.insert(event_type.into());
        self
    }

    /// The streams the query names, sorted.
    pub fn stream_ids(&self) -> impl Iterator<Item = &str> {
        self.streams.iter().map(String::as_str)
    }

    /// The event types the query names, sorted.
    pub fn event_types(&self) -> impl Iterator<Item = &str> {
        self.types.iter().map(String::as_str)
    }

    /// Whether the query names `stream_id` (and so matches every event of it).
    #[must_use]
    pub fn names_stream(&self, stream_id: &str) -> bool {
        self.streams.contains(stream_id)
    }

    /// Whether the query names no stream and no type: it matches nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty() && self.types.is_empty()
    }

    /// Whether `event` matches.
    #[must_use]
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        self.streams.contains(&*event.meta.stream_id) || self.types.contains(event.event_type())
    }
}

/// As `streams [a, b] | types [t]`, for error messages.
impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |f: &mut fmt::Formatter<'_>, what: &str, items: &BTreeSet<String>| {
            write!(f, "{what} [")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "`{item}`")?;
            }
            f.write_str("]")
        };
        match (self.streams.is_empty(), self.types.is_empty()) {
            (true, true) => f.write_str("nothing"),
            (false, true) => list(f, "streams", &self.streams),
            (true, false) => list(f, "types", &self.types),
            (false, false) => {
                list(f, "streams", &self.streams)?;
                f.write_str(" | ")?;
                list(f, "types", &self.types)
            }
        }
    }
}

/// "Nothing matching `query` was appended after `read_at`": the condition of
/// [`EventStore::append_if`](super::EventStore::append_if), optimistic concurrency over a query
/// rather than one stream's version.
///
/// A decider reads the events matching its query up to some position, decides, and appends
/// under this condition: if another writer appended a matching event in the meantime, the
/// append is refused with [`StoreError::QueryConflict`](super::StoreError::QueryConflict) and
/// writes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendCondition {
    /// The events the decision depends on.
    pub query: Query,
    /// The position the decider had read the query up to (the store's head when it read).
    pub read_at: Position,
}

impl AppendCondition {
    /// Nothing matching `query` after `read_at`.
    #[must_use]
    pub fn new(query: Query, read_at: Position) -> Self {
        AppendCondition { query, read_at }
    }
}
