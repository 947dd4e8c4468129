//! `#[checkpoint(strategy = "...")]`, parsed at compile time by the grammar the runtime also
//! parses overrides with (the `krescent-strategy` crate); every error lands on the literal.

use syn::LitStr;

pub(crate) use krescent_strategy::Strategy;

/// Parses the strategy written in `lit`; an error is spanned at `lit`.
pub(crate) fn parse(lit: &LitStr) -> syn::Result<Strategy> {
    Strategy::parse(&lit.value()).map_err(|e| syn::Error::new(lit.span(), e))
}
