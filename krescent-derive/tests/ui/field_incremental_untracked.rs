use std::collections::HashMap;

use krescent::prelude::*;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.added")]
struct BookAdded {
    copies: u32,
}

#[derive(EventModel, Default)]
#[model(name = "books")]
#[checkpoint(strategy = "always", storage = "memory")]
struct Books {
    #[checkpoint(incremental)]
    copies: HashMap<String, u32>,
}

#[krescent::handlers]
impl Books {
    fn added(&mut self, e: &BookAdded) {
        let _ = e.copies;
    }
}

fn main() {}
