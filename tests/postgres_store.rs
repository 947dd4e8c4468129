//! The Postgres event store: the store contract, concurrent writers, migrations, names, the
//! live tail and how failures are classified.

use std::sync::Arc;
use std::time::{Duration, Instant};

use krescent::checkpoint::storage::PostgresCheckpointStorage;
use krescent::store::{
    EventStore, ExpectedVersion, PostgresConfig, PostgresEventStore, StoreError,
};
use krescent::{NewEvent, Position};
use krescent_testkit::postgres::{fresh_database, TestDatabase};

mod postgres {
    krescent_testkit::store_contract!(async {
        krescent_testkit::postgres::fresh_database()
            .await
            .event_store()
            .await
    });
}

fn event(n: u32) -> NewEvent {
    NewEvent::from_json("test.numbered", &format!(r#"{{"n":{n}}}"#)).expect("valid JSON")
}

fn numbers(events: &[krescent::RecordedEvent]) -> Vec<u64> {
    events
        .iter()
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(&e.payload).expect("JSON")["n"]
                .as_u64()
                .expect("n")
        })
        .collect()
}

fn quick(config: PostgresConfig) -> PostgresConfig {
    PostgresConfig {
        poll_interval: Duration::from_millis(100),
        ..config
    }
}

/// Two writers append a batch to one stream at the same expected version, truly at the same
/// time (the first holds its transaction open while the second arrives): exactly one wins, the
/// other gets a conflict naming the winner's version, and none of the loser's events exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_writers_at_one_version_exactly_one_wins() {
    let db = fresh_database().await;
    let a = db.event_store().await;
    let b = db.event_store().await;
    a.append(
        "order-1",
        ExpectedVersion::NoStream,
        vec![event(0), event(0)],
    )
    .await
    .expect("append");
    for round in 0..20u32 {
        let expected = ExpectedVersion::Exact(2 + u64::from(round) * 5);
        let batch = |writer: u32| {
            (1..=5)
                .map(|i| event(writer * 1000 + round * 10 + i))
                .collect::<Vec<_>>()
        };
        // The first writer dawdles inside its transaction half of the time.
        let dawdle = async move {
            if round % 2 == 0 {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            Ok(())
        };
        let (first, second) = tokio::join!(
            a.append_with("order-1", expected, batch(1), dawdle),
            async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                b.append("order-1", expected, batch(2)).await
            }
        );
        let (winner, loser) = match (&first, &second) {
            (Ok(_), Err(StoreError::Conflict { .. })) => (1, &second),
            (Err(StoreError::Conflict { .. }), Ok(_)) => (2, &first),
            other => panic!("round {round}: expected one success and one conflict, got {other:?}"),
        };
        match loser {
            Err(StoreError::Conflict { stream, actual, .. }) => {
                assert_eq!(
                    (stream.as_str(), *actual),
                    ("order-1", 2 + u64::from(round + 1) * 5)
                );
            }
            other => panic!("{other:?}"),
        }
        let tail = a
            .read_after(Position::START, usize::MAX)
            .await
            .expect("read");
        let last_five: Vec<u64> = numbers(&tail[tail.len() - 5..]);
        assert!(
            last_five.iter().all(|n| n / 1000 == winner),
            "round {round}: {last_five:?}"
        );
    }
    let all = a
        .read_after(Position::START, usize::MAX)
        .await
        .expect("read");
    assert_eq!(all.len(), 2 + 20 * 5);
    let versions: Vec<u64> = all.iter().map(|e| e.meta.stream_version).collect();
    assert_eq!(versions, (1..=102).collect::<Vec<_>>());
    assert_eq!(a.stream_version("order-1").await.expect("version"), 102);
}

