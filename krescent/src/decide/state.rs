//! A write model's state: loaded from its snapshot and the events after it, caught up after
//! a conflict, and moved forward by the events a decision appended.

use std::sync::Arc;
use std::time::SystemTime;

use super::error::LoadError;
use super::snapshot;
use crate::checkpoint::{truncate_to_micros, CheckpointStorage};
use crate::event::{EventMeta, NewEvent, RecordedEvent};
use crate::model::EventModel;
use crate::store::{Appended, EventStore, Query};
use crate::Position;

/// How many events a load reads per call.
const BATCH: usize = 4096;

/// The state a decision sees.
pub(crate) struct State<M> {
    pub(crate) model: M,
    /// The stream's version the state covers (0: no event).
    pub(crate) version: u64,
    /// The position the query has been read up to: every matching event at or before it is
    /// applied.
    pub(crate) read_at: Position,
    /// The snapshot it started from: its stream version and when it was taken.
    pub(crate) snapshot: Option<(u64, SystemTime)>,
    /// The position of that snapshot.
    pub(crate) snapshot_position: Option<Position>,
    /// The events read from the store to build it.
    pub(crate) read: u64,
}

impl<M: EventModel + Default> State<M> {
    /// `M` before any event.
    fn empty() -> Self {
        State {
            model: M::default(),
            version: 0,
            read_at: Position::START,
            snapshot: None,
            snapshot_position: None,
            read: 0,
        }
    }

    /// `M` for `stream_id`: its snapshot in `storage` if there is a usable one, then the
    /// stream's events after it. A snapshot that cannot be used (another version, corrupt,
    /// failing to restore) is ignored with a warning and the stream replayed from its start;
    /// the next snapshot replaces it.
    pub(crate) async fn load_stream<S: EventStore>(
        store: &S,
        storage: Option<&Arc<dyn CheckpointStorage>>,
        stream_id: &str,
    ) -> Result<Self, LoadError> {
        let mut state = State::empty();
        if let Some(storage) = storage {
            let namespace = snapshot::snapshot_namespace::<M>(stream_id);
            let stored = match storage.load(&namespace).await {
                Ok(stored) => stored,
                Err(e) if e.is_corrupt() => {
                    tracing::warn!(%namespace, error = %e, "ignoring a corrupt snapshot; replaying the stream");
                    None
                }
                Err(source) => return Err(LoadError::Storage { namespace, source }),
            };
            if let Some(stored) = stored {
                match snapshot::restore(&mut state.model, &stored) {
                    Ok(restored) => {
                        state.version = restored.stream_version;
                        state.read_at = restored.position;
                        state.snapshot = Some((restored.stream_version, restored.taken_at));
                        state.snapshot_position = Some(restored.position);
                    }
                    Err(reason) => {
                        tracing::warn!(%namespace, %reason, "ignoring a snapshot that cannot be used; replaying the stream");
                        state.model = M::default();
                    }
                }
            }
        }
        state
            .catch_up(store, &Query::stream(stream_id), stream_id)
            .await?;
        Ok(state)
    }

    /// `M` from every event matching `query`, with the position it was read up to.
    pub(crate) async fn load_query<S: EventStore>(
        store: &S,
        query: &Query,
        stream_id: &str,
    ) -> Result<Self, LoadError> {
        let mut state = State::empty();
        state.catch_up(store, query, stream_id).await?;
        Ok(state)
    }

    /// Applies the events matching `query` after `read_at`. The head is read first: every
    /// matching event up to it has been applied when the reads run dry, so the state covers the
    /// query up to the larger of the head and the last event read.
    pub(crate) async fn catch_up<S: EventStore>(
        &mut self,
        store: &S,
        query: &Query,
        stream_id: &str,
    ) -> Result<(), LoadError> {
        let failed = |source| LoadError::Store {
            stream: stream_id.to_owned(),
            source,
        };
        let head = store.head().await.map_err(failed)?;
        loop {
            let events = store
                .read_matching(query, self.read_at, BATCH)
                .await
                .map_err(failed)?;
            for event in &events {
                self.apply(event, stream_id, false).await?;
            }
            self.read += events.len() as u64;
            if events.len() < BATCH {
                break;
            }
        }
        self.read_at = self.read_at.max(head);
        Ok(())
    }

    async fn apply(
        &mut self,
        event: &RecordedEvent,
        stream_id: &str,
        appended: bool,
    ) -> Result<(), LoadError> {
        self.model
            .handle(event)
            .await
            .map_err(|source| LoadError::Handler {
                stream: stream_id.to_owned(),
                position: event.position(),
                appended,
                source,
            })?;
        if *event.meta.stream_id == *stream_id {
            self.version = event.meta.stream_version;
        }
        self.read_at = self.read_at.max(event.position());
        Ok(())
    }

    /// Applies the events a decision appended to `stream_id` (where `appended` says), as the
    /// store recorded them: their stream versions follow the state's, and every store of this
    /// crate gives the events of one append consecutive positions ending at the append's.
    pub(crate) async fn apply_appended(
        &mut self,
        stream_id: &str,
        events: Vec<NewEvent>,
        appended: Appended,
    ) -> Result<(), LoadError> {
        let count = events.len() as u64;
        // Saturating: a store of your own that reports less than it appended gets wrong
        // metadata on these events, not a panic.
        let first_version = (appended.stream_version + 1).saturating_sub(count);
        let first_position = (appended.position.get() + 1).saturating_sub(count);
        let stream: Arc<str> = stream_id.into();
        let recorded_at = truncate_to_micros(SystemTime::now());
        for (i, event) in (0..).zip(events) {
            let recorded = RecordedEvent {
                meta: EventMeta {
                    event_id: event.event_id,
                    stream_id: stream.clone(),
                    stream_version: first_version + i,
                    position: Position::new(first_position + i),
                    recorded_at,
                    event_type: event.event_type,
                    revision: event.revision,
                    metadata: event.metadata,
                },
                payload: event.payload,
            };
            self.apply(&recorded, stream_id, true).await?;
        }
        Ok(())
    }
}
