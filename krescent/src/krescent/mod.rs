//! The entry point: a store, the registered checkpoint storages, the operators' overrides,
//! and the ways to run a model. Each way is a [`Plan`] handed to [`crate::run`], which holds
//! the loops; the entry points with a handle of their own live beside it: `configure`
//! (`configure.rs`) and `stream_segments` (`segments.rs`).

mod configure;
mod segments;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::Instrument as _;

use crate::checkpoint::{
    CheckpointStorage, CheckpointTrigger, InMemoryCheckpointStorage, Strategy,
};
use crate::deadletter::{ErrorPolicy, ParkedEvent};
use crate::fleet::LeaseConfig;
use crate::fleet::Segment;
use crate::model::{EventModel, Origin};
use crate::run::{
    self, restore, Attempts, CaughtUp, Checkpointing, Models, Plan, RestartPolicy, Restored,
    Running, Start, Unregistered, Until,
};
use crate::store::EventStore;
use crate::Error;

pub use configure::Configure;
pub use segments::{RunningSegments, SegmentsEnded};

/// A store and the checkpoint storages its models use; cheap to clone.
///
/// ```
/// # use krescent::{Krescent, store::InMemoryEventStore, checkpoint::InMemoryCheckpointStorage};
/// let krescent = Krescent::new(InMemoryEventStore::new())
///     .with_storage("scratch", InMemoryCheckpointStorage::new());
/// ```
#[derive(Debug)]
pub struct Krescent<S> {
    store: Arc<S>,
    storages: Arc<BTreeMap<String, Arc<dyn CheckpointStorage>>>,
    /// Start-up overrides of models' `#[checkpoint]` attributes, by model name.
    pub(crate) overrides: Arc<BTreeMap<&'static str, Override>>,
    /// The segment this clone runs, in a clone made for one segment of a split model.
    segment: Option<Segment>,
}

/// What an operator changed about one model's checkpointing; unset parts keep the attribute's.
#[derive(Debug, Clone, Default)]
pub(crate) struct Override {
    pub(crate) strategy: Option<Strategy>,
    pub(crate) storage: Option<String>,
    /// Take a lease even when the model writes nothing outside its process.
    pub(crate) exclusive: bool,
    /// The lease's timing, when not the default.
    pub(crate) lease: Option<LeaseConfig>,
    /// What a handler's failure does, when not the attribute's `on_error`.
    pub(crate) on_error: Option<ErrorPolicy>,
}

impl<S> Clone for Krescent<S> {
    fn clone(&self) -> Self {
        Krescent {
            store: self.store.clone(),
            storages: self.storages.clone(),
            overrides: self.overrides.clone(),
            segment: self.segment,
        }
    }
}

impl<S> Krescent<S> {
    /// The override of `model`, created empty; for [`Configure`].
    pub(crate) fn override_mut(&mut self, model: &'static str) -> &mut Override {
        Arc::make_mut(&mut self.overrides).entry(model).or_default()
    }
}

impl<S: EventStore> Krescent<S> {
    /// Runs models against `store`; the storage `"memory"` is registered already.
    pub fn new(store: S) -> Self {
        Self::with_shared_store(Arc::new(store))
    }

    /// Like [`new`](Self::new), for a store the application also holds.
    #[must_use]
    pub fn with_shared_store(store: Arc<S>) -> Self {
        let memory: Arc<dyn CheckpointStorage> = Arc::new(InMemoryCheckpointStorage::new());
        Krescent {
            store,
            storages: Arc::new(BTreeMap::from([("memory".to_owned(), memory)])),
            overrides: Arc::default(),
            segment: None,
        }
    }

    /// Registers `storage` under `name`, replacing one of the same name.
    #[must_use]
    pub fn with_storage(
        self,
        name: impl Into<String>,
        storage: impl CheckpointStorage + 'static,
    ) -> Self {
        self.with_shared_storage(name, Arc::new(storage))
    }

