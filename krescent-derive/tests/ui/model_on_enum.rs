use krescent::prelude::*;

#[derive(EventModel)]
#[model(name = "books")]
enum Books {
    Open,
    Closed,
}

#[krescent::handlers]
impl Books {}

fn main() {}
