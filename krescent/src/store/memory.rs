//! Events kept in memory.

use super::log::Log;
use super::{
    AppendCondition, Appended, EventBatch, EventStore, ExpectedVersion, Query, StoreError,
};
use crate::event::{NewEvent, RecordedEvent};
use crate::Position;

/// Events in memory: for tests, benchmarks and short-lived processes.
///
/// Besides the events it keeps each stream's list of positions (8 bytes per event), so that
/// [`read_matching`](EventStore::read_matching) of streams reads only their events; a query
/// with event types scans the events after its position.
#[derive(Debug, Default)]
pub struct InMemoryEventStore {
    log: Log,
}

impl InMemoryEventStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The version of `stream_id` (0 when it has no events).
    #[must_use]
    pub fn stream_version(&self, stream_id: &str) -> u64 {
        self.log.stream_version(stream_id)
    }
}

impl EventStore for InMemoryEventStore {
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        super::check_payloads(stream_id, &events)?;
        let _guard = self.log.append_lock.lock().await;
        let records = self.log.prepare(stream_id, expected, events)?;
        Ok(self.log.append(stream_id, records))
    }

    async fn append_if(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        condition: &AppendCondition,
    ) -> Result<Appended, StoreError> {
        super::check_payloads(stream_id, &events)?;
        let _guard = self.log.append_lock.lock().await;
        if let Some(found) = self
            .log
            .latest_matching(&condition.query, condition.read_at)
        {
            return Err(StoreError::QueryConflict {
                stream: stream_id.to_owned(),
                query: condition.query.to_string(),
                read_at: condition.read_at,
                found,
            });
        }
        let records = self.log.prepare(stream_id, expected, events)?;
        Ok(self.log.append(stream_id, records))
    }

    async fn read_matching(
        &self,
        query: &Query,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(self.log.read_matching(query, after, limit))
    }

    async fn read_after(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(self.log.read_after(after, limit))
    }

    async fn read_batch(&self, after: Position, limit: usize) -> Result<EventBatch, StoreError> {
        Ok(self.log.read_batch(after, limit))
    }

    async fn head(&self) -> Result<Position, StoreError> {
        Ok(self.log.head())
    }

    async fn wait_for_append(&self, after: Position) -> Result<(), StoreError> {
        self.log.wait_for_append(after).await;
        Ok(())
    }
}
