use krescent::prelude::*;

#[derive(EventModel, Default)]
#[model(name = "books")]
struct Books {
    copies: u32,
}

fn main() {}
