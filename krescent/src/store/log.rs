//! The in-memory event log shared by the memory and file stores.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};
use std::time::SystemTime;

use tokio::sync::watch;

use super::{Appended, EventBatch, ExpectedVersion, StoreError};
use crate::checkpoint::truncate_to_micros;
use crate::event::{EventMeta, NewEvent, RecordedEvent};
use crate::Position;

/// The number of events in a sealed chunk of the log.
const CHUNK: usize = 1024;

/// Events in position order, position `n` at index `n - 1`, with each stream's version.
///
/// The events are kept in chunks of [`CHUNK`]: once full, a chunk is sealed behind an `Arc` and
/// never changes again, so that a reader gets a batch of it by cloning one `Arc` instead of
/// every event (three `Arc` counters each). Only the open chunk at the end is copied.
#[derive(Debug, Default)]
struct Events {
    sealed: Vec<Arc<[RecordedEvent]>>,
    /// The events after the sealed chunks; fewer than [`CHUNK`].
    open: Vec<RecordedEvent>,
    /// The positions of every stream's events, in order: its version is their number.
    streams: HashMap<Arc<str>, Vec<u64>>,
}

impl Events {
    fn len(&self) -> usize {
        self.sealed.len() * CHUNK + self.open.len()
    }

    /// The event at `position`, if the log holds it.
    fn at(&self, position: u64) -> Option<&RecordedEvent> {
        let index = usize::try_from(position.checked_sub(1)?).ok()?;
        let (chunk, offset) = (index / CHUNK, index % CHUNK);
        match self.sealed.get(chunk) {
            Some(sealed) => sealed.get(offset),
            None if chunk == self.sealed.len() => self.open.get(offset),
            None => None,
        }
    }

    fn version(&self, stream_id: &str) -> u64 {
        self.streams.get(stream_id).map_or(0, |p| p.len() as u64)
    }

    fn push(&mut self, event: RecordedEvent) {
        if self.open.capacity() == 0 {
            self.open.reserve_exact(CHUNK);
        }
        self.open.push(event);
        if self.open.len() == CHUNK {
            let full = std::mem::take(&mut self.open);
            self.sealed.push(full.into());
        }
    }

    /// The events at indexes `start..end` (within `0..len`) that lie in one chunk, starting at
    /// `start`: a whole chunk at most.
    fn chunk_from(&self, start: usize, end: usize) -> &[RecordedEvent] {
        let (chunk, offset) = (start / CHUNK, start % CHUNK);
        let events: &[RecordedEvent] = self.sealed.get(chunk).map_or(&self.open, |c| c);
        &events[offset..(offset + (end - start)).min(events.len())]
    }

    /// `start..end` clamped to the log, from a position and a limit.
    fn range(&self, after: Position, limit: usize) -> (usize, usize) {
        let len = self.len();
        let start = usize::try_from(after.get()).unwrap_or(usize::MAX).min(len);
        (start, start.saturating_add(limit).min(len))
    }
}

/// An append-only log in memory. Appends are serialized by `append_lock`; between
/// [`prepare`](Log::prepare) and [`commit`](Log::commit) the caller may persist the records.
#[derive(Debug)]
pub(crate) struct Log {
    pub(crate) append_lock: tokio::sync::Mutex<()>,
    events: RwLock<Events>,
    head: watch::Sender<Position>,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            append_lock: tokio::sync::Mutex::new(()),
            events: RwLock::default(),
            head: watch::Sender::new(Position::START),
        }
    }
}

