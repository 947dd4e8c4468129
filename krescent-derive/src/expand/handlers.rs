//! `#[handlers]`: the `Handlers` impl of an `impl` block's event handlers.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ItemImpl, ReturnType};

use super::respan;
use crate::ast::{GroupHandler, Handler, HandlerImpl, Hook, HookKind};
use crate::attr;
use crate::check;
use crate::ctxt::{self, Ctxt};

/// The `impl` block (without the hook attributes) and its `Handlers` impl, or its mistakes and
/// a stub.
pub(crate) fn attribute(args: TokenStream, input: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    let args = attr::handlers(&cx, args);
    let Ok(mut item) = syn::parse2::<ItemImpl>(input.clone()) else {
        cx.error_spanned_by(&input, "`#[handlers]` goes on an `impl` block of the model, as in `#[handlers] impl AvailableBooks { … }`");
        let error = cx.check().expect_err("an error was just recorded");
        return ctxt::fail(&error, input);
    };
    let block = HandlerImpl::from_ast(&cx, args, &mut item);
    check::handlers(&cx, &block);
    let generated = match cx.check() {
        Ok(()) => generate(&item, &block),
        Err(error) => ctxt::fail(&error, stub(&item, &block)),
    };
    quote! {
        #item
        #generated
    }
}

/// `impl Handlers`, inside `const _: () = { … };`.
fn generate(item: &ItemImpl, block: &HandlerImpl) -> TokenStream {
    let krate = &block.krate;
    let p = quote!(#krate::__private);
    let self_ty = &item.self_ty;
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    let events: Vec<_> = block.events().into_iter().map(|(event, _)| event).collect();
    let handles = if events.is_empty() {
        quote!(false)
    } else {
        quote!(#(#p::is_named(__event_type, <#events as #p::Event>::NAME, <#events as #p::Event>::OLD_NAMES))||*)
    };
    let event_type = if events.is_empty() {
        quote!(_)
    } else {
        quote!(__event_type)
    };
    // `<E as Event>::…` everywhere, so that a type that is not an event is reported once.
    let event_types = events.iter().map(|event| {
        quote!(#p::EventType {
            name: <#event as #p::Event>::NAME,
            revision: <#event as #p::Event>::REVISION,
            old_names: <#event as #p::Event>::OLD_NAMES,
            checkpoint_revision: <#event as #p::Event>::CHECKPOINT_REVISION,
            upcasts: <#event as #p::Event>::UPCASTS,
        })
    });
    let dispatch = block.handlers.iter().map(|h| dispatch(&p, h));
    let hooks = block.hooks.iter().map(|h| hook(&p, h));
    let distinct = distinct_names(&p, item, block);
    let (grouped, dispatch) = match block.groups.first() {
        Some(group) => (
            Some(grouped(&p, group)),
            // A group handler receives a lone event as a group of one.
            vec![quote! {
                if <Self as #p::Handlers>::handles(__event_type) {
                    let __events = [__event];
                    return <Self as #p::Handlers>::handle_group(self, #p::Group::new(&__events)).await;
                }
            }],
        ),
        None => (None, dispatch.collect()),
    };
    quote! {
        #distinct
        const _: () = {
            #[automatically_derived]
            impl #impl_generics #p::Handlers for #self_ty #where_clause {
                const EVENTS: &'static [#p::EventType] = &[#(#event_types),*];

                fn handles(#event_type: &::core::primitive::str) -> ::core::primitive::bool {
                    #handles
                }

                fn handle<'__a>(
                    &'__a mut self,
                    __event: &'__a #p::RecordedEvent,
                ) -> impl #p::Future<Output = ::core::result::Result<(), #p::HandlerError>> + ::core::marker::Send + '__a {
                    async move {
                        let __event_type = #p::RecordedEvent::event_type(__event);
                        #(#dispatch)*
                        ::core::result::Result::Ok(())
                    }
                }

                #grouped

                #(#hooks)*
            }
        };
    }
}

