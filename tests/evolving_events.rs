//! Events change, the log does not: every store records each event's revision and metadata,
//! and every read path decodes older revisions into the current struct through its upcast
//! chain (`RecordedEvent::decode`, the one place payloads are decoded for handlers).

use std::collections::BTreeMap;
use std::path::Path;

use krescent::checkpoint::CheckpointVersion;
use krescent::fleet::Segment;
use krescent::prelude::*;
use krescent::store::{FileEventStore, StoreError};
use krescent::upcast::DecodeFailure;
use krescent::{Metadata, RecordedEvent};
use krescent_testkit::postgres::fresh_database;
use serde_json::{json, Value};

/// Revision 1 of `book.added`: a title, no copies.
#[derive(Deserialize)]
struct BookAddedV1 {
    isbn: String,
    title: String,
}

/// Revision 2: copies added; a book of revision 1 had one.
#[derive(Deserialize)]
struct BookAddedV2 {
    isbn: String,
    title: String,
    copies: u32,
}

impl From<BookAddedV1> for BookAddedV2 {
    fn from(v1: BookAddedV1) -> Self {
        BookAddedV2 {
            isbn: v1.isbn,
            title: v1.title,
            copies: 1,
        }
    }
}

/// Revision 3, the current one: `title` renamed `name`; recorded as `library.book_added`
/// before the type was renamed.
#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(
    name = "book.added",
    revision = 3,
    upcast(1 = BookAddedV1, 2 = BookAddedV2),
    old_names("library.book_added")
)]
struct BookAdded {
    isbn: String,
    name: String,
    copies: u32,
}

impl From<BookAddedV2> for BookAdded {
    fn from(v2: BookAddedV2) -> Self {
        BookAdded {
            isbn: v2.isbn,
            name: v2.title,
            copies: v2.copies,
        }
    }
}

/// Revision 2 of `book.lent`: `isbn` renamed `book`, by a hop over the JSON.
#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "book.lent", revision = 2, upcast(1 = json(lent_v2_from_v1)))]
struct BookLent {
    book: String,
}

fn lent_v2_from_v1(mut v1: Value) -> Result<Value, String> {
    let isbn = v1
        .as_object_mut()
        .and_then(|o| o.remove("isbn"))
        .ok_or("no `isbn`")?;
    v1["book"] = isbn;
    Ok(v1)
}

/// A model of books and loans, split into `$segments`.
macro_rules! library {
    ($model:ident, $name:literal, $segments:literal) => {
        #[derive(EventModel, Default, Debug)]
        #[model(name = $name, segments = $segments)]
        #[checkpoint(strategy = "fixed_events(2)", storage = "memory")]
        struct $model {
            #[checkpoint]
            books: BTreeMap<String, (String, u32)>,
            #[checkpoint]
            lent: Vec<String>,
            /// (revision, correlation id) of every event, as handlers see them.
            seen: Vec<(u32, Option<String>)>,
        }

        #[krescent::handlers]
        impl $model {
            fn added(&mut self, e: BookAdded, meta: &EventMeta) {
                self.books.insert(e.isbn, (e.name, e.copies));
                self.seen.push((
                    meta.revision,
                    meta.metadata.correlation_id().map(str::to_owned),
                ));
            }

            fn lent(&mut self, e: &BookLent, meta: &EventMeta) {
                if let Some(book) = self.books.get_mut(&e.book) {
                    book.1 = book.1.saturating_sub(1);
                }
                self.lent.push(e.book.clone());
                self.seen.push((
                    meta.revision,
                    meta.metadata.correlation_id().map(str::to_owned),
                ));
            }
        }

        impl $model {
            fn state(&self) -> (BTreeMap<String, (String, u32)>, Vec<String>) {
                (self.books.clone(), self.lent.clone())
            }
        }
    };
}

library!(Library, "library.books", 1);
library!(SplitLibrary, "library.split", 2);

#[allow(clippy::needless_pass_by_value)] // `json!` literals read best passed as they are
fn event(event_type: &str, revision: u32, payload: Value) -> NewEvent {
    NewEvent::from_json(event_type, &payload.to_string())
        .expect("JSON")
        .with_revision(revision)
}

