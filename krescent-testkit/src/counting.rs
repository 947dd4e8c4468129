//! An event store wrapper that counts the events read through it and can make appends fail.

use std::sync::atomic::{AtomicU64, Ordering};

use krescent::store::{
    AppendCondition, Appended, EventBatch, EventStore, ExpectedVersion, Query, StoreError,
};
use krescent::{NewEvent, Position, RecordedEvent};

/// Wraps a store: counts every event its reads return, and fails the next appends when told
/// to (as a database that goes away between a decision and its append would).
#[derive(Debug)]
pub struct CountingStore<S> {
    inner: S,
    read: AtomicU64,
    failing_appends: AtomicU64,
}

impl<S> CountingStore<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        CountingStore {
            inner,
            read: AtomicU64::new(0),
            failing_appends: AtomicU64::new(0),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The events read so far, then resets the count.
    pub fn take_read(&self) -> u64 {
        self.read.swap(0, Ordering::SeqCst)
    }

    /// Makes the next `n` appends fail without writing anything.
    pub fn fail_appends(&self, n: u64) {
        self.failing_appends.store(n, Ordering::SeqCst);
    }

    fn count(&self, n: usize) {
        self.read.fetch_add(n as u64, Ordering::SeqCst);
    }

    fn failing(&self, stream: &str) -> Result<(), StoreError> {
        let failing = self
            .failing_appends
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        match failing {
            Ok(_) => Err(StoreError::Rejected {
                stream: stream.to_owned(),
                reason: "the test made this append fail".to_owned(),
            }),
            Err(_) => Ok(()),
        }
    }
}

impl<S: EventStore> EventStore for CountingStore<S> {
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        self.failing(stream_id)?;
        self.inner.append(stream_id, expected, events).await
    }

    async fn append_if(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        condition: &AppendCondition,
    ) -> Result<Appended, StoreError> {
        self.failing(stream_id)?;
        self.inner
            .append_if(stream_id, expected, events, condition)
            .await
    }

    async fn read_matching(
        &self,
        query: &Query,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = self.inner.read_matching(query, after, limit).await?;
        self.count(events.len());
        Ok(events)
    }

    async fn read_after(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = self.inner.read_after(after, limit).await?;
        self.count(events.len());
        Ok(events)
    }

    async fn read_batch(&self, after: Position, limit: usize) -> Result<EventBatch, StoreError> {
        let events = self.inner.read_batch(after, limit).await?;
        self.count(events.len());
        Ok(events)
    }

    async fn read_ahead(&self, after: Position, limit: usize) -> Result<EventBatch, StoreError> {
        let events = self.inner.read_ahead(after, limit).await?;
        self.count(events.len());
        Ok(events)
    }

    async fn head(&self) -> Result<Position, StoreError> {
        self.inner.head().await
    }

    async fn wait_for_append(&self, after: Position) -> Result<(), StoreError> {
        self.inner.wait_for_append(after).await
    }
}
