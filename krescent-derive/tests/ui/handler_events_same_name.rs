use krescent::prelude::*;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.added")]
struct BookAdded {
    copies: u32,
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.added", revision = 2)]
struct BookAddedAgain {
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

    fn added_again(&mut self, e: &BookAddedAgain) {
        self.copies += e.copies;
    }
}

fn main() {}
