//! Opening a log: checking segments, finding where the committed appends end, rebuilding
//! what the index files do not say.
//!
//! The rule for the last segment: only an incomplete final append is a torn tail — the file
//! ends inside a frame, or after frames that do not end their append, or in zeros where a frame
//! header should be. It is cut off. Anything else that fails a check (a complete frame with a
//! wrong checksum, a frame followed by more data, a gap in positions, a damaged header) is
//! corruption: [`StoreError::Corrupt`] names the file and offset and the file is left as it is.
//! Sealed segments have no torn tail: they end with a whole append or are corrupt.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use super::format::{frame_stream, FrameHeader, FRAME_HEADER};
use super::index::SegmentIndex;
use super::io_at;
use crate::store::StoreError;

/// What a scan of a segment found.
pub(super) struct Scanned {
    /// The index of the segment's committed appends.
    pub(super) index: SegmentIndex,
    /// Where a torn final append starts, when there is one (last segment only).
    pub(super) torn_at: Option<u64>,
    /// The bytes read.
    pub(super) bytes_read: u64,
}

/// Scans `file` (of `file_len` bytes, at `path`) from where `index` ends, checking every frame
/// and adding the committed ones to the index. Stream versions of events after `covered` are
/// written into `streams`.
pub(super) fn scan(
    path: &Path,
    file: &File,
    file_len: u64,
    mut index: SegmentIndex,
    is_last: bool,
    streams: &mut HashMap<Arc<str>, u64>,
    covered: u64,
) -> Result<Scanned, StoreError> {
    let start = index.len;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    reader.seek(SeekFrom::Start(start)).map_err(io_at(path))?;
    let corrupt = |offset: u64, reason: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason,
    };
    let mut offset = start;
    // The frames of an append whose last frame has not been seen yet.
    let mut pending: Vec<(FrameHeader, u64)> = Vec::new();
    let mut pending_stream: Option<(Arc<str>, u64)> = None;
    let mut header = [0; FRAME_HEADER];
    let mut body = Vec::new();
    let torn_at = loop {
        let group_start = pending.first().map_or(offset, |&(_, at)| at);
        let remaining = file_len - offset;
        if remaining == 0 {
            if pending.is_empty() {
                break None;
            }
            if is_last {
                break Some(group_start);
            }
            return Err(corrupt(
                group_start,
                "the sealed segment ends inside an append".into(),
            ));
        }
        let torn = |reason: &str| {
            if is_last {
                Ok(Some(group_start))
            } else {
                Err(corrupt(
                    offset,
                    format!("{reason} at the end of a sealed segment"),
                ))
            }
        };
        if remaining < FRAME_HEADER as u64 {
            break torn("an incomplete frame header")?;
        }
        reader.read_exact(&mut header).map_err(io_at(path))?;
        let Some(frame) = FrameHeader::parse(&header) else {
            if is_last && rest_is_zero(&header, &mut reader).map_err(io_at(path))? {
                break Some(group_start);
            }
            return Err(corrupt(offset, "frame header checksum mismatch".into()));
        };
        if frame.frame_len() > remaining {
            break torn("an incomplete frame")?;
        }
        let expected = pending.last().map_or(index.last, |(f, _)| f.last()) + 1;
        if frame.first != expected {
            return Err(corrupt(
                offset,
                format!(
                    "frame starts at position {} where {expected} was expected",
                    frame.first
                ),
            ));
        }
        body.resize(frame.len as usize, 0);
        reader.read_exact(&mut body).map_err(io_at(path))?;
        if !frame.checks(&body) {
            return Err(corrupt(offset, "frame body checksum mismatch".into()));
        }
        let (stream, first_version) = frame_stream(&body).map_err(|e| corrupt(offset, e.into()))?;
        match &pending_stream {
            Some((pending, version)) if **pending != *stream || *version + 1 != first_version => {
                return Err(corrupt(
                    offset,
                    "a frame continues another stream's append".into(),
                ));
            }
            _ => {
                let version = first_version + u64::from(frame.count) - 1;
                let key = crate::store::stream_key(streams, stream);
                pending_stream = Some((key, version));
            }
        }
        pending.push((frame, offset));
        offset += frame.frame_len();
        if frame.ends_append() {
            for (frame, at) in pending.drain(..) {
                index.push(&frame, at);
            }
            if let Some((stream, version)) = pending_stream.take() {
                if index.last > covered {
                    streams.insert(stream, version);
                }
            }
        }
    };
    Ok(Scanned {
        bytes_read: offset - start,
        index,
        torn_at,
    })
}

/// Whether `header` and everything after it in `reader` is zeros: space a crash left allocated
/// but unwritten, not data.
fn rest_is_zero(header: &[u8], reader: &mut impl Read) -> std::io::Result<bool> {
    if header.iter().any(|&b| b != 0) {
        return Ok(false);
    }
    let mut buf = [0; 8192];
    loop {
        match reader.read(&mut buf)? {
            0 => return Ok(true),
            n if buf[..n].iter().any(|&b| b != 0) => return Ok(false),
            _ => {}
        }
    }
}
