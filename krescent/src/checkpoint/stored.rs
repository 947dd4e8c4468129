//! A checkpoint as storages keep it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{CheckpointBucket, CheckpointVersion, Link, Piece, StorageError};
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
    /// Whether it is the whole state or a delta over earlier checkpoints
    /// ([`crate::checkpoint::incremental`]); as loaded, a delta is its whole chain folded.
    pub piece: Piece,
}

/// The encoding's format number; bumped when the layout changes. Format 1 (krescent 0.1) had
/// no checksum; format 2 requires one.
const FORMAT: u32 = 2;
/// The format of documents written before checksums, still read.
const FORMAT_UNCHECKED: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Encoded<'a> {
    format: u32,
    namespace: std::borrow::Cow<'a, str>,
    version: std::borrow::Cow<'a, str>,
    position: String,
    taken_at_micros: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checksum: Option<u32>,
    /// A delta's place in its chain; absent for a whole checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delta: Option<EncodedLink>,
    bucket: std::borrow::Cow<'a, CheckpointBucket>,
}

/// A [`Link`] in a document.
#[derive(Serialize, Deserialize)]
struct EncodedLink {
    base: String,
    previous: String,
    sequence: u32,
}

/// How the integrity of a loaded checkpoint was checked
/// ([`CheckpointStorage::load_checked`](super::CheckpointStorage::load_checked)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    /// The checksum stored with it matched its content
    /// ([`StoredCheckpoint::checksum`]).
    Verified {
        /// The checksum.
        checksum: u32,
    },
    /// No checksum is stored with it: it was written before checksums (krescent 0.1), or by a
    /// storage that keeps none. It restores as it is.
    Unchecked,
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
            piece: Piece::Whole,
        }
    }

    /// This checkpoint as a delta at `link` of its chain.
    #[must_use]
    pub fn with_piece(mut self, piece: Piece) -> Self {
        self.piece = piece;
        self
    }

    /// The checksum a storage records with the checkpoint and checks before it restores
    /// anything: a CRC-32 over the namespace, the version, the position, the time and every key
    /// and value of the bucket (each value with its kind, as it is kept: a JSON value's text, a
    /// `MessagePack` value's bytes). It does not depend on a storage's layout, so every storage
    /// checks the same sum.
    #[must_use]
    pub fn checksum(&self) -> u32 {
        super::checksum::of(self)
    }

    /// Checks the checkpoint against `checksum`, the one stored with it.
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] naming `origin` (a file, a row) and both sums when they differ:
    /// the stored bytes changed after the checkpoint was written.
    pub fn verify(&self, checksum: u32, origin: &str) -> Result<Integrity, StorageError> {
        let computed = self.checksum();
        if computed == checksum {
            return Ok(Integrity::Verified { checksum });
        }
        Err(StorageError::Corrupt {
            origin: origin.to_owned(),
            reason: format!(
                "checksum mismatch: stored {checksum:#010x}, the content sums to {computed:#010x} (the checkpoint changed after it was written)"
            ),
        })
    }

    /// Encodes the checkpoint as one JSON document (the file storage's format), with its
    /// [`checksum`](Self::checksum).
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
            checksum: Some(self.checksum()),
            delta: match self.piece {
                Piece::Whole => None,
                Piece::Delta(link) => Some(EncodedLink {
                    base: link.base.to_string(),
                    previous: link.previous.to_string(),
                    sequence: link.sequence,
                }),
            },
            bucket: std::borrow::Cow::Borrowed(&self.bucket),
        };
        serde_json::to_vec(&encoded).map_err(|e| StorageError::Encode {
            namespace: self.namespace.clone(),
            reason: e.to_string(),
        })
    }

    /// Decodes a document written by [`encode`](Self::encode), checking its checksum, or one
    /// written before checksums (format 1, krescent 0.1).
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] naming `origin` (a file, a row) and what is wrong: the
    /// document does not decode, or its content does not match its checksum.
    pub fn decode(bytes: &[u8], origin: &str) -> Result<Self, StorageError> {
        Self::decode_checked(bytes, origin).map(|(checkpoint, _)| checkpoint)
    }

    /// [`decode`](Self::decode), saying how the checkpoint's integrity was checked.
    ///
    /// # Errors
    /// As [`decode`](Self::decode).
    pub fn decode_checked(bytes: &[u8], origin: &str) -> Result<(Self, Integrity), StorageError> {
        let corrupt = |reason: String| StorageError::Corrupt {
            origin: origin.to_owned(),
            reason,
        };
        let encoded: Encoded<'_> =
            serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        let checksum = match (encoded.format, encoded.checksum) {
            (FORMAT, Some(checksum)) => Some(checksum),
            (FORMAT, None) => return Err(corrupt(format!("format {FORMAT} without its checksum"))),
            (FORMAT_UNCHECKED, _) => None,
            (other, _) => {
                return Err(corrupt(format!(
                    "unknown format {other} (this build reads {FORMAT_UNCHECKED} and {FORMAT})"
                )))
            }
        };
        let parse = |text: &str| {
            text.parse()
                .map_err(|e: crate::position::PositionParseError| corrupt(e.to_string()))
        };
        let position = parse(&encoded.position)?;
        let piece = match &encoded.delta {
            None => Piece::Whole,
            Some(link) => Piece::Delta(Link {
                base: parse(&link.base)?,
                previous: parse(&link.previous)?,
                sequence: link.sequence,
            }),
        };
        let checkpoint = StoredCheckpoint {
            namespace: encoded.namespace.into_owned(),
            version: CheckpointVersion::from_text(encoded.version.into_owned()),
            position,
            taken_at: from_micros(encoded.taken_at_micros),
            bucket: encoded.bucket.into_owned(),
            piece,
        };
        let integrity = match checksum {
            Some(checksum) => checkpoint.verify(checksum, origin)?,
            None => Integrity::Unchecked,
        };
        Ok((checkpoint, integrity))
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
