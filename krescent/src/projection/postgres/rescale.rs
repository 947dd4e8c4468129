//! Rescaling a split projection: the checkpoints of the old segment count become checkpoints
//! of the new one, in the transaction of the first segment of the new count that starts.
//!
//! Segments of power-of-two counts are ranges of slices ([`crate::fleet::Slice`]), so what the
//! old segments processed is known per slice ([`Progress`]); each segment of the new count gets
//! a checkpoint at the lowest position over its slices, with a [`Handover`] of the slices
//! processed further, which it skips until it passes them. The old checkpoints are deleted and
//! their parked events move to the new segment of their stream, all in the one transaction,
//! so every slice's progress lives in exactly one checkpoint at any time. A checkpoint holding
//! anything but projection references (a `#[checkpoint]` field kept in memory) cannot be split
//! or merged: the model is then rebuilt.

use deadpool_postgres::ClientWrapper;
use tracing::{info, warn};

use std::collections::BTreeMap;

use super::{PostgresProjection, REVISION, TABLES};
use crate::checkpoint::storage::PostgresCheckpointStorage;
use crate::checkpoint::{
    BucketValue, CheckpointBucket, CheckpointStorage as _, CheckpointSupport as _,
    CheckpointVersion, StoredCheckpoint,
};
use crate::fleet::{layout_of as segment_of, Handover, Progress, Segment};
use crate::postgres::DbFailure;

impl PostgresProjection {
    /// Fences, in `client`'s open transaction, the leases of `model` for segment counts other
    /// than `count` (the whole model's is count 1): a holder of the old count paused past its
    /// lease can never commit again. Waits for their commits in flight.
    pub(super) async fn fence_other_counts(
        &self,
        client: &ClientWrapper,
        model: &str,
        count: u32,
    ) -> Result<(), DbFailure> {
        let names = self.storage.names();
        let sql = format!(
            "SELECT namespace FROM {} WHERE checkpoints = $1 AND (namespace = $2 OR starts_with(namespace, $2 || '#'))",
            names.leases
        );
        let mut others = Vec::new();
        for row in client
            .query(&sql, &[&names.checkpoints_plain, &model])
            .await?
        {
            let namespace: String = row.try_get(0)?;
            if segment_of(model, &namespace).is_some_and(|s| s.count() != count) {
                others.push(namespace);
            }
        }
        if others.is_empty() {
            return Ok(());
        }
        let fence = format!(
            "UPDATE {} SET holder = '', epoch = epoch + 1, expires_at = '-infinity'
             WHERE checkpoints = $1 AND namespace = ANY($2)",
            names.leases
        );
        client
            .execute(&fence, &[&names.checkpoints_plain, &others])
            .await?;
        Ok(())
    }

    /// Discards, in `client`'s open transaction, the checkpoints (and parked events) of the
    /// segments `model` was split into before, of any count, and fences their leases: the whole
    /// model starts over in tables they described too.
    pub(super) async fn drop_segments(
        &self,
        client: &ClientWrapper,
        model: &str,
    ) -> Result<(), DbFailure> {
        self.fence_other_counts(client, model, 1).await?;
        let names = self.storage.names();
        let sql = format!(
            "SELECT namespace FROM {} WHERE starts_with(namespace, $1 || '#')",
            names.checkpoints
        );
        for row in client.query(&sql, &[&model]).await? {
            let namespace: String = row.try_get(0)?;
            if Segment::from_namespace(model, &namespace).is_some() {
                self.storage.delete_in(client, &namespace).await?;
                self.storage.unpark_in(client, &namespace, None).await?;
            }
        }
        Ok(())
    }

    /// Whether `bucket` holds projection references only (and what a rescale left in it), one
    /// of them this projection's as it is now: the model's state is all in the tables, so
    /// the checkpoint can be split and merged by slices.
    pub(super) fn carries_over(&self, bucket: &CheckpointBucket) -> bool {
        let mut mine = false;
        for (key, value) in bucket.iter() {
            if key == Handover::KEY {
                continue;
            }
            let BucketValue::Bucket(nested) = value else {
                return false;
            };
            let is_reference = nested.get::<u32>(REVISION).is_ok()
                && nested.get::<BTreeMap<String, String>>(TABLES).is_ok();
            if !is_reference {
                return false;
            }
            mine |= self.validate_checkpoint(nested);
        }
        mine
    }

    /// The handover `stored`, a checkpoint of `segment` that another segment wrote for it
    /// after this one found none, continues from; `None` when it cannot carry over.
    pub(super) fn continues(
        &self,
        segment: Segment,
        stored: &StoredCheckpoint,
    ) -> Option<Handover> {
        if !self.carries_over(&stored.bucket) {
            return None;
        }
        let handover = carried(&stored.bucket).ok()?;
        let mut progress = Progress::new();
        progress.record(segment, stored.position, handover.as_ref());
        progress.handover(segment)
    }

