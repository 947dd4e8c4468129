//! Attributes turned into typed values: `#[event]`, `#[model]`, `#[checkpoint]` and the
//! arguments of `#[handlers]`.
//!
//! Each key has one commented branch. A mistake is recorded in the [`Ctxt`] and parsing goes on
//! with the next key, so that every mistake of an item is reported in one build.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::{Attribute, Expr, Lit, LitStr, Path, Token};

use crate::ctxt::Ctxt;
use crate::strategy::{self, Strategy};
use crate::upcast::{self, Upcast};

/// `#[event(...)]` on an event type.
pub(crate) struct Event {
    /// `name = "book.added"`: the recorded type name.
    pub(crate) name: String,
    /// `revision = N`: the payload revision, 1 unless given.
    pub(crate) revision: u32,
    /// `crate = "path"`: where the runtime crate is.
    pub(crate) krate: Path,
    /// `upcast(1 = BookAddedV1, 2 = json(path))`: the older revisions and their hops.
    pub(crate) upcast: Option<Upcast>,
    /// `old_names("books.added", ...)`: names the type was recorded under before.
    pub(crate) old_names: Vec<LitStr>,
    /// `compatible_since = N`: the revision from which bumps keep checkpoints.
    pub(crate) compatible_since: Option<(u32, syn::LitInt)>,
}

/// `#[model(...)]` and `#[checkpoint(...)]` on a model struct.
pub(crate) struct Model {
    /// `name = "books.available"`: the model's name and checkpoint namespace.
    pub(crate) name: String,
    /// `version = N`: the model's version, 1 unless given.
    pub(crate) version: u32,
    /// `crate = "path"`: where the runtime crate is.
    pub(crate) krate: Path,
    /// `exclusive`: one instance at a time runs the model, holding its lease.
    pub(crate) exclusive: bool,
    /// `segments = N`: the model runs as N segments, 1 unless given.
    pub(crate) segments: u32,
    /// `on_error = "retry(3) | park"`: what a failed handler does, as the runtime prints the
    /// policy; `None`: `stop`.
    pub(crate) on_error: Option<String>,
    /// `#[checkpoint(...)]`, when the model checkpoints.
    pub(crate) checkpoint: Option<Checkpointing>,
}

/// `#[checkpoint(strategy = "...", storage = "...", on_invalid = "...")]` on a model struct.
pub(crate) struct Checkpointing {
    /// When checkpoints are taken.
    pub(crate) strategy: Strategy,
    /// The storage's name; the literal, so that a feature guard can point at it.
    pub(crate) storage: LitStr,
    /// What an unusable checkpoint does.
    pub(crate) on_invalid: OnInvalid,
    /// `compact_at = "N%"`: a new base once the deltas exceed N % of the base; `None`: the
    /// runtime's default.
    pub(crate) compact_at: Option<u32>,
}

/// `on_invalid = "rebuild" | "fail"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnInvalid {
    /// Replay the whole stream (the default).
    Rebuild,
    /// Stop with an error.
    Fail,
}

/// `#[checkpoint]`, `#[checkpoint(key = "...")]` or `#[checkpoint(support)]` on a model field.
pub(crate) struct FieldCheckpoint {
    /// The bucket key: the field's name unless given.
    pub(crate) key: String,
    /// Where the key comes from (the `key` literal, or the field's name), for errors.
    pub(crate) key_span: Span,
    /// Whether the field writes itself through its own `CheckpointSupport`.
    pub(crate) support: bool,
    /// `incremental`: a change-tracked collection whose checkpoints write what changed; where
    /// the key was written, for errors.
    pub(crate) incremental: Option<Span>,
}

/// The arguments of `#[handlers(...)]`.
pub(crate) struct Handlers {
    /// `crate = "path"`: where the runtime crate is.
    pub(crate) krate: Path,
}

/// A key's value while an attribute is parsed: recorded once, a second time is a mistake.
struct Slot<'c, T> {
    cx: &'c Ctxt,
    attribute: &'static str,
    key: &'static str,
    value: Option<T>,
    /// Whether the key was written at all, even with a wrong value: then it is not missing.
    given: bool,
}

