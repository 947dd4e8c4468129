//! Rescaling: what a segment of a new count takes over from the segments of the old one.
//!
//! Segments of power-of-two counts are ranges of [`Slice`]s, so the progress of any layout
//! can be told per slice: each slice has been processed up to the position of the checkpoint
//! that covered it (or further, where that checkpoint itself still carried a handover). A
//! segment of the new count starts at the lowest progress over its slices and skips, per
//! slice, the events at or below that slice's progress, until its position has passed them
//! all. A split segment's halves both start from the old segment's checkpoint; a merged one
//! skips, per old part, what that part had processed, until the parts meet.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use super::{Segment, Slice};
use crate::Position;

/// Where a segment continues from after the segment count changed: the lowest position its
/// slices were processed to (where it starts) and the slices processed further, up to where,
/// which it skips until it passes them. Kept in the segment's checkpoints (under the bucket key
/// `krescent.handover`) until then. A segment that continues so starts with
/// [`Origin::Restored`](crate::Origin::Restored) at [`start`](Self::start).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    start: Position,
    /// Disjoint slice ranges (`first`, `last`) processed up to a position above `start`, in
    /// slice order.
    ahead: Vec<(u16, u16, Position)>,
}

impl Handover {
    /// The key a checkpoint's bucket keeps a handover under, until it is passed.
    pub const KEY: &'static str = "krescent.handover";

    /// Where the segment starts: every event of its slices at or below this position was
    /// processed by the segments it took over from.
    #[must_use]
    pub fn start(&self) -> Position {
        self.start
    }

    /// The slice ranges processed further than [`start`](Self::start), each with the
    /// position it was processed to.
    pub fn ahead(&self) -> impl Iterator<Item = (RangeInclusive<u16>, Position)> + '_ {
        self.ahead
            .iter()
            .map(|&(first, last, position)| (first..=last, position))
    }

    /// Whether nothing is left to skip.
    #[must_use]
    pub fn is_passed(&self) -> bool {
        self.ahead.is_empty()
    }

    /// Whether the event at `position` of the stream `stream_id` was processed already, by
    /// the segment that had its slice before the count changed.
    #[must_use]
    pub fn processed(&self, stream_id: &str, position: Position) -> bool {
        if self.ahead.is_empty() {
            return false;
        }
        let slice = Slice::of(stream_id).get();
        self.ahead
            .iter()
            .any(|&(first, last, at)| (first..=last).contains(&slice) && position <= at)
    }

    /// Forgets the ranges a segment at `position` has passed.
    pub(crate) fn pass(&mut self, position: Position) {
        if position > self.start {
            self.start = position;
        }
        self.ahead.retain(|&(_, _, at)| at > position);
    }

    /// Checks a handover read from a checkpoint: its ranges are slices, in order, disjoint,
    /// and ahead of its start.
    ///
    /// # Errors
    /// What is wrong with it.
    pub(crate) fn checked(self) -> Result<Self, String> {
        let mut after: Option<u16> = None;
        for &(first, last, at) in &self.ahead {
            if first > last || last >= Slice::COUNT || after.is_some_and(|a| first <= a) {
                return Err(format!(
                    "slices {first}..={last} are not a range of slices after the ranges before them"
                ));
            }
            if at <= self.start {
                return Err(format!(
                    "slices {first}..={last} are at {at}, not ahead of the start {}",
                    self.start
                ));
            }
            after = Some(last);
        }
        Ok(self)
    }
}

/// How far each slice was processed, gathered from the checkpoints of a layout's segments.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    /// Per slice: the position it was processed to, if a checkpoint covered it.
    slices: Vec<Option<Position>>,
}

#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
impl Progress {
    /// No slice processed.
    pub(crate) fn new() -> Self {
        Progress {
            slices: vec![None; usize::from(Slice::COUNT)],
        }
    }

    /// Records the checkpoint of `segment` at `position`, with the handover it still carried;
    /// `false` when the segment is not a range of slices (its count is not a power of two).
    pub(crate) fn record(
        &mut self,
        segment: Segment,
        position: Position,
        handover: Option<&Handover>,
    ) -> bool {
        let Some(range) = segment.slices() else {
            return false;
        };
        for slice in range {
            self.raise(slice, position);
        }
        for (range, at) in handover.into_iter().flat_map(Handover::ahead) {
            for slice in range {
                if segment.slices().is_some_and(|r| r.contains(&slice)) {
                    self.raise(slice, at);
                }
            }
        }
        true
    }

    fn raise(&mut self, slice: u16, position: Position) {
        if let Some(entry) = self.slices.get_mut(usize::from(slice)) {
            *entry = Some(entry.map_or(position, |p| p.max(position)));
        }
    }

