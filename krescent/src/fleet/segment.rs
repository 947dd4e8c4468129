//! Segments: one model split over its streams, so that several instances share the work.

use std::fmt;

use crate::hash::stable_hash;

/// One of the `count` parts of a model split by `#[model(segments = N)]`.
///
/// A stream belongs to exactly one segment, by a stable hash of its id (FNV-1a, 64 bits, the
/// same in every build, process and platform) modulo the count, so every event is processed
/// by exactly one segment, and the events of one stream by the same segment, in order. Each
/// segment is run as a model of its own: its state, its checkpoint (namespace
/// `<model>#<index>/<count>`, say `books.available#2/4`) and its lease.
///
/// With a count that is a power of two (up to 1024), a segment is a contiguous range of
/// [`Slice`](super::Slice)s ([`slices`](Self::slices)), and the PostgreSQL store returns it only
/// its own events. With any other count, and with the memory and file stores, a segment reads
/// the whole log and skips, without decoding them, the events of other segments' streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Segment {
    index: u32,
    count: u32,
}

impl Segment {
    /// Segment `index` of `count`; `None` unless `index < count`.
    #[must_use]
    pub fn new(index: u32, count: u32) -> Option<Self> {
        (index < count).then_some(Segment { index, count })
    }

    /// Every segment of a model split into `count` (none for 0).
    pub fn all(count: u32) -> impl Iterator<Item = Segment> {
        (0..count).map(move |index| Segment { index, count })
    }

    /// The segment of `count` that the stream `stream_id` belongs to; `count` must not be 0.
    ///
    /// # Panics
    /// When `count` is 0.
    #[must_use]
    pub fn of(stream_id: &str, count: u32) -> Self {
        assert!(count > 0, "a model has at least one segment");
        let index = stable_hash([stream_id]) % u64::from(count);
        Segment {
            index: u32::try_from(index).unwrap_or(0),
            count,
        }
    }

    /// Its index, from 0.
    #[must_use]
    pub fn index(self) -> u32 {
        self.index
    }

    /// How many segments the model has.
    #[must_use]
    pub fn count(self) -> u32 {
        self.count
    }

    /// Whether the events of `stream_id` are this segment's.
    #[must_use]
    pub fn contains(self, stream_id: &str) -> bool {
        Segment::of(stream_id, self.count) == self
    }

    /// The slices this segment's streams are in, when its count is a power of two up to 1024
    /// (see [`Slice`](super::Slice)); `None` for any other count, whose segments are not
    /// ranges of slices.
    #[must_use]
    pub fn slices(self) -> Option<std::ops::RangeInclusive<u16>> {
        super::slice::range(self.index, self.count)
    }

    /// The checkpoint and lease namespace of this segment of `model`: `<model>#<index>/<count>`.
    #[must_use]
    pub fn namespace(self, model: &str) -> String {
        format!("{model}#{self}")
    }

    /// The segment a namespace of `model` names, if it names one.
    #[must_use]
    pub fn from_namespace(model: &str, namespace: &str) -> Option<Self> {
        let rest = namespace.strip_prefix(model)?.strip_prefix('#')?;
        let (index, count) = rest.split_once('/')?;
        let segment = Segment::new(index.parse().ok()?, count.parse().ok()?)?;
        (segment.namespace(model) == namespace).then_some(segment)
    }
}

/// The segment of `model` a checkpoint or lease namespace names: one of its segments, or the
/// whole model (segment 0 of 1), which is its own namespace.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn layout_of(model: &str, namespace: &str) -> Option<Segment> {
    if namespace == model {
        return Segment::new(0, 1);
    }
    Segment::from_namespace(model, namespace)
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// How many of `count` segments the member at `rank` (from 0) of `members` should run: an even
/// share, the first `count % members` members one more. The shares add up to `count`.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn fair_share(count: u32, members: usize, rank: usize) -> u32 {
    let members = u32::try_from(members.max(1)).unwrap_or(u32::MAX);
    let rank = u32::try_from(rank).unwrap_or(u32::MAX);
    count / members + u32::from(rank < count % members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stream_is_in_exactly_one_segment() {
        for id in ["a", "orders-17", "", "ünïcode", "x".repeat(300).as_str()] {
            let owners: Vec<Segment> = Segment::all(4).filter(|s| s.contains(id)).collect();
            assert_eq!(owners, vec![Segment::of(id, 4)], "{id}");
        }
    }

    #[test]
    fn streams_spread_over_the_segments() {
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            counts[Segment::of(&format!("stream-{i}"), 4).index() as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn namespaces_name_their_segment_and_nothing_else() {
        let segment = Segment::new(2, 4).expect("2 < 4");
        assert_eq!(segment.namespace("books"), "books#2/4");
        assert_eq!(Segment::from_namespace("books", "books#2/4"), Some(segment));
        for other in [
            "books",
            "books#4/4",
            "books#02/4",
            "books#2/4x",
            "book#2/4",
            "books#member/1",
        ] {
            assert_eq!(Segment::from_namespace("books", other), None, "{other}");
        }
    }

    #[test]
    fn fair_shares_add_up_to_the_count() {
        for count in 1..12 {
            for members in 1..6 {
                let shares: Vec<u32> = (0..members)
                    .map(|r| fair_share(count, members, r))
                    .collect();
                assert_eq!(shares.iter().sum::<u32>(), count, "{count} over {members}");
                assert!(shares.iter().max().unwrap() - shares.iter().min().unwrap() <= 1);
            }
        }
        assert_eq!(fair_share(4, 2, 0), 2);
        assert_eq!(fair_share(4, 2, 1), 2);
    }
}