impl<'c, T> Slot<'c, T> {
    fn new(cx: &'c Ctxt, attribute: &'static str, key: &'static str) -> Self {
        Slot {
            cx,
            attribute,
            key,
            value: None,
            given: false,
        }
    }

    /// Records the value of the key at `path`, or the mistake of giving it twice.
    fn set(&mut self, path: &Path, value: syn::Result<T>) {
        let given = std::mem::replace(&mut self.given, true);
        match value {
            Ok(_) | Err(_) if given => {
                self.cx.error_spanned_by(
                    path,
                    format!("duplicate `{}` key `{}`", self.attribute, self.key),
                );
            }
            Ok(value) => self.value = Some(value),
            Err(error) => self.cx.syn_error(error),
        }
    }
}

/// The runtime crate's path when no `crate = "..."` says otherwise.
fn default_krate() -> Path {
    syn::parse_quote!(::krescent)
}

/// Reports a missing `name` of the `#[attribute]` on `ident`: at the type when the attribute
/// is absent, at the attribute when it lacks the key; `example` is a name to show.
fn require_name(
    cx: &Ctxt,
    ident: &syn::Ident,
    attrs: &[Attribute],
    attribute: &str,
    named: bool,
    example: &str,
) {
    if named {
        return;
    }
    match attrs.iter().find(|a| a.path().is_ident(attribute)) {
        None => cx.error_spanned_by(
            ident,
            format!("missing `#[{attribute}(name = \"...\")]` on `{ident}`, as in `#[{attribute}(name = \"{example}\")]`"),
        ),
        Some(attr) => cx.error_spanned_by(
            attr,
            format!("missing `name` in `#[{attribute}]`, as in `#[{attribute}(name = \"{example}\")]`"),
        ),
    }
}

/// Parses `#[event(...)]` of the type `ident`.
pub(crate) fn event(cx: &Ctxt, ident: &syn::Ident, attrs: &[Attribute]) -> Event {
    let mut name = Slot::new(cx, "#[event]", "name");
    let mut revision = Slot::new(cx, "#[event]", "revision");
    let mut krate = Slot::new(cx, "#[event]", "crate");
    let mut upcasts = Slot::new(cx, "#[event]", "upcast");
    let mut old_names = Slot::new(cx, "#[event]", "old_names");
    let mut compatible_since = Slot::new(cx, "#[event]", "compatible_since");
    let mut seen = false;
    for attr in attrs.iter().filter(|a| a.path().is_ident("event")) {
        seen = true;
        let parsed = attr.parse_nested_meta(|meta| {
            // `name = "book.added"`: required, not empty.
            if meta.path.is_ident("name") {
                name.set(
                    &meta.path,
                    string(&meta).and_then(|s| not_empty(&s, "an event name")),
                );
            // `revision = N`: from 1.
            } else if meta.path.is_ident("revision") {
                let value = integer(&meta).and_then(|(n, lit)| match n {
                    0 => Err(syn::Error::new_spanned(lit, "event revisions start at 1")),
                    n => Ok((n, lit)),
                });
                revision.set(&meta.path, value);
            // `crate = "path"`: a renamed runtime crate.
            } else if meta.path.is_ident("crate") {
                krate.set(&meta.path, crate_path(&meta));
            // `upcast(1 = BookAddedV1, 2 = json(path))`: the hops from the older revisions;
            // checked against `revision` in `check::event`.
            } else if meta.path.is_ident("upcast") {
                let span = syn::spanned::Spanned::span(&meta.path);
                upcasts.set(&meta.path, upcast::parse(span, meta.input));
            // `old_names("books.added", ...)`: names recorded before a rename, not empty.
            } else if meta.path.is_ident("old_names") {
                let names = (|| {
                    let content;
                    syn::parenthesized!(content in meta.input);
                    let names = syn::punctuated::Punctuated::<LitStr, Token![,]>::parse_terminated(
                        &content,
                    )?;
                    names
                        .into_iter()
                        .map(|n| not_empty(&n, "an old event name"))
                        .collect::<syn::Result<Vec<_>>>()
                })();
                old_names.set(&meta.path, names);
            // `compatible_since = N`: the revision from which bumps keep checkpoints.
            } else if meta.path.is_ident("compatible_since") {
                compatible_since.set(&meta.path, integer(&meta));
            } else {
                unknown(
                    cx,
                    &meta,
                    "#[event]",
                    "`name`, `revision`, `upcast`, `old_names`, `compatible_since`, `crate`",
                )?;
            }
            Ok(())
        });
        parsed.unwrap_or_else(|e| cx.syn_error(e));
    }
    require_name(cx, ident, attrs, "event", seen && name.given, "book.added");
    let revision = revision.value.map_or(1, |(n, _): (u32, syn::LitInt)| n);
    Event {
        name: name.value.map(|s| s.value()).unwrap_or_default(),
        revision,
        krate: krate.value.unwrap_or_else(default_krate),
        upcast: upcasts.value,
        old_names: old_names.value.unwrap_or_default(),
        compatible_since: compatible_since.value,
    }
}

