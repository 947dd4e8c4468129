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
//!                            └─ Runner::finish             the final checkpoint, every write done
//!     ─ lease::settle ───────── released, or the run was fenced
//! ```

mod checkpoints;
mod follow;
mod lease;
mod policy;
mod restart;
mod restore;
mod runner;
mod running;

use std::sync::Arc;

use tokio::sync::watch;

use crate::checkpoint::{CheckpointStorage, CheckpointTrigger, StorageError, Strategy};
use crate::fleet::{LeaseConfig, Segment};
use crate::model::{EventModel, Origin};
use crate::store::EventStore;
use crate::{Error, Position};

pub use policy::RestartPolicy;
pub(crate) use restart::{Attempts, Models, Setback};
pub(crate) use restore::{restore, Start};
pub(crate) use running::Control;
pub use running::{Running, Status};

/// Where and how a model checkpoints, its overrides applied and its storage resolved.
#[derive(Clone)]
pub(crate) struct Checkpointing {
    /// The name the storage is registered under.
    pub(crate) name: String,
    pub(crate) storage: Arc<dyn CheckpointStorage>,
    pub(crate) strategy: Strategy,
    /// The namespace of the checkpoints and the lease: the model's name, or its segment's.
    pub(crate) namespace: Arc<str>,
    /// The segment being run, for a model split by `#[model(segments = N)]`.
    pub(crate) segment: Option<Segment>,
}

/// A storage name that no storage is registered under: every start of the model fails with
/// [`Error::UnknownStorage`].
#[derive(Debug, Clone)]
pub(crate) struct Unregistered {
    pub(crate) name: String,
    pub(crate) registered: Vec<String>,
}

impl Unregistered {
    pub(crate) fn error(&self, model: &'static str) -> Error {
        Error::UnknownStorage {
            model,
            name: self.name.clone(),
            registered: self.registered.clone(),
        }
    }
}

/// Where a run ends by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Until {
    /// At the store's head, after its last event (a catch-up); a store failure ends it.
    Head,
    /// Never: it follows live appends until stopped, riding out the store's transient failures.
    Stopped,
}

/// Everything about one model's run that is not the model: the variations between the ways
/// of running a model, as data.
pub(crate) struct Plan<S> {
    pub(crate) store: Arc<S>,
    /// Where and how it checkpoints (`None`: it does not).
    pub(crate) checkpointing: Result<Option<Checkpointing>, Unregistered>,
    /// The segment this run is, for a model split by `#[model(segments = N)]`.
    pub(crate) segment: Option<Segment>,
    /// Take a lease even without a projection: `#[model(exclusive)]`, configured so, or a
    /// segment.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))] // no leases without PostgreSQL
    pub(crate) exclusive: bool,
    /// The lease's timing.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) lease: LeaseConfig,
    pub(crate) until: Until,
    pub(crate) policy: RestartPolicy,
    /// Asks for a checkpoint (`manual`); shared with the [`Running`] handle.
    pub(crate) trigger: CheckpointTrigger,
}

/// A model that has processed every event the store held.
#[derive(Debug)]
pub struct CaughtUp<M> {
    /// The model.
    pub model: M,
    /// How it started.
    pub origin: Origin,
    /// The last event it covers.
    pub position: Position,
    /// The events it handled in this run.
    pub processed: u64,
    /// The checkpoints it took in this run.
    pub checkpoints: u64,
}

/// A model restored from its checkpoint without reading any event.
#[derive(Debug)]
pub struct Restored<M> {
    /// The model.
    pub model: M,
    /// How it started: [`Origin::Restored`], [`Origin::Scratch`] when there is no checkpoint, or
    /// [`Origin::Unusable`].
    pub origin: Origin,
    /// The last event its state covers.
    pub position: Position,
}

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
    let (models, lease) = match lease::take(&mut plan, models, control).await {
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
    let result = restart::restarting(&plan, models, control, attempts).await;
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

/// A storage failure of the checkpoints of `namespace`.
fn storage_failed(namespace: &str, source: StorageError) -> Error {
    Error::Storage {
        namespace: namespace.to_owned(),
        source,
    }
}
