//! A lending library's write model: lending a book succeeds only while a copy is available,
//! decided from eight tasks at once.
//!
//! ```sh
//! cargo run --example lending
//! ```

use std::collections::BTreeSet;

use krescent::prelude::*;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.copies_added")]
struct CopiesAdded {
    copies: u32,
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.lent")]
struct BookLent {
    member: String,
}

/// One book's stream, as decisions see it; its `#[checkpoint]` fields are its snapshot, taken
/// every 10 events of the stream.
#[derive(EventModel, Default)]
#[model(name = "lending.book", version = 1)]
#[checkpoint(strategy = "fixed_events(10)", storage = "memory")]
struct Book {
    #[checkpoint]
    copies: u32,
    #[checkpoint]
    lent_to: BTreeSet<String>,
}

#[krescent::handlers]
impl Book {
    fn added(&mut self, e: &CopiesAdded) {
        self.copies += e.copies;
    }

    fn lent(&mut self, e: BookLent) {
        self.lent_to.insert(e.member);
    }
}

#[derive(Debug, thiserror::Error)]
enum LendError {
    #[error("no copy is available")]
    NotAvailable,
    #[error(transparent)]
    Encode(#[from] serde_json::Error),
}

impl Book {
    /// The command: lend a copy to `member`, if one is available.
    fn lend(&self, member: &str) -> Result<Vec<NewEvent>, LendError> {
        if self.lent_to.len() >= self.copies as usize {
            return Err(LendError::NotAvailable);
        }
        Ok(vec![NewEvent::new(&BookLent {
            member: member.to_owned(),
        })?])
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let krescent = Krescent::new(InMemoryEventStore::new());
    krescent
        .decide::<Book>("book-dune")
        .run(|_| Ok::<_, LendError>(vec![NewEvent::new(&CopiesAdded { copies: 5 })?]))
        .await?;

    let members = ["ada", "bob", "cy", "dee", "eve", "fay", "gus", "hal"];
    let tasks: Vec<_> = members
        .into_iter()
        .map(|member| {
            let krescent = krescent.clone();
            tokio::spawn(async move {
                let decided = krescent
                    .decide::<Book>("book-dune")
                    .retries(10)
                    .run(|book| book.lend(member))
                    .await;
                (member, decided)
            })
        })
        .collect();
    let (mut lent, mut refused) = (0, 0);
    for task in tasks {
        match task.await? {
            (member, Ok(decided)) => {
                lent += 1;
                println!(
                    "{member}: lent (version {}, {} attempt(s))",
                    decided.stream_version, decided.attempts
                );
            }
            (member, Err(error)) if error.rejected().is_some() => {
                refused += 1;
                println!("{member}: {error}");
            }
            (_, Err(error)) => return Err(error.into()),
        }
    }
    let book = krescent.load::<Book>("book-dune").await?;
    println!(
        "summary: lent={lent} refused={refused} copies={} lent_to={}",
        book.model.copies,
        book.model.lent_to.len()
    );
    Ok(())
}
