//! Slices: the fixed, fine partition of streams that segments are cut from.

use std::ops::RangeInclusive;

use crate::hash::stable_hash;

/// A stream's slice: one of [`Slice::COUNT`] (1024) fixed parts of the streams, stored with
/// every event by the PostgreSQL store so that a segment's reads are filtered by the server.
///
/// The slice of a stream is the stable hash segments use (FNV-1a, 64 bits) modulo 1024, with
/// its 10 bits reversed. The reversal makes a segment a contiguous range of slices: a segment
/// `i` of `n`, with `n` a power of two up to 1024, owns the streams whose hash modulo `n` is `i`
/// ([`Segment::of`](super::Segment::of)), which are the low bits of the hash, which are the
/// high bits of the slice, so its slices are one range of `1024 / n` slices
/// ([`Segment::slices`](super::Segment::slices)). Splitting a segment cuts its range in two
/// halves; merging two puts them back together. The count of slices never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slice(u16);

impl Slice {
    /// How many slices there are, forever.
    pub const COUNT: u16 = 1024;

    /// The bits of a slice.
    const BITS: u32 = Self::COUNT.trailing_zeros();

    /// The slice of the stream `stream_id`.
    #[must_use]
    pub fn of(stream_id: &str) -> Self {
        // Below 1024, so it fits.
        let low = u16::try_from(stable_hash([stream_id]) % u64::from(Self::COUNT)).unwrap_or(0);
        Slice(reverse(low, Self::BITS))
    }

    /// Its number, from 0 to 1023: what the events table stores.
    #[must_use]
    pub fn get(self) -> u16 {
        self.0
    }
}

/// The low `bits` bits of `value`, in reverse order.
pub(super) fn reverse(value: u16, bits: u32) -> u16 {
    if bits == 0 {
        return 0;
    }
    value.reverse_bits() >> (u16::BITS - bits)
}

/// The slices of segment `index` of `count`: a range when `count` is a power of two up to
/// [`Slice::COUNT`], `None` for any other count (its segments are not unions of slices).
pub(super) fn range(index: u32, count: u32) -> Option<RangeInclusive<u16>> {
    if !count.is_power_of_two() || count > u32::from(Slice::COUNT) || index >= count {
        return None;
    }
    let bits = count.trailing_zeros();
    let index = u16::try_from(index).ok()?;
    let width = Slice::COUNT >> bits;
    let first = reverse(index, bits) * width;
    Some(first..=first + (width - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Segment;

    #[test]
    fn slices_are_pinned() {
        // `stable_hash(["orders-1"])` ends in 0x01b (27 = 0b00000_11011 modulo 1024).
        assert_eq!(Slice::of("orders-1").get(), 0b11_0110_0000);
    }

    #[test]
    fn a_power_of_two_segment_is_the_range_of_its_streams_slices() {
        for count in [1, 2, 4, 8, 16, 1024] {
            for i in 0..3000 {
                let stream = format!("stream-{i}");
                let segment = Segment::of(&stream, count);
                let slices = range(segment.index(), count).expect("a power of two");
                assert!(
                    slices.contains(&Slice::of(&stream).get()),
                    "{stream} {count}"
                );
            }
            let widths: usize = (0..count)
                .map(|i| range(i, count).expect("a power of two").len())
                .sum();
            assert_eq!(widths, 1024, "the ranges of {count} cover every slice once");
        }
    }

    #[test]
    fn other_counts_have_no_ranges() {
        for count in [0, 3, 5, 6, 12, 2048] {
            assert_eq!(range(0, count), None, "{count}");
        }
        assert_eq!(range(4, 4), None);
    }
}
