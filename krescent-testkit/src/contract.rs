//! Contract suites: the behaviour every event store and every checkpoint storage must show.
//!
//! Each suite is a set of async functions plus a macro that turns them into `#[tokio::test]`s
//! for one implementation:
//!
//! ```
//! mod memory {
//!     krescent_testkit::store_contract!(async { krescent::store::InMemoryEventStore::new() });
//! }
//! ```

pub mod storage;
pub mod store;

/// Generates the store contract tests for the store `$make` (an expression evaluating to a
/// future of a fresh, empty store). Invoke inside a module named after the store.
#[macro_export]
macro_rules! store_contract {
    ($make:expr) => {
        $crate::store_contract!(@tests $make;
            empty_store, append_and_read_in_order, read_after_with_limit,
            subscription_from_history_into_live, subscription_from_tail_sees_only_new,
            expected_version_conflicts, conflicting_batch_writes_nothing,
            empty_append_reports_the_stream, odd_strings_round_trip,
            non_json_payload_is_refused, read_matching_streams_and_types,
            conditional_append_over_a_query);
    };
    (@tests $make:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store = $make.await;
                $crate::contract::store::$case(&store).await;
            }
        )*
    };
}

/// Generates the checkpoint-storage contract tests for the storage `$make` (an expression
/// evaluating to a future of a fresh, empty storage). Invoke inside a module named after it.
#[macro_export]
macro_rules! storage_contract {
    ($make:expr) => {
        $crate::storage_contract!(@tests $make;
            load_of_unknown_namespace_is_none, store_then_load_round_trips_exactly,
            store_overrides, position_never_moves_backwards_within_a_version,
            another_version_replaces, delete_removes_one, list_and_clear);
    };
    (@tests $make:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let storage = $make.await;
                $crate::contract::storage::$case(&storage).await;
            }
        )*
    };
}
