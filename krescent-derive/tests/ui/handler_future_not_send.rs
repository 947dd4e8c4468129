use krescent::prelude::*;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.added")]
struct BookAdded {
    copies: u32,
}

#[derive(EventModel, Default)]
#[model(name = "books")]
struct Books {
    copies: u32,
}

#[krescent::handlers]
impl Books {
    async fn added(&mut self, e: &BookAdded) {
        let shared = std::rc::Rc::new(e.copies);
        std::future::ready(()).await;
        self.copies += *shared;
    }
}

fn main() {}
