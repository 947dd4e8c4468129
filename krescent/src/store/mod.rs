//! Event stores: where events are appended and read back in one global order.

mod batch;
mod error;
mod file;
mod log;
mod memory;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
mod query;
mod segment;
mod subscription;

use std::future::Future;

pub use batch::EventBatch;
pub use error::StoreError;
pub use file::{FileEventStore, FileStoreOptions, DEFAULT_SEGMENT_BYTES};
pub use memory::InMemoryEventStore;
#[cfg(feature = "postgres")]
pub use postgres::{PoolExhausted, PoolRole, PostgresConfig, PostgresEventStore};
pub use query::{AppendCondition, Query};
pub use segment::SegmentBatch;
pub use subscription::Subscription;

use crate::event::{NewEvent, RecordedEvent};
use crate::fleet::Segment;
use crate::Position;

/// How many events a running model reads at once, at most; a store may size its buffers by it.
/// (The in-memory log hands out at most one chunk of 1024; for Postgres, 4096 rows a query cost
/// the server ~10 % less per event than 1024 in the benchmark's replay, and 16384 no less than
/// 4096.)
pub(crate) const BATCH: usize = 4096;

/// The key `streams` already holds for `stream`, shared, or a new one: every event of a stream
/// points at one allocation of its id.
pub(crate) fn stream_key<V>(
    streams: &std::collections::HashMap<std::sync::Arc<str>, V>,
    stream: &str,
) -> std::sync::Arc<str> {
    streams
        .get_key_value(stream)
        .map_or_else(|| stream.into(), |(key, _)| key.clone())
}

/// Refuses an append whose payloads are not JSON or whose revisions are 0, before anything is
/// written: every store holds payloads as JSON text, and agrees on refusing what is not.
pub(crate) fn check_payloads(stream_id: &str, events: &[NewEvent]) -> Result<(), StoreError> {
    for (i, event) in events.iter().enumerate() {
        if event.revision == 0 {
            return Err(StoreError::Rejected {
                stream: stream_id.to_owned(),
                reason: format!(
                    "event {i} (`{}`) has revision 0; revisions start at 1",
                    event.event_type
                ),
            });
        }
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&event.payload) {
            return Err(StoreError::Rejected {
                stream: stream_id.to_owned(),
                reason: format!(
                    "the payload of event {i} (`{}`) is not JSON: {e}",
                    event.event_type
                ),
            });
        }
    }
    Ok(())
}

/// What the writer of an append expects its stream's version to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream has no events yet.
    NoStream,
    /// The stream's last event has this version (versions count from 1).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream currently at `actual` (0 for no stream) satisfies the expectation.
    #[must_use]
    pub fn matches(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(v) => actual == v,
        }
    }
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The position of the last appended event (of the store's head for an empty append).
    pub position: Position,
    /// The stream's version after the append.
    pub stream_version: u64,
}

