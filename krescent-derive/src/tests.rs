//! Expansion snapshots: a representative input, expanded, unparsed with prettyplease and
//! compared with the `.snap` files under `src/snapshots/`.

use proc_macro2::TokenStream;
use quote::quote;

fn pretty(tokens: TokenStream) -> String {
    let file: syn::File = syn::parse2(tokens).expect("the expansion parses as items");
    prettyplease::unparse(&file)
}

fn derive_model(input: TokenStream) -> String {
    pretty(crate::expand::derive_model(&syn::parse2(input).unwrap()))
}

#[test]
fn event() {
    let input = quote! {
        #[derive(Event, Serialize, Deserialize)]
        #[event(name = "book.added", revision = 2)]
        struct BookAdded { book_id: String, copies: u32 }
    };
    insta::assert_snapshot!(pretty(crate::expand::derive_event(
        &syn::parse2(input).unwrap()
    )));
}

#[test]
fn event_with_upcasts() {
    let input = quote! {
        #[derive(Event, Serialize, Deserialize)]
        #[event(
            name = "book.added",
            revision = 4,
            upcast(1 = json(v2_from_v1), 2 = v2::BookAdded, 3 = BookAddedV3),
            old_names("library.book_added"),
            compatible_since = 3,
        )]
        struct BookAdded { book_id: String, copies: u32 }
    };
    insta::assert_snapshot!(pretty(crate::expand::derive_event(
        &syn::parse2(input).unwrap()
    )));
}

#[test]
fn model() {
    insta::assert_snapshot!(derive_model(quote! {
        #[derive(EventModel, Default)]
        #[model(name = "books.available", version = 3)]
        #[checkpoint(strategy = "fixed_events(25) | fixed_time(1500ms)", storage = "postgres", on_invalid = "fail")]
        struct AvailableBooks {
            #[checkpoint]
            available: HashMap<String, u32>,
            #[checkpoint(key = "raw_bytes")]
            raw: Vec<u8>,
            #[checkpoint(support)]
            index: Index,
            #[checkpoint(support, key = "other")]
            other_index: Index,
            lookups: u64,
        }
    }));
}

#[test]
fn model_with_incremental_fields() {
    insta::assert_snapshot!(derive_model(quote! {
        #[derive(EventModel, Default)]
        #[model(name = "books.counted")]
        #[checkpoint(strategy = "fixed_events(25)", storage = "memory", compact_at = "25%")]
        struct Counted {
            #[checkpoint(incremental)]
            counts: TrackedMap<String, u64>,
            #[checkpoint(incremental, key = "seen_ids")]
            seen: TrackedSet<u64>,
            #[checkpoint]
            total: u64,
        }
    }));
}

#[test]
fn model_with_an_error_policy() {
    insta::assert_snapshot!(derive_model(quote! {
        #[derive(EventModel, Default)]
        #[model(name = "books.shelved", on_error = " retry(3)|park ")]
        #[checkpoint(strategy = "always", storage = "memory")]
        struct Shelved {
            #[checkpoint]
            shelves: u32,
        }
    }));
}

#[test]
fn model_without_checkpoints() {
    insta::assert_snapshot!(derive_model(quote! {
        #[derive(EventModel)]
        #[model(name = "counter", crate = "rt")]
        struct Counter { count: u64 }
    }));
}

#[test]
fn model_with_mistakes() {
    insta::assert_snapshot!(derive_model(quote! {
        #[derive(EventModel)]
        #[model(name = "counter")]
        #[checkpoint(strategy = "fixed_evnts(25)", storage = "memory")]
        struct Counter {
            #[checkpoint(kye = "n")]
            count: u64,
        }
    }));
}

#[test]
fn handlers() {
    let input = quote! {
        impl AvailableBooks {
            fn added(&mut self, e: &BookAdded) {
                self.available += e.copies;
            }
            async fn lent(&mut self, e: &events::BookLent, meta: &EventMeta) -> Result<(), LendError> {
                Ok(())
            }
            #[on_start]
            fn started(&mut self, origin: &Origin) {}
            #[on_caught_up]
            fn caught_up(&mut self, position: Position) {}
        }
    };
    insta::assert_snapshot!(pretty(crate::expand::handlers(TokenStream::new(), input)));
}
