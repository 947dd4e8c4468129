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

/// The binary `name` of the workspace member `package` (`krescent`, of `krescent-cli`), built
/// (once per test process, and only what changed) into the same profile directory as the test
/// binaries: `cargo test` builds another package's binaries only as unit tests, so a test of the
/// root package that runs one builds it itself.
///
/// # Panics
/// When the build fails.
#[must_use]
pub fn workspace_binary(package: &str, name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = profile_dir();
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = std::process::Command::new(cargo);
        command.args(["build", "--quiet", "-p", package, "--bin", name]);
        if dir.file_name().is_some_and(|d| d == "release") {
            command.arg("--release");
        }
        let status = command.status().expect("run cargo");
        assert!(
            status.success(),
            "`cargo build -p {package} --bin {name}` failed"
        );
        built.push(name.to_owned());
    }
    existing(dir.join(executable(name)), "its build left no binary")
}

/// The `summary: key=value …` line an example prints.
#[derive(Debug)]
pub struct Summary(std::collections::BTreeMap<String, String>);

impl Summary {
    /// The value of `key`.
    ///
    /// # Panics
    /// When the line has no `key`.
    #[must_use]
    pub fn field(&self, key: &str) -> &str {
        self.0
            .get(key)
            .unwrap_or_else(|| panic!("no `{key}` in {:?}", self.0))
    }

    /// The value of `key`, a number.
    ///
    /// # Panics
    /// When the line has no `key` or its value is not a number.
    #[must_use]
    pub fn number(&self, key: &str) -> u64 {
        let value = self.field(key);
        value
            .parse()
            .unwrap_or_else(|e| panic!("`{key}={value}`: {e}"))
    }
}

/// Runs an example that prints a `summary: key=value …` line; that line.
///
/// # Panics
/// When the example fails or prints no summary line.
#[must_use]
pub fn run_summary(command: &mut std::process::Command) -> Summary {
    let output = command.output().expect("run the example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{command:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("summary: "))
        .unwrap_or_else(|| panic!("no summary line in {stdout:?}"));
    Summary(
        line.split(' ')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
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
