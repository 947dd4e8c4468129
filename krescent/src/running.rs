//! A model streaming in its own task, and the handle that stops it.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{warn, Instrument as _};

use crate::checkpoint::CheckpointTrigger;
use crate::krescent::CaughtUp;
use crate::model::EventModel;
use crate::runner::{Runner, BATCH};
use crate::store::EventStore;
use crate::{Error, Position};

/// A batch of at least this many events means a backlog: the next batch is read while it is
/// applied.
const READ_AHEAD_FROM: usize = 64;
/// The longest pause between retries after the store failed transiently.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

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
    trigger: CheckpointTrigger,
    task: JoinHandle<Result<CaughtUp<M>, Error>>,
}

/// What the model's task watches: the stop flag and where to publish progress.
pub(crate) struct Control {
    stop: watch::Receiver<bool>,
    progress: watch::Sender<Position>,
    status: watch::Sender<Status>,
}

impl Control {
    /// The stop flag, for waiting before the runner starts (a standby waiting for its lease).
    #[cfg(feature = "postgres")]
    pub(crate) fn stop_flag(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }

    /// Publishes what the model is doing now.
    pub(crate) fn set_status(&self, status: Status) {
        self.status.send_if_modified(|current| {
            let changed = *current != status;
            *current = status;
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
        let span = tracing::info_span!("stream", model = M::NAME);
        let ended = status_tx.clone();
        let run = run(Control {
            stop: stop_rx,
            progress: progress_tx,
            status: status_tx,
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

/// Catches up, then follows live appends until stopped, then takes the final checkpoint.
/// Transient store failures are retried with backoff from the last processed position; other
/// failures end it (the restart loop in `restart.rs` decides what comes next).
pub(crate) async fn follow<S: EventStore, M: EventModel>(
    store: &S,
    runner: &mut Runner<M>,
    control: &mut Control,
) -> Result<(), Error> {
    let mut caught_up_at = None;
    let mut backoff = Duration::from_millis(50);
    // The batch after the one applied last, read while it was applied.
    let mut read_ahead = None;
    control.set_status(Status::Running);
    while !*control.stop.borrow() {
        let read = match read_ahead.take() {
            Some((after, read)) if after == runner.position => read,
            _ => store.read_batch(runner.position, BATCH).await,
        };
        let batch = match read {
            Ok(batch) => batch,
            Err(e) if e.is_transient() => {
                warn!(error = %e, retry_in = ?backoff, "event store unavailable; retrying");
                if wait_or_stop(&mut control.stop, tokio::time::sleep(backoff)).await {
                    break;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(source) => {
                return Err(Error::Store {
                    model: M::NAME,
                    source,
                })
            }
        };
        backoff = Duration::from_millis(50);
        if let Some(last) = batch.last() {
            runner.observe_head(store).await;
            let after = last.position();
            if batch.len() < READ_AHEAD_FROM {
                // Live events, a few at a time: the handler runs without waiting for a read
                // to be started, and the next read is most likely empty anyway.
                runner.apply(&batch).await?;
            } else {
                let (next, applied) =
                    tokio::join!(store.read_ahead(after, BATCH), runner.apply(&batch));
                applied?;
                read_ahead = Some((after, next));
            }
            control.progress.send_replace(runner.position);
            continue;
        }
        runner.caught_up();
        if caught_up_at != Some(runner.position) {
            caught_up_at = Some(runner.position);
            runner.model.on_caught_up(runner.position);
            control.progress.send_replace(runner.position);
        }
        if runner.due_when_idle() {
            runner.checkpoint_idle().await?;
        }
        let deadline = runner.idle_deadline();
        let position = runner.position;
        let wake = async {
            tokio::select! {
                woke = store.wait_for_append(position) => if let Err(e) = woke {
                    warn!(error = %e, "waiting for appends failed; polling");
                    tokio::time::sleep(backoff).await;
                },
                () = sleep_until(deadline) => {},
            }
        };
        if wait_or_stop(&mut control.stop, wake).await {
            break;
        }
    }
    runner.finish().await
}

/// Waits for `work` unless a stop comes first; whether it stopped.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, work: impl Future<Output = ()>) -> bool {
    let stopped = async {
        // An error means the handle is gone: stop as well.
        let _ = stop.wait_for(|stop| *stop).await;
    };
    tokio::select! {
        () = work => false,
        () = stopped => true,
    }
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
