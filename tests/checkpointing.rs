//! The checkpointing scenarios of the reference guide, ported: failures, shutdown, manual
//! checkpoints, restore-only, version bumps, corrupt checkpoints and strategy counters.

use std::sync::Arc;
use std::time::Duration;

use krescent::checkpoint::{
    BucketValue, CheckpointStorage as _, CheckpointVersion, FileCheckpointStorage, StoredCheckpoint,
};
use krescent::prelude::*;
use krescent_testkit::recording::RecordingStorage;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "counter.added")]
struct Added {
    n: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("refusing {0}")]
struct Refused(u32);

/// Declares a counting model with the given strategy and extra `#[checkpoint]` options.
macro_rules! counter_model {
    ($name:ident, $namespace:literal, version = $version:literal, $($checkpoint:tt)*) => {
        #[derive(Debug, EventModel, Default)]
        #[model(name = $namespace, version = $version)]
        #[checkpoint($($checkpoint)*)]
        struct $name {
            #[checkpoint]
            seen: Vec<u32>,
            /// Not checkpointed: what this run was handed.
            delivered: Vec<u32>,
            /// Not checkpointed: fail on this number.
            fail_on: Option<u32>,
            origin: Option<Origin>,
            caught_up_at: Vec<Position>,
        }

        #[krescent::handlers]
        impl $name {
            fn added(&mut self, e: &Added) -> Result<(), Refused> {
                self.delivered.push(e.n);
                if self.fail_on == Some(e.n) {
                    return Err(Refused(e.n));
                }
                self.seen.push(e.n);
                Ok(())
            }

            #[on_start]
            fn started(&mut self, origin: &Origin) {
                self.origin = Some(origin.clone());
            }

            #[on_caught_up]
            fn caught_up(&mut self, position: Position) {
                self.caught_up_at.push(position);
            }
        }
    };
}

counter_model!(
    Always,
    "counter.always",
    version = 1,
    strategy = "always",
    storage = "memory"
);
counter_model!(
    Every100,
    "counter.every100",
    version = 1,
    strategy = "fixed_events(100)",
    storage = "recording"
);
counter_model!(
    Manual,
    "counter.manual",
    version = 1,
    strategy = "manual",
    storage = "recording"
);
counter_model!(
    FiveOrManual,
    "counter.five",
    version = 1,
    strategy = "fixed_events(5) | manual",
    storage = "recording"
);
counter_model!(
    FileV1,
    "counter.file",
    version = 1,
    strategy = "always",
    storage = "file"
);
counter_model!(
    FileV2,
    "counter.file",
    version = 2,
    strategy = "always",
    storage = "file"
);
counter_model!(
    FileStrict,
    "counter.file",
    version = 1,
    strategy = "always",
    storage = "file",
    on_invalid = "fail"
);
counter_model!(
    Unregistered,
    "counter.nowhere",
    version = 1,
    strategy = "always",
    storage = "nowhere"
);

#[derive(EventModel, Default)]
#[model(name = "counter.plain", version = 1)]
struct Plain {
    seen: Vec<u32>,
}

#[krescent::handlers]
impl Plain {
    fn added(&mut self, e: &Added) {
        self.seen.push(e.n);
    }
}

struct Setup {
    krescent: Krescent<InMemoryEventStore>,
    recording: Arc<RecordingStorage>,
    dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let recording = Arc::new(RecordingStorage::new());
    let krescent = Krescent::new(InMemoryEventStore::new())
        .with_shared_storage("recording", recording.clone())
        .with_storage(
            "file",
            FileCheckpointStorage::open(dir.path()).expect("storage"),
        );
    Setup {
        krescent,
        recording,
        dir,
    }
}

async fn append(krescent: &Krescent<InMemoryEventStore>, numbers: impl IntoIterator<Item = u32>) {
    for n in numbers {
        krescent
            .store()
            .append(
                "counter",
                ExpectedVersion::Any,
                vec![NewEvent::new(&Added { n }).expect("encode")],
            )
            .await
            .expect("append");
    }
}