/// A store of events in one global order.
///
/// Every store of this crate passes the same contract suite (`tests/store_contract.rs`):
/// positions increase strictly in the order [`read_after`](Self::read_after) returns them, a
/// reader never sees an event before all earlier positions are visible, and an append of several
/// events is all or nothing.
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream_id` in one step, if the stream's version matches `expected`.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] naming the stream and both versions when it does not match;
    /// nothing is written then.
    fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<Appended, StoreError>> + Send;

    /// Appends like [`append`](Self::append), and only if moreover no event matching
    /// `condition.query` was appended after `condition.read_at`: optimistic concurrency over a
    /// query (several streams, event types) rather than one stream's version. The check and the
    /// append are one step: no matching event can slip in between.
    ///
    /// Every store of this crate implements it; the default refuses with
    /// [`StoreError::Unsupported`] (a store of your own must implement it to serve decisions).
    ///
    /// # Errors
    /// [`StoreError::QueryConflict`] naming the stream, the query and both positions when a
    /// matching event was appended; [`StoreError::Conflict`] as for `append`. Nothing is written
    /// then.
    fn append_if(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        condition: &AppendCondition,
    ) -> impl Future<Output = Result<Appended, StoreError>> + Send {
        let _ = (stream_id, expected, events, condition);
        std::future::ready(Err(StoreError::Unsupported {
            operation: "conditional appends (`append_if`)",
        }))
    }

    /// Up to `limit` events matching `query` after `after`, in order; fewer than `limit` only
    /// when no more match. What write models load with: one stream's events after its snapshot,
    /// or the events a decision over several streams depends on.
    ///
    /// The default reads every event after `after` with [`read_batch`](Self::read_batch) and
    /// keeps those that match, so its cost is the whole log after `after`. The memory and
    /// Postgres stores find a stream's events through an index; the file store scans (see
    /// [`FileEventStore`]).
    fn read_matching(
        &self,
        query: &Query,
        after: Position,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send {
        async move {
            let mut matching = Vec::new();
            let mut at = after;
            while matching.len() < limit && !query.is_empty() {
                let batch = self.read_batch(at, 4096).await?;
                let Some(last) = batch.last() else { break };
                at = last.position();
                matching.extend(
                    batch
                        .iter()
                        .filter(|e| query.matches(e))
                        .take(limit - matching.len())
                        .cloned(),
                );
            }
            Ok(matching)
        }
    }

    /// Up to `limit` events after `after`, in order.
    fn read_after(
        &self,
        after: Position,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// Like [`read_after`](Self::read_after), as a batch the store may share rather than copy;
    /// what runners read with. It may hold fewer than `limit` events while more follow, but is
    /// empty only when no event follows `after`.
    ///
    /// The default copies [`read_after`](Self::read_after)'s events into a batch; stores that
    /// keep events in memory override it.
    fn read_batch(
        &self,
        after: Position,
        limit: usize,
    ) -> impl Future<Output = Result<EventBatch, StoreError>> + Send {
        async move { self.read_after(after, limit).await.map(EventBatch::from) }
    }

    /// [`read_batch`](Self::read_batch) for a runner that reads ahead: it is awaited while the
    /// runner applies the batch before, so a store may do the reading on a task of its own,
    /// alongside. By default, `read_batch`.
    fn read_ahead(
        &self,
        after: Position,
        limit: usize,
    ) -> impl Future<Output = Result<EventBatch, StoreError>> + Send {
        self.read_batch(after, limit)
    }

    /// Up to `limit` events of `segment` after `after`, in order, and the position up to which
    /// the read saw every event (see [`SegmentBatch`]); what the runs of a split model's
    /// segments read with. Empty, with `read_to` at `after`, only when no event follows
    /// `after`. Whatever it filters, it never moves past an event that may still become
    /// visible at a lower position than one it returned (the store's order guarantee).
    ///
    /// The default reads every event with [`read_batch`](Self::read_batch): the segment's run
    /// skips the others', so the cost is the whole log. The PostgreSQL store returns only the
    /// segment's events, filtered by the server, when the segment is a range of slices (see
    /// [`Slice`](crate::fleet::Slice)).
    fn read_segment(
        &self,
        segment: Segment,
        after: Position,
        limit: usize,
    ) -> impl Future<Output = Result<SegmentBatch, StoreError>> + Send {
        let _ = segment;
        async move {
            let events = self.read_batch(after, limit).await?;
            Ok(SegmentBatch::unfiltered(events, after))
        }
    }

    /// [`read_segment`](Self::read_segment) for a runner that reads ahead, as
    /// [`read_ahead`](Self::read_ahead) is for [`read_batch`](Self::read_batch). By default,
    /// [`read_ahead`](Self::read_ahead) unfiltered.
    fn read_segment_ahead(
        &self,
        segment: Segment,
        after: Position,
        limit: usize,
    ) -> impl Future<Output = Result<SegmentBatch, StoreError>> + Send {
        let _ = segment;
        async move {
            let events = self.read_ahead(after, limit).await?;
            Ok(SegmentBatch::unfiltered(events, after))
        }
    }

    /// The position of the last event ([`Position::START`] when empty).
    fn head(&self) -> impl Future<Output = Result<Position, StoreError>> + Send;

    /// Resolves when events after `after` may have been appended. It may wake without new events;
    /// callers read again and wait again.
    fn wait_for_append(
        &self,
        after: Position,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Follows the store from `after`: history first, then live appends.
    fn subscribe(&self, after: Position) -> Subscription<'_, Self>
    where
        Self: Sized,
    {
        Subscription::new(self, after)
    }
}
