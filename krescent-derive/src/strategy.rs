//! Checkpoint strategies, parsed at compile time from `#[checkpoint(strategy = "...")]`.
//!
//! The grammar is `strategy ( "|" strategy )*` where a strategy is one of `fixed_events(N)`,
//! `fixed_time(D)`, `always`, `manual`, `on_shutdown` or `never`, and `D` is a whole number with
//! a unit: `ms`, `s`, `m` or `h`. Every error lands on the string literal.

use std::num::NonZeroU32;
use std::str::FromStr;

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt;
use syn::parse::ParseStream;
use syn::{Ident, LitStr, Token};

/// The strategies, as the message for an unknown one lists them.
const EXPECTED: &str =
    "`fixed_events(N)`, `fixed_time(D)`, `always`, `manual`, `on_shutdown`, `never`";

/// The duration units, as the message for an unknown one lists them.
const UNITS: &str = "`ms`, `s`, `m`, `h`";

/// When to checkpoint; mirrors the runtime's `krescent::checkpoint::Strategy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Strategy {
    /// `fixed_events(N)`.
    FixedEvents(NonZeroU32),
    /// `fixed_time(D)`, in milliseconds.
    FixedTime { millis: u64 },
    /// `always`.
    Always,
    /// `manual`.
    Manual,
    /// `on_shutdown`.
    OnShutdown,
    /// `never`.
    Never,
    /// `a | b | …`.
    Any(Vec<Strategy>),
}

impl Strategy {
    /// Parses the strategy written in `lit`; every error is spanned at `lit`.
    pub(crate) fn parse(lit: &LitStr) -> syn::Result<Self> {
        // `parse_with` would report a string that is not even Rust tokens as a bare "lex error"
        // somewhere else; say what is wrong, on the literal.
        if TokenStream::from_str(&lit.value()).is_err() {
            return Err(syn::Error::new(
                lit.span(),
                format!("malformed checkpoint strategy `{}`; expected one of {EXPECTED}, joined with `|`", lit.value()),
            ));
        }
        let span = lit.span();
        lit.parse_with(|input: ParseStream| parse_any(input, span))
    }

    /// The name of a leaf strategy, as messages say it.
    fn name(&self) -> &'static str {
        match self {
            Strategy::FixedEvents(_) => "fixed_events",
            Strategy::FixedTime { .. } => "fixed_time",
            Strategy::Always => "always",
            Strategy::Manual => "manual",
            Strategy::OnShutdown => "on_shutdown",
            Strategy::Never => "never",
            Strategy::Any(_) => "|",
        }
    }
}

/// `leaf ( "|" leaf )*`.
fn parse_any(input: ParseStream, span: Span) -> syn::Result<Strategy> {
    let mut all = vec![parse_leaf(input, span)?];
    while !input.is_empty() {
        if input.parse::<Option<Token![|]>>()?.is_none() {
            let rest: TokenStream = input.parse()?;
            return Err(syn::Error::new(
                span,
                format!("unexpected `{rest}` in checkpoint strategy; join strategies with `|`"),
            ));
        }
        all.push(parse_leaf(input, span)?);
    }
    check_combination(&all, span)?;
    Ok(if all.len() == 1 {
        all.remove(0)
    } else {
        Strategy::Any(all)
    })
}

