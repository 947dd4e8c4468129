//! Acceptance 2 of parked events: a projection that parks (`src/bin/parking_worker.rs`),
//! its worker process killed (`SIGKILL`) at random moments while it parks poison events and
//! while it replays them: nothing is lost, nothing applied or parked twice.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use krescent::prelude::*;
use krescent::store::PostgresEventStore;
use krescent::tokio_postgres;
use krescent_testkit::postgres::{fresh_database, TestDatabase};

#[derive(Event, Serialize, Deserialize)]
#[event(name = "parking.step")]
struct Step {
    seq: i64,
    poison: bool,
}

const STREAMS: usize = 20;
const PER_STREAM: i64 = 60;
/// (stream, seq) of the poison steps.
const POISON: [(usize, i64); 3] = [(3, 10), (3, 40), (11, 25)];

fn stream(s: usize) -> String {
    format!("p{s:02}")
}

/// A worker process; killed and reaped when dropped.
struct Worker(Child);

impl Worker {
    fn spawn(db: &TestDatabase, env: &[(&str, &str)]) -> Worker {
        let binary =
            krescent_testkit::examples::workspace_binary("krescent-suite", "parking_worker");
        Worker(
            Command::new(binary)
                .arg(db.url())
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start a worker"),
        )
    }

    fn kill(mut self) {
        self.0.kill().expect("SIGKILL the worker");
        self.0.wait().expect("reap the worker");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How long the workers of one phase may take in all.
const WITHIN: Duration = Duration::from_mins(2);

/// A random pause of 100–600 ms, from the xorshift state `seed`.
fn random_pause(seed: &mut u64) -> Duration {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    Duration::from_millis(100 + *seed % 500)
}

/// Every (stream, seq) with its position, appended interleaved, five steps at a time.
async fn append_all(store: &PostgresEventStore) -> Vec<(i64, String, i64)> {
    let mut appended = Vec::new();
    for round in 0..PER_STREAM / 5 {
        for s in 0..STREAMS {
            let seqs: Vec<i64> = (round * 5 + 1..=round * 5 + 5).collect();
            let events = seqs
                .iter()
                .map(|&seq| {
                    NewEvent::new(&Step {
                        seq,
                        poison: POISON.contains(&(s, seq)),
                    })
                    .expect("encode")
                })
                .collect();
            let first = store
                .append(&stream(s), krescent::store::ExpectedVersion::Any, events)
                .await
                .expect("append")
                .position
                .get();
            let last = i64::try_from(first).expect("small");
            for (i, seq) in seqs.iter().enumerate() {
                let position = last - 4 + i64::try_from(i).expect("small");
                appended.push((position, stream(s), *seq));
            }
        }
    }
    appended
}

/// The checkpoint's position, if there is one.
async fn checkpoint(client: &tokio_postgres::Client) -> Option<i64> {
    client
        .query_opt(
            "SELECT position::bigint FROM krescent_checkpoints WHERE namespace = 'parking.steps'",
            &[],
        )
        .await
        .ok()
        .flatten()
        .map(|row| row.get(0))
}

/// The projected rows' positions, each as often as it was applied.
async fn applied(client: &tokio_postgres::Client) -> Vec<i64> {
    client
        .query("SELECT position FROM parking_steps ORDER BY position", &[])
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default()
}

/// The parked positions and how many are asked to be retried.
async fn parked(client: &tokio_postgres::Client) -> (Vec<i64>, usize) {
    let rows = client
        .query(
            "SELECT position::bigint, retry FROM krescent_parked WHERE namespace = 'parking.steps' ORDER BY position",
            &[],
        )
        .await
        .expect("parked");
    (
        rows.iter().map(|r| r.get(0)).collect(),
        rows.iter().filter(|r| r.get::<_, bool>(1)).count(),
    )
}

/// Kills the worker up to `kills` times, each time once it has made progress (more rows
/// applied than when it started) and a random moment after, starting another with `env`; then
/// waits (up to [`WITHIN`] in all) until `done` says the work is over, and kills the last one. How many
/// kills came while `midway` said the work was under way.
async fn kill_until_done(
    db: &TestDatabase,
    env: &[(&str, &str)],
    kills: usize,
    seed: &mut u64,
    progress: impl AsyncFn() -> usize,
    midway: impl AsyncFn() -> bool,
    done: impl AsyncFn() -> bool,
) -> usize {
    let started = Instant::now();
    let mut worker = Worker::spawn(db, env);
    let mut midway_kills = 0;
    'kills: for _ in 0..kills {
        let before = progress().await;
        while progress().await == before {
            if done().await {
                break 'kills;
            }
            assert!(started.elapsed() < WITHIN, "the workers made no progress");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(random_pause(seed) / 4).await;
        if midway().await {
            midway_kills += 1;
        }
        worker.kill();
        worker = Worker::spawn(db, env);
    }
    while !done().await {
        assert!(started.elapsed() < WITHIN, "the workers did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.kill();
    midway_kills
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_while_parking_and_while_replaying_lose_and_double_nothing() {
    let db = fresh_database().await;
    let store = db.event_store().await;
    let client = db.client().await;
    let appended = append_all(&store).await;
    let head = appended.iter().map(|(p, _, _)| *p).max().expect("events");
    let mut seed = 0x2545_f491_u64;

    // Parking, killed eight times: the model reaches the head.
    let midway = kill_until_done(
        &db,
        &[("PARKING_SLOW_MS", "2")],
        8,
        &mut seed,
        async || applied(&client).await.len(),
        async || {
            checkpoint(&client).await.is_some_and(|p| p < head)
                && !parked(&client).await.0.is_empty()
        },
        async || checkpoint(&client).await == Some(head),
    )
    .await;
    println!("parking: {midway} of 8 kills after the first parking, before the head");
    assert!(midway > 0, "no kill came while the model was parking");
    let first_parked: Vec<(String, i64)> = POISON
        .iter()
        .map(|(s, seq)| (stream(*s), *seq))
        .filter(|(s, seq)| {
            !POISON
                .iter()
                .any(|(t, earlier)| stream(*t) == *s && earlier < seq)
        })
        .collect();
    let is_parked = |s: &str, seq: i64| {
        first_parked
            .iter()
            .any(|(t, first)| t == s && seq >= *first)
    };
    let expected_parked: Vec<i64> = appended
        .iter()
        .filter(|(_, s, seq)| is_parked(s, *seq))
        .map(|(p, _, _)| *p)
        .collect();
    let expected_applied: Vec<i64> = appended
        .iter()
        .filter(|(_, s, seq)| !is_parked(s, *seq))
        .map(|(p, _, _)| *p)
        .collect();
    assert_eq!(
        applied(&client).await,
        expected_applied,
        "each applied once"
    );
    assert_eq!(parked(&client).await.0, expected_parked, "each parked once");

    // Fixed, a retry asked for (as `krescent parked retry` does), killed five times while
    // it replays: every event ends applied exactly once and nothing stays parked.
    client
        .execute(
            "UPDATE krescent_parked SET retry = true WHERE namespace = 'parking.steps'",
            &[],
        )
        .await
        .expect("ask for a retry");
    let total = expected_parked.len();
    let midway = kill_until_done(
        &db,
        &[("PARKING_SLOW_MS", "25"), ("PARKING_FIXED", "1")],
        5,
        &mut seed,
        async || applied(&client).await.len(),
        async || (1..total).contains(&parked(&client).await.0.len()),
        async || parked(&client).await.0.is_empty(),
    )
    .await;
    println!("replay: {midway} of 5 kills while part of the parked set was replayed");
    assert!(midway > 0, "no kill came during the replay");
    let all: Vec<i64> = appended.iter().map(|(p, _, _)| *p).collect();
    let mut sorted = all.clone();
    sorted.sort_unstable();
    assert_eq!(
        applied(&client).await,
        sorted,
        "every event applied exactly once"
    );
    assert_eq!(
        applied(&client)
            .await
            .into_iter()
            .collect::<BTreeSet<_>>()
            .len(),
        all.len()
    );
    assert_eq!(checkpoint(&client).await, Some(head));
}
