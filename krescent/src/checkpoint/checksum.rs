//! The checksum of a stored checkpoint: what a storage records beside it and checks before
//! anything is restored.
//!
//! It is a CRC-32 (IEEE, the `crc32fast` crate) over everything that decides a restore: the
//! namespace, the version, the position, the time, and every key and value of the bucket, each
//! value with its kind and as it is kept (a JSON value's text, a `MessagePack` value's bytes).
//! Every field is length-prefixed, so no two checkpoints feed the same bytes. It does not depend
//! on how a storage lays the checkpoint out (a JSON document, a row, a `MessagePack` column), so
//! every storage checks the same sum, and a storage that re-encodes (a format change, an
//! export) keeps it. A CRC-32 detects every change of up to 32 consecutive bits, so every
//! single-bit flip of a value; it guards against damage, not against an attacker.

use crc32fast::Hasher;

// cycle: `StoredCheckpoint::checksum` (`stored.rs`) is this function; both are the stored
// checkpoint's contract, this file its sum.
use super::{BucketValue, CheckpointBucket, Piece, StoredCheckpoint};
use crate::checkpoint::to_micros;

/// The checksum of `checkpoint`.
pub(super) fn of(checkpoint: &StoredCheckpoint) -> u32 {
    let mut sum = Sum(Hasher::new());
    sum.bytes(checkpoint.namespace.as_bytes());
    sum.bytes(checkpoint.version.as_str().as_bytes());
    sum.0.update(&checkpoint.position.get().to_le_bytes());
    sum.0.update(&to_micros(checkpoint.taken_at).to_le_bytes());
    sum.bucket(&checkpoint.bucket);
    // A whole checkpoint sums as before deltas existed, so stored ones still verify.
    if let Piece::Delta(link) = checkpoint.piece {
        sum.0.update(&[0xd]);
        sum.0.update(&link.base.get().to_le_bytes());
        sum.0.update(&link.previous.get().to_le_bytes());
        sum.0.update(&link.sequence.to_le_bytes());
    }
    sum.0.finalize()
}

struct Sum(Hasher);

impl Sum {
    /// `bytes`, after their length.
    fn bytes(&mut self, bytes: &[u8]) {
        self.0.update(&(bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    fn bucket(&mut self, bucket: &CheckpointBucket) {
        self.0.update(&(bucket.len() as u64).to_le_bytes());
        for (key, value) in bucket.iter() {
            self.bytes(key.as_bytes());
            self.value(value);
        }
    }

    /// The value's kind (one byte) and its content.
    fn value(&mut self, value: &BucketValue) {
        match value {
            BucketValue::Str(s) => {
                self.0.update(&[1]);
                self.bytes(s.as_bytes());
            }
            BucketValue::Int(i) => {
                self.0.update(&[2]);
                self.0.update(&i.to_le_bytes());
            }
            BucketValue::Uint(u) => {
                self.0.update(&[3]);
                self.0.update(&u.to_le_bytes());
            }
            BucketValue::Float(f) => {
                self.0.update(&[4]);
                self.0.update(&f.to_bits().to_le_bytes());
            }
            BucketValue::Bool(b) => self.0.update(&[5, u8::from(*b)]),
            BucketValue::Json(raw) => {
                self.0.update(&[6]);
                self.bytes(raw.get().as_bytes());
            }
            BucketValue::Bytes(bytes) => {
                self.0.update(&[7]);
                self.bytes(bytes);
            }
            BucketValue::MessagePack(packed) => {
                self.0.update(&[8]);
                self.bytes(packed);
            }
            BucketValue::Bucket(nested) => {
                self.0.update(&[9]);
                self.bucket(nested);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::checkpoint::{CheckpointFormat, CheckpointVersion};
    use crate::Position;

    fn checkpoint() -> StoredCheckpoint {
        let mut bucket = CheckpointBucket::with_format(CheckpointFormat::MessagePack);
        bucket.put("count", &40_u64).expect("put");
        bucket.put("label", "last=k4").expect("put");
        bucket.put("list", &vec![1, 2, 3]).expect("put");
        let mut checkpoint = StoredCheckpoint::new(
            "books",
            CheckpointVersion::from_text("v1-abc".to_owned()),
            Position::new(7),
            bucket,
        );
        checkpoint.taken_at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_001);
        checkpoint
    }

    #[test]
    fn every_field_changes_the_sum() {
        let original = checkpoint();
        let sum = of(&original);
        assert_eq!(sum, of(&original.clone()), "deterministic");
        let mut changed = Vec::new();
        let mut c = original.clone();
        c.namespace.push('x');
        changed.push(c);
        let mut c = original.clone();
        c.version = CheckpointVersion::from_text("v1-abd".to_owned());
        changed.push(c);
        let mut c = original.clone();
        c.position = Position::new(8);
        changed.push(c);
        let mut c = original.clone();
        c.taken_at += Duration::from_micros(1);
        changed.push(c);
        let mut c = original.clone();
        c.bucket.put("count", &41_u64).expect("put");
        changed.push(c);
        let mut c = original.clone();
        c.bucket.put("label", "mast=k4").expect("put");
        changed.push(c);
        let mut c = original;
        c.bucket.insert("count", BucketValue::Uint(40));
        changed.push(c);
        for c in changed {
            assert_ne!(of(&c), sum, "{c:?}");
        }
    }
}
