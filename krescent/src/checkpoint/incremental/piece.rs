//! What a stored checkpoint is: a whole state, or a delta over the checkpoints before it.

use crate::Position;

/// What a [`StoredCheckpoint`](crate::checkpoint::StoredCheckpoint) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Piece {
    /// The whole state: every field whole. Deltas may follow it (it is then their base).
    #[default]
    Whole,
    /// A delta: the incremental fields' changes since the checkpoint at `link.previous`, the
    /// other fields whole. Loaded, a checkpoint whose piece is a delta is a whole chain folded
    /// into one (a base and every delta up to this one).
    Delta(Link),
}

/// Where a delta belongs in its chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// The position of the chain's base.
    pub base: Position,
    /// The position of the checkpoint the delta applies to: the base, or the delta before.
    pub previous: Position,
    /// The delta's number in the chain, from 1.
    pub sequence: u32,
}
