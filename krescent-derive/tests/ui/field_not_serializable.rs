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
    #[checkpoint]
    copies: u32,
    #[checkpoint]
    cache: Cache,
}

#[krescent::handlers]
impl Books {
    fn added(&mut self, e: &BookAdded) {
        let _ = e.copies;
    }
}

#[derive(Default)]
struct Cache;

fn main() {}
