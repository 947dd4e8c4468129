//! The `krescent` command, run as an operator runs it: against a data directory the bookstore
//! wrote, and against a real PostgreSQL server.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use krescent::checkpoint::PostgresCheckpointStorage;
use krescent::fleet::Segment;
use krescent::prelude::*;
use krescent::projection::{PostgresProjection, ProjectionError};
use krescent::store::{EventStore, ExpectedVersion, FileEventStore, PostgresEventStore};
use krescent::Krescent;
use krescent_testkit::examples::{example_binary, run_summary, workspace_binary};
use krescent_testkit::postgres::TestDatabase;
use serde_json::Value;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "book.lent")]
struct BookLent {
    book_id: String,
    user_id: String,
}

/// `krescent` with no store from the environment; stdin closed, so a question is declined.
fn krescent() -> Command {
    let mut command = Command::new(workspace_binary("krescent-cli", "krescent"));
    command.env_remove("DATABASE_URL").stdin(Stdio::null());
    command
}

fn on_dir(dir: &Path) -> Command {
    let mut command = krescent();
    command.arg("--data-dir").arg(dir);
    command
}

fn on_db(url: &str) -> Command {
    let mut command = krescent();
    command.args(["--database-url", url]);
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("run krescent")
}

/// Runs a command that must succeed; its stdout.
fn ok(command: &mut Command) -> String {
    let output = run(command);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn json(command: &mut Command) -> Value {
    let stdout = ok(command.arg("--json"));
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// Runs a command that must fail with `code` and one line on stderr; that line.
fn fails(command: &mut Command, code: i32) -> String {
    let output = run(command);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(code), "{command:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.starts_with("krescent: "), "{stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr:?}");
    assert!(output.stdout.is_empty(), "nothing on stdout on failure");
    stderr
}

/// `(position, lag)` of the namespace's checkpoint, as `checkpoints list --json` says.
fn listed(command: &mut Command, namespace: &str) -> Option<(u64, u64)> {
    let listing = json(command.args(["checkpoints", "list"]));
    listing["checkpoints"]
        .as_array()
        .expect("an array of checkpoints")
        .iter()
        .find(|c| c["namespace"] == namespace)
        .map(|c| {
            (
                c["position"].as_u64().expect("position"),
                c["lag"].as_u64().expect("lag"),
            )
        })
}

/// Runs an example; its summary line's `restored_from` and `replayed`.
fn summary(command: &mut Command) -> (String, u64) {
    let summary = run_summary(command);
    (
        summary.field("restored_from").to_owned(),
        summary.number("replayed"),
    )
}

fn bookstore() -> Command {
    let mut command = Command::new(example_binary("bookstore"));
    command.env_remove("DATABASE_URL");
    command
}

fn lent(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| {
            NewEvent::new(&BookLent {
                book_id: "book-1".into(),
                user_id: format!("user-{i}"),
            })
            .expect("encode")
        })
        .collect()
}

/// `lent(n)`, the first with odd metadata.
fn lent_with_metadata(n: usize) -> Vec<NewEvent> {
    let mut events = lent(n);
    events[0] = events[0].clone().with_metadata(
        krescent::Metadata::new()
            .with("correlation_id", "c-1")
            .with(
                "odd \"key\" ✓",
                serde_json::json!({"nested": [1, "é\n", null]}),
            ),
    );
    events
}

/// `events tail` shows the revision and metadata of the events of `lent_with_metadata`.
fn assert_envelopes_shown(lines: &[Value]) {
    assert_eq!(lines[0]["revision"], 1);
    assert_eq!(lines[0]["metadata"]["correlation_id"], "c-1");
    assert_eq!(
        lines[0]["metadata"]["odd \"key\" ✓"],
        serde_json::json!({"nested": [1, "é\n", null]})
    );
    assert_eq!(
        lines[1]["metadata"],
        serde_json::json!({}),
        "none shows as empty"
    );
}

/// Every file under `dir` with its bytes, to show that nothing changed.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read");
                files.push((path.display().to_string(), bytes));
            }
        }
    }
    files.sort();
    files
}

const BOOKS: &str = "bookstore.books";

