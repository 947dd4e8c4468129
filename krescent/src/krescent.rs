//! The entry point: a store, the registered checkpoint storages, and the ways to run a model.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::Instrument as _;

use crate::checkpoint::{
    CheckpointStorage, CheckpointTrigger, InMemoryCheckpointStorage, Strategy,
};
use crate::configure::{Configure, Override};
use crate::fleet::Segment;
use crate::model::{EventModel, Origin};
use crate::runner::{restore, Runner, Start, BATCH};
use crate::running::Running;
use crate::store::EventStore;
use crate::{Error, Position};

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

/// A model that never ran: stopped while a standby.
#[cfg(feature = "postgres")]
fn unrun<M>(model: M) -> CaughtUp<M> {
    CaughtUp {
        model,
        origin: Origin::Scratch,
        position: Position::START,
        processed: 0,
        checkpoints: 0,
    }
}

/// After a leased run: a fenced commit becomes [`Error::Fenced`] (the lease is not this run's
/// any more), anything else releases the lease so that a standby takes over at once.
#[cfg(feature = "postgres")]
async fn settle<M: EventModel, T>(
    result: Result<T, Error>,
    lease: Option<crate::fleet::HeldLease>,
) -> Result<T, Error> {
    let Some(lease) = lease else {
        return result;
    };
    match result {
        Err(Error::Storage {
            source:
                crate::checkpoint::StorageError::Fenced {
                    namespace, epoch, ..
                },
            ..
        }) => {
            tracing::warn!(
                model = M::NAME,
                epoch,
                "fenced: another instance holds the lease now; stepping down"
            );
            Err(Error::Fenced {
                model: M::NAME,
                namespace,
                epoch,
            })
        }
        result => {
            lease.release().await;
            result
        }
    }
}