impl Log {
    fn read(&self) -> RwLockReadGuard<'_, Events> {
        // Writers only push whole events, so a poisoned lock still guards a consistent log.
        self.events.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The records `events` would become, checked against `expected`. Call with `append_lock` held.
    pub(crate) fn prepare(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let log = self.read();
        let actual = log.version(stream_id);
        if !expected.matches(actual) {
            return Err(StoreError::conflict(stream_id, expected, actual));
        }
        let stream_id = super::stream_key(&log.streams, stream_id);
        let recorded_at = truncate_to_micros(SystemTime::now());
        let first = log.len() as u64 + 1;
        Ok(events
            .into_iter()
            .zip(0..)
            .map(|(event, i)| RecordedEvent {
                meta: EventMeta {
                    event_id: event.event_id,
                    stream_id: stream_id.clone(),
                    stream_version: actual + 1 + i,
                    position: Position::new(first + i),
                    recorded_at,
                    event_type: event.event_type,
                    revision: event.revision,
                    metadata: event.metadata,
                },
                payload: event.payload,
            })
            .collect())
    }

    /// Makes the records of an append to `stream_id` visible; an empty append reports where
    /// the store and the stream are. Call with `append_lock` held.
    pub(crate) fn append(&self, stream_id: &str, records: Vec<RecordedEvent>) -> Appended {
        if records.is_empty() {
            return Appended {
                position: self.head(),
                stream_version: self.stream_version(stream_id),
            };
        }
        self.commit(records)
    }

    /// Makes `records` visible and wakes subscribers. Call with `append_lock` held.
    pub(crate) fn commit(&self, records: Vec<RecordedEvent>) -> Appended {
        let mut log = self.events.write().unwrap_or_else(PoisonError::into_inner);
        let appended = match records.last() {
            Some(last) => {
                let positions = log.streams.entry(last.meta.stream_id.clone()).or_default();
                positions.extend(records.iter().map(|r| r.position().get()));
                Appended {
                    position: last.meta.position,
                    stream_version: last.meta.stream_version,
                }
            }
            None => Appended {
                position: Position::new(log.len() as u64),
                stream_version: 0,
            },
        };
        for record in records {
            log.push(record);
        }
        drop(log);
        self.head.send_if_modified(|head| {
            let moved = *head != appended.position && appended.position > *head;
            *head = (*head).max(appended.position);
            moved
        });
        appended
    }

    /// The version of `stream_id` (0 when it has no events).
    pub(crate) fn stream_version(&self, stream_id: &str) -> u64 {
        self.read().version(stream_id)
    }

    /// Up to `limit` events matching `query` after `after`. A query of streams alone is
    /// answered from their position lists (a binary search each, then only their events);
    /// one with event types scans the log after `after`.
    pub(crate) fn read_matching(
        &self,
        query: &super::Query,
        after: Position,
        limit: usize,
    ) -> Vec<RecordedEvent> {
        let log = self.read();
        let mut matching = Vec::new();
        if query.event_types().next().is_none() {
            let mut positions: Vec<u64> = Vec::new();
            for stream in query.stream_ids() {
                if let Some(all) = log.streams.get(stream) {
                    let from = all.partition_point(|&p| p <= after.get());
                    positions.extend(all[from..].iter().take(limit));
                }
            }
            positions.sort_unstable();
            positions.truncate(limit);
            matching.extend(positions.into_iter().filter_map(|p| log.at(p).cloned()));
            return matching;
        }
        let (mut start, end) = log.range(after, usize::MAX);
        while start < end && matching.len() < limit {
            let part = log.chunk_from(start, end);
            start += part.len();
            matching.extend(
                part.iter()
                    .filter(|e| query.matches(e))
                    .take(limit - matching.len())
                    .cloned(),
            );
        }
        matching
    }

    /// The position of the latest event matching `query` after `after`, if any: from the
    /// streams' position lists, and a scan after `after` for event types.
    pub(crate) fn latest_matching(
        &self,
        query: &super::Query,
        after: Position,
    ) -> Option<Position> {
        let log = self.read();
        let mut latest = query
            .stream_ids()
            .filter_map(|s| log.streams.get(s).and_then(|p| p.last().copied()))
            .filter(|&p| p > after.get())
            .max();
        if query.event_types().next().is_some() {
            let (mut start, end) = log.range(after, usize::MAX);
            while start < end {
                let part = log.chunk_from(start, end);
                start += part.len();
                if let Some(e) = part.iter().rev().find(|e| query.matches(e)) {
                    latest = latest.max(Some(e.position().get()));
                }
            }
        }
        latest.map(Position::new)
    }

