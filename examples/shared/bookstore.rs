//! The bookstore's events and their seeded generator, shared by the examples and the tests
//! that run them.

use std::error::Error;

use krescent::prelude::*;
use krescent::store::{EventStore, ExpectedVersion};

/// Copies of a book were added to the shelves.
#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.added")]
pub struct BookAdded {
    pub book_id: String,
    pub title: String,
    pub copies: u32,
}

/// A copy was lent to a user.
#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.lent")]
pub struct BookLent {
    pub book_id: String,
    pub user_id: String,
}

/// A user returned a copy.
#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.returned")]
pub struct BookReturned {
    pub book_id: String,
    pub user_id: String,
}

/// A book was taken off the shelves.
#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.removed")]
pub struct BookRemoved {
    pub book_id: String,
}

/// `SplitMix64`: a tiny seeded generator, so every run appends the same events for the same log.
struct Rng(u64);

impl Rng {
    /// A number in `0..n`.
    #[allow(clippy::cast_possible_truncation)] // the result is below `n`, which fits
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

const TITLES: [&str; 6] = [
    "Dune",
    "Emma",
    "Ulysses",
    "Beloved",
    "Middlemarch",
    "Solaris",
];

/// Appends `count` seeded events in one batch, as the stream `import-<head>`; the seed is the
/// store's head, so a run continues the sequence of the previous one.
pub async fn append_batch<S: EventStore>(store: &S, count: u32) -> Result<(), Box<dyn Error>> {
    let head = store.head().await?;
    let mut rng = Rng(0x2a ^ head.get());
    let books = 20 + usize::try_from(head.get() / 50)?;
    let mut batch = Vec::new();
    for _ in 0..count {
        let book_id = format!("book-{}", rng.below(books));
        let user_id = format!("user-{}", rng.below(100));
        batch.push(match rng.below(10) {
            0..=2 => NewEvent::new(&BookAdded {
                title: TITLES[rng.below(TITLES.len())].to_owned(),
                copies: [1, 2, 3][rng.below(3)],
                book_id,
            })?,
            3..=5 => NewEvent::new(&BookLent { book_id, user_id })?,
            6..=8 => NewEvent::new(&BookReturned { book_id, user_id })?,
            _ => NewEvent::new(&BookRemoved { book_id })?,
        });
    }
    store
        .append(&format!("import-{head}"), ExpectedVersion::NoStream, batch)
        .await?;
    Ok(())
}
