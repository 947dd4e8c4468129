//! The snapshot budget counts what a snapshot cost the model task, not the time that passed:
//! a process paused in the middle of a snapshot (`SIGSTOP`, a loaded machine) takes its next
//! checkpoints as its strategy says, instead of waiting forty times the pause.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use krescent::prelude::*;
use krescent_testkit::recording::RecordingStorage;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "tick")]
struct Tick {
    n: u32,
}

/// Whether the next snapshot is paused: its serialization sleeps, as a stopped process would.
static PAUSE_NEXT: AtomicBool = AtomicBool::new(false);

/// A number whose serialization is paused once when [`PAUSE_NEXT`] says so.
#[derive(Debug, Default, Deserialize)]
#[serde(transparent)]
struct Seen(u32);

impl Serialize for Seen {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if PAUSE_NEXT.swap(false, Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(400));
        }
        self.0.serialize(serializer)
    }
}

#[derive(Debug, EventModel, Default)]
#[model(name = "paused", version = 1)]
#[checkpoint(strategy = "fixed_events(1)", storage = "recording")]
struct Paused {
    #[checkpoint]
    seen: Seen,
}

#[krescent::handlers]
impl Paused {
    /// Slower than a small snapshot's budget (39 times its CPU time, a few milliseconds in a
    /// debug build on a loaded machine), so that every checkpoint asked for is taken.
    async fn tick(&mut self, e: &Tick) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if e.n == 1 {
            PAUSE_NEXT.store(true, Ordering::SeqCst);
        }
        self.seen = Seen(e.n);
    }
}

#[tokio::test]
async fn a_pause_in_the_middle_of_a_snapshot_does_not_hold_the_next_checkpoints_back() {
    let recording = Arc::new(RecordingStorage::new());
    let krescent = Krescent::new(InMemoryEventStore::new())
        .with_shared_storage("recording", recording.clone());
    let ticks: Vec<NewEvent> = (1..=40)
        .map(|n| NewEvent::new(&Tick { n }).expect("encode"))
        .collect();
    krescent
        .store()
        .append("ticks", ExpectedVersion::NoStream, ticks)
        .await
        .expect("append");
    let run = krescent
        .catch_up(Paused::default())
        .await
        .expect("catch up");
    assert_eq!(run.model.seen.0, 40);
    let written = recording.written();
    assert_eq!(written.first(), Some(&1), "the paused snapshot is written");
    // Counted in wall-clock time, the 400 ms pause would space the next snapshot 15 s later:
    // no checkpoint between the first and the last.
    assert!(
        written.len() > 20,
        "after the pause, the strategy's checkpoints were held back: {written:?}"
    );
}
