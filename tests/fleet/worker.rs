//! A `fleet_worker` process (`src/bin/fleet_worker.rs`) and what it printed, for the fleet
//! tests.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use krescent_testkit::postgres::TestDatabase;

/// A worker process and what it printed.
pub struct Worker {
    child: Child,
    /// How many `fenced` lines it printed.
    pub fenced: Arc<AtomicUsize>,
    /// The segments it last said it processes (`segments=` lines), if it said so.
    pub segments: Arc<Mutex<Option<Vec<u32>>>>,
    reaped: bool,
}

impl Worker {
    /// Starts `fleet_worker` on `db` with `env`.
    pub fn spawn(db: &TestDatabase, env: &[(&str, &str)]) -> Worker {
        let binary = krescent_testkit::examples::workspace_binary("krescent-suite", "fleet_worker");
        let mut child = Command::new(binary)
            .arg(db.url())
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a worker");
        let fenced = Arc::new(AtomicUsize::new(0));
        let segments = Arc::new(Mutex::new(None));
        let stdout = child.stdout.take().expect("piped stdout");
        let (seen, held) = (fenced.clone(), segments.clone());
        let pid = child.id();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("fenced") {
                    println!("worker {pid}: {line}");
                    seen.fetch_add(1, Ordering::SeqCst);
                } else if line.starts_with("error") {
                    // Shown with a failing test's output.
                    println!("worker {pid}: {line}");
                } else if let Some(list) = line.strip_prefix("segments=") {
                    let list = list.split(',').filter_map(|s| s.parse().ok()).collect();
                    *held.lock().expect("lock") = Some(list);
                }
            }
        });
        Worker {
            child,
            fenced,
            segments,
            reaped: false,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it (`SIGKILL`) and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the worker");
        self.child.wait().expect("reap the worker");
        self.reaped = true;
    }

    /// Sends it `signal` (`-STOP`, `-CONT`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        let _ = Command::new("kill")
            .args(["-CONT", &self.pid().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
