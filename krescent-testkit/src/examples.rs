//! The root package's examples, run as a user runs them.

use std::path::PathBuf;

/// The binary of the example `name`, which `cargo test` builds beside the test binaries.
///
/// # Panics
/// When the binary is missing (a test target run alone, without `cargo test` building the
/// examples).
#[must_use]
pub fn example_binary(name: &str) -> PathBuf {
    let test = std::env::current_exe().expect("test binary");
    let profile_dir = test
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target profile directory");
    let binary = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: `cargo test` builds the examples",
        binary.display()
    );
    binary
}
