//! Starting one segment of a split projection over: the tables are shared by every segment.

use deadpool_postgres::ClientWrapper;

use super::PostgresProjection;
use crate::checkpoint::CheckpointVersion;
use crate::fleet::Segment;
use crate::postgres::DbFailure;

/// What a segment without a usable checkpoint does with the shared tables.
enum Reset {
    /// Other segments of this version hold checkpoints and this one never committed: it
    /// starts from the first event without touching their rows.
    Join,
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
    ) -> Result<(), DbFailure> {
        let names = self.storage.names();
        // One segment of the model decides at a time, and holds the lock until its first
        // commit: a segment starting meanwhile then sees that commit's checkpoint.
        client
            .execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&names.segments_lock(model)],
            )
            .await?;
        match self.plan(client, model, segment, version).await? {
            Reset::Join => {
                // A table missing from the shapes does not exist yet.
                let shapes = self.read_shapes(client).await?;
                for table in &self.tables {
                    if !shapes.contains_key(&table.plain) {
                        client.batch_execute(&table.create).await?;
                    }
                }
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
            }
        }
        Ok(())
    }

    /// Whether `segment` joins the other segments' tables or the whole model starts over.
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
        let never_committed = stored.iter().all(|(namespace, _)| *namespace != mine);
        let others_current = stored.iter().any(|(namespace, stored_version)| {
            *namespace != mine
                && stored_version == version.as_str()
                && Segment::from_namespace(model, namespace)
                    .is_some_and(|other| other.count() == segment.count())
        });
        if never_committed && others_current {
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
