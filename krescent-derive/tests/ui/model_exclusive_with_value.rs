use krescent::prelude::*;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.added")]
struct BookAdded {
    copies: u32,
}

#[derive(EventModel, Default)]
#[model(name = "books", exclusive = true)]
struct Books {
    copies: u32,
}

#[krescent::handlers]
impl Books {
    fn added(&mut self, e: &BookAdded) {
        self.copies += e.copies;
    }
}

fn main() {}