const ODD: &str = "Ünïcødé \"quoted\" \\ ✓\n\u{1F600}";

/// The same history twice, `(stream, as stored over the years, as stored today)`: revisions
/// 1, 2 and 3, an old type name, and a JSON hop.
fn history() -> Vec<(&'static str, NewEvent, NewEvent)> {
    let added = |isbn: &str, name: &str, copies: u32| {
        event(
            "book.added",
            3,
            json!({"isbn": isbn, "name": name, "copies": copies}),
        )
    };
    vec![
        (
            "book-0",
            event("book.added", 1, json!({"isbn": "978-0", "title": "Dune"})),
            added("978-0", "Dune", 1),
        ),
        (
            "book-1",
            event(
                "book.added",
                2,
                json!({"isbn": "978-1", "title": "Solaris", "copies": 4}),
            ),
            added("978-1", "Solaris", 4),
        ),
        (
            "book-2",
            event(
                "library.book_added",
                1,
                json!({"isbn": "978-2", "title": ODD}),
            ),
            added("978-2", ODD, 1),
        ),
        (
            "book-3",
            added("978-3", "Ubik", 2),
            added("978-3", "Ubik", 2),
        ),
        (
            "book-0",
            event("book.lent", 1, json!({"isbn": "978-0"})),
            event("book.lent", 2, json!({"book": "978-0"})),
        ),
        (
            "book-1",
            event("book.lent", 2, json!({"book": "978-1"})),
            event("book.lent", 2, json!({"book": "978-1"})),
        ),
        (
            "book-2",
            event("book.lent", 1, json!({"isbn": "978-2"})),
            event("book.lent", 2, json!({"book": "978-2"})),
        ),
    ]
}

/// The events of `history`, old (`old`) or current, one append each.
async fn append<S: EventStore>(store: &S, old: bool, range: std::ops::Range<usize>) {
    for (stream, then, now) in &history()[range] {
        let event = if old { then } else { now };
        store
            .append(stream, ExpectedVersion::Any, vec![event.clone()])
            .await
            .expect("append");
    }
}

/// What each event of `history` decodes into.
fn expected_books() -> Vec<BookAdded> {
    let book = |isbn: &str, name: &str, copies| BookAdded {
        isbn: isbn.into(),
        name: name.into(),
        copies,
    };
    vec![
        book("978-0", "Dune", 1),
        book("978-1", "Solaris", 4),
        book("978-2", ODD, 1),
        book("978-3", "Ubik", 2),
    ]
}

/// Metadata as odd as it gets: empty, odd strings, nested JSON.
fn odd_metadata() -> Vec<Metadata> {
    vec![
        Metadata::new(),
        Metadata::new().with(ODD, ODD).with("", ""),
        Metadata::new()
            .with("correlation_id", "c-1")
            .with(
                "nested",
                json!({"a": [1, 2.5, null, {"b": [true, "\u{7f}"]}], "c": {}}),
            )
            .with("quote", "\"\\\"'"),
    ]
}

/// Fixtures of every revision, in the formats `store` holds, decode into the current
/// structs; their revisions and metadata come back as appended.
async fn every_revision_and_metadata_round_trip<S: EventStore>(store: &S) {
    append(store, true, 0..history().len()).await;
    let read = store.read_after(Position::START, 100).await.expect("read");
    let revisions: Vec<u32> = read.iter().map(|e| e.meta.revision).collect();
    assert_eq!(revisions, [1, 2, 1, 3, 1, 2, 1]);
    let books: Vec<BookAdded> = read[..4]
        .iter()
        .map(|e| e.decode::<BookAdded>().expect("decode"))
        .collect();
    assert_eq!(books, expected_books());
    let lent: Vec<BookLent> = read[4..]
        .iter()
        .map(|e| e.decode::<BookLent>().expect("decode"))
        .collect();
    assert_eq!(
        lent.iter().map(|l| l.book.as_str()).collect::<Vec<_>>(),
        ["978-0", "978-1", "978-2"]
    );

    let with_metadata: Vec<NewEvent> = odd_metadata()
        .into_iter()
        .map(|m| event("book.lent", 2, json!({"book": "978-3"})).with_metadata(m))
        .collect();
    store
        .append("metadata", ExpectedVersion::NoStream, with_metadata)
        .await
        .expect("append with metadata");
    let read = store
        .read_after(Position::new(history().len() as u64), 100)
        .await
        .expect("read");
    let metadata: Vec<Metadata> = read.iter().map(|e| e.meta.metadata.clone()).collect();
    assert_eq!(metadata, odd_metadata());
    let matching = store
        .read_matching(&Query::stream("metadata"), Position::START, 10)
        .await
        .expect("read matching");
    assert_eq!(
        matching
            .iter()
            .map(|e| e.meta.metadata.clone())
            .collect::<Vec<_>>(),
        odd_metadata(),
        "the query path reads the envelope too"
    );

    let zero = store
        .append(
            "zero",
            ExpectedVersion::Any,
            vec![event("book.lent", 0, json!({}))],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&zero, StoreError::Rejected { reason, .. } if reason.contains("revision 0")),
        "{zero}"
    );
}

