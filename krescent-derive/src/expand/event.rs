//! `#[derive(Event)]`.

use std::collections::BTreeMap;

use proc_macro2::{Literal, TokenStream};
use quote::quote;
use syn::spanned::Spanned;
use syn::DeriveInput;

use crate::attr;
use crate::check;
use crate::ctxt::{self, Ctxt};
use crate::upcast::HopKind;

/// The `Event` impl of `input`.
pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    let attrs = attr::event(&cx, &input.ident, &input.attrs);
    check::event(&cx, &input.ident, &attrs);
    match cx.check() {
        Ok(()) => generate(input, &attrs, true),
        // With a mistake, the same impl without its hops (and placeholder values) is the stub.
        Err(error) => ctxt::fail(&error, generate(input, &attrs, false)),
    }
}

fn generate(input: &DeriveInput, attrs: &attr::Event, with_hops: bool) -> TokenStream {
    let krate = &attrs.krate;
    let p = quote!(#krate::__private);
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let name = &attrs.name;
    let revision = Literal::u32_unsuffixed(attrs.revision);
    let old_names = (!attrs.old_names.is_empty()).then(|| {
        let names = &attrs.old_names;
        quote!(const OLD_NAMES: &'static [&'static ::core::primitive::str] = &[#(#names),*];)
    });
    let hops: BTreeMap<u32, &HopKind> = attrs
        .upcast
        .iter()
        .flat_map(|u| &u.hops)
        .filter(|_| with_hops)
        .map(|h| (h.revision, &h.kind))
        .collect();
    let checkpoint_revision = attrs.compatible_since.as_ref().map(|(since, _)| {
        let since = Literal::u32_unsuffixed(*since);
        quote!(const CHECKPOINT_REVISION: ::core::primitive::u32 = #since;)
    });
    let since = attrs
        .compatible_since
        .as_ref()
        .map_or(attrs.revision, |(since, _)| *since);
    let written: Vec<String> = attrs
        .upcast
        .iter()
        .flat_map(|u| &u.hops)
        .filter(|h| with_hops && h.revision < since)
        .map(|h| (h.revision, h.written()))
        .collect::<BTreeMap<_, _>>()
        .into_values()
        .collect();
    let upcasts = (!written.is_empty()).then(|| {
        let written = written.join(",");
        quote!(const UPCASTS: &'static ::core::primitive::str = #written;)
    });
    let upcast = (!hops.is_empty()).then(|| {
        let arms = (1..attrs.revision).map(|start| {
            let chain = chain(&p, &hops, start, attrs.revision);
            let start = Literal::u32_unsuffixed(start);
            quote!(#start => #chain,)
        });
        quote! {
            fn upcast(
                __revision: ::core::primitive::u32,
                __payload: &::core::primitive::str,
            ) -> ::core::result::Result<Self, #p::DecodeFailure> {
                match __revision {
                    #(#arms)*
                    _ => ::core::result::Result::Err(#p::DecodeFailure::UnknownRevision {
                        stored: __revision,
                        current: #revision,
                    }),
                }
            }
        }
    });
    quote! {
        const _: () = {
            #[automatically_derived]
            impl #impl_generics #p::Event for #ident #ty_generics #where_clause {
                const NAME: &'static ::core::primitive::str = #name;
                const REVISION: ::core::primitive::u32 = #revision;
                #old_names
                #checkpoint_revision
                #upcasts
                #upcast
            }
        };
    }
}

/// The block that turns a payload of revision `start` into `Self`: read as the revision's
/// struct (or JSON), then one hop per revision up to `revision`. Each struct hop is spanned at
/// its type, where a missing conversion is reported.
fn chain(
    p: &TokenStream,
    hops: &BTreeMap<u32, &HopKind>,
    start: u32,
    revision: u32,
) -> TokenStream {
    let json = quote!(#p::JsonValue);
    // The type a revision is read as: its struct, its JSON, or `Self` for the current one.
    let type_of = |r: u32| match hops.get(&r) {
        _ if r == revision => quote!(Self),
        Some(HopKind::Struct(ty)) => quote!(#ty),
        Some(HopKind::Json(_)) | None => json.clone(),
    };
    let first = type_of(start);
    let start_lit = Literal::u32_unsuffixed(start);
    let mut steps = vec![quote!(let __value: #first = #p::parse(#start_lit, __payload)?;)];
    for from in start..revision {
        let next = type_of(from + 1);
        let from_lit = Literal::u32_unsuffixed(from);
        let next_lit = Literal::u32_unsuffixed(from + 1);
        match hops.get(&from) {
            Some(HopKind::Struct(ty)) => {
                // The function's path alone is spanned at the type, where a missing
                // conversion is reported; the bindings stay the macro's own.
                let hop = super::respan(quote!(#p::hop::<#ty, #next>), ty.span());
                steps.push(quote! {
                    let __hop = #hop;
                    let __value: #next = __hop(__value, #from_lit)?;
                });
            }
            Some(HopKind::Json(function)) => {
                let hop = super::respan(quote!(#p::json_hop), function.span());
                steps.push(quote!(let __value: #json = #hop(__value, #from_lit, #function)?;));
                if !matches!(hops.get(&(from + 1)), Some(HopKind::Json(_))) || from + 1 == revision
                {
                    steps.push(quote!(let __value: #next = #p::from_value(#next_lit, __value)?;));
                }
            }
            None => {}
        }
    }
    quote!({
        #(#steps)*
        ::core::result::Result::Ok(__value)
    })
}
