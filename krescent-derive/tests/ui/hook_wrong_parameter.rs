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

    #[on_caught_up]
    fn caught_up(&mut self, position: &krescent::Position) {
        let _ = position;
    }
}

fn main() {}
