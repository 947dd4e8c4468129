//! The bytes of a segment file: its header, and frames of events.
//!
//! A segment starts with a header, `magic "KRESCENT" | format: u32 | first position: u64 |
//! crc32: u32` (all little-endian; the checksum covers the bytes before it). Frames follow:
//!
//! ```text
//! body length: u32 | events: u32 | first position: u64 | flags: u32 | body crc32: u32 | header crc32: u32
//! body: stream length: u32 | stream | first stream version: u64 | recorded at (µs): i64
//!       then per event: id: [u8; 16] | type length: u32 | type | payload length: u32 | payload
//!                       | revision: u32 | metadata length: u32 | metadata
//! ```
//!
//! That is format 2. Format 1 (krescent 0.1's segments) has no revision and metadata per event:
//! its events read as revision 1 without metadata. A store reads segments of both and writes
//! format 2; a metadata length of 0 is no metadata, else the metadata is a JSON object's text.
//!
//! The header checksum covers the five fields before it, so a damaged length is detected before
//! it is believed. An append is one or more frames of the same stream; the last carries
//! [`LAST`], and an append is committed only once that frame is complete.

use std::sync::Arc;
use std::time::SystemTime;

use uuid::Uuid;

use crate::checkpoint::{from_micros, to_micros};
use crate::event::{EventMeta, RecordedEvent};
use crate::metadata::Metadata;
use crate::Position;

/// The first bytes of every segment.
pub(super) const MAGIC: [u8; 8] = *b"KRESCENT";
/// The format this build writes (and reads, with [`FORMAT_V1`]).
pub(super) const FORMAT: u32 = 2;
/// The format of krescent 0.1's segments: no revision and no metadata per event.
pub(super) const FORMAT_V1: u32 = 1;
/// The length of a segment header.
pub(super) const SEGMENT_HEADER: usize = 24;
/// The length of a frame header.
pub(super) const FRAME_HEADER: usize = 28;
/// The flag of the frame that ends its append.
pub(super) const LAST: u32 = 1;
/// A frame holds at most this many events…
const FRAME_EVENTS: usize = 1024;
/// … and, unless one event is larger, at most about this many body bytes, so that a reader
/// checks and decodes little more than it returns.
const FRAME_BYTES: usize = 256 * 1024;

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
}

/// The header of a segment whose first event has position `first`.
pub(super) fn segment_header(first: u64) -> [u8; SEGMENT_HEADER] {
    let mut header = [0; SEGMENT_HEADER];
    header[..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&FORMAT.to_le_bytes());
    header[12..20].copy_from_slice(&first.to_le_bytes());
    let crc = crc32fast::hash(&header[..20]);
    header[20..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// What is wrong with a segment header.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum HeaderError {
    /// Not a krescent segment, or a damaged header.
    Damaged(&'static str),
    /// A segment of another format.
    Format(u32),
}

/// The first position and the format of a segment, from its header.
pub(super) fn parse_segment_header(bytes: &[u8]) -> Result<(u64, u32), HeaderError> {
    if bytes.len() < SEGMENT_HEADER {
        return Err(HeaderError::Damaged("the segment header is incomplete"));
    }
    if bytes[..8] != MAGIC {
        return Err(HeaderError::Damaged(
            "not a krescent segment (wrong magic bytes)",
        ));
    }
    if crc32fast::hash(&bytes[..20]) != u32_at(bytes, 20) {
        return Err(HeaderError::Damaged("segment header checksum mismatch"));
    }
    match u32_at(bytes, 8) {
        format @ (FORMAT_V1 | FORMAT) => Ok((u64_at(bytes, 12), format)),
        other => Err(HeaderError::Format(other)),
    }
}

/// A frame header, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FrameHeader {
    /// The body's length.
    pub(super) len: u32,
    /// The number of events.
    pub(super) count: u32,
    /// The position of the first event.
    pub(super) first: u64,
    /// [`LAST`] or 0.
    pub(super) flags: u32,
    body_crc: u32,
}

impl FrameHeader {
    /// The frame's length, header included.
    pub(super) fn frame_len(&self) -> u64 {
        FRAME_HEADER as u64 + u64::from(self.len)
    }

    /// The position of the frame's last event.
    pub(super) fn last(&self) -> u64 {
        self.first + u64::from(self.count) - 1
    }

    /// Whether the frame ends its append.
    pub(super) fn ends_append(&self) -> bool {
        self.flags & LAST != 0
    }

    /// Parses `bytes` (at least [`FRAME_HEADER`] long); `None` when its checksum fails or a field
    /// is impossible.
    pub(super) fn parse(bytes: &[u8]) -> Option<FrameHeader> {
        if crc32fast::hash(&bytes[..24]) != u32_at(bytes, 24) {
            return None;
        }
        let header = FrameHeader {
            len: u32_at(bytes, 0),
            count: u32_at(bytes, 4),
            first: u64_at(bytes, 8),
            flags: u32_at(bytes, 16),
            body_crc: u32_at(bytes, 20),
        };
        (header.count > 0 && header.first > 0 && header.flags & !LAST == 0).then_some(header)
    }

    /// Whether `body` is this frame's body, undamaged.
    pub(super) fn checks(&self, body: &[u8]) -> bool {
        crc32fast::hash(body) == self.body_crc
    }
}

/// One event of an append, as the encoder takes it.
pub(super) struct Draft<'a> {
    pub(super) id: Uuid,
    pub(super) event_type: &'a str,
    pub(super) payload: &'a str,
    pub(super) revision: u32,
    /// The metadata's JSON text; `None` for none.
    pub(super) metadata: Option<String>,
}

