//! Who runs a split model: each instance is a member, a lease row of its own that it renews,
//! and the members share the segments out among themselves.

use crate::store::postgres::store_connection;
use tracing::warn;

use super::{HeldLease, LeaseConfig, Leases};
use crate::store::postgres::DbFailure;

/// The lease namespaces of `model`'s members start with this.
fn members_prefix(model: &str) -> String {
    format!("{model}#member/")
}

impl Leases {
    /// Makes this instance a member of `model`'s fleet: a lease of a namespace of its own,
    /// renewed like any lease and let go of when dropped or released. Members whose lease
    /// expired more than a minute ago (their process died) are deleted first.
    pub(crate) async fn join(&self, model: &str, config: LeaseConfig) -> Option<HeldLease> {
        let prefix = members_prefix(model);
        let sql = format!(
            "DELETE FROM {} WHERE checkpoints = $1 AND starts_with(namespace, $2)
             AND expires_at < clock_timestamp() - interval '1 minute'",
            self.names.leases
        );
        let cleaned = async {
            let client = store_connection(&self.pool).await?;
            client
                .execute(&sql, &[&self.names.checkpoints_plain, &prefix])
                .await?;
            Ok::<_, DbFailure>(())
        };
        if let Err(e) = cleaned.await {
            let error = e.storage("delete expired members");
            warn!(model, %error, "deleting the members that died failed; they expire anyway");
        }
        let namespace = format!("{prefix}{}", uuid::Uuid::new_v4().simple());
        // Nothing stops the wait: the namespace is new, so the first try takes it (or the
        // database fails and it is retried).
        let (_never, mut stop) = tokio::sync::watch::channel(false);
        self.acquire(&namespace, config, &mut stop).await
    }

    /// The members of `model` whose lease is live, by namespace (in byte order).
    pub(crate) async fn members(&self, model: &str) -> Result<Vec<String>, DbFailure> {
        let sql = format!(
            "SELECT namespace FROM {} WHERE checkpoints = $1 AND starts_with(namespace, $2)
             AND expires_at > clock_timestamp() ORDER BY namespace COLLATE \"C\"",
            self.names.leases
        );
        let client = store_connection(&self.pool).await?;
        let rows = client
            .query(
                &sql,
                &[&self.names.checkpoints_plain, &members_prefix(model)],
            )
            .await?;
        rows.iter()
            .map(|row| row.try_get(0).map_err(DbFailure::from))
            .collect()
    }

    /// Which of `namespaces` have a live lease now, held by anyone.
    pub(crate) async fn held(&self, namespaces: &[String]) -> Result<Vec<String>, DbFailure> {
        let sql = format!(
            "SELECT namespace FROM {} WHERE checkpoints = $1 AND namespace = ANY($2)
             AND expires_at > clock_timestamp()",
            self.names.leases
        );
        let client = store_connection(&self.pool).await?;
        let rows = client
            .query(&sql, &[&self.names.checkpoints_plain, &namespaces])
            .await?;
        rows.iter()
            .map(|row| row.try_get(0).map_err(DbFailure::from))
            .collect()
    }
}
