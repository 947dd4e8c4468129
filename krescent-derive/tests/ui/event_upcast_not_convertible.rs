use krescent::prelude::*;

#[derive(Deserialize)]
struct BookAddedV1 {
    title: String,
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.added", revision = 2, upcast(1 = BookAddedV1))]
struct BookAdded {
    name: String,
}

fn main() {}
