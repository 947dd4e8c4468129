//! The hops of `#[event(upcast(1 = BookAddedV1, 2 = json(v3_from_v2)))]`: one per older
//! revision, each a struct that reads that revision's payloads and converts into the next
//! revision's, or a function over the JSON.

use proc_macro2::Span;
use quote::ToTokens;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{LitInt, Path, Token, Type};

/// `upcast(...)`: where it was written and its hops, in the order written.
pub(crate) struct Upcast {
    /// The `upcast` key, where a rule about the whole list is reported.
    pub(crate) span: Span,
    pub(crate) hops: Vec<Hop>,
}

/// `N = Type` or `N = json(path)`.
pub(crate) struct Hop {
    /// The revision the hop starts from.
    pub(crate) revision: u32,
    /// Its literal, where a mistake about it is reported.
    pub(crate) lit: LitInt,
    pub(crate) kind: HopKind,
}

/// What a hop is.
pub(crate) enum HopKind {
    /// A struct that reads the revision's payloads and converts into the next revision's
    /// struct by `From` or `TryFrom`.
    Struct(Type),
    /// A `fn(serde_json::Value) -> Result<serde_json::Value, E>` turning the revision's JSON
    /// into the next revision's.
    Json(Path),
}

impl Parse for Hop {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let lit: LitInt = input.parse().map_err(|e| {
            syn::Error::new(
                e.span(),
                "expected a hop: the older revision, `=`, and its struct, as in `1 = BookAddedV1`",
            )
        })?;
        let revision = lit
            .base10_parse::<u32>()
            .map_err(|_| syn::Error::new_spanned(&lit, "a hop's revision is a `u32`"))?;
        input.parse::<Token![=]>()?;
        let is_json = input
            .fork()
            .parse::<syn::Ident>()
            .is_ok_and(|i| i == "json")
            && input.peek2(syn::token::Paren);
        let kind = if is_json {
            input.parse::<syn::Ident>()?;
            let content;
            syn::parenthesized!(content in input);
            HopKind::Json(content.parse()?)
        } else {
            HopKind::Struct(input.parse()?)
        };
        Ok(Hop {
            revision,
            lit,
            kind,
        })
    }
}

impl Hop {
    /// The hop as written, without spaces: `1=BookAddedV1`, `2=json(v3_from_v2)`.
    pub(crate) fn written(&self) -> String {
        let target = match &self.kind {
            HopKind::Struct(ty) => ty.to_token_stream().to_string(),
            HopKind::Json(path) => format!("json({})", path.to_token_stream()),
        };
        format!("{}={}", self.revision, target.replace(' ', ""))
    }
}

/// Parses the parenthesized hops after the `upcast` key.
pub(crate) fn parse(span: Span, input: ParseStream<'_>) -> syn::Result<Upcast> {
    let content;
    syn::parenthesized!(content in input);
    let hops = Punctuated::<Hop, Token![,]>::parse_terminated(&content)?;
    Ok(Upcast {
        span,
        hops: hops.into_iter().collect(),
    })
}
