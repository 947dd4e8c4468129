use krescent::prelude::*;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.lent")]
struct BookLent {
    member: String,
}

// A write model is built from scratch when a stream has no snapshot: it must be `Default`.
#[derive(EventModel)]
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

async fn lend(krescent: Krescent<InMemoryEventStore>) {
    let _ = krescent
        .decide::<Book>("book-1")
        .run(|_| Ok::<_, std::io::Error>(Vec::new()))
        .await;
}

fn main() {
    drop(lend);
}