/// An append whose transaction is rolled back (here by the test hook) leaves nothing behind,
/// returns the hook's error, and the next append continues the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rolled_back_append_writes_nothing() {
    let db = fresh_database().await;
    let store = db.event_store().await;
    store
        .append("s", ExpectedVersion::NoStream, vec![event(1)])
        .await
        .expect("append");
    let refused = store
        .append_with(
            "s",
            ExpectedVersion::Exact(1),
            vec![event(2), event(3)],
            async {
                Err(StoreError::Database {
                    source: "injected".into(),
                    transient: false,
                })
            },
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(StoreError::Database {
                transient: false,
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!(
        numbers(&store.read_after(Position::START, 100).await.expect("read")),
        [1]
    );
    let appended = store
        .append("s", ExpectedVersion::Exact(1), vec![event(4)])
        .await
        .expect("append");
    assert_eq!(appended.stream_version, 2);
    // The rolled-back append burnt its positions: a hole, never a reordering.
    let all = store.read_after(Position::START, 100).await.expect("read");
    assert_eq!(numbers(&all), [1, 4]);
    assert!(all[1].position() > all[0].position().next());
    assert_eq!(store.head().await.expect("head"), all[1].position());
}

/// An append that repeats a stored event's id (a retry of an append that committed although
/// its connection was lost) is `DuplicateEvent` naming that id, in any stream and at any place
/// of the batch, and writes nothing; a long table name (whose constraint name PostgreSQL
/// shortens) is no different.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_stored_event_id_is_a_duplicate_and_writes_nothing() {
    let db = fresh_database().await;
    let long = "events_of_a_bookstore_with_a_table_name_of_sixty_three_letters_";
    let configs = [
        PostgresConfig::default(),
        PostgresConfig {
            events_table: long.to_owned(),
            ..PostgresConfig::in_schema("long")
        },
    ];
    for config in configs {
        let store = db.event_store_with(config).await;
        let first = event(1);
        store
            .append("s", ExpectedVersion::NoStream, vec![first.clone()])
            .await
            .expect("append");
        let head = store.head().await.expect("head");
        for (stream, batch) in [
            ("s", vec![first.clone()]),
            ("t", vec![event(2), first.clone(), event(3)]),
        ] {
            let refused = store.append(stream, ExpectedVersion::Any, batch).await;
            assert!(
                matches!(
                    &refused,
                    Err(StoreError::DuplicateEvent { stream: s, event_id })
                        if s == stream && *event_id == first.event_id
                ),
                "{refused:?}"
            );
        }
        assert_eq!(store.head().await.expect("head"), head);
        assert_eq!(
            numbers(&store.read_after(Position::START, 100).await.expect("read")),
            [1]
        );
    }
}

/// An empty append checks the expected version and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_empty_append_only_checks_the_version() {
    let db = fresh_database().await;
    let store = db.event_store().await;
    store
        .append("s", ExpectedVersion::NoStream, vec![event(1), event(2)])
        .await
        .expect("append");
    let appended = store
        .append("s", ExpectedVersion::Exact(2), Vec::new())
        .await
        .expect("append");
    assert_eq!(
        (appended.position, appended.stream_version),
        (store.head().await.expect("head"), 2)
    );
    assert!(matches!(
        store
            .append("s", ExpectedVersion::NoStream, Vec::new())
            .await,
        Err(StoreError::Conflict { actual: 2, .. })
    ));
    assert_eq!(
        store
            .read_after(Position::START, 100)
            .await
            .expect("read")
            .len(),
        2
    );
}

/// `migrate` may run any number of times, from many connections at once, for the events and
/// the checkpoints table, and records one version per table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrate_is_idempotent_and_safe_concurrently() {
    let db = fresh_database().await;
    let config = PostgresConfig::in_schema("fresh_schema");
    let store = Arc::new(
        PostgresEventStore::connect_with(db.url(), config.clone())
            .await
            .expect("connect"),
    );
    let storage = store.checkpoint_storage();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    store.migrate().await.expect("migrate events");
                    store
                        .checkpoint_storage()
                        .migrate()
                        .await
                        .expect("migrate checkpoints");
                } else {
                    store
                        .checkpoint_storage()
                        .migrate()
                        .await
                        .expect("migrate checkpoints");
                    store.migrate().await.expect("migrate events");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("migration task");
    }
    store.migrate().await.expect("migrate again");
    storage.migrate().await.expect("migrate again");
    let client = db.client().await;
    let rows = client
        .query("SELECT component, version FROM fresh_schema.krescent_schema_migrations ORDER BY component", &[])
        .await
        .expect("query");
    let versions: Vec<(String, i32)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        versions,
        [
            ("checkpoints:krescent_checkpoints".to_owned(), 8),
            ("events:krescent_events".to_owned(), 4),
            // The slices of the rows before step 4 are filled (`store/postgres/slices.rs`).
            ("slices:krescent_events".to_owned(), 1)
        ]
    );
    store
        .append("s", ExpectedVersion::NoStream, vec![event(1)])
        .await
        .expect("append");
}

