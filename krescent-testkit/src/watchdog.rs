//! The watchdog of a throwaway test server: a process that outlives the test process to clean
//! up after it, however it exits.

use std::process::{Child, Command, Stdio};

/// Starts `sh` running `then` (with `args` as `$1`…) once this test process has ended; `name`
/// is the watchdog's process name. It runs in its own process group, so a Ctrl-C of the tests
/// reaches it not.
///
/// # Panics
/// When `sh` cannot be started.
pub(crate) fn spawn(name: &str, then: &str, args: &[String]) -> Child {
    use std::os::unix::process::CommandExt as _;
    let script = format!(
        r#"test=$1; shift
while kill -0 "$test" 2>/dev/null; do sleep 1; done
{then}"#
    );
    Command::new("sh")
        .args(["-c", &script, name, &std::process::id().to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn the test server's watchdog")
}
