//! Many instances, one writer: leases with fencing on PostgreSQL.
//!
//! A model that writes outside its process — a
//! [`PostgresProjection`](crate::projection::PostgresProjection), or any model whose
//! [`CheckpointSupport::transaction`](crate::CheckpointSupport::transaction) is `Some` — holds a
//! **lease** while [`Krescent::stream`](crate::Krescent::stream) (or
//! [`catch_up`](crate::Krescent::catch_up)) runs it with a
//! [`PostgresCheckpointStorage`](crate::checkpoint::storage::PostgresCheckpointStorage) (or a
//! bucket's storage given its leases, `ObjectStoreCheckpointStorage::with_leases`, feature
//! `object-store`: its writes are fenced by the epoch in the object). A second
//! instance of the same model (another process, or another `stream` in the same one) waits as a
//! standby ([`Status::Standby`](crate::Status::Standby)) and takes over when the holder stops,
//! dies or stops renewing its lease. `restore_only` reads and writes nothing, and takes no
//! lease. A model whose state lives in memory runs in every replica
//! and shares the checkpoint (a stored position never moves backwards);
//! [`Configure::exclusive`](crate::Configure::exclusive) makes any model take a lease.
//!
//! # Lease rows, not advisory locks
//!
//! A lease is a row of `"<schema>"."krescent_leases"` (created by the checkpoint storage's
//! `migrate()`): the holder (a random id per run), an **epoch** and an expiry. Session advisory
//! locks were the other choice and were rejected: a connection pooler in transaction mode
//! (`PgBouncer`) loses session state, so the lock would be held by whichever client the
//! pooler's connection serves; a partitioned holder keeps a session lock until TCP keepalive
//! notices, for minutes; and an advisory lock has no number that grows, so fencing would need a
//! row anyway. Expiry is judged by the database server's clock only (`clock_timestamp()` in
//! every statement); client clocks are never compared, so clock skew between hosts does not
//! matter.
//!
//! # Fencing
//!
//! Each takeover increments the lease's epoch (a row is never deleted, so an epoch only
//! grows). Every checkpoint write of a leased model and every projection commit checks, inside
//! its own transaction and holding the lease row `FOR SHARE`, that the row still names this
//! holder and epoch; a takeover (`UPDATE` of the row) therefore waits for a commit in flight,
//! and the new holder loads the checkpoint only after it holds the lease. A writer that lost
//! its lease — paused past its expiry, partitioned, its heartbeats failing — can never commit
//! again: its commit fails with [`StorageError::Fenced`](crate::checkpoint::StorageError::Fenced),
//! its transaction rolls back, and the model's task ends with [`Error::Fenced`](crate::Error::Fenced)
//! (it does not go back to standby by itself: run it again, as a supervisor would, and it waits
//! as a standby). A holder learns that it lost its lease at its next commit or its next
//! heartbeat, whichever comes first: the heartbeat that finds the lease taken stops the run as
//! a shutdown would (anything left to commit is fenced), so a quiet holder resumed after a
//! pause steps down too, and its task ends with [`Error::Fenced`](crate::Error::Fenced); so
//! does a run that fails in any other way once its lease is taken.
//!
//! # Failover
//!
//! With the default [`LeaseConfig`] (3 s lease, heartbeat every 1 s, standbys polling every
//! 500 ms) a standby takes over at most about 3.5 s after the holder was killed; a holder
//! that stops gracefully releases its lease, and a standby takes over within one poll. The
//! new holder restores the last committed checkpoint and replays from there, so the events the
//! killed holder had processed but not committed are processed again — by it, once.
//!
//! Limits: leases need PostgreSQL. The memory and file storages run without leases (one
//! process: a file store is opened by one process at a time, `StoreError::Locked` for the
//! next). A standby holds no connection while it waits beyond its polls. While a paused holder
//! keeps its transaction open, the rows it locked stay locked, so a new holder writing the same
//! rows waits until the old transaction ends (it is rolled back when the paused process
//! resumes and is fenced, or when its connection dies).
//!
//! # Segments
//!
//! A model split by `#[model(segments = N)]` runs as N [`Segment`]s, each a model of its own
//! with its own checkpoint and lease; [`Krescent::stream_segments`](crate::Krescent::stream_segments)
//! shares them out over the instances that run the model ([`RunningSegments`]), and
//! [`Krescent::for_segment`](crate::Krescent::for_segment) runs one by hand. A split
//! projection shares its tables between the segments; see
//! [`CheckpointTransaction::reset_segment`](crate::checkpoint::CheckpointTransaction::reset_segment)
//! for how a segment without a checkpoint joins them or starts the model over.
//!
//! # Changing the count
//!
//! A split projection whose count changes between powers of two (or from the unsplit model)
//! continues from the old count's checkpoints: the first segment of the new count converts
//! them, per [`Slice`], into checkpoints of the new count, each with a [`Handover`] of the
//! slices processed further than its position, which it skips until it passes them. A lease
//! of one count is taken only while no lease of another count of the model is live, and the
//! conversion fences the old count's leases before it reads their checkpoints: the new count
//! waits for the old one, and the two never commit at once. A model whose checkpoint holds
//! state in memory, or a count that is not a power of two, is rebuilt instead.

mod config;
mod fence;
mod handover;
#[cfg(feature = "postgres")]
mod lease;
#[cfg(feature = "postgres")]
mod membership;
mod segment;
mod slice;

pub use config::{LeaseConfig, LeaseHolder};
pub use fence::Fence;
pub use handover::Handover;
#[cfg(feature = "postgres")]
pub(crate) use handover::Progress;
#[cfg(feature = "postgres")]
#[doc(hidden)]
pub use lease::Leases;
#[cfg(feature = "postgres")]
pub(crate) use lease::{HeldLease, Layout, LeaseError, LeaseTable};
pub use segment::Segment;
#[cfg(feature = "postgres")]
pub(crate) use segment::{fair_share, layout_of};
pub use slice::Slice;
// Run by `Krescent::stream_segments`, at the top; shown here, with the fleet they form.
pub use crate::krescent::{RunningSegments, SegmentsEnded};
