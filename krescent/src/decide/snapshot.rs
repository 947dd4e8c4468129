//! Per-stream snapshots of write models, kept in the model's checkpoint storage.
//!
//! The snapshot of model `M` for stream `s` is a checkpoint under the namespace
//! `<M::NAME>@<s percent-encoded>` (every byte outside `[A-Za-z0-9._-]` as `%XX`), so that any
//! stream id gives a namespace that every storage can hold and no two streams share one. Its
//! position is the global position of the stream's last event it covers; its bucket holds the
//! stream's version (`stream_version`) and the model's own checkpoint (`state`). It is written
//! with the model's [`CheckpointVersion`], so a bump of the model's version (or of a handled
//! event's revision, or of its checkpointed fields) makes old snapshots unusable: they are
//! ignored and the stream is replayed.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use crate::checkpoint::{
    BucketValue, CheckpointBucket, CheckpointStorage, CheckpointVersion, StorageError,
    StoredCheckpoint, Strategy,
};
use crate::model::EventModel;
use crate::Position;

/// The namespace of `M`'s snapshot of `stream_id`.
#[must_use]
pub fn snapshot_namespace<M: EventModel>(stream_id: &str) -> String {
    let mut namespace = String::with_capacity(M::NAME.len() + 1 + stream_id.len());
    namespace.push_str(M::NAME);
    namespace.push('@');
    for byte in stream_id.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
            namespace.push(char::from(byte));
        } else {
            let _ = write!(namespace, "%{byte:02X}");
        }
    }
    namespace
}

/// A snapshot restored into a model.
pub(crate) struct Restored {
    pub(crate) position: Position,
    pub(crate) stream_version: u64,
    pub(crate) taken_at: SystemTime,
}

/// Restores `model` from `checkpoint`; `None` (and `model` untouched or to be discarded) when
/// it cannot be used: another version, a missing key, a failing restore.
pub(crate) fn restore<M: EventModel>(
    model: &mut M,
    checkpoint: &StoredCheckpoint,
) -> Result<Restored, String> {
    let version = CheckpointVersion::of::<M>();
    if checkpoint.version != version {
        return Err(format!(
            "it was written by version `{}`, this build is version `{version}`",
            checkpoint.version
        ));
    }
    let stream_version: u64 = checkpoint
        .bucket
        .get("stream_version")
        .map_err(|e| e.to_string())?;
    let state = checkpoint
        .bucket
        .bucket("state")
        .map_err(|e| e.to_string())?;
    if !model.validate_checkpoint(state) {
        return Err("it failed validation".to_owned());
    }
    model.restore_checkpoint(state).map_err(|e| e.to_string())?;
    Ok(Restored {
        position: checkpoint.position,
        stream_version,
        taken_at: checkpoint.taken_at,
    })
}

/// Whether `strategy` wants a snapshot of a stream now at `version`, whose last snapshot (if
/// any) covers `snapshot_version` and was taken at `taken_at`. Counted per stream: the events
/// of the stream since its snapshot.
pub(crate) fn due(strategy: &Strategy, version: u64, last: Option<(u64, SystemTime)>) -> bool {
    let (snapshot_version, taken_at) = last.unwrap_or((0, SystemTime::UNIX_EPOCH));
    let new_events = version.saturating_sub(snapshot_version);
    if new_events == 0 {
        return false;
    }
    match strategy {
        Strategy::FixedEvents(n) => new_events >= u64::from(n.get()),
        Strategy::FixedTime(d) => taken_at.elapsed().map_or(true, |elapsed| elapsed >= *d),
        Strategy::Always => true,
        Strategy::Manual | Strategy::OnShutdown | Strategy::Never => false,
        Strategy::Any(all) => all.iter().any(|s| due(s, version, last)),
    }
}

/// A snapshot being written in the background, off the decision's path.
///
/// Dropping it lets the write finish on its own (a failure is then only logged); await
/// [`written`](Self::written) to know that it is stored.
#[derive(Debug)]
pub struct SnapshotWrite {
    task: tokio::task::JoinHandle<Result<(), StorageError>>,
    /// The namespace written.
    pub namespace: String,
    /// The position the snapshot covers.
    pub position: Position,
}

impl SnapshotWrite {
    /// Waits until the snapshot is stored.
    ///
    /// # Errors
    /// What the storage said, or [`StorageError::Database`] wrapping the task's failure if the
    /// write's task panicked or was cancelled (its runtime shut down).
    pub async fn written(self) -> Result<(), StorageError> {
        self.task
            .await
            .map_err(|e| StorageError::Database(Box::new(e)))?
    }
}

/// Takes `model`'s snapshot of `stream_id` at `stream_version`, its last event at `position`,
/// and writes it on a task of its own. The caller guarantees that every event the state
/// reflects is in the store.
pub(crate) fn write<M: EventModel>(
    storage: &Arc<dyn CheckpointStorage>,
    stream_id: &str,
    model: &M,
    stream_version: u64,
    position: Position,
) -> Result<SnapshotWrite, StorageError> {
    let namespace = snapshot_namespace::<M>(stream_id);
    let mut state = CheckpointBucket::with_format(storage.format());
    model
        .create_checkpoint(&mut state)
        .map_err(|e| StorageError::Encode {
            namespace: namespace.clone(),
            reason: e.to_string(),
        })?;
    let mut bucket = CheckpointBucket::with_format(storage.format());
    bucket.insert("stream_version", BucketValue::Uint(stream_version));
    bucket.insert("state", BucketValue::Bucket(state));
    let checkpoint = StoredCheckpoint::new(
        namespace.clone(),
        CheckpointVersion::of::<M>(),
        position,
        bucket,
    );
    let storage = storage.clone();
    let task = tokio::spawn(async move {
        let stored = storage.store(&checkpoint).await;
        if let Err(e) = &stored {
            tracing::warn!(namespace = %checkpoint.namespace, error = %e, "cannot write a snapshot; the next load replays more of the stream");
        }
        stored
    });
    Ok(SnapshotWrite {
        task,
        namespace,
        position,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;
    use std::time::Duration;

    #[test]
    fn strategies_count_the_stream_s_events_since_its_snapshot() {
        let every = |n| Strategy::FixedEvents(NonZeroU32::new(n).expect("non-zero"));
        let now = SystemTime::now();
        assert!(!due(&every(3), 2, None));
        assert!(due(&every(3), 3, None));
        assert!(!due(&every(3), 5, Some((3, now))));
        assert!(due(&every(3), 6, Some((3, now))));
        assert!(due(&Strategy::Always, 4, Some((3, now))));
        assert!(!due(&Strategy::Always, 3, Some((3, now))), "nothing new");
        assert!(!due(&Strategy::Never, 100, None));
        assert!(!due(&Strategy::Manual, 100, None));
        let minute = Strategy::FixedTime(Duration::from_secs(60));
        assert!(!due(&minute, 9, Some((3, now))));
        assert!(due(&minute, 9, Some((3, now - Duration::from_secs(61)))));
        assert!(due(
            &Strategy::Any(vec![Strategy::Never, every(2)]),
            5,
            Some((3, now))
        ));
    }
}
