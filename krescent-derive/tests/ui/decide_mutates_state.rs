use krescent::prelude::*;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.lent")]
struct BookLent {
    member: String,
}

#[derive(EventModel, Default)]
#[model(name = "books")]
struct Book {
    lent: u32,
}

#[krescent::handlers]
impl Book {
    fn lent(&mut self, _: &BookLent) {
        self.lent += 1;
    }
}

// A decision sees the state, it does not change it: only appended events do.
async fn lend(krescent: Krescent<InMemoryEventStore>) {
    let _ = krescent
        .decide::<Book>("book-1")
        .run(|book| {
            book.lent += 1;
            Ok::<_, std::io::Error>(Vec::new())
        })
        .await;
}

fn main() {
    drop(lend);
}