    /// Turns the checkpoints `old` (of `model`'s other segment counts, and of `version`) into
    /// checkpoints of `segment`'s count, in `client`'s open transaction: every segment of that
    /// count whose slices they cover gets one (except those in `current`, which have one of
    /// their own already, and `segment`, whose first commit writes its own), the old ones are
    /// deleted and their parked events move to the segment of their stream. `segment`'s
    /// handover comes back (`Some(None)`: none of its slices was processed); `None` when they
    /// cannot be carried over (a count that is not a power of two, a checkpoint with state in
    /// memory): the model must be rebuilt.
    pub(super) async fn rescale(
        &self,
        client: &ClientWrapper,
        model: &str,
        segment: Segment,
        version: &CheckpointVersion,
        old: &[String],
        current: &[String],
    ) -> Result<Option<Option<Handover>>, DbFailure> {
        if segment.slices().is_none() {
            return Ok(None);
        }
        let mut progress = Progress::new();
        let mut template = None;
        for namespace in old.iter().chain(current) {
            let Some(stored) = self.load_part(namespace).await? else {
                continue;
            };
            let Some(part) = segment_of(model, namespace) else {
                continue;
            };
            let handover = match carried(&stored.bucket) {
                Ok(handover) if self.carries_over(&stored.bucket) => handover,
                Ok(_) | Err(_) => {
                    warn!(model, namespace, "the checkpoint holds more than projection references: it cannot be split or merged, the model is rebuilt");
                    return Ok(None);
                }
            };
            if !progress.record(part, stored.position, handover.as_ref()) {
                warn!(model, namespace, "a segment count that is not a power of two is not a range of slices: the model is rebuilt");
                return Ok(None);
            }
            let mut bucket = stored.bucket;
            bucket.remove(Handover::KEY);
            template.get_or_insert(bucket);
        }
        let Some(template) = template else {
            return Ok(Some(None));
        };
        for other in Segment::all(segment.count()) {
            let namespace = other.namespace(model);
            if other == segment || current.contains(&namespace) {
                continue;
            }
            let Some(handover) = progress.handover(other) else {
                continue;
            };
            let mut bucket = template.clone();
            if !handover.is_passed() {
                bucket
                    .put(Handover::KEY, &handover)
                    .map_err(|e| DbFailure::Other(e.to_string()))?;
            }
            let checkpoint =
                StoredCheckpoint::new(namespace, version.clone(), handover.start(), bucket);
            let data = PostgresCheckpointStorage::encode(&checkpoint)
                .map_err(|e| DbFailure::Other(e.to_string()))?;
            self.storage.store_in(client, &checkpoint, &data).await?;
        }
        self.move_parked(client, model, segment.count(), old)
            .await?;
        for namespace in old {
            self.storage.delete_in(client, namespace).await?;
        }
        info!(model, segment = %segment, from = ?old, "rescaled: the checkpoints of the old segment count carry over");
        Ok(Some(progress.handover(segment)))
    }

    /// The checkpoint of `namespace`, read as the storage reads it (chains of deltas folded).
    async fn load_part(&self, namespace: &str) -> Result<Option<StoredCheckpoint>, DbFailure> {
        self.storage
            .load(namespace)
            .await
            .map_err(DbFailure::Storage)
    }

    /// Moves the events the segments `old` parked to the segment of `count` their stream is in.
    async fn move_parked(
        &self,
        client: &ClientWrapper,
        model: &str,
        count: u32,
        old: &[String],
    ) -> Result<(), DbFailure> {
        let names = self.storage.names();
        let select = format!(
            "SELECT namespace, position::text, stream_id FROM {} WHERE checkpoints = $1 AND namespace = ANY($2)",
            names.parked
        );
        let update = format!(
            "UPDATE {} SET namespace = $4 WHERE checkpoints = $1 AND namespace = $2 AND position = $3::text::numeric",
            names.parked
        );
        let rows = client
            .query(&select, &[&names.checkpoints_table_plain, &old])
            .await?;
        for row in rows {
            let namespace: String = row.try_get(0)?;
            let position: String = row.try_get(1)?;
            let stream_id: String = row.try_get(2)?;
            let to = Segment::of(&stream_id, count).namespace(model);
            client
                .execute(
                    &update,
                    &[&names.checkpoints_table_plain, &namespace, &position, &to],
                )
                .await?;
        }
        Ok(())
    }
}

/// The handover a checkpoint's bucket still carries, checked.
fn carried(bucket: &CheckpointBucket) -> Result<Option<Handover>, String> {
    bucket
        .value(Handover::KEY)
        .map(|value| value.to_serde::<Handover>().and_then(Handover::checked))
        .transpose()
}