/// Parses `#[model(...)]` and `#[checkpoint(...)]` of the model struct `ident`.
pub(crate) fn model(cx: &Ctxt, ident: &syn::Ident, attrs: &[Attribute]) -> Model {
    let mut name = Slot::new(cx, "#[model]", "name");
    let mut version = Slot::new(cx, "#[model]", "version");
    let mut krate = Slot::new(cx, "#[model]", "crate");
    let mut exclusive = Slot::new(cx, "#[model]", "exclusive");
    let mut segments = Slot::new(cx, "#[model]", "segments");
    let mut on_error = Slot::new(cx, "#[model]", "on_error");
    let mut seen = false;
    for attr in attrs.iter().filter(|a| a.path().is_ident("model")) {
        seen = true;
        let parsed = attr.parse_nested_meta(|meta| {
            // `name = "books.available"`: required, not empty.
            if meta.path.is_ident("name") {
                name.set(
                    &meta.path,
                    string(&meta).and_then(|s| not_empty(&s, "a model name")),
                );
            // `version = N`: the model's version.
            } else if meta.path.is_ident("version") {
                version.set(&meta.path, integer(&meta).map(|(n, _)| n));
            // `exclusive`: a flag, no value; one instance at a time runs the model.
            } else if meta.path.is_ident("exclusive") {
                exclusive.set(&meta.path, flag(&meta, "exclusive"));
            // `segments = N`: 1 to 1024 segments, by a stable hash of the stream id.
            } else if meta.path.is_ident("segments") {
                segments.set(&meta.path, integer(&meta).and_then(segment_count));
            // `on_error = "retry(3) | park"`: parsed now by the runtime's grammar, spanned at
            // the literal.
            } else if meta.path.is_ident("on_error") {
                on_error.set(
                    &meta.path,
                    string(&meta).and_then(|lit| {
                        krescent_strategy::ErrorPolicy::parse(&lit.value())
                            .map(|policy| policy.to_string())
                            .map_err(|e| syn::Error::new(lit.span(), e))
                    }),
                );
            // `crate = "path"`: a renamed runtime crate.
            } else if meta.path.is_ident("crate") {
                krate.set(&meta.path, crate_path(&meta));
            } else {
                unknown(
                    cx,
                    &meta,
                    "#[model]",
                    "`name`, `version`, `exclusive`, `segments`, `on_error`, `crate`",
                )?;
            }
            Ok(())
        });
        parsed.unwrap_or_else(|e| cx.syn_error(e));
    }
    require_name(
        cx,
        ident,
        attrs,
        "model",
        seen && name.given,
        "books.available",
    );
    let checkpoint = checkpointing(cx, attrs);
    let declared = attrs.iter().any(|a| a.path().is_ident("checkpoint"));
    if let (Some((_, lit)), false) = (&segments.value, declared) {
        cx.error_spanned_by(
            lit,
            "`segments` needs `#[checkpoint(strategy = ..., storage = ...)]`: each segment resumes from a checkpoint of its own",
        );
    }
    Model {
        name: name.value.map(|s| s.value()).unwrap_or_default(),
        version: version.value.unwrap_or(1),
        krate: krate.value.unwrap_or_else(default_krate),
        exclusive: exclusive.value.is_some(),
        segments: segments.value.map_or(1, |(n, _)| n),
        on_error: on_error.value,
        checkpoint,
    }
}

