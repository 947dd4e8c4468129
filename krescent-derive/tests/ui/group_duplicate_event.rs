use krescent::prelude::*;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.added")]
struct BookAdded {
    copies: u32,
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.lent")]
struct BookLent {}

#[derive(EventModel, Default)]
#[model(name = "books")]
struct Books {
    copies: u32,
}

#[krescent::handlers]
impl Books {
    #[group(BookAdded, BookLent, BookAdded)]
    fn added(&mut self, group: Group<'_>) {
        self.copies += u32::try_from(group.len()).unwrap_or(u32::MAX);
    }
}

fn main() {}