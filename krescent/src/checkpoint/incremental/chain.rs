//! A base and its deltas, checked and folded into one checkpoint.

use super::{Link, Piece, CHAIN, DELTA};
use crate::checkpoint::{BucketValue, CheckpointBucket, StorageError, StoredCheckpoint};
use crate::Position;

/// Whether a delta with `link`, of `version`, may follow the stored chain whose base is `base`
/// (its version and position) and whose last piece is at `head` after `pieces` deltas; `Err`
/// says why not.
pub(crate) fn link_follows(
    link: &Link,
    base: Position,
    head: Position,
    pieces: usize,
) -> Result<(), String> {
    if link.base != base {
        return Err(format!(
            "it belongs to the base at position {}, the stored base is at {base}",
            link.base
        ));
    }
    if link.previous != head || link.sequence as usize != pieces + 1 {
        return Err(format!(
            "it follows position {} as delta {}, the stored chain ends at {head} after {pieces} deltas",
            link.previous, link.sequence
        ));
    }
    Ok(())
}

/// `base` and `deltas` (oldest first, as stored, each already checked against its checksum)
/// as one checkpoint at the last delta's position: the other fields from the last delta, each
/// incremental field a chain (`CHAIN`) of the base's value and every delta's, which
/// [`restore`](super::restore) applies in order.
///
/// # Errors
/// [`StorageError::Corrupt`] naming `origin` when the pieces do not make one chain: a delta of
/// another namespace, version or base, one missing or out of order, or a field's value absent
/// from a piece.
pub(crate) fn fold(
    mut base: StoredCheckpoint,
    mut deltas: Vec<StoredCheckpoint>,
    origin: &str,
) -> Result<StoredCheckpoint, StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt {
        origin: origin.to_owned(),
        reason,
    };
    let Some(head) = deltas.last() else {
        return Ok(base);
    };
    if base.piece != Piece::Whole {
        return Err(corrupt("the chain's base is itself a delta".to_owned()));
    }
    let mut previous = base.position;
    for (i, delta) in deltas.iter().enumerate() {
        let Piece::Delta(link) = delta.piece else {
            return Err(corrupt(format!(
                "piece {} of the chain is not a delta",
                i + 1
            )));
        };
        if delta.version != base.version || delta.namespace != base.namespace {
            return Err(corrupt(format!(
                "delta {} is of `{}` version `{}`, its base of `{}` version `{}`",
                link.sequence, delta.namespace, delta.version, base.namespace, base.version
            )));
        }
        link_follows(&link, base.position, previous, i)
            .map_err(|reason| corrupt(format!("delta {}: {reason}", i + 1)))?;
        if delta.position < previous {
            return Err(corrupt(format!(
                "delta {} is at position {}, before the piece it follows ({previous})",
                link.sequence, delta.position
            )));
        }
        previous = delta.position;
    }
    let format = head.bucket.format();
    let (namespace, version, position, taken_at, piece) = (
        head.namespace.clone(),
        head.version.clone(),
        head.position,
        head.taken_at,
        head.piece,
    );
    let last = deltas.len() - 1;
    let keys: Vec<String> = deltas[last]
        .bucket
        .iter()
        .map(|(key, _)| key.to_owned())
        .collect();
    let mut bucket = CheckpointBucket::with_format(format);
    for key in keys {
        let Some(value) = deltas[last].bucket.remove(&key) else {
            continue;
        };
        if !is_delta(&value) {
            bucket.insert(key, value);
            continue;
        }
        // The pieces move into the chain: a base's value is tens of MB.
        let mut chain = CheckpointBucket::with_format(format);
        chain.insert(CHAIN, BucketValue::Bool(true));
        let Some(whole) = base.bucket.remove(&key) else {
            return Err(corrupt(format!("the base has no `{key}` under its deltas")));
        };
        chain.insert(piece_name(0), whole);
        for (i, delta) in deltas[..last].iter_mut().enumerate() {
            match delta.bucket.remove(&key) {
                Some(value) if is_delta(&value) => chain.insert(piece_name(i + 1), value),
                _ => return Err(corrupt(format!("delta {} has no delta of `{key}`", i + 1))),
            }
        }
        chain.insert(piece_name(last + 1), value);
        bucket.insert(key, BucketValue::Bucket(chain));
    }
    Ok(StoredCheckpoint {
        namespace,
        version,
        position,
        taken_at,
        bucket,
        piece,
    })
}
/// Whether `value` is an incremental field's delta.
fn is_delta(value: &BucketValue) -> bool {
    matches!(value, BucketValue::Bucket(delta) if delta.contains(DELTA))
}

/// The name of a chain's `n`th piece (the base is 0), in the chain's order.
fn piece_name(n: usize) -> String {
    format!("{n:010}")
}
