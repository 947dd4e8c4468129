//! The checkpoint-storage contract, against the memory and file storages.

mod memory {
    krescent_testkit::storage_contract!(async {
        krescent::checkpoint::InMemoryCheckpointStorage::new()
    });
}

mod file {
    krescent_testkit::storage_contract!(async {
        // Kept for the test's whole run, under `target/tmp` rather than the system's temp dir.
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("temp dir")
            .keep();
        krescent::checkpoint::FileCheckpointStorage::open(dir).expect("open")
    });
}