#[tokio::test]
async fn memory_store_decodes_every_revision_and_round_trips_metadata() {
    every_revision_and_metadata_round_trip(&InMemoryEventStore::new()).await;
}

#[tokio::test]
async fn file_store_decodes_every_revision_and_round_trips_metadata() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    {
        let store = FileEventStore::open(dir.path()).expect("open");
        every_revision_and_metadata_round_trip(&store).await;
    }
    // From the disk, after a reopen.
    let store = FileEventStore::open(dir.path()).expect("reopen");
    let read = store.read_after(Position::START, 100).await.expect("read");
    assert_eq!(read.len(), history().len() + odd_metadata().len());
    assert_eq!(
        read[history().len()..]
            .iter()
            .map(|e| e.meta.metadata.clone())
            .collect::<Vec<_>>(),
        odd_metadata()
    );
    assert_eq!(
        read[1].decode::<BookAdded>().expect("decode"),
        expected_books()[1]
    );
}

#[tokio::test]
async fn postgres_store_decodes_every_revision_and_round_trips_metadata() {
    let db = fresh_database().await;
    every_revision_and_metadata_round_trip(&db.event_store().await).await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create");
    for entry in std::fs::read_dir(from).expect("read the fixture") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// A store written by the previous format (a segment of format 1, kept as a fixture) reads
/// as revision 1 without metadata, upcasts, and takes new appends into a segment of the
/// current format after it.
#[tokio::test]
async fn file_store_reads_a_segment_of_the_previous_format() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/file-store-format-1");
    copy_dir(&fixture, dir.path());
    let check_old = |read: &[RecordedEvent]| {
        let types: Vec<&str> = read.iter().map(RecordedEvent::event_type).collect();
        assert_eq!(
            types,
            [
                "book.added",
                "book.lent",
                "library.book_added",
                "book.added"
            ]
        );
        assert!(read
            .iter()
            .all(|e| e.meta.revision == 1 && e.meta.metadata.is_empty()));
        let books: Vec<BookAdded> = [&read[0], &read[2], &read[3]]
            .iter()
            .map(|e| e.decode::<BookAdded>().expect("decode"))
            .collect();
        assert_eq!(books[0], expected_books()[0]);
        assert_eq!(books[1].name, "Ünïcødé \"quoted\" \\ ✓");
        assert_eq!(books[2].name, "Solaris");
        assert_eq!(read[1].decode::<BookLent>().expect("decode").book, "978-0");
    };
    let metadata = odd_metadata().swap_remove(2);
    {
        let store = FileEventStore::open(dir.path()).expect("open the old store");
        check_old(&store.read_after(Position::START, 100).await.expect("read"));
        store
            .append(
                "book-4",
                ExpectedVersion::NoStream,
                vec![NewEvent::new(&BookLent {
                    book: "978-2".into(),
                })
                .expect("encode")
                .with_metadata(metadata.clone())],
            )
            .await
            .expect("append after the old segment");
    }
    let segments = std::fs::read_dir(dir.path())
        .expect("list")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        })
        .count();
    assert_eq!(segments, 2, "the old segment is sealed as it is");
    let store = FileEventStore::open(dir.path()).expect("reopen");
    let read = store.read_after(Position::START, 100).await.expect("read");
    check_old(&read[..4]);
    assert_eq!(read[4].meta.revision, 2);
    assert_eq!(read[4].meta.metadata, metadata);

    let caught = Krescent::new(store)
        .catch_up(Library::default())
        .await
        .expect("catch up");
    assert_eq!(caught.model.books.len(), 3, "the old name is handled");
    assert_eq!(caught.model.books["978-0"], ("Dune".to_owned(), 0));
}

