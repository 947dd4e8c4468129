//! Who runs a split model: each instance is a member, a lease row of its own that it renews,
//! and the members share the segments out among themselves.

use tracing::warn;

use super::lease::LeaseError;
use super::{HeldLease, LeaseConfig, Leases};

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
        if let Err(error) = self.table.delete_expired(&prefix).await {
            warn!(model, %error, "deleting the members that died failed; they expire anyway");
        }
        let namespace = format!("{prefix}{}", uuid::Uuid::new_v4().simple());
        // Nothing stops the wait: the namespace is new, so the first try takes it (or the
        // database fails and it is retried).
        let (_never, mut stop) = tokio::sync::watch::channel(false);
        self.acquire(&namespace, config, &mut stop).await
    }

    /// The members of `model` whose lease is live, by namespace (in byte order).
    pub(crate) async fn members(&self, model: &str) -> Result<Vec<String>, LeaseError> {
        self.table.live(&members_prefix(model)).await
    }

    /// Which of `namespaces` have a live lease now, held by anyone.
    pub(crate) async fn held(&self, namespaces: &[String]) -> Result<Vec<String>, LeaseError> {
        self.table.held(namespaces).await
    }
}