/// An append too large for the format: a field or a frame over 4 GiB.
#[derive(Debug)]
pub(super) struct TooLarge(pub(super) &'static str);

fn len_u32(len: usize, what: &'static str) -> Result<u32, TooLarge> {
    u32::try_from(len).map_err(|_| TooLarge(what))
}

/// Encodes an append of `events` to `stream` as frames, the last one flagged [`LAST`].
pub(super) fn encode_append(
    stream: &str,
    first_version: u64,
    first_position: u64,
    recorded_at: SystemTime,
    events: &[Draft<'_>],
) -> Result<Vec<u8>, TooLarge> {
    let stream_len = len_u32(stream.len(), "stream id")?;
    let mut out = Vec::new();
    let mut start = 0;
    while start < events.len() {
        let frame_start = out.len();
        out.resize(frame_start + FRAME_HEADER, 0);
        out.extend_from_slice(&stream_len.to_le_bytes());
        out.extend_from_slice(stream.as_bytes());
        out.extend_from_slice(&(first_version + start as u64).to_le_bytes());
        out.extend_from_slice(&to_micros(recorded_at).to_le_bytes());
        let mut end = start;
        while end < events.len()
            && end - start < FRAME_EVENTS
            && (end == start || out.len() - frame_start < FRAME_BYTES)
        {
            let event = &events[end];
            out.extend_from_slice(event.id.as_bytes());
            out.extend_from_slice(&len_u32(event.event_type.len(), "event type")?.to_le_bytes());
            out.extend_from_slice(event.event_type.as_bytes());
            out.extend_from_slice(&len_u32(event.payload.len(), "payload")?.to_le_bytes());
            out.extend_from_slice(event.payload.as_bytes());
            out.extend_from_slice(&event.revision.to_le_bytes());
            let metadata = event.metadata.as_deref().unwrap_or_default();
            out.extend_from_slice(&len_u32(metadata.len(), "metadata")?.to_le_bytes());
            out.extend_from_slice(metadata.as_bytes());
            end += 1;
        }
        let body = &out[frame_start + FRAME_HEADER..];
        let len = len_u32(body.len(), "frame")?;
        let body_crc = crc32fast::hash(body);
        let flags = if end == events.len() { LAST } else { 0 };
        let header = &mut out[frame_start..frame_start + FRAME_HEADER];
        header[..4].copy_from_slice(&len.to_le_bytes());
        header[4..8].copy_from_slice(&len_u32(end - start, "frame")?.to_le_bytes());
        header[8..16].copy_from_slice(&(first_position + start as u64).to_le_bytes());
        header[16..20].copy_from_slice(&flags.to_le_bytes());
        header[20..24].copy_from_slice(&body_crc.to_le_bytes());
        let crc = crc32fast::hash(&header[..24]);
        header[24..].copy_from_slice(&crc.to_le_bytes());
        start = end;
    }
    Ok(out)
}

/// Reads a frame body field by field; every read is checked against the body's end.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len());
        let end = end.ok_or("a field runs past the end of its frame")?;
        let bytes = &self.bytes[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        self.take(4).map(|b| u32_at(b, 0))
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        self.take(8).map(|b| u64_at(b, 0))
    }

    fn str(&mut self, what: &'static str) -> Result<&'a str, &'static str> {
        let len = self.u32()? as usize;
        std::str::from_utf8(self.take(len)?).map_err(|_| what)
    }
}

/// The stream and stream versions of a frame, without decoding its events.
pub(super) fn frame_stream(body: &[u8]) -> Result<(&str, u64), &'static str> {
    let mut cursor = Cursor { bytes: body, at: 0 };
    let stream = cursor.str("the stream id is not UTF-8")?;
    Ok((stream, cursor.u64()?))
}

