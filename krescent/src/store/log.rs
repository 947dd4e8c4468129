//! The in-memory event log shared by the memory and file stores.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};
use std::time::SystemTime;

use tokio::sync::watch;

use super::{Appended, ExpectedVersion, StoreError};
use crate::checkpoint::truncate_to_micros;
use crate::event::{EventMeta, NewEvent, RecordedEvent};
use crate::Position;

/// Events in position order, position `n` at index `n - 1`, with each stream's version.
#[derive(Debug, Default)]
struct Events {
    all: Vec<RecordedEvent>,
    streams: HashMap<Arc<str>, u64>,
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
        let actual = log.streams.get(stream_id).copied().unwrap_or(0);
        if !expected.matches(actual) {
            return Err(StoreError::conflict(stream_id, expected, actual));
        }
        let stream_id: Arc<str> = log
            .streams
            .get_key_value(stream_id)
            .map_or_else(|| stream_id.into(), |(k, _)| k.clone());
        let recorded_at = truncate_to_micros(SystemTime::now());
        let first = log.all.len() as u64 + 1;
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
                log.streams
                    .insert(last.meta.stream_id.clone(), last.meta.stream_version);
                Appended {
                    position: last.meta.position,
                    stream_version: last.meta.stream_version,
                }
            }
            None => Appended {
                position: Position::new(log.all.len() as u64),
                stream_version: 0,
            },
        };
        log.all.extend(records);
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
        self.read().streams.get(stream_id).copied().unwrap_or(0)
    }

    pub(crate) fn read_after(&self, after: Position, limit: usize) -> Vec<RecordedEvent> {
        let log = self.read();
        let start = usize::try_from(after.get())
            .unwrap_or(usize::MAX)
            .min(log.all.len());
        let end = start.saturating_add(limit).min(log.all.len());
        log.all[start..end].to_vec()
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
