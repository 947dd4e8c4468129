//! A real Postgres for tests (feature `postgres`).
//!
//! [`fresh_database`] gives every test a database of its own. It uses the server at
//! `KRESCENT_TEST_DATABASE_URL` when that is set; otherwise it starts one throwaway server per
//! test process from the installed binaries (found on `PATH`, through `pg_config --bindir`, or
//! in `/usr/lib/postgresql/*/bin`), initialised in a temporary directory and listening only on a
//! unix socket there. When the tests run as root the server runs as the `postgres` user
//! (`initdb` refuses root). A watchdog process stops the server and removes the directory when
//! the test process exits, however it exits. Without binaries the tests fail with a message
//! saying what to install; they never skip.
//!
//! Tests that stop and restart a server start a [`TestServer`] of their own.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use krescent::checkpoint::storage::PostgresCheckpointStorage;
use krescent::store::{PostgresConfig, PostgresEventStore};
/// The driver, for tests that run SQL of their own.
pub use tokio_postgres;

/// The environment variable naming a server to use instead of a throwaway one.
pub const DATABASE_URL_VAR: &str = "KRESCENT_TEST_DATABASE_URL";

/// The port the throwaway servers use; only their socket's name depends on it.
const PORT: u16 = 5432;

/// A database of one test, on the shared server or the one at `KRESCENT_TEST_DATABASE_URL`.
///
/// # Panics
/// When no server can be started (no binaries: the message says what to install) or the
/// database cannot be created.
pub async fn fresh_database() -> TestDatabase {
    match std::env::var(DATABASE_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => {
            static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
            SWEPT.get_or_init(|| sweep_stale_databases(&url)).await;
            create_database(&url).await
        }
        _ => TestServer::shared().create_database().await,
    }
}

/// A database created for one test.
pub struct TestDatabase {
    name: String,
    url: String,
}

impl fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestDatabase")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TestDatabase {
    /// The database's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How to connect to it, for [`PostgresEventStore::connect`] or `tokio_postgres`.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The connection configuration.
    ///
    /// # Panics
    /// Never for the URLs this module makes.
    #[must_use]
    pub fn config(&self) -> tokio_postgres::Config {
        tokio_postgres::Config::from_str(&self.url).expect("a test database URL parses")
    }

    /// A migrated event store with the default configuration.
    pub async fn event_store(&self) -> PostgresEventStore {
        self.event_store_with(PostgresConfig::default()).await
    }

    /// A migrated event store with `config`.
    ///
    /// # Panics
    /// When the database refuses.
    pub async fn event_store_with(&self, config: PostgresConfig) -> PostgresEventStore {
        let store = PostgresEventStore::connect_with(&self.url, config)
            .await
            .expect("connect to the test database");
        store.migrate().await.expect("migrate the events table");
        store
    }

    /// A migrated checkpoint storage with the default configuration.
    ///
    /// # Panics
    /// When the database refuses.
    pub async fn checkpoint_storage(&self) -> PostgresCheckpointStorage {
        let store = PostgresEventStore::connect(&self.url)
            .await
            .expect("connect to the test database");
        let storage = store.checkpoint_storage();
        storage
            .migrate()
            .await
            .expect("migrate the checkpoints table");
        storage
    }

    /// A plain connection, for SQL a test runs itself; its connection task is spawned.
    ///
    /// # Panics
    /// When the database cannot be reached.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.config()).await
    }
}

/// The prefix of test databases' names; the creation time in Unix seconds follows.
const PREFIX: &str = "krescent_test_";
/// How old a test database on an external server must be before a later run drops it.
const STALE_AFTER_SECS: u64 = 3600;

/// Test databases outlive their test (a store may still use one when the test's values are
/// dropped); on an external server, the first test of each process drops those older than an
/// hour instead.
async fn sweep_stale_databases(admin_url: &str) {
    let client = connect(&admin_config(admin_url)).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let names = client
        .query(
            "SELECT datname FROM pg_database WHERE starts_with(datname, $1)",
            &[&PREFIX],
        )
        .await
        .unwrap_or_else(|e| panic!("cannot list the databases of {DATABASE_URL_VAR}: {e}"));
    for row in names {
        let name: String = row.get(0);
        let created: Option<u64> = name[PREFIX.len()..]
            .split('_')
            .next()
            .and_then(|secs| secs.parse().ok());
        if created.is_some_and(|created| created + STALE_AFTER_SECS < now) {
            // Another run may be dropping it at the same time: ignore failures.
            let _ = client
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await;
        }
    }
}

fn admin_config(admin_url: &str) -> tokio_postgres::Config {
    tokio_postgres::Config::from_str(admin_url).unwrap_or_else(|e| {
        panic!("{DATABASE_URL_VAR} is not a valid Postgres URL ({e}): `{admin_url}`")
    })
}

