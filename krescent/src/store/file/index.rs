//! Where a reader finds a position: the sparse index of a segment, and the files that keep it.
//!
//! A sealed segment's index is kept in `<first>.idx`; the open segment's, with every stream's
//! version, in `head.state`. Both are derived data, checked by a checksum and rebuilt from the
//! segments when missing, damaged or stale: losing them costs time on the next open, never events.

use std::collections::HashMap;
use std::sync::Arc;

use super::format::{FrameHeader, FORMAT, SEGMENT_HEADER};

/// An index entry is added at the first frame at least this many bytes after the previous one,
/// so a read skips at most about this much to find its position.
const ENTRY_SPACING: u64 = 64 * 1024;

const INDEX_MAGIC: [u8; 8] = *b"KRESIDX1";
const STATE_MAGIC: [u8; 8] = *b"KRESHED1";

/// The sparse index of one segment, and how far it is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SegmentIndex {
    /// The position of the segment's first event.
    pub(super) first: u64,
    /// The committed length in bytes: the end of the last whole append.
    pub(super) len: u64,
    /// The position of the last committed event; `first - 1` while there is none.
    pub(super) last: u64,
    /// `(first position of a frame, its offset)`, in order.
    entries: Vec<(u64, u64)>,
    /// The segment's format ([`FORMAT`] or [`FORMAT_V1`](super::format::FORMAT_V1)), from its
    /// header; not in the index files, set when the segment's header is read.
    pub(super) format: u32,
}

impl SegmentIndex {
    /// An empty segment starting at position `first`.
    pub(super) fn new(first: u64) -> Self {
        SegmentIndex {
            first,
            len: SEGMENT_HEADER as u64,
            last: first - 1,
            entries: Vec::new(),
            format: FORMAT,
        }
    }

    /// Whether the segment holds no event.
    pub(super) fn is_empty(&self) -> bool {
        self.last < self.first
    }

    /// Records a committed frame at `offset`.
    pub(super) fn push(&mut self, header: &FrameHeader, offset: u64) {
        if self
            .entries
            .last()
            .is_none_or(|&(_, at)| offset >= at + ENTRY_SPACING)
        {
            self.entries.push((header.first, offset));
        }
        self.len = offset + header.frame_len();
        self.last = header.last();
    }

    /// The offset of a frame at or before the one holding `position`.
    pub(super) fn seek(&self, position: u64) -> u64 {
        let i = self
            .entries
            .partition_point(|&(first, _)| first <= position);
        i.checked_sub(1)
            .map_or(SEGMENT_HEADER as u64, |i| self.entries[i].1)
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        for n in [self.first, self.len, self.last, self.entries.len() as u64] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        for &(position, offset) in &self.entries {
            out.extend_from_slice(&position.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
        }
    }

    fn decode_from(reader: &mut Reader<'_>) -> Option<Self> {
        let (first, len, last, count) =
            (reader.u64()?, reader.u64()?, reader.u64()?, reader.u64()?);
        let mut entries = Vec::with_capacity(usize::try_from(count).ok()?.min(reader.rest() / 16));
        for _ in 0..count {
            entries.push((reader.u64()?, reader.u64()?));
        }
        let ordered = entries
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1);
        let inside = entries
            .iter()
            .all(|&(p, o)| p >= first && p <= last && o >= SEGMENT_HEADER as u64 && o < len);
        (first > 0 && last + 1 >= first && len >= SEGMENT_HEADER as u64 && ordered && inside)
            .then_some(SegmentIndex {
                first,
                len,
                last,
                entries,
                format: FORMAT,
            })
    }
}

/// Reads the fields of an index file, each checked against its end.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("eight bytes")))
    }

    fn rest(&self) -> usize {
        self.0.len()
    }
}

fn seal(mut out: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The body of `bytes` after `magic`, if its checksum holds.
fn unseal(bytes: &[u8], magic: [u8; 8]) -> Option<Reader<'_>> {
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    let crc = u32::from_le_bytes(crc.try_into().ok()?);
    (crc32fast::hash(body) == crc && body.starts_with(&magic)).then(|| Reader(&body[8..]))
}

