//! The embedded default: an append-only event log in one file.
//!
//! Each record is `length: u32 LE | crc32: u32 LE | body`, the body a JSON object with the event's
//! metadata and payload. Appends are written and synced before they become visible. On open, a
//! torn last record (a crash mid-append) is cut off; damage anywhere else is an error, never
//! silently dropped.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::log::Log;
use super::{Appended, EventBatch, EventStore, ExpectedVersion, StoreError};
use crate::checkpoint::{from_micros, to_micros};
use crate::event::{EventMeta, NewEvent, RecordedEvent};
use crate::Position;

const HEADER: usize = 8;

/// Events in an append-only file, kept in memory too for reading; synced on every append.
#[derive(Debug)]
pub struct FileEventStore {
    path: PathBuf,
    file: Arc<Mutex<File>>,
    log: Log,
}

#[derive(Serialize, Deserialize)]
struct Body<'a> {
    position: u64,
    stream: &'a str,
    version: u64,
    id: Uuid,
    #[serde(rename = "type")]
    event_type: &'a str,
    at: i64,
    #[serde(borrow)]
    payload: &'a RawValue,
}

impl FileEventStore {
    /// Opens the log at `path`, creating it (and its directory) if missing, and loads it.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the file cannot be read or created; [`StoreError::Corrupt`] when a
    /// record other than the last is damaged.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io)?;
        let bytes = fs::read(&path).map_err(io)?;
        let log = Log::default();
        let (records, valid_len) = decode_all(&path, &bytes)?;
        if valid_len < bytes.len() {
            tracing::warn!(path = %path.display(), offset = valid_len, dropped = bytes.len() - valid_len, "dropping a torn record at the end of the event log");
            file.set_len(valid_len as u64)
                .and_then(|()| file.sync_all())
                .map_err(io)?;
        }
        file.flush().map_err(io)?;
        log.commit(records);
        Ok(FileEventStore {
            path,
            file: Arc::new(Mutex::new(file)),
            log,
        })
    }

    /// The log file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The version of `stream_id` (0 when it has no events).
    #[must_use]
    pub fn stream_version(&self, stream_id: &str) -> u64 {
        self.log.stream_version(stream_id)
    }
}

fn encode(records: &[RecordedEvent]) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    for record in records {
        let m = &record.meta;
        let encode_error = |reason: String| StoreError::Encode {
            position: m.position,
            reason,
        };
        let payload: &RawValue =
            serde_json::from_str(&record.payload).map_err(|e| encode_error(e.to_string()))?;
        let body = Body {
            position: m.position.get(),
            stream: &m.stream_id,
            version: m.stream_version,
            id: m.event_id,
            event_type: &m.event_type,
            at: to_micros(m.recorded_at),
            payload,
        };
        let body = serde_json::to_vec(&body).map_err(|e| encode_error(e.to_string()))?;
        let len = u32::try_from(body.len())
            .map_err(|_| encode_error(format!("record of {} bytes is too large", body.len())))?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
    }
    Ok(out)
}

/// The records of `bytes` and the length of its undamaged prefix.
fn decode_all(path: &Path, bytes: &[u8]) -> Result<(Vec<RecordedEvent>, usize), StoreError> {
    let mut records = Vec::new();
    let mut streams: std::collections::HashMap<Arc<str>, u64> = std::collections::HashMap::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason,
        };
        let Some(header) = bytes.get(offset..offset + HEADER) else {
            break;
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let end = offset + HEADER + len;
        let Some(body) = bytes.get(offset + HEADER..end) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            if end == bytes.len() {
                break;
            }
            return Err(corrupt("checksum mismatch".into()));
        }
        let body: Body<'_> = serde_json::from_slice(body)
            .map_err(|e| corrupt(format!("undecodable record: {e}")))?;
        let expected = records.len() as u64 + 1;
        if body.position != expected {
            return Err(corrupt(format!(
                "position {} where {expected} was expected",
                body.position
            )));
        }
        let stream_id = streams
            .get_key_value(body.stream)
            .map_or_else(|| Arc::from(body.stream), |(k, _)| k.clone());
        streams.insert(stream_id.clone(), body.version);
        records.push(RecordedEvent {
            meta: EventMeta {
                event_id: body.id,
                stream_id,
                stream_version: body.version,
                position: Position::new(body.position),
                recorded_at: from_micros(body.at),
                event_type: body.event_type.into(),
            },
            payload: body.payload.get().into(),
        });
        offset = end;
    }
    Ok((records, offset))
}

impl EventStore for FileEventStore {
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        let _guard = self.log.append_lock.lock().await;
        let records = self.log.prepare(stream_id, expected, events)?;
        let bytes = encode(&records)?;
        let file = self.file.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
            let start = file.metadata()?.len();
            let result = file.write_all(&bytes).and_then(|()| file.sync_data());
            if result.is_err() {
                // Cut off whatever part was written, so the log holds whole appends only.
                let _ = file.set_len(start);
            }
            result
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
        written.map_err(|source| StoreError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(self.log.append(stream_id, records))
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