/// Names that are not plain lowercase identifiers are refused before any SQL runs, for the
/// store and the storage alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hostile_names_are_refused() {
    let db = fresh_database().await;
    let hostile = [
        PostgresConfig {
            schema: "public\"; DROP TABLE x; --".into(),
            ..PostgresConfig::default()
        },
        PostgresConfig {
            events_table: "Events".into(),
            ..PostgresConfig::default()
        },
        PostgresConfig {
            checkpoints_table: "a b".into(),
            ..PostgresConfig::default()
        },
        PostgresConfig {
            notify_channel: "chan'nel".into(),
            ..PostgresConfig::default()
        },
        PostgresConfig {
            schema: "pg_temp".into(),
            ..PostgresConfig::default()
        },
        PostgresConfig {
            events_table: "x".repeat(64),
            ..PostgresConfig::default()
        },
    ];
    for config in hostile {
        let refused = PostgresEventStore::connect_with(db.url(), config.clone()).await;
        assert!(
            matches!(refused, Err(StoreError::InvalidName { .. })),
            "{config:?}: {refused:?}"
        );
        let store = db.event_store().await;
        let storage = PostgresCheckpointStorage::new(store.pool().clone(), &config);
        assert!(
            matches!(storage, Err(StoreError::InvalidName { .. })),
            "{config:?}"
        );
    }
}

/// Reserved words are fine as names (they are always quoted), and stores on different tables
/// of one database are independent even when they share the notify channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stores_on_other_tables_are_independent() {
    let db = fresh_database().await;
    let select = db
        .event_store_with(quick(PostgresConfig {
            schema: "select".into(),
            events_table: "order".into(),
            ..PostgresConfig::default()
        }))
        .await;
    let plain = db.event_store_with(quick(PostgresConfig::default())).await;
    for n in 1..=3 {
        select
            .append("s", ExpectedVersion::Any, vec![event(n)])
            .await
            .expect("append");
    }
    plain
        .append("s", ExpectedVersion::NoStream, vec![event(10)])
        .await
        .expect("append");
    assert_eq!(
        numbers(&select.read_after(Position::START, 10).await.expect("read")),
        [1, 2, 3]
    );
    assert_eq!(
        numbers(&plain.read_after(Position::START, 10).await.expect("read")),
        [10]
    );
    assert_eq!(plain.head().await.expect("head"), Position::new(1));

    // A notification of the other table (at a higher position) does not wake this one's readers.
    let head = plain.head().await.expect("head");
    let waiting = plain.wait_for_append(head);
    tokio::pin!(waiting);
    let woke = tokio::time::timeout(Duration::from_millis(50), &mut waiting).await;
    assert!(woke.is_err(), "nothing was appended yet");
    let (woke, ()) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(5), waiting),
        async {
            select
                .append("s", ExpectedVersion::Any, vec![event(4)])
                .await
                .expect("append");
        }
    );
    woke.expect("the poll interval bounds the wait")
        .expect("wait");
    assert_eq!(plain.read_after(head, 10).await.expect("read").len(), 0);
}