/// The bytes of a sealed segment's `.idx` file.
pub(super) fn encode_index(index: &SegmentIndex) -> Vec<u8> {
    let mut out = INDEX_MAGIC.to_vec();
    index.encode_into(&mut out);
    seal(out)
}

/// A sealed segment's index, if `bytes` is an undamaged one.
pub(super) fn decode_index(bytes: &[u8]) -> Option<SegmentIndex> {
    let mut reader = unseal(bytes, INDEX_MAGIC)?;
    let index = SegmentIndex::decode_from(&mut reader)?;
    (reader.rest() == 0).then_some(index)
}

/// The open segment's index and every stream's version: where the next open resumes.
#[derive(Debug)]
pub(super) struct HeadState {
    pub(super) index: SegmentIndex,
    pub(super) streams: HashMap<Arc<str>, u64>,
}

/// The bytes of `head.state`.
pub(super) fn encode_state(index: &SegmentIndex, streams: &HashMap<Arc<str>, u64>) -> Vec<u8> {
    let mut out = STATE_MAGIC.to_vec();
    index.encode_into(&mut out);
    out.extend_from_slice(&(streams.len() as u64).to_le_bytes());
    for (stream, version) in streams {
        out.extend_from_slice(&(stream.len() as u64).to_le_bytes());
        out.extend_from_slice(stream.as_bytes());
        out.extend_from_slice(&version.to_le_bytes());
    }
    seal(out)
}

/// The head state, if `bytes` is an undamaged one.
pub(super) fn decode_state(bytes: &[u8]) -> Option<HeadState> {
    let mut reader = unseal(bytes, STATE_MAGIC)?;
    let index = SegmentIndex::decode_from(&mut reader)?;
    let count = reader.u64()?;
    let mut streams = HashMap::with_capacity(usize::try_from(count).ok()?.min(reader.rest() / 16));
    for _ in 0..count {
        let len = usize::try_from(reader.u64()?).ok()?;
        let stream = std::str::from_utf8(reader.take(len)?).ok()?;
        streams.insert(Arc::from(stream), reader.u64()?);
    }
    (reader.rest() == 0).then_some(HeadState { index, streams })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> SegmentIndex {
        let mut index = SegmentIndex::new(11);
        let mut offset = SEGMENT_HEADER as u64;
        let payload = "p".repeat(1000);
        for (first, count) in [(11, 3), (14, 1), (15, 100), (115, 1)] {
            let bytes = super::super::format::encode_append(
                "s",
                1,
                first,
                std::time::SystemTime::now(),
                &(0..count)
                    .map(|_| super::super::format::Draft {
                        id: uuid::Uuid::nil(),
                        event_type: "t",
                        payload: &payload,
                        revision: 1,
                        metadata: None,
                    })
                    .collect::<Vec<_>>(),
            )
            .expect("encode");
            let header = FrameHeader::parse(&bytes).expect("header");
            index.push(&header, offset);
            offset += header.frame_len();
        }
        index
    }

    #[test]
    fn seeks_land_at_or_before_the_frame_of_a_position() {
        let index = index();
        assert_eq!(index.last, 115);
        assert_eq!(index.seek(11), SEGMENT_HEADER as u64);
        assert_eq!(
            index.seek(14),
            SEGMENT_HEADER as u64,
            "sparse: no entry 4 KiB later"
        );
        assert_eq!(index.seek(114), SEGMENT_HEADER as u64);
        assert!(
            index.seek(115) > SEGMENT_HEADER as u64,
            "an entry 64 KiB later"
        );
    }

    #[test]
    fn index_and_state_round_trip_and_any_damage_is_refused() {
        let index = index();
        assert_eq!(decode_index(&encode_index(&index)), Some(index.clone()));
        let streams = HashMap::from([(Arc::from("a\"\0é"), 3), (Arc::from(""), 1)]);
        let state = encode_state(&index, &streams);
        let decoded = decode_state(&state).expect("state");
        assert_eq!((decoded.index, decoded.streams), (index, streams));
        for bit in 0..state.len() * 8 {
            let mut damaged = state.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_state(&damaged).is_none(), "bit {bit}");
        }
        assert!(decode_state(&state[..state.len() - 1]).is_none());
    }
}
