//! The snapshot budget: how long a runner waits after a snapshot before it takes the next.

use std::time::{Duration, Instant};

/// What a piece of the model task's work cost it: the time its thread spent on the CPU, not the
/// time that passed. A process paused (`SIGSTOP`, a VM's steal, a loaded machine) in the middle
/// of a snapshot did not spend the pause on the snapshot; counted as wall-clock, a pause of
/// seconds would hold the next checkpoint back for forty times that.
#[derive(Debug)]
pub(crate) struct TaskWork {
    /// This thread's CPU time at the start, where the platform has a thread clock.
    cpu: Option<Duration>,
    wall: Instant,
}

impl TaskWork {
    /// Starts measuring work done on this thread, synchronously (no `.await` before
    /// [`cost`](Self::cost), which would let the task move to another thread).
    pub(crate) fn start() -> Self {
        TaskWork {
            cpu: thread_time(),
            wall: Instant::now(),
        }
    }

    /// The wall-clock time since [`start`](Self::start).
    pub(crate) fn elapsed(&self) -> Duration {
        self.wall.elapsed()
    }

    /// The CPU time this thread spent since [`start`](Self::start); the wall-clock time where
    /// the platform has no thread clock.
    pub(crate) fn cost(&self) -> Duration {
        let wall = self.wall.elapsed();
        match (self.cpu, thread_time()) {
            (Some(start), Some(now)) => now.saturating_sub(start).min(wall),
            _ => wall,
        }
    }
}

/// The CPU time this thread has spent, if the platform says.
fn thread_time() -> Option<Duration> {
    cpu_time::ThreadTime::try_now()
        .ok()
        .map(|t| t.as_duration())
}

/// No snapshot before an instant, checked without reading the clock at every event.
///
/// A fast replay processes an event in a few hundred nanoseconds, and reading the clock costs
/// tens of them, so a runner that waits for an instant does not read the clock per event:
/// from the pace of the events since the wait began it estimates how many events the rest of
/// the wait spans and reads the clock again after about half of them. A wait thus takes a
/// handful of clock readings however many events it spans, and ends a few events late at most
/// (unless the events suddenly slow down); events slower than half the remaining wait are
/// checked one by one.
#[derive(Debug, Default)]
pub(crate) struct SnapshotBudget {
    wait: Option<Wait>,
}

#[derive(Debug)]
struct Wait {
    /// No snapshot before this instant.
    until: Instant,
    /// When the wait began, and the events processed then.
    began: (Instant, u64),
    /// The clock is read again once this many events are processed.
    next_check: u64,
}

impl SnapshotBudget {
    /// No snapshot before `until`; `now` is the current instant, `processed` the runner's count
    /// of processed events.
    pub(crate) fn wait_until(&mut self, until: Instant, now: Instant, processed: u64) {
        self.wait = Some(Wait {
            until,
            began: (now, processed),
            // The first event after the snapshot reads the clock: events that come slowly (a
            // live model) are checked one by one, as if the clock were read at each.
            next_check: processed + 1,
        });
    }

    /// Whether a snapshot must still wait, `processed` events into the run.
    #[inline]
    pub(crate) fn waits(&mut self, processed: u64) -> bool {
        match &self.wait {
            None => false,
            Some(wait) if processed < wait.next_check => true,
            Some(_) => self.check(processed),
        }
    }

    /// [`waits`](Self::waits) with a look at the clock.
    #[inline(never)]
    fn check(&mut self, processed: u64) -> bool {
        let Some(wait) = &mut self.wait else {
            return false;
        };
        let now = Instant::now();
        if now >= wait.until {
            self.wait = None;
            return false;
        }
        let (began, began_processed) = wait.began;
        let events = u128::from(processed.saturating_sub(began_processed).max(1));
        let pace = (now.saturating_duration_since(began).as_nanos() / events).max(1);
        let remaining = (wait.until - now).as_nanos() / pace;
        let skip = u64::try_from(remaining / 2).unwrap_or(u64::MAX).max(1);
        wait.next_check = processed.saturating_add(skip);
        true
    }

    /// The instant the wait ends, if the runner waits.
    pub(crate) fn until(&self) -> Option<Instant> {
        self.wait.as_ref().map(|w| w.until)
    }

    /// Makes the next [`waits`](Self::waits) read the clock: for a runner that is idle, whose
    /// count of events does not move.
    pub(crate) fn check_clock(&mut self) {
        if let Some(wait) = &mut self.wait {
            wait.next_check = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_is_not_work() {
        let work = TaskWork::start();
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            work.cost() < Duration::from_millis(25),
            "asleep, the thread spent {:?} on the CPU",
            work.cost()
        );
        let work = TaskWork::start();
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(20) {
            std::hint::black_box(());
        }
        assert!(work.cost() > Duration::ZERO, "spinning is work");
    }

    #[test]
    fn no_wait_no_clock() {
        let mut budget = SnapshotBudget::default();
        assert!(!budget.waits(0));
        assert_eq!(budget.until(), None);
    }

    #[test]
    fn a_wait_in_the_past_ends_at_the_next_event() {
        let mut budget = SnapshotBudget::default();
        let now = Instant::now();
        budget.wait_until(now, now, 10);
        assert!(
            budget.waits(10),
            "the clock is not read before the next event"
        );
        assert!(!budget.waits(11));
        assert!(!budget.waits(12));
    }

    #[test]
    fn an_idle_runner_reads_the_clock() {
        let mut budget = SnapshotBudget::default();
        let now = Instant::now();
        budget.wait_until(now + Duration::from_millis(20), now, 0);
        assert!(budget.waits(0));
        std::thread::sleep(Duration::from_millis(25));
        assert!(
            budget.waits(0),
            "the clock is not read before the next event"
        );
        budget.check_clock();
        assert!(!budget.waits(0));
    }

    #[test]
    fn a_long_wait_reads_the_clock_rarely_and_ends_in_time() {
        let mut budget = SnapshotBudget::default();
        let start = Instant::now();
        let until = start + Duration::from_millis(30);
        budget.wait_until(until, start, 0);
        let next_check = |b: &SnapshotBudget| b.wait.as_ref().map(|w| w.next_check);
        let (mut processed, mut checks) = (0, 0);
        loop {
            let before = next_check(&budget);
            if !budget.waits(processed) {
                break;
            }
            if next_check(&budget) != before {
                checks += 1;
            }
            processed += 1;
            std::thread::sleep(Duration::from_micros(50));
        }
        let late = Instant::now().saturating_duration_since(until);
        assert!(
            checks < 40,
            "{checks} clock readings for {processed} events"
        );
        assert!(late < Duration::from_millis(15), "ended {late:?} late");
    }
}
