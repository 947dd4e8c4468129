//! `#[derive(EventModel)]`: the `EventModel` and `CheckpointSupport` impls.

use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::DeriveInput;

use super::respan;
use crate::ast::{type_string, Container, Field, Kind};
use crate::attr::{self, FieldCheckpoint, OnInvalid};
use crate::check;
use crate::ctxt::{self, Ctxt};
use crate::strategy::Strategy;

/// The impls of `input`, or its mistakes and a stub.
pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    let container = Container::from_ast(&cx, input);
    check::model(&cx, &container);
    match cx.check() {
        Ok(()) => generate(&container),
        Err(error) => ctxt::fail(&error, stub(&container)),
    }
}

/// `EventModel` and `CheckpointSupport`, inside `const _: () = { … };`.
fn generate(c: &Container) -> TokenStream {
    let krate = &c.attrs.krate;
    let p = quote!(#krate::__private);
    let ident = c.ident;
    let (impl_generics, ty_generics, where_clause) = c.generics.split_for_impl();
    let name = &c.attrs.name;
    let version = Literal::u32_unsuffixed(c.attrs.version);
    let fingerprint = fingerprint(c);
    let checkpointing = checkpointing(&p, c.attrs.checkpoint.as_ref());
    let guard = c
        .attrs
        .checkpoint
        .as_ref()
        .map(|config| feature_guard(krate, &config.storage));
    let create = create(&p, c);
    let restore = restore(&p, c);
    let validate = validate(&p, c);
    let transaction = transaction(&p, c);
    let tracking = tracking(&p, c);
    let exclusive = c.attrs.exclusive.then(|| {
        quote!(
            const EXCLUSIVE: ::core::primitive::bool = true;
        )
    });
    let segments = (c.attrs.segments != 1).then(|| {
        let n = Literal::u32_unsuffixed(c.attrs.segments);
        quote!(
            const SEGMENTS: ::core::primitive::u32 = #n;
        )
    });
    let compact_at = c
        .attrs
        .checkpoint
        .as_ref()
        .and_then(|config| config.compact_at)
        .map(|percent| {
            let percent = Literal::u32_unsuffixed(percent);
            quote!(
                const COMPACT_AT_PERCENT: ::core::primitive::u32 = #percent;
            )
        });
    let on_error = c.attrs.on_error.as_ref().map(|policy| {
        quote!(
            const ON_ERROR: &'static ::core::primitive::str = #policy;
        )
    });
    quote! {
        const _: () = {
            #guard

            #[automatically_derived]
            impl #impl_generics #p::EventModel for #ident #ty_generics #where_clause {
                const NAME: &'static ::core::primitive::str = #name;
                const VERSION: ::core::primitive::u32 = #version;
                const FINGERPRINT: &'static ::core::primitive::str = #fingerprint;
                #exclusive
                #segments
                #on_error
                #compact_at

                fn checkpointing() -> ::core::option::Option<#p::CheckpointConfig> {
                    #checkpointing
                }
            }

            #[automatically_derived]
            impl #impl_generics #p::CheckpointSupport for #ident #ty_generics #where_clause {
                #create
                #restore
                #validate
                #transaction
                #tracking
            }
        };
    }
}

/// Placeholder impls that keep a model with a mistake from also reporting missing impls.
fn stub(c: &Container) -> TokenStream {
    let krate = &c.attrs.krate;
    let p = quote!(#krate::__private);
    let ident = c.ident;
    let (impl_generics, ty_generics, where_clause) = c.generics.split_for_impl();
    quote! {
        const _: () = {
            #[automatically_derived]
            impl #impl_generics #p::EventModel for #ident #ty_generics #where_clause {
                const NAME: &'static ::core::primitive::str = "";
                const VERSION: ::core::primitive::u32 = 0;
                const FINGERPRINT: &'static ::core::primitive::str = "";

                fn checkpointing() -> ::core::option::Option<#p::CheckpointConfig> {
                    ::core::option::Option::None
                }
            }

            #[automatically_derived]
            impl #impl_generics #p::CheckpointSupport for #ident #ty_generics #where_clause {
                fn create_checkpoint(&self, _: &mut #p::CheckpointBucket) -> ::core::result::Result<(), #p::CheckpointError> {
                    ::core::unreachable!()
                }
                fn restore_checkpoint(&mut self, _: &#p::CheckpointBucket) -> ::core::result::Result<(), #p::CheckpointError> {
                    ::core::unreachable!()
                }
                fn validate_checkpoint(&self, _: &#p::CheckpointBucket) -> ::core::primitive::bool {
                    ::core::unreachable!()
                }
            }
        };
    }
}

