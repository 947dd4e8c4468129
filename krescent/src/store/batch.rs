//! A batch of events as a store hands it out: its own, or a shared slice of the store's memory.

use std::ops::{Deref, Range};
use std::sync::Arc;

use crate::event::RecordedEvent;

/// Events read at once, in order; dereferences to `[RecordedEvent]`.
///
/// Stores that keep their events in memory share a slice of them, so that reading a batch
/// costs one reference count instead of a copy of every event.
#[derive(Debug, Clone, Default)]
pub struct EventBatch {
    repr: Repr,
}

#[derive(Debug, Clone)]
enum Repr {
    Owned(Vec<RecordedEvent>),
    Shared {
        events: Arc<[RecordedEvent]>,
        range: Range<usize>,
    },
}

impl Default for Repr {
    fn default() -> Self {
        Repr::Owned(Vec::new())
    }
}

impl EventBatch {
    /// The events of `range` in `events`.
    ///
    /// # Panics
    /// When `range` is not within `events`.
    #[must_use]
    pub fn shared(events: Arc<[RecordedEvent]>, range: Range<usize>) -> Self {
        assert!(
            range.start <= range.end && range.end <= events.len(),
            "the range {range:?} lies within the {} events",
            events.len()
        );
        EventBatch {
            repr: Repr::Shared { events, range },
        }
    }

    /// The events, copied out if they are shared.
    #[must_use]
    pub fn into_vec(self) -> Vec<RecordedEvent> {
        match self.repr {
            Repr::Owned(events) => events,
            Repr::Shared { events, range } => events[range].to_vec(),
        }
    }
}

impl From<Vec<RecordedEvent>> for EventBatch {
    fn from(events: Vec<RecordedEvent>) -> Self {
        EventBatch {
            repr: Repr::Owned(events),
        }
    }
}

impl Deref for EventBatch {
    type Target = [RecordedEvent];

    fn deref(&self) -> &[RecordedEvent] {
        match &self.repr {
            Repr::Owned(events) => events,
            Repr::Shared { events, range } => &events[range.clone()],
        }
    }
}
