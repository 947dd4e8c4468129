//! A model streaming in its own task, and the handle that stops it.

use std::future::Future;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use super::plan::CaughtUp;
use crate::checkpoint::CheckpointTrigger;
use crate::model::EventModel;
use crate::{Error, Position};

/// What a streaming model is doing, as [`Running::status`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// Restoring its checkpoint, no event processed yet in this run; or waiting to restart
    /// after a transient failure.
    Starting,
    /// Waiting until it may process events: another instance holds the model (or its segment).
    Standby,
    /// Processing events: catching up or following live appends.
    Running,
    /// Its task has ended (after a shutdown or an error; [`Running::shutdown`] says which).
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Starting => "starting",
            Status::Standby => "standby",
            Status::Running => "running",
            Status::Stopped => "stopped",
        })
    }
}

/// A model following a store in its own task.
#[derive(Debug)]
pub struct Running<M> {
    stop: watch::Sender<bool>,
    progress: watch::Receiver<Position>,
    status: watch::Receiver<Status>,
    parked: watch::Receiver<usize>,
    trigger: CheckpointTrigger,
    task: JoinHandle<Result<CaughtUp<M>, Error>>,
}

/// What the model's task watches: the stop flag and where to publish progress.
pub(crate) struct Control {
    pub(super) stop: watch::Receiver<bool>,
    pub(super) progress: watch::Sender<Position>,
    status: watch::Sender<Status>,
    /// How many events the model has parked.
    parked: watch::Sender<usize>,
}

impl Control {
    /// A control that nobody watches and that never stops (a catch-up's), with the sender of
    /// its stop flag: the flag counts as set once that sender is dropped.
    pub(crate) fn detached() -> (watch::Sender<bool>, Self) {
        let (stop, stop_rx) = watch::channel(false);
        let control = Control {
            stop: stop_rx,
            progress: watch::channel(Position::START).0,
            status: watch::channel(Status::Starting).0,
            parked: watch::channel(0).0,
        };
        (stop, control)
    }

    /// The stop flag, for waiting before the runner starts (a standby waiting for its lease).
    #[cfg(feature = "postgres")]
    pub(crate) fn stop_flag(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }

    /// Stops the run also when `signal` is set, as when a stop is asked for (a signal whose
    /// sender goes away unset never stops it). The returned task joins the two into the run's
    /// stop flag; it ends by itself at the first of them, and aborting it counts as a stop.
    #[cfg(feature = "postgres")]
    pub(crate) fn stop_also_on(
        &mut self,
        mut signal: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let (either, stop) = watch::channel(*self.stop.borrow());
        let mut asked = std::mem::replace(&mut self.stop, stop);
        tokio::spawn(async move {
            let signalled = async {
                if signal.wait_for(|set| *set).await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                // An error means the handle is gone: stop as well.
                _ = asked.wait_for(|stop| *stop) => {}
                () = signalled => {}
            }
            either.send_replace(true);
        })
    }

    /// Publishes what the model is doing now.
    pub(crate) fn set_status(&self, status: Status) {
        self.status.send_if_modified(|current| {
            let changed = *current != status;
            *current = status;
            changed
        });
    }

    /// Publishes how many events the model has parked.
    pub(crate) fn set_parked(&self, parked: usize) {
        self.parked.send_if_modified(|current| {
            let changed = *current != parked;
            *current = parked;
            changed
        });
    }

    /// Whether a stop was asked for (or the handle is gone).
    pub(crate) fn stop_requested(&self) -> bool {
        *self.stop.borrow() || self.stop.has_changed().is_err()
    }

    /// Waits for `work` unless a stop comes first; whether it stopped.
    pub(crate) async fn wait_or_stop(&mut self, work: impl Future<Output = ()>) -> bool {
        wait_or_stop(&mut self.stop, work).await
    }
}

impl<M: EventModel> Running<M> {
    pub(crate) fn spawn<F>(trigger: CheckpointTrigger, run: impl FnOnce(Control) -> F) -> Self
    where
        F: Future<Output = Result<CaughtUp<M>, Error>> + Send + 'static,
    {
        let (stop, stop_rx) = watch::channel(false);
        let (progress_tx, progress) = watch::channel(Position::START);
        let (status_tx, status) = watch::channel(Status::Starting);
        let (parked_tx, parked) = watch::channel(0);
        let span = tracing::info_span!("stream", model = M::NAME);
        let ended = status_tx.clone();
        let run = run(Control {
            stop: stop_rx,
            progress: progress_tx,
            status: status_tx,
            parked: parked_tx,
        });
        let task = tokio::spawn(
            async move {
                let result = run.await;
                ended.send_replace(Status::Stopped);
                result
            }
            .instrument(span),
        );
        Running {
            stop,
            progress,
            status,
            parked,
            trigger,
            task,
        }
    }

    /// What the model is doing now.
    #[must_use]
    pub fn status(&self) -> Status {
        *self.status.borrow()
    }

    /// A receiver of the model's status, for waiting on a change (`changed`, `wait_for`).
    #[must_use]
    pub fn status_changes(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// How many events the model has parked ([`crate::deadletter`]), as it last knew when
    /// it read a batch or its parked set; 0 for a model that parks nothing.
    #[must_use]
    pub fn parked(&self) -> usize {
        *self.parked.borrow()
    }

    /// A receiver of the model's position, for the supervisor.
    pub(crate) fn progress_changes(&self) -> watch::Receiver<Position> {
        self.progress.clone()
    }

    /// Asks for a checkpoint (models with the `manual` strategy).
    pub fn request_checkpoint(&self) {
        self.trigger.request();
    }

    /// A handle that asks for checkpoints, for other tasks.
    #[must_use]
    pub fn checkpoint_trigger(&self) -> CheckpointTrigger {
        self.trigger.clone()
    }

    /// The position of the last event processed so far. After a restart from the last
    /// checkpoint it goes back to that checkpoint's position until the model has caught up
    /// again.
    #[must_use]
    pub fn position(&self) -> Position {
        *self.progress.borrow()
    }

    /// Waits until the model has processed every event up to `position`.
    ///
    /// # Errors
    /// [`Error::Stopped`] when the model's task ended before it got there (a handler or the
    /// store failed); [`shutdown`](Self::shutdown) then returns why.
    pub async fn reached(&self, position: Position) -> Result<(), Error> {
        let mut progress = self.progress.clone();
        // An error means the task ended and dropped the sender.
        let reached = progress.wait_for(|p| *p >= position).await.is_ok();
        let at = *progress.borrow();
        if reached || at >= position {
            return Ok(());
        }
        Err(Error::Stopped {
            model: M::NAME,
            position: at,
            wanted: position,
        })
    }

    /// Whether the model's task has ended (after an error, or a shutdown).
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops gracefully: finishes the current batch, takes the final checkpoint the strategy asks
    /// for, waits for every write, and returns the model.
    pub async fn shutdown(self) -> Result<CaughtUp<M>, Error> {
        // The task may have ended already; its result says why.
        let _ = self.stop.send(true);
        self.task.await.map_err(|e| Error::Aborted {
            model: M::NAME,
            reason: e.to_string(),
        })?
    }
}

/// Waits for `work` unless a stop comes first; whether it stopped.
pub(super) async fn wait_or_stop(
    stop: &mut watch::Receiver<bool>,
    work: impl Future<Output = ()>,
) -> bool {
    let stopped = async {
        // An error means the handle is gone: stop as well.
        let _ = stop.wait_for(|stop| *stop).await;
    };
    tokio::select! {
        () = work => false,
        () = stopped => true,
    }
}