/// One strategy, such as `fixed_events(25)` or `always`.
fn parse_leaf(input: ParseStream, span: Span) -> syn::Result<Strategy> {
    if input.is_empty() || input.peek(Token![|]) {
        return Err(syn::Error::new(
            span,
            format!("missing checkpoint strategy; expected one of {EXPECTED}"),
        ));
    }
    let Ok(name) = input.call(Ident::parse_any) else {
        let rest: TokenStream = input.parse()?;
        return Err(syn::Error::new(
            span,
            format!("unknown checkpoint strategy `{rest}`; expected one of {EXPECTED}"),
        ));
    };
    let strategy = match name.to_string().as_str() {
        // `fixed_events(N)`: every N events, N at least 1.
        "fixed_events" => {
            let argument = parenthesized(input, "fixed_events", "N", span)?;
            let count: syn::LitInt = syn::parse2(argument.clone()).map_err(|_| {
                syn::Error::new(
                    span,
                    format!("`fixed_events` takes a whole number of events, found `{argument}`"),
                )
            })?;
            if !count.suffix().is_empty() {
                return Err(syn::Error::new(
                    span,
                    format!("`fixed_events` takes a plain count, found `{count}`"),
                ));
            }
            let count: u32 = count.base10_parse().map_err(|_| {
                syn::Error::new(
                    span,
                    format!(
                        "`fixed_events({count})` is too large; the count is at most {}",
                        u32::MAX
                    ),
                )
            })?;
            let count = NonZeroU32::new(count).ok_or_else(|| {
                syn::Error::new(
                    span,
                    "`fixed_events(0)` would never checkpoint; the count starts at 1",
                )
            })?;
            Strategy::FixedEvents(count)
        }
        // `fixed_time(D)`: at the first event D after the last checkpoint.
        "fixed_time" => {
            let argument = parenthesized(input, "fixed_time", "D", span)?;
            Strategy::FixedTime {
                millis: parse_duration(&argument, span)?,
            }
        }
        // The strategies without an argument.
        "always" => Strategy::Always,
        "manual" => Strategy::Manual,
        "on_shutdown" => Strategy::OnShutdown,
        "never" => Strategy::Never,
        unknown => {
            return Err(syn::Error::new(
                span,
                format!("unknown checkpoint strategy `{unknown}`; expected one of {EXPECTED}"),
            ));
        }
    };
    if !matches!(
        strategy,
        Strategy::FixedEvents(_) | Strategy::FixedTime { .. }
    ) && input.peek(syn::token::Paren)
    {
        let content;
        syn::parenthesized!(content in input);
        let argument: TokenStream = content.parse()?;
        return Err(syn::Error::new(
            span,
            format!("`{name}` takes no argument, found `{name}({argument})`"),
        ));
    }
    Ok(strategy)
}

/// The tokens inside the parentheses after `name`, which must be there.
fn parenthesized(
    input: ParseStream,
    name: &str,
    placeholder: &str,
    span: Span,
) -> syn::Result<TokenStream> {
    if !input.peek(syn::token::Paren) {
        return Err(syn::Error::new(
            span,
            format!("`{name}` needs an argument: `{name}({placeholder})`"),
        ));
    }
    let content;
    syn::parenthesized!(content in input);
    let argument: TokenStream = content.parse()?;
    if argument.is_empty() {
        return Err(syn::Error::new(
            span,
            format!("`{name}` needs an argument: `{name}({placeholder})`"),
        ));
    }
    Ok(argument)
}

/// A duration such as `10s` or `500ms`, in milliseconds.
fn parse_duration(argument: &TokenStream, span: Span) -> syn::Result<u64> {
    let invalid = || {
        syn::Error::new(
            span,
            format!("expected a duration such as `10s` or `500ms`, found `{argument}`"),
        )
    };
    let lit: syn::LitInt = syn::parse2(argument.clone()).map_err(|_| invalid())?;
    let millis_per_unit: u64 = match lit.suffix() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => {
            return Err(syn::Error::new(
                span,
                format!("duration `{lit}` needs a unit; expected one of {UNITS}, as in `{lit}s`"),
            ));
        }
        unit => {
            return Err(syn::Error::new(
                span,
                format!("unknown duration unit `{unit}`; expected one of {UNITS}"),
            ))
        }
    };
    let value: u64 = lit.base10_parse().map_err(|_| invalid())?;
    if value == 0 {
        return Err(syn::Error::new(
            span,
            "`fixed_time` needs a duration above zero",
        ));
    }
    value
        .checked_mul(millis_per_unit)
        .ok_or_else(|| syn::Error::new(span, format!("duration `{lit}` is too long")))
}

