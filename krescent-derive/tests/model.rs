//! Behaviour of the generated code: the design's model against a real store, checkpoint
//! round trips, all-or-nothing restores, validation, and checkpoint versions.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::time::Duration;

use krescent::checkpoint::{
    BucketValue, CheckpointConfig, CheckpointError, CheckpointVersion, OnInvalid, Strategy,
};
use krescent::prelude::*;
use krescent::store::{EventStore, ExpectedVersion, InMemoryEventStore};
use krescent::{CheckpointBucket, CheckpointSupport, EventModel, Handlers, Origin, Position};

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

#[derive(Debug, PartialEq, Eq)]
struct NoCopyLeft(String);

impl std::fmt::Display for NoCopyLeft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no copy of `{}` left", self.0)
    }
}

impl std::error::Error for NoCopyLeft {}

#[derive(EventModel, Default, Debug)]
#[model(name = "books.available", version = 1)]
#[checkpoint(strategy = "fixed_events(2)", storage = "memory")]
struct AvailableBooks {
    #[checkpoint]
    available: HashMap<String, u32>,
    #[checkpoint(key = "lenders")]
    lent_by_stream: BTreeMap<String, Vec<String>>,
    lookups: u64,
    started: Option<Origin>,
    caught_up: Option<Position>,
}

#[krescent::handlers]
impl AvailableBooks {
    fn added(&mut self, e: &BookAdded) {
        assert!(!e.title.is_empty());
        *self.available.entry(e.book_id.clone()).or_default() += e.copies;
    }

    async fn lent(&mut self, e: &BookLent, meta: &EventMeta) -> Result<(), NoCopyLeft> {
        tokio::task::yield_now().await;
        let copies = self
            .available
            .get_mut(&e.book_id)
            .filter(|n| **n > 0)
            .ok_or_else(|| NoCopyLeft(e.book_id.clone()))?;
        *copies -= 1;
        self.lent_by_stream
            .entry(meta.stream_id.to_string())
            .or_default()
            .push(e.user_id.clone());
        Ok(())
    }

    #[on_start]
    fn started(&mut self, origin: &Origin) {
        self.started = Some(origin.clone());
    }

    #[on_caught_up]
    fn caught_up(&mut self, position: Position) {
        self.caught_up = Some(position);
    }
}

fn added(book_id: &str, copies: u32) -> NewEvent {
    NewEvent::new(&BookAdded {
        book_id: book_id.into(),
        title: format!("{book_id}, the book"),
        copies,
    })
    .unwrap()
}

fn lent(book_id: &str, user_id: &str) -> NewEvent {
    NewEvent::new(&BookLent {
        book_id: book_id.into(),
        user_id: user_id.into(),
    })
    .unwrap()
}

#[tokio::test]
async fn the_design_model_catches_up_and_resumes_from_its_checkpoint() {
    let krescent = Krescent::new(InMemoryEventStore::new());
    let store = krescent.store();
    store
        .append(
            "book-dune",
            ExpectedVersion::NoStream,
            vec![added("dune", 2), lent("dune", "ada")],
        )
        .await
        .unwrap();
    store
        .append(
            "unrelated",
            ExpectedVersion::Any,
            vec![NewEvent::from_json("member.joined", "{}").unwrap()],
        )
        .await
        .unwrap();
    store
        .append(
            "book-emma",
            ExpectedVersion::NoStream,
            vec![added("emma", 1), lent("emma", "bob"), lent("dune", "cy")],
        )
        .await
        .unwrap();

    let first = krescent.catch_up(AvailableBooks::default()).await.unwrap();
    assert_eq!(first.origin, Origin::Scratch);
    assert_eq!(first.processed, 5, "the unhandled event is skipped");
    let books = first.model;
    assert_eq!(
        books.available,
        HashMap::from([("dune".to_owned(), 0), ("emma".to_owned(), 0)])
    );
    assert_eq!(books.lent_by_stream["book-dune"], ["ada"]);
    assert_eq!(books.lent_by_stream["book-emma"], ["bob", "cy"]);
    assert_eq!(books.started, Some(Origin::Scratch));
    assert_eq!(books.caught_up, Some(first.position));

    let second = krescent
        .catch_up(AvailableBooks {
            lookups: 7,
            ..AvailableBooks::default()
        })
        .await
        .unwrap();
    assert_eq!(
        second.origin,
        Origin::Restored {
            position: first.position
        }
    );
    assert_eq!(second.processed, 0);
    assert_eq!(second.model.available, books.available);
    assert_eq!(second.model.lent_by_stream, books.lent_by_stream);
    assert_eq!(
        second.model.lookups, 7,
        "fields without `#[checkpoint]` are left alone"
    );
    assert_eq!(
        second.model.started,
        Some(Origin::Restored {
            position: first.position
        })
    );
}

