//! The one parser of the strategy grammar.
//!
//! `strategy ( "|" strategy )*` where a strategy is one of `fixed_events(N)`, `fixed_time(D)`,
//! `always`, `manual`, `on_shutdown` or `never`; `N` is a whole number from 1 (`_` may separate
//! digits), `D` a whole number above zero with a unit: `ms`, `s`, `m` or `h`. Whitespace between
//! the parts is ignored; no strategy may be given twice, and `never` stands alone.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use crate::{Strategy, EXPECTED};

/// The duration units, as the message for an unknown one lists them.
const UNITS: &str = "`ms`, `s`, `m`, `h`";

/// A strategy string that does not parse: the string and what is wrong with it. The message
/// names the mistake and, for an unknown strategy, lists the valid ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrategyError {
    text: String,
    message: String,
}

impl StrategyError {
    fn new(text: &str, message: impl Into<String>) -> Self {
        StrategyError {
            text: text.to_owned(),
            message: message.into(),
        }
    }

    /// The string that was parsed.
    #[must_use]
    pub fn text(&self) -> &str {
        &self.text
    }

    /// What is wrong with it, as [`Display`](fmt::Display) says it.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for StrategyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StrategyError {}

impl Strategy {
    /// Parses a strategy as `#[checkpoint(strategy = "...")]` writes it, such as
    /// `"fixed_events(1000) | fixed_time(5s)"`.
    ///
    /// # Errors
    /// [`StrategyError`] naming the mistake.
    pub fn parse(text: &str) -> Result<Strategy, StrategyError> {
        Parser { text, rest: text }.strategy()
    }
}

impl FromStr for Strategy {
    type Err = StrategyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Strategy::parse(text)
    }
}

/// A cursor over the text.
struct Parser<'a> {
    text: &'a str,
    rest: &'a str,
}

impl<'a> Parser<'a> {
    fn error(&self, message: impl Into<String>) -> StrategyError {
        StrategyError::new(self.text, message)
    }

    fn skip_whitespace(&mut self) {
        self.rest = self.rest.trim_start();
    }