/// The most segments a model may have: each is a checkpoint, a lease and a reader of the log.
const MAX_SEGMENTS: u32 = 1024;

/// `segments = N` within 1 ..= [`MAX_SEGMENTS`].
fn segment_count((n, lit): (u32, syn::LitInt)) -> syn::Result<(u32, syn::LitInt)> {
    if (1..=MAX_SEGMENTS).contains(&n) {
        Ok((n, lit))
    } else {
        Err(syn::Error::new_spanned(
            &lit,
            format!("`segments` is 1 to {MAX_SEGMENTS}, not {n}"),
        ))
    }
}

/// Parses `#[checkpoint(strategy = "...", storage = "...", on_invalid = "...")]` on a struct.
fn checkpointing(cx: &Ctxt, attrs: &[Attribute]) -> Option<Checkpointing> {
    let mut strategy = Slot::new(cx, "#[checkpoint]", "strategy");
    let mut storage = Slot::new(cx, "#[checkpoint]", "storage");
    let mut on_invalid = Slot::new(cx, "#[checkpoint]", "on_invalid");
    let mut compact_at = Slot::new(cx, "#[checkpoint]", "compact_at");
    let mut first = None;
    for attr in attrs.iter().filter(|a| a.path().is_ident("checkpoint")) {
        if first.is_some() {
            cx.error_spanned_by(
                attr,
                "duplicate `#[checkpoint]` attribute; give every key in one",
            );
            continue;
        }
        first = Some(attr);
        if let syn::Meta::Path(_) = attr.meta {
            cx.error_spanned_by(
                attr,
                "`#[checkpoint]` on a model says when and where to checkpoint, as in `#[checkpoint(strategy = \"fixed_events(100)\", storage = \"memory\")]`",
            );
            return None;
        }
        let parsed = attr.parse_nested_meta(|meta| {
            // `strategy = "fixed_events(25) | fixed_time(5s)"`: parsed now, spanned at the literal.
            if meta.path.is_ident("strategy") {
                strategy.set(
                    &meta.path,
                    string(&meta).and_then(|lit| strategy::parse(&lit)),
                );
            // `storage = "postgres"`: a storage name, resolved when the model starts.
            } else if meta.path.is_ident("storage") {
                storage.set(
                    &meta.path,
                    string(&meta).and_then(|s| not_empty(&s, "a storage name")),
                );
            // `on_invalid = "rebuild" | "fail"`: what an unusable checkpoint does.
            } else if meta.path.is_ident("on_invalid") {
                let value = string(&meta).and_then(|lit| match lit.value().as_str() {
                    "rebuild" => Ok(OnInvalid::Rebuild),
                    "fail" => Ok(OnInvalid::Fail),
                    other => Err(syn::Error::new(
                        lit.span(),
                        format!(
                            "unknown `on_invalid` value `{other}`; expected `rebuild` or `fail`"
                        ),
                    )),
                });
                on_invalid.set(&meta.path, value);
            // `compact_at = "50%"`: when incremental fields write a new base.
            } else if meta.path.is_ident("compact_at") {
                let value = string(&meta).and_then(|lit| {
                    let text = lit.value();
                    text.strip_suffix('%')
                        .and_then(|n| n.trim().parse::<u32>().ok())
                        .filter(|n| (1..=10_000).contains(n))
                        .ok_or_else(|| {
                            syn::Error::new(
                                lit.span(),
                                format!("`compact_at` is a percentage from `1%` to `10000%`, as in `\"50%\"`, not `{text}`"),
                            )
                        })
                });
                compact_at.set(&meta.path, value);
            } else {
                unknown(
                    cx,
                    &meta,
                    "#[checkpoint]",
                    "`strategy`, `storage`, `on_invalid`, `compact_at`",
                )?;
            }
            Ok(())
        });
        parsed.unwrap_or_else(|e| cx.syn_error(e));
    }
    let attr = first?;
    let missing = |key: &str, example: &str| {
        cx.error_spanned_by(
            attr,
            format!("missing `{key}` in `#[checkpoint]`, as in `{key} = \"{example}\"`"),
        );
    };
    if !strategy.given {
        missing("strategy", "fixed_events(100)");
    }
    if !storage.given {
        missing("storage", "memory");
    }
    Some(Checkpointing {
        strategy: strategy.value?,
        storage: storage.value?,
        on_invalid: on_invalid.value.unwrap_or(OnInvalid::Rebuild),
        compact_at: compact_at.value,
    })
}