#[tokio::test]
async fn a_handler_error_stops_the_model_with_its_source() {
    let krescent = Krescent::new(InMemoryEventStore::new());
    krescent
        .store()
        .append(
            "book-dune",
            ExpectedVersion::NoStream,
            vec![added("dune", 1), lent("dune", "ada"), lent("dune", "bob")],
        )
        .await
        .unwrap();
    let error = krescent
        .catch_up(AvailableBooks::default())
        .await
        .unwrap_err();
    let krescent::Error::Handler {
        model,
        event_type,
        source,
        ..
    } = error
    else {
        panic!("expected a handler error, got {error:?}")
    };
    assert_eq!(
        (model, event_type.as_str()),
        ("books.available", "book.lent")
    );
    assert!(matches!(source, krescent::model::HandlerError::Failed(_)));
    assert_eq!(source.to_string(), "no copy of `dune` left");
}

#[tokio::test]
async fn a_malformed_payload_is_a_decode_error() {
    let krescent = Krescent::new(InMemoryEventStore::new());
    krescent
        .store()
        .append(
            "book-dune",
            ExpectedVersion::NoStream,
            vec![NewEvent::from_json("book.added", r#"{"book_id": 3}"#).unwrap()],
        )
        .await
        .unwrap();
    let error = krescent
        .catch_up(AvailableBooks::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            krescent::Error::Handler {
                source: krescent::model::HandlerError::Decode(_),
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn identity_and_configuration_come_from_the_attributes() {
    assert_eq!(<BookAdded as Event>::NAME, "book.added");
    assert_eq!(<BookLent as Event>::REVISION, 1);
    assert_eq!(AvailableBooks::NAME, "books.available");
    assert_eq!(AvailableBooks::VERSION, 1);
    assert_eq!(AvailableBooks::FINGERPRINT, "available:available:HashMap<String,u32>;lenders:lent_by_stream:BTreeMap<String,Vec<String>>");
    assert_eq!(
        AvailableBooks::checkpointing(),
        Some(CheckpointConfig {
            strategy: Strategy::FixedEvents(NonZeroU32::new(2).unwrap()),
            storage: "memory",
            on_invalid: OnInvalid::Rebuild
        })
    );
    assert_eq!(
        AvailableBooks::EVENTS,
        [
            krescent::EventType::of::<BookAdded>(),
            krescent::EventType::of::<BookLent>()
        ]
    );
    assert!(AvailableBooks::handles("book.lent"));
    assert!(!AvailableBooks::handles("member.joined"));
}

/// An extension with its own checkpoint support: a count and a name, validated on restore.
#[derive(Debug, Default, Clone, PartialEq)]
struct Index {
    entries: u64,
    table: String,
}

impl CheckpointSupport for Index {
    fn create_checkpoint(&self, bucket: &mut CheckpointBucket) -> Result<(), CheckpointError> {
        bucket.put("entries", &self.entries)?;
        bucket.put("table", &self.table)
    }

    fn restore_checkpoint(&mut self, bucket: &CheckpointBucket) -> Result<(), CheckpointError> {
        let entries = bucket.get("entries")?;
        let table: String = bucket.get("table")?;
        if table.is_empty() {
            return Err(CheckpointError::StaleReference {
                reference: "table".into(),
                reason: "no table name".into(),
            });
        }
        (self.entries, self.table) = (entries, table);
        Ok(())
    }

    fn validate_checkpoint(&self, bucket: &CheckpointBucket) -> bool {
        bucket.get::<String>("table").is_ok_and(|t| !t.is_empty()) && bucket.contains("entries")
    }
}

#[derive(EventModel, Default, Debug, Clone, PartialEq)]
#[model(name = "every.kind")]
#[checkpoint(
    strategy = "fixed_events(1000) | fixed_time(5s) | manual",
    storage = "memory",
    on_invalid = "fail"
)]
struct EveryKind {
    #[checkpoint]
    counts: BTreeMap<String, u32>,
    #[checkpoint]
    label: String,
    #[checkpoint(key = "blob")]
    raw: Vec<u8>,
    #[checkpoint(support)]
    index: Index,
    #[checkpoint(support, key = "second_index")]
    other: Index,
    scratch: u64,
}

#[krescent::handlers]
impl EveryKind {}

fn every_kind() -> EveryKind {
    EveryKind {
        counts: BTreeMap::from([("a".into(), 1), ("b".into(), 2)]),
        label: "label".into(),
        raw: vec![0, 159, 255],
        index: Index {
            entries: 3,
            table: "index_table".into(),
        },
        other: Index {
            entries: 4,
            table: "other_table".into(),
        },
        scratch: 99,
    }
}

fn checkpoint_of(model: &impl CheckpointSupport) -> CheckpointBucket {
    let mut bucket = CheckpointBucket::new();
    model.create_checkpoint(&mut bucket).unwrap();
    bucket
}

#[test]
fn create_writes_every_kind_under_its_key() {
    let bucket = checkpoint_of(&every_kind());
    assert_eq!(
        bucket.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        ["blob", "counts", "index", "label", "second_index"]
    );
    assert_eq!(
        bucket.value("blob"),
        Some(&BucketValue::Bytes(vec![0, 159, 255]))
    );
    assert_eq!(
        bucket.value("label"),
        Some(&BucketValue::Str("label".into()))
    );
    assert_eq!(bucket.value("counts").map(BucketValue::kind), Some("json"));
    assert_eq!(
        bucket
            .bucket("second_index")
            .unwrap()
            .get::<String>("table")
            .unwrap(),
        "other_table"
    );
    assert!(bucket.value("scratch").is_none());
}

#[test]
fn a_checkpoint_round_trips_into_a_default_model() {
    let original = every_kind();
    let mut restored = EveryKind::default();
    restored
        .restore_checkpoint(&checkpoint_of(&original))
        .unwrap();
    assert_eq!(
        restored,
        EveryKind {
            scratch: 0,
            ..original
        },
        "the unannotated field stays default"
    );
}

#[test]
fn the_configuration_combines_strategies() {
    let config = EveryKind::checkpointing().unwrap();
    assert_eq!(
        config.strategy,
        Strategy::Any(vec![
            Strategy::FixedEvents(NonZeroU32::new(1000).unwrap()),
            Strategy::FixedTime(Duration::from_secs(5)),
            Strategy::Manual
        ])
    );
    assert_eq!(config.on_invalid, OnInvalid::Fail);
}

/// Restores `bucket` into a model that already holds state; the restore must fail with `error`
/// and leave that state exactly as it was.
fn assert_restore_changes_nothing(bucket: &CheckpointBucket, error: &CheckpointError) {
    let before = EveryKind {
        counts: BTreeMap::from([("old".into(), 9)]),
        label: "old".into(),
        raw: vec![1],
        ..EveryKind::default()
    };
    let mut model = before.clone();
    assert_eq!(model.restore_checkpoint(bucket).as_ref(), Err(error));
    assert_eq!(model, before);
}

#[test]
fn a_restore_is_all_or_nothing() {
    let good = checkpoint_of(&every_kind());

    let mut bad_serde = good.clone();
    bad_serde.put("counts", "not a map").unwrap();
    let reason = "invalid type: string \"not a map\", expected a map".to_owned();
    assert_restore_changes_nothing(
        &bad_serde,
        &CheckpointError::Invalid {
            key: "counts".into(),
            reason,
        },
    );

    let mut bad_bytes = good.clone();
    bad_bytes.put("blob", "text").unwrap();
    let reason = "expected bytes, found string".to_owned();
    assert_restore_changes_nothing(
        &bad_bytes,
        &CheckpointError::Invalid {
            key: "blob".into(),
            reason,
        },
    );

    let mut missing = good.clone();
    missing.remove("label");
    assert_restore_changes_nothing(
        &missing,
        &CheckpointError::Missing {
            key: "label".into(),
        },
    );

    // The second support field fails: neither the serde fields nor the first support field move.
    let mut bad_nested = good.clone();
    let mut nested = good.bucket("second_index").unwrap().clone();
    nested.remove("entries");
    bad_nested.insert("second_index", BucketValue::Bucket(nested));
    let reason = "it failed validation".to_owned();
    assert_restore_changes_nothing(
        &bad_nested,
        &CheckpointError::Invalid {
            key: "second_index".into(),
            reason,
        },
    );
}

#[test]
fn a_nested_error_names_the_nested_key() {
    #[derive(EventModel, Default)]
    #[model(name = "one.index")]
    struct OneIndex {
        #[checkpoint]
        count: u32,
        #[checkpoint(support)]
        index: Index,
    }

    #[krescent::handlers]
    impl OneIndex {}

    let mut bucket = checkpoint_of(&OneIndex {
        count: 5,
        index: Index {
            entries: 1,
            table: "t".into(),
        },
    });
    let mut nested = bucket.bucket("index").unwrap().clone();
    nested.put("entries", "many").unwrap();
    bucket.insert("index", BucketValue::Bucket(nested));
    let mut model = OneIndex::default();
    let error = model.restore_checkpoint(&bucket).unwrap_err();
    assert!(
        matches!(&error, CheckpointError::Invalid { key, .. } if key == "index.entries"),
        "{error:?}"
    );
    assert_eq!(
        model.count, 0,
        "the serde field is not assigned when a support field fails"
    );
}

#[test]
fn validation_rejects_missing_keys_and_wrong_kinds() {
    let model = EveryKind::default();
    let good = checkpoint_of(&every_kind());
    assert!(model.validate_checkpoint(&good));

    for key in ["counts", "label", "blob", "index", "second_index"] {
        let mut missing = good.clone();
        missing.remove(key);
        assert!(!model.validate_checkpoint(&missing), "without `{key}`");
    }
    let wrong_kinds = [
        ("blob", BucketValue::Str("AA==".into())),
        ("counts", BucketValue::Bytes(vec![1])),
        ("label", BucketValue::Bucket(CheckpointBucket::new())),
        ("index", BucketValue::Str("index".into())),
        ("second_index", BucketValue::Bucket(CheckpointBucket::new())),
    ];
    for (key, value) in wrong_kinds {
        let mut wrong = good.clone();
        wrong.insert(key, value);
        assert!(!model.validate_checkpoint(&wrong), "with a wrong `{key}`");
    }
}

/// Two builds of one model: the second changes a checkpointed field's type.
mod field_v1 {
    use super::*;

    #[derive(EventModel, Default)]
    #[model(name = "versioned")]
    pub struct Model {
        #[checkpoint]
        pub count: u32,
        #[expect(dead_code, reason = "only its type matters")]
        pub scratch: u8,
    }

    #[krescent::handlers]
    impl Model {
        fn added(&mut self, _: &BookAdded) {
            self.count += 1;
        }
    }
}

mod field_v2 {
    use super::*;

    #[derive(EventModel, Default)]
    #[model(name = "versioned")]
    pub struct Model {
        #[checkpoint]
        pub count: u64,
        #[expect(dead_code, reason = "only its type matters")]
        pub scratch: u16,
    }

    #[krescent::handlers]
    impl Model {
        fn added(&mut self, _: &BookAdded) {
            self.count += 1;
        }
    }
}

/// The same model, but a handled event's revision is bumped.
mod revision_v2 {
    use super::*;

    #[derive(Event, Serialize, Deserialize)]
    #[event(name = "book.added", revision = 2)]
    pub struct BookAdded {}

    #[derive(EventModel, Default)]
    #[model(name = "versioned")]
    pub struct Model {
        #[checkpoint]
        pub count: u32,
        #[expect(dead_code, reason = "only its type matters")]
        pub scratch: u8,
    }

    #[krescent::handlers]
    impl Model {
        fn added(&mut self, _: &BookAdded) {
            self.count += 1;
        }
    }
}

/// The same model with another unannotated field type: not part of the checkpoint.
mod scratch_changed {
    use super::*;

    #[derive(EventModel, Default)]
    #[model(name = "versioned")]
    pub struct Model {
        #[checkpoint]
        pub count: u32,
        #[expect(dead_code, reason = "only its type matters")]
        pub scratch: String,
    }

    #[krescent::handlers]
    impl Model {
        fn added(&mut self, _: &BookAdded) {
            self.count += 1;
        }
    }
}

#[test]
fn the_checkpoint_version_follows_fields_and_event_revisions() {
    let v1 = CheckpointVersion::of::<field_v1::Model>();
    assert_ne!(
        v1,
        CheckpointVersion::of::<field_v2::Model>(),
        "a checkpointed field changed type"
    );
    assert_ne!(
        v1,
        CheckpointVersion::of::<revision_v2::Model>(),
        "a handled event's revision changed"
    );
    assert_eq!(
        v1,
        CheckpointVersion::of::<scratch_changed::Model>(),
        "only an unannotated field changed"
    );
}

/// `AvailableBooks` with a group handler: the same name, events and checkpointed fields, so
/// the two share their checkpoints. Records the positions of every group it receives.
#[derive(EventModel, Default, Debug)]
#[model(name = "books.available", version = 1)]
#[checkpoint(strategy = "fixed_events(2)", storage = "memory")]
struct GroupedBooks {
    #[checkpoint]
    available: HashMap<String, u32>,
    #[checkpoint(key = "lenders")]
    lent_by_stream: BTreeMap<String, Vec<String>>,
    groups: Vec<Vec<u64>>,
}

#[derive(Debug, thiserror::Error)]
enum GroupError {
    #[error("a payload did not decode")]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    NoCopyLeft(#[from] NoCopyLeft),
}

#[krescent::handlers]
impl GroupedBooks {
    #[group(BookAdded, BookLent)]
    async fn books(&mut self, group: Group<'_>) -> Result<(), GroupError> {
        tokio::task::yield_now().await;
        self.groups
            .push(group.iter().map(|e| e.position().get()).collect());
        for event in group {
            if let Some(e) = event.decode::<BookAdded>()? {
                *self.available.entry(e.book_id).or_default() += e.copies;
            } else if let Some(e) = event.decode::<BookLent>()? {
                let copies = self
                    .available
                    .get_mut(&e.book_id)
                    .filter(|n| **n > 0)
                    .ok_or_else(|| NoCopyLeft(e.book_id.clone()))?;
                *copies -= 1;
                self.lent_by_stream
                    .entry(event.meta().stream_id.to_string())
                    .or_default()
                    .push(e.user_id);
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_group_handler_receives_the_events_up_to_each_checkpoint_and_shares_the_checkpoints() {
    /// The design's events, with an unhandled one at position 3.
    async fn append(store: &InMemoryEventStore) {
        let streams = [
            ("book-dune", vec![added("dune", 2), lent("dune", "ada")]),
            (
                "unrelated",
                vec![NewEvent::from_json("member.joined", "{}").unwrap()],
            ),
            (
                "book-emma",
                vec![added("emma", 1), lent("emma", "bob"), lent("dune", "cy")],
            ),
        ];
        for (stream, events) in streams {
            store
                .append(stream, ExpectedVersion::Any, events)
                .await
                .unwrap();
        }
    }
    let krescent = Krescent::new(InMemoryEventStore::new());
    let store = krescent.store();
    append(store).await;
    const { assert!(<GroupedBooks as Handlers>::GROUPED && !<AvailableBooks as Handlers>::GROUPED) };
    assert_eq!(
        CheckpointVersion::of::<GroupedBooks>(),
        CheckpointVersion::of::<AvailableBooks>()
    );

    let grouped = krescent.catch_up(GroupedBooks::default()).await.unwrap();
    assert_eq!(
        grouped.model.groups,
        vec![vec![1, 2], vec![4, 5], vec![6]],
        "each group ends where `fixed_events(2)` falls due; the unhandled event 3 is in none"
    );
    assert_eq!(grouped.processed, 5);
    let per_event = Krescent::new(InMemoryEventStore::new());
    append(per_event.store()).await;
    let reference = per_event.catch_up(AvailableBooks::default()).await.unwrap();
    assert_eq!(grouped.model.available, reference.model.available);
    assert_eq!(grouped.model.lent_by_stream, reference.model.lent_by_stream);

    // The per-event model resumes from the group handler's checkpoint, and back.
    store
        .append("book-dune", ExpectedVersion::Any, vec![added("dune", 1)])
        .await
        .unwrap();
    let resumed = krescent.catch_up(AvailableBooks::default()).await.unwrap();
    assert_eq!(resumed.origin.restored_from(), Some(grouped.position));
    assert_eq!((resumed.processed, resumed.model.available["dune"]), (1, 1));
    let again = krescent.catch_up(GroupedBooks::default()).await.unwrap();
    assert_eq!(again.origin.restored_from(), Some(resumed.position));
    assert_eq!(again.processed, 0);
}

#[tokio::test]
async fn a_group_fails_at_its_last_event_or_at_the_event_that_does_not_decode() {
    let krescent = Krescent::new(InMemoryEventStore::new());
    krescent
        .store()
        .append(
            "book-dune",
            ExpectedVersion::NoStream,
            vec![lent("dune", "ada"), added("dune", 1)],
        )
        .await
        .unwrap();
    let error = krescent
        .catch_up(GroupedBooks::default())
        .await
        .unwrap_err();
    let krescent::Error::Handler {
        position, source, ..
    } = &error
    else {
        panic!("expected a handler error, got {error:?}")
    };
    assert_eq!(
        *position,
        Position::new(2),
        "the group's failure is named after its last event"
    );
    assert_eq!(source.to_string(), "no copy of `dune` left");

    let krescent = Krescent::new(InMemoryEventStore::new());
    krescent
        .store()
        .append(
            "book-dune",
            ExpectedVersion::NoStream,
            vec![
                NewEvent::from_json("book.added", r#"{"book_id": 3}"#).unwrap(),
                added("dune", 1),
            ],
        )
        .await
        .unwrap();
    let error = krescent
        .catch_up(GroupedBooks::default())
        .await
        .unwrap_err();
    let krescent::Error::Handler {
        position, source, ..
    } = &error
    else {
        panic!("expected a handler error, got {error:?}")
    };
    assert_eq!(
        *position,
        Position::new(1),
        "a decode error names its own event"
    );
    assert!(
        matches!(source, krescent::model::HandlerError::Failed(_)),
        "{source:?}"
    );
}

/// A split model with a group handler: records the stream of every event it receives.
#[derive(EventModel, Default)]
#[model(name = "books.split", segments = 4)]
#[checkpoint(strategy = "fixed_events(3)", storage = "memory")]
struct SplitBooks {
    #[checkpoint]
    copies: u64,
    streams: Vec<String>,
}

#[krescent::handlers]
impl SplitBooks {
    #[group(BookAdded)]
    fn added(&mut self, group: Group<'_>) -> Result<(), DecodeError> {
        for event in group {
            if let Some(e) = event.decode::<BookAdded>()? {
                self.copies += u64::from(e.copies);
                self.streams.push(event.meta().stream_id.to_string());
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_segment_s_groups_hold_its_own_streams_only() {
    use krescent::fleet::Segment;
    let krescent = Krescent::new(InMemoryEventStore::new());
    let books: Vec<String> = (0..40).map(|i| format!("book-{i}")).collect();
    for book in &books {
        krescent
            .store()
            .append(
                book,
                ExpectedVersion::NoStream,
                vec![added(book, 1), added(book, 2)],
            )
            .await
            .unwrap();
    }
    let head = krescent.store().head().await.unwrap();
    let running = krescent.stream_segments(|_segment: Segment| SplitBooks::default());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while running.held().len() < 4 || running.position() < head {
        assert!(
            std::time::Instant::now() < deadline,
            "the segments catch up"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let segments = running.shutdown().await.unwrap();
    let mut seen = Vec::new();
    for (segment, ended) in &segments {
        for stream in &ended.model.streams {
            assert_eq!(
                Segment::of(stream, 4),
                *segment,
                "{stream} is its segment's alone"
            );
        }
        seen.extend(ended.model.streams.iter().cloned());
    }
    seen.sort();
    seen.dedup_by(|a, b| a == b);
    assert_eq!(
        seen.len(),
        books.len(),
        "every stream is handled by a segment"
    );
    let copies: u64 = segments.iter().map(|(_, s)| s.model.copies).sum();
    assert_eq!(copies, 3 * 40);
}
