use krescent::prelude::*;

#[derive(Event, Serialize, Deserialize)]
#[event(revision = 2)]
struct BookAdded {
    copies: u32,
}

fn main() {}