/// Waits until the recording storage has written `count` checkpoints.
async fn written(recording: &RecordingStorage, count: usize) -> Vec<u64> {
    for _ in 0..500 {
        if recording.written().len() >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    recording.written()
}

#[tokio::test]
async fn a_failed_handler_stops_the_run_and_its_event_is_delivered_again() {
    let Setup { krescent, .. } = setup();
    append(&krescent, 1..=3).await;
    let failing = Always {
        fail_on: Some(2),
        ..Always::default()
    };
    match krescent.catch_up(failing).await {
        Err(Error::Handler {
            model,
            event_type,
            position,
            source,
        }) => {
            assert_eq!(
                (model, event_type.as_str(), position),
                ("counter.always", "counter.added", Position::new(2))
            );
            assert_eq!(source.to_string(), "refusing 2");
        }
        other => panic!("expected the handler error, got {other:?}"),
    }
    let again = krescent
        .catch_up(Always::default())
        .await
        .expect("second run");
    assert_eq!(
        again.origin,
        Origin::Restored {
            position: Position::new(1)
        }
    );
    assert_eq!(
        again.model.delivered,
        [2, 3],
        "only the failed event and those after it are delivered again"
    );
    assert_eq!(again.model.seen, [1, 2, 3]);
}

#[tokio::test]
async fn a_graceful_shutdown_writes_a_final_checkpoint() {
    let Setup {
        krescent,
        recording,
        ..
    } = setup();
    append(&krescent, 1..=10).await;
    let running = krescent.stream(Every100::default());
    running.reached(Position::new(10)).await.expect("reached");
    assert_eq!(running.status(), krescent::Status::Running);
    let stopped = running.shutdown().await.expect("shutdown");
    assert_eq!(stopped.model.seen.len(), 10);
    assert_eq!(
        recording.written(),
        [10],
        "fixed_events(100) took no checkpoint before the stop, one at the stop"
    );

    append(&krescent, 11..=15).await;
    let next = krescent
        .catch_up(Every100::default())
        .await
        .expect("next run");
    assert_eq!(
        next.origin,
        Origin::Restored {
            position: Position::new(10)
        }
    );
    assert_eq!(next.model.delivered, [11, 12, 13, 14, 15]);
    assert_eq!(next.processed, 5);
}

#[tokio::test]
async fn manual_checkpoints_only_when_requested_at_the_next_event() {
    let Setup {
        krescent,
        recording,
        ..
    } = setup();
    append(&krescent, 1..=5).await;
    let running = krescent.stream(Manual::default());
    running.reached(Position::new(5)).await.expect("reached");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        recording.written().is_empty(),
        "no checkpoint before a request"
    );
    running.request_checkpoint();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        recording.written().is_empty(),
        "the request waits for the next event"
    );
    append(&krescent, [6]).await;
    assert_eq!(written(&recording, 1).await, [6]);
    append(&krescent, 7..=9).await;
    running.reached(Position::new(9)).await.expect("reached");
    let stopped = running.shutdown().await.expect("shutdown");
    assert_eq!(
        recording.written(),
        [6],
        "manual takes no checkpoint at shutdown without a request"
    );
    assert_eq!(stopped.model.seen, (1..=9).collect::<Vec<_>>());
}

#[tokio::test]
async fn restore_only_without_a_checkpoint_says_so_and_writes_nothing() {
    let Setup {
        krescent,
        recording,
        ..
    } = setup();
    append(&krescent, 1..=3).await;
    let restored = krescent
        .restore_only(Every100::default())
        .await
        .expect("restore");
    assert_eq!(restored.origin, Origin::Scratch);
    assert_eq!(restored.position, Position::START);
    assert!(restored.model.seen.is_empty() && restored.model.delivered.is_empty());
    assert!(recording.written().is_empty());
    assert!(recording.list().await.expect("list").is_empty());

    krescent
        .catch_up(Every100::default())
        .await
        .expect("catch up");
    let restored = krescent
        .restore_only(Every100::default())
        .await
        .expect("restore");
    assert_eq!(
        restored.origin,
        Origin::Restored {
            position: Position::new(3)
        }
    );
    assert_eq!(restored.model.seen, [1, 2, 3]);
    assert!(
        restored.model.delivered.is_empty(),
        "restore_only reads no event"
    );
}