/// A table at schema 2 (before the envelope's columns) migrates in place: old rows read as
/// revision 1 without metadata and upcast; new rows keep both.
#[tokio::test]
async fn postgres_events_table_at_schema_2_migrates_in_place() {
    let db = fresh_database().await;
    let client = db.client().await;
    client
        .batch_execute(include_str!("fixtures/events-schema-2.sql"))
        .await
        .expect("the schema 2 table and rows");
    let store = db.event_store().await;
    store.migrate().await.expect("migrate");
    store.migrate().await.expect("migrate again: nothing to do");
    let version: i32 = client
        .query_one(
            "SELECT version FROM krescent_schema_migrations WHERE component = 'events:krescent_events'",
            &[],
        )
        .await
        .expect("version")
        .get(0);
    assert!(version >= 3, "migrated to {version}");
    let old = store.read_after(Position::START, 10).await.expect("read");
    assert_eq!(old.len(), 3);
    assert!(old
        .iter()
        .all(|e| e.meta.revision == 1 && e.meta.metadata.is_empty()));
    assert_eq!(
        old[0].decode::<BookAdded>().expect("decode"),
        expected_books()[0]
    );
    assert_eq!(
        old[1].decode::<BookAdded>().expect("decode").name,
        "Ünïcødé \"quoted\" \\ ✓"
    );
    let metadata = odd_metadata().swap_remove(2);
    store
        .append(
            "book-9",
            ExpectedVersion::NoStream,
            vec![NewEvent::new(&BookLent {
                book: "978-0".into(),
            })
            .expect("encode")
            .with_metadata(metadata.clone())],
        )
        .await
        .expect("append");
    let new = store.read_after(Position::new(3), 10).await.expect("read");
    assert_eq!(
        (new[0].meta.revision, &new[0].meta.metadata),
        (2, &metadata)
    );
    let caught = Krescent::new(store)
        .catch_up(Library::default())
        .await
        .expect("catch up");
    assert_eq!(caught.model.books["978-0"], ("Dune".to_owned(), 0));
    assert_eq!(caught.model.books.len(), 3);
}

/// The library built from the history as stored over the years equals the one built from
/// the same history stored at today's revisions, by `catch_up`.
async fn catch_up_equals<S: EventStore>(old: S, current: S) {
    append(&old, true, 0..history().len()).await;
    append(&current, false, 0..history().len()).await;
    let old = Krescent::new(old)
        .catch_up(Library::default())
        .await
        .expect("catch up the old log");
    let current = Krescent::new(current)
        .catch_up(Library::default())
        .await
        .expect("catch up the current log");
    assert_eq!(old.model.state(), current.model.state());
    assert_eq!(old.model.books.len(), 4);
    let revisions: Vec<u32> = old.model.seen.iter().map(|s| s.0).collect();
    assert_eq!(
        revisions,
        [1, 2, 1, 3, 1, 2, 1],
        "handlers see the stored revision"
    );
}

#[tokio::test]
async fn catch_up_of_old_revisions_equals_the_current_on_memory() {
    catch_up_equals(InMemoryEventStore::new(), InMemoryEventStore::new()).await;
}

#[tokio::test]
async fn catch_up_of_old_revisions_equals_the_current_on_files() {
    let (a, b) = (
        tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir"),
        tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir"),
    );
    catch_up_equals(
        FileEventStore::open(a.path()).expect("open"),
        FileEventStore::open(b.path()).expect("open"),
    )
    .await;
}

#[tokio::test]
async fn catch_up_of_old_revisions_equals_the_current_on_postgres() {
    let (a, b) = (fresh_database().await, fresh_database().await);
    catch_up_equals(a.event_store().await, b.event_store().await).await;
}