/// Shares the `Arc<str>` of type names a reader has seen, so that a batch allocates each name once.
#[derive(Default)]
pub(super) struct Names(Vec<Arc<str>>);

impl Names {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(known) = self.0.iter().find(|known| ***known == *name) {
            return known.clone();
        }
        let name: Arc<str> = name.into();
        if self.0.len() < 64 {
            self.0.push(name.clone());
        }
        name
    }
}

/// Decodes the events of a frame of a segment of `format` whose positions lie in `from..=to`
/// into `out`, every string owned and checked.
pub(super) fn decode_frame(
    format: u32,
    header: &FrameHeader,
    body: &[u8],
    from: u64,
    to: u64,
    names: &mut Names,
    out: &mut Vec<RecordedEvent>,
) -> Result<(), &'static str> {
    let mut cursor = Cursor { bytes: body, at: 0 };
    let stream: Arc<str> = cursor.str("the stream id is not UTF-8")?.into();
    let first_version = cursor.u64()?;
    #[allow(clippy::cast_possible_wrap)] // written from an i64
    let recorded_at = from_micros(cursor.u64()? as i64);
    for i in 0..u64::from(header.count) {
        let id = Uuid::from_bytes(cursor.take(16)?.try_into().expect("sixteen bytes"));
        let event_type = cursor.str("an event type is not UTF-8")?;
        let payload = cursor.str("a payload is not UTF-8")?;
        let (revision, metadata) = if format == FORMAT_V1 {
            (1, "")
        } else {
            (cursor.u32()?, cursor.str("event metadata is not UTF-8")?)
        };
        let position = header.first + i;
        if (from..=to).contains(&position) {
            let metadata = if metadata.is_empty() {
                Metadata::new()
            } else {
                Metadata::from_json(metadata).map_err(|_| "event metadata is not a JSON object")?
            };
            out.push(RecordedEvent {
                meta: EventMeta {
                    event_id: id,
                    stream_id: stream.clone(),
                    stream_version: first_version + i,
                    position: Position::new(position),
                    recorded_at,
                    event_type: names.get(event_type),
                    revision,
                    metadata,
                },
                payload: payload.into(),
            });
        }
    }
    if cursor.at == body.len() {
        Ok(())
    } else {
        Err("bytes follow the frame's last event")
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // small test frames
mod tests {
    use super::*;

    #[test]
    fn a_large_append_is_split_into_frames_the_last_flagged() {
        let payload = "x".repeat(1000);
        let drafts: Vec<_> = (0..3000)
            .map(|_| Draft {
                id: Uuid::new_v4(),
                event_type: "t",
                payload: &payload,
                revision: 1,
                metadata: None,
            })
            .collect();
        let bytes = encode_append("s", 1, 1, SystemTime::now(), &drafts).expect("encode");
        let (mut at, mut frames, mut events) = (0, Vec::new(), Vec::new());
        while at < bytes.len() {
            let header = FrameHeader::parse(&bytes[at..]).expect("header");
            let body = &bytes[at + FRAME_HEADER..at + header.frame_len() as usize];
            assert!(header.checks(body));
            decode_frame(
                FORMAT,
                &header,
                body,
                1,
                u64::MAX,
                &mut Names::default(),
                &mut events,
            )
            .expect("decode");
            frames.push(header);
            at += header.frame_len() as usize;
        }
        assert!(frames.len() > 3, "{} frames", frames.len());
        assert!(frames[..frames.len() - 1].iter().all(|f| !f.ends_append()));
        assert!(frames.last().is_some_and(FrameHeader::ends_append));
        assert_eq!(events.len(), 3000);
        assert!(events
            .iter()
            .enumerate()
            .all(|(i, e)| e.meta.stream_version == i as u64 + 1
                && e.position().get() == i as u64 + 1
                && e.meta.event_id == drafts[i].id));
    }

    #[test]
    fn a_damaged_header_is_refused() {
        let bytes = encode_append(
            "s",
            1,
            1,
            SystemTime::now(),
            &[Draft {
                id: Uuid::nil(),
                event_type: "t",
                payload: "{}",
                revision: 1,
                metadata: None,
            }],
        )
        .expect("encode");
        for bit in 0..FRAME_HEADER * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(FrameHeader::parse(&damaged), None, "bit {bit}");
        }
    }
}
