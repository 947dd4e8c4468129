//! Reading the single-file log of krescent 0.1, to import it into a store of segments.
//!
//! That format: records of `length: u32 LE | crc32: u32 LE | body`, the body a JSON object with
//! the event's metadata and payload, and no header. A torn last record is ignored, as 0.1 did.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::Path;
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::checkpoint::from_micros;
use crate::store::StoreError;

/// One record of the old log, every string owned.
#[derive(Deserialize)]
pub(super) struct Record {
    pub(super) position: u64,
    pub(super) stream: String,
    pub(super) version: u64,
    pub(super) id: Uuid,
    #[serde(rename = "type")]
    pub(super) event_type: String,
    at: i64,
    payload: Box<RawValue>,
}

impl Record {
    pub(super) fn recorded_at(&self) -> SystemTime {
        from_micros(self.at)
    }

    pub(super) fn payload(&self) -> &str {
        self.payload.get()
    }
}

/// Reads the records of the old log at `path` one at a time.
pub(super) struct LegacyReader {
    path: std::path::PathBuf,
    reader: BufReader<File>,
    offset: u64,
}

impl LegacyReader {
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
        let file = File::open(path).map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(LegacyReader {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 20, file),
            offset: 0,
        })
    }

    /// The next record; `None` at the end or at a torn last record.
    pub(super) fn next_record(&mut self) -> Result<Option<Record>, StoreError> {
        let path = self.path.clone();
        let corrupt = |offset, reason: String| StoreError::Corrupt {
            path,
            offset,
            reason,
        };
        let mut header = [0; 8];
        if !self.fill(&mut header)? {
            return Ok(None);
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let mut body = vec![0; len];
        if !self.fill(&mut body)? {
            return Ok(None);
        }
        if crc32fast::hash(&body) != crc {
            let mut rest = [0];
            if !self.fill(&mut rest)? {
                return Ok(None);
            }
            return Err(corrupt(self.offset, "checksum mismatch".into()));
        }
        let offset = self.offset;
        let record = serde_json::from_slice(&body)
            .map_err(|e| corrupt(offset, format!("undecodable record: {e}")))?;
        self.offset += 8 + len as u64;
        Ok(Some(record))
    }

    /// Fills `buf`; false when the file ends first.
    fn fill(&mut self, buf: &mut [u8]) -> Result<bool, StoreError> {
        match self.reader.read_exact(buf) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(false),
            Err(source) => Err(StoreError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }
}
