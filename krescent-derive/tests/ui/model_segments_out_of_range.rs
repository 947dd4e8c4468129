use krescent::prelude::*;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.added")]
struct BookAdded {
    copies: u32,
}

#[derive(EventModel, Default)]
#[model(name = "books", segments = 0)]
#[checkpoint(strategy = "fixed_events(10)", storage = "memory")]
struct Books {
    #[checkpoint]
    copies: u32,
}

#[derive(EventModel, Default)]
#[model(name = "books.unsaved", segments = 4)]
struct Unsaved {
    copies: u32,
}

#[krescent::handlers]
impl Books {
    fn added(&mut self, e: &BookAdded) {
        self.copies += e.copies;
    }
}

#[krescent::handlers]
impl Unsaved {
    fn added(&mut self, e: &BookAdded) {
        self.copies += e.copies;
    }
}

fn main() {}
