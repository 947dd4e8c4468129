//! Checkpoints that commit in the same database transaction as a model's writes.

use super::{StorageError, StoredCheckpoint};
use crate::deadletter::ParkedEvent;
use crate::event::RecordedEvent;
use crate::Position;

/// Why [`CheckpointTransaction::flush`] failed.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    /// A write queued by a handler failed: the event that queued it. The runner reports it as
    /// that event's handler error.
    #[error("the write queued by the event at position {position} (`{event_type}` of stream `{stream_id}`) failed")]
    Write {
        /// The event's position.
        position: Position,
        /// The event's type name.
        event_type: String,
        /// The event's stream.
        stream_id: String,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The transaction itself failed (its connection, its `BEGIN`).
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A model extension whose writes go into a database transaction that the runner commits
/// together with the checkpoint, so that a crash can never separate the two (a Postgres
/// projection). Reached through [`CheckpointSupport::transaction`](super::CheckpointSupport::transaction).
///
/// The runner drives it: [`prepare`](Self::prepare) before the stored checkpoint is validated,
/// [`reset`](Self::reset) when the model starts without a usable checkpoint,
/// [`commit`](Self::commit) whenever the strategy takes a checkpoint (and when a streaming model
/// goes idle or stops, so that written rows never wait), and [`rollback`](Self::rollback) when a
/// handler fails. Implement it with [`#[krescent::async_trait]`](crate::async_trait).
#[async_trait::async_trait]
pub trait CheckpointTransaction: Send {
    /// Where [`commit`](Self::commit) writes the checkpoint, as
    /// [`CheckpointStorage::location`](super::CheckpointStorage::location) says it; the model
    /// starts only when its registered storage is there. `None` (the default): not checked.
    fn checkpoint_location(&self) -> Option<String> {
        None
    }

    /// Reads what validating the stored checkpoint needs, such as the current shape of the
    /// extension's tables.
    async fn prepare(&mut self) -> Result<(), StorageError>;

    /// Starts over: discards the extension's data (drops and recreates its tables) and the
    /// checkpoint of `namespace`, in the open transaction, so that both become visible with the
    /// first new checkpoint.
    async fn reset(&mut self, namespace: &str) -> Result<(), StorageError>;

    /// Starts one segment of a model split by `#[model(segments = N)]` over, in the open
    /// transaction, when it has no usable checkpoint: the extension's data is shared by every
    /// segment of `model`, so it is kept when other segments hold checkpoints of `version` and
    /// this segment never committed (a segment starting for the first time), and otherwise
    /// the whole model starts over (every segment's checkpoint and data discarded, the other
    /// segments' leases fenced). When the segment count changed and the checkpoints of the
    /// old count can be carried over (a rescale, see [`Handover`](crate::fleet::Handover)),
    /// the segment continues from them instead: the returned handover says from where, and
    /// what to skip until then; `None`: it starts from the first event. The default refuses:
    /// an extension must say how its data is split to run in segments.
    async fn reset_segment(
        &mut self,
        model: &str,
        segment: crate::fleet::Segment,
        version: &super::CheckpointVersion,
    ) -> Result<Option<crate::fleet::Handover>, StorageError> {
        let _ = version;
        Err(StorageError::Database(
            format!(
                "this checkpoint transaction cannot run `{model}` in segments (segment {segment})"
            )
            .into(),
        ))
    }

    /// Enters this build's `version` of `model` when the extension keeps versions side by
    /// side (a blue/green [`PostgresProjection`](crate::projection::PostgresProjection)), before
    /// the lease is taken: the namespace its checkpoint and lease are kept under. `None` (the
    /// default): the model's own namespace, as without versions.
    async fn enter_version(
        &mut self,
        model: &str,
        version: &super::CheckpointVersion,
    ) -> Result<Option<String>, StorageError> {
        let _ = (model, version);
        Ok(None)
    }

    /// The event whose handler runs next, so that what it queues can name it when it fails.
    /// The runner calls it before each event it hands to the model, and before each group it
    /// hands to a group handler with the group's last event (see [`crate::group`]). The
    /// default ignores it.
    fn handling(&mut self, event: &RecordedEvent) {
        let _ = event;
    }

    /// Sends the writes the handlers queued (in the open transaction, beginning it if needed).
    /// The runner calls it right before every commit (`before_commit`: nothing but the commit
    /// follows, so the transaction may be bounded in time), and after each event of a model
    /// whose error policy retries or parks, so that a failed write is its event's failure. The
    /// default has nothing queued.
    async fn flush(&mut self, before_commit: bool) -> Result<(), FlushError> {
        let _ = before_commit;
        Ok(())
    }

    /// Whether [`commit`](Self::commit) keeps deltas of incremental checkpoints as its
    /// storage does ([`CheckpointStorage::keeps_deltas`](super::CheckpointStorage::keeps_deltas)).
    /// `false` (the default): the model commits whole checkpoints.
    fn keeps_deltas(&self) -> bool {
        false
    }

    /// Writes `checkpoint` in the open transaction and commits it with everything written since
    /// the last commit.
    async fn commit(&mut self, checkpoint: &StoredCheckpoint) -> Result<(), StorageError>;

    /// Discards everything written since the last commit.
    async fn rollback(&mut self) -> Result<(), StorageError>;

    /// The fence of the lease the model holds while it runs (see [`crate::fleet`]); from now on
    /// [`commit`](Self::commit) must check it in its own transaction and fail with
    /// [`StorageError::Fenced`] when it no longer holds. `None`: no lease. The default ignores
    /// it: an extension that keeps its data outside the lease's database cannot be fenced.
    fn set_fence(&mut self, fence: Option<crate::fleet::Fence>) {
        let _ = fence;
    }

    /// Marks where the next event's writes begin, so that [`undo_event`](Self::undo_event)
    /// can take back that event's writes alone (a savepoint); whether it can. The runner calls
    /// it before each event of a model whose error policy retries or parks. The default
    /// cannot: such a model then stops on a handler error, as with `stop`.
    async fn begin_event(&mut self) -> Result<bool, StorageError> {
        Ok(false)
    }

    /// Takes back the writes since the last [`begin_event`](Self::begin_event), keeping the
    /// earlier ones of the open transaction.
    async fn undo_event(&mut self) -> Result<(), StorageError> {
        Err(StorageError::Database(
            "this checkpoint transaction cannot take back one event's writes".into(),
        ))
    }

    /// Writes `parked` in the open transaction, to commit with the next checkpoint, replacing
    /// events parked at the same places.
    async fn park(&mut self, parked: &[ParkedEvent]) -> Result<(), StorageError> {
        let _ = parked;
        Err(StorageError::Database(
            "this checkpoint transaction keeps no parked events".into(),
        ))
    }

    /// Removes the parked events of `namespace` at `positions` (all of them when `None`) in
    /// the open transaction, to commit with the next checkpoint.
    async fn unpark(
        &mut self,
        namespace: &str,
        positions: Option<&[Position]>,
    ) -> Result<(), StorageError> {
        let _ = (namespace, positions);
        Err(StorageError::Database(
            "this checkpoint transaction keeps no parked events".into(),
        ))
    }
}
