//! Following a store: history, then live appends.

// cycle: a subscription reads through the `EventStore` it comes from (`mod.rs`).
use super::{EventStore, StoreError};
use crate::event::RecordedEvent;
use crate::Position;

/// The number of events a subscription reads at once.
pub const DEFAULT_BATCH: usize = 1024;

/// Reads a store from a position on, waiting for appends once it has read everything.
#[derive(Debug)]
pub struct Subscription<'s, S> {
    store: &'s S,
    position: Position,
    batch: usize,
}

impl<'s, S: EventStore> Subscription<'s, S> {
    /// Follows `store` after `after`.
    pub fn new(store: &'s S, after: Position) -> Self {
        Subscription {
            store,
            position: after,
            batch: DEFAULT_BATCH,
        }
    }

    /// Follows `store` from its current head: only events appended from now on.
    pub async fn from_tail(store: &'s S) -> Result<Self, StoreError> {
        Ok(Self::new(store, store.head().await?))
    }

    /// Reads at most `batch` events at once.
    #[must_use]
    pub fn batch_size(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// The position of the last event returned.
    #[must_use]
    pub fn position(&self) -> Position {
        self.position
    }

    /// The next events, waiting for an append when the subscription has read everything;
    /// never empty.
    pub async fn next_batch(&mut self) -> Result<Vec<RecordedEvent>, StoreError> {
        loop {
            let batch = self.store.read_after(self.position, self.batch).await?;
            if let Some(last) = batch.last() {
                self.position = last.position();
                return Ok(batch);
            }
            self.store.wait_for_append(self.position).await?;
        }
    }
}
