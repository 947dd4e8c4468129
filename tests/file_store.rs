//! The file event store across restarts, crashes and damage.

use std::path::{Path, PathBuf};

use krescent::store::{EventStore, ExpectedVersion, FileEventStore, FileStoreOptions, StoreError};
use krescent::{NewEvent, Position, RecordedEvent};
use proptest::prelude::*;

fn event(n: u32) -> NewEvent {
    NewEvent::from_json("x", &format!(r#"{{"n":{n}}}"#)).expect("json")
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir")
}

/// Small segments, so that a few appends span several.
fn small_segments() -> FileStoreOptions {
    FileStoreOptions::default().segment_bytes(4096)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// What a reader compares: everything an event is, its id and time included.
type Seen = (
    u64,
    String,
    u64,
    uuid::Uuid,
    String,
    String,
    std::time::SystemTime,
);

fn seen(events: &[RecordedEvent]) -> Vec<Seen> {
    events
        .iter()
        .map(|e| {
            let m = &e.meta;
            (
                m.position.get(),
                m.stream_id.to_string(),
                m.stream_version,
                m.event_id,
                m.event_type.to_string(),
                e.payload.to_string(),
                m.recorded_at,
            )
        })
        .collect()
}

async fn read_all(store: &FileEventStore) -> Result<Vec<RecordedEvent>, StoreError> {
    store.read_after(Position::START, usize::MAX).await
}

/// The segment files of a store, in order.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    paths.sort();
    paths
}

#[tokio::test]
async fn events_and_stream_versions_survive_a_reopen() {
    let dir = temp_dir();
    let path = dir.path().join("nested/events");
    let store = FileEventStore::open_with(&path, &small_segments()).expect("open");
    for n in 1..=200 {
        let stream = format!("s{}", n % 3);
        store
            .append(&stream, ExpectedVersion::Any, vec![event(n)])
            .await
            .expect("append");
    }
    let before = seen(&read_all(&store).await.expect("read"));
    drop(store);
    assert!(segments(&path).len() > 2, "small segments roll");
    let store = FileEventStore::open_with(&path, &small_segments()).expect("reopen");
    assert_eq!(seen(&read_all(&store).await.expect("read")), before);
    assert_eq!(store.head().await.expect("head"), Position::new(200));
    assert_eq!(store.stream_version("s1"), 67);
    assert!(matches!(
        store
            .append("s1", ExpectedVersion::Exact(66), vec![event(9)])
            .await,
        Err(StoreError::Conflict { actual: 67, .. })
    ));
    let appended = store
        .append("s1", ExpectedVersion::Exact(67), vec![event(201)])
        .await
        .expect("append");
    assert_eq!(
        (appended.position, appended.stream_version),
        (Position::new(201), 68)
    );
    for after in [0, 1, 57, 199, 200, 201, 500] {
        let read = store
            .read_after(Position::new(after), 10)
            .await
            .expect("read");
        let expected: Vec<u64> = (after + 1..=201).take(10).collect();
        assert_eq!(
            read.iter().map(|e| e.position().get()).collect::<Vec<_>>(),
            expected,
            "after {after}"
        );
    }
}

#[tokio::test]
async fn odd_strings_and_a_megabyte_id_read_back_after_a_reopen() {
    let dir = temp_dir();
    let store = FileEventStore::open(dir.path()).expect("open");
    let mut cases = krescent_testkit::contract::store::odd_strings();
    cases.push((
        "i".repeat(1 << 20),
        "t".repeat(1 << 20),
        format!("{:?}", "p".repeat(1 << 20)),
    ));
    for (stream, event_type, payload) in &cases {
        let event = NewEvent::from_json(event_type, payload).expect("JSON");
        store
            .append(stream, ExpectedVersion::NoStream, vec![event])
            .await
            .expect("append");
    }
    drop(store);
    let store = FileEventStore::open(dir.path()).expect("reopen");
    let read = read_all(&store).await.expect("read");
    let got: Vec<_> = read
        .iter()
        .map(|e| {
            (
                e.meta.stream_id.to_string(),
                e.event_type().to_owned(),
                e.payload.to_string(),
            )
        })
        .collect();
    assert_eq!(got, cases);
}

#[tokio::test]
async fn index_files_are_rebuilt_when_missing_or_damaged() {
    let dir = temp_dir();
    let store = FileEventStore::open_with(dir.path(), &small_segments()).expect("open");
    for n in 1..=300 {
        store
            .append(&format!("s{}", n % 5), ExpectedVersion::Any, vec![event(n)])
            .await
            .expect("append");
    }
    let before = seen(&read_all(&store).await.expect("read"));
    drop(store);
    for entry in std::fs::read_dir(dir.path()).expect("dir") {
        let path = entry.expect("entry").path();
        match path.extension().and_then(|x| x.to_str()) {
            Some("idx") => std::fs::remove_file(&path).expect("remove"),
            Some("state") => std::fs::write(&path, b"garbage").expect("damage"),
            _ => {}
        }
    }
    let store = FileEventStore::open_with(dir.path(), &small_segments()).expect("reopen");
    assert_eq!(seen(&read_all(&store).await.expect("read")), before);
    assert_eq!(store.stream_version("s0"), 60);
}

/// 150 events over several small segments, the store closed.
async fn a_closed_store_of_small_segments(dir: &Path) -> Vec<PathBuf> {
    let store = FileEventStore::open_with(dir, &small_segments()).expect("open");
    for n in 1..=150 {
        store
            .append(&format!("s{}", n % 3), ExpectedVersion::Any, vec![event(n)])
            .await
            .expect("append");
    }
    drop(store);
    let segments = segments(dir);
    assert!(segments.len() > 2, "small segments roll");
    segments
}

fn corrupt_at(dir: &Path) -> (PathBuf, String) {
    match FileEventStore::open_with(dir, &small_segments()) {
        Err(StoreError::Corrupt { path, reason, .. }) => (path, reason),
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(_) => panic!("opened a log shorter than its own evidence"),
    }
}

/// `head.state` records events in the last segment: a log without that segment is refused,
/// naming it, rather than opened shorter.
#[tokio::test]
async fn a_deleted_last_segment_is_corrupt_not_a_shorter_log() {
    let dir = temp_dir();
    let segments = a_closed_store_of_small_segments(dir.path()).await;
    let last = segments.last().expect("a segment");
    std::fs::remove_file(last).expect("delete");
    let (path, reason) = corrupt_at(dir.path());
    assert_eq!(&path, last);
    assert!(reason.contains("missing"), "{reason}");
}

/// A segment cut at an append boundary (here: every append gone) after `head.state` or its
/// index counted it, the last one or a sealed one, is refused, naming it.
#[tokio::test]
async fn a_segment_cut_at_an_append_boundary_is_corrupt() {
    for which in ["last", "sealed"] {
        let dir = temp_dir();
        let segments = a_closed_store_of_small_segments(dir.path()).await;
        let segment = match which {
            "last" => segments.last(),
            _ => segments.first(),
        }
        .expect("a segment");
        let header = std::fs::read(segment).expect("read")[..24].to_vec();
        std::fs::write(segment, header).expect("cut");
        let (path, reason) = corrupt_at(dir.path());
        assert_eq!(&path, segment, "{which}: {reason}");
        assert!(reason.contains("cut short"), "{which}: {reason}");
    }
}

#[tokio::test]
async fn what_is_not_a_store_is_refused_and_left_alone() {
    let dir = temp_dir();
    let missing = dir.path().join("missing");
    assert!(matches!(
        FileEventStore::open_existing(&missing),
        Err(StoreError::NotAStore { .. })
    ));
    assert!(!missing.exists(), "open_existing creates nothing");
    let foreign = dir.path().join("foreign");
    std::fs::create_dir(&foreign).expect("dir");
    std::fs::write(foreign.join("notes.txt"), "mine").expect("write");
    for open in [
        FileEventStore::open(&foreign),
        FileEventStore::open_existing(&foreign),
    ] {
        let error = open.expect_err("a directory of other files");
        assert!(matches!(error, StoreError::NotAStore { .. }), "{error}");
        assert!(error.to_string().contains("notes.txt"), "{error}");
    }
    assert_eq!(
        std::fs::read_dir(&foreign).expect("dir").count(),
        1,
        "nothing created"
    );
    let file = dir.path().join("events.log");
    std::fs::write(&file, b"old").expect("write");
    assert!(matches!(
        FileEventStore::open(&file),
        Err(StoreError::NotAStore { .. })
    ));
}

#[tokio::test]
async fn a_second_process_is_refused_while_the_store_is_open() {
    let dir = temp_dir();
    let store = FileEventStore::open(dir.path()).expect("open");
    match FileEventStore::open(dir.path()) {
        Err(StoreError::Locked { path }) => assert_eq!(path, dir.path()),
        other => panic!("expected a locked store, got {other:?}"),
    }
    drop(store);
    FileEventStore::open(dir.path()).expect("free again");
}

#[tokio::test]
async fn another_format_is_refused_not_misread() {
    let dir = temp_dir();
    let store = FileEventStore::open(dir.path()).expect("open");
    store
        .append("s", ExpectedVersion::Any, vec![event(1)])
        .await
        .expect("append");
    drop(store);
    let segment = &segments(dir.path())[0];
    let mut bytes = std::fs::read(segment).expect("read");
    bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..20]);
    bytes[20..24].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(segment, &bytes).expect("write");
    match FileEventStore::open(dir.path()) {
        Err(StoreError::UnsupportedFormat {
            found: 3,
            supported: 2,
            ..
        }) => {}
        other => panic!("expected an unsupported format, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(segment).expect("read"),
        bytes,
        "left as it was"
    );
}

#[tokio::test]
async fn a_log_of_krescent_0_1_is_imported_whole() {
    let dir = temp_dir();
    let legacy = dir.path().join("events.log");
    let mut bytes = Vec::new();
    let streams = ["a\"b", "a\"b", "c\\d", "a\"b"];
    for (i, stream) in streams.iter().enumerate() {
        let version = streams[..=i].iter().filter(|s| *s == stream).count();
        let body = serde_json::json!({
            "position": i + 1, "stream": stream, "version": version,
            "id": uuid::Uuid::new_v4(), "type": "t\"q", "at": 1_700_000_000_000_000_u64 + i as u64,
            "payload": {"n": i, "s": "\"quoted\""},
        })
        .to_string();
        bytes.extend_from_slice(&u32::try_from(body.len()).expect("small").to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(body.as_bytes()).to_le_bytes());
        bytes.extend_from_slice(body.as_bytes());
    }
    bytes.extend_from_slice(&[9, 0, 0, 0, 1]); // a torn last record, as 0.1 could leave
    std::fs::write(&legacy, &bytes).expect("write");
    let store = FileEventStore::open(dir.path().join("events")).expect("open");
    assert_eq!(store.import_legacy(&legacy).await.expect("import"), 4);
    let read = read_all(&store).await.expect("read");
    let got: Vec<_> = read
        .iter()
        .map(|e| {
            (
                &*e.meta.stream_id,
                e.meta.stream_version,
                e.position().get(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("a\"b", 1, 1),
            ("a\"b", 2, 2),
            ("c\\d", 1, 3),
            ("a\"b", 3, 4)
        ]
    );
    assert_eq!(
        read[2].meta.recorded_at,
        std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_000_002)
    );
    assert!(
        matches!(
            store.import_legacy(&legacy).await,
            Err(StoreError::Rejected { .. })
        ),
        "only into an empty store"
    );
}

/// One append of a generated history: a stream id, and each event's type and payload size.
#[derive(Debug, Clone)]
struct Append {
    stream: String,
    events: Vec<(String, usize)>,
}

fn appends() -> impl Strategy<Value = Vec<Append>> {
    // Any string: every Unicode scalar value (NUL, controls, quotes, astral planes), of any length up to 24.
    let text = || prop::string::string_regex("(?s).{0,24}").expect("regex");
    let append = (text(), prop::collection::vec((text(), 0..200usize), 1..4))
        .prop_map(|(stream, events)| Append { stream, events });
    prop::collection::vec(append, 1..8)
}

/// What [`write_history`] wrote.
struct History {
    /// The events before the last append.
    before: Vec<Seen>,
    /// All events.
    after: Vec<Seen>,
    /// The segment of the last append.
    segment: PathBuf,
    /// Where the last append starts in it.
    start: u64,
    /// `head.state` as it was on disk while the last append was being written (a crash in it
    /// leaves this one), if there was one.
    state_before: Option<Vec<u8>>,
}

/// Writes `appends` into a new store in `dir`.
fn write_history(dir: &Path, appends: &[Append]) -> History {
    runtime().block_on(async {
        let store = FileEventStore::open_with(dir, &small_segments()).expect("open");
        let (last, before) = appends.split_last().expect("one append");
        for append in before {
            append_one(&store, append).await;
        }
        let state_before = std::fs::read(dir.join("head.state")).ok();
        let before = seen(&read_all(&store).await.expect("read"));
        let (count, len) = (
            segments(dir).len(),
            std::fs::metadata(segments(dir).pop().expect("a segment"))
                .expect("segment")
                .len(),
        );
        append_one(&store, last).await;
        let after = seen(&read_all(&store).await.expect("read"));
        // The last append lies in the last segment: a new one is begun before an append, never after.
        let segment = segments(dir).pop().expect("a segment");
        let start = if segments(dir).len() > count { 24 } else { len };
        History {
            before,
            after,
            segment,
            start,
            state_before,
        }
    })
}

async fn append_one(store: &FileEventStore, append: &Append) {
    let events = append
        .events
        .iter()
        .map(|(event_type, size)| {
            NewEvent::from_json(
                event_type,
                &serde_json::json!({ "p": "x".repeat(*size) }).to_string(),
            )
            .expect("JSON")
        })
        .collect();
    store
        .append(&append.stream, ExpectedVersion::Any, events)
        .await
        .expect("append");
}

/// Opens the store in `dir` and reads everything, as a restart would.
fn reopen(dir: &Path) -> Result<Vec<Seen>, StoreError> {
    runtime().block_on(async {
        let store = FileEventStore::open_with(dir, &small_segments())?;
        read_all(&store).await.map(|events| seen(&events))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// A crash in the middle of the last append, at any byte: the next open has exactly the
    /// appends before it, whole, and the store takes appends again.
    #[test]
    fn a_torn_last_append_vanishes_whole(appends in appends()) {
        let dir = temp_dir();
        let History { before, after, segment, start, state_before } = write_history(dir.path(), &appends);
        let bytes = std::fs::read(&segment).expect("segment");
        let state = dir.path().join("head.state");
        for cut in start..bytes.len() as u64 {
            std::fs::write(&segment, &bytes[..usize::try_from(cut).expect("small")]).expect("cut");
            match &state_before {
                Some(saved) => std::fs::write(&state, saved).expect("state as the crash left it"),
                None => drop(std::fs::remove_file(&state)),
            }
            prop_assert_eq!(&reopen(dir.path()).expect("a torn append is no corruption"), &before, "cut at {}", cut);
        }
        std::fs::write(&segment, &bytes).expect("whole again");
        prop_assert_eq!(reopen(dir.path()).expect("whole"), after);
    }

    /// One bit flipped anywhere in any file of the store: the open or the read fails with
    /// `Corrupt`, or every event comes back exactly — never fewer events without an error.
    #[test]
    fn a_flipped_bit_is_detected_or_harmless(appends in appends(), file in any::<prop::sample::Index>(), bit in any::<prop::sample::Index>()) {
        let dir = temp_dir();
        let after = write_history(dir.path(), &appends).after;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path()).expect("dir").map(|e| e.expect("entry").path())
            .filter(|p| p.file_name().is_some_and(|n| n != "LOCK")).collect();
        files.sort();
        let path = file.get(&files);
        let mut bytes = std::fs::read(path).expect("read");
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        std::fs::write(path, &bytes).expect("flip");
        match reopen(dir.path()) {
            Ok(events) => prop_assert_eq!(events, after, "bit {} of {}", bit, path.display()),
            Err(StoreError::Corrupt { .. }) => prop_assert!(path.extension().is_some_and(|x| x == "seg"), "only damage to a segment is an error"),
            Err(other) => prop_assert!(false, "bit {} of {}: {}", bit, path.display(), other),
        }
    }
}

#[test]
fn every_bit_of_a_small_log_is_checked() {
    let dir = temp_dir();
    let history = [
        Append {
            stream: "a\"\0".into(),
            events: vec![("t".into(), 5), ("u".into(), 0)],
        },
        Append {
            stream: "b".into(),
            events: vec![("t".into(), 20)],
        },
    ];
    let History { after, segment, .. } = write_history(dir.path(), &history);
    let bytes = std::fs::read(&segment).expect("segment");
    std::fs::remove_file(dir.path().join("head.state")).ok();
    let mut detected = 0;
    for bit in 0..bytes.len() * 8 {
        let mut damaged = bytes.clone();
        damaged[bit / 8] ^= 1 << (bit % 8);
        std::fs::write(&segment, &damaged).expect("flip");
        match reopen(dir.path()) {
            Ok(events) => assert_eq!(events, after, "bit {bit}"),
            Err(StoreError::Corrupt { path, .. }) => {
                assert_eq!(path, segment);
                detected += 1;
            }
            Err(other) => panic!("bit {bit}: {other}"),
        }
        std::fs::remove_file(dir.path().join("head.state")).ok();
    }
    assert_eq!(
        detected,
        bytes.len() * 8,
        "every bit of a segment is covered by a checksum"
    );
    std::fs::write(&segment, &bytes).expect("whole");
    assert_eq!(reopen(dir.path()).expect("whole"), after);
}