    /// Takes `c` if it comes next.
    fn eat(&mut self, c: char) -> bool {
        self.skip_whitespace();
        match self.rest.strip_prefix(c) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    /// `leaf ( "|" leaf )*`.
    fn strategy(mut self) -> Result<Strategy, StrategyError> {
        if !balanced(self.text) {
            return Err(self.error(format!(
                "malformed checkpoint strategy `{}`; expected one of {EXPECTED}, joined with `|`",
                self.text
            )));
        }
        let mut all = vec![self.leaf()?];
        loop {
            self.skip_whitespace();
            if self.rest.is_empty() {
                break;
            }
            if !self.eat('|') {
                return Err(self.error(format!(
                    "unexpected `{}` in checkpoint strategy; join strategies with `|`",
                    self.rest.trim_end()
                )));
            }
            all.push(self.leaf()?);
        }
        self.check_combination(&all)?;
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            Strategy::Any(all)
        })
    }

    /// One strategy, such as `fixed_events(25)` or `always`.
    fn leaf(&mut self) -> Result<Strategy, StrategyError> {
        self.skip_whitespace();
        if self.rest.is_empty() || self.rest.starts_with('|') {
            return Err(self.error(format!(
                "missing checkpoint strategy; expected one of {EXPECTED}"
            )));
        }
        let end = self
            .rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(self.rest.len());
        let (name, after) = self.rest.split_at(end);
        if name.is_empty() {
            let unknown = self.rest.split('|').next().unwrap_or_default().trim();
            return Err(self.error(format!(
                "unknown checkpoint strategy `{unknown}`; expected one of {EXPECTED}"
            )));
        }
        self.rest = after;
        let argument = self.argument();
        let strategy = match name {
            // `fixed_events(N)`: every N events, N at least 1.
            "fixed_events" => Strategy::FixedEvents(self.count(self.needed(argument, name, "N")?)?),
            // `fixed_time(D)`: at the first event D after the last checkpoint.
            "fixed_time" => Strategy::FixedTime(self.duration(self.needed(argument, name, "D")?)?),
            // The strategies without an argument.
            "always" => Strategy::Always,
            "manual" => Strategy::Manual,
            "on_shutdown" => Strategy::OnShutdown,
            "never" => Strategy::Never,
            unknown => {
                return Err(self.error(format!(
                    "unknown checkpoint strategy `{unknown}`; expected one of {EXPECTED}"
                )));
            }
        };
        match argument {
            Some(argument) if !matches!(name, "fixed_events" | "fixed_time") => Err(self.error(
                format!("`{name}` takes no argument, found `{name}({argument})`"),
            )),
            _ => Ok(strategy),
        }
    }

    /// The argument of `name`, which must be there and not be empty.
    fn needed(
        &self,
        argument: Option<&'a str>,
        name: &str,
        placeholder: &str,
    ) -> Result<&'a str, StrategyError> {
        argument.filter(|a| !a.is_empty()).ok_or_else(|| {
            self.error(format!(
                "`{name}` needs an argument: `{name}({placeholder})`"
            ))
        })
    }

    /// The trimmed text inside the parentheses that come next, if they do.
    fn argument(&mut self) -> Option<&'a str> {
        let rest = self.rest.trim_start();
        let inside = rest.strip_prefix('(')?;
        let mut depth = 1_usize;
        let close = inside.char_indices().find_map(|(i, c)| {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            (depth == 0).then_some(i)
        })?;
        self.rest = &inside[close + 1..];
        Some(inside[..close].trim())
    }

    /// `N` of `fixed_events(N)`.
    fn count(&self, argument: &str) -> Result<NonZeroU32, StrategyError> {
        let Some((digits, suffix)) = number(argument) else {
            return Err(self.error(format!(
                "`fixed_events` takes a whole number of events, found `{argument}`"
            )));
        };
        if !suffix.is_empty() {
            return Err(self.error(format!(
                "`fixed_events` takes a plain count, found `{argument}`"
            )));
        }
        let count: u32 = digits.parse().map_err(|_| {
            self.error(format!(
                "`fixed_events({argument})` is too large; the count is at most {}",
                u32::MAX
            ))
        })?;
        NonZeroU32::new(count).ok_or_else(|| {
            self.error("`fixed_events(0)` would never checkpoint; the count starts at 1")
        })
    }

    /// `D` of `fixed_time(D)`, such as `10s` or `500ms`.
    fn duration(&self, argument: &str) -> Result<Duration, StrategyError> {
        let invalid = || {
            self.error(format!(
                "expected a duration such as `10s` or `500ms`, found `{argument}`"
            ))
        };
        let (digits, unit) = number(argument).ok_or_else(invalid)?;
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "" => {
                return Err(self.error(format!(
                "duration `{argument}` needs a unit; expected one of {UNITS}, as in `{argument}s`"
            )))
            }
            unit if unit.chars().all(|c| c.is_ascii_alphabetic()) => {
                return Err(self.error(format!(
                    "unknown duration unit `{unit}`; expected one of {UNITS}"
                )))
            }
            _ => return Err(invalid()),
        };
        let too_long = || self.error(format!("duration `{argument}` is too long"));
        let value: u64 = digits.parse().map_err(|_| too_long())?;
        if value == 0 {
            return Err(self.error("`fixed_time` needs a duration above zero"));
        }
        value
            .checked_mul(millis_per_unit)
            .map(Duration::from_millis)
            .ok_or_else(too_long)
    }

    /// Rules on `a | b`: no strategy twice, and `never` alone.
    fn check_combination(&self, all: &[Strategy]) -> Result<(), StrategyError> {
        if all.len() > 1 && all.contains(&Strategy::Never) {
            return Err(self.error("`never` cannot be combined with other strategies"));
        }
        for (i, strategy) in all.iter().enumerate() {
            if all[..i]
                .iter()
                .any(|earlier| earlier.name() == strategy.name())
            {
                return Err(self.error(format!(
                    "checkpoint strategy `{}` is given twice",
                    strategy.name()
                )));
            }
        }
        Ok(())
    }
}

/// A whole number and what follows it (a unit, a suffix): its digits with the `_`s removed.
/// `None` when `text` does not start with a digit or what follows is not a word.
fn number(text: &str) -> Option<(String, &str)> {
    if !text.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '_'))
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(end);
    if !suffix.chars().all(|c| c.is_alphanumeric() || c == '_') {
        return None;
    }
    Some((digits.replace('_', ""), suffix))
}

