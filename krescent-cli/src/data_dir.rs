//! A file data directory: the event store and the checkpoint storage a krescent program
//! (the bookstore example) keeps in it. The one place that knows its layout.

use std::path::{Path, PathBuf};

use krescent::checkpoint::FileCheckpointStorage;
use krescent::store::FileEventStore;

use crate::error::CliError;

/// The event log, in the data directory.
const EVENTS: &str = "events";
/// The checkpoints' directory, in the data directory.
const CHECKPOINTS: &str = "checkpoints";

/// The stores of a data directory.
pub struct DataDir {
    pub store: FileEventStore,
    pub storage: FileCheckpointStorage,
}

/// Opens the data directory `dir`, checking its layout first: a directory that lacks
/// the event store `events/` or `checkpoints/` is refused, and nothing is created in it.
pub fn open(dir: &Path) -> Result<DataDir, CliError> {
    let refuse = |reason: String| CliError::NotADataDir {
        path: dir.to_path_buf(),
        reason,
    };
    if !dir.is_dir() {
        return Err(refuse(if dir.exists() {
            "it is not a directory".to_owned()
        } else {
            "it does not exist".to_owned()
        }));
    }
    let events: PathBuf = dir.join(EVENTS);
    let checkpoints = dir.join(CHECKPOINTS);
    if !events.is_dir() {
        return Err(refuse(format!("it has no event store `{EVENTS}/`")));
    }
    if !checkpoints.is_dir() {
        return Err(refuse(format!(
            "it has no checkpoints directory `{CHECKPOINTS}/`"
        )));
    }
    Ok(DataDir {
        store: FileEventStore::open_existing(events)?,
        storage: FileCheckpointStorage::open(checkpoints)?,
    })
}