/// The current library, from the history stored at today's revisions.
async fn current_library() -> Library {
    let store = InMemoryEventStore::new();
    append(&store, false, 0..history().len()).await;
    Krescent::new(store)
        .catch_up(Library::default())
        .await
        .expect("catch up")
        .model
}

/// A streaming model sees the old revisions appended live.
async fn stream_follows<S: EventStore>(store: S) {
    let krescent = Krescent::new(store);
    let running = krescent.stream(Library::default());
    append(krescent.store(), true, 0..history().len()).await;
    running
        .reached(Position::new(history().len() as u64))
        .await
        .expect("reached the head");
    let streamed = running.shutdown().await.expect("shutdown");
    assert_eq!(streamed.model.state(), current_library().await.state());
}

#[tokio::test]
async fn stream_follows_live_appends_of_old_revisions() {
    stream_follows(InMemoryEventStore::new()).await;
}

#[tokio::test]
async fn stream_follows_live_appends_of_old_revisions_on_postgres() {
    let db = fresh_database().await;
    stream_follows(db.event_store().await).await;
}

/// A model restored from its checkpoint follows old revisions appended after it.
#[tokio::test]
async fn restore_then_follow_upcasts() {
    let krescent = Krescent::new(InMemoryEventStore::new());
    append(krescent.store(), true, 0..4).await;
    let first = krescent
        .catch_up(Library::default())
        .await
        .expect("catch up");
    assert_eq!(first.checkpoints, 2, "checkpoints at positions 2 and 4");
    append(krescent.store(), true, 4..history().len()).await;
    let running = krescent.stream(Library::default());
    running
        .reached(Position::new(history().len() as u64))
        .await
        .expect("reached the head");
    let restored = running.shutdown().await.expect("shutdown");
    assert_eq!(
        restored.origin,
        Origin::Restored {
            position: Position::new(4)
        }
    );
    assert_eq!(restored.model.state(), current_library().await.state());
}

/// Write models load, decide and decide on a query over old revisions, and the metadata a
/// decision attaches (a correlation id copied from a command or a cause) arrives in the
/// events it emits.
#[tokio::test]
async fn write_models_see_the_current_struct_and_attach_metadata() {
    let krescent = Krescent::new(InMemoryEventStore::new());
    for (_, then, _) in history() {
        krescent
            .store()
            .append("shelf", ExpectedVersion::Any, vec![then])
            .await
            .expect("append");
    }
    let current = current_library().await.state();
    let loaded = krescent.load::<Library>("shelf").await.expect("load");
    assert_eq!(loaded.model.state(), current);

    let decided = krescent
        .decide::<Library>("shelf")
        .metadata(
            Metadata::new()
                .with("correlation_id", "command-7")
                .with("user", "ada"),
        )
        .run(|library| {
            assert_eq!(library.state(), current, "decide sees the current struct");
            Ok::<_, serde_json::Error>(vec![
                NewEvent::new(&BookLent {
                    book: "978-3".into(),
                })?,
                NewEvent::new(&BookLent {
                    book: "978-3".into(),
                })?
                .with_metadata(Metadata::new().with("user", "grace")),
            ])
        })
        .await
        .expect("decide");
    assert_eq!(decided.model.books["978-3"].1, 0);
    let emitted = krescent
        .store()
        .read_after(Position::new(history().len() as u64), 10)
        .await
        .expect("read");
    let users: Vec<_> = emitted
        .iter()
        .map(|e| {
            (
                e.meta.revision,
                e.meta.metadata.correlation_id(),
                e.meta.metadata.get_str("user"),
            )
        })
        .collect();
    assert_eq!(
        users,
        [
            (2, Some("command-7"), Some("ada")),
            (2, Some("command-7"), Some("grace"))
        ],
        "the decision's metadata under each event's own"
    );

    // A process manager reacting to an emitted event: the chain keeps its correlation id.
    let cause = &emitted[0].meta;
    let reacted = krescent
        .decide_on::<Library>(Query::stream("shelf"), "shelf")
        .caused_by(cause)
        .run(|library| {
            assert_eq!(library.books.len(), 4, "decide_on sees the current struct");
            Ok::<_, serde_json::Error>(vec![NewEvent::new(&BookLent {
                book: "978-1".into(),
            })?])
        })
        .await
        .expect("decide on a query");
    let last = krescent
        .store()
        .read_after(
            Position::new(reacted.appended.expect("appended").position.get() - 1),
            1,
        )
        .await
        .expect("read");
    assert_eq!(last[0].meta.metadata.correlation_id(), Some("command-7"));
    assert_eq!(
        last[0].meta.metadata.causation_id(),
        Some(cause.event_id.to_string().as_str())
    );
    let by_hand = NewEvent::new(&BookLent {
        book: "978-1".into(),
    })
    .expect("encode")
    .caused_by(&last[0].meta);
    assert_eq!(by_hand.metadata.correlation_id(), Some("command-7"));
    let reloaded = krescent.load::<Library>("shelf").await.expect("load");
    assert_eq!(
        reloaded.model.seen.last(),
        Some(&(2, Some("command-7".to_owned()))),
        "handlers see the metadata"
    );
}

