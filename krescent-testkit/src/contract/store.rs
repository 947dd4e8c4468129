//! The event store contract.

use std::time::{Duration, SystemTime};

use krescent::store::{EventStore, ExpectedVersion, StoreError, Subscription};
use krescent::{NewEvent, Position, RecordedEvent};

fn event(kind: &str, n: u32) -> NewEvent {
    NewEvent::from_json(kind, &format!(r#"{{"n":{n},"text":"é \"quoted\""}}"#)).expect("valid JSON")
}

fn numbers(events: &[RecordedEvent]) -> Vec<u64> {
    events
        .iter()
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(&e.payload).expect("payload is JSON")["n"]
                .as_u64()
                .expect("n")
        })
        .collect()
}

fn assert_increasing(events: &[RecordedEvent]) {
    for pair in events.windows(2) {
        assert!(
            pair[0].position() < pair[1].position(),
            "positions must increase: {:?}",
            events
                .iter()
                .map(RecordedEvent::position)
                .collect::<Vec<_>>()
        );
    }
}

async fn read_all<S: EventStore>(store: &S) -> Vec<RecordedEvent> {
    store
        .read_after(Position::START, usize::MAX)
        .await
        .expect("read")
}

/// An empty store has its head at the start and nothing to read.
pub async fn empty_store<S: EventStore>(store: &S) {
    assert_eq!(store.head().await.expect("head"), Position::START);
    assert!(read_all(store).await.is_empty());
    assert!(store
        .read_after(Position::new(10), 10)
        .await
        .expect("read")
        .is_empty());
}

/// Appended events come back in order, with their metadata and payloads intact.
pub async fn append_and_read_in_order<S: EventStore>(store: &S) {
    let before = SystemTime::now() - Duration::from_secs(1);
    let first = vec![
        event("a.created", 1),
        event("a.changed", 2),
        event("a.changed", 3),
    ];
    let ids: Vec<_> = first.iter().map(|e| e.event_id).collect();
    let appended = store
        .append("a-1", ExpectedVersion::NoStream, first)
        .await
        .expect("append");
    assert_eq!(appended.stream_version, 3);
    store
        .append("b-1", ExpectedVersion::Any, vec![event("b.created", 4)])
        .await
        .expect("append");
    let appended = store
        .append(
            "a-1",
            ExpectedVersion::Exact(3),
            vec![event("a.changed", 5)],
        )
        .await
        .expect("append");
    assert_eq!(appended.stream_version, 4);

    let all = read_all(store).await;
    assert_eq!(numbers(&all), [1, 2, 3, 4, 5]);
    assert_increasing(&all);
    assert_eq!(store.head().await.expect("head"), all[4].position());
    assert_eq!(appended.position, all[4].position());
    let streams: Vec<(&str, u64)> = all
        .iter()
        .map(|e| (&*e.meta.stream_id, e.meta.stream_version))
        .collect();
    assert_eq!(
        streams,
        [("a-1", 1), ("a-1", 2), ("a-1", 3), ("b-1", 1), ("a-1", 4)]
    );
    assert_eq!(
        all.iter()
            .take(3)
            .map(|e| e.meta.event_id)
            .collect::<Vec<_>>(),
        ids
    );
    assert_eq!(all[0].event_type(), "a.created");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&all[0].payload).expect("json")["text"],
        "é \"quoted\""
    );
    for e in &all {
        assert!(
            e.meta.recorded_at >= before
                && e.meta.recorded_at <= SystemTime::now() + Duration::from_secs(1)
        );
    }
}

/// Reading after a position returns what follows it, at most `limit` events.
pub async fn read_after_with_limit<S: EventStore>(store: &S) {
    let events = (1..=10).map(|n| event("x", n)).collect();
    store
        .append("x-1", ExpectedVersion::NoStream, events)
        .await
        .expect("append");
    let all = read_all(store).await;
    let third = all[2].position();
    assert_eq!(
        numbers(&store.read_after(third, 4).await.expect("read")),
        [4, 5, 6, 7]
    );
    assert_eq!(
        numbers(&store.read_after(third, 100).await.expect("read")),
        [4, 5, 6, 7, 8, 9, 10]
    );
    assert!(store
        .read_after(all[9].position(), 5)
        .await
        .expect("read")
        .is_empty());
    assert_eq!(
        numbers(&store.read_after(Position::START, 1).await.expect("read")),
        [1]
    );
}

