use krescent::prelude::*;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.added", revision = 0)]
struct BookAdded {
    copies: u32,
}

fn main() {}