    /// Registers a storage the application also holds under `name`.
    #[must_use]
    pub fn with_shared_storage(
        mut self,
        name: impl Into<String>,
        storage: Arc<dyn CheckpointStorage>,
    ) -> Self {
        Arc::make_mut(&mut self.storages).insert(name.into(), storage);
        self
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, for sharing it with other parts of the application.
    #[must_use]
    pub fn shared_store(&self) -> &Arc<S> {
        &self.store
    }

    /// The storage registered under `name`.
    #[must_use]
    pub fn storage(&self, name: &str) -> Option<&Arc<dyn CheckpointStorage>> {
        self.storages.get(name)
    }

    /// How `M` checkpoints, its overrides applied; `None` when it does not checkpoint.
    pub(crate) fn checkpointing_of<M: EventModel>(&self) -> Result<Option<Checkpointing>, Error> {
        self.resolve::<M>()
            .map_err(|unregistered| unregistered.error(M::NAME))
    }

    /// [`checkpointing_of`](Self::checkpointing_of), with the name of a storage that is not
    /// registered.
    fn resolve<M: EventModel>(&self) -> Result<Option<Checkpointing>, Unregistered> {
        let Some(config) = M::checkpointing() else {
            return Ok(None);
        };
        let changed = self.overrides.get(M::NAME);
        let name = changed
            .and_then(|o| o.storage.as_deref())
            .unwrap_or(config.storage);
        let storage = self
            .storages
            .get(name)
            .cloned()
            .ok_or_else(|| Unregistered {
                name: name.to_owned(),
                registered: self.storages.keys().cloned().collect(),
            })?;
        let strategy = changed
            .and_then(|o| o.strategy.clone())
            .unwrap_or(config.strategy);
        let namespace = self
            .segment
            .map_or_else(|| M::NAME.into(), |s| s.namespace(M::NAME).into());
        Ok(Some(Checkpointing {
            name: name.to_owned(),
            storage,
            strategy,
            namespace,
            segment: self.segment,
        }))
    }

    /// The plan of a run of `M` in this clone's scope: its checkpointing and lease as
    /// configured, ending as `until` says, restarted as `policy` says.
    fn plan<M: EventModel>(&self, until: Until, policy: RestartPolicy) -> Plan<S> {
        let changed = self.overrides.get(M::NAME);
        Plan {
            store: self.store.clone(),
            checkpointing: self.resolve::<M>(),
            segment: self.segment,
            exclusive: M::EXCLUSIVE
                || changed.is_some_and(|o| o.exclusive)
                || self.segment.is_some(),
            lease: changed.and_then(|o| o.lease).unwrap_or_default(),
            until,
            policy,
            trigger: CheckpointTrigger::default(),
            on_error: changed
                .and_then(|o| o.on_error)
                .map_or_else(|| ErrorPolicy::parse(M::ON_ERROR), Ok),
            retry_parked: false,
        }
    }

    /// A clone of this `Krescent` that runs one segment of the models split by
    /// `#[model(segments = N)]`: its [`catch_up`](Self::catch_up), [`stream`](Self::stream),
    /// [`stream_with`](Self::stream_with), [`restore_only`](Self::restore_only) and
    /// [`delete_checkpoint`](Self::delete_checkpoint) process, restore or delete only
    /// `segment`'s events and checkpoint, and take only its lease. For deployments that assign
    /// segments themselves; [`stream_segments`](Self::stream_segments) shares them out over
    /// the running instances instead. A model of another segment count fails with
    /// [`Error::Segmented`].
    #[must_use]
    pub fn for_segment(&self, segment: Segment) -> Self {
        Krescent {
            segment: Some(segment),
            ..self.clone()
        }
    }

    /// Restores `model` from its checkpoint (if any), replays every later event, and returns
    /// it; a strategy that checkpoints on shutdown takes a final checkpoint first.
    ///
    /// A model that needs a lease (see [`stream`](Self::stream)) waits for it first, as long as
    /// another instance holds it, and releases it when done.
    pub async fn catch_up<M: EventModel>(&self, model: M) -> Result<CaughtUp<M>, Error> {
        let span = tracing::info_span!("catch_up", model = M::NAME);
        let plan = self.plan::<M>(Until::Head, RestartPolicy::never());
        // On the heap: the run's state machine is large (over 16 KB), and a caller's future
        // that awaits this one holds it otherwise.
        Box::pin(run::catch_up(plan, model)).instrument(span).await
    }

    /// Restores `model` from its checkpoint and reads nothing; without a checkpoint the result's
    /// origin is [`Origin::Scratch`], with one that cannot be used [`Origin::Unusable`] (or
    /// [`Error::InvalidCheckpoint`] when the model asks for that), and the checkpoint stays.
    pub async fn restore_only<M: EventModel>(&self, model: M) -> Result<Restored<M>, Error> {
        run::fits::<M>(self.segment)?;
        let checkpointing = self.checkpointing_of::<M>()?;
        let Start {
            model,
            origin,
            position,
            ..
        } = restore(model, checkpointing.as_ref()).await?;
        let origin = match origin {
            Origin::Rebuilt { reason } => Origin::Unusable { reason },
            origin => origin,
        };
        Ok(Restored {
            model,
            origin,
            position,
        })
    }

    /// Runs `model` in a task of its own: it catches up, then follows live appends until
    /// [`Running::shutdown`].
    ///
    /// It keeps going through transient failures ([`Error::is_transient`]): an event store
    /// that fails (the database went away) is retried from the last processed position; a
    /// projection connection lost between two transactions is replaced; and after a
    /// projection write or commit that failed with the lost connection (the open transaction
    /// is rolled back), a checkpoint that cannot be loaded yet, or a handler error marked
    /// [`Transient`](crate::Transient), the model is restored in place from its last
    /// checkpoint after a backoff (100 ms, doubling up to 10 s) and goes on. Restoring
    /// overwrites every checkpointed field, so every event counts exactly once in them and in
    /// a projection's tables; fields that are not checkpointed keep the values the failed run
    /// left. A restart needs a checkpoint to go back to: a model that failed before its first
    /// checkpoint was stored (or one that does not checkpoint) ends with the error instead.
    /// [`stream_with`](Self::stream_with) builds a fresh model for every start and has no such
    /// limit. Any other error ends the task, and `shutdown` returns it.
    ///
    /// A model with a projection (or an exclusive one) checkpointing in PostgreSQL first takes
    /// its lease: while another instance holds it, the model waits as a standby
    /// ([`Status::Standby`](crate::Status::Standby)); its task ends with [`Error::Fenced`] when
    /// its lease was taken over. See [`crate::fleet`].
    pub fn stream<M: EventModel>(&self, model: M) -> Running<M> {
        let (attempts, _) = watch::channel(Attempts::default());
        self.stream_restarting(
            Models::Once(Some(model)),
            RestartPolicy::default(),
            attempts,
        )
    }

    /// Runs the model that `make` builds in a task of its own, like [`stream`](Self::stream),
    /// and keeps it running through transient failures with a fresh model for every start
    /// (so, unlike `stream`, also after a failure before the first checkpoint): when the
    /// database goes away (a
    /// projection write or a checkpoint commit fails because the connection was lost, the
    /// checkpoint cannot be loaded) or a handler returns an error marked
    /// [`Transient`](crate::Transient), the open transaction is rolled back, and after a
    /// backoff (100 ms, doubling up to 10 s: [`RestartPolicy::default`]) a fresh model from
    /// `make` is restored from the last checkpoint and goes on. Nothing the failed run applied
    /// after that checkpoint is kept, so every event counts exactly once in the checkpointed
    /// state and in a projection's tables.
    ///
    /// `make` is called once per start, so it builds a model as constructed (for a
    /// `PostgresProjection` model, a new projection from its storage). A permanent error
    /// ([`Error::is_transient`] is false: a handler bug, a payload that does not decode, an
    /// unusable checkpoint with `on_invalid = "fail"`) ends the task, and
    /// [`Running::shutdown`] returns it; so does a shutdown while the model waits to restart
    /// (the transient error it was backing off from). While it waits, [`Running::status`] is
    /// [`Status::Starting`](crate::Status::Starting). To run many models with a policy of your
    /// own and a report of each, see the [`Supervisor`](crate::supervisor::Supervisor).
    ///
    /// [`RestartPolicy::default`]: crate::supervisor::RestartPolicy
    pub fn stream_with<M: EventModel>(
        &self,
        make: impl FnMut() -> M + Send + 'static,
    ) -> Running<M> {
        let (attempts, _) = watch::channel(Attempts::default());
        self.stream_restarting(
            Models::Make(Box::new(make)),
            RestartPolicy::default(),
            attempts,
        )
    }

    /// [`stream_with`](Self::stream_with) with `policy`, reporting setbacks to `attempts`.
    pub(crate) fn stream_restarting<M: EventModel>(
        &self,
        models: Models<M>,
        policy: RestartPolicy,
        attempts: watch::Sender<Attempts>,
    ) -> Running<M> {
        run::spawn(self.plan::<M>(Until::Stopped, policy), models, attempts)
    }

    /// Handles the parked events of `M` again, once its handler is fixed, and catches up:
    /// restores `model` from its checkpoint, handles each parked event in position order
    /// (one stream's events in their order) before reading anything else, then replays the
    /// events after the checkpoint, like [`catch_up`](Self::catch_up). An event that
    /// succeeds is applied and removed from the parked set — for a
    /// [`PostgresProjection`](crate::projection::PostgresProjection), in one transaction with
    /// a checkpoint, so exactly once even across a crash; for other models the checkpoint is
    /// written before the parked set changes (a crash in between handles it again on the next
    /// retry). One that fails again stays parked with one more attempt, and so do the later
    /// parked events of its stream.
    ///
    /// Run it while no other instance runs the model (stop it first): the running model
    /// holds its own parked set and state. See [`crate::deadletter`].
    pub async fn retry_parked<M: EventModel>(&self, model: M) -> Result<CaughtUp<M>, Error> {
        let span = tracing::info_span!("retry_parked", model = M::NAME);
        let mut plan = self.plan::<M>(Until::Head, RestartPolicy::never());
        plan.retry_parked = true;
        run::catch_up(plan, model).instrument(span).await
    }

    /// The events `M` parked, in position order (for a model split in segments, those of
    /// this clone's segment, or of every segment).
    pub async fn parked<M: EventModel>(&self) -> Result<Vec<ParkedEvent>, Error> {
        let Some(checkpointing) = self.checkpointing_of::<M>()? else {
            return Ok(Vec::new());
        };
        let mut parked = Vec::new();
        for namespace in self.namespaces_of::<M>(&checkpointing) {
            parked.extend(
                checkpointing
                    .storage
                    .parked(&namespace)
                    .await
                    .map_err(|source| Error::Storage { namespace, source })?,
            );
        }
        parked.sort_by_key(|e| e.position);
        Ok(parked)
    }

    /// Drops parked events of `M` for good: those at `positions`, or all of them when `None`;
    /// how many there were. The model never applies them. Stop the model first: a running
    /// model keeps parking the later events of a stream whose parked events it knows.
    pub async fn drop_parked<M: EventModel>(
        &self,
        positions: Option<&[crate::Position]>,
    ) -> Result<u64, Error> {
        let Some(checkpointing) = self.checkpointing_of::<M>()? else {
            return Ok(0);
        };
        let mut dropped = 0;
        for namespace in self.namespaces_of::<M>(&checkpointing) {
            let storage = &checkpointing.storage;
            let positions: Vec<crate::Position> = if let Some(positions) = positions {
                positions.to_vec()
            } else {
                storage
                    .parked(&namespace)
                    .await
                    .map_err(|source| Error::Storage {
                        namespace: namespace.clone(),
                        source,
                    })?
                    .iter()
                    .map(|e| e.position)
                    .collect()
            };
            dropped += storage
                .unpark(&namespace, &positions)
                .await
                .map_err(|source| Error::Storage { namespace, source })?;
        }
        Ok(dropped)
    }

    /// The namespaces of `M` in this clone's scope: its name, its segment's, or every
    /// segment's.
    fn namespaces_of<M: EventModel>(&self, checkpointing: &Checkpointing) -> Vec<String> {
        if self.segment.is_none() && M::SEGMENTS > 1 {
            Segment::all(M::SEGMENTS)
                .map(|s| s.namespace(M::NAME))
                .collect()
        } else {
            vec![checkpointing.namespace.to_string()]
        }
    }

    /// Deletes the checkpoint of `M`, so that its next start replays the whole stream; whether
    /// there was one. For a model split by `#[model(segments = N)]`, the checkpoints of all its
    /// segments (in a [`for_segment`](Self::for_segment) clone, of that segment only).
    pub async fn delete_checkpoint<M: EventModel>(&self) -> Result<bool, Error> {
        let Some(checkpointing) = self.checkpointing_of::<M>()? else {
            return Ok(false);
        };
        let namespaces: Vec<String> = if self.segment.is_none() && M::SEGMENTS > 1 {
            Segment::all(M::SEGMENTS)
                .map(|s| s.namespace(M::NAME))
                .collect()
        } else {
            vec![checkpointing.namespace.to_string()]
        };
        let mut deleted = false;
        for namespace in namespaces {
            deleted |= checkpointing
                .storage
                .delete(&namespace)
                .await
                .map_err(|source| Error::Storage { namespace, source })?;
        }
        Ok(deleted)
    }
}
