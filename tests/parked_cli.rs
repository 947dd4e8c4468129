//! `krescent parked list | retry | drop` against a real PostgreSQL server, with a running model
//! that handles the retry an operator asks for.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use krescent::prelude::*;
use krescent::projection::{PostgresProjection, ProjectionError};
use krescent::store::{EventStore, ExpectedVersion, PostgresEventStore};
use krescent_testkit::examples::workspace_binary;
use krescent_testkit::postgres::fresh_database;
use serde_json::Value;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "note")]
struct Note {
    text: String,
}

#[derive(Debug, thiserror::Error)]
enum NoteError {
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error("cannot read note `{0}`")]
    Unreadable(String),
}

#[derive(EventModel)]
#[model(name = "notes", on_error = "park")]
#[checkpoint(strategy = "fixed_events(5)", storage = "postgres")]
struct Notes {
    #[checkpoint(support)]
    table: PostgresProjection,
    fixed: Arc<AtomicBool>,
}

#[krescent::handlers]
impl Notes {
    async fn note(&mut self, e: &Note, meta: &EventMeta) -> Result<(), NoteError> {
        if e.text.starts_with("bad") && !self.fixed.load(Ordering::SeqCst) {
            return Err(NoteError::Unreadable(e.text.clone()));
        }
        let stream: &str = &meta.stream_id;
        self.table
            .execute(
                "INSERT INTO notes (stream, text) VALUES ($1, $2)",
                &[&stream, &e.text],
            )
            .await?;
        Ok(())
    }
}

impl Notes {
    fn new(store: &PostgresEventStore, fixed: &Arc<AtomicBool>) -> Self {
        let table = PostgresProjection::new(&store.checkpoint_storage(), 1)
            .table(
                "notes",
                "CREATE TABLE {table} (stream text, text text, PRIMARY KEY (stream, text))",
            )
            .expect("a valid table name");
        Notes {
            table,
            fixed: fixed.clone(),
        }
    }
}

fn krescent_cli(url: &str) -> Command {
    let mut command = Command::new(workspace_binary("krescent-cli", "krescent"));
    command
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .args(["--database-url", url]);
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("run krescent")
}

