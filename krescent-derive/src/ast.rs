//! The syn tree of a model, an event or a handler block, borrowed into the shapes the
//! expansion works with. Original tokens are kept for spans.

use proc_macro2::{Delimiter, TokenStream, TokenTree};
use quote::ToTokens;
use syn::{
    Data, DeriveInput, Fields, FnArg, Generics, Ident, ImplItem, ImplItemFn, ItemImpl, Path,
    ReturnType, Type,
};

use crate::attr;
use crate::ctxt::Ctxt;

/// A struct deriving `EventModel`.
pub(crate) struct Container<'a> {
    /// The struct's name.
    pub(crate) ident: &'a Ident,
    /// Its generics, passed through to the impls.
    pub(crate) generics: &'a Generics,
    /// `#[model]` and `#[checkpoint]`.
    pub(crate) attrs: attr::Model,
    /// Every named field, checkpointed or not.
    pub(crate) fields: Vec<Field<'a>>,
}

/// A field of a model.
pub(crate) struct Field<'a> {
    /// The field's name.
    pub(crate) ident: &'a Ident,
    /// The field's type, as written.
    pub(crate) ty: &'a Type,
    /// Its `#[checkpoint]` attribute; `None` leaves the field out of checkpoints.
    pub(crate) checkpoint: Option<attr::FieldCheckpoint>,
}

/// How a checkpointed field is written into the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Any serde type: `put` / `get`.
    Serde,
    /// A field whose type is written `Vec<u8>`: binary, `put_bytes` / `get_bytes`.
    Bytes,
    /// `#[checkpoint(support)]`: its own `CheckpointSupport`, as a nested bucket.
    Support,
    /// `#[checkpoint(incremental)]`: a change-tracked collection, whole or its changes.
    Incremental,
}

impl<'a> Container<'a> {
    /// The model described by `input`; when it is not a struct with named fields the mistake is
    /// recorded and the model has no fields.
    pub(crate) fn from_ast(cx: &Ctxt, input: &'a DeriveInput) -> Self {
        let attrs = attr::model(cx, &input.ident, &input.attrs);
        let ident = &input.ident;
        let fields = match &input.data {
            Data::Struct(data) => match &data.fields {
                Fields::Named(named) => named
                    .named
                    .iter()
                    .map(|f| {
                        let name = f.ident.as_ref().expect("named fields have names");
                        Field {
                            ident: name,
                            ty: &f.ty,
                            checkpoint: attr::field(cx, name, &f.attrs),
                        }
                    })
                    .collect(),
                Fields::Unit => Vec::new(),
                Fields::Unnamed(unnamed) => {
                    cx.error_spanned_by(unnamed, format!("`#[derive(EventModel)]` needs named fields; `{ident}` is a tuple struct"));
                    Vec::new()
                }
            },
            Data::Enum(data) => {
                cx.error_spanned_by(data.enum_token, format!("`#[derive(EventModel)]` needs a struct with named fields; `{ident}` is an enum"));
                Vec::new()
            }
            Data::Union(data) => {
                cx.error_spanned_by(data.union_token, format!("`#[derive(EventModel)]` needs a struct with named fields; `{ident}` is a union"));
                Vec::new()
            }
        };
        Container {
            ident,
            generics: &input.generics,
            attrs,
            fields,
        }
    }

    /// The checkpointed fields with their attribute, in declaration order.
    pub(crate) fn checkpointed(
        &self,
    ) -> impl Iterator<Item = (&Field<'a>, &attr::FieldCheckpoint)> {
        self.fields
            .iter()
            .filter_map(|f| f.checkpoint.as_ref().map(|c| (f, c)))
    }
}

impl Field<'_> {
    /// How the field is written; meaningful for checkpointed fields only.
    pub(crate) fn kind(&self) -> Kind {
        match &self.checkpoint {
            Some(c) if c.support => Kind::Support,
            Some(c) if c.incremental.is_some() => Kind::Incremental,
            _ if is_bytes(self.ty) => Kind::Bytes,
            _ => Kind::Serde,
        }
    }
}

/// Whether `ty` is written `Vec<u8>` (with any path before `Vec`).
fn is_bytes(ty: &Type) -> bool {
    let Type::Path(path) = ty else { return false };
    if path.qself.is_some() {
        return false;
    }
    let Some(last) = path.path.segments.last() else {
        return false;
    };
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return false;
    };
    last.ident == "Vec"
        && args.args.len() == 1
        && matches!(&args.args[0], syn::GenericArgument::Type(Type::Path(u8)) if u8.qself.is_none() && u8.path.is_ident("u8"))
}

