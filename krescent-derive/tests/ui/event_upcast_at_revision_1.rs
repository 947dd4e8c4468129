use krescent::prelude::*;

#[derive(Deserialize)]
struct BookAddedV0 {
    title: String,
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.added", upcast(1 = BookAddedV0))]
struct BookAdded {
    name: String,
}

fn main() {}
