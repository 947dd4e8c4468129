//! Who runs a split model: each instance is a member, a lease row of its own that it renews,
//! and the members share the segments out among themselves.

use tracing::warn;

use super::lease::LeaseError;
use super::{HeldLease, LeaseConfig, Leases};

/// The lease namespaces of the members running `model` in `count` segments start with this:
/// the instances of another count (a rolling deploy that changes it) are not counted in the
/// shares, so the old count's instances keep running all of its segments until the last of
/// them stops.
fn members_prefix(model: &str, count: u32) -> String {
    format!("{model}#member/{count}/")
}

impl Leases {
    /// Makes this instance a member of the fleet running `model` in `count` segments: a lease
    /// of a namespace of its own, renewed like any lease and let go of when dropped or
    /// released. Members whose lease expired more than a minute ago (their process died) are
    /// deleted first.
    pub(crate) async fn join(
        &self,
        model: &str,
        count: u32,
        config: LeaseConfig,
    ) -> Option<HeldLease> {
        let prefix = members_prefix(model, count);
        if let Err(error) = self.table.delete_expired(&prefix).await {
            warn!(model, %error, "deleting the members that died failed; they expire anyway");
        }
        let namespace = format!("{prefix}{}", uuid::Uuid::new_v4().simple());
        // Nothing stops the wait: the namespace is new, so the first try takes it (or the
        // database fails and it is retried).
        let (_never, mut stop) = tokio::sync::watch::channel(false);
        self.acquire(&namespace, None, config, &mut stop).await
    }

    /// The members running `model` in `count` segments whose lease is live, by namespace (in
    /// byte order).
    pub(crate) async fn members(&self, model: &str, count: u32) -> Result<Vec<String>, LeaseError> {
        self.table.live(&members_prefix(model, count)).await
    }

    /// Which of `namespaces` have a live lease now, held by anyone: each with its holder.
    pub(crate) async fn held(
        &self,
        namespaces: &[String],
    ) -> Result<Vec<(String, String)>, LeaseError> {
        self.table.held(namespaces).await
    }
}
