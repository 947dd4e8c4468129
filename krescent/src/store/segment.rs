//! What one segment of a split model reads at once: its events, and how far the read covered.

use super::EventBatch;
use crate::Position;

/// The events a segment read after a position, and the position up to which the read saw
/// every event: a segment at `read_to` has processed (or skipped) everything up to it.
///
/// A store that filters by the server returns only the segment's events, and `read_to` beyond
/// the last of them when the read reached the head: the segment moves up to it although none
/// of the events there were its own, so that a quiet segment is caught up too. A store that
/// filters in the process returns every event and the last one's position (the segment's run
/// skips the others' events).
#[derive(Debug, Clone, Default)]
pub struct SegmentBatch {
    events: EventBatch,
    read_to: Position,
}

impl SegmentBatch {
    /// `events` read after `after` up to `read_to` (at least the last event's position and
    /// `after`: a smaller `read_to` is raised to them).
    #[must_use]
    pub fn new(events: EventBatch, after: Position, read_to: Position) -> Self {
        let last = events.last().map_or(after, crate::RecordedEvent::position);
        SegmentBatch {
            read_to: read_to.max(last).max(after),
            events,
        }
    }

    /// Every event read after `after` (the segment's run skips the other segments'): read up
    /// to the last of them.
    #[must_use]
    pub fn unfiltered(events: EventBatch, after: Position) -> Self {
        Self::new(events, after, after)
    }

    /// The events read, in position order.
    #[must_use]
    pub fn events(&self) -> &EventBatch {
        &self.events
    }

    /// The position up to which the read saw every event.
    #[must_use]
    pub fn read_to(&self) -> Position {
        self.read_to
    }
}
