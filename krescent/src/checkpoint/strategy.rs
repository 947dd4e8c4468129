//! Checkpoint strategies: when a running model takes a checkpoint.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use krescent_strategy::{Strategy, StrategyError};

/// Calls `f` with every strategy that `strategy` joins with `|` (at any depth).
fn visit(strategy: &Strategy, f: &mut impl FnMut(&Strategy)) {
    match strategy {
        Strategy::Any(all) => all.iter().for_each(|s| visit(s, f)),
        leaf => f(leaf),
    }
}

/// Asks a running model with the `manual` strategy for a checkpoint; cheap to clone.
///
/// The checkpoint is taken after the next event the model processes, or when it stops.
#[derive(Debug, Clone, Default)]
pub struct CheckpointTrigger {
    requested: Arc<AtomicBool>,
}

impl CheckpointTrigger {
    /// Requests a checkpoint.
    pub fn request(&self) {
        self.requested.store(true, Ordering::Release);
    }

    pub(crate) fn take(&self) -> bool {
        self.requested.swap(false, Ordering::AcqRel)
    }

    #[inline]
    pub(crate) fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }
}

/// The running state of a [`Strategy`] for one model: counters, clock and trigger. Never shared
/// between models.
#[derive(Debug)]
pub(crate) struct StrategyState {
    every_events: Option<u32>,
    every_time: Option<Duration>,
    always: bool,
    manual: bool,
    on_shutdown: bool,
    since_checkpoint: u32,
    /// How often the model moved past events that were not its own (a quiet segment) since
    /// the last checkpoint: a checkpoint by time or at shutdown stores the new position.
    moved: u32,
    last_checkpoint: Instant,
    trigger: CheckpointTrigger,
}

impl StrategyState {
    pub(crate) fn new(strategy: &Strategy, trigger: CheckpointTrigger) -> Self {
        let mut state = StrategyState {
            every_events: None,
            every_time: None,
            always: false,
            manual: false,
            on_shutdown: strategy.checkpoints_on_shutdown(),
            since_checkpoint: 0,
            moved: 0,
            last_checkpoint: Instant::now(),
            trigger,
        };
        visit(strategy, &mut |leaf| match leaf {
            Strategy::FixedEvents(n) => {
                state.every_events = Some(state.every_events.map_or(n.get(), |m| m.min(n.get())));
            }
            Strategy::FixedTime(d) => {
                state.every_time = Some(state.every_time.map_or(*d, |m| m.min(*d)));
            }
            Strategy::Always => state.always = true,
            Strategy::Manual => state.manual = true,
            Strategy::OnShutdown | Strategy::Never | Strategy::Any(_) => {}
        });
        state
    }

    /// Counts one processed event; whether a checkpoint is now due.
    #[inline]
    pub(crate) fn after_event(&mut self) -> bool {
        self.since_checkpoint = self.since_checkpoint.saturating_add(1);
        self.always
            || self
                .every_events
                .is_some_and(|n| self.since_checkpoint >= n)
            || self
                .every_time
                .is_some_and(|d| self.last_checkpoint.elapsed() >= d)
            || (self.manual && self.trigger.is_requested())
    }

    /// The model moved its position past events that were not its own (a quiet segment
    /// caught up to the head): not an event for the count of `fixed_events`, but a checkpoint
    /// by time, or at shutdown, stores the new position.
    pub(crate) fn moved(&mut self) {
        self.moved = self.moved.saturating_add(1);
    }

    /// Events processed, or a position moved, since the last checkpoint.
    fn unsaved(&self) -> bool {
        self.since_checkpoint > 0 || self.moved > 0
    }

    /// Whether an idle model has a checkpoint due: time has run out with unsaved events (or a
    /// moved position). (A manual request waits for the next event, or for the stop.)
    pub(crate) fn due_when_idle(&self) -> bool {
        self.unsaved()
            && self
                .every_time
                .is_some_and(|d| self.last_checkpoint.elapsed() >= d)
    }

    /// Whether a graceful stop should checkpoint the events processed since the last one: the
    /// strategy says so, or a manual request is still open.
    pub(crate) fn due_on_shutdown(&self) -> bool {
        self.unsaved() && (self.on_shutdown || (self.manual && self.trigger.is_requested()))
    }

    /// Whether any processed event is not yet covered by a checkpoint.
    pub(crate) fn has_unsaved(&self) -> bool {
        self.unsaved()
    }

    /// Resets counters and clock after a checkpoint was taken, whatever asked for it.
    pub(crate) fn checkpoint_taken(&mut self) {
        self.since_checkpoint = 0;
        self.moved = 0;
        self.last_checkpoint = Instant::now();
        self.trigger.take();
    }

    /// How long an idle streaming model may sleep before a time-based checkpoint falls due.
    pub(crate) fn idle_deadline(&self) -> Option<Instant> {
        self.unsaved()
            .then_some(())
            .and(self.every_time)
            .map(|d| self.last_checkpoint + d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn events(n: u32) -> Strategy {
        Strategy::FixedEvents(NonZeroU32::new(n).unwrap())
    }

    #[test]
    fn fixed_events_counts_and_resets() {
        let mut s = StrategyState::new(&events(3), CheckpointTrigger::default());
        assert!(!s.after_event());
        assert!(!s.after_event());
        assert!(s.after_event());
        s.checkpoint_taken();
        assert!(!s.after_event());
    }

    #[test]
    fn any_is_due_when_the_first_part_is() {
        let trigger = CheckpointTrigger::default();
        let mut s = StrategyState::new(
            &Strategy::Any(vec![events(100), Strategy::Manual]),
            trigger.clone(),
        );
        assert!(!s.after_event());
        trigger.request();
        assert!(s.after_event());
        s.checkpoint_taken();
        assert!(
            !s.after_event(),
            "the manual checkpoint also reset the event count"
        );
    }
}
