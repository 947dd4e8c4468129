use krescent::prelude::*;

#[derive(EventModel)]
#[model(name = "books")]
struct Books {
    copies: u32,
}

#[krescent::handlers]
impl Default for Books {
    fn default() -> Self {
        Books { copies: 0 }
    }
}

fn main() {}
