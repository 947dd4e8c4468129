//! The main job, run as a user runs it: twice, on the file store and on PostgreSQL.

use std::process::Command;

use krescent_testkit::examples::{example_binary, run_summary};

/// The bookstore example, on its default file store unless a test says otherwise.
fn bookstore() -> Command {
    let mut command = Command::new(example_binary("bookstore"));
    command.env_remove("DATABASE_URL");
    command
}

/// Runs the example and returns its summary: `restored_from`, `replayed`, `books`.
fn summary(command: &mut Command) -> (String, u64, u64) {
    let summary = run_summary(command);
    (
        summary.field("restored_from").to_owned(),
        summary.number("replayed"),
        summary.number("books"),
    )
}

fn assert_second_run_resumes(mut command: impl FnMut() -> Command) {
    let (restored, replayed, _) = summary(command().args(["--events", "300"]));
    assert_eq!(
        (restored.as_str(), replayed),
        ("none", 300),
        "the first run replays everything"
    );
    let (restored, replayed, books) = summary(command().args(["--events", "120"]));
    assert_eq!(
        (restored.as_str(), replayed),
        ("300", 120),
        "the second run resumes from the checkpoint"
    );
    assert!(books > 0);
}

#[test]
fn bookstore_on_files_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    assert_second_run_resumes(|| {
        let mut command = bookstore();
        command.arg("--data-dir").arg(dir.path());
        command
    });
}

#[tokio::test]
async fn bookstore_on_postgres_resumes_from_its_checkpoint() {
    let database = krescent_testkit::postgres::fresh_database().await;
    assert_second_run_resumes(|| {
        let mut command = bookstore();
        command.env("DATABASE_URL", database.url());
        command
    });
}