/// Restores `model` from `checkpointing`'s storage and makes it a runner.
async fn start_with<M: EventModel>(
    model: M,
    checkpointing: Option<Checkpointing>,
    trigger: CheckpointTrigger,
) -> Result<Runner<M>, Error> {
    let start = restore(model, checkpointing.as_ref()).await?;
    Runner::begin(start, checkpointing, trigger).await
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

    /// Overrides the `#[checkpoint]` attribute of `M` (its strategy, its storage) in this
    /// `Krescent` and the clones made from it afterwards: for operators who change them per
    /// deployment, from a configuration file or an environment variable. The attribute stays
    /// the default; see [`Configure`].
    pub fn configure<M: EventModel>(&mut self) -> Configure<'_, S, M> {
        Configure::new(self)
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
            .ok_or_else(|| Error::UnknownStorage {
                model: M::NAME,
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

    /// Whether `M` may run in this clone's scope: whole when it is not split, as one of its
    /// segments when it is.
    pub(crate) fn check_segment<M: EventModel>(&self) -> Result<(), Error> {
        let fits = match self.segment {
            None => M::SEGMENTS == 1,
            Some(segment) => M::SEGMENTS > 1 && segment.count() == M::SEGMENTS,
        };
        if fits {
            Ok(())
        } else {
            Err(Error::Segmented {
                model: M::NAME,
                segments: M::SEGMENTS,
                asked: self.segment,
            })
        }
    }

    /// Restores `model` and makes it a runner, handing the model back on failure (for a restart
    /// in place).
    pub(crate) async fn start_keeping<M: EventModel>(
        &self,
        model: M,
        trigger: CheckpointTrigger,
    ) -> Result<Runner<M>, (Error, M)> {
        let checkpointing = match self.checkpointing_of::<M>() {
            Ok(checkpointing) => checkpointing,
            Err(e) => return Err((e, model)),
        };
        let start = crate::runner::restore_keeping(model, checkpointing.as_ref()).await?;
        Runner::begin_keeping(start, checkpointing, trigger).await
    }

    /// A clone of this `Krescent` whose storage `name` (`M`'s) is `fenced`, so that every
    /// restart of the model checkpoints through it.
    #[cfg(feature = "postgres")]
    fn fenced_for(&self, name: &str, fenced: Arc<dyn CheckpointStorage>) -> Self {
        self.clone().with_shared_storage(name, fenced)
    }

    /// Takes `M`'s lease when it needs one — it has a projection (a transaction) or is
    /// exclusive, and its storage keeps leases — waiting while another instance holds it
    /// (after calling `standby`); then fences its storage and its transaction with it. The model
    /// back when `stop` is set first.
    #[cfg(feature = "postgres")]
    async fn lease<M: EventModel>(
        &self,
        mut model: M,
        checkpointing: Option<Checkpointing>,
        stop: &mut tokio::sync::watch::Receiver<bool>,
        standby: impl FnOnce(),
    ) -> Result<(M, Option<Checkpointing>, Option<crate::fleet::HeldLease>), M> {
        let changed = self.overrides.get(M::NAME);
        let exclusive = M::EXCLUSIVE
            || changed.is_some_and(|o| o.exclusive)
            || model.transaction().is_some()
            || self.segment.is_some();
        let leases = checkpointing
            .as_ref()
            .and_then(|c| c.storage.leases())
            .filter(|_| exclusive);
        let (Some(leases), Some(mut checkpointing)) = (leases, checkpointing.clone()) else {
            return Ok((model, checkpointing, None));
        };
        let config = changed.and_then(|o| o.lease).unwrap_or_default();
        standby();
        let Some(lease) = leases.acquire(&checkpointing.namespace, config, stop).await else {
            return Err(model);
        };
        let fence = lease.fence().clone();
        if let Some(fenced) = checkpointing.storage.fenced(&fence) {
            checkpointing.storage = fenced;
        }
        if let Some(transaction) = model.transaction() {
            transaction.set_fence(Some(fence));
        }
        // The checkpoint is loaded only now that the lease is held.
        Ok((model, Some(checkpointing), Some(lease)))
    }

    /// [`lease`](Self::lease) for a model run by [`stream_restarting`](Self::stream_restarting):
    /// every model it starts (the first and each restart's) checkpoints through the fenced
    /// storage and has the fence set on its transaction; the lease is held across restarts.
    #[cfg(feature = "postgres")]
    async fn lease_restarting<M: EventModel>(
        self,
        models: crate::restart::Models<M>,
        control: &crate::running::Control,
    ) -> Result<
        (
            Self,
            crate::restart::Models<M>,
            Option<crate::fleet::HeldLease>,
        ),
        M,
    > {
        // An error is reported by the first start.
        let Ok(checkpointing) = self.checkpointing_of::<M>() else {
            return Ok((self, models, None));
        };
        let (first, make) = match models {
            crate::restart::Models::Make(mut make) => (make(), Some(make)),
            crate::restart::Models::Once(Some(model)) => (model, None),
            crate::restart::Models::Once(None) => {
                return Ok((self, crate::restart::Models::Once(None), None))
            }
        };
        let mut stop = control.stop_flag();
        let standby = || control.set_status(crate::Status::Standby);
        let (first, checkpointing, lease) =
            self.lease(first, checkpointing, &mut stop, standby).await?;
        // The first run gets the model built (and fenced) here; every later one a new model,
        // fenced like it.
        let fence = lease.as_ref().map(|lease| lease.fence().clone());
        let models = match make {
            Some(mut make) => {
                let mut first = Some(first);
                crate::restart::Models::Make(Box::new(move || {
                    first.take().unwrap_or_else(|| {
                        let mut model = make();
                        if let (Some(fence), Some(transaction)) = (&fence, model.transaction()) {
                            transaction.set_fence(Some(fence.clone()));
                        }
                        model
                    })
                }))
            }
            None => crate::restart::Models::Once(Some(first)),
        };
        let Some(lease) = lease else {
            return Ok((self, models, None));
        };
        control.set_status(crate::Status::Starting);
        let krescent = match checkpointing {
            Some(c) => self.fenced_for(&c.name, c.storage),
            None => self,
        };
        Ok((krescent, models, Some(lease)))
    }

    /// Restores `model` from its checkpoint (if any), replays every later event, and returns
    /// it; a strategy that checkpoints on shutdown takes a final checkpoint first.
    ///
    /// A model that needs a lease (see [`stream`](Self::stream)) waits for it first, as long as
    /// another instance holds it, and releases it when done.
    pub async fn catch_up<M: EventModel>(&self, model: M) -> Result<CaughtUp<M>, Error> {
        let span = tracing::info_span!("catch_up", model = M::NAME);
        async {
            self.check_segment::<M>()?;
            let checkpointing = self.checkpointing_of::<M>()?;
            #[cfg(feature = "postgres")]
            let (model, checkpointing, lease) = {
                // Nothing stops a catch-up while it waits for the lease.
                let (_never, mut stop) = tokio::sync::watch::channel(false);
                match self.lease(model, checkpointing, &mut stop, || {}).await {
                    Ok(leased) => leased,
                    Err(model) => return Ok(unrun(model)),
                }
            };
            let result = self.replay(model, checkpointing).await;
            #[cfg(feature = "postgres")]
            let result = settle::<M, _>(result, lease).await;
            result
        }
        .instrument(span)
        .await
    }

    /// The body of [`catch_up`](Self::catch_up), once the model may run.
    async fn replay<M: EventModel>(
        &self,
        model: M,
        checkpointing: Option<Checkpointing>,
    ) -> Result<CaughtUp<M>, Error> {
        let mut runner = start_with(model, checkpointing, CheckpointTrigger::default()).await?;
        let store_error = |source| Error::Store {
            model: M::NAME,
            source,
        };
        let mut batch = self
            .store
            .read_batch(runner.position, BATCH)
            .await
            .map_err(store_error)?;
        while let Some(last) = batch.last() {
            runner.observe_head(&*self.store).await;
            // The next batch is read while this one is applied: a store that waits for a
            // database keeps it busy meanwhile.
            let (next, applied) = tokio::join!(
                self.store.read_ahead(last.position(), BATCH),
                runner.apply(&batch)
            );
            applied?;
            batch = next.map_err(store_error)?;
        }
        runner.caught_up();
        runner.model.on_caught_up(runner.position);
        runner.finish().await?;
        Ok(runner.into_caught_up())
    }

    /// Restores `model` from its checkpoint and reads nothing; without a checkpoint the result's
    /// origin is [`Origin::Scratch`], with one that cannot be used [`Origin::Unusable`] (or
    /// [`Error::InvalidCheckpoint`] when the model asks for that), and the checkpoint stays.
    pub async fn restore_only<M: EventModel>(&self, model: M) -> Result<Restored<M>, Error> {
        self.check_segment::<M>()?;
        let checkpointing = self.checkpointing_of::<M>()?;
        let Start {
            model,
            origin,
            position,
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
        let (attempts, _) = tokio::sync::watch::channel(crate::restart::Attempts::default());
        self.stream_restarting(
            crate::restart::Models::Once(Some(model)),
            crate::supervisor::RestartPolicy::default(),
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
        let (attempts, _) = tokio::sync::watch::channel(crate::restart::Attempts::default());
        self.stream_restarting(
            crate::restart::Models::Make(Box::new(make)),
            crate::supervisor::RestartPolicy::default(),
            attempts,
        )
    }

    /// [`stream_with`](Self::stream_with) with `policy`, reporting setbacks to `attempts`.
    pub(crate) fn stream_restarting<M: EventModel>(
        &self,
        models: crate::restart::Models<M>,
        policy: crate::supervisor::RestartPolicy,
        attempts: tokio::sync::watch::Sender<crate::restart::Attempts>,
    ) -> Running<M> {
        let krescent = self.clone();
        let trigger = CheckpointTrigger::default();
        Running::spawn(trigger.clone(), move |mut control| async move {
            krescent.check_segment::<M>()?;
            #[cfg(feature = "postgres")]
            let (krescent, models, lease) = match krescent.lease_restarting(models, &control).await
            {
                Ok(leased) => leased,
                Err(model) => return Ok(unrun(model)),
            };
            let result = crate::restart::follow_restarting(
                krescent,
                models,
                policy,
                trigger,
                &mut control,
                &attempts,
            )
            .await;
            #[cfg(feature = "postgres")]
            let result = settle::<M, _>(result, lease).await;
            result
        })
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
