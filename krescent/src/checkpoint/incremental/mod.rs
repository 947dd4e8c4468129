//! Incremental checkpoints: fields that write what changed, not what they hold.
//!
//! A `#[checkpoint(incremental)]` field is a collection that records which keys were inserted,
//! changed or removed since the last checkpoint ([`TrackedMap`], [`TrackedSet`]). A running
//! model whose storage keeps deltas ([`CheckpointStorage::keeps_deltas`](super::CheckpointStorage::keeps_deltas))
//! then writes a *base* (every field whole) followed by *deltas*: each delta holds the other
//! fields whole and, of each incremental field, the changed entries and the removed keys. A
//! storage keeps a base and its deltas as one checkpoint ([`Piece`]) and loads them together;
//! the field restores the base and applies the deltas in order. When the deltas written since
//! the base exceed a fraction of the base's size, the next checkpoint is a base again, which
//! replaces the chain (compaction).
//!
//! Each piece carries its own checksum, and a storage loads a chain only whole: a missing or
//! damaged piece, one of another version or another base, is [`StorageError::Corrupt`](super::StorageError::Corrupt)
//! for the whole checkpoint, which the model then rebuilds (or fails with, as `on_invalid` says).

mod cadence;
mod chain;
mod changes;
mod map;
mod piece;
mod set;

pub(crate) use cadence::Cadence;
pub(crate) use chain::{fold, link_follows};
pub use map::TrackedMap;
pub use piece::{Link, Piece};
pub use set::TrackedSet;

use super::{BucketValue, CheckpointBucket, CheckpointError};

/// The key marking a nested bucket as a delta of an incremental field.
pub(crate) const DELTA: &str = "krescent.delta";
/// The key marking a nested bucket as a folded chain (a base and its deltas) of a field.
pub(crate) const CHAIN: &str = "krescent.chain";
/// A delta's key holding the whole field (written when every entry may have changed).
const WHOLE: &str = "whole";
/// A delta's key holding the changed entries.
const CHANGED: &str = "changed";
/// A delta's key holding the removed keys.
const REMOVED: &str = "removed";

/// A collection that tracks its changes, for `#[checkpoint(incremental)]` fields: [`TrackedMap`]
/// and [`TrackedSet`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot track its changes for `#[checkpoint(incremental)]`",
    label = "not a change-tracked collection",
    note = "use `krescent::checkpoint::TrackedMap` or `krescent::checkpoint::TrackedSet`, or drop `incremental`"
)]
pub trait Incremental: Sized {
    /// Writes the whole collection under `key`.
    ///
    /// # Errors
    /// [`CheckpointError::Serialize`] naming the key.
    fn put_whole(&self, bucket: &mut CheckpointBucket, key: &str) -> Result<(), CheckpointError>;

    /// Writes the changes since the last [`seal`](Self::seal) into `delta` (a bucket of the
    /// checkpoint's format).
    ///
    /// # Errors
    /// [`CheckpointError::Serialize`] naming the key.
    fn put_changes(&self, delta: &mut CheckpointBucket) -> Result<(), CheckpointError>;

    /// The collection [`put_whole`](Self::put_whole) wrote.
    ///
    /// # Errors
    /// Why it does not decode.
    fn restore_whole(value: &BucketValue) -> Result<Self, String>;

    /// Applies the changed entries and removed keys of a delta.
    ///
    /// # Errors
    /// Why they do not decode.
    fn apply_changes(&mut self, delta: &CheckpointBucket) -> Result<(), String>;

    /// Forgets the recorded changes: a checkpoint holds them now.
    fn seal(&mut self);

    /// How many keys changed since the last seal; `None` when every entry may have.
    fn changed(&self) -> Option<usize>;
}

/// Writes `field` under `key`: whole, or its changes when `bucket` is a delta's.
///
/// # Errors
/// [`CheckpointError::Serialize`] naming the key.
pub fn put<T: Incremental>(
    field: &T,
    bucket: &mut CheckpointBucket,
    key: &str,
) -> Result<(), CheckpointError> {
    if !bucket.is_delta() {
        return field.put_whole(bucket, key);
    }
    let mut delta = CheckpointBucket::with_format(bucket.format());
    delta.insert(DELTA, BucketValue::Bool(true));
    if field.changed().is_some() {
        field.put_changes(&mut delta)?;
    } else {
        field.put_whole(&mut delta, WHOLE)?;
    }
    bucket.insert(key, BucketValue::Bucket(delta));
    Ok(())
}

/// The field under `key`: a whole collection, or a folded chain (a base and its deltas, as
/// a storage folds it) applied in order.
///
/// # Errors
/// [`CheckpointError::Missing`] or [`CheckpointError::Invalid`] naming the key; nothing is
/// half restored, the field is returned only whole.
pub fn restore<T: Incremental>(bucket: &CheckpointBucket, key: &str) -> Result<T, CheckpointError> {
    let invalid = |reason: String| CheckpointError::Invalid {
        key: key.to_owned(),
        reason,
    };
    let value = bucket.require(key)?;
    let BucketValue::Bucket(chain) = value else {
        return T::restore_whole(value).map_err(invalid);
    };
    if !chain.contains(CHAIN) {
        return Err(invalid(
            "expected a collection or a chain of deltas, found a bucket".to_owned(),
        ));
    }
    let mut pieces = chain.iter().filter(|(name, _)| *name != CHAIN);
    let Some((_, base)) = pieces.next() else {
        return Err(invalid("a chain of deltas without its base".to_owned()));
    };
    let mut field = T::restore_whole(base).map_err(|e| invalid(format!("its base: {e}")))?;
    for (name, piece) in pieces {
        let delta = match piece {
            BucketValue::Bucket(delta) if delta.contains(DELTA) => delta,
            other => {
                return Err(invalid(format!(
                    "delta {name} is a {}, not a delta",
                    other.kind()
                )))
            }
        };
        match delta.value(WHOLE) {
            Some(whole) => {
                field =
                    T::restore_whole(whole).map_err(|e| invalid(format!("delta {name}: {e}")))?;
            }
            None => field
                .apply_changes(delta)
                .map_err(|e| invalid(format!("delta {name}: {e}")))?,
        }
    }
    field.seal();
    Ok(field)
}

/// The sizes ([`json_len`](crate::metrics::json_len)) of a loaded checkpoint's base and of
/// its deltas' changes, from its folded `bucket`: what a restored model's next compaction
/// weighs.
pub(crate) fn chain_sizes(bucket: &CheckpointBucket) -> (u64, u64) {
    let total = crate::metrics::json_len(bucket) as u64;
    let mut deltas = 0;
    for (_, value) in bucket.iter() {
        if let BucketValue::Bucket(chain) = value {
            if chain.contains(CHAIN) {
                deltas += chain
                    .iter()
                    .filter(|(name, _)| *name != CHAIN)
                    .skip(1)
                    .map(|(_, piece)| crate::metrics::value_len(piece) as u64)
                    .sum::<u64>();
            }
        }
    }
    (total.saturating_sub(deltas), deltas)
}

/// Whether `bucket` holds an incremental field under `key`: a whole collection or a chain.
#[must_use]
pub fn present(bucket: &CheckpointBucket, key: &str) -> bool {
    match bucket.value(key) {
        None | Some(BucketValue::Bytes(_)) => false,
        Some(BucketValue::Bucket(chain)) => chain.contains(CHAIN),
        Some(_) => true,
    }
}
