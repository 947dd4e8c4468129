use krescent::prelude::*;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.added", revision = 2, compatible_since = 1)]
struct BookAdded {
    name: String,
}

fn main() {}
