//! Rules across fields and methods, one function each; mistakes go to the [`Ctxt`].

use std::collections::BTreeMap;

use crate::ast::{type_string, Container, HandlerImpl};
use crate::ctxt::Ctxt;

/// Every rule about a model.
pub(crate) fn model(cx: &Ctxt, container: &Container) {
    unique_keys(cx, container);
    incremental_is_not_support(cx, container);
}

/// Every rule about a `#[handlers]` block.
pub(crate) fn handlers(cx: &Ctxt, block: &HandlerImpl) {
    one_handler_per_event(cx, block);
    one_method_per_hook(cx, block);
    one_group_handler(cx, block);
    group_or_per_event(cx, block);
}

/// Two checkpointed fields cannot share a bucket key.
fn unique_keys(cx: &Ctxt, container: &Container) {
    let mut seen = BTreeMap::new();
    for (field, checkpoint) in container.checkpointed() {
        if let Some(first) = seen.insert(checkpoint.key.as_str(), field.ident) {
            let message = format!(
                "duplicate checkpoint key `{}`; field `{first}` is checkpointed under it already",
                checkpoint.key
            );
            cx.syn_error(syn::Error::new(checkpoint.key_span, message));
        }
    }
}

/// A `#[checkpoint(support)]` field writes itself; it cannot also be `incremental`.
fn incremental_is_not_support(cx: &Ctxt, container: &Container) {
    for (_, checkpoint) in container.checkpointed() {
        if let (Some(span), true) = (checkpoint.incremental, checkpoint.support) {
            cx.syn_error(syn::Error::new(
                span,
                "`incremental` and `support` exclude each other; a `support` field writes itself",
            ));
        }
    }
}

/// An event type is handled by one method: two would make the order of their effects a guess.
/// Types are compared as written, so `BookAdded` and `events::BookAdded` are not caught here.
fn one_handler_per_event(cx: &Ctxt, block: &HandlerImpl) {
    let mut seen = BTreeMap::new();
    for (ty, method) in block.events() {
        let event = type_string(ty);
        if let Some(first) = seen.insert(event.clone(), method) {
            cx.error_spanned_by(
                ty,
                format!("event type `{event}` is handled twice; `{first}` handles it already"),
            );
        }
    }
}

/// A model has at most one group handler: it receives every event of the model, in order.
fn one_group_handler(cx: &Ctxt, block: &HandlerImpl) {
    if let [first, rest @ ..] = block.groups.as_slice() {
        for later in rest {
            let message = format!(
                "`{}` is a second group handler; a model has one, and `{}` receives its events already; list every event type in its `#[group(...)]`",
                later.method, first.method
            );
            cx.error_spanned_by(&later.method, message);
        }
    }
}

/// A group handler receives every event of the model, so that a group keeps the events'
/// order: a per-event handler beside it would split that order in two.
fn group_or_per_event(cx: &Ctxt, block: &HandlerImpl) {
    let Some(group) = block.groups.first() else {
        return;
    };
    for handler in &block.handlers {
        let message = format!(
            "`{}` handles `{}` on its own, but `{}` is a group handler, which receives every event of the model in order; list `{}` in its `#[group(...)]` and handle it there",
            handler.method,
            type_string(&handler.event),
            group.method,
            type_string(&handler.event),
        );
        cx.error_spanned_by(&handler.method, message);
    }
}

/// A model has at most one `#[on_start]` and one `#[on_caught_up]` method.
fn one_method_per_hook(cx: &Ctxt, block: &HandlerImpl) {
    for (i, hook) in block.hooks.iter().enumerate() {
        if let Some(first) = block.hooks[..i].iter().find(|h| h.kind == hook.kind) {
            let message = format!(
                "`#[{}]` is on `{}` already; a model has one",
                hook.kind.name(),
                first.method
            );
            cx.error_spanned_by(&hook.method, message);
        }
    }
}

/// Every rule about an event's revisions: its hops, its old names, its opt-in.
pub(crate) fn event(cx: &Ctxt, ident: &syn::Ident, event: &crate::attr::Event) {
    hops_are_older_revisions(cx, ident, event);
    hops_are_complete(cx, ident, event);
    json_hops_come_first(cx, event);
    compatible_since_has_a_chain(cx, ident, event);
    old_names_differ(cx, event);
}

