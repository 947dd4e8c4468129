//! Many models in one process: started together, restarted from their last checkpoint with
//! backoff after a transient failure, reported, and stopped together.
//!
//! ```
//! use krescent::prelude::*;
//! use krescent::supervisor::{ModelState, RestartPolicy, Supervisor};
//!
//! #[derive(Event, Serialize, Deserialize)]
//! #[event(name = "counted")]
//! struct Counted;
//!
//! #[derive(EventModel, Default)]
//! #[model(name = "counter")]
//! #[checkpoint(strategy = "fixed_events(10)", storage = "memory")]
//! struct Counter {
//!     #[checkpoint]
//!     n: u64,
//! }
//!
//! #[krescent::handlers]
//! impl Counter {
//!     fn counted(&mut self, _: &Counted) {
//!         self.n += 1;
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let krescent = Krescent::new(InMemoryEventStore::new());
//! let appended = krescent.store().append("c-1", ExpectedVersion::Any, vec![NewEvent::new(&Counted)?]).await?;
//! let supervisor = Supervisor::new(krescent.clone())
//!     .with_policy(RestartPolicy::default().max_restarts(5))
//!     .model(Counter::default);
//! supervisor.reached(appended.position).await;
//! assert_eq!(supervisor.report()[0].state, ModelState::Running);
//! for exit in supervisor.shutdown().await {
//!     assert_eq!(exit.result?, appended.position);
//! }
//! # Ok(())
//! # }
//! ```

mod report;

use std::future::Future;
use std::pin::Pin;

use tokio::sync::watch;

use crate::fleet::{RunningSegments, Segment};
use crate::run::{Attempts, Models, Running, Setback, Status};
use crate::store::EventStore;
use crate::{EventModel, Krescent, Position};

pub use crate::run::RestartPolicy;
pub use report::{ModelExit, ModelReport, ModelState};

/// Runs many models (of any types) in one process, each in a task of its own.
///
/// Each model is made by a function, called again for every restart: a restart begins with
/// a fresh model restored from the last checkpoint, so nothing the failed run applied after
/// that checkpoint lingers. A model is restarted after a failure that
/// [`Error::is_transient`](crate::Error::is_transient) calls transient — a lost database
/// connection, a projection write that failed because the server went away, a handler error
/// marked [`Transient`](crate::Transient) — with exponential backoff ([`RestartPolicy`]).
/// Any other error (a handler bug, a payload that does not decode, an unusable checkpoint
/// with `on_invalid = "fail"`) is not retried: the model is reported
/// [`ModelState::Failed`] and the others go on. [`shutdown`](Self::shutdown) stops all of
/// them gracefully: each finishes its batch and takes the final checkpoint its strategy asks
/// for.
///
/// Supervise each model once per process: two runs of one model in a process would process
/// every event twice (the checkpoint namespace is the model's name).
pub struct Supervisor<S> {
    krescent: Krescent<S>,
    policy: RestartPolicy,
    models: Vec<Entry>,
}

impl<S> std::fmt::Debug for Supervisor<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("policy", &self.policy)
            .field("models", &self.report())
            .finish_non_exhaustive()
    }
}

/// One supervised model.
struct Entry {
    name: &'static str,
    attempts: watch::Receiver<Attempts>,
    running: Box<dyn Supervised>,
}

/// A running model of any type.
trait Supervised: Send + Sync {
    fn status(&self) -> Status;
    fn position(&self) -> Position;
    /// How many events it has parked; a split model's segments do not say (0).
    fn parked(&self) -> usize {
        0
    }
    /// Waits until the model has processed every event up to `position`, or ended.
    fn reached(&self, position: Position) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    fn shutdown(
        self: Box<Self>,
    ) -> Pin<Box<dyn Future<Output = Result<Position, crate::Error>> + Send>>;
}

impl<M: EventModel> Supervised for Running<M> {
    fn status(&self) -> Status {
        Running::status(self)
    }

    fn position(&self) -> Position {
        Running::position(self)
    }

    fn parked(&self) -> usize {
        Running::parked(self)
    }

    fn reached(&self, position: Position) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let mut progress = self.progress_changes();
        Box::pin(async move {
            // An error means the model's task ended: it will not get there.
            let _ = progress.wait_for(|p| *p >= position).await;
        })
    }

    fn shutdown(
        self: Box<Self>,
    ) -> Pin<Box<dyn Future<Output = Result<Position, crate::Error>> + Send>> {
        Box::pin(async move { Running::shutdown(*self).await.map(|done| done.position) })
    }
}

/// A split model's segments that this process runs: running while it processes any, a
/// standby while it processes none.
impl<M: EventModel> Supervised for RunningSegments<M> {
    fn status(&self) -> Status {
        if self.is_finished() {
            Status::Stopped
        } else if self.held().is_empty() {
            Status::Standby
        } else {
            Status::Running
        }
    }

