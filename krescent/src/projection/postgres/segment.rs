//! Starting one segment of a split projection over: the tables are shared by every segment.

use deadpool_postgres::ClientWrapper;

use super::PostgresProjection;
use crate::checkpoint::CheckpointStorage as _;
use crate::checkpoint::CheckpointVersion;
use crate::fleet::{layout_of as segment_of, Handover, Segment};
use crate::postgres::DbFailure;

/// What a segment without a usable checkpoint does with the shared tables.
enum Reset {
    /// It starts from the first event without touching the rows of other segments: other
    /// segments of this version hold checkpoints, and none covered its slices.
    Join,
    /// It continues from where the segments it takes over from left off: the segment count
    /// changed (the old count's checkpoints were just carried over), or another segment of
    /// this count did that for it after it found no checkpoint.
    Continue(Handover),
    /// The tables start over: every segment's checkpoint goes, and the other segments'
    /// leases are fenced, so that every segment replays into the new tables.
    Whole {
        /// The checkpoints of the model (whole or any segment) to delete.
        checkpoints: Vec<String>,
        /// The leases of the other segments (of any count) that have a checkpoint, to fence.
        leases: Vec<String>,
    },
}

impl PostgresProjection {
    /// The reset of `segment` of `model`, in `client`'s open transaction: see
    /// [`CheckpointTransaction::reset_segment`](crate::checkpoint::CheckpointTransaction::reset_segment).
    pub(super) async fn reset_segment_in(
        &self,
        client: &ClientWrapper,
        model: &str,
        segment: Segment,
        version: &CheckpointVersion,
    ) -> Result<Option<Handover>, DbFailure> {
        let names = self.storage.names();
        // One segment of the model decides at a time, and holds the lock until its first
        // commit: a segment starting meanwhile then sees that commit's checkpoint.
        client
            .execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&names.segments_lock(model)],
            )
            .await?;
        // No lease of another count is live (this one was taken only then: `Leases::acquire`);
        // a holder of one paused past it is fenced before its checkpoint is read.
        self.fence_other_counts(client, model, segment.count())
            .await?;
        match self.plan(client, model, segment, version).await? {
            Reset::Join => {
                self.create_missing_tables(client).await?;
                Ok(None)
            }
            Reset::Continue(handover) => {
                self.create_missing_tables(client).await?;
                Ok(Some(handover))
            }
            Reset::Whole {
                checkpoints,
                leases,
            } => {
                // The tables first: dropping them waits for the other segments' open
                // transactions, which commit (their leases are not locked yet) or roll back.
                self.recreate_tables(client).await?;
                let fence = format!(
                    "UPDATE {} SET holder = '', epoch = epoch + 1, expires_at = '-infinity'
                     WHERE checkpoints = $1 AND namespace = ANY($2)",
                    names.leases
                );
                client
                    .execute(&fence, &[&names.checkpoints_plain, &leases])
                    .await?;
                let delete = format!(
                    "DELETE FROM {} WHERE namespace = ANY($1)",
                    names.checkpoints
                );
                client.execute(&delete, &[&checkpoints]).await?;
                // The events they parked go too: the rebuild meets (and parks) them again.
                let unpark = format!(
                    "DELETE FROM {} WHERE checkpoints = $1 AND namespace = ANY($2)",
                    names.parked
                );
                client
                    .execute(&unpark, &[&names.checkpoints_table_plain, &checkpoints])
                    .await?;
                Ok(None)
            }
        }
    }

    /// Creates the tables missing from the shapes, which do not exist yet.
    async fn create_missing_tables(&self, client: &ClientWrapper) -> Result<(), DbFailure> {
        let shapes = self.read_shapes(client).await?;
        for table in &self.tables {
            if !shapes.contains_key(&table.plain) {
                client.batch_execute(&table.create).await?;
            }
        }
        Ok(())
    }

    /// Whether `segment` joins the other segments' tables, continues from their checkpoints,
    /// or the whole model starts over.
    async fn plan(
        &self,
        client: &ClientWrapper,
        model: &str,
        segment: Segment,
        version: &CheckpointVersion,
    ) -> Result<Reset, DbFailure> {
        let names = self.storage.names();
        let mine = segment.namespace(model);
        let sql = format!(
            "SELECT namespace, version FROM {} WHERE namespace = $1 OR starts_with(namespace, $1 || '#')",
            names.checkpoints
        );
        let mut stored = Vec::new();
        for row in client.query(&sql, &[&model]).await? {
            let namespace: String = row.try_get(0)?;
            let stored_version: String = row.try_get(1)?;
            stored.push((namespace, stored_version));
        }
        let current = |namespace: &str, stored_version: &str| {
            stored_version == version.as_str() && segment_of(model, namespace).is_some()
        };
        // Written for this segment by another of its count after this one found none.
        if stored
            .iter()
            .any(|(namespace, v)| *namespace == mine && current(namespace, v))
        {
            let carried = match self.storage.load(&mine).await {
                Ok(Some(checkpoint)) => self.continues(segment, &checkpoint),
                Ok(None) | Err(_) => None,
            };
            if let Some(handover) = carried {
                return Ok(Reset::Continue(handover));
            }
        }
        let never_committed = stored.iter().all(|(namespace, _)| *namespace != mine);
        let (same, other): (Vec<String>, Vec<String>) = stored
            .iter()
            .filter(|(namespace, v)| *namespace != mine && current(namespace, v))
            .map(|(namespace, _)| namespace.clone())
            .partition(|namespace| {
                segment_of(model, namespace).is_some_and(|s| s.count() == segment.count())
            });
        if never_committed && !other.is_empty() {
            // The segment count changed: the old count's checkpoints carry over, if they can.
            match self
                .rescale(client, model, segment, version, &other, &same)
                .await?
            {
                Some(Some(handover)) => return Ok(Reset::Continue(handover)),
                Some(None) => return Ok(Reset::Join),
                None => {}
            }
        } else if never_committed && !same.is_empty() {
            return Ok(Reset::Join);
        }
        // Only a segment with a checkpoint can be running on the rows about to go: one without
        // either waits for this lock to reset itself, or never started.
        let leases: Vec<String> = stored
            .iter()
            .filter(|(namespace, _)| {
                *namespace != mine && Segment::from_namespace(model, namespace).is_some()
            })
            .map(|(namespace, _)| namespace.clone())
            .collect();
        let mut checkpoints: Vec<String> = stored.into_iter().map(|(n, _)| n).collect();
        checkpoints.push(mine);
        Ok(Reset::Whole {
            checkpoints,
            leases,
        })
    }
}