/// The bookstore's checkpoint verifies; after a flipped bit in its file, `show` says it does
/// not, `list` lists it as corrupt, and `delete` deletes it.
fn a_corrupt_checkpoint_is_reported_and_deleted(data: &Path) {
    let shown = json(on_dir(data).args(["checkpoints", "show", BOOKS]));
    assert_eq!(shown["integrity"], "verified");
    assert!(
        shown["checksum"].as_str().is_some_and(|c| c.len() == 10),
        "{shown}"
    );
    let text = ok(on_dir(data).args(["checkpoints", "show", BOOKS]));
    assert!(
        text.lines()
            .any(|l| l.starts_with("integrity") && l.contains("verified (checksum 0x")),
        "{text}"
    );

    let file = std::fs::read_dir(data.join("checkpoints"))
        .expect("checkpoints dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.to_string_lossy().contains(BOOKS))
        .expect("the checkpoint file");
    let mut bytes = std::fs::read(&file).expect("read");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&file, &bytes).expect("flip");
    let line = fails(on_dir(data).args(["checkpoints", "show", BOOKS]), 1);
    assert!(line.contains("corrupt checkpoint"), "{line}");
    let listing = json(on_dir(data).args(["checkpoints", "list"]));
    assert_eq!(listing["corrupt"][0]["namespace"], BOOKS, "{listing}");
    let table = ok(on_dir(data).args(["checkpoints", "list"]));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(BOOKS) && l.trim_end().ends_with("corrupt")),
        "{table}"
    );

    let deleted = json(on_dir(data).args(["checkpoints", "delete", BOOKS, "--yes"]));
    assert_eq!(deleted["deleted"], true);
    assert!(deleted.get("position").is_none(), "unknown: {deleted}");
}

#[tokio::test]
async fn checkpoints_of_a_bookstore_data_dir_are_listed_deleted_and_replayed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path();
    let (restored, replayed) = summary(
        bookstore()
            .arg("--data-dir")
            .arg(data)
            .args(["--events", "300"]),
    );
    assert_eq!((restored.as_str(), replayed), ("none", 300));

    assert_eq!(
        listed(&mut on_dir(data), BOOKS),
        Some((300, 0)),
        "caught up"
    );
    let table = ok(on_dir(data).args(["checkpoints", "list"]));
    assert!(table.starts_with("NAMESPACE"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(BOOKS) && l.contains(" 300 ")),
        "{table}"
    );

    // Seven appends the model has not seen yet.
    {
        let store = FileEventStore::open(data.join("events")).expect("open the store");
        store
            .append("extra", ExpectedVersion::NoStream, lent_with_metadata(7))
            .await
            .expect("append");
    }
    assert_eq!(listed(&mut on_dir(data), BOOKS), Some((300, 7)), "lag 7");

    let shown = json(on_dir(data).args(["checkpoints", "show", BOOKS]));
    assert_eq!(shown["position"], 300);
    assert_eq!(shown["keys"][0]["key"], "books");
    assert_eq!(shown["keys"][0]["kind"], "json");
    assert!(shown["bucket"]["books"].is_object(), "{shown}");
    let stats = json(on_dir(data).args(["store", "stats"]));
    assert_eq!(
        (stats["head"].as_u64(), stats["events"].as_u64()),
        (Some(307), Some(307))
    );
    let per_type: u64 = stats["types"]
        .as_object()
        .expect("types")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(per_type, 307);

    let tail = ok(on_dir(data).args(["events", "tail", "--after", "300", "--type", "book.lent"]));
    let lines: Vec<Value> = tail
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 7, "{tail}");
    assert_eq!(lines[0]["position"], 301);
    assert_eq!(lines[0]["stream_id"], "extra");
    assert_eq!(lines[6]["payload"]["user_id"], "user-6");
    assert_envelopes_shown(&lines);
    let limited = ok(on_dir(data).args(["events", "tail", "--limit", "2"]));
    assert_eq!(limited.lines().count(), 2);

    // Nothing of these changes the directory.
    let before = snapshot(data);
    let dry = json(on_dir(data).args(["checkpoints", "delete", BOOKS, "--dry-run"]));
    assert_eq!(
        (dry["dry_run"].as_bool(), dry["deleted"].as_bool()),
        (Some(true), Some(false))
    );
    fails(on_dir(data).args(["checkpoints", "delete", BOOKS]), 1); // not confirmed
    fails(
        on_dir(data).args(["checkpoints", "delete", "books.unknown", "--yes"]),
        1,
    );
    fails(
        on_dir(data).args(["checkpoints", "show", "books.unknown"]),
        1,
    );
    fails(on_dir(data).args(["events", "tail", "--after", "-3"]), 2);
    fails(on_dir(data).args(["events", "tail", "--after", "x1"]), 2);
    fails(on_dir(data).args(["events", "tail", "--follow"]), 2); // the file store cannot follow
    fails(on_dir(data).args(["models", "delete", BOOKS, "--yes"]), 2); // needs PostgreSQL
    assert_eq!(
        snapshot(data),
        before,
        "the dry run and the failures changed nothing"
    );
    assert_eq!(listed(&mut on_dir(data), BOOKS), Some((300, 7)));

    a_corrupt_checkpoint_is_reported_and_deleted(data);
    assert_eq!(listed(&mut on_dir(data), BOOKS), None);
    let (restored, replayed) = summary(
        bookstore()
            .arg("--data-dir")
            .arg(data)
            .args(["--events", "10"]),
    );
    assert_eq!(
        (restored.as_str(), replayed),
        ("none", 317),
        "replays everything"
    );
    assert_eq!(listed(&mut on_dir(data), BOOKS), Some((317, 0)));
}

