//! Two event types with one recorded name handled by one model: `#[handlers]` refuses them at
//! compile time (see `krescent-derive/tests/ui/handler_events_same_name.rs`); where it cannot
//! see them (a hand-written `Handlers` impl, a generic handlers block), the model does not start.

use std::marker::PhantomData;

use krescent::event::{EventType, RecordedEvent};
use krescent::model::Handlers;
use krescent::prelude::*;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.added")]
struct BookAdded {
    copies: u32,
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.added", revision = 2)]
struct BookAddedAgain {
    copies: u32,
}

#[derive(EventModel, Default)]
#[model(name = "books.by_hand")]
#[checkpoint(strategy = "always", storage = "memory")]
struct ByHand {
    #[checkpoint]
    copies: u32,
}

impl Handlers for ByHand {
    const EVENTS: &'static [EventType] = &[
        EventType::new("book.added", 1),
        EventType::new("book.added", 2),
    ];

    async fn handle(&mut self, event: &RecordedEvent) -> Result<(), HandlerError> {
        self.copies += event.decode::<BookAdded>()?.copies;
        Ok(())
    }
}

/// A generic block: its constants cannot name `T`, so the check is left to the start.
#[derive(EventModel, Default)]
#[model(name = "books.generic")]
struct Generic<T: Send + Default + 'static> {
    copies: u32,
    marker: PhantomData<fn() -> T>,
}

#[krescent::handlers]
impl<T: Send + Default + 'static> Generic<T> {
    fn added(&mut self, e: &BookAdded) {
        self.copies += e.copies;
    }

    fn added_again(&mut self, e: &BookAddedAgain) {
        self.copies += e.copies;
    }
}

#[tokio::test]
async fn a_model_with_two_event_types_of_one_name_does_not_start() {
    let krescent = Krescent::new(InMemoryEventStore::new());
    krescent
        .store()
        .append(
            "book-1",
            ExpectedVersion::NoStream,
            vec![NewEvent::new(&BookAdded { copies: 1 }).expect("encode")],
        )
        .await
        .expect("append");
    match krescent.catch_up(ByHand::default()).await {
        Err(
            error @ Error::DuplicateEventName {
                model: "books.by_hand",
                name: "book.added",
            },
        ) => {
            assert!(error.to_string().contains("`book.added`"), "{error}");
        }
        other => panic!(
            "expected a duplicate name, got {:?}",
            other.map(|c| c.position)
        ),
    }
    assert!(matches!(
        krescent.restore_only(ByHand::default()).await,
        Err(Error::DuplicateEventName { .. })
    ));
    let running = krescent.stream(Generic::<u8>::default());
    assert!(matches!(
        running.shutdown().await,
        Err(Error::DuplicateEventName {
            model: "books.generic",
            ..
        })
    ));
}