async fn next<S: EventStore>(subscription: &mut Subscription<'_, S>) -> Vec<RecordedEvent> {
    tokio::time::timeout(Duration::from_secs(10), subscription.next_batch())
        .await
        .expect("subscription woke in time")
        .expect("read")
}

/// A subscription from the start reads the history, then the events appended later.
pub async fn subscription_from_history_into_live<S: EventStore>(store: &S) {
    store
        .append(
            "s",
            ExpectedVersion::NoStream,
            vec![event("x", 1), event("x", 2)],
        )
        .await
        .expect("append");
    let mut subscription = store.subscribe(Position::START);
    let mut seen = numbers(&next(&mut subscription).await);
    assert_eq!(seen, [1, 2]);
    let (append, batch) = tokio::join!(
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            store
                .append(
                    "s",
                    ExpectedVersion::Exact(2),
                    vec![event("x", 3), event("x", 4)],
                )
                .await
                .expect("append");
        },
        next(&mut subscription)
    );
    let () = append;
    seen.extend(numbers(&batch));
    while seen.len() < 4 {
        seen.extend(numbers(&next(&mut subscription).await));
    }
    assert_eq!(seen, [1, 2, 3, 4]);
}

/// A subscription from the tail sees only events appended after it started.
pub async fn subscription_from_tail_sees_only_new<S: EventStore>(store: &S) {
    store
        .append(
            "s",
            ExpectedVersion::NoStream,
            vec![event("x", 1), event("x", 2)],
        )
        .await
        .expect("append");
    let mut subscription = Subscription::from_tail(store).await.expect("head");
    store
        .append("s", ExpectedVersion::Any, vec![event("x", 3)])
        .await
        .expect("append");
    assert_eq!(numbers(&next(&mut subscription).await), [3]);
}

fn assert_conflict(
    result: Result<krescent::store::Appended, StoreError>,
    stream: &str,
    actual: u64,
) {
    match result {
        Err(StoreError::Conflict {
            stream: s,
            actual: a,
            ..
        }) => assert_eq!((s.as_str(), a), (stream, actual)),
        other => panic!("expected a conflict on `{stream}` at version {actual}, got {other:?}"),
    }
}

/// Appends with a wrong expected version fail with a conflict naming the stream and versions.
pub async fn expected_version_conflicts<S: EventStore>(store: &S) {
    store
        .append("c", ExpectedVersion::NoStream, vec![event("x", 1)])
        .await
        .expect("append");
    assert_conflict(
        store
            .append("c", ExpectedVersion::NoStream, vec![event("x", 2)])
            .await,
        "c",
        1,
    );
    assert_conflict(
        store
            .append("c", ExpectedVersion::Exact(5), vec![event("x", 2)])
            .await,
        "c",
        1,
    );
    assert_conflict(
        store
            .append("other", ExpectedVersion::Exact(1), vec![event("x", 2)])
            .await,
        "other",
        0,
    );
    store
        .append("c", ExpectedVersion::Exact(1), vec![event("x", 2)])
        .await
        .expect("append");
    store
        .append("c", ExpectedVersion::Any, vec![event("x", 3)])
        .await
        .expect("append");
    let message = store
        .append("c", ExpectedVersion::Exact(1), vec![event("x", 4)])
        .await
        .expect_err("conflict")
        .to_string();
    assert!(
        message.contains("`c`") && message.contains("version 1") && message.contains('3'),
        "{message}"
    );
    assert_eq!(numbers(&read_all(store).await), [1, 2, 3]);
}

/// A batch that conflicts writes none of its events.
pub async fn conflicting_batch_writes_nothing<S: EventStore>(store: &S) {
    store
        .append("c", ExpectedVersion::NoStream, vec![event("x", 1)])
        .await
        .expect("append");
    let batch = (2..=5).map(|n| event("x", n)).collect();
    assert_conflict(
        store.append("c", ExpectedVersion::NoStream, batch).await,
        "c",
        1,
    );
    let head = store.head().await.expect("head");
    assert_eq!(numbers(&read_all(store).await), [1]);
    assert_eq!(read_all(store).await[0].position(), head);
}