/// Split into segments, each segment of the old log equals the same segment of the current.
#[tokio::test]
async fn segments_upcast_like_the_whole() {
    let old = Krescent::new(InMemoryEventStore::new());
    let current = Krescent::new(InMemoryEventStore::new());
    append(old.store(), true, 0..history().len()).await;
    append(current.store(), false, 0..history().len()).await;
    let mut books = 0;
    for segment in Segment::all(2) {
        let a = old
            .for_segment(segment)
            .catch_up(SplitLibrary::default())
            .await
            .expect("catch up a segment of the old log");
        let b = current
            .for_segment(segment)
            .catch_up(SplitLibrary::default())
            .await
            .expect("catch up a segment of the current log");
        assert_eq!(a.model.state(), b.model.state(), "{segment:?}");
        books += a.model.books.len();
    }
    assert_eq!(books, 4);
}

/// A stored revision newer than the code knows stops the model with a typed error naming the
/// event, its position and both revisions; nothing is misread.
#[tokio::test]
async fn a_newer_revision_is_a_typed_error() {
    let krescent = Krescent::new(InMemoryEventStore::new());
    append(krescent.store(), true, 0..2).await;
    krescent
        .store()
        .append(
            "book-9",
            ExpectedVersion::Any,
            vec![event(
                "book.added",
                4,
                json!({"isbn": "978-9", "name": "Future", "copies": 1, "shelf": "B"}),
            )],
        )
        .await
        .expect("append");
    let error = krescent
        .catch_up(Library::default())
        .await
        .expect_err("a revision from the future");
    let Error::Handler {
        source: HandlerError::Decode(decode),
        ..
    } = &error
    else {
        panic!("not a decode error: {error}");
    };
    assert_eq!(
        (decode.event_type.as_str(), decode.position, decode.revision),
        ("book.added", Position::new(3), 4)
    );
    assert!(matches!(
        decode.source,
        DecodeFailure::UnknownRevision {
            stored: 4,
            current: 3
        }
    ));
    let message = decode.to_string();
    assert!(
        message.contains("position 3") && message.contains("revision 4"),
        "{message}"
    );
}

/// Revision 1 of `shelf.moved`: a shelf that may be empty, which revision 2 refuses.
#[derive(Deserialize)]
struct ShelfMovedV1 {
    to: String,
}

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(name = "shelf.moved", revision = 2, upcast(1 = ShelfMovedV1))]
struct ShelfMoved {
    to: char,
}

#[derive(Debug, thiserror::Error)]
#[error("shelf `{0}` is not one letter")]
struct NotAShelf(String);

impl TryFrom<ShelfMovedV1> for ShelfMoved {
    type Error = NotAShelf;

    fn try_from(v1: ShelfMovedV1) -> Result<Self, NotAShelf> {
        let mut chars = v1.to.chars();
        match (chars.next(), chars.next()) {
            (Some(to), None) => Ok(ShelfMoved { to }),
            _ => Err(NotAShelf(v1.to)),
        }
    }
}

