//! Property: random commands from concurrent deciders keep every invariant, and the final
//! state equals a replay of the stream, on the memory, file and Postgres stores.

#[path = "write_model/lending.rs"]
mod lending;

use krescent::prelude::*;
use krescent::store::FileEventStore;
use lending::{replay, Book, LendError};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Command {
    Add(u32),
    Lend(u8),
    Return(u8),
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (1..3u32).prop_map(Command::Add),
        (0..5u8).prop_map(Command::Lend),
        (0..5u8).prop_map(Command::Return),
    ]
}

/// Each inner list is one task's commands, run one after another; the tasks run at once.
fn tasks() -> impl Strategy<Value = Vec<Vec<Command>>> {
    prop::collection::vec(prop::collection::vec(command(), 1..8), 2..5)
}

async fn run<S: EventStore>(krescent: Krescent<S>, tasks: Vec<Vec<Command>>) {
    let handles: Vec<_> = tasks
        .into_iter()
        .map(|commands| {
            let krescent = krescent.clone();
            tokio::spawn(async move {
                for command in commands {
                    let decided = krescent
                        .decide::<Book>("book")
                        .retries(50)
                        .backoff(std::time::Duration::from_micros(200))
                        .run(|book| match &command {
                            Command::Add(n) => book.add(*n),
                            Command::Lend(m) => book.lend(&format!("m{m}")),
                            Command::Return(m) => book.give_back(&format!("m{m}")),
                        })
                        .await;
                    match decided {
                        Ok(decided) => decided.model.check(),
                        Err(DecideError::Rejected { error, .. }) => {
                            assert!(!matches!(error, LendError::Encode(_)), "{error}");
                        }
                        Err(other) => panic!("{command:?}: {other}"),
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("decider task");
    }
    let (replayed, _) = replay(krescent.store(), "book").await;
    let loaded = krescent.load::<Book>("book").await.expect("load");
    assert_eq!(loaded.model, replayed);
    loaded.model.check();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn memory_deciders_keep_invariants_and_match_a_replay(tasks in tasks()) {
        runtime().block_on(run(Krescent::new(InMemoryEventStore::new()), tasks));
    }

    #[test]
    fn file_deciders_keep_invariants_and_match_a_replay(tasks in tasks()) {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
        let store = FileEventStore::open(dir.path().join("events")).expect("open");
        runtime().block_on(run(Krescent::new(store), tasks));
    }
}

proptest! {
    // A fresh database per case: fewer cases, the same property.
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn postgres_deciders_keep_invariants_and_match_a_replay(tasks in tasks()) {
        runtime().block_on(async {
            let db = krescent_testkit::postgres::fresh_database().await;
            run(Krescent::new(db.event_store().await), tasks).await;
        });
    }
}
