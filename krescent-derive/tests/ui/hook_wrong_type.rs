use krescent::prelude::*;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.added")]
struct BookAdded {
    copies: u32,
}

#[derive(EventModel, Default)]
#[model(name = "books")]
struct Books {
    copies: u32,
}

#[krescent::handlers]
impl Books {
    fn added(&mut self, e: &BookAdded) {
        self.copies += e.copies;
    }

    #[on_start]
    fn started(&mut self, origin: &krescent::Position) {
        let _ = origin;
    }
}

fn main() {}