/// A hop whose `TryFrom` refuses is a typed error naming the event, its position and both
/// revisions; one that accepts upcasts.
#[tokio::test]
async fn a_refused_hop_names_the_event_position_and_revisions() {
    let store = InMemoryEventStore::new();
    store
        .append(
            "shelves",
            ExpectedVersion::Any,
            vec![
                event("shelf.moved", 1, json!({"to": "B"})),
                event("shelf.moved", 1, json!({"to": "basement"})),
                event("shelf.moved", 1, json!({"too": "B"})),
            ],
        )
        .await
        .expect("append");
    let read = store.read_after(Position::START, 10).await.expect("read");
    assert_eq!(read[0].decode::<ShelfMoved>().expect("upcast").to, 'B');
    let refused = read[1].decode::<ShelfMoved>().unwrap_err();
    assert!(
        matches!(&refused.source, DecodeFailure::Upcast { from: 1, to: 2, source } if source.to_string() == "shelf `basement` is not one letter"),
        "{refused:?}"
    );
    assert_eq!(
        refused.to_string(),
        "cannot decode the `shelf.moved` event at position 2 (stored at revision 1): upcasting from revision 1 to 2 failed: shelf `basement` is not one letter"
    );
    let malformed = read[2].decode::<ShelfMoved>().unwrap_err();
    assert!(
        matches!(
            malformed.source,
            DecodeFailure::Malformed { revision: 1, .. }
        ),
        "{malformed:?}"
    );
}

/// Models over the revisions of one event, for their checkpoint versions.
macro_rules! counted {
    ($module:ident, $($event:tt)*) => {
        #[allow(dead_code)]
        mod $module {
            use krescent::prelude::*;

            #[derive(Deserialize)]
            pub struct CountedV1 {
                pub n: u32,
            }

            #[derive(Deserialize)]
            pub struct OtherCountedV1 {
                pub n: u32,
            }

            #[derive(Deserialize, Serialize)]
            pub struct CountedV2 {
                pub n: u32,
            }

            impl From<CountedV1> for CountedV2 {
                fn from(v1: CountedV1) -> Self {
                    CountedV2 { n: v1.n }
                }
            }

            impl From<OtherCountedV1> for CountedV2 {
                fn from(v1: OtherCountedV1) -> Self {
                    CountedV2 { n: v1.n + 1 }
                }
            }

            #[allow(dead_code)]
            fn double(v: serde_json::Value) -> Result<serde_json::Value, String> {
                Ok(v)
            }

            #[derive(Event, Serialize, Deserialize)]
            $($event)*
            pub struct Counted {
                pub n: u32,
            }

            impl From<CountedV2> for Counted {
                fn from(v2: CountedV2) -> Self {
                    Counted { n: v2.n }
                }
            }

            impl From<CountedV1> for Counted {
                fn from(v1: CountedV1) -> Self {
                    Counted { n: v1.n }
                }
            }

            #[derive(EventModel, Default)]
            #[model(name = "counts")]
            #[checkpoint(strategy = "always", storage = "memory")]
            pub struct Counts {
                #[checkpoint]
                pub n: u32,
            }

            #[krescent::handlers]
            impl Counts {
                fn counted(&mut self, e: &Counted) {
                    self.n += e.n;
                }
            }
        }
    };
}

