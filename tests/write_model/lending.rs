//! The lending model the write-model tests share: a book with copies, lent to members.

#![allow(dead_code)] // each test file uses its part

use std::collections::BTreeSet;

use krescent::prelude::*;
use krescent::{Handlers as _, RecordedEvent};

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "book.copies_added")]
pub struct CopiesAdded {
    pub copies: u32,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "book.lent")]
pub struct BookLent {
    pub member: String,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "book.returned")]
pub struct BookReturned {
    pub member: String,
}

#[derive(EventModel, Default, Debug, Clone, PartialEq)]
#[model(name = "lending.book", version = 1)]
#[checkpoint(strategy = "fixed_events(3)", storage = "memory")]
pub struct Book {
    #[checkpoint]
    pub copies: u32,
    #[checkpoint]
    pub lent: BTreeSet<String>,
}

#[krescent::handlers]
impl Book {
    fn added(&mut self, e: &CopiesAdded) {
        self.copies += e.copies;
    }

    fn lent(&mut self, e: BookLent) {
        self.lent.insert(e.member);
    }

    fn returned(&mut self, e: &BookReturned) {
        self.lent.remove(&e.member);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LendError {
    #[error("no copy is available")]
    NotAvailable,
    #[error("`{0}` has this book already")]
    AlreadyLent(String),
    #[error("`{0}` does not have this book")]
    NotLent(String),
    #[error(transparent)]
    Encode(#[from] serde_json::Error),
}

impl Book {
    pub fn lend(&self, member: &str) -> Result<Vec<NewEvent>, LendError> {
        if self.lent.contains(member) {
            return Err(LendError::AlreadyLent(member.to_owned()));
        }
        if self.lent.len() >= self.copies as usize {
            return Err(LendError::NotAvailable);
        }
        Ok(vec![NewEvent::new(&BookLent {
            member: member.to_owned(),
        })?])
    }

    pub fn give_back(&self, member: &str) -> Result<Vec<NewEvent>, LendError> {
        if !self.lent.contains(member) {
            return Err(LendError::NotLent(member.to_owned()));
        }
        Ok(vec![NewEvent::new(&BookReturned {
            member: member.to_owned(),
        })?])
    }

    #[allow(clippy::unused_self)] // a command like the others
    pub fn add(&self, copies: u32) -> Result<Vec<NewEvent>, LendError> {
        Ok(vec![NewEvent::new(&CopiesAdded { copies })?])
    }

    /// The invariant every state must keep.
    pub fn check(&self) {
        assert!(
            self.lent.len() <= self.copies as usize,
            "more lent than copies: {self:?}"
        );
    }
}

/// The book replayed by hand from every event of `stream` in `store`.
pub async fn replay<S: EventStore>(store: &S, stream: &str) -> (Book, Vec<RecordedEvent>) {
    let events = store
        .read_matching(&Query::stream(stream), Position::START, usize::MAX)
        .await
        .expect("read the stream");
    let mut book = Book::default();
    for event in &events {
        book.handle(event).await.expect("handle");
        book.check();
    }
    (book, events)
}

/// How many `book.lent` events `events` holds.
pub fn lends(events: &[RecordedEvent]) -> usize {
    events
        .iter()
        .filter(|e| e.event_type() == "book.lent")
        .count()
}