#[tokio::test]
async fn bumping_the_model_version_rebuilds_from_scratch() {
    let Setup {
        krescent,
        dir: _dir,
        ..
    } = setup();
    append(&krescent, 1..=4).await;
    krescent.catch_up(FileV1::default()).await.expect("v1");
    let v2 = krescent.catch_up(FileV2::default()).await.expect("v2");
    assert!(
        matches!(&v2.origin, Origin::Rebuilt { reason } if reason.contains("version")),
        "{:?}",
        v2.origin
    );
    assert_eq!(v2.model.delivered, [1, 2, 3, 4]);
    let v2_again = krescent
        .catch_up(FileV2::default())
        .await
        .expect("v2 again");
    assert_eq!(
        v2_again.origin,
        Origin::Restored {
            position: Position::new(4)
        }
    );
}

/// Damages the checkpoint file of `counter.file` in one of several ways.
fn damage(dir: &std::path::Path, how: &str) {
    let storage = FileCheckpointStorage::open(dir).expect("storage");
    let path = storage.path_of("counter.file");
    let text = std::fs::read_to_string(&path).expect("checkpoint file");
    // A checkpoint of another build, or with another bucket, written as a storage writes it
    // (with its checksum): unusable for what it holds, not for damage.
    let rewritten = |change: &dyn Fn(&mut StoredCheckpoint)| {
        let mut checkpoint = StoredCheckpoint::decode(text.as_bytes(), "test").expect("decode");
        change(&mut checkpoint);
        String::from_utf8(checkpoint.encode().expect("encode")).expect("JSON")
    };
    let damaged = match how {
        "truncated" => text[..text.len() / 2].to_owned(),
        "garbage" => "\u{0}\u{1}not json at all".to_owned(),
        "empty" => String::new(),
        "flipped bit" => text.replacen("\"position\":\"4\"", "\"position\":\"5\"", 1),
        "wrong version" => rewritten(&|c| {
            c.version = CheckpointVersion::from_text(c.version.as_str().replacen("v1-", "v9-", 1));
        }),
        "malformed position" => text.replacen("\"position\":\"4\"", "\"position\":\"four\"", 1),
        "missing field" => rewritten(&|c| {
            let seen = c.bucket.remove("seen").expect("seen");
            c.bucket.insert("unseen", seen);
        }),
        "wrong kind" => rewritten(&|c| {
            c.bucket
                .insert("seen", BucketValue::Str("1,2,3,4".to_owned()));
        }),
        other => panic!("unknown damage {other}"),
    };
    assert_ne!(damaged, text, "{how} changed the file");
    std::fs::write(&path, damaged).expect("write");
}

const DAMAGES: [&str; 8] = [
    "truncated",
    "garbage",
    "empty",
    "flipped bit",
    "wrong version",
    "malformed position",
    "missing field",
    "wrong kind",
];

#[tokio::test]
async fn a_corrupt_checkpoint_rebuilds_by_default() {
    for how in DAMAGES {
        let Setup { krescent, dir, .. } = setup();
        append(&krescent, 1..=4).await;
        krescent
            .catch_up(FileV1::default())
            .await
            .expect("first run");
        damage(dir.path(), how);
        let rebuilt = krescent.catch_up(FileV1::default()).await.expect("rebuild");
        assert!(
            matches!(rebuilt.origin, Origin::Rebuilt { .. }),
            "{how}: {:?}",
            rebuilt.origin
        );
        assert_eq!(rebuilt.model.seen, [1, 2, 3, 4], "{how}");
        let after = krescent
            .catch_up(FileV1::default())
            .await
            .expect("after the rebuild");
        assert_eq!(
            after.origin,
            Origin::Restored {
                position: Position::new(4)
            },
            "{how}: the rebuild wrote a good checkpoint"
        );
    }
}