#[test]
fn a_directory_that_is_not_a_data_dir_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("notes.txt"), "not a store").expect("write");
    let before = snapshot(dir.path());
    for args in [
        &["checkpoints", "list"][..],
        &["store", "stats"],
        &["checkpoints", "delete", BOOKS, "--yes"],
    ] {
        let line = fails(on_dir(dir.path()).args(args), 1);
        assert!(line.contains("is not a krescent data directory"), "{line}");
    }
    let missing = dir.path().join("missing");
    fails(on_dir(&missing).args(["checkpoints", "list"]), 1);
    // Bad usage is found before the directory is opened.
    fails(on_dir(dir.path()).args(["events", "tail", "--follow"]), 2);
    fails(
        on_dir(dir.path()).args(["models", "delete", BOOKS, "--yes"]),
        2,
    );
    assert!(!missing.exists(), "nothing created");
    assert_eq!(snapshot(dir.path()), before, "nothing created or changed");
    fails(krescent().args(["checkpoints", "list"]), 2); // no store named
}

#[tokio::test]
async fn checkpoints_on_postgres_are_listed_and_deleted() {
    let database = krescent_testkit::postgres::fresh_database().await;
    let url = database.url();
    let (restored, _) = summary(
        bookstore()
            .env("DATABASE_URL", url)
            .args(["--events", "200"]),
    );
    assert_eq!(restored, "none");
    assert_eq!(listed(&mut on_db(url), BOOKS), Some((200, 0)));
    // DATABASE_URL names the store just as well.
    let mut from_env = krescent();
    from_env.env("DATABASE_URL", url);
    assert_eq!(listed(&mut from_env, BOOKS), Some((200, 0)));

    let store = PostgresEventStore::connect(url).await.expect("connect");
    store
        .append("extra", ExpectedVersion::NoStream, lent(5))
        .await
        .expect("append");
    assert_eq!(listed(&mut on_db(url), BOOKS), Some((200, 5)), "lag 5");

    json(on_db(url).args(["checkpoints", "delete", BOOKS, "--dry-run"]));
    fails(
        on_db(url).args(["checkpoints", "delete", "books.unknown", "--yes"]),
        1,
    );
    fails(on_db(url).args(["checkpoints", "delete", BOOKS]), 1);
    assert_eq!(
        listed(&mut on_db(url), BOOKS),
        Some((200, 5)),
        "nothing changed"
    );

    let tail = ok(on_db(url).args(["events", "tail", "--after", "200"]));
    assert_eq!(tail.lines().count(), 5);
    // Following: the events there are, then a live one.
    let follow = on_db(url)
        .args([
            "events", "tail", "--after", "204", "--follow", "--limit", "2",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    store
        .append("live", ExpectedVersion::NoStream, lent(1))
        .await
        .expect("append");
    let followed = tokio::task::spawn_blocking(move || follow.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    let positions: Vec<u64> = String::from_utf8_lossy(&followed.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("JSON")["position"]
                .as_u64()
                .expect("position")
        })
        .collect();
    assert_eq!(positions, [205, 206]);

    ok(on_db(url).args(["checkpoints", "delete", BOOKS, "--yes"]));
    assert_eq!(listed(&mut on_db(url), BOOKS), None);
    let (restored, replayed) = summary(
        bookstore()
            .env("DATABASE_URL", url)
            .args(["--events", "10"]),
    );
    assert_eq!(
        (restored.as_str(), replayed),
        ("none", 216),
        "replays everything"
    );

    let line = fails(
        on_db("postgres://krescent@127.0.0.1:1/nowhere").args(["checkpoints", "list"]),
        1,
    );
    assert!(line.contains("connect"), "{line}");
    fails(
        on_db(url).args(["--schema", "Not-A-Schema", "checkpoints", "list"]),
        1,
    );
}

#[tokio::test]
async fn a_projection_model_is_deleted_with_its_tables() {
    let database = krescent_testkit::postgres::fresh_database().await;
    let url = database.url();
    let projection = || {
        let mut command = Command::new(example_binary("projection"));
        command.env("DATABASE_URL", url);
        command
    };
    let (restored, replayed) = summary(projection().args(["--append", "100"]));
    assert_eq!((restored.as_str(), replayed), ("none", 100));
    let client = database.client().await;
    let shelf_exists = || async {
        let row = client
            .query_one("SELECT to_regclass('public.shelf')::text", &[])
            .await
            .expect("query");
        row.get::<_, Option<String>>(0).is_some()
    };
    assert!(shelf_exists().await);

    fails(on_db(url).args(["models", "delete", BOOKS, "--yes"]), 1); // no such checkpoint
    let dry = json(on_db(url).args(["models", "delete", "bookstore.shelf", "--dry-run"]));
    assert_eq!(dry["tables"], serde_json::json!(["public.shelf"]));
    fails(on_db(url).args(["models", "delete", "bookstore.shelf"]), 1); // not confirmed
    assert!(
        shelf_exists().await,
        "the dry run and the refusal dropped nothing"
    );
    assert_eq!(listed(&mut on_db(url), "bookstore.shelf"), Some((100, 0)));

    let deleted = ok(on_db(url).args(["models", "delete", "bookstore.shelf", "--yes"]));
    assert!(
        deleted.starts_with("deleted the model `bookstore.shelf`"),
        "{deleted}"
    );
    assert!(!shelf_exists().await, "the table is dropped");
    assert_eq!(listed(&mut on_db(url), "bookstore.shelf"), None);
    let (restored, replayed) = summary(&mut projection());
    assert_eq!(
        (restored.as_str(), replayed),
        ("none", 100),
        "rebuilt from scratch"
    );
    assert!(shelf_exists().await);
}

#[test]
fn help_explains_every_command() {
    let top = ok(krescent().arg("--help"));
    for word in [
        "checkpoints",
        "models",
        "store",
        "events",
        "--data-dir",
        "--database-url",
        "--json",
        "Exit codes",
    ] {
        assert!(top.contains(word), "`{word}` in {top}");
    }
    let delete = ok(krescent().args(["checkpoints", "delete", "--help"]));
    assert!(
        delete.contains("cannot be moved to another position"),
        "{delete}"
    );
    assert!(
        delete.contains("--dry-run") && delete.contains("--yes"),
        "{delete}"
    );
    for args in [
        &["checkpoints", "list", "--help"][..],
        &["checkpoints", "show", "--help"],
        &["models", "delete", "--help"],
        &["store", "stats", "--help"],
        &["events", "tail", "--help"],
    ] {
        let help = ok(krescent().args(args));
        assert!(
            help.starts_with(char::is_uppercase) && help.contains("Usage: krescent"),
            "{help}"
        );
    }
}

#[tokio::test]
async fn delete_refuses_while_a_running_instance_holds_the_lease_unless_forced() {
    let database = krescent_testkit::postgres::fresh_database().await;
    let url = database.url();
    summary(
        bookstore()
            .env("DATABASE_URL", url)
            .args(["--events", "20"]),
    );
    let client = database.client().await;
    client
        .execute(
            "INSERT INTO krescent_leases (checkpoints, namespace, holder, epoch, expires_at)
             VALUES ('public.krescent_checkpoints', $1, '4242:run', 7, clock_timestamp() + interval '1 hour')",
            &[&BOOKS],
        )
        .await
        .expect("a live lease");
    let refused = fails(
        on_db(url).args(["checkpoints", "delete", BOOKS, "--yes"]),
        1,
    );
    assert!(
        refused.contains("holds its lease (epoch 7)") && refused.contains("--force"),
        "{refused}"
    );
    assert_eq!(
        listed(&mut on_db(url), BOOKS),
        Some((20, 0)),
        "nothing deleted"
    );
    // `--force` deletes anyway.
    ok(on_db(url).args(["checkpoints", "delete", BOOKS, "--yes", "--force"]));
    assert_eq!(listed(&mut on_db(url), BOOKS), None);
}

/// A projection split in two: one row per event, in one table both segments share.
#[derive(EventModel)]
#[model(name = "cli.split", segments = 2)]
#[checkpoint(strategy = "always", storage = "postgres")]
struct Split {
    #[checkpoint(support)]
    table: PostgresProjection,
    insert: String,
}

#[krescent::handlers]
impl Split {
    async fn lent(&mut self, _: &BookLent, meta: &EventMeta) -> Result<(), ProjectionError> {
        let position = i64::try_from(meta.position.get()).expect("small");
        self.table
            .execute(&self.insert, &[&position, &&*meta.stream_id])
            .await?;
        Ok(())
    }
}

impl Split {
    fn new(storage: &PostgresCheckpointStorage) -> Self {
        let table = PostgresProjection::new(storage, 1)
            .table(
                "split_rows",
                "CREATE TABLE {table} (position bigint NOT NULL, stream_id text NOT NULL)",
            )
            .expect("a valid table");
        let name = table.name_of("split_rows").expect("declared").to_owned();
        Split {
            table,
            insert: format!("INSERT INTO {name} (position, stream_id) VALUES ($1, $2)"),
        }
    }
}

const SPLIT: &str = "cli.split";
const SEGMENTS: [&str; 2] = ["cli.split#0/2", "cli.split#1/2"];

/// Runs both segments of `cli.split` over the events there are, each to its own checkpoint.
async fn run_split(database: &TestDatabase) {
    let storage = database.checkpoint_storage().await;
    let krescent =
        Krescent::new(database.event_store().await).with_storage("postgres", storage.clone());
    for segment in Segment::all(2) {
        krescent
            .for_segment(segment)
            .catch_up(Split::new(&storage))
            .await
            .expect("a segment catches up");
    }
}

/// 24 events over 6 streams, and both segments of `cli.split` run over them.
async fn split_model(database: &TestDatabase) {
    let store = database.event_store().await;
    for i in 0..6 {
        store
            .append(&format!("shelf-{i}"), ExpectedVersion::NoStream, lent(4))
            .await
            .expect("append");
    }
    run_split(database).await;
}

/// What the database holds of `cli.split`: its rows (`None`: no table) and its checkpoints.
async fn split_state(client: &krescent::tokio_postgres::Client) -> (Option<i64>, Vec<String>) {
    let exists: Option<String> = client
        .query_one("SELECT to_regclass('public.split_rows')::text", &[])
        .await
        .expect("query")
        .get(0);
    let rows = match exists {
        Some(_) => Some(
            client
                .query_one("SELECT count(*) FROM split_rows", &[])
                .await
                .expect("count")
                .get(0),
        ),
        None => None,
    };
    let checkpoints = client
        .query(
            "SELECT namespace FROM krescent_checkpoints WHERE starts_with(namespace, 'cli.split') ORDER BY namespace",
            &[],
        )
        .await
        .expect("checkpoints")
        .iter()
        .map(|r| r.get(0))
        .collect();
    (rows, checkpoints)
}

#[tokio::test]
async fn a_split_model_is_deleted_by_its_name_with_every_segment_and_its_tables() {
    let database = krescent_testkit::postgres::fresh_database().await;
    let url = database.url();
    split_model(&database).await;
    let client = database.client().await;
    let before = split_state(&client).await;
    assert_eq!(before, (Some(24), SEGMENTS.map(str::to_owned).to_vec()));

    let dry = json(on_db(url).args(["models", "delete", SPLIT, "--dry-run"]));
    assert_eq!(dry["namespace"], SPLIT);
    assert_eq!(dry["tables"], serde_json::json!(["public.split_rows"]));
    assert_eq!(dry["segments"], serde_json::json!(SEGMENTS));
    assert_eq!(dry["deleted"], false);
    let said = ok(on_db(url).args(["models", "delete", SPLIT, "--dry-run"]));
    for name in [SEGMENTS[0], SEGMENTS[1], "public.split_rows"] {
        assert!(said.contains(&format!("`{name}`")), "{said}");
    }
    fails(on_db(url).args(["models", "delete", SPLIT]), 1); // not confirmed
    assert_eq!(split_state(&client).await, before, "nothing deleted yet");

    let deleted = json(on_db(url).args(["models", "delete", SPLIT, "--yes"]));
    assert_eq!(deleted["deleted"], true);
    assert_eq!(
        split_state(&client).await,
        (None, Vec::new()),
        "the shared table and every segment's checkpoint are gone"
    );
    run_split(&database).await;
    assert_eq!(
        split_state(&client).await,
        before,
        "rebuilt from scratch, each event once"
    );
}

#[tokio::test]
async fn one_segment_of_a_split_projection_is_refused_and_nothing_is_deleted() {
    let database = krescent_testkit::postgres::fresh_database().await;
    let url = database.url();
    split_model(&database).await;
    let client = database.client().await;
    let before = split_state(&client).await;
    for group in ["models", "checkpoints"] {
        let refused = fails(on_db(url).args([group, "delete", SEGMENTS[0], "--yes"]), 1);
        assert!(
            refused.contains("share their tables")
                && refused.contains("`krescent models delete cli.split`"),
            "{group}: {refused}"
        );
        let dry = fails(
            on_db(url).args([group, "delete", SEGMENTS[1], "--dry-run"]),
            1,
        );
        assert!(
            dry.contains("segment 1/2 of the split model `cli.split`"),
            "{dry}"
        );
    }
    assert_eq!(
        split_state(&client).await,
        before,
        "the table and both checkpoints are still there"
    );
    // Why: a segment whose checkpoint alone is gone joins the others' tables and replays its
    // streams into the rows it wrote before.
    client
        .execute(
            "DELETE FROM krescent_checkpoints WHERE namespace = $1",
            &[&SEGMENTS[0]],
        )
        .await
        .expect("delete one checkpoint behind the command's back");
    run_split(&database).await;
    let (rows, _) = split_state(&client).await;
    assert!(rows > Some(24), "{rows:?} rows: segment 0's rows twice");
}

#[tokio::test]
async fn a_held_lease_of_one_segment_refuses_the_whole_delete_unless_forced() {
    let database = krescent_testkit::postgres::fresh_database().await;
    let url = database.url();
    split_model(&database).await;
    let client = database.client().await;
    let before = split_state(&client).await;
    // The segments ran, so their lease rows exist (released): one is taken again.
    let epoch: i64 = client
        .query_one(
            "UPDATE krescent_leases SET holder = '4242:run', epoch = epoch + 1,
             expires_at = clock_timestamp() + interval '1 hour'
             WHERE checkpoints = 'public.krescent_checkpoints' AND namespace = $1 RETURNING epoch",
            &[&SEGMENTS[1]],
        )
        .await
        .expect("a live lease")
        .get(0);
    let refused = fails(on_db(url).args(["models", "delete", SPLIT, "--yes"]), 1);
    assert!(
        refused.contains(&format!("`{}`", SEGMENTS[1]))
            && refused.contains(&format!("holds its lease (epoch {epoch})"))
            && refused.contains("--force"),
        "{refused}"
    );
    assert_eq!(split_state(&client).await, before, "nothing deleted");

    ok(on_db(url).args(["models", "delete", SPLIT, "--yes", "--force"]));
    assert_eq!(split_state(&client).await, (None, Vec::new()));
}
