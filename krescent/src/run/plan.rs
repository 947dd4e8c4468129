//! What a run is: its plan (the variations between the ways of running a model, as data) and
//! what it ends with.

use std::sync::Arc;

use super::policy::RestartPolicy;
use crate::checkpoint::{CheckpointStorage, CheckpointTrigger, Strategy};
use crate::deadletter::{ErrorPolicy, ErrorPolicyError};
use crate::fleet::LeaseConfig;
use crate::fleet::Segment;
use crate::model::Origin;
use crate::{Error, Position};

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
    /// Asks for a checkpoint (`manual`); shared with the `Running` handle.
    pub(crate) trigger: CheckpointTrigger,
    /// What a handler's failure does (the attribute's policy, or its override); a policy that
    /// does not parse fails every start.
    pub(crate) on_error: Result<ErrorPolicy, ErrorPolicyError>,
    /// Handle the model's parked events again when it starts, before any other event
    /// ([`Krescent::retry_parked`](crate::Krescent::retry_parked)).
    pub(crate) retry_parked: bool,
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
