//! The checkpoint-storage contract, against the memory and file storages.

mod memory {
    krescent_testkit::storage_contract!(async {
        krescent::checkpoint::InMemoryCheckpointStorage::new()
    });
}

mod file {
    krescent_testkit::storage_contract!(async {
        let dir = tempfile::tempdir().expect("temp dir").keep();
        krescent::checkpoint::FileCheckpointStorage::open(dir).expect("open")
    });
}
