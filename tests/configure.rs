//! Start-up overrides of a model's `#[checkpoint]` attribute: the same model type checkpoints
//! as its attribute says, or as an operator's strategy string (parsed by the attribute's own
//! grammar) says, into the attribute's storage or another.

use std::sync::Arc;
use std::time::Duration;

use krescent::checkpoint::Strategy;
use krescent::prelude::*;
use krescent_testkit::recording::RecordingStorage;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "tick")]
struct Tick {
    n: u32,
}

#[derive(Debug, EventModel, Default)]
#[model(name = "ticks", version = 1)]
#[checkpoint(strategy = "fixed_events(10)", storage = "recording")]
struct Ticks {
    #[checkpoint]
    seen: u32,
}

#[krescent::handlers]
impl Ticks {
    /// Slower than a snapshot's budget, so that every checkpoint the strategy asks for is taken.
    async fn tick(&mut self, e: &Tick) {
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.seen = e.n;
    }
}

#[derive(EventModel, Default)]
#[model(name = "plain")]
struct Plain {}

#[krescent::handlers]
impl Plain {}

/// 25 ticks, and two recording storages: `"recording"` (the attribute's) and `"other"`.
async fn setup() -> (
    Krescent<InMemoryEventStore>,
    Arc<RecordingStorage>,
    Arc<RecordingStorage>,
) {
    let (recording, other) = (
        Arc::new(RecordingStorage::new()),
        Arc::new(RecordingStorage::new()),
    );
    let krescent = Krescent::new(InMemoryEventStore::new())
        .with_shared_storage("recording", recording.clone())
        .with_shared_storage("other", other.clone());
    let ticks: Vec<NewEvent> = (1..=25)
        .map(|n| NewEvent::new(&Tick { n }).expect("encode"))
        .collect();
    krescent
        .store()
        .append("ticks", ExpectedVersion::NoStream, ticks)
        .await
        .expect("append");
    (krescent, recording, other)
}

#[tokio::test]
async fn the_attribute_is_the_default_and_an_override_replaces_it() {
    let (krescent, recording, _) = setup().await;
    let run = krescent
        .catch_up(Ticks::default())
        .await
        .expect("attribute");
    assert_eq!(run.model.seen, 25);
    assert_eq!(
        recording.written(),
        [10, 20, 25],
        "fixed_events(10), and at the stop"
    );

    let (mut krescent, recording, _) = setup().await;
    krescent
        .configure::<Ticks>()
        .strategy("fixed_events(4) | fixed_time(1h)")
        .expect("a valid strategy");
    let run = krescent.catch_up(Ticks::default()).await.expect("override");
    assert_eq!(run.checkpoints, 7);
    assert_eq!(recording.written(), [4, 8, 12, 16, 20, 24, 25]);

    let (mut krescent, recording, _) = setup().await;
    krescent
        .configure::<Ticks>()
        .strategy("on_shutdown")
        .expect("a valid strategy");
    krescent.catch_up(Ticks::default()).await.expect("override");
    assert_eq!(recording.written(), [25]);

    let (mut krescent, recording, _) = setup().await;
    krescent
        .configure::<Ticks>()
        .strategy_value(Strategy::Never)
        .expect("a strategy");
    let run = krescent.catch_up(Ticks::default()).await.expect("override");
    assert_eq!((run.checkpoints, recording.written()), (0, vec![]));
}

#[tokio::test]
async fn the_storage_can_be_overridden_and_clones_keep_the_override() {
    let (mut krescent, recording, other) = setup().await;
    krescent
        .configure::<Ticks>()
        .strategy("fixed_events(5)")
        .expect("a valid strategy")
        .storage("other")
        .expect("a checkpointing model");
    let clone = krescent.clone();
    clone.catch_up(Ticks::default()).await.expect("override");
    assert_eq!(recording.written(), Vec::<u64>::new());
    assert_eq!(other.written(), [5, 10, 15, 20, 25]);
    let again = krescent
        .restore_only(Ticks::default())
        .await
        .expect("restore");
    assert_eq!(
        again.origin,
        Origin::Restored {
            position: Position::new(25)
        }
    );

    krescent
        .configure::<Ticks>()
        .storage("nowhere")
        .expect("resolved when the model starts");
    match krescent.catch_up(Ticks::default()).await {
        Err(Error::UnknownStorage { name, .. }) => assert_eq!(name, "nowhere"),
        other => panic!("expected an unknown storage, got {other:?}"),
    }
}

#[tokio::test]
async fn a_bad_override_is_a_typed_error_that_lists_the_strategies() {
    let (mut krescent, _, _) = setup().await;
    for (text, says) in [
        (
            "fixed_evnts(1000)",
            "unknown checkpoint strategy `fixed_evnts`",
        ),
        ("sometimes", "unknown checkpoint strategy `sometimes`"),
        ("fixed_events(1000) |", "missing checkpoint strategy"),
        ("fixed_events(1000", "malformed checkpoint strategy"),
    ] {
        match krescent.configure::<Ticks>().strategy(text) {
            Err(error @ Error::InvalidStrategy { model: "ticks", .. }) => {
                let message = error.to_string();
                assert!(message.contains(says), "{message}");
                assert!(
                    message.contains("expected one of `fixed_events(N)`, `fixed_time(D)`, `always`, `manual`, `on_shutdown`, `never`"),
                    "{message}"
                );
                assert!(message.contains(&format!("`{text}`")), "{message}");
            }
            other => panic!("{text}: expected a strategy error, got {other:?}"),
        }
    }
    for (text, says) in [
        (
            "fixed_events(0)",
            "`fixed_events(0)` would never checkpoint",
        ),
        ("fixed_time(10)", "duration `10` needs a unit"),
        ("never | always", "`never` cannot be combined"),
    ] {
        let error = krescent
            .configure::<Ticks>()
            .strategy(text)
            .expect_err(text);
        assert!(error.to_string().contains(says), "{error}");
    }
    match krescent.configure::<Plain>().strategy("always") {
        Err(Error::NotCheckpointed { model: "plain" }) => {}
        other => panic!("expected a not-checkpointed error, got {other:?}"),
    }
    // Nothing of the mistakes was applied: the attribute still rules.
    let run = krescent
        .catch_up(Ticks::default())
        .await
        .expect("attribute");
    assert_eq!(run.checkpoints, 3);
}