    /// What `segment` takes over: `None` when none of its slices was processed (or it is not
    /// a range of slices).
    pub(crate) fn handover(&self, segment: Segment) -> Option<Handover> {
        let range = segment.slices()?;
        let of = |slice: u16| self.slices.get(usize::from(slice)).copied().flatten();
        if range.clone().all(|slice| of(slice).is_none()) {
            return None;
        }
        let at = |slice: u16| of(slice).unwrap_or(Position::START);
        let start = range.clone().map(at).min().unwrap_or(Position::START);
        let mut ahead: Vec<(u16, u16, Position)> = Vec::new();
        for slice in range {
            let position = at(slice);
            if position <= start {
                continue;
            }
            match ahead.last_mut() {
                Some((_, last, p)) if *last + 1 == slice && *p == position => *last = slice,
                _ => ahead.push((slice, slice, position)),
            }
        }
        Some(Handover { start, ahead })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(index: u32, count: u32) -> Segment {
        Segment::new(index, count).expect("a segment")
    }

    #[test]
    fn a_split_segments_halves_start_from_its_checkpoint() {
        let mut progress = Progress::new();
        for i in 0..4 {
            assert!(progress.record(segment(i, 4), Position::new(10 + u64::from(i)), None));
        }
        for i in 0..8 {
            let handover = progress.handover(segment(i, 8)).expect("covered");
            assert_eq!(
                handover.start(),
                Position::new(10 + u64::from(i % 4)),
                "{i}"
            );
            assert!(handover.is_passed());
        }
    }

    #[test]
    fn a_merged_segment_skips_what_each_part_processed_until_they_meet() {
        let mut progress = Progress::new();
        // Segment 0 of 2 is segments 0 and 2 of 4.
        progress.record(segment(0, 4), Position::new(10), None);
        progress.record(segment(2, 4), Position::new(30), None);
        let mut handover = progress.handover(segment(0, 2)).expect("covered");
        assert_eq!(handover.start(), Position::new(10));
        let of_2 = (0..10_000)
            .map(|i| format!("s{i}"))
            .find(|s| Segment::of(s, 4) == segment(2, 4))
            .expect("a stream of segment 2");
        let of_0 = (0..10_000)
            .map(|i| format!("s{i}"))
            .find(|s| Segment::of(s, 4) == segment(0, 4))
            .expect("a stream of segment 0");
        assert!(handover.processed(&of_2, Position::new(30)));
        assert!(!handover.processed(&of_2, Position::new(31)));
        assert!(!handover.processed(&of_0, Position::new(11)));
        handover.pass(Position::new(29));
        assert!(!handover.is_passed());
        handover.pass(Position::new(30));
        assert!(handover.is_passed());
        assert_eq!(handover.start(), Position::new(30));
    }

    #[test]
    fn a_handover_carried_by_a_checkpoint_counts_again() {
        let mut progress = Progress::new();
        progress.record(segment(0, 4), Position::new(10), None);
        progress.record(segment(2, 4), Position::new(30), None);
        let merged = progress.handover(segment(0, 2)).expect("covered");
        // The merged segment checkpointed at 12, its part 2/4 still ahead; then split again.
        let mut again = Progress::new();
        again.record(segment(0, 2), Position::new(12), Some(&merged));
        assert_eq!(
            again.handover(segment(0, 4)).map(|h| h.start()),
            Some(Position::new(12))
        );
        assert_eq!(
            again.handover(segment(2, 4)).map(|h| h.start()),
            Some(Position::new(30))
        );
    }

    #[test]
    fn uncovered_slices_start_at_the_beginning_and_others_have_no_ranges() {
        let mut progress = Progress::new();
        progress.record(segment(0, 4), Position::new(10), None);
        assert_eq!(progress.handover(segment(1, 4)), None);
        let merged = progress.handover(segment(0, 1)).expect("partly covered");
        assert_eq!(merged.start(), Position::START);
        assert_eq!(merged.ahead().count(), 1);
        assert!(!progress.record(segment(0, 3), Position::new(1), None));
        assert_eq!(progress.handover(segment(0, 3)), None);
    }

    #[test]
    fn handovers_from_a_checkpoint_are_checked() {
        let bad = [(3u16, 2u16, 5u64), (0, 1024, 5), (0, 3, 1)];
        for (first, last, at) in bad {
            let handover = Handover {
                start: Position::new(1),
                ahead: vec![(first, last, Position::new(at))],
            };
            assert!(handover.checked().is_err(), "{first}..={last} at {at}");
        }
        let overlapping = Handover {
            start: Position::new(1),
            ahead: vec![(0, 3, Position::new(5)), (3, 4, Position::new(6))],
        };
        assert!(overlapping.checked().is_err());
    }
}