/// An empty append writes nothing and reports the store's head and the stream's version.
pub async fn empty_append_reports_the_stream<S: EventStore>(store: &S) {
    store
        .append(
            "e",
            ExpectedVersion::NoStream,
            vec![event("x", 1), event("x", 2)],
        )
        .await
        .expect("append");
    store
        .append("other", ExpectedVersion::NoStream, vec![event("x", 3)])
        .await
        .expect("append");
    let head = store.head().await.expect("head");
    let appended = store
        .append("e", ExpectedVersion::Exact(2), Vec::new())
        .await
        .expect("empty append");
    assert_eq!((appended.position, appended.stream_version), (head, 2));
    assert_conflict(
        store
            .append("e", ExpectedVersion::NoStream, Vec::new())
            .await,
        "e",
        2,
    );
    assert_eq!(numbers(&read_all(store).await), [1, 2, 3]);
}

/// Stream ids, types and payloads with the characters a careless format trips over.
#[must_use]
pub fn odd_strings() -> Vec<(String, String, String)> {
    let texts = [
        "quote \" and backslash \\".to_owned(),
        "NUL \0 inside".to_owned(),
        "controls \t\n\r\u{1}\u{1b}\u{7f}".to_owned(),
        "non-ASCII é 漢字 🙂".to_owned(),
        String::new(),
        "long ".repeat(200),
    ];
    texts
        .iter()
        .map(|text| {
            let payload = serde_json::json!({ "text": text, "list": [text] }).to_string();
            (format!("stream {text}"), format!("type {text}"), payload)
        })
        .collect()
}

/// Any string a user may append comes back byte for byte, or the store refuses it with
/// [`StoreError::Rejected`] before writing anything.
pub async fn odd_strings_round_trip<S: EventStore>(store: &S) {
    for (stream, event_type, payload) in odd_strings() {
        let head = store.head().await.expect("head");
        let event = NewEvent::from_json(&event_type, &payload).expect("JSON");
        match store
            .append(&stream, ExpectedVersion::Any, vec![event.clone()])
            .await
        {
            Ok(appended) => {
                let read = store.read_after(head, 10).await.expect("read");
                assert_eq!(read.len(), 1, "{stream:?}");
                assert_eq!(read[0].position(), appended.position);
                assert_eq!(&*read[0].meta.stream_id, stream.as_str());
                assert_eq!(read[0].event_type(), event_type.as_str());
                assert_eq!(read[0].meta.event_id, event.event_id);
                let value =
                    |json: &str| serde_json::from_str::<serde_json::Value>(json).expect("JSON");
                assert_eq!(value(&read[0].payload), value(&payload), "{stream:?}");
            }
            Err(StoreError::Rejected {
                stream: refused, ..
            }) => {
                assert_eq!(refused, stream);
                assert_eq!(
                    store.head().await.expect("head"),
                    head,
                    "a refused append writes nothing"
                );
            }
            Err(other) => {
                panic!("appending {stream:?}: expected success or a refusal, got {other}")
            }
        }
    }
}

/// A payload that is not JSON is refused with [`StoreError::Rejected`], and nothing is written.
pub async fn non_json_payload_is_refused<S: EventStore>(store: &S) {
    store
        .append("j", ExpectedVersion::NoStream, vec![event("x", 1)])
        .await
        .expect("append");
    let mut bad = event("x", 2);
    bad.payload = "not { json".into();
    let result = store
        .append("j", ExpectedVersion::Exact(1), vec![event("x", 3), bad])
        .await;
    assert!(
        matches!(&result, Err(StoreError::Rejected { stream, reason }) if stream == "j" && reason.contains("not JSON")),
        "{result:?}"
    );
    assert_eq!(numbers(&read_all(store).await), [1]);
}

