//! The store contract, against the memory and file stores.

mod memory {
    krescent_testkit::store_contract!(async { krescent::store::InMemoryEventStore::new() });
}

mod file {
    krescent_testkit::store_contract!(async {
        let dir = tempfile::tempdir().expect("temp dir").keep();
        krescent::store::FileEventStore::open(dir.join("events.log")).expect("open")
    });
}