/// A live reader waits on `LISTEN`, not on the poll interval: with an interval of a minute, an
/// append through another store (another connection) wakes it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_wait_for_append_wakes_on_notify() {
    let db = fresh_database().await;
    let slow = PostgresConfig {
        poll_interval: Duration::from_mins(1),
        ..PostgresConfig::default()
    };
    let reader = db.event_store_with(slow.clone()).await;
    let writer = db.event_store_with(slow).await;
    // The first wait starts the listener; later ones reuse it.
    for n in 1..=5u32 {
        let head = reader.head().await.expect("head");
        let started = Instant::now();
        let (woke, ()) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(20), reader.wait_for_append(head)),
            async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                writer
                    .append("s", ExpectedVersion::Any, vec![event(n)])
                    .await
                    .expect("append");
            }
        );
        woke.expect("woken by the notification").expect("wait");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(
            numbers(&reader.read_after(head, 10).await.expect("read")),
            [u64::from(n)]
        );
    }
}

/// Without a notification (a row inserted by hand, under the same lock) a waiting reader still
/// wakes within the poll interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_wait_for_append_falls_back_to_polling() {
    let db = fresh_database().await;
    let store = db
        .event_store_with(PostgresConfig {
            poll_interval: Duration::from_millis(300),
            ..PostgresConfig::default()
        })
        .await;
    store
        .append("s", ExpectedVersion::NoStream, vec![event(1)])
        .await
        .expect("append");
    let mut subscription = store.subscribe(Position::START);
    assert_eq!(
        numbers(&subscription.next_batch().await.expect("read")),
        [1]
    );
    let client = db.client().await;
    let insert = client.batch_execute(
        "INSERT INTO krescent_events (stream_id, stream_version, event_id, event_type, payload)
         VALUES ('s', 2, gen_random_uuid(), 'test.numbered', '{\"n\": 2}')",
    );
    let (batch, inserted) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(10), subscription.next_batch()),
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            insert.await
        }
    );
    inserted.expect("insert");
    assert_eq!(
        numbers(&batch.expect("woken by polling").expect("read")),
        [2]
    );
}

/// Payloads are `jsonb` in the table (queryable), and read back as JSON text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_payloads_are_jsonb() {
    let db = fresh_database().await;
    let store = db.event_store().await;
    let e = NewEvent::from_json("t", r#"{"title":"Dune","tags":["sf"],"n":1.5}"#).expect("JSON");
    let id = e.event_id;
    store
        .append("s", ExpectedVersion::NoStream, vec![e])
        .await
        .expect("append");
    let client = db.client().await;
    let row = client
        .query_one(
            "SELECT payload->>'title', jsonb_typeof(payload), event_id::text FROM krescent_events",
            &[],
        )
        .await
        .expect("query");
    let columns: (String, String, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(columns, ("Dune".into(), "object".into(), id.to_string()));
    let read = &store.read_after(Position::START, 1).await.expect("read")[0];
    let value: serde_json::Value = serde_json::from_str(&read.payload).expect("JSON");
    assert_eq!(
        value,
        serde_json::json!({"title": "Dune", "tags": ["sf"], "n": 1.5})
    );
    assert_eq!(read.meta.event_id, id);
}

/// Failures to reach the server are transient (a streaming model retries them); failures of
/// the statement are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connection_failures_are_transient() {
    let nowhere = tempfile::tempdir().expect("temp dir");
    let url = format!(
        "host={} port=5432 user=postgres dbname=x connect_timeout=2",
        nowhere.path().display()
    );
    match PostgresEventStore::connect(&url).await {
        Err(e @ StoreError::Database { .. }) => assert!(e.is_transient(), "{e}"),
        other => panic!("expected a transient database error, got {other:?}"),
    }
    let db: TestDatabase = fresh_database().await;
    let store = db.event_store().await;
    let client = db.client().await;
    client
        .batch_execute("DROP TABLE krescent_events")
        .await
        .expect("drop");
    match store.head().await {
        Err(e @ StoreError::Database { .. }) => {
            assert!(!e.is_transient(), "{e}");
            let message = e.to_string();
            assert!(
                message.contains("public.krescent_events")
                    && message.contains("does not exist")
                    && message.contains("42P01"),
                "{message}"
            );
        }
        other => panic!("expected a database error, got {other:?}"),
    }
}