    pub(crate) fn read_after(&self, after: Position, limit: usize) -> Vec<RecordedEvent> {
        let log = self.read();
        let (mut start, end) = log.range(after, limit);
        let mut events = Vec::with_capacity(end - start);
        while start < end {
            let part = log.chunk_from(start, end);
            events.extend_from_slice(part);
            start += part.len();
        }
        events
    }

    /// Up to `limit` events after `after`, within one chunk: a sealed chunk is shared, not
    /// copied. Shorter than `limit` at a chunk's end; empty only at the head.
    pub(crate) fn read_batch(&self, after: Position, limit: usize) -> EventBatch {
        let log = self.read();
        let (start, end) = log.range(after, limit);
        if start == end {
            return EventBatch::default();
        }
        let (chunk, offset) = (start / CHUNK, start % CHUNK);
        match log.sealed.get(chunk) {
            Some(sealed) => {
                EventBatch::shared(sealed.clone(), offset..(offset + (end - start)).min(CHUNK))
            }
            None => EventBatch::from(log.chunk_from(start, end).to_vec()),
        }
    }

    pub(crate) fn head(&self) -> Position {
        *self.head.borrow()
    }

    pub(crate) async fn wait_for_append(&self, after: Position) {
        let mut head = self.head.subscribe();
        // The sender lives as long as `self`, so `wait_for` cannot fail while we borrow it.
        let _ = head.wait_for(|head| *head > after).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_of(n: usize) -> Log {
        let log = Log::default();
        for i in 0..n {
            let event = NewEvent::from_json("t", &i.to_string()).unwrap();
            let records = log
                .prepare(&format!("s{}", i % 7), ExpectedVersion::Any, vec![event])
                .unwrap();
            log.commit(records);
        }
        log
    }

    fn positions(events: &[RecordedEvent]) -> Vec<u64> {
        events.iter().map(|e| e.position().get()).collect()
    }

    #[test]
    fn batches_are_the_events_read_after_across_chunks() {
        let n = 2 * CHUNK + 100;
        let log = log_of(n);
        for after in [
            0,
            1,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            2 * CHUNK,
            n - 1,
            n,
            n + 5,
        ] {
            for limit in [0, 1, 7, CHUNK, CHUNK + 3, usize::MAX] {
                let at = Position::new(after as u64);
                let read = log.read_after(at, limit);
                assert_eq!(
                    positions(&read),
                    ((after + 1) as u64..=n as u64)
                        .take(limit)
                        .collect::<Vec<_>>()
                );
                let batch = log.read_batch(at, limit);
                assert!(read.starts_with(&batch), "after {after}, limit {limit}");
                assert_eq!(
                    batch.is_empty(),
                    read.is_empty(),
                    "after {after}, limit {limit}"
                );
                let chunk_end = (after / CHUNK + 1) * CHUNK;
                assert_eq!(batch.len(), read.len().min(chunk_end - after));
            }
        }
    }

    #[test]
    fn a_sealed_chunk_is_shared_and_the_open_one_copied() {
        let log = log_of(CHUNK + 10);
        let first = log.read_batch(Position::START, usize::MAX);
        let again = log.read_batch(Position::START, usize::MAX);
        assert_eq!(first.len(), CHUNK);
        assert!(std::ptr::eq(first.as_ptr(), again.as_ptr()), "shared");
        let open = log.read_batch(Position::new(CHUNK as u64), usize::MAX);
        assert_eq!(
            positions(&open),
            (CHUNK as u64 + 1..=CHUNK as u64 + 10).collect::<Vec<_>>()
        );
        log.commit(
            log.prepare(
                "s",
                ExpectedVersion::Any,
                vec![NewEvent::from_json("t", "1").unwrap()],
            )
            .unwrap(),
        );
        assert_eq!(open.len(), 10, "a batch does not change after an append");
        assert_eq!(first.into_vec(), log.read_after(Position::START, CHUNK));
    }
}