/// Parses the `#[checkpoint]` attribute of the field named `field`, if it has one.
pub(crate) fn field(cx: &Ctxt, field: &syn::Ident, attrs: &[Attribute]) -> Option<FieldCheckpoint> {
    let mut key = Slot::new(cx, "#[checkpoint]", "key");
    let mut support = Slot::new(cx, "#[checkpoint]", "support");
    let mut incremental = Slot::new(cx, "#[checkpoint]", "incremental");
    let mut first = None;
    for attr in attrs.iter().filter(|a| a.path().is_ident("checkpoint")) {
        if first.is_some() {
            cx.error_spanned_by(
                attr,
                "duplicate `#[checkpoint]` attribute; give every key in one",
            );
            continue;
        }
        first = Some(attr);
        match &attr.meta {
            // `#[checkpoint]`: serialized under the field's name.
            syn::Meta::Path(_) => {}
            syn::Meta::NameValue(_) => {
                cx.error_spanned_by(attr, "expected `#[checkpoint]`, `#[checkpoint(key = \"...\")]` or `#[checkpoint(support)]`");
            }
            syn::Meta::List(_) => {
                let parsed = attr.parse_nested_meta(|meta| {
                    // `key = "..."`: the bucket key instead of the field's name.
                    if meta.path.is_ident("key") {
                        key.set(
                            &meta.path,
                            string(&meta).and_then(|s| not_empty(&s, "a checkpoint key")),
                        );
                    // `support`: the field has its own `CheckpointSupport`, written as a nested bucket.
                    } else if meta.path.is_ident("support") {
                        if !meta.input.is_empty() && !meta.input.peek(Token![,]) {
                            skip_value(&meta)?;
                            cx.error_spanned_by(
                                &meta.path,
                                "`support` takes no value; write `#[checkpoint(support)]`",
                            );
                        }
                        support.set(&meta.path, Ok(()));
                    // `incremental`: a change-tracked collection (`TrackedMap`, `TrackedSet`),
                    // checkpointed as a base and deltas.
                    } else if meta.path.is_ident("incremental") {
                        if !meta.input.is_empty() && !meta.input.peek(Token![,]) {
                            skip_value(&meta)?;
                            cx.error_spanned_by(
                                &meta.path,
                                "`incremental` takes no value; write `#[checkpoint(incremental)]`",
                            );
                        }
                        incremental.set(&meta.path, Ok(syn::spanned::Spanned::span(&meta.path)));
                    } else {
                        unknown(
                            cx,
                            &meta,
                            "#[checkpoint]",
                            "`key`, `support`, `incremental`",
                        )?;
                    }
                    Ok(())
                });
                parsed.unwrap_or_else(|e| cx.syn_error(e));
            }
        }
    }
    first?;
    let (key, key_span) = match key.value {
        Some(lit) => (lit.value(), lit.span()),
        None => (field.unraw().to_string(), field.span()),
    };
    Some(FieldCheckpoint {
        key,
        key_span,
        support: support.value.is_some(),
        incremental: incremental.value,
    })
}