fn json(command: &mut Command) -> Value {
    let output = run(command.arg("--json"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// Runs a command that must fail with `code` and one line on stderr; that line.
fn fails(command: &mut Command, code: i32) -> String {
    let output = run(command);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(code), "{command:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.starts_with("krescent: "), "{stderr:?}");
    assert!(output.stdout.is_empty(), "nothing on stdout on failure");
    stderr
}

fn positions(listing: &Value) -> Vec<u64> {
    listing["parked"]
        .as_array()
        .expect("an array")
        .iter()
        .map(|p| p["position"].as_u64().expect("a position"))
        .collect()
}

async fn append(store: &PostgresEventStore, stream: &str, texts: &[&str]) {
    let events = texts
        .iter()
        .map(|text| {
            NewEvent::new(&Note {
                text: (*text).to_owned(),
            })
            .expect("encode")
        })
        .collect();
    store
        .append(stream, ExpectedVersion::Any, events)
        .await
        .expect("append");
}

/// Bad input: refused with one line (exit 1, or 2 for bad usage); dry runs change nothing.
fn bad_input_is_refused_and_changes_nothing(url: &str) {
    let unknown = fails(krescent_cli(url).args(["parked", "list", "nosuch"]), 1);
    assert!(
        unknown.contains("parked events are kept for `notes`"),
        "{unknown}"
    );
    let absent = fails(
        krescent_cli(url).args(["parked", "drop", "notes", "--position", "1", "--yes"]),
        1,
    );
    assert!(
        absent.contains("no parked event of `notes` at position 1"),
        "{absent}"
    );
    fails(
        krescent_cli(url).args(["parked", "drop", "notes", "--position", "x"]),
        2,
    );
    fails(krescent_cli(url).args(["parked", "retry"]), 2);
    let declined = fails(krescent_cli(url).args(["parked", "drop", "notes"]), 1);
    assert!(declined.contains("not confirmed"), "{declined}");
    let dry = json(krescent_cli(url).args(["parked", "drop", "notes", "--dry-run"]));
    assert_eq!(dry["dry_run"], true);
    let dry = json(krescent_cli(url).args(["parked", "retry", "notes", "--dry-run"]));
    assert_eq!(dry["positions"], serde_json::json!([2, 3]));
    let unchanged = json(krescent_cli(url).args(["parked", "list"]));
    assert_eq!(positions(&unchanged), [2, 3]);
    assert!(unchanged["parked"]
        .as_array()
        .expect("an array")
        .iter()
        .all(|p| p["retry"] == false));
}

#[tokio::test]
async fn parked_events_are_listed_retried_by_a_running_model_and_dropped() {
    let database = fresh_database().await;
    let url = database.url().to_owned();
    let store = database.event_store().await;
    let storage = store.checkpoint_storage();
    storage.migrate().await.expect("migrate");
    let krescent = Krescent::new(store).with_storage("postgres", storage);
    let store = krescent.shared_store().clone();
    append(&store, "a", &["a1", "bad a2", "a3"]).await;
    append(&store, "b", &["b1", "b2"]).await;
    let fixed = Arc::new(AtomicBool::new(false));
    krescent
        .catch_up(Notes::new(&store, &fixed))
        .await
        .expect("caught up");

    // Listed, with the error, in position order.
    let listing = json(krescent_cli(&url).args(["parked", "list"]));
    assert_eq!(positions(&listing), [2, 3]);
    let first = &listing["parked"][0];
    assert_eq!(first["namespace"], "notes");
    assert_eq!(first["stream_id"], "a");
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["error"], "cannot read note `bad a2`");
    assert_eq!(listing["parked"][1]["behind"], 2);
    let table = run(krescent_cli(&url).args(["parked", "list", "notes"]));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("NAMESPACE"), "{text}");
    assert!(text.contains("cannot read note `bad a2`"), "{text}");

    bad_input_is_refused_and_changes_nothing(&url);

    // A running model, fixed: it handles the retry an operator asks for, within seconds.
    fixed.store(true, Ordering::SeqCst);
    let running = krescent.stream(Notes::new(&store, &fixed));
    running
        .reached(krescent.store().head().await.expect("head"))
        .await
        .expect("caught up");
    json(krescent_cli(&url).args(["parked", "retry", "notes"]));
    let client = database.client().await;
    let started = Instant::now();
    loop {
        if krescent.parked::<Notes>().await.expect("parked").is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the running model did not handle the retry"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows: Vec<(String, String)> = client
        .query("SELECT stream, text FROM notes ORDER BY stream, text", &[])
        .await
        .expect("query")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: Vec<(String, String)> = [
        ("a", "a1"),
        ("a", "a3"),
        ("a", "bad a2"),
        ("b", "b1"),
        ("b", "b2"),
    ]
    .iter()
    .map(|(s, t)| ((*s).to_owned(), (*t).to_owned()))
    .collect();
    assert_eq!(rows, expected);
    running.shutdown().await.expect("stopped");

    // Dropped for good: parked again (unfixed), then dropped with `--yes`.
    fixed.store(false, Ordering::SeqCst);
    append(&store, "c", &["bad c1", "c2"]).await;
    krescent
        .catch_up(Notes::new(&store, &fixed))
        .await
        .expect("caught up");
    assert_eq!(
        positions(&json(krescent_cli(&url).args(["parked", "list"]))),
        [6, 7]
    );
    let dropped = json(krescent_cli(&url).args(["parked", "drop", "notes", "--yes"]));
    assert_eq!(dropped["positions"], serde_json::json!([6, 7]));
    let empty = fails(krescent_cli(&url).args(["parked", "list", "notes"]), 1);
    assert!(empty.contains("no model has parked events"), "{empty}");
    assert!(positions(&json(krescent_cli(&url).args(["parked", "list"]))).is_empty());
}