    fn position(&self) -> Position {
        RunningSegments::position(self)
    }

    fn reached(&self, position: Position) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            while !self.is_finished() && self.position() < position {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
    }

    fn shutdown(
        self: Box<Self>,
    ) -> Pin<Box<dyn Future<Output = Result<Position, crate::Error>> + Send>> {
        Box::pin(async move {
            let ended = RunningSegments::shutdown(*self).await?;
            Ok(ended
                .iter()
                .map(|(_, done)| done.position)
                .min()
                .unwrap_or(Position::START))
        })
    }
}

impl<S> Supervisor<S> {
    /// Every model's state, in the order they were added.
    #[must_use]
    pub fn report(&self) -> Vec<ModelReport> {
        self.models
            .iter()
            .map(|entry| {
                let attempts = entry.attempts.borrow().clone();
                let state = match (attempts.setback, entry.running.status()) {
                    (
                        Some(Setback::BackingOff {
                            attempt,
                            next_attempt,
                            error,
                        }),
                        _,
                    ) => ModelState::BackingOff {
                        attempt,
                        next_attempt,
                        error,
                    },
                    (Some(Setback::Failed { error }), _) => ModelState::Failed { error },
                    (None, Status::Standby) => ModelState::Standby,
                    (None, Status::Running) => match entry.running.parked() {
                        0 => ModelState::Running,
                        parked => ModelState::Parking { parked },
                    },
                    (None, Status::Stopped) => ModelState::Stopped,
                    (None, _) => ModelState::Starting,
                };
                ModelReport {
                    name: entry.name,
                    state,
                    position: entry.running.position(),
                    restarts: attempts.restarts,
                }
            })
            .collect()
    }
}

impl<S: EventStore> Supervisor<S> {
    /// A supervisor of models of `krescent`'s store, with the default [`RestartPolicy`].
    #[must_use]
    pub fn new(krescent: Krescent<S>) -> Self {
        Supervisor {
            krescent,
            policy: RestartPolicy::default(),
            models: Vec::new(),
        }
    }

    /// The restart policy of the models added after this call.
    #[must_use]
    pub fn with_policy(mut self, policy: RestartPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Starts the model that `make` builds (called again for each restart), in a task of its
    /// own; call it inside a Tokio runtime.
    #[must_use]
    pub fn model<M: EventModel>(mut self, make: impl FnMut() -> M + Send + 'static) -> Self {
        self.add(make);
        self
    }

    /// Starts the model that `make` builds, like [`model`](Self::model), on a supervisor
    /// already held.
    pub fn add<M: EventModel>(&mut self, make: impl FnMut() -> M + Send + 'static) {
        let (attempts, attempts_rx) = watch::channel(Attempts::default());
        let running = self.krescent.stream_restarting(
            Models::Make(Box::new(make)),
            self.policy.clone(),
            attempts,
        );
        self.models.push(Entry {
            name: M::NAME,
            attempts: attempts_rx,
            running: Box::new(running),
        });
    }

    /// Starts this process's share of the segments of `M`, a model split by
    /// `#[model(segments = N)]`, as [`Krescent::stream_segments`] does; `make` builds a
    /// segment's model for each of its starts. The entry is reported as one model: running
    /// while this process processes any segment, a standby while it processes none; its
    /// position is the lowest of its segments'. Each segment restarts after transient failures
    /// with the default [`RestartPolicy`] (the supervisor's policy is not applied to it), and a
    /// segment that fails for good stops the entry (reported failed at
    /// [`shutdown`](Self::shutdown)).
    #[must_use]
    pub fn segments<M: EventModel>(
        mut self,
        make: impl FnMut(Segment) -> M + Send + 'static,
    ) -> Self {
        let running = self.krescent.stream_segments(make);
        let (_, attempts) = watch::channel(Attempts::default());
        self.models.push(Entry {
            name: M::NAME,
            attempts,
            running: Box::new(running),
        });
        self
    }

    /// Waits until every model has processed every event up to `position` (a model that
    /// ended never does: bound the wait with a timeout).
    pub async fn reached(&self, position: Position) {
        for entry in &self.models {
            entry.running.reached(position).await;
        }
    }

    /// Stops every model gracefully, all at once: each finishes its current batch, takes the
    /// final checkpoint its strategy asks for and waits for its writes. Returns how each
    /// ended, in the order they were added.
    pub async fn shutdown(self) -> Vec<ModelExit> {
        let stopping: Vec<_> = self
            .models
            .into_iter()
            .map(|entry| (entry.name, tokio::spawn(entry.running.shutdown())))
            .collect();
        let mut exits = Vec::with_capacity(stopping.len());
        for (name, stopped) in stopping {
            let result = stopped.await.unwrap_or_else(|e| {
                Err(crate::Error::Aborted {
                    model: name,
                    reason: e.to_string(),
                })
            });
            exits.push(ModelExit { name, result });
        }
        exits
    }
}