/// `GROUPED` and `handle_group`, calling the group handler; the call and its conversion to
/// `Result<(), HandlerError>` spanned at the return type, as a per-event handler's.
fn grouped(p: &TokenStream, group: &GroupHandler) -> TokenStream {
    let (span, returns_unit) = match &group.output {
        ReturnType::Default => (group.method.span(), true),
        ReturnType::Type(_, ty) => (ty.span(), false),
    };
    let mut method = group.method.clone();
    method.set_span(span);
    let call = if group.asyncness {
        let name_span = group.method.span();
        let future = quote_spanned!(span=> Self::#method(self, __group));
        quote_spanned!(name_span=> #p::send(#future).await)
    } else {
        quote_spanned!(span=> Self::#method(self, __group))
    };
    let outcome = if returns_unit {
        quote! {
            #call;
            ::core::result::Result::Ok(())
        }
    } else {
        let into_result = respan(quote!(#p::HandlerOutput::into_result), span);
        quote_spanned!(span=> #into_result(#call))
    };
    quote! {
        const GROUPED: ::core::primitive::bool = true;

        fn handle_group<'__a>(
            &'__a mut self,
            __group: #p::Group<'__a>,
        ) -> impl #p::Future<Output = ::core::result::Result<(), #p::HandlerError>> + ::core::marker::Send + '__a
        where
            Self: ::core::marker::Send,
        {
            async move { #outcome }
        }
    }
}

/// A compile-time check that no two handled event types share a recorded name (`NAME`), which
/// the attributes alone cannot show: the names are on the event types. One constant per pair,
/// spanned at the later type. Left to the runtime's start-up check when the block is generic
/// (a constant cannot name the block's parameters).
fn distinct_names(p: &TokenStream, item: &ItemImpl, block: &HandlerImpl) -> TokenStream {
    if !item.generics.params.is_empty() {
        return TokenStream::new();
    }
    let self_ty = &item.self_ty;
    let mut checks = Vec::new();
    let events = block.events();
    for (i, (later, _)) in events.iter().enumerate() {
        for (earlier, _) in &events[..i] {
            let (a, b) = (*earlier, *later);
            let message = format!(
                "`{}` handles event types `{}` and `{}` that have the same name (`Event::NAME`); give each event type its own `#[event(name = \"...\")]`",
                written(&quote!(#self_ty)),
                written(&quote!(#a)),
                written(&quote!(#b)),
            );
            checks.push(quote_spanned! {b.span()=>
                const _: () = if #p::same_name(<#a as #p::Event>::NAME, <#b as #p::Event>::NAME) {
                    ::core::panic!(#message)
                };
            });
        }
    }
    quote!(#(#checks)*)
}

/// A type's tokens as a person writes them: `events::BookLent`, not `events :: BookLent`.
fn written(tokens: &TokenStream) -> String {
    tokens
        .to_string()
        .replace(" :: ", "::")
        .replace(":: ", "::")
        .replace(" <", "<")
        .replace("< ", "<")
        .replace(" >", ">")
        .replace(" ,", ",")
}

/// `if the type name is the handler's { decode; call; return }`. The call and its conversion
/// to `Result<(), HandlerError>` are spanned at the return type, where a wrong one is reported.
fn dispatch(p: &TokenStream, handler: &Handler) -> TokenStream {
    let Handler {
        method,
        event,
        by_value,
        meta,
        asyncness,
        output,
    } = handler;
    let decoded = if *by_value {
        quote!(__decoded)
    } else {
        quote!(&__decoded)
    };
    let meta = meta.then(|| quote!(, &__event.meta));
    let (span, returns_unit) = match output {
        ReturnType::Default => (method.span(), true),
        ReturnType::Type(_, ty) => (ty.span(), false),
    };
    let mut method = method.clone();
    method.set_span(span);
    let call = if *asyncness {
        // Each handler's future must be `Send` on its own, so that a handler holding something
        // that is not `Send` across an `.await` is reported at its name, not at `#[handlers]`.
        let name_span = handler.method.span();
        let future = quote_spanned!(span=> Self::#method(self, #decoded #meta));
        quote_spanned!(name_span=> #p::send(#future).await)
    } else {
        quote_spanned!(span=> Self::#method(self, #decoded #meta))
    };
    let outcome = if returns_unit {
        quote! {
            #call;
            return ::core::result::Result::Ok(());
        }
    } else {
        let into_result = respan(quote!(#p::HandlerOutput::into_result), span);
        quote_spanned!(span=> return #into_result(#call);)
    };
    quote! {
        if #p::is_named(__event_type, <#event as #p::Event>::NAME, <#event as #p::Event>::OLD_NAMES) {
            let __decoded = match #p::RecordedEvent::decode::<#event>(__event) {
                ::core::result::Result::Ok(__decoded) => __decoded,
                ::core::result::Result::Err(__error) => {
                    return ::core::result::Result::Err(::core::convert::From::from(__error));
                }
            };
            #outcome
        }
    }
}

/// `on_start` or `on_caught_up`, forwarding to the marked method; spanned at its parameter,
/// where a wrong type is reported.
fn hook(p: &TokenStream, hook: &Hook) -> TokenStream {
    let Hook {
        kind,
        method,
        parameter,
    } = hook;
    let span = parameter.span();
    match kind {
        HookKind::OnStart => {
            let call = quote_spanned!(span=> Self::#method(self, __origin));
            quote! {
                fn on_start(&mut self, __origin: &#p::Origin) {
                    #call
                }
            }
        }
        HookKind::OnCaughtUp => {
            let call = quote_spanned!(span=> Self::#method(self, __position));
            quote! {
                fn on_caught_up(&mut self, __position: #p::Position) {
                    #call
                }
            }
        }
    }
}

/// A `Handlers` impl without handlers, so that a mistake in the block is not also reported as
/// the model missing its `Handlers` impl.
fn stub(item: &ItemImpl, block: &HandlerImpl) -> TokenStream {
    let krate = &block.krate;
    let p = quote!(#krate::__private);
    let self_ty = &item.self_ty;
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    quote! {
        const _: () = {
            #[automatically_derived]
            impl #impl_generics #p::Handlers for #self_ty #where_clause {
                const EVENTS: &'static [#p::EventType] = &[];

                fn handle<'__a>(
                    &'__a mut self,
                    _: &'__a #p::RecordedEvent,
                ) -> impl #p::Future<Output = ::core::result::Result<(), #p::HandlerError>> + ::core::marker::Send + '__a {
                    async move { ::core::result::Result::Ok(()) }
                }
            }
        };
    }
}