/// `read_matching` returns the events of the query's streams and types after a position, in
/// order, up to its limit.
pub async fn read_matching_streams_and_types<S: EventStore>(store: &S) {
    use krescent::store::Query;
    for (i, n) in (0..6u32).enumerate() {
        let stream = ["a", "b", "c"][i % 3];
        let kind = if i == 4 { "x.special" } else { "x.plain" };
        store
            .append(stream, ExpectedVersion::Any, vec![event(kind, n)])
            .await
            .expect("append");
    }
    let read = |query: Query, after: u64, limit: usize| async move {
        let events = store
            .read_matching(&query, Position::new(after), limit)
            .await
            .expect("read");
        numbers(&events)
    };
    assert_eq!(read(Query::stream("a"), 0, 100).await, [0, 3]);
    assert_eq!(read(Query::stream("a"), 1, 100).await, [3]);
    assert_eq!(read(Query::streams(["a", "c"]), 0, 100).await, [0, 2, 3, 5]);
    assert_eq!(read(Query::streams(["a", "c"]), 0, 3).await, [0, 2, 3]);
    assert_eq!(read(Query::types(["x.special"]), 0, 100).await, [4]);
    assert_eq!(
        read(Query::stream("c").or_type("x.special"), 0, 100).await,
        [2, 4, 5]
    );
    assert!(read(Query::stream("nothing"), 0, 100).await.is_empty());
    assert!(read(Query::default(), 0, 100).await.is_empty());
    assert!(read(Query::stream("a"), 6, 100).await.is_empty());
}

/// `append_if` appends when nothing matching its query came after its position, and refuses
/// (writing nothing) with `QueryConflict` when something did; unrelated appends do not matter.
pub async fn conditional_append_over_a_query<S: EventStore>(store: &S) {
    use krescent::store::{AppendCondition, Query};
    store
        .append(
            "book-1",
            ExpectedVersion::NoStream,
            vec![event("book.added", 1)],
        )
        .await
        .expect("append");
    let read_at = store.head().await.expect("head");
    let query = Query::streams(["book-1", "member-1"]).or_type("library.closed");
    // Unrelated writers: another stream, another type.
    store
        .append("book-2", ExpectedVersion::Any, vec![event("book.added", 2)])
        .await
        .expect("append");
    let condition = AppendCondition::new(query.clone(), read_at);
    let appended = store
        .append_if(
            "member-1",
            ExpectedVersion::Any,
            vec![event("member.borrowed", 3)],
            &condition,
        )
        .await
        .expect("nothing matching changed");
    assert_eq!(appended.stream_version, 1);
    // The same condition again: the append just made matches it now.
    let head = store.head().await.expect("head");
    match store
        .append_if(
            "book-1",
            ExpectedVersion::Any,
            vec![event("book.lent", 4)],
            &condition,
        )
        .await
    {
        Err(StoreError::QueryConflict {
            stream,
            read_at: at,
            found,
            ..
        }) => {
            assert_eq!(stream, "book-1");
            assert_eq!(at, read_at);
            assert_eq!(found, appended.position);
        }
        other => panic!("expected a query conflict, got {other:?}"),
    }
    assert_eq!(store.head().await.expect("head"), head, "nothing written");
    // An event of a queried type in any stream conflicts too.
    store
        .append(
            "elsewhere",
            ExpectedVersion::Any,
            vec![event("library.closed", 5)],
        )
        .await
        .expect("append");
    let fresh = AppendCondition::new(query.clone(), head);
    let refused = store
        .append_if(
            "book-1",
            ExpectedVersion::Any,
            vec![event("book.lent", 6)],
            &fresh,
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::QueryConflict { .. })),
        "{refused:?}"
    );
    // Read at the head: it succeeds, and the stream's version is still checked.
    let now = AppendCondition::new(query, store.head().await.expect("head"));
    let wrong_version = store
        .append_if(
            "book-1",
            ExpectedVersion::Exact(7),
            vec![event("book.lent", 7)],
            &now,
        )
        .await;
    assert!(
        matches!(wrong_version, Err(StoreError::Conflict { actual: 1, .. })),
        "{wrong_version:?}"
    );
    store
        .append_if(
            "book-1",
            ExpectedVersion::Exact(1),
            vec![event("book.lent", 8)],
            &now,
        )
        .await
        .expect("append under the condition");
    let all = read_all(store).await;
    assert_eq!(numbers(&all), [1, 2, 3, 5, 8]);
}
