//! The fencing token: the lease's epoch, checked by every commit of its holder.

/// What a leased model's commits prove: that `holder` still holds the lease of `namespace`
/// under `epoch`. Epochs only grow: each takeover increments it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The checkpoint namespace the lease is for.
    pub namespace: String,
    /// The holder's id (random per run of a model).
    pub holder: String,
    /// The epoch the holder took the lease under.
    pub epoch: u64,
    /// The lease's time to live: a fenced commit that sits idle in its transaction longer
    /// than this (its process paused) is ended by the server
    /// (`idle_in_transaction_session_timeout`), so the lease row it locked cannot hold back a
    /// takeover for longer.
    pub ttl: std::time::Duration,
}
