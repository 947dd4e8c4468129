//! A real S3 server for tests (feature `object-store`): the `moto` server from the Python
//! package index.
//!
//! [`MotoServer::shared`] starts one `moto_server` per test process on `127.0.0.1` and a free
//! port, found on `PATH` (or in `~/.pyenv/shims`, `~/.local/bin`), and waits until it answers;
//! a watchdog process stops it when the test process exits, however it exits.
//! [`fresh_storage`] gives every test a bucket of its own. Without `moto_server` the tests
//! fail with a message saying what to install (`pip install 'moto[server]'`); they never skip.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use krescent::checkpoint::ObjectStoreCheckpointStorage;

/// The region the test buckets are in (any name does for `moto`).
pub const REGION: &str = "us-east-1";

/// A `moto_server` process, stopped when dropped and by its watchdog when the test process
/// exits.
#[derive(Debug)]
pub struct MotoServer {
    address: SocketAddr,
    child: Child,
    watchdog: Child,
}

impl MotoServer {
    /// The server of this test process, started on first use.
    ///
    /// # Panics
    /// When it cannot be started; without `moto_server` the message says what to install.
    pub fn shared() -> &'static MotoServer {
        static SHARED: OnceLock<MotoServer> = OnceLock::new();
        SHARED.get_or_init(MotoServer::start)
    }

    /// Starts a server of its own on a free loopback port and waits until it answers.
    ///
    /// # Panics
    /// When it cannot be started.
    #[must_use]
    pub fn start() -> Self {
        let program = find_moto().unwrap_or_else(|| {
            panic!(
                "the object-store tests need the S3 test server `moto_server`, found neither on PATH \
                 nor in ~/.pyenv/shims or ~/.local/bin: install it with `pip install 'moto[server]'`"
            )
        });
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("find a free port")
            .port();
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", program.display()));
        let watchdog = spawn_watchdog(child.id());
        let server = MotoServer {
            address,
            child,
            watchdog,
        };
        server.wait_until_up(Duration::from_secs(60));
        server
    }

    /// `http://127.0.0.1:<port>`.
    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The address it listens on.
    #[must_use]
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    fn wait_until_up(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(status) = request(self.address, "GET", "/") {
                if status > 0 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer on {} within {within:?}",
                self.address
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Creates a bucket with a name no other test of this process uses; its name.
    ///
    /// # Panics
    /// When the server refuses.
    #[must_use]
    pub fn create_bucket(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "krescent-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let status =
            request(self.address, "PUT", &format!("/{name}")).expect("create a test bucket");
        assert_eq!(status, 200, "moto_server refused to create bucket `{name}`");
        name
    }

    /// The options that point a storage at this server (endpoint, region, dummy credentials,
    /// plain HTTP), for
    /// [`ObjectStoreCheckpointStorage::from_url_with`].
    #[must_use]
    pub fn options(&self) -> Vec<(&'static str, String)> {
        vec![
            ("aws_endpoint", self.endpoint()),
            ("aws_region", REGION.to_owned()),
            ("aws_access_key_id", "test".to_owned()),
            ("aws_secret_access_key", "test".to_owned()),
            ("aws_allow_http", "true".to_owned()),
        ]
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

/// A storage in a fresh bucket of the shared server, under the prefix `checkpoints`.
///
/// # Panics
/// When the server cannot be started or the storage cannot be built.
pub async fn fresh_storage() -> ObjectStoreCheckpointStorage {
    tokio::task::spawn_blocking(|| {
        let server = MotoServer::shared();
        let bucket = server.create_bucket();
        ObjectStoreCheckpointStorage::from_url_with(
            &format!("s3://{bucket}/checkpoints"),
            server.options(),
        )
        .expect("a storage on the test server")
    })
    .await
    .expect("start the test server")
}

/// Sends an unsigned request with no body (`moto` accepts those); the response's status.
fn request(address: SocketAddr, method: &str, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    Ok(text
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or(0))
}

fn find_moto() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(&home).join(".pyenv/shims"));
        dirs.push(PathBuf::from(home).join(".local/bin"));
    }
    dirs.into_iter()
        .map(|dir| dir.join("moto_server"))
        .find(|candidate| candidate.is_file())
}

/// A process that waits for this test process to end, then kills the server `pid`.
fn spawn_watchdog(pid: u32) -> Child {
    crate::watchdog::spawn(
        "krescent-moto-watchdog",
        r#"kill "$1" 2>/dev/null"#,
        &[pid.to_string()],
    )
}
