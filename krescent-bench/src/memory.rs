//! The in-memory figures: replay against a hand-written loop, and the cost of checkpoints.

use std::error::Error;
use std::sync::Arc;

use krescent::store::{EventStore, ExpectedVersion, InMemoryEventStore};
use krescent::{Krescent, Position};
use krescent_testkit::all_documents_model;
use krescent_testkit::workload::{apply_by_hand, Documents, Workload, SEED};

use crate::measure::{median, throughput};
use crate::Options;

all_documents_model! {
    #[model(name = "bench.documents", version = 1)]
    pub(crate) struct Replayed;
}

all_documents_model! {
    #[model(name = "bench.documents", version = 1)]
    #[checkpoint(strategy = "fixed_events(100)", storage = "memory")]
    struct Checkpointed;
}

/// Fills a memory store with the workload.
pub(crate) async fn filled_store(events: usize) -> Result<Arc<InMemoryEventStore>, Box<dyn Error>> {
    let store = Arc::new(InMemoryEventStore::new());
    for event in Workload::new(SEED).take(events) {
        store
            .append(
                event.document_id(),
                ExpectedVersion::Any,
                vec![event.to_new_event()],
            )
            .await?;
    }
    Ok(store)
}

pub(crate) async fn run(options: &Options) -> Result<(), Box<dyn Error>> {
    let store = filled_store(options.events).await?;
    let stored = store.read_after(Position::START, usize::MAX).await?;

    let baseline = median(options.reps, || async {
        let mut documents = Documents::new();
        for event in &stored {
            apply_by_hand(&mut documents, event.event_type(), &event.payload)?;
        }
        Ok::<_, serde_json::Error>(documents.len())
    })
    .await?;
    let replay = median(options.reps, || async {
        let caught_up = Krescent::with_shared_store(store.clone())
            .catch_up(Replayed::default())
            .await?;
        Ok::<_, krescent::Error>(caught_up.model.documents.len())
    })
    .await?;
    throughput("memory_replay", options.events, replay, baseline);

    // A fresh Krescent per run: a fresh memory storage, so every run replays from scratch.
    let checkpointed = median(options.reps, || async {
        let caught_up = Krescent::with_shared_store(store.clone())
            .catch_up(Checkpointed::default())
            .await?;
        Ok::<_, krescent::Error>(caught_up.model.documents.len())
    })
    .await?;
    throughput(
        "memory_replay_checkpoints",
        options.events,
        checkpointed,
        replay,
    );
    Ok(())
}