/// Parses the arguments of `#[handlers(...)]`.
pub(crate) fn handlers(cx: &Ctxt, args: TokenStream) -> Handlers {
    let mut krate = Slot::new(cx, "#[handlers]", "crate");
    let parser = syn::meta::parser(|meta| {
        // `crate = "path"`: a renamed runtime crate.
        if meta.path.is_ident("crate") {
            krate.set(&meta.path, crate_path(&meta));
        } else {
            unknown(cx, &meta, "#[handlers]", "`crate`")?;
        }
        Ok(())
    });
    syn::parse::Parser::parse2(parser, args).unwrap_or_else(|e| cx.syn_error(e));
    Handlers {
        krate: krate.value.unwrap_or_else(default_krate),
    }
}

/// Records an unknown key, naming the valid ones, and skips its value.
fn unknown(cx: &Ctxt, meta: &ParseNestedMeta, attribute: &str, expected: &str) -> syn::Result<()> {
    let key = meta.path.to_token_stream().to_string().replace(' ', "");
    let expected = if expected.contains(',') {
        format!("one of {expected}")
    } else {
        expected.to_owned()
    };
    cx.error_spanned_by(
        &meta.path,
        format!("unknown `{attribute}` key `{key}`; expected {expected}"),
    );
    skip_value(meta)
}

/// A key that takes no value: an error at `= value` or `(...)` after it.
fn flag(meta: &ParseNestedMeta, key: &str) -> syn::Result<()> {
    if meta.input.is_empty() || meta.input.peek(syn::Token![,]) {
        return Ok(());
    }
    let error = meta.error(format!("`{key}` takes no value; write `#[model({key})]`"));
    skip_value(meta)?;
    Err(error)
}

/// Skips `= value` or `(...)` after a key.
fn skip_value(meta: &ParseNestedMeta) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        content.parse::<TokenStream>()?;
    }
    Ok(())
}

/// The value of `key = value`, seen through the invisible groups `macro_rules!` wraps around a
/// `$value:literal` or `$value:expr` it passes on.
fn value(meta: &ParseNestedMeta) -> syn::Result<Expr> {
    let mut expr = meta.value()?.parse::<Expr>()?;
    while let Expr::Group(group) = expr {
        expr = *group.expr;
    }
    Ok(expr)
}

/// `key = "string"`.
fn string(meta: &ParseNestedMeta) -> syn::Result<LitStr> {
    let key = meta.path.to_token_stream().to_string();
    match value(meta)? {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Str(lit), ..
        }) => Ok(lit),
        other => Err(syn::Error::new_spanned(
            other,
            format!("expected a string: `{key} = \"...\"`"),
        )),
    }
}

/// `key = 1`, as a `u32`.
fn integer(meta: &ParseNestedMeta) -> syn::Result<(u32, syn::LitInt)> {
    let key = meta.path.to_token_stream().to_string();
    match value(meta)? {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Int(lit), ..
        }) => {
            let n = lit
                .base10_parse()
                .map_err(|_| syn::Error::new_spanned(&lit, format!("`{key}` is a `u32`")))?;
            Ok((n, lit))
        }
        other => Err(syn::Error::new_spanned(
            other,
            format!("expected a whole number: `{key} = 1`"),
        )),
    }
}

/// `crate = "path"`, as a path.
fn crate_path(meta: &ParseNestedMeta) -> syn::Result<Path> {
    let lit = string(meta)?;
    lit.parse::<Path>().map_err(|_| {
        syn::Error::new(
            lit.span(),
            format!(
                "expected a path to the `krescent` crate, found `{}`",
                lit.value()
            ),
        )
    })
}

/// `lit`, unless it is empty.
fn not_empty(lit: &LitStr, what: &str) -> syn::Result<LitStr> {
    if lit.value().trim().is_empty() {
        Err(syn::Error::new(
            lit.span(),
            format!("{what} cannot be empty"),
        ))
    } else {
        Ok(lit.clone())
    }
}
