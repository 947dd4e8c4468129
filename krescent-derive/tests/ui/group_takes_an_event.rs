use krescent::prelude::*;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.added")]
struct BookAdded {
    copies: u32,
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.lent")]
struct BookLent {}

#[derive(EventModel, Default)]
#[model(name = "books")]
struct Books {
    copies: u32,
}

#[krescent::handlers]
impl Books {
    #[group(BookAdded, BookLent)]
    fn added(&mut self, e: &BookAdded) {
        self.copies += e.copies;
    }
}

fn main() {}