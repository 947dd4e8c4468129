//! What each supervised model is doing, as the supervisor reports it.

use std::fmt;
use std::time::SystemTime;

use crate::Position;

/// The state of one supervised model.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModelState {
    /// Restoring its checkpoint; no event processed yet in this run.
    Starting,
    /// Waiting until it may process events: another instance holds the model (or its segment).
    Standby,
    /// Processing events: catching up or following live appends.
    Running,
    /// Processing events, with `parked` events parked ([`crate::deadletter`]): a handler
    /// failed on them and the model went on; `krescent parked list` shows them.
    Parking {
        /// How many events are parked.
        parked: usize,
    },
    /// Failed transiently; restarts from its last checkpoint at `next_attempt`.
    BackingOff {
        /// The consecutive failure this is (1 for the first).
        attempt: u32,
        /// When it restarts.
        next_attempt: SystemTime,
        /// What failed, with its causes.
        error: String,
    },
    /// Ended by an error that a restart would not cure (a handler bug, an unusable
    /// checkpoint with `on_invalid = "fail"`), or by one transient failure more than the
    /// policy's `max_restarts`. It is not restarted.
    Failed {
        /// What failed, with its causes.
        error: String,
    },
    /// Stopped by a shutdown.
    Stopped,
}

impl fmt::Display for ModelState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelState::Starting => f.write_str("starting"),
            ModelState::Standby => f.write_str("standby"),
            ModelState::Running => f.write_str("running"),
            ModelState::Parking { parked } => write!(f, "running, {parked} events parked"),
            ModelState::BackingOff { attempt, error, .. } => {
                write!(f, "backing off (failure {attempt}: {error})")
            }
            ModelState::Failed { error } => write!(f, "failed: {error}"),
            ModelState::Stopped => f.write_str("stopped"),
        }
    }
}

/// One supervised model, as [`Supervisor::report`](super::Supervisor::report) sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelReport {
    /// The model's name (its checkpoint namespace).
    pub name: &'static str,
    /// What it is doing.
    pub state: ModelState,
    /// The last event it processed in its current run (the start of the stream until its
    /// first event).
    pub position: Position,
    /// How many times it was restarted.
    pub restarts: u32,
}

/// How one supervised model ended, as [`Supervisor::shutdown`](super::Supervisor::shutdown)
/// returns it.
#[derive(Debug)]
pub struct ModelExit {
    /// The model's name.
    pub name: &'static str,
    /// The position it stopped at, after its final checkpoint; or why it had ended (the error
    /// that failed it, or the transient one it was backing off from when it was stopped).
    pub result: Result<Position, crate::Error>,
}