/// Creates a uniquely named database on the server at `admin_url`.
async fn create_database(admin_url: &str) -> TestDatabase {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let admin = admin_config(admin_url);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let name = format!(
        "{PREFIX}{}_{}_{}_{:09}",
        now.as_secs(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        now.subsec_nanos()
    );
    let client = connect(&admin).await;
    client
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap_or_else(|e| panic!("cannot create test database `{name}`: {e}"));
    TestDatabase {
        url: with_dbname(admin_url, &name),
        name,
    }
}

async fn connect(config: &tokio_postgres::Config) -> tokio_postgres::Client {
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test server ({config:?}): {e}"));
    tokio::spawn(async move {
        // The connection ends with an error when a test stops the server; that is expected.
        let _ = connection.await;
    });
    client
}

/// `url` with its database replaced by `name`, in either connection-string syntax.
fn with_dbname(url: &str, name: &str) -> String {
    let Some(rest) = url
        .strip_prefix("postgresql://")
        .or_else(|| url.strip_prefix("postgres://"))
    else {
        // Key-value syntax: a later key wins.
        return format!("{url} dbname={name}");
    };
    let scheme = &url[..url.len() - rest.len()];
    let (before_query, query) = rest
        .split_once('?')
        .map_or((rest, None), |(b, q)| (b, Some(q)));
    let authority = before_query
        .split_once('/')
        .map_or(before_query, |(a, _)| a);
    match query {
        Some(query) => format!("{scheme}{authority}/{name}?{query}"),
        None => format!("{scheme}{authority}/{name}"),
    }
}

/// A throwaway Postgres server in a temporary directory, on a unix socket only.
///
/// [`TestServer::shared`] is the one [`fresh_database`] uses; [`TestServer::new`] starts one
/// of a test's own, which it may [`stop_immediately`](Self::stop_immediately) and
/// [`start`](Self::start) again. A server of a test's own is stopped and removed when dropped;
/// every server is also stopped by its watchdog when the test process exits.
pub struct TestServer {
    bindir: PathBuf,
    dir: PathBuf,
    run_as: Option<String>,
    /// Serializes starts and stops.
    state: Mutex<()>,
    /// Stops the server when the test process ends; killed when the server is dropped.
    watchdog: Option<Child>,
}

impl fmt::Debug for TestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestServer")
            .field("dir", &self.dir)
            .field("run_as", &self.run_as)
            .finish_non_exhaustive()
    }
}

