//! A checkpoint as storages keep it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{CheckpointBucket, CheckpointVersion, StorageError};
use crate::Position;

/// A checkpoint: the state of a model after the event at `position`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCheckpoint {
    /// The model's name (plus segment when partitioned).
    pub namespace: String,
    /// The version of the build that wrote it.
    pub version: CheckpointVersion,
    /// The last event the state covers.
    pub position: Position,
    /// When it was taken, to the microsecond.
    pub taken_at: SystemTime,
    /// The model's state.
    pub bucket: CheckpointBucket,
}

/// The encoding's format number; bumped when the layout changes.
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Encoded<'a> {
    format: u32,
    namespace: std::borrow::Cow<'a, str>,
    version: std::borrow::Cow<'a, str>,
    position: String,
    taken_at_micros: i64,
    bucket: std::borrow::Cow<'a, CheckpointBucket>,
}

impl StoredCheckpoint {
    /// A checkpoint taken now.
    #[must_use]
    pub fn new(
        namespace: impl Into<String>,
        version: CheckpointVersion,
        position: Position,
        bucket: CheckpointBucket,
    ) -> Self {
        StoredCheckpoint {
            namespace: namespace.into(),
            version,
            position,
            taken_at: truncate_to_micros(SystemTime::now()),
            bucket,
        }
    }

    /// Encodes the checkpoint as one JSON document (the file storage's format).
    ///
    /// # Errors
    /// [`StorageError::Encode`] when the bucket cannot be encoded.
    pub fn encode(&self) -> Result<Vec<u8>, StorageError> {
        let encoded = Encoded {
            format: FORMAT,
            namespace: self.namespace.as_str().into(),
            version: self.version.as_str().into(),
            position: self.position.to_string(),
            taken_at_micros: to_micros(self.taken_at),
            bucket: std::borrow::Cow::Borrowed(&self.bucket),
        };
        serde_json::to_vec(&encoded).map_err(|e| StorageError::Encode {
            namespace: self.namespace.clone(),
            reason: e.to_string(),
        })
    }

    /// Decodes a document written by [`encode`](Self::encode).
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] naming `origin` (a file, a row) and what is wrong.
    pub fn decode(bytes: &[u8], origin: &str) -> Result<Self, StorageError> {
        let corrupt = |reason: String| StorageError::Corrupt {
            origin: origin.to_owned(),
            reason,
        };
        let encoded: Encoded<'_> =
            serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if encoded.format != FORMAT {
            return Err(corrupt(format!(
                "unknown format {} (this build reads {FORMAT})",
                encoded.format
            )));
        }
        let position = encoded
            .position
            .parse()
            .map_err(|e: crate::position::PositionParseError| corrupt(e.to_string()))?;
        Ok(StoredCheckpoint {
            namespace: encoded.namespace.into_owned(),
            version: CheckpointVersion::from_text(encoded.version.into_owned()),
            position,
            taken_at: from_micros(encoded.taken_at_micros),
            bucket: encoded.bucket.into_owned(),
        })
    }
}

/// Microseconds since the Unix epoch, negative before it.
#[must_use]
pub(crate) fn to_micros(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros()).map_or(i64::MIN, |m| -m),
    }
}

/// The inverse of [`to_micros`].
#[must_use]
pub(crate) fn from_micros(micros: i64) -> SystemTime {
    let magnitude = Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// `time` without its sub-microsecond part, so that every storage round-trips it exactly.
#[must_use]
pub(crate) fn truncate_to_micros(time: SystemTime) -> SystemTime {
    from_micros(to_micros(time))
}
