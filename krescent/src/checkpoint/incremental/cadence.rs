//! Whether a running model's next checkpoint is a base or a delta, and where its chain stands.

use std::time::Instant;

use super::{Link, Piece};
use crate::Position;

/// A running model's chain of checkpoints, as far as its writes are known to have succeeded.
#[derive(Debug)]
pub(crate) struct Cadence {
    /// Whether the model writes deltas at all: it has incremental fields, and its storage (or
    /// its transaction) keeps deltas.
    enabled: bool,
    /// A new base once the deltas since the last one exceed this percentage of its size.
    compact_at_percent: u64,
    /// The stored chain the next delta follows; `None`: the next checkpoint is a base.
    chain: Option<Chain>,
    /// No compaction before this instant: the snapshot budget of the last base
    /// ([`defer_bases_until`](Self::defer_bases_until)).
    bases_not_before: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Chain {
    base: Position,
    head: Position,
    sequence: u32,
    base_bytes: u64,
    delta_bytes: u64,
}

impl Cadence {
    pub(crate) fn new(enabled: bool, compact_at_percent: u32) -> Self {
        Cadence {
            enabled,
            compact_at_percent: u64::from(compact_at_percent),
            chain: None,
            bases_not_before: None,
        }
    }

    /// Whether the model writes deltas.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// A base was just snapshotted, its snapshot budget running until `until`: the deltas after
    /// it are charged their own cost, and the next compaction waits for this base's budget, so
    /// that bases keep to the budget among themselves.
    pub(crate) fn defer_bases_until(&mut self, until: Instant) {
        self.bases_not_before = Some(until);
    }

    /// The model restored from a checkpoint `piece` at `position` whose base takes
    /// `base_bytes` and whose deltas `delta_bytes`: the next delta follows it.
    pub(crate) fn restored(
        &mut self,
        piece: Piece,
        position: Position,
        (base_bytes, delta_bytes): (u64, u64),
    ) {
        let (base, sequence) = match piece {
            Piece::Whole => (position, 0),
            Piece::Delta(link) => (link.base, link.sequence),
        };
        self.chain = Some(Chain {
            base,
            head: position,
            sequence,
            base_bytes,
            delta_bytes,
        });
    }

    /// What the next checkpoint, at `position`, is: a delta after the chain's last piece, or a
    /// base when there is no chain, or the deltas outgrew the base (compaction, once the last
    /// base's budget allows).
    pub(crate) fn next(&self, position: Position) -> Piece {
        let Some(chain) = self.chain.filter(|_| self.enabled) else {
            return Piece::Whole;
        };
        if position < chain.head || chain.sequence == u32::MAX {
            return Piece::Whole;
        }
        let outgrown = chain.delta_bytes.saturating_mul(100)
            > chain.base_bytes.saturating_mul(self.compact_at_percent);
        let deferred = self
            .bases_not_before
            .is_some_and(|until| Instant::now() < until);
        if outgrown && !deferred {
            return Piece::Whole;
        }
        Piece::Delta(Link {
            base: chain.base,
            previous: chain.head,
            sequence: chain.sequence + 1,
        })
    }

    /// A checkpoint `piece` at `position` of `bytes` was handed to the storage.
    pub(crate) fn taken(&mut self, piece: Piece, position: Position, bytes: u64) {
        match (piece, &mut self.chain) {
            (Piece::Delta(link), Some(chain)) => {
                chain.head = position;
                chain.sequence = link.sequence;
                chain.delta_bytes = chain.delta_bytes.saturating_add(bytes);
            }
            _ => self.restored(Piece::Whole, position, (bytes, 0)),
        }
    }

    /// A write failed: the chain may lack it, so the next checkpoint is a base.
    pub(crate) fn broken(&mut self) {
        self.chain = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_follow_a_base_until_they_outgrow_half_of_it() {
        let mut cadence = Cadence::new(true, 50);
        assert_eq!(cadence.next(Position::new(1)), Piece::Whole);
        cadence.taken(Piece::Whole, Position::new(1), 1000);
        let mut previous = Position::new(1);
        for i in 1..=5 {
            let at = Position::new(1 + i);
            let piece = cadence.next(at);
            assert_eq!(
                piece,
                Piece::Delta(Link {
                    base: Position::new(1),
                    previous,
                    sequence: u32::try_from(i).expect("small"),
                })
            );
            cadence.taken(piece, at, 100);
            previous = at;
        }
        // 500 bytes of deltas on a 1000-byte base: one more, then a base.
        let piece = cadence.next(Position::new(7));
        cadence.taken(piece, Position::new(7), 100);
        assert_eq!(cadence.next(Position::new(8)), Piece::Whole);
        cadence.broken();
        assert_eq!(cadence.next(Position::new(8)), Piece::Whole);
        assert_eq!(
            Cadence::new(false, 50).next(Position::new(1)),
            Piece::Whole,
            "without deltas"
        );
    }
}