/// An `impl` block under `#[handlers]`.
pub(crate) struct HandlerImpl {
    /// The runtime crate.
    pub(crate) krate: Path,
    /// The event handlers, in declaration order.
    pub(crate) handlers: Vec<Handler>,
    /// The `#[on_start]` and `#[on_caught_up]` methods, in declaration order.
    pub(crate) hooks: Vec<Hook>,
    /// The `#[group(...)]` handlers, in declaration order (one is right).
    pub(crate) groups: Vec<GroupHandler>,
}

/// A group handler: `#[group(A, B)] fn name(&mut self, group: Group<'_>) [-> Output]`.
pub(crate) struct GroupHandler {
    /// The method's name.
    pub(crate) method: Ident,
    /// The event types it receives, as listed.
    pub(crate) events: Vec<Type>,
    /// Whether it is `async`.
    pub(crate) asyncness: bool,
    /// Its return type.
    pub(crate) output: ReturnType,
}

/// A handler method: `fn name(&mut self, e: &Event[, meta: &EventMeta]) [-> Output]`, or with
/// the event by value: `e: Event`.
pub(crate) struct Handler {
    /// The method's name.
    pub(crate) method: Ident,
    /// The event type, without the reference.
    pub(crate) event: Type,
    /// Whether it takes the decoded event by value (it is decoded for this handler alone, so
    /// it can move the event's strings into its state instead of cloning them).
    pub(crate) by_value: bool,
    /// Whether it takes `&EventMeta` too.
    pub(crate) meta: bool,
    /// Whether it is `async`.
    pub(crate) asyncness: bool,
    /// Its return type.
    pub(crate) output: ReturnType,
}

/// A lifecycle method: `#[on_start]` or `#[on_caught_up]`.
pub(crate) struct Hook {
    /// Which hook.
    pub(crate) kind: HookKind,
    /// The method's name.
    pub(crate) method: Ident,
    /// The method's parameter type, for spans.
    pub(crate) parameter: Type,
}

/// The lifecycle hooks a method can be marked as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HookKind {
    /// `#[on_start]`: `fn(&mut self, origin: &Origin)`.
    OnStart,
    /// `#[on_caught_up]`: `fn(&mut self, position: Position)`.
    OnCaughtUp,
}

impl HookKind {
    /// The attribute's name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            HookKind::OnStart => "on_start",
            HookKind::OnCaughtUp => "on_caught_up",
        }
    }

    /// The method's parameter, as messages say it.
    fn parameter(self) -> &'static str {
        match self {
            HookKind::OnStart => "origin: &Origin",
            HookKind::OnCaughtUp => "position: Position",
        }
    }
}

impl HandlerImpl {
    /// The handlers and hooks of `item`, from which the hook attributes are removed.
    pub(crate) fn from_ast(cx: &Ctxt, args: attr::Handlers, item: &mut ItemImpl) -> Self {
        let is_trait_impl = item.trait_.is_some();
        if let Some((_, trait_path, _)) = &item.trait_ {
            cx.error_spanned_by(
                trait_path,
                "`#[handlers]` goes on an inherent `impl` block of the model, not on a trait impl",
            );
        }
        let mut handlers = Vec::new();
        let mut hooks = Vec::new();
        let mut groups = Vec::new();
        for method in item.items.iter_mut().filter_map(|i| {
            if let ImplItem::Fn(f) = i {
                Some(f)
            } else {
                None
            }
        }) {
            let group_events = take_group(cx, method);
            let hook_kind = take_hook(cx, method);
            if is_trait_impl {
                continue;
            }
            match (hook_kind, group_events) {
                (Some(kind), None) => hooks.extend(hook(cx, kind, method)),
                (None, Some(events)) => groups.extend(group_handler(cx, method, events)),
                (Some(kind), Some(_)) => cx.error_spanned_by(
                    &method.sig.ident,
                    format!(
                        "a method is either `#[{}]` or a `#[group(...)]` handler, not both",
                        kind.name()
                    ),
                ),
                (None, None) => handlers.extend(handler(cx, method)),
            }
        }
        HandlerImpl {
            krate: args.krate,
            handlers,
            hooks,
            groups,
        }
    }

    /// Every event type the block handles, with the method that handles it, in declaration
    /// order.
    pub(crate) fn events(&self) -> Vec<(&Type, &Ident)> {
        let each = self.handlers.iter().map(|h| (&h.event, &h.method));
        let grouped = self
            .groups
            .iter()
            .flat_map(|g| g.events.iter().map(move |e| (e, &g.method)));
        each.chain(grouped).collect()
    }
}

