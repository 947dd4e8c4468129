//! The lease of a run: taken before the model restores (a standby waits here), its fence set
//! on the storage and the model's transaction, released (or reported fenced) when the run ends.
//! See [`crate::fleet`].

use super::plan::Plan;
use super::restart::Models;
use super::running::Control;
use crate::model::EventModel;
use crate::Error;

/// A lease a run holds.
#[cfg(feature = "postgres")]
pub(crate) use crate::fleet::HeldLease as Lease;

/// A lease a run holds: without PostgreSQL no storage keeps leases, so there is none.
#[cfg(not(feature = "postgres"))]
pub(crate) enum Lease {}

/// Takes the lease of the model when it needs one — it has a projection (a transaction) or is
/// exclusive (`plan.exclusive`), and its storage keeps leases — waiting as a standby while
/// another instance holds it; then fences `plan`'s storage and every model `models` gives (the
/// first is built here) with it, for every start while the lease is held. The first model back
/// when a stop comes first.
// Without PostgreSQL there is no lease to wait for: nothing to await, no model to name.
#[cfg_attr(not(feature = "postgres"), allow(clippy::unused_async))]
pub(crate) async fn take<S, M: EventModel>(
    plan: &mut Plan<S>,
    models: Models<M>,
    control: &Control,
) -> Result<Result<(Models<M>, Option<Lease>), M>, Error> {
    #[cfg(feature = "postgres")]
    {
        // A storage that is not registered is reported by the first start.
        let Ok(Some(checkpointing)) = &mut plan.checkpointing else {
            return Ok(Ok((models, None)));
        };
        let (mut first, make) = match models {
            Models::Make(mut make) => (make(), Some(make)),
            Models::Once(Some(model)) => (model, None),
            Models::Once(None) => return Ok(Ok((Models::Once(None), None))),
        };
        // A blue/green projection's version has a namespace of its own, leased on its own.
        if let Some(namespace) =
            super::version::enter(&checkpointing.namespace, plan.segment, &mut first).await?
        {
            checkpointing.namespace = namespace;
        }
        let Some(leases) = checkpointing.storage.leases() else {
            return Ok(Ok((fenced(first, make, None), None)));
        };
        if !(plan.exclusive || first.transaction().is_some()) {
            return Ok(Ok((fenced(first, make, None), None)));
        }
        control.set_status(crate::Status::Standby);
        let mut stop = control.stop_flag();
        // Never two segment counts at once: a segment waits while another count runs.
        let layout = crate::fleet::Layout {
            model: M::NAME,
            count: plan.segment.map_or(1, crate::fleet::Segment::count),
        };
        let Some(lease) = leases
            .acquire(
                &checkpointing.namespace,
                Some(layout),
                plan.lease,
                &mut stop,
            )
            .await
        else {
            return Ok(Err(first));
        };
        let fence = lease.fence().clone();
        if let Some(fenced) = checkpointing.storage.fenced(&fence) {
            checkpointing.storage = fenced;
        }
        if let Some(transaction) = first.transaction() {
            transaction.set_fence(Some(fence.clone()));
        }
        // The checkpoint is loaded only now that the lease is held.
        control.set_status(crate::Status::Starting);
        Ok(Ok((fenced(first, make, Some(fence)), Some(lease))))
    }
    #[cfg(not(feature = "postgres"))]
    {
        let _ = (plan, control);
        Ok(Ok((models, None)))
    }
}

/// Watches `lease` while the run goes on: when its heartbeat finds it taken by another
/// holder, the run stops as a shutdown would (its last commit is fenced) instead of going on
/// until its next commit, which a quiet model may not make for a long time. Abort the returned
/// watch when the run has ended.
pub(crate) fn stop_when_lost(
    control: &mut Control,
    lease: Option<&Lease>,
) -> Option<tokio::task::JoinHandle<()>> {
    #[cfg(feature = "postgres")]
    {
        lease.map(|lease| control.stop_also_on(lease.lost()))
    }
    #[cfg(not(feature = "postgres"))]
    {
        let _ = control;
        lease.map(|lease| match *lease {})
    }
}

/// The models of a run whose first model is `first`: `make`'s after it, each with `fence` set
/// on its transaction; or `first` alone.
#[cfg(feature = "postgres")]
fn fenced<M: EventModel>(
    first: M,
    make: Option<Box<dyn FnMut() -> M + Send>>,
    fence: Option<crate::fleet::Fence>,
) -> Models<M> {
    let Some(mut make) = make else {
        return Models::Once(Some(first));
    };
    let mut first = Some(first);
    Models::Make(Box::new(move || {
        first.take().unwrap_or_else(|| {
            let mut model = make();
            if let (Some(fence), Some(transaction)) = (&fence, model.transaction()) {
                transaction.set_fence(Some(fence.clone()));
            }
            model
        })
    }))
}

/// After a leased run: a fenced commit, or any end once another holder has taken the lease
/// (a stop by the heartbeat that found it so, a failure), becomes [`Error::Fenced`] (the
/// lease is not this run's any more); anything else releases the lease so that a standby
/// takes over at once.
#[cfg_attr(
    not(feature = "postgres"),
    allow(clippy::unused_async, clippy::extra_unused_type_parameters)
)]
pub(crate) async fn settle<M: EventModel, T>(
    result: Result<T, Error>,
    lease: Option<Lease>,
) -> Result<T, Error> {
    let Some(lease) = lease else {
        return result;
    };
    #[cfg(not(feature = "postgres"))]
    match lease {}
    #[cfg(feature = "postgres")]
    {
        if let Err(Error::Storage {
            source:
                crate::checkpoint::StorageError::Fenced {
                    namespace, epoch, ..
                },
            ..
        }) = result
        {
            tracing::warn!(
                model = M::NAME,
                epoch,
                "fenced: another instance holds the lease now; stepping down"
            );
            return Err(Error::Fenced {
                model: M::NAME,
                namespace,
                epoch,
            });
        }
        // Any other end of a run whose lease another holder has taken is a consequence of
        // having lost it: stopped by the heartbeat that found it so, or failed (a process
        // paused past its ttl finds its session ended by the server, its transaction rolled
        // back). It steps down as a fenced run does.
        if !lease.is_lost().await {
            lease.release().await;
            return result;
        }
        let fence = lease.fence();
        match result {
            Ok(_) => tracing::warn!(
                model = M::NAME,
                epoch = fence.epoch,
                "stopped: another instance holds the lease now; stepping down"
            ),
            Err(error) => tracing::warn!(
                model = M::NAME,
                epoch = fence.epoch,
                %error,
                "failed after another instance took the lease; stepping down"
            ),
        }
        Err(Error::Fenced {
            model: M::NAME,
            namespace: fence.namespace.clone(),
            epoch: fence.epoch,
        })
    }
}