/// Whether every parenthesis is closed, and closed after it was opened.
fn balanced(text: &str) -> bool {
    let mut depth = 0_usize;
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            _ => {}
        }
    }
    depth == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Strategy, String> {
        Strategy::parse(text).map_err(|e| e.to_string())
    }

    fn events(n: u32) -> Strategy {
        Strategy::FixedEvents(NonZeroU32::new(n).unwrap())
    }

    fn time(millis: u64) -> Strategy {
        Strategy::FixedTime(Duration::from_millis(millis))
    }

    #[test]
    fn parses_every_strategy() {
        assert_eq!(parse("fixed_events(25)"), Ok(events(25)));
        assert_eq!(parse("fixed_events( 1_000 )"), Ok(events(1000)));
        assert_eq!(parse("fixed_time(10s)"), Ok(time(10_000)));
        assert_eq!(parse("fixed_time(500ms)"), Ok(time(500)));
        assert_eq!(parse("fixed_time(5m)"), Ok(time(300_000)));
        assert_eq!(parse("fixed_time(1h)"), Ok(time(3_600_000)));
        assert_eq!(parse("always"), Ok(Strategy::Always));
        assert_eq!(parse("manual"), Ok(Strategy::Manual));
        assert_eq!(parse(" on_shutdown "), Ok(Strategy::OnShutdown));
        assert_eq!(parse("never"), Ok(Strategy::Never));
        assert_eq!(
            parse("fixed_events(1000) | fixed_time(5s) |manual"),
            Ok(Strategy::Any(vec![
                events(1000),
                time(5_000),
                Strategy::Manual
            ]))
        );
    }

    #[test]
    fn explains_mistakes() {
        let unknown = "unknown checkpoint strategy `fixed_evnts`; expected one of `fixed_events(N)`, `fixed_time(D)`, `always`, `manual`, `on_shutdown`, `never`";
        assert_eq!(parse("fixed_evnts(25)").unwrap_err(), unknown);
        for (text, message) in [
            (
                "fixed_events(0)",
                "`fixed_events(0)` would never checkpoint; the count starts at 1",
            ),
            (
                "fixed_events",
                "`fixed_events` needs an argument: `fixed_events(N)`",
            ),
            (
                "fixed_events()",
                "`fixed_events` needs an argument: `fixed_events(N)`",
            ),
            (
                "fixed_events(x)",
                "`fixed_events` takes a whole number of events, found `x`",
            ),
            (
                "fixed_events(-1)",
                "`fixed_events` takes a whole number of events, found `-1`",
            ),
            (
                "fixed_events(25u32)",
                "`fixed_events` takes a plain count, found `25u32`",
            ),
            (
                "fixed_events(99999999999)",
                "`fixed_events(99999999999)` is too large; the count is at most 4294967295",
            ),
            (
                "fixed_time(10sec)",
                "unknown duration unit `sec`; expected one of `ms`, `s`, `m`, `h`",
            ),
            (
                "fixed_time(10)",
                "duration `10` needs a unit; expected one of `ms`, `s`, `m`, `h`, as in `10s`",
            ),
            ("fixed_time(0s)", "`fixed_time` needs a duration above zero"),
            (
                "fixed_time(1.5s)",
                "expected a duration such as `10s` or `500ms`, found `1.5s`",
            ),
            (
                "fixed_time(99999999999999999h)",
                "duration `99999999999999999h` is too long",
            ),
            ("always(3)", "`always` takes no argument, found `always(3)`"),
            (
                "always manual",
                "unexpected `manual` in checkpoint strategy; join strategies with `|`",
            ),
            (
                "never | always",
                "`never` cannot be combined with other strategies",
            ),
            (
                "manual | manual",
                "checkpoint strategy `manual` is given twice",
            ),
        ] {
            assert_eq!(parse(text).unwrap_err(), message, "{text}");
        }
        for (text, start) in [
            ("always |", "missing checkpoint strategy"),
            ("", "missing checkpoint strategy"),
            (
                "fixed_events(25",
                "malformed checkpoint strategy `fixed_events(25`",
            ),
            ("always)", "malformed checkpoint strategy `always)`"),
            ("42", "unknown checkpoint strategy `42`"),
            ("@always", "unknown checkpoint strategy `@always`"),
        ] {
            let message = parse(text).unwrap_err();
            assert_eq!(message.split(';').next(), Some(start), "{text}");
            assert!(message.contains(EXPECTED), "{message}");
        }
    }

    #[test]
    fn errors_keep_the_text() {
        let error = Strategy::parse("fixed_events").unwrap_err();
        assert_eq!(error.text(), "fixed_events");
    }
}
