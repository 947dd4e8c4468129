//! The model of DESIGN.md ("What a user writes"), as written, against PostgreSQL.

use std::collections::HashMap;

use krescent::prelude::*;
use krescent::store::{EventStore, ExpectedVersion};
use krescent::{Origin, Position};
use krescent_testkit::postgres::fresh_database;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.added", revision = 1)]
struct BookAdded {
    book_id: String,
    title: String,
    copies: u32,
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.lent")]
struct BookLent {
    book_id: String,
    user_id: String,
}

#[derive(Debug, thiserror::Error)]
#[error("no copy of `{0}` left")]
struct MyError(String);

#[derive(EventModel, Default)]
#[model(name = "books.available", version = 1)]
#[checkpoint(strategy = "fixed_events(25)", storage = "postgres")]
struct AvailableBooks {
    #[checkpoint] // serialized into the checkpoint bucket
    available: HashMap<String, u32>,
    lookups: u64, // not annotated: not checkpointed, Default on restore
}

#[krescent::handlers]
impl AvailableBooks {
    fn added(&mut self, e: &BookAdded) {
        *self.available.entry(e.book_id.clone()).or_default() += e.copies;
    }
    async fn lent(&mut self, e: &BookLent, meta: &EventMeta) -> Result<(), MyError> {
        self.lookups += 1;
        tokio::task::yield_now().await; // an async handler may await anything
        let copies = self.available.get_mut(&e.book_id).filter(|c| **c > 0);
        *copies.ok_or_else(|| MyError(format!("{} at {}", e.book_id, meta.position)))? -= 1;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_design_model_runs_as_written() {
    let database = fresh_database().await;
    let store = database.event_store().await;
    let storage = store.checkpoint_storage();
    storage.migrate().await.expect("migrate");
    let krescent = Krescent::new(store).with_storage("postgres", storage);
    let mut events = Vec::new();
    for i in 0..30 {
        events.push(
            NewEvent::new(&BookAdded {
                book_id: format!("b{}", i % 3),
                title: "Dune".into(),
                copies: 2,
            })
            .expect("encode"),
        );
        events.push(
            NewEvent::new(&BookLent {
                book_id: format!("b{}", i % 3),
                user_id: "ada".into(),
            })
            .expect("encode"),
        );
    }
    krescent
        .store()
        .append("books", ExpectedVersion::NoStream, events)
        .await
        .expect("append");

    let first = krescent
        .catch_up(AvailableBooks::default())
        .await
        .expect("first run");
    assert_eq!(first.origin, Origin::Scratch);
    assert_eq!(first.model.available["b0"], 10);
    assert_eq!(first.model.lookups, 30);

    let second = krescent
        .catch_up(AvailableBooks::default())
        .await
        .expect("second run");
    assert_eq!(
        second.origin,
        Origin::Restored {
            position: Position::new(60)
        }
    );
    assert_eq!(second.model.available, first.model.available);
    assert_eq!(
        second.model.lookups, 0,
        "not checkpointed: Default after a restore"
    );
}