/// Removes the `#[group(...)]` attribute of `method`; the event types it lists, if it has one.
fn take_group(cx: &Ctxt, method: &mut ImplItemFn) -> Option<Vec<Type>> {
    let mut events = None;
    method.attrs.retain(|attr| {
        if !attr.path().is_ident("group") {
            return true;
        }
        let example = "`#[group(...)]` names the event types its handler receives, as in `#[group(BookAdded, BookLent)]`";
        let listed = match &attr.meta {
            syn::Meta::List(list) => list
                .parse_args_with(
                    syn::punctuated::Punctuated::<Type, syn::Token![,]>::parse_terminated,
                )
                .map(|types| types.into_iter().collect::<Vec<_>>()),
            _ => Ok(Vec::new()),
        };
        match listed {
            Ok(listed) if listed.is_empty() => cx.error_spanned_by(attr, example),
            Ok(listed) => {
                if events.replace(listed).is_some() {
                    cx.error_spanned_by(attr, "duplicate `#[group(...)]` attribute");
                }
            }
            Err(e) => cx.syn_error(syn::Error::new(e.span(), format!("{e}; {example}"))),
        }
        false
    });
    events
}

/// The group handler `method`, receiving `events`, if its signature fits.
fn group_handler(cx: &Ctxt, method: &ImplItemFn, events: Vec<Type>) -> Option<GroupHandler> {
    let sig = &method.sig;
    let name = &sig.ident;
    let mut fits = true;
    let mut fail = |tokens: &dyn ToTokens, message: String| {
        cx.error_spanned_by(tokens, message);
        fits = false;
    };
    check_method(sig, &mut fail);
    let params: Vec<&syn::PatType> = sig
        .inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Typed(pat) => Some(pat),
            FnArg::Receiver(_) => None,
        })
        .collect();
    let expected = format!("a group handler takes `&mut self` and the group, as in `fn {name}(&mut self, group: Group<'_>)`");
    match params.as_slice() {
        [only] if last_segment_is(&only.ty, "Group") => {}
        [only] => fail(
            &only.ty,
            format!("{expected}, found `{}`", type_string(&only.ty)),
        ),
        [] => fail(name, expected),
        [_, extra, ..] => fail(extra, expected),
    }
    fits.then(|| GroupHandler {
        method: name.clone(),
        events,
        asyncness: sig.asyncness.is_some(),
        output: sig.output.clone(),
    })
}

/// Removes the hook attributes of `method`; which hook it is, if any.
fn take_hook(cx: &Ctxt, method: &mut ImplItemFn) -> Option<HookKind> {
    let mut kind = None;
    method.attrs.retain(|attr| {
        let this = if attr.path().is_ident("on_start") {
            HookKind::OnStart
        } else if attr.path().is_ident("on_caught_up") {
            HookKind::OnCaughtUp
        } else {
            return true;
        };
        if !matches!(attr.meta, syn::Meta::Path(_)) {
            cx.error_spanned_by(attr, format!("`#[{}]` takes no arguments", this.name()));
        }
        if let Some(earlier) = kind.replace(this) {
            let message = if earlier == this {
                format!("duplicate `#[{}]` attribute", this.name())
            } else {
                "a method is either `#[on_start]` or `#[on_caught_up]`, not both".to_owned()
            };
            cx.error_spanned_by(attr, message);
        }
        false
    });
    kind
}

/// The hook `method`, if its signature fits.
fn hook(cx: &Ctxt, kind: HookKind, method: &ImplItemFn) -> Option<Hook> {
    let sig = &method.sig;
    let expected = format!(
        "`#[{}]` methods are `fn {}(&mut self, {})`",
        kind.name(),
        sig.ident,
        kind.parameter()
    );
    let mut fits = true;
    if let Some(asyncness) = sig.asyncness {
        cx.error_spanned_by(
            asyncness,
            format!("`#[{}]` methods cannot be `async`; {expected}", kind.name()),
        );
        fits = false;
    }
    if !takes_mut_self(sig) || sig.inputs.len() != 2 {
        cx.error_spanned_by(&sig.inputs, expected);
        return None;
    }
    let Some(FnArg::Typed(parameter)) = sig.inputs.iter().nth(1) else {
        return None;
    };
    // The type itself is checked by the compiler; whether it is a reference is checked here,
    // where the message can say which one is expected.
    let parameter = &*parameter.ty;
    match (kind, parameter) {
        (HookKind::OnStart, Type::Reference(_)) | (HookKind::OnCaughtUp, Type::Path(_)) => {}
        (HookKind::OnStart, _) => {
            cx.error_spanned_by(
                parameter,
                format!(
                    "`#[on_start]` takes the origin by reference: `&{}`",
                    type_string(parameter)
                ),
            );
            fits = false;
        }
        (HookKind::OnCaughtUp, _) => {
            cx.error_spanned_by(
                parameter,
                "`#[on_caught_up]` takes the position by value: `Position`",
            );
            fits = false;
        }
    }
    let parameter = parameter.clone();
    if !fits {
        return None;
    }
    Some(Hook {
        kind,
        method: sig.ident.clone(),
        parameter,
    })
}