#[tokio::test]
async fn a_corrupt_checkpoint_is_an_error_when_the_model_asks_for_it() {
    for how in DAMAGES {
        let Setup { krescent, dir, .. } = setup();
        append(&krescent, 1..=4).await;
        krescent
            .catch_up(FileStrict::default())
            .await
            .expect("first run");
        damage(dir.path(), how);
        match krescent.catch_up(FileStrict::default()).await {
            Err(Error::InvalidCheckpoint { namespace, reason }) => {
                assert_eq!(namespace, "counter.file", "{how}");
                assert!(!reason.is_empty());
            }
            other => panic!("{how}: expected an invalid-checkpoint error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn fixed_events_counts_again_after_every_checkpoint_also_a_manual_one() {
    let Setup {
        krescent,
        recording,
        ..
    } = setup();
    append(&krescent, 1..=2).await;
    let running = krescent.stream(FiveOrManual::default());
    running.reached(Position::new(2)).await.expect("reached");
    running.request_checkpoint();
    append(&krescent, [3]).await;
    assert_eq!(
        written(&recording, 1).await,
        [3],
        "the manual request at the next event"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    append(&krescent, 4..=10).await;
    running.reached(Position::new(10)).await.expect("reached");
    assert_eq!(
        written(&recording, 2).await,
        [3, 8],
        "five events after the manual checkpoint, not at 5"
    );
    running.shutdown().await.expect("shutdown");
    assert_eq!(
        recording.written(),
        [3, 8, 10],
        "and the unsaved rest at the stop"
    );
}

#[tokio::test]
async fn a_model_without_checkpointing_replays_everything_on_every_start() {
    let Setup { krescent, .. } = setup();
    append(&krescent, 1..=3).await;
    for _ in 0..2 {
        let run = krescent.catch_up(Plain::default()).await.expect("run");
        assert_eq!(run.origin, Origin::Scratch);
        assert_eq!(run.model.seen, [1, 2, 3]);
    }
}

#[tokio::test]
async fn an_unknown_storage_fails_before_any_event() {
    let Setup { krescent, .. } = setup();
    append(&krescent, 1..=3).await;
    match krescent.catch_up(Unregistered::default()).await {
        Err(Error::UnknownStorage {
            model,
            name,
            registered,
        }) => {
            assert_eq!((model, name.as_str()), ("counter.nowhere", "nowhere"));
            assert_eq!(registered, ["file", "memory", "recording"]);
        }
        other => panic!("expected an unknown-storage error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_model_learns_how_it_started_and_when_it_caught_up() {
    let Setup { krescent, .. } = setup();
    append(&krescent, 1..=3).await;
    let first = krescent.catch_up(Always::default()).await.expect("first");
    assert_eq!(first.model.origin, Some(Origin::Scratch));
    assert_eq!(first.model.caught_up_at, [Position::new(3)]);
    append(&krescent, 4..=5).await;
    let running = krescent.stream(Always::default());
    running.reached(Position::new(5)).await.expect("reached");
    append(&krescent, [6]).await;
    running.reached(Position::new(6)).await.expect("reached");
    let second = running.shutdown().await.expect("shutdown");
    assert_eq!(
        second.model.origin,
        Some(Origin::Restored {
            position: Position::new(3)
        })
    );
    assert_eq!(
        second.model.caught_up_at.first(),
        Some(&Position::new(5)),
        "caught up after the history"
    );
}

/// `restore_only` over a checkpoint it cannot use says so (nothing was rebuilt) and leaves the
/// checkpoint where it is.
#[tokio::test]
async fn restore_only_over_an_unusable_checkpoint_says_so_and_keeps_it() {
    let Setup { krescent, dir, .. } = setup();
    append(&krescent, 1..=4).await;
    krescent
        .catch_up(FileV1::default())
        .await
        .expect("first run");
    damage(dir.path(), "wrong version");
    let restored = krescent
        .restore_only(FileV1::default())
        .await
        .expect("restore only");
    assert!(
        matches!(&restored.origin, Origin::Unusable { reason } if reason.contains("version")),
        "{:?}",
        restored.origin
    );
    assert_eq!(restored.position, Position::START);
    assert!(restored.model.seen.is_empty());
    let storage = FileCheckpointStorage::open(dir.path()).expect("storage");
    assert!(
        storage.path_of("counter.file").exists(),
        "restore_only deletes nothing"
    );
}

/// `Running::reached` tells a model that got there from one whose task died first.
#[tokio::test]
async fn reached_says_when_the_model_stopped_before_the_position() {
    let Setup { krescent, .. } = setup();
    append(&krescent, 1..=5).await;
    let running = krescent.stream(Always {
        fail_on: Some(3),
        ..Always::default()
    });
    match running.reached(Position::new(5)).await {
        Err(Error::Stopped {
            model,
            position,
            wanted,
        }) => {
            assert_eq!(running.status(), krescent::Status::Stopped);
            assert_eq!(model, "counter.always");
            assert!(position < Position::new(3), "{position}");
            assert_eq!(wanted, Position::new(5));
        }
        other => panic!("expected the model to have stopped, got {other:?}"),
    }
    assert!(matches!(
        running.shutdown().await,
        Err(Error::Handler { position, .. }) if position == Position::new(3)
    ));
}
