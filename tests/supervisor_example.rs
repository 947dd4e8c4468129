//! The supervisor example as an operator runs it: several models on the file store, a report
//! line per model, and SIGTERM stops them all with their final checkpoints.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use krescent::checkpoint::{CheckpointStorage as _, FileCheckpointStorage};
use krescent::Position;
use krescent_testkit::examples::example_binary;

#[tokio::test]
async fn supervisor_example_stops_every_model_on_sigterm_with_its_final_checkpoint() {
    let dir = tempfile::tempdir().expect("a data directory");
    let mut child = Command::new(example_binary("supervisor"))
        .args(["--events", "300", "--report-every", "50", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the example");
    let stdout = child.stdout.take().expect("stdout");
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    // Both models report running at the head.
    let wanted = [
        "report: supervised.copies running position=300 restarts=0",
        "report: supervised.loans running position=300 restarts=0",
    ];
    let mut seen = [false, false];
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen != [true, true] {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no report of both models running at 300 (saw {seen:?})"));
        for (i, w) in wanted.iter().enumerate() {
            seen[i] |= line == *w;
        }
    }

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let mut stopped = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while stopped.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the example did not stop its models: {stopped:?}"));
        if !line.starts_with("report: ") {
            stopped.push(line);
        }
    }
    assert_eq!(
        stopped,
        [
            "stopped: supervised.copies position=300",
            "stopped: supervised.loans position=300"
        ]
    );
    let status = child.wait().expect("the example exits");
    assert!(status.success(), "{status}");

    // Each left its final checkpoint at the head.
    let storage = FileCheckpointStorage::open(dir.path().join("checkpoints")).expect("storage");
    for model in ["supervised.copies", "supervised.loans"] {
        let checkpoint = storage
            .load(model)
            .await
            .expect("load")
            .expect("a checkpoint");
        assert_eq!(checkpoint.position, Position::new(300), "{model}");
    }
}
