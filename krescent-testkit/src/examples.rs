//! The workspace's programs (the root package's examples, the `krescent` command), run as a
//! user runs them.

use std::path::{Path, PathBuf};

/// The binary of the example `name`, which `cargo test` builds beside the test binaries.
///
/// # Panics
/// When the binary is missing (a test target run alone, without `cargo test` building the
/// examples).
#[must_use]
pub fn example_binary(name: &str) -> PathBuf {
    existing(
        profile_dir().join("examples").join(executable(name)),
        "`cargo test` builds the examples",
    )
}

/// The binary `name` of a workspace member (`krescent`, of `krescent-cli`), which `cargo test
/// --workspace` builds into the same profile directory as the test binaries.
///
/// # Panics
/// When the binary is missing (a test run without `--workspace`: `cargo build -p
/// krescent-cli` first).
#[must_use]
pub fn workspace_binary(name: &str) -> PathBuf {
    existing(
        profile_dir().join(executable(name)),
        "`cargo test --workspace` builds it, or `cargo build -p krescent-cli`",
    )
}

fn profile_dir() -> PathBuf {
    let test = std::env::current_exe().expect("test binary");
    test.parent()
        .and_then(Path::parent)
        .expect("target profile directory")
        .to_path_buf()
}

fn executable(name: &str) -> String {
    format!("{name}{}", std::env::consts::EXE_SUFFIX)
}

fn existing(binary: PathBuf, how: &str) -> PathBuf {
    assert!(binary.exists(), "{} is missing: {how}", binary.display());
    binary
}
