//! The store contract, against the memory and file stores.

mod memory {
    krescent_testkit::store_contract!(async { krescent::store::InMemoryEventStore::new() });
}

mod file {
    krescent_testkit::store_contract!(async {
        // Kept for the test's whole run, under `target/tmp` rather than the system's temp dir.
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("temp dir")
            .keep();
        krescent::store::FileEventStore::open(dir.join("events")).expect("open")
    });
}
