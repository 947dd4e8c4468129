//! Rules across fields and methods, one function each; mistakes go to the [`Ctxt`].

use std::collections::BTreeMap;

use crate::ast::{type_string, Container, HandlerImpl};
use crate::ctxt::Ctxt;

/// Every rule about a model.
pub(crate) fn model(cx: &Ctxt, container: &Container) {
    unique_keys(cx, container);
}

/// Every rule about a `#[handlers]` block.
pub(crate) fn handlers(cx: &Ctxt, block: &HandlerImpl) {
    one_handler_per_event(cx, block);
    one_method_per_hook(cx, block);
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

/// An event type is handled by one method: two would make the order of their effects a guess.
/// Types are compared as written, so `BookAdded` and `events::BookAdded` are not caught here.
fn one_handler_per_event(cx: &Ctxt, block: &HandlerImpl) {
    let mut seen = BTreeMap::new();
    for handler in &block.handlers {
        let event = type_string(&handler.event);
        if let Some(first) = seen.insert(event.clone(), &handler.method) {
            cx.error_spanned_by(
                &handler.event,
                format!("event type `{event}` is handled twice; `{first}` handles it already"),
            );
        }
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