counted!(r1, #[event(name = "counted")]);
counted!(r2, #[event(name = "counted", revision = 2, upcast(1 = CountedV1))]);
counted!(r2_json, #[event(name = "counted", revision = 2, upcast(1 = json(double)))]);
counted!(r2_kept, #[event(name = "counted", revision = 2, upcast(1 = CountedV1), compatible_since = 1)]);
counted!(r3_kept, #[event(name = "counted", revision = 3, upcast(1 = CountedV1, 2 = CountedV2), compatible_since = 1)]);
counted!(r3_since_2, #[event(name = "counted", revision = 3, upcast(1 = CountedV1, 2 = CountedV2), compatible_since = 2)]);
counted!(r3_other_hop, #[event(name = "counted", revision = 3, upcast(1 = OtherCountedV1, 2 = CountedV2), compatible_since = 2)]);

/// A revision bump rebuilds unless the event opts in with `compatible_since`; changing a
/// declared hop below that revision rebuilds.
#[tokio::test]
async fn revision_bumps_keep_checkpoints_only_when_opted_in() {
    let version = |v: CheckpointVersion| v.to_string();
    let base = version(CheckpointVersion::of::<r1::Counts>());
    assert_ne!(
        base,
        version(CheckpointVersion::of::<r2::Counts>()),
        "a bump rebuilds"
    );
    assert_ne!(
        version(CheckpointVersion::of::<r2::Counts>()),
        version(CheckpointVersion::of::<r2_json::Counts>()),
        "another hop, another version"
    );
    assert_eq!(
        base,
        version(CheckpointVersion::of::<r2_kept::Counts>()),
        "opted in"
    );
    assert_eq!(
        base,
        version(CheckpointVersion::of::<r3_kept::Counts>()),
        "opted in since 1"
    );
    assert_ne!(base, version(CheckpointVersion::of::<r3_since_2::Counts>()));
    assert_ne!(
        version(CheckpointVersion::of::<r3_since_2::Counts>()),
        version(CheckpointVersion::of::<r3_other_hop::Counts>()),
        "a changed hop below `compatible_since` rebuilds"
    );

    // And so it runs: a checkpoint of revision 1 is rebuilt by revision 2 without the opt-in,
    // and restored by the opted-in revision 3.
    let first = || async {
        let krescent = Krescent::new(InMemoryEventStore::new());
        krescent
            .store()
            .append(
                "c",
                ExpectedVersion::Any,
                vec![NewEvent::new(&r1::Counted { n: 5 }).expect("encode")],
            )
            .await
            .expect("append");
        krescent.catch_up(r1::Counts::default()).await.expect("r1");
        krescent
    };
    let rebuilt = first()
        .await
        .catch_up(r2::Counts::default())
        .await
        .expect("r2");
    assert!(
        matches!(rebuilt.origin, Origin::Rebuilt { .. }),
        "{:?}",
        rebuilt.origin
    );
    assert_eq!(rebuilt.model.n, 5);
    let krescent = first().await;
    krescent
        .store()
        .append(
            "c",
            ExpectedVersion::Any,
            vec![NewEvent::new(&r3_kept::Counted { n: 2 }).expect("encode")],
        )
        .await
        .expect("append");
    let kept = krescent
        .catch_up(r3_kept::Counts::default())
        .await
        .expect("r3 kept");
    assert_eq!(
        kept.origin,
        Origin::Restored {
            position: Position::new(1)
        }
    );
    assert_eq!(kept.model.n, 7);
    let older = krescent.catch_up(r2::Counts::default()).await;
    assert!(
        matches!(
            &older,
            Err(Error::Handler {
                source: HandlerError::Decode(DecodeError {
                    revision: 3,
                    source: DecodeFailure::UnknownRevision {
                        stored: 3,
                        current: 2
                    },
                    ..
                }),
                ..
            })
        ),
        "revision 2 cannot read what revision 3 wrote: {:?}",
        older.err()
    );
}

/// Another type recorded under `book.added`'s old name.
#[derive(Event, Serialize, Deserialize)]
#[event(name = "library.book_added")]
struct LegacyAdded {
    isbn: String,
}

#[derive(EventModel, Default)]
#[model(name = "library.confused")]
struct Confused {
    isbns: Vec<String>,
}

#[krescent::handlers]
impl Confused {
    fn added(&mut self, e: &BookAdded) {
        self.isbns.push(e.isbn.clone());
    }
    fn legacy(&mut self, e: &LegacyAdded) {
        self.isbns.push(e.isbn.clone());
    }
}

/// A model handling a type and another recorded under its old name is refused at start: the
/// second handler would never see its events.
#[tokio::test]
async fn an_old_name_taken_by_another_handled_type_is_refused() {
    let outcome = Krescent::new(InMemoryEventStore::new())
        .catch_up(Confused::default())
        .await;
    assert!(
        matches!(
            outcome,
            Err(Error::DuplicateEventName {
                model: "library.confused",
                name: "library.book_added"
            })
        ),
        "{:?}",
        outcome.err()
    );
}
