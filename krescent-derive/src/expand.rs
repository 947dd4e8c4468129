//! Code generation: one module per macro.

mod event;
mod handlers;
mod model;

pub(crate) use event::derive as derive_event;
pub(crate) use handlers::attribute as handlers;
pub(crate) use model::derive as derive_model;

use proc_macro2::{Span, TokenStream, TokenTree};

/// `tokens` with every span set to `span`, so that errors about them land there.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                let mut respanned =
                    proc_macro2::Group::new(group.delimiter(), respan(group.stream(), span));
                respanned.set_span(span);
                token = TokenTree::Group(respanned);
            } else {
                token.set_span(span);
            }
            token
        })
        .collect()
}
