//! The file event store across restarts and crashes.

use krescent::store::{EventStore, ExpectedVersion, FileEventStore, StoreError};
use krescent::{NewEvent, Position};

fn event(n: u32) -> NewEvent {
    NewEvent::from_json("x", &format!(r#"{{"n":{n}}}"#)).expect("json")
}

async fn store_with_three(path: &std::path::Path) -> Vec<u8> {
    let store = FileEventStore::open(path).expect("open");
    for n in 1..=3 {
        store
            .append("s", ExpectedVersion::Any, vec![event(n)])
            .await
            .expect("append");
    }
    std::fs::read(path).expect("read log")
}

async fn payloads(store: &FileEventStore) -> Vec<String> {
    store
        .read_after(Position::START, 100)
        .await
        .expect("read")
        .iter()
        .map(|e| e.payload.to_string())
        .collect()
}

#[tokio::test]
async fn events_and_stream_versions_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("nested/events.log");
    store_with_three(&path).await;
    let store = FileEventStore::open(&path).expect("reopen");
    assert_eq!(
        payloads(&store).await,
        [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#]
    );
    assert_eq!(store.head().await.expect("head"), Position::new(3));
    assert!(matches!(
        store
            .append("s", ExpectedVersion::Exact(2), vec![event(9)])
            .await,
        Err(StoreError::Conflict { actual: 3, .. })
    ));
    let appended = store
        .append("s", ExpectedVersion::Exact(3), vec![event(4)])
        .await
        .expect("append");
    assert_eq!(appended.position, Position::new(4));
}

#[tokio::test]
async fn a_torn_last_record_is_dropped_and_earlier_ones_kept() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("events.log");
    let bytes = store_with_three(&path).await;
    for cut in [1, 5, 9, 20] {
        std::fs::write(&path, &bytes[..bytes.len() - cut]).expect("tear");
        let store = FileEventStore::open(&path).expect("open after tear");
        assert_eq!(
            payloads(&store).await,
            [r#"{"n":1}"#, r#"{"n":2}"#],
            "cut {cut}"
        );
        let appended = store
            .append("s", ExpectedVersion::Exact(2), vec![event(3)])
            .await
            .expect("append after tear");
        assert_eq!(appended.position, Position::new(3));
        drop(store);
        let reopened = FileEventStore::open(&path).expect("reopen");
        assert_eq!(
            payloads(&reopened).await,
            [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#],
            "cut {cut}"
        );
        std::fs::write(&path, &bytes).expect("restore");
    }
}

#[tokio::test]
async fn garbage_after_the_last_record_is_dropped() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("events.log");
    let mut bytes = store_with_three(&path).await;
    bytes.extend_from_slice(&[7, 0, 0, 0, 1, 2, 3, 4, b'{', b'x', b'}']);
    std::fs::write(&path, &bytes).expect("write");
    let store = FileEventStore::open(&path).expect("open");
    assert_eq!(payloads(&store).await.len(), 3);
}

#[tokio::test]
async fn damage_before_the_last_record_is_an_error_naming_the_place() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("events.log");
    let mut bytes = store_with_three(&path).await;
    bytes[12] ^= 0x55;
    std::fs::write(&path, &bytes).expect("write");
    match FileEventStore::open(&path) {
        Err(StoreError::Corrupt {
            path: p,
            offset,
            reason,
        }) => {
            assert_eq!((p, offset), (path.clone(), 0));
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected a corrupt-log error, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(&path).expect("read"),
        bytes,
        "a damaged log is left as it was"
    );
}
