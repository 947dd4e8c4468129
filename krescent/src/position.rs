//! Positions in the global event order.

use std::fmt;
use std::str::FromStr;

/// The place of an event in a store's global order.
///
/// Positions start at 1 for the first event; [`Position::START`] (0) is "before every event" and is
/// where a model without a checkpoint begins. A position encodes to text as its decimal number, which
/// is how checkpoints store it; with serde, as the number.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Position(u64);

impl Position {
    /// Before the first event.
    pub const START: Position = Position(0);

    /// The position with the given number.
    #[must_use]
    pub const fn new(value: u64) -> Self {
        Position(value)
    }

    /// The position's number.
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The position right after this one.
    #[must_use]
    pub const fn next(self) -> Self {
        Position(self.0 + 1)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A text that is not a position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed position `{text}`: expected a non-negative decimal integer")]
pub struct PositionParseError {
    /// The text that failed to parse.
    pub text: String,
}

impl FromStr for Position {
    type Err = PositionParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let well_formed = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
        well_formed
            .then(|| text.parse().ok())
            .flatten()
            .map(Position)
            .ok_or_else(|| PositionParseError {
                text: text.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        for n in [0, 1, 42, u64::MAX] {
            let p = Position::new(n);
            assert_eq!(p.to_string().parse::<Position>(), Ok(p));
        }
    }

    #[test]
    fn rejects_malformed_text() {
        for text in ["", "-1", "+1", "1.0", " 1", "x", "18446744073709551616"] {
            assert_eq!(
                text.parse::<Position>(),
                Err(PositionParseError { text: text.into() }),
                "{text}"
            );
        }
    }
}
