//! When a failed model is started again: exponential backoff.

use std::time::Duration;

use crate::Error;

/// How a model that failed transiently is restarted: after `initial_backoff`, doubling with
/// each consecutive failure up to `max_backoff`; a run that stayed healthy for `reset_after`
/// starts the count again; after `max_restarts` consecutive restarts (if set) the next
/// transient failure is final. Which failures restart a model is [`restart_if`](Self::restart_if)'s
/// choice: by default the transient ones ([`Error::is_transient`]).
///
/// The default: 100 ms, doubling up to 10 s, reset after 60 s, restarts without limit, after
/// transient failures only.
///
/// ```
/// use std::time::Duration;
/// use krescent::supervisor::RestartPolicy;
///
/// let policy = RestartPolicy::default()
///     .initial_backoff(Duration::from_millis(50))
///     .max_backoff(Duration::from_secs(2))
///     .reset_after(Duration::from_secs(30))
///     .max_restarts(10);
/// assert_eq!(policy.delay(1), Duration::from_millis(50));
/// assert_eq!(policy.delay(3), Duration::from_millis(200));
/// assert_eq!(policy.delay(30), Duration::from_secs(2));
/// ```
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    initial: Duration,
    max: Duration,
    reset_after: Duration,
    max_restarts: Option<u32>,
    restart_if: fn(&Error) -> bool,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            reset_after: Duration::from_secs(60),
            max_restarts: None,
            restart_if: Error::is_transient,
        }
    }
}

impl RestartPolicy {
    /// The pause before the first restart.
    #[must_use]
    pub fn initial_backoff(mut self, delay: Duration) -> Self {
        self.initial = delay;
        self
    }

    /// The longest pause between restarts.
    #[must_use]
    pub fn max_backoff(mut self, delay: Duration) -> Self {
        self.max = delay;
        self
    }

    /// How long a run must last for its failure to count as the first again.
    #[must_use]
    pub fn reset_after(mut self, healthy: Duration) -> Self {
        self.reset_after = healthy;
        self
    }

    /// At most this many consecutive restarts; the next transient failure is final (the model
    /// is reported failed).
    #[must_use]
    pub fn max_restarts(mut self, restarts: u32) -> Self {
        self.max_restarts = Some(restarts);
        self
    }

    /// Which errors restart the model (the others end it, reported failed); by default
    /// [`Error::is_transient`]. A model that failed any other way fails the same way again
    /// from the same checkpoint, so restarting it only helps when something outside changed
    /// (another instance gave up the model, an operator fixed the data).
    ///
    /// ```
    /// use krescent::supervisor::RestartPolicy;
    ///
    /// // Also restart after a handler error of any kind.
    /// let policy = RestartPolicy::default()
    ///     .restart_if(|e| e.is_transient() || matches!(e, krescent::Error::Handler { .. }));
    /// ```
    #[must_use]
    pub fn restart_if(mut self, restart: fn(&Error) -> bool) -> Self {
        self.restart_if = restart;
        self
    }

    /// No restart at all: the first failure ends the run (a catch-up's policy).
    pub(crate) fn never() -> Self {
        RestartPolicy::default().restart_if(|_| false)
    }

    /// Whether `error` restarts the model.
    pub(crate) fn restarts_after(&self, error: &Error) -> bool {
        (self.restart_if)(error)
    }

    /// The pause before the `failure`-th consecutive restart (counted from 1).
    #[must_use]
    pub fn delay(&self, failure: u32) -> Duration {
        let doublings = failure.saturating_sub(1).min(31);
        self.initial
            .checked_mul(1 << doublings)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// Whether a run that lasted `ran` was healthy long enough to reset the count.
    pub(crate) fn healthy(&self, ran: Duration) -> bool {
        ran >= self.reset_after
    }

    /// Whether the `failure`-th consecutive failure is one too many.
    pub(crate) fn exhausted(&self, failure: u32) -> bool {
        self.max_restarts.is_some_and(|max| failure > max)
    }
}