/// `key:field:type` of every checkpointed field, joined by `;`; a support field's type reads
/// `support Type`. The type is its tokens, so changing a field's type changes the fingerprint.
fn fingerprint(c: &Container) -> String {
    c.checkpointed()
        .map(|(field, checkpoint)| {
            let support = if checkpoint.support { "support " } else { "" };
            format!(
                "{}:{}:{support}{}",
                checkpoint.key,
                field.ident,
                type_string(field.ty)
            )
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// The body of `checkpointing()`.
fn checkpointing(p: &TokenStream, config: Option<&attr::Checkpointing>) -> TokenStream {
    let Some(config) = config else {
        return quote!(::core::option::Option::None);
    };
    let strategy = strategy(p, &config.strategy);
    let storage = &config.storage;
    let on_invalid = match config.on_invalid {
        OnInvalid::Rebuild => quote!(#p::OnInvalid::Rebuild),
        OnInvalid::Fail => quote!(#p::OnInvalid::Fail),
    };
    quote! {
        ::core::option::Option::Some(#p::CheckpointConfig {
            strategy: #strategy,
            storage: #storage,
            on_invalid: #on_invalid,
        })
    }
}

/// A strategy as a runtime `Strategy` value.
fn strategy(p: &TokenStream, value: &Strategy) -> TokenStream {
    match value {
        Strategy::FixedEvents(count) => {
            let count = Literal::u32_unsuffixed(count.get());
            quote! {
                #p::Strategy::FixedEvents(match #p::NonZeroU32::new(#count) {
                    ::core::option::Option::Some(__count) => __count,
                    ::core::option::Option::None => ::core::unreachable!(),
                })
            }
        }
        Strategy::FixedTime(duration) if duration.subsec_nanos() == 0 => {
            let secs = Literal::u64_unsuffixed(duration.as_secs());
            quote!(#p::Strategy::FixedTime(#p::Duration::from_secs(#secs)))
        }
        Strategy::FixedTime(duration) => {
            // The grammar counts in whole milliseconds.
            let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
            let millis = Literal::u64_unsuffixed(millis);
            quote!(#p::Strategy::FixedTime(#p::Duration::from_millis(#millis)))
        }
        Strategy::Always => quote!(#p::Strategy::Always),
        Strategy::Manual => quote!(#p::Strategy::Manual),
        Strategy::OnShutdown => quote!(#p::Strategy::OnShutdown),
        Strategy::Never => quote!(#p::Strategy::Never),
        Strategy::Any(all) => {
            let all = all.iter().map(|s| strategy(p, s));
            quote!(#p::Strategy::Any(::core::convert::From::from([#(#all),*])))
        }
    }
}

/// For a storage behind a feature of the runtime crate, a guard that fails to compile without
/// it, spanned at the storage's name.
fn feature_guard(krate: &syn::Path, storage: &syn::LitStr) -> Option<TokenStream> {
    let guard = match storage.value().as_str() {
        "postgres" => quote!(#krate::__private::require_postgres!();),
        _ => return None,
    };
    Some(respan(guard, storage.span()))
}

/// The local that holds a decoded field until every field has decoded.
fn local(field: &Field) -> syn::Ident {
    format_ident!("__field_{}", field.ident)
}

/// `create_checkpoint`: every checkpointed field into the bucket.
///
/// Calls that need a trait of the field's type are spanned at the type, where a missing impl
/// is reported.
fn create(p: &TokenStream, c: &Container) -> TokenStream {
    let puts = c.checkpointed().map(|(field, FieldCheckpoint { key, .. })| {
        let member = field.ident;
        let ty = field.ty;
        match field.kind() {
            Kind::Serde => {
                let put = respan(quote!(#p::CheckpointBucket::put(__bucket, #key, &self.#member)), ty.span());
                quote!(#put?;)
            }
            Kind::Bytes => quote!(#p::CheckpointBucket::put_bytes(__bucket, #key, &self.#member);),
            Kind::Incremental => {
                let put = respan(quote!(#p::incremental_put(&self.#member, __bucket, #key)), ty.span());
                quote!(#put?;)
            }
            Kind::Support => {
                let create = respan(quote!(<#ty as #p::CheckpointSupport>::create_checkpoint(&self.#member, &mut __nested)), ty.span());
                quote! {
                    {
                        let mut __nested = #p::CheckpointBucket::with_format(#p::CheckpointBucket::format(__bucket));
                        #create.map_err(|__error| #p::nested_error(#key, __error))?;
                        #p::CheckpointBucket::insert(__bucket, #key, #p::BucketValue::Bucket(__nested));
                    }
                }
            }
        }
    });
    let bucket = bucket_param(c);
    quote! {
        fn create_checkpoint(&self, #bucket: &mut #p::CheckpointBucket) -> ::core::result::Result<(), #p::CheckpointError> {
            #(#puts)*
            ::core::result::Result::Ok(())
        }
    }
}

/// `restore_checkpoint`, all or nothing: every serde field decodes into a local and every
/// nested bucket is found first; then the support fields restore in place (each validated
/// beforehand when there are several, so that a later one failing is unlikely to leave an
/// earlier one restored); only then are the locals assigned.
fn restore(p: &TokenStream, c: &Container) -> TokenStream {
    let mut decode = Vec::new();
    let mut validate = Vec::new();
    let mut restore = Vec::new();
    let mut assign = Vec::new();
    let supports = c
        .checkpointed()
        .filter(|(f, _)| f.kind() == Kind::Support)
        .count();
    for (field, FieldCheckpoint { key, .. }) in c.checkpointed() {
        let member = field.ident;
        let local = local(field);
        let ty = field.ty;
        match field.kind() {
            Kind::Serde => {
                // A hash map or set restores at its final size; anything else through
                // `CheckpointBucket::get` (see `krescent::checkpoint::field`).
                let get = respan(
                    quote!((&&#p::Field::<#ty>::new()).restore(__bucket, #key)),
                    ty.span(),
                );
                decode.push(quote! {
                    #[allow(clippy::needless_borrow)]
                    let #local: #ty = {
                        #[allow(unused_imports)]
                        use #p::{RestoreAny as _, RestoreSized as _};
                        #get?
                    };
                });
                assign.push(quote!(self.#member = #local;));
            }
            Kind::Bytes => {
                decode.push(
                    quote!(let #local: #ty = #p::CheckpointBucket::get_bytes(__bucket, #key)?;),
                );
                assign.push(quote!(self.#member = #local;));
            }
            Kind::Incremental => {
                // A whole collection, or a base and its deltas applied in order.
                let get = respan(
                    quote!(#p::incremental_restore::<#ty>(__bucket, #key)),
                    ty.span(),
                );
                decode.push(quote!(let #local: #ty = #get?;));
                assign.push(quote!(self.#member = #local;));
            }
            Kind::Support => {
                decode.push(quote!(let #local = #p::CheckpointBucket::bucket(__bucket, #key)?;));
                if supports > 1 {
                    let valid = respan(
                        quote!(<#ty as #p::CheckpointSupport>::validate_checkpoint(&self.#member, #local)),
                        ty.span(),
                    );
                    validate.push(quote! {
                        if !#valid {
                            return ::core::result::Result::Err(#p::CheckpointError::Invalid {
                                key: ::core::convert::From::from(#key),
                                reason: ::core::convert::From::from("it failed validation"),
                            });
                        }
                    });
                }
                let call = respan(
                    quote!(<#ty as #p::CheckpointSupport>::restore_checkpoint(&mut self.#member, #local)),
                    ty.span(),
                );
                restore.push(quote!(#call.map_err(|__error| #p::nested_error(#key, __error))?;));
            }
        }
    }
    let bucket = bucket_param(c);
    quote! {
        fn restore_checkpoint(&mut self, #bucket: &#p::CheckpointBucket) -> ::core::result::Result<(), #p::CheckpointError> {
            #(#decode)*
            #(#validate)*
            #(#restore)*
            #(#assign)*
            ::core::result::Result::Ok(())
        }
    }
}

/// `validate_checkpoint`: every key present and of its kind; nested buckets pass their own
/// validation.
fn validate(p: &TokenStream, c: &Container) -> TokenStream {
    let checks: Vec<TokenStream> = c
        .checkpointed()
        .map(|(field, FieldCheckpoint { key, .. })| {
            let member = field.ident;
            let ty = field.ty;
            let value = quote!(#p::CheckpointBucket::value(__bucket, #key));
            match field.kind() {
                Kind::Serde => quote! {
                    ::core::matches!(#value, ::core::option::Option::Some(__value)
                        if !::core::matches!(__value, #p::BucketValue::Bytes(_) | #p::BucketValue::Bucket(_)))
                },
                Kind::Bytes => quote! {
                    ::core::matches!(#value, ::core::option::Option::Some(#p::BucketValue::Bytes(_)))
                },
                Kind::Incremental => quote!(#p::incremental_present(__bucket, #key)),
                Kind::Support => {
                    let valid = respan(quote!(<#ty as #p::CheckpointSupport>::validate_checkpoint(&self.#member, __nested)), ty.span());
                    quote! {
                        ::core::matches!(#value, ::core::option::Option::Some(#p::BucketValue::Bucket(__nested)) if #valid)
                    }
                }
            }
        })
        .collect();
    let body = if checks.is_empty() {
        quote!(true)
    } else {
        quote!(#(#checks)&&*)
    };
    let bucket = bucket_param(c);
    quote! {
        fn validate_checkpoint(&self, #bucket: &#p::CheckpointBucket) -> ::core::primitive::bool {
            #body
        }
    }
}

/// `transaction`: the first `#[checkpoint(support)]` field that has one; nothing without
/// support fields (the trait's default).
fn transaction(p: &TokenStream, c: &Container) -> TokenStream {
    let supports: Vec<TokenStream> = c
        .checkpointed()
        .filter(|(field, _)| matches!(field.kind(), Kind::Support))
        .map(|(field, _)| {
            let member = field.ident;
            let ty = field.ty;
            quote! {
                if let ::core::option::Option::Some(__transaction) = <#ty as #p::CheckpointSupport>::transaction(&mut self.#member) {
                    return ::core::option::Option::Some(__transaction);
                }
            }
        })
        .collect();
    if supports.is_empty() {
        return TokenStream::new();
    }
    quote! {
        fn transaction(&mut self) -> ::core::option::Option<&mut dyn #p::CheckpointTransaction> {
            #(#supports)*
            ::core::option::Option::None
        }
    }
}

/// `tracks_changes` and `checkpoint_taken` when a field is `#[checkpoint(incremental)]` or
/// `#[checkpoint(support)]` (whose own fields may be); nothing otherwise (the trait's defaults).
fn tracking(p: &TokenStream, c: &Container) -> TokenStream {
    let mut incremental = false;
    let mut seals = Vec::new();
    for (field, _) in c.checkpointed() {
        let member = field.ident;
        let ty = field.ty;
        match field.kind() {
            Kind::Incremental => {
                incremental = true;
                seals.push(quote!(<#ty as #p::Incremental>::seal(&mut self.#member);));
            }
            Kind::Support => seals
                .push(quote!(<#ty as #p::CheckpointSupport>::checkpoint_taken(&mut self.#member);)),
            Kind::Serde | Kind::Bytes => {}
        }
    }
    if seals.is_empty() {
        return TokenStream::new();
    }
    // A support field's changes go into its nested bucket whole: only the model's own
    // incremental fields write deltas.
    let tracks = incremental.then(|| {
        quote! {
            fn tracks_changes(&self) -> ::core::primitive::bool {
                true
            }
        }
    });
    quote! {
        #tracks
        fn checkpoint_taken(&mut self) {
            #(#seals)*
        }
    }
}

/// The bucket parameter's pattern: `__bucket`, or `_` when there is no checkpointed field.
fn bucket_param(c: &Container) -> TokenStream {
    if c.checkpointed().next().is_some() {
        quote!(__bucket)
    } else {
        quote!(_)
    }
}
