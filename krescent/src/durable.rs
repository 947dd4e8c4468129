//! Durable file writes shared by the file store and the file checkpoint storage.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes` atomically: written to a temporary file beside it, synced,
/// renamed over the old file, and the directory synced. A crash leaves the old file or the new
/// one, never a mix (at worst a leftover `*.tmp-<pid>` file beside it).
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(".tmp-{}", std::process::id()));
    let temp = PathBuf::from(temp);
    let mut file = File::create(&temp)?;
    file.write_all(bytes).and_then(|()| file.sync_all())?;
    drop(file);
    fs::rename(&temp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Makes the entries of `dir` (created, renamed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all())
}

/// Whether a file name is a temporary file of [`write_atomically`].
pub(crate) fn is_temporary(name: &str) -> bool {
    name.rsplit_once(".tmp-")
        .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}
