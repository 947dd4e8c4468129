//! The error policy grammar: what a model does when a handler fails on an event.
//!
//! `stop` | `park` | `park(unordered)` | `retry(N)` | `retry(N) | stop` | `retry(N) | park` |
//! `retry(N) | park(unordered)`, whitespace ignored between the parts. `N` is a whole number
//! from 1 to 100 (`_` may separate digits): the attempts of the event, the first included.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

/// The policies, as messages list them.
pub const EXPECTED_POLICIES: &str =
    "`stop`, `retry(N)`, `park`, `park(unordered)`, `retry(N) | park`";

/// The most attempts `retry(N)` may ask for.
const MAX_ATTEMPTS: u32 = 100;

/// What a model does once a handler failed on an event (not transiently: a transient failure
/// restarts the model as its restart policy says).
///
/// ```
/// use krescent_strategy::{ErrorPolicy, Then};
///
/// let policy = ErrorPolicy::parse("retry(3) | park")?;
/// assert_eq!(policy.attempts(), 3);
/// assert_eq!(policy.then(), Then::Park { ordered: true });
/// assert_eq!(policy.to_string(), "retry(3) | park");
/// assert_eq!(ErrorPolicy::parse("stop")?, ErrorPolicy::default());
///
/// let mistake = ErrorPolicy::parse("skip").unwrap_err();
/// assert!(mistake.to_string().starts_with("unknown error policy `skip`; expected one of"));
/// # Ok::<(), krescent_strategy::ErrorPolicyError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ErrorPolicy {
    /// Attempts of the event before `then`, the first included; `None`: one.
    retries: Option<NonZeroU32>,
    then: Then,
}

/// What happens once an event's attempts are spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Then {
    /// The model stops with the handler's error (the default).
    #[default]
    Stop,
    /// The event is parked and the model goes on.
    Park {
        /// While a stream has a parked event, its later events are parked behind it (`park`);
        /// `false` for `park(unordered)`: only the failed events are parked.
        ordered: bool,
    },
}

impl ErrorPolicy {
    /// `stop`: today's behaviour, the default.
    pub const STOP: ErrorPolicy = ErrorPolicy {
        retries: None,
        then: Then::Stop,
    };

    /// Parses a policy as `#[model(on_error = "...")]` writes it.
    ///
    /// # Errors
    /// [`ErrorPolicyError`] naming the mistake.
    pub fn parse(text: &str) -> Result<ErrorPolicy, ErrorPolicyError> {
        let error = |message: String| ErrorPolicyError {
            text: text.to_owned(),
            message,
        };
        let parts: Vec<&str> = text.split('|').map(str::trim).collect();
        let (retry, last) = match parts.as_slice() {
            [one] => (None, *one),
            [retry, last] => (Some(*retry), *last),
            _ => {
                return Err(error(format!(
                    "malformed error policy `{text}`; expected one of {EXPECTED_POLICIES}"
                )))
            }
        };
        let retries = match retry {
            None => None,
            Some(retry) => Some(attempts(retry).ok_or_else(|| {
                error(format!(
                    "`{retry}` is not `retry(N)` with N from 1 to {MAX_ATTEMPTS}; expected one of {EXPECTED_POLICIES}"
                ))
            })?),
        };
        let compact: String = last.chars().filter(|c| !c.is_whitespace()).collect();
        let (retries, then) = match compact.as_str() {
            "stop" => (retries, Then::Stop),
            "park" => (retries, Then::Park { ordered: true }),
            "park(unordered)" => (retries, Then::Park { ordered: false }),
            "" => {
                return Err(error(format!(
                    "missing error policy; expected one of {EXPECTED_POLICIES}"
                )))
            }
            other if retries.is_none() && other.starts_with("retry") => match attempts(other) {
                Some(n) => (Some(n), Then::Stop),
                None => {
                    return Err(error(format!(
                        "`{other}` is not `retry(N)` with N from 1 to {MAX_ATTEMPTS}"
                    )))
                }
            },
            other => {
                return Err(error(format!(
                    "unknown error policy `{other}`; expected one of {EXPECTED_POLICIES}"
                )))
            }
        };
        Ok(ErrorPolicy { retries, then })
    }

    /// How many times an event is handled before [`then`](Self::then), the first included.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.retries.map_or(1, NonZeroU32::get)
    }

    /// What happens once the attempts are spent.
    #[must_use]
    pub fn then(&self) -> Then {
        self.then
    }

    /// Whether failed events are parked.
    #[must_use]
    pub fn parks(&self) -> bool {
        matches!(self.then, Then::Park { .. })
    }
}

/// `retry(N)`'s N, within 1 ..= [`MAX_ATTEMPTS`].
fn attempts(text: &str) -> Option<NonZeroU32> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let inside = compact.strip_prefix("retry(")?.strip_suffix(')')?;
    if inside.starts_with('_') || inside.ends_with('_') {
        return None;
    }
    let digits: String = inside.chars().filter(|&c| c != '_').collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = digits.parse().ok()?;
    NonZeroU32::new(n).filter(|n| n.get() <= MAX_ATTEMPTS)
}

impl fmt::Display for ErrorPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let then = match self.then {
            Then::Stop => "stop",
            Then::Park { ordered: true } => "park",
            Then::Park { ordered: false } => "park(unordered)",
        };
        match (self.retries, self.then) {
            (Some(n), Then::Stop) => write!(f, "retry({n})"),
            (Some(n), _) => write!(f, "retry({n}) | {then}"),
            (None, _) => f.write_str(then),
        }
    }
}

impl FromStr for ErrorPolicy {
    type Err = ErrorPolicyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ErrorPolicy::parse(text)
    }
}

/// An error policy string that does not parse: the string and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorPolicyError {
    text: String,
    message: String,
}

impl ErrorPolicyError {
    /// The string that was parsed.
    #[must_use]
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for ErrorPolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ErrorPolicyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_print_back() {
        for (text, shown) in [
            ("stop", "stop"),
            ("park", "park"),
            (" park ( unordered ) ", "park(unordered)"),
            ("retry(3)", "retry(3)"),
            ("retry(3) | stop", "retry(3)"),
            ("retry(1_0)|park", "retry(10) | park"),
            ("retry(2) | park(unordered)", "retry(2) | park(unordered)"),
        ] {
            let policy = ErrorPolicy::parse(text).expect(text);
            assert_eq!(policy.to_string(), shown);
            assert_eq!(ErrorPolicy::parse(shown), Ok(policy));
        }
    }

    #[test]
    fn mistakes_are_named() {
        for (text, message) in [
            ("skip", "unknown error policy `skip`; expected one of"),
            ("", "missing error policy"),
            (
                "retry(0)",
                "`retry(0)` is not `retry(N)` with N from 1 to 100",
            ),
            ("retry(101) | park", "`retry(101)` is not `retry(N)`"),
            ("retry(x)", "`retry(x)` is not"),
            ("park | retry(2)", "`park` is not `retry(N)`"),
            ("retry(2) | retry(3)", "unknown error policy `retry(3)`"),
            ("stop | park | stop", "malformed error policy"),
        ] {
            let error = ErrorPolicy::parse(text).unwrap_err();
            assert!(error.to_string().starts_with(message), "{text}: {error}");
        }
    }
}
