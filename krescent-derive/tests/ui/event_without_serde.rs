use krescent::prelude::*;

#[derive(Event)]
#[event(name = "book.added")]
struct BookAdded {
    copies: u32,
}

fn main() {}
