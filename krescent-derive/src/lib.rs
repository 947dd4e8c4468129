//! Temporary stub; replaced by the real derive.
#![allow(missing_docs)]
use proc_macro::TokenStream;
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(_: TokenStream) -> TokenStream { TokenStream::new() }
#[proc_macro_derive(EventModel, attributes(model, checkpoint))]
pub fn derive_model(_: TokenStream) -> TokenStream { TokenStream::new() }
#[proc_macro_attribute]
pub fn handlers(_: TokenStream, item: TokenStream) -> TokenStream { item }
