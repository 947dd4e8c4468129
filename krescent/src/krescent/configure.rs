//! Start-up overrides of a model's `#[checkpoint]` attribute, for operators who change the
//! strategy or the storage per deployment without recompiling.

use std::marker::PhantomData;

use super::{Krescent, Override};
use crate::checkpoint::Strategy;
use crate::deadletter::ErrorPolicy;
use crate::fleet::LeaseConfig;
use crate::model::EventModel;
use crate::store::EventStore;
use crate::Error;

/// Overrides the `#[checkpoint]` attribute of model `M` in one [`Krescent`]; from
/// [`Krescent::configure`].
///
/// ```
/// # use krescent::prelude::*;
/// # #[derive(EventModel, Default)]
/// # #[model(name = "books")]
/// # #[checkpoint(strategy = "fixed_events(25)", storage = "memory")]
/// # struct Books {}
/// # #[krescent::handlers] impl Books {}
/// # fn main() -> Result<(), krescent::Error> {
/// let mut krescent = Krescent::new(InMemoryEventStore::new())
///     .with_storage("scratch", krescent::checkpoint::InMemoryCheckpointStorage::new());
/// // For example from a configuration file or `std::env::var("BOOKS_CHECKPOINTS")`:
/// krescent
///     .configure::<Books>()
///     .strategy("fixed_events(1000) | fixed_time(5s)")?
///     .storage("scratch")?;
///
/// let mistake = krescent.configure::<Books>().strategy("fixed_evnts(1000)").unwrap_err();
/// assert!(mistake.to_string().contains("expected one of `fixed_events(N)`, `fixed_time(D)`"));
/// # Ok(())
/// # }
/// ```
pub struct Configure<'a, S, M> {
    krescent: &'a mut Krescent<S>,
    model: PhantomData<fn() -> M>,
}

impl<S: EventStore> Krescent<S> {
    /// Overrides the `#[checkpoint]` attribute of `M` (its strategy, its storage) in this
    /// `Krescent` and the clones made from it afterwards: for operators who change them per
    /// deployment, from a configuration file or an environment variable. The attribute stays
    /// the default; see [`Configure`].
    pub fn configure<M: EventModel>(&mut self) -> Configure<'_, S, M> {
        Configure::new(self)
    }
}

impl<S, M: EventModel> std::fmt::Debug for Configure<'_, S, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Configure")
            .field("model", &M::NAME)
            .field("override", &self.krescent.overrides.get(M::NAME))
            .finish()
    }
}

impl<'a, S, M: EventModel> Configure<'a, S, M> {
    pub(crate) fn new(krescent: &'a mut Krescent<S>) -> Self {
        Configure {
            krescent,
            model: PhantomData,
        }
    }

    /// Checkpoints `M` as `strategy` says instead of as its attribute does; parsed by the same
    /// grammar as `#[checkpoint(strategy = "...")]`: `fixed_events(N)`, `fixed_time(D)`,
    /// `always`, `manual`, `on_shutdown`, `never`, joined with `|`.
    ///
    /// # Errors
    /// [`Error::InvalidStrategy`] naming the mistake (and, for an unknown strategy, the valid
    /// ones); [`Error::NotCheckpointed`] when `M` has no `#[checkpoint]` attribute.
    pub fn strategy(self, strategy: &str) -> Result<Self, Error> {
        let strategy = Strategy::parse(strategy).map_err(|source| Error::InvalidStrategy {
            model: M::NAME,
            source,
        })?;
        self.strategy_value(strategy)
    }

    /// Like [`strategy`](Self::strategy), with a strategy already parsed.
    ///
    /// # Errors
    /// [`Error::NotCheckpointed`] when `M` has no `#[checkpoint]` attribute.
    pub fn strategy_value(self, strategy: Strategy) -> Result<Self, Error> {
        self.update(|o| o.strategy = Some(strategy))
    }

    /// Checkpoints `M` into the storage registered under `name` instead of its attribute's.
    /// The name is resolved when the model starts, like the attribute's: an unknown one is
    /// [`Error::UnknownStorage`] then, before any event is processed.
    ///
    /// # Errors
    /// [`Error::NotCheckpointed`] when `M` has no `#[checkpoint]` attribute.
    pub fn storage(self, name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        self.update(|o| o.storage = Some(name))
    }

    /// Handles `M`'s failing events as `policy` says instead of as its
    /// `#[model(on_error = "...")]` does; parsed by the same grammar: `stop`, `retry(N)`,
    /// `park`, `park(unordered)`, `retry(N) | park`. See [`crate::deadletter`].
    ///
    /// # Errors
    /// [`Error::InvalidErrorPolicy`] naming the mistake; [`Error::NotCheckpointed`] when `M`
    /// has no `#[checkpoint]` attribute.
    pub fn on_error(self, policy: &str) -> Result<Self, Error> {
        let policy = ErrorPolicy::parse(policy).map_err(|source| Error::InvalidErrorPolicy {
            model: M::NAME,
            source,
        })?;
        self.update(|o| o.on_error = Some(policy))
    }

    /// Makes `M` exclusive: [`Krescent::stream`] runs it only while it holds its lease, as it
    /// always does for a model with a projection, so that one instance at a time processes
    /// events and the others wait as standbys (see [`crate::fleet`]). Without it, a model whose
    /// state is in memory runs in every instance. Needs a storage that keeps leases
    /// (PostgreSQL); with another, the model runs without one.
    ///
    /// # Errors
    /// [`Error::NotCheckpointed`] when `M` has no `#[checkpoint]` attribute.
    pub fn exclusive(self) -> Result<Self, Error> {
        self.update(|o| o.exclusive = true)
    }

    /// Times `M`'s lease as `config` says instead of [`LeaseConfig::default`].
    ///
    /// # Errors
    /// [`Error::NotCheckpointed`] when `M` has no `#[checkpoint]` attribute.
    pub fn lease(self, config: LeaseConfig) -> Result<Self, Error> {
        self.update(|o| o.lease = Some(config))
    }

    fn update(self, change: impl FnOnce(&mut Override)) -> Result<Self, Error> {
        if M::checkpointing().is_none() {
            return Err(Error::NotCheckpointed { model: M::NAME });
        }
        change(self.krescent.override_mut(M::NAME));
        Ok(self)
    }
}