/// A hop starts from a revision older than the event's, once; revision 1 has none.
fn hops_are_older_revisions(cx: &Ctxt, ident: &syn::Ident, event: &crate::attr::Event) {
    let Some(upcast) = &event.upcast else { return };
    let revision = event.revision;
    if revision == 1 {
        cx.syn_error(syn::Error::new(
            upcast.span,
            format!("`{ident}` is at revision 1 and has no older revision to upcast; an upcast list goes with `revision = 2` or later"),
        ));
        return;
    }
    let mut seen = std::collections::BTreeSet::new();
    for hop in &upcast.hops {
        if hop.revision == 0 || hop.revision >= revision {
            cx.error_spanned_by(
                &hop.lit,
                format!(
                    "`{}` is not an older revision of `{ident}` (revision {revision}); hops start from revisions 1 to {}",
                    hop.revision,
                    revision - 1
                ),
            );
        } else if !seen.insert(hop.revision) {
            cx.error_spanned_by(
                &hop.lit,
                format!("the hop from revision {} is declared twice", hop.revision),
            );
        }
    }
}

/// Every older revision has a hop: a chain with a gap would read some events wrongly.
fn hops_are_complete(cx: &Ctxt, ident: &syn::Ident, event: &crate::attr::Event) {
    let Some(upcast) = &event.upcast else { return };
    if event.revision == 1 {
        return;
    }
    let missing: Vec<String> = (1..event.revision)
        .filter(|r| upcast.hops.iter().all(|h| h.revision != *r))
        .map(|r| format!("`{r} = ...`"))
        .collect();
    if !missing.is_empty() {
        cx.syn_error(syn::Error::new(
            upcast.span,
            format!(
                "missing upcast hop {} of `{ident}`; revision {} needs one hop from each older revision",
                missing.join(", "),
                event.revision
            ),
        ));
    }
}

/// JSON hops come before struct hops: a struct converts into the next revision's struct, which
/// a JSON hop does not have.
fn json_hops_come_first(cx: &Ctxt, event: &crate::attr::Event) {
    use crate::upcast::HopKind;
    let Some(upcast) = &event.upcast else { return };
    let first_struct = upcast
        .hops
        .iter()
        .filter(|h| matches!(h.kind, HopKind::Struct(_)))
        .map(|h| h.revision)
        .min();
    for hop in &upcast.hops {
        if let (HopKind::Json(_), Some(first)) = (&hop.kind, first_struct) {
            if hop.revision > first {
                cx.error_spanned_by(
                    &hop.lit,
                    format!("the JSON hop from revision {} follows the struct hop from revision {first}; JSON hops come first, as a struct converts into the next revision's struct", hop.revision),
                );
            }
        }
    }
}

/// `compatible_since` names an older revision, and old events reach the current struct
/// through a declared chain.
fn compatible_since_has_a_chain(cx: &Ctxt, ident: &syn::Ident, event: &crate::attr::Event) {
    let Some((since, lit)) = &event.compatible_since else {
        return;
    };
    if *since == 0 || *since >= event.revision {
        cx.error_spanned_by(
            lit,
            format!(
                "`compatible_since` names an older revision of `{ident}` (revision {}), from which its bumps keep checkpoints",
                event.revision
            ),
        );
    } else if event.upcast.is_none() {
        cx.error_spanned_by(
            lit,
            format!("`compatible_since` keeps checkpoints across revisions that old events reach by upcasting; declare `upcast(...)` on `{ident}`"),
        );
    }
}

/// An old name is not the name, nor given twice.
fn old_names_differ(cx: &Ctxt, event: &crate::attr::Event) {
    let mut seen = std::collections::BTreeSet::new();
    for old in &event.old_names {
        let value = old.value();
        if value == event.name {
            cx.error_spanned_by(
                old,
                format!("`{value}` is the event's name, not an old one"),
            );
        } else if !seen.insert(value.clone()) {
            cx.error_spanned_by(old, format!("old name `{value}` is given twice"));
        }
    }
}
