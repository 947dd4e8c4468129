//! `#[derive(Event)]`.

use proc_macro2::{Literal, TokenStream};
use quote::quote;
use syn::DeriveInput;

use crate::attr;
use crate::ctxt::{self, Ctxt};

/// The `Event` impl of `input`.
pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    let attrs = attr::event(&cx, &input.ident, &input.attrs);
    // With a mistake, the same impl (with placeholder values) is the stub.
    let generated = generate(input, &attrs);
    match cx.check() {
        Ok(()) => generated,
        Err(error) => ctxt::fail(&error, generated),
    }
}

fn generate(input: &DeriveInput, attrs: &attr::Event) -> TokenStream {
    let krate = &attrs.krate;
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let name = &attrs.name;
    let revision = Literal::u32_unsuffixed(attrs.revision);
    quote! {
        const _: () = {
            #[automatically_derived]
            impl #impl_generics #krate::__private::Event for #ident #ty_generics #where_clause {
                const NAME: &'static ::core::primitive::str = #name;
                const REVISION: ::core::primitive::u32 = #revision;
            }
        };
    }
}