/// The handler `method`, if its signature fits.
fn handler(cx: &Ctxt, method: &ImplItemFn) -> Option<Handler> {
    let sig = &method.sig;
    let name = &sig.ident;
    let params: Vec<&syn::PatType> = sig
        .inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Typed(pat) => Some(pat),
            FnArg::Receiver(_) => None,
        })
        .collect();
    let Some(first) = params.first() else {
        // Most likely a helper method: say that alone, not also what its receiver lacks.
        let message = format!(
            "`{name}` handles no event; a handler takes `&mut self` and the event (or a reference to it), as in `fn {name}(&mut self, e: &BookAdded)`; move other methods to another `impl` block"
        );
        cx.error_spanned_by(name, message);
        return None;
    };
    let mut fits = true;
    let mut fail = |tokens: &dyn ToTokens, message: String| {
        cx.error_spanned_by(tokens, message);
        fits = false;
    };
    check_method(sig, &mut fail);
    let by_value = matches!(&*first.ty, Type::Path(_));
    let event = match &*first.ty {
        Type::Reference(reference) if reference.mutability.is_none() => {
            Some((*reference.elem).clone())
        }
        ty @ Type::Path(_) => Some(ty.clone()),
        Type::Reference(reference) => {
            let elem = type_string(&reference.elem);
            fail(
                reference,
                format!("handler parameter must be a shared reference: `&{elem}`"),
            );
            None
        }
        ty => {
            fail(
                ty,
                format!(
                    "handler parameter must be an event type or a shared reference to one, found `{}`",
                    type_string(ty)
                ),
            );
            None
        }
    };
    let meta = match params.get(1).map(|p| &*p.ty) {
        None => false,
        Some(Type::Reference(r))
            if r.mutability.is_none() && last_segment_is(&r.elem, "EventMeta") =>
        {
            true
        }
        Some(ty) => {
            fail(
                ty,
                format!(
                    "the second parameter of a handler is `&EventMeta`, found `{}`",
                    type_string(ty)
                ),
            );
            false
        }
    };
    if let Some(extra) = params.get(2) {
        fail(
            extra,
            "a handler takes the event and, optionally, `&EventMeta`; nothing more".to_owned(),
        );
    }
    let event = event.filter(|_| fits)?;
    Some(Handler {
        method: name.clone(),
        event,
        by_value,
        meta,
        asyncness: sig.asyncness.is_some(),
        output: sig.output.clone(),
    })
}

/// The rules of a handler's signature beyond its parameters: `&mut self`, safe, not generic.
fn check_method(sig: &syn::Signature, fail: &mut impl FnMut(&dyn ToTokens, String)) {
    let name = &sig.ident;
    match sig.receiver() {
        None => fail(
            name,
            format!("handler `{name}` needs a `&mut self` receiver"),
        ),
        Some(_) if !takes_mut_self(sig) => fail(
            &sig.inputs[0],
            format!("handler `{name}` takes `&mut self`"),
        ),
        Some(_) => {}
    }
    if let Some(unsafety) = sig.unsafety {
        fail(&unsafety, "handlers cannot be `unsafe`".to_owned());
    }
    if let Some(param) = sig
        .generics
        .params
        .iter()
        .find(|p| !matches!(p, syn::GenericParam::Lifetime(_)))
    {
        fail(
            param,
            format!("handler `{name}` cannot be generic; it handles one event type"),
        );
    }
}

/// Whether the method's receiver is `&mut self` (or `self: &mut Self`).
fn takes_mut_self(sig: &syn::Signature) -> bool {
    sig.receiver().is_some_and(
        |r| matches!(&*r.ty, Type::Reference(reference) if reference.mutability.is_some()),
    )
}

/// Whether `ty` is a path whose last segment is `name`.
fn last_segment_is(ty: &Type, name: &str) -> bool {
    matches!(ty, Type::Path(path) if path.path.segments.last().is_some_and(|s| s.ident == name))
}

/// `ty` as text, the same on every build: tokens without spaces, except one between two words.
///
/// Used for the model's fingerprint, where a change of text must mean a change of type, and
/// for messages and duplicate detection.
pub(crate) fn type_string(ty: &Type) -> String {
    let mut out = String::new();
    write_tokens(ty.to_token_stream(), &mut out);
    out
}

fn write_tokens(tokens: TokenStream, out: &mut String) {
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '"');
    for token in tokens {
        match token {
            TokenTree::Group(group) => {
                let (open, close) = match group.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::Brace => ("{", "}"),
                    Delimiter::None => ("", ""),
                };
                out.push_str(open);
                write_tokens(group.stream(), out);
                out.push_str(close);
            }
            TokenTree::Ident(_) | TokenTree::Literal(_) => {
                let text = token.to_string();
                if is_word(out.chars().last()) && is_word(text.chars().next()) {
                    out.push(' ');
                }
                out.push_str(&text);
            }
            TokenTree::Punct(punct) => out.push(punct.as_char()),
        }
    }
}