impl TestServer {
    /// The server of this test process, started on first use.
    ///
    /// # Panics
    /// When it cannot be started; without binaries the message says what to install.
    pub fn shared() -> &'static TestServer {
        static SHARED: OnceLock<TestServer> = OnceLock::new();
        SHARED.get_or_init(TestServer::new)
    }

    /// Initialises and starts a server of its own.
    ///
    /// # Panics
    /// When it cannot be started; without binaries the message says what to install.
    #[must_use]
    pub fn new() -> Self {
        let bindir = find_bindir().unwrap_or_else(|| {
            panic!(
                "the Postgres tests need the PostgreSQL server binaries (initdb, pg_ctl, postgres), found neither on PATH, \
                 through `pg_config --bindir` nor in /usr/lib/postgresql/*/bin: install them (`apt-get install postgresql`) \
                 or set {DATABASE_URL_VAR} to a server the tests may create databases on"
            )
        });
        let dir = tempfile::Builder::new()
            .prefix("krescent-pg-")
            .tempdir_in(socket_parent())
            .expect("create a temporary directory for the test server")
            .keep();
        let run_as = running_as_root().then(unprivileged_user);
        if let Some(user) = &run_as {
            let (uid, gid) =
                user_ids(user).unwrap_or_else(|| panic!("cannot find the uid of user `{user}`"));
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .expect("hand the temporary directory to the server's user");
        }
        let mut server = TestServer {
            bindir,
            dir,
            run_as,
            state: Mutex::new(()),
            watchdog: None,
        };
        server.initdb();
        server.watchdog = Some(server.spawn_watchdog());
        server.start();
        server
    }

    /// The directory holding the socket (the `host` to connect to).
    #[must_use]
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// How to connect to `database` as the superuser `postgres`.
    #[must_use]
    pub fn url(&self, database: &str) -> String {
        format!(
            "host={} port={PORT} user=postgres dbname={database}",
            self.dir.display()
        )
    }

    /// A new database on this server.
    pub async fn create_database(&self) -> TestDatabase {
        create_database(&self.url("postgres")).await
    }

    /// Starts the server (again, after [`stop_immediately`](Self::stop_immediately)) and
    /// waits until it accepts connections.
    ///
    /// # Panics
    /// When it does not start; the message holds the server's log.
    pub fn start(&self) {
        let _guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let log = self.dir.join("server.log");
        let data = self.dir.join("data");
        let output = self.pg_ctl(&[
            "start",
            "-w",
            "-t",
            "60",
            "-D",
            path_str(&data),
            "-l",
            path_str(&log),
        ]);
        assert!(
            output.status.success(),
            "the test server did not start: {}{}\n--- server log ---\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server the hard way (`pg_ctl stop -m immediate`: every connection is cut, no
    /// shutdown checkpoint), as a crash would.
    ///
    /// # Panics
    /// When `pg_ctl` fails.
    pub fn stop_immediately(&self) {
        let _guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let output = self.pg_ctl(&[
            "stop",
            "-w",
            "-m",
            "immediate",
            "-D",
            path_str(&self.dir.join("data")),
        ]);
        assert!(
            output.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn initdb(&self) {
        let initdb = self.bindir.join("initdb");
        let data = self.dir.join("data");
        let output = self
            .command(&initdb)
            .args([
                "-D",
                path_str(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
            ])
            .output()
            .expect("run initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // fsync = off only skips flushing the OS's cache, which a server crash (the fault tests'
        // `stop -m immediate`) does not lose. synchronous_commit stays on: without it a crash
        // loses commits that were acknowledged, and that readers may have seen.
        let settings = format!(
            "\n# krescent test server\nlisten_addresses = ''\nunix_socket_directories = '{}'\nport = {PORT}\n\
             fsync = off\nfull_page_writes = off\nmax_connections = 200\nshared_buffers = 32MB\n",
            self.dir.display()
        );
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str(&settings);
        std::fs::write(&conf, text).expect("write postgresql.conf");
    }

    /// A process that waits for this test process to end, then stops the server and removes
    /// its directory.
    fn spawn_watchdog(&self) -> Child {
        // `$1` the directory, then the command that stops the server.
        let mut args = vec![path_str(&self.dir).to_owned()];
        if let Some(user) = &self.run_as {
            args.extend(["runuser".into(), "-u".into(), user.clone(), "--".into()]);
        }
        args.push(path_str(&self.bindir.join("pg_ctl")).to_owned());
        args.extend([
            "stop".into(),
            "-m".into(),
            "immediate".into(),
            "-D".into(),
            path_str(&self.dir.join("data")).to_owned(),
        ]);
        crate::watchdog::spawn(
            "krescent-pg-watchdog",
            r#"dir=$1; shift
[ -d "$dir/data" ] && "$@"
rm -rf "$dir""#,
            &args,
        )
    }

    fn pg_ctl(&self, args: &[&str]) -> std::process::Output {
        self.command(&self.bindir.join("pg_ctl"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl")
    }

    /// `program`, as the unprivileged user when running as root, in the server's directory.
    fn command(&self, program: &Path) -> Command {
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        command.current_dir(&self.dir).env("LC_ALL", "C");
        command
    }
}

impl Default for TestServer {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&[
            "stop",
            "-w",
            "-m",
            "immediate",
            "-D",
            path_str(&self.dir.join("data")),
        ]);
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("the test server's paths are UTF-8")
}

/// Where to make the server's directory: the temporary directory, unless its path is too long
/// for a unix socket (about 107 bytes).
fn socket_parent() -> PathBuf {
    let temp = std::env::temp_dir();
    if temp.as_os_str().len() <= 60 {
        temp
    } else {
        PathBuf::from("/tmp")
    }
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`.
fn find_bindir() -> Option<PathBuf> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("KRESCENT_PG_BINDIR") {
        candidates.push(dir.into());
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            // Wrappers such as /usr/local/bin/pg_ctl are symlinks into the real directory.
            if let Ok(real) = std::fs::canonicalize(dir.join("pg_ctl")) {
                candidates.extend(real.parent().map(Path::to_path_buf));
            }
            candidates.push(dir);
        }
    }
    if let Ok(output) = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
    {
        if output.status.success() {
            candidates.push(String::from_utf8_lossy(&output.stdout).trim().into());
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .flatten()
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
            .collect();
        versions.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
        candidates.extend(versions.into_iter().map(|(_, dir)| dir));
    }
    candidates.into_iter().find(|dir| complete(dir))
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match std::fs::metadata("/proc/self") {
        Ok(meta) => meta.uid() == 0,
        Err(_) => Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0"),
    }
}

/// The user to run the server as when the tests run as root.
fn unprivileged_user() -> String {
    if user_ids("postgres").is_some() {
        "postgres"
    } else {
        "nobody"
    }
    .to_owned()
}

fn user_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == user).then_some(())?;
        let _password = fields.next()?;
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::with_dbname;

    #[test]
    fn replaces_the_database_of_either_syntax() {
        assert_eq!(
            with_dbname("host=/tmp user=x", "t1"),
            "host=/tmp user=x dbname=t1"
        );
        assert_eq!(
            with_dbname("postgres://u:p@h:5/app?sslmode=disable", "t1"),
            "postgres://u:p@h:5/t1?sslmode=disable"
        );
        assert_eq!(with_dbname("postgresql://h", "t1"), "postgresql://h/t1");
    }
}
