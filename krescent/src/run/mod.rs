//! The run of one model: the one path that [`Krescent::catch_up`](crate::Krescent::catch_up),
//! [`stream`](crate::Krescent::stream), [`stream_with`](crate::Krescent::stream_with), the
//! [`Supervisor`](crate::supervisor::Supervisor) and the segments of a split model all take.
//! What differs between them is data, a [`Plan`]: where the run stops ([`Until`]), its
//! [`RestartPolicy`] (a catch-up's never restarts), where its models come from ([`Models`]: one
//! value restored in place, or a fresh one per start) and what its [`Control`] is watched by
//! (a [`Running`] handle, or nobody).
//!
//! ```text
//! run ─ lease::take ─────────── the lease, if the model needs one (a standby waits here)
//!     ─ restart::restarting ─┬─ restore::restore_keeping   the checkpoint, checked, into the model
//!       (again per policy)   ├─ Runner::begin              checks, a reset without a checkpoint
//!                            ├─ follow::follow             replay to the head, then follow appends
//!                            │    └─ Runner::apply ─ checkpoints.rs: snapshot → writer, or commit
//!                            │         └─ dead_letters.rs: a failed event retried or parked, as
//!                            │            the model's error policy says (`crate::deadletter`)
//!                            └─ Runner::finish             the final checkpoint, every write done
//!       (stopped as by a shutdown when the lease's heartbeat finds it taken)
//!     ─ lease::settle ───────── released, or the run was fenced
//! ```

mod checkpoints;
mod dead_letters;
mod follow;
mod lease;
mod plan;
mod policy;
mod restart;
mod restore;
mod runner;
mod running;
mod version;

use tokio::sync::watch;

use crate::fleet::Segment;
use crate::model::{EventModel, Origin};
use crate::store::EventStore;
use crate::{Error, Position};

pub use plan::{CaughtUp, Restored};
pub(crate) use plan::{Checkpointing, Plan, Unregistered, Until};
pub use policy::RestartPolicy;
pub(crate) use restart::{Attempts, Models, Setback};
pub(crate) use restore::{restore, Start};
pub(crate) use running::Control;
pub use running::{Running, Status};

/// Runs `model` in the caller's task until it has caught up with the store.
pub(crate) async fn catch_up<S: EventStore, M: EventModel>(
    plan: Plan<S>,
    model: M,
) -> Result<CaughtUp<M>, Error> {
    // Nothing stops a catch-up, nor watches it.
    let (_never, mut control) = Control::detached();
    let (attempts, _) = watch::channel(Attempts::default());
    run(plan, Models::Once(Some(model)), &mut control, &attempts).await
}

/// Runs the models `models` gives in a task of their own, until stopped.
pub(crate) fn spawn<S: EventStore, M: EventModel>(
    plan: Plan<S>,
    models: Models<M>,
    attempts: watch::Sender<Attempts>,
) -> Running<M> {
    Running::spawn(plan.trigger.clone(), move |mut control| async move {
        run(plan, models, &mut control, &attempts).await
    })
}

/// The one path: lease → restore → replay → follow → checkpoint → finish, started again as
/// the policy says → release.
async fn run<S: EventStore, M: EventModel>(
    mut plan: Plan<S>,
    models: Models<M>,
    control: &mut Control,
    attempts: &watch::Sender<Attempts>,
) -> Result<CaughtUp<M>, Error> {
    fits::<M>(plan.segment)?;
    let (models, lease) = match lease::take(&mut plan, models, control).await? {
        Ok(leased) => leased,
        // Stopped while a standby: it never ran.
        Err(model) => {
            return Ok(CaughtUp {
                model,
                origin: Origin::Scratch,
                position: Position::START,
                processed: 0,
                checkpoints: 0,
            })
        }
    };
    let watching = lease::stop_when_lost(control, lease.as_ref());
    let result = restart::restarting(&plan, models, control, attempts).await;
    if let Some(watching) = watching {
        watching.abort();
    }
    lease::settle::<M, _>(result, lease).await
}

/// Whether `M` may run as `segment`: whole when it is not split, as one of its segments when
/// it is.
pub(crate) fn fits<M: EventModel>(segment: Option<Segment>) -> Result<(), Error> {
    let fits = match segment {
        None => M::SEGMENTS == 1,
        Some(segment) => M::SEGMENTS > 1 && segment.count() == M::SEGMENTS,
    };
    if fits {
        Ok(())
    } else {
        Err(Error::Segmented {
            model: M::NAME,
            segments: M::SEGMENTS,
            asked: segment,
        })
    }
}