/// Rules on `a | b`: no strategy twice, and `never` alone.
fn check_combination(all: &[Strategy], span: Span) -> syn::Result<()> {
    if all.len() > 1 && all.contains(&Strategy::Never) {
        return Err(syn::Error::new(
            span,
            "`never` cannot be combined with other strategies",
        ));
    }
    for (i, strategy) in all.iter().enumerate() {
        if all[..i]
            .iter()
            .any(|earlier| earlier.name() == strategy.name())
        {
            return Err(syn::Error::new(
                span,
                format!("checkpoint strategy `{}` is given twice", strategy.name()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Strategy, String> {
        Strategy::parse(&LitStr::new(text, Span::call_site())).map_err(|e| e.to_string())
    }

    fn events(n: u32) -> Strategy {
        Strategy::FixedEvents(NonZeroU32::new(n).unwrap())
    }

    #[test]
    fn parses_every_strategy() {
        assert_eq!(parse("fixed_events(25)"), Ok(events(25)));
        assert_eq!(
            parse("fixed_time(10s)"),
            Ok(Strategy::FixedTime { millis: 10_000 })
        );
        assert_eq!(
            parse("fixed_time(500ms)"),
            Ok(Strategy::FixedTime { millis: 500 })
        );
        assert_eq!(
            parse("fixed_time(5m)"),
            Ok(Strategy::FixedTime { millis: 300_000 })
        );
        assert_eq!(
            parse("fixed_time(1h)"),
            Ok(Strategy::FixedTime { millis: 3_600_000 })
        );
        assert_eq!(parse("always"), Ok(Strategy::Always));
        assert_eq!(parse("manual"), Ok(Strategy::Manual));
        assert_eq!(parse(" on_shutdown "), Ok(Strategy::OnShutdown));
        assert_eq!(parse("never"), Ok(Strategy::Never));
        assert_eq!(
            parse("fixed_events(1000) | fixed_time(5s) | manual"),
            Ok(Strategy::Any(vec![
                events(1000),
                Strategy::FixedTime { millis: 5_000 },
                Strategy::Manual
            ]))
        );
    }

    #[test]
    fn explains_mistakes() {
        let unknown = "unknown checkpoint strategy `fixed_evnts`; expected one of `fixed_events(N)`, `fixed_time(D)`, `always`, `manual`, `on_shutdown`, `never`";
        assert_eq!(parse("fixed_evnts(25)").unwrap_err(), unknown);
        assert_eq!(
            parse("fixed_events(0)").unwrap_err(),
            "`fixed_events(0)` would never checkpoint; the count starts at 1"
        );
        assert_eq!(
            parse("fixed_events").unwrap_err(),
            "`fixed_events` needs an argument: `fixed_events(N)`"
        );
        assert_eq!(
            parse("fixed_events(x)").unwrap_err(),
            "`fixed_events` takes a whole number of events, found `x`"
        );
        assert_eq!(
            parse("fixed_events(99999999999)").unwrap_err(),
            "`fixed_events(99999999999)` is too large; the count is at most 4294967295"
        );
        assert_eq!(
            parse("fixed_time(10sec)").unwrap_err(),
            "unknown duration unit `sec`; expected one of `ms`, `s`, `m`, `h`"
        );
        assert_eq!(
            parse("fixed_time(10)").unwrap_err(),
            "duration `10` needs a unit; expected one of `ms`, `s`, `m`, `h`, as in `10s`"
        );
        assert_eq!(
            parse("fixed_time(0s)").unwrap_err(),
            "`fixed_time` needs a duration above zero"
        );
        assert_eq!(
            parse("fixed_time(1.5s)").unwrap_err(),
            "expected a duration such as `10s` or `500ms`, found `1.5s`"
        );
        assert_eq!(
            parse("always(3)").unwrap_err(),
            "`always` takes no argument, found `always(3)`"
        );
        assert_eq!(
            parse("always manual").unwrap_err(),
            "unexpected `manual` in checkpoint strategy; join strategies with `|`"
        );
        assert_eq!(
            parse("always |").unwrap_err().split(';').next(),
            Some("missing checkpoint strategy")
        );
        assert_eq!(
            parse("").unwrap_err().split(';').next(),
            Some("missing checkpoint strategy")
        );
        assert_eq!(
            parse("never | always").unwrap_err(),
            "`never` cannot be combined with other strategies"
        );
        assert_eq!(
            parse("manual | manual").unwrap_err(),
            "checkpoint strategy `manual` is given twice"
        );
        assert_eq!(
            parse("fixed_events(25").unwrap_err().split(';').next(),
            Some("malformed checkpoint strategy `fixed_events(25`")
        );
        assert_eq!(
            parse("42").unwrap_err().split(';').next(),
            Some("unknown checkpoint strategy `42`")
        );
    }
}
