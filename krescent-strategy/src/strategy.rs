//! The strategy value.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

/// When a running model takes a checkpoint: written in `#[checkpoint(strategy = "...")]` (parsed
/// at compile time), or given at start-up to override it (parsed by the same [`Strategy::parse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// `fixed_events(N)`: after every N processed events.
    FixedEvents(NonZeroU32),
    /// `fixed_time(D)`: at the first event after D has passed since the last checkpoint.
    FixedTime(Duration),
    /// `always`: after every event.
    Always,
    /// `manual`: when the application asks for one through the running model's trigger.
    Manual,
    /// `on_shutdown`: only when the model stops gracefully.
    OnShutdown,
    /// `never`: the model never writes a checkpoint (it may still restore one).
    Never,
    /// `a | b`: whichever is due first.
    Any(Vec<Strategy>),
}

impl Strategy {
    /// Whether a graceful stop takes a final checkpoint: the event-, time- and shutdown-based
    /// strategies do.
    #[must_use]
    pub fn checkpoints_on_shutdown(&self) -> bool {
        match self {
            Strategy::FixedEvents(_) | Strategy::FixedTime(_) | Strategy::OnShutdown => true,
            Strategy::Always | Strategy::Manual | Strategy::Never => false,
            Strategy::Any(all) => all.iter().any(Strategy::checkpoints_on_shutdown),
        }
    }

    /// The strategies joined by `|`, or this one alone.
    #[must_use]
    pub fn parts(&self) -> &[Strategy] {
        match self {
            Strategy::Any(all) => all,
            leaf => std::slice::from_ref(leaf),
        }
    }

    /// The name of a strategy as the grammar writes it: `fixed_events`, …; `|` for [`Strategy::Any`].
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::FixedEvents(_) => "fixed_events",
            Strategy::FixedTime(_) => "fixed_time",
            Strategy::Always => "always",
            Strategy::Manual => "manual",
            Strategy::OnShutdown => "on_shutdown",
            Strategy::Never => "never",
            Strategy::Any(_) => "|",
        }
    }
}

/// As the grammar writes it, so that it parses back to the same value (durations in the
/// largest unit that is exact, below a millisecond rounded down to one).
impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::FixedEvents(n) => write!(f, "fixed_events({n})"),
            Strategy::FixedTime(d) => {
                let millis = d.as_millis();
                let (value, unit) = [(3_600_000, "h"), (60_000, "m"), (1_000, "s")]
                    .into_iter()
                    .find(|(per, _)| millis > 0 && millis % per == 0)
                    .map_or((millis, "ms"), |(per, unit)| (millis / per, unit));
                write!(f, "fixed_time({value}{unit})")
            }
            Strategy::Any(all) => {
                for (i, s) in all.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" | ")?;
                    }
                    write!(f, "{s}")?;
                }
                Ok(())
            }
            leaf => f.write_str(leaf.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_as_written() {
        let s = Strategy::Any(vec![
            Strategy::FixedEvents(NonZeroU32::MIN.saturating_add(24)),
            Strategy::FixedTime(Duration::from_secs(5)),
            Strategy::Manual,
        ]);
        let text = "fixed_events(25) | fixed_time(5s) | manual";
        assert_eq!(s.to_string(), text);
        assert_eq!(Strategy::parse(text), Ok(s));
        for (millis, text) in [(1500, "1500ms"), (120_000, "2m"), (7_200_000, "2h")] {
            let s = Strategy::FixedTime(Duration::from_millis(millis));
            assert_eq!(s.to_string(), format!("fixed_time({text})"));
            assert_eq!(Strategy::parse(&s.to_string()), Ok(s));
        }
    }

    #[test]
    fn shutdown_behaviour_follows_the_strategy() {
        assert!(Strategy::FixedEvents(NonZeroU32::MIN).checkpoints_on_shutdown());
        assert!(Strategy::OnShutdown.checkpoints_on_shutdown());
        assert!(!Strategy::Manual.checkpoints_on_shutdown());
        assert!(Strategy::Any(vec![
            Strategy::Manual,
            Strategy::FixedTime(Duration::from_secs(1))
        ])
        .checkpoints_on_shutdown());
    }
}
