//! The entry point: a store, the registered checkpoint storages, and the ways to run a model.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::Instrument as _;

use crate::checkpoint::{
    CheckpointStorage, CheckpointTrigger, InMemoryCheckpointStorage, Strategy,
};
use crate::configure::{Configure, Override};
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
}

/// Where and how a model checkpoints, its overrides applied and its storage resolved.
pub(crate) struct Checkpointing {
    /// The name the storage is registered under.
    pub(crate) name: String,
    pub(crate) storage: Arc<dyn CheckpointStorage>,
    pub(crate) strategy: Strategy,
}

impl<S> Clone for Krescent<S> {
    fn clone(&self) -> Self {
        Krescent {
            store: self.store.clone(),
            storages: self.storages.clone(),
            overrides: self.overrides.clone(),
        }
    }
}

impl<S> Krescent<S> {
    /// The override of `model`, created empty; for [`Configure`].
    pub(crate) fn override_mut(&mut self, model: &'static str) -> &mut Override {
        Arc::make_mut(&mut self.overrides).entry(model).or_default()
    }
}

/// Restores `model` from `checkpointing`'s storage and makes it a runner.
async fn start_with<M: EventModel>(
    model: M,
    checkpointing: Option<Checkpointing>,
    trigger: CheckpointTrigger,
) -> Result<Runner<M>, Error> {
    let start = restore(model, checkpointing.as_ref().map(|c| &c.storage)).await?;
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
    fn checkpointing_of<M: EventModel>(&self) -> Result<Option<Checkpointing>, Error> {
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
        Ok(Some(Checkpointing {
            name: name.to_owned(),
            storage,
            strategy,
        }))
    }

    /// The storage `M` checkpoints into, `None` when it does not checkpoint.
    fn storage_of<M: EventModel>(&self) -> Result<Option<Arc<dyn CheckpointStorage>>, Error> {
        Ok(self.checkpointing_of::<M>()?.map(|c| c.storage))
    }

    async fn start<M: EventModel>(
        &self,
        model: M,
        trigger: CheckpointTrigger,
    ) -> Result<Runner<M>, Error> {
        let checkpointing = self.checkpointing_of::<M>()?;
        start_with(model, checkpointing, trigger).await
    }

    /// Runs `model` in the stream's task: waits for its lease when it needs one (as a standby),
    /// then restores and follows, fenced by the lease.
    #[cfg_attr(not(feature = "postgres"), allow(unused_mut))] // asked for a transaction
    async fn run_stream<M: EventModel>(
        &self,
        mut model: M,
        trigger: CheckpointTrigger,
        control: crate::running::Control,
    ) -> Result<CaughtUp<M>, Error> {
        let checkpointing = self.checkpointing_of::<M>()?;
        #[cfg(feature = "postgres")]
        let checkpointing = {
            let changed = self.overrides.get(M::NAME);
            let exclusive = M::EXCLUSIVE
                || changed.is_some_and(|o| o.exclusive)
                || model.transaction().is_some();
            let leases = checkpointing
                .as_ref()
                .and_then(|c| c.storage.leases())
                .filter(|_| exclusive);
            match (leases, checkpointing) {
                (Some(leases), Some(checkpointing)) => {
                    let config = changed.and_then(|o| o.lease).unwrap_or_default();
                    return self
                        .run_leased(model, leases, config, checkpointing, trigger, control)
                        .await;
                }
                (_, checkpointing) => checkpointing,
            }
        };
        let runner = start_with(model, checkpointing, trigger).await?;
        crate::running::follow(&*self.store, runner, control).await
    }

    /// [`run_stream`](Self::run_stream) of a model that needs a lease: a standby until it holds
    /// it, then fenced by it; the lease is released when the model stops (not when it was
    /// fenced: it is not its own any more).
    #[cfg(feature = "postgres")]
    async fn run_leased<M: EventModel>(
        &self,
        mut model: M,
        leases: crate::fleet::Leases,
        config: crate::fleet::LeaseConfig,
        mut checkpointing: Checkpointing,
        trigger: CheckpointTrigger,
        control: crate::running::Control,
    ) -> Result<CaughtUp<M>, Error> {
        control.set_status(crate::Status::Standby);
        let mut stop = control.stop_flag();
        let Some(lease) = leases.acquire(M::NAME, config, &mut stop).await else {
            // Stopped while a standby: nothing ran.
            return Ok(CaughtUp {
                model,
                origin: Origin::Scratch,
                position: Position::START,
                processed: 0,
                checkpoints: 0,
            });
        };
        control.set_status(crate::Status::Starting);
        let fence = lease.fence().clone();
        if let Some(fenced) = checkpointing.storage.fenced(&fence) {
            checkpointing.storage = fenced;
        }
        if let Some(transaction) = model.transaction() {
            transaction.set_fence(Some(fence.clone()));
        }
        // The checkpoint is loaded only now that the lease is held.
        let result = async {
            let runner = start_with(model, Some(checkpointing), trigger).await?;
            crate::running::follow(&*self.store, runner, control).await
        }
        .await;
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

    /// Restores `model` from its checkpoint (if any), replays every later event, and returns
    /// it; a strategy that checkpoints on shutdown takes a final checkpoint first.
    pub async fn catch_up<M: EventModel>(&self, model: M) -> Result<CaughtUp<M>, Error> {
        let span = tracing::info_span!("catch_up", model = M::NAME);
        async {
            let mut runner = self.start(model, CheckpointTrigger::default()).await?;
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
        .instrument(span)
        .await
    }

    /// Restores `model` from its checkpoint and reads nothing; without a checkpoint the result's
    /// origin is [`Origin::Scratch`], with one that cannot be used [`Origin::Unusable`] (or
    /// [`Error::InvalidCheckpoint`] when the model asks for that), and the checkpoint stays.
    pub async fn restore_only<M: EventModel>(&self, model: M) -> Result<Restored<M>, Error> {
        let storage = self.storage_of::<M>()?;
        let Start {
            model,
            origin,
            position,
        } = restore(model, storage.as_ref()).await?;
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
    pub fn stream<M: EventModel>(&self, model: M) -> Running<M> {
        let krescent = self.clone();
        let trigger = CheckpointTrigger::default();
        Running::spawn(trigger.clone(), move |control| async move {
            krescent.run_stream(model, trigger, control).await
        })
    }

    /// Deletes the checkpoint of `M`, so that its next start replays the whole stream; whether
    /// there was one.
    pub async fn delete_checkpoint<M: EventModel>(&self) -> Result<bool, Error> {
        let Some(storage) = self.storage_of::<M>()? else {
            return Ok(false);
        };
        storage
            .delete(M::NAME)
            .await
            .map_err(|source| Error::Storage {
                namespace: M::NAME.to_owned(),
                source,
            })
    }
}
