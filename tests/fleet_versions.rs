//! Blue/green versions across processes: two worker processes of version 1 and two of
//! version 2 of `fleet.versioned` (`src/bin/fleet_worker.rs`, `FLEET_VERSION`) against a real
//! PostgreSQL server, the holders of both versions' leases killed (`SIGKILL`) during the build,
//! in the middle of the switch and after it while events are appended. Both versions' tables must equal a clean
//! replay, the stable name must be switched once, and no process may write into the other
//! version's table.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "fleet/worker.rs"]
#[allow(dead_code)] // shared with `fleet_failover.rs`, which uses all of it
mod worker;
use krescent::tokio_postgres;
use krescent_testkit::postgres::{fresh_database, TestDatabase};
use worker::Worker;

#[path = "fleet/ticks.rs"]
mod ticks;
use ticks::appender;

/// Fast leases, so that a killed holder is replaced within a second.
const FAST: [(&str, &str); 3] = [
    ("FLEET_TTL_MS", "1000"),
    ("FLEET_HEARTBEAT_MS", "300"),
    ("FLEET_POLL_MS", "100"),
];

/// A version of `fleet.versioned` as the registry has it.
#[derive(Debug, Clone)]
struct Version {
    namespace: String,
    schema: String,
    state: String,
}

async fn registry(client: &tokio_postgres::Client) -> Vec<Version> {
    client
        .query(
            "SELECT namespace, schema, state FROM krescent_projection_versions
             WHERE model = 'fleet.versioned' ORDER BY created_at",
            &[],
        )
        .await
        .expect("the registry")
        .iter()
        .map(|r| Version {
            namespace: r.get(0),
            schema: r.get(1),
            state: r.get(2),
        })
        .collect()
}

/// The pid of the live holder of `namespace`'s lease.
async fn holder(client: &tokio_postgres::Client, namespace: &str) -> Option<u32> {
    let row = client
        .query_opt(
            "SELECT holder FROM krescent_leases WHERE namespace = $1 AND expires_at > clock_timestamp()",
            &[&namespace],
        )
        .await
        .ok()??;
    let holder: String = row.get(0);
    holder.split(':').next()?.parse().ok()
}

async fn wait_for(what: &str, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Records every definition the stable view `versioned` had, in order, until stopped.
fn view_watcher(
    db: &TestDatabase,
    stop: Arc<AtomicBool>,
) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = seen.clone();
    let config = db.config();
    let task = tokio::spawn(async move {
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        while !stop.load(Ordering::SeqCst) {
            // The catalog read takes no lock: a view dropped by a switch between the lookup
            // of its name and the read of its definition fails the read, which is retried.
            let definition: Option<String> = client
                .query_one(
                    "SELECT pg_get_viewdef(to_regclass('public.versioned'))",
                    &[],
                )
                .await
                .ok()
                .and_then(|row| row.get(0));
            if let Some(definition) = definition {
                let mut seen = record.lock().expect("lock");
                if seen.last() != Some(&definition) {
                    seen.push(definition);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (task, seen)
}

/// Whether a switch waits for the reader of the stable view: a backend blocked on a lock in
/// the `DROP VIEW` that repoints it.
async fn switching(client: &tokio_postgres::Client) -> bool {
    client
        .query_opt(
            "SELECT 1 FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND query ILIKE 'DROP VIEW%versioned%' LIMIT 1",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .is_some()
}

/// `table` equals a clean replay of the events (each event once, with its data), once it has
/// a row per event; the pids that wrote it.
async fn assert_exactly_once(
    client: &tokio_postgres::Client,
    head: i64,
    table: &str,
) -> BTreeSet<i64> {
    wait_for(
        &format!("{table} to reach {head} rows"),
        Duration::from_secs(30),
        async || {
            let rows: i64 = client
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .expect("count")
                .get(0);
            rows >= head
        },
    )
    .await;
    let replay: Vec<(i64, String, i64)> = client
        .query(
            "SELECT position, stream_id, (payload->>'n')::bigint FROM krescent_events ORDER BY position",
            &[],
        )
        .await
        .expect("events")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let rows = client
        .query(
            &format!("SELECT position, stream_id, n, pid FROM {table} ORDER BY position, n"),
            &[],
        )
        .await
        .expect("projected");
    let projected: Vec<(i64, String, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        projected.len(),
        replay.len(),
        "{table}: events lost or doubled"
    );
    assert!(projected == replay, "{table} differs from a clean replay");
    rows.iter().map(|r| r.get(3)).collect()
}

/// The worker processes of both versions, and every pid each version ever had.
struct Fleet<'a> {
    db: &'a TestDatabase,
    client: &'a tokio_postgres::Client,
    workers: [Vec<Worker>; 2],
    pids: [BTreeSet<i64>; 2],
    namespaces: [String; 2],
    kills: usize,
}

impl Fleet<'_> {
    /// The environment of a worker of `version` (0: v1, 1: v2, whose handlers are slower so
    /// that its build lasts).
    fn env(version: usize) -> Vec<(&'static str, &'static str)> {
        let mut env = FAST.to_vec();
        if version == 0 {
            env.push(("FLEET_VERSION", "1"));
        } else {
            env.extend([("FLEET_VERSION", "2"), ("FLEET_SLOW_MS", "1")]);
        }
        env
    }

    /// Starts two workers of `version` and waits until it is registered; its namespace.
    async fn start(&mut self, version: usize) {
        for _ in 0..2 {
            self.spawn(version);
        }
        let mut namespace = None;
        wait_for(
            "the version to register",
            Duration::from_secs(20),
            async || {
                namespace = registry(self.client)
                    .await
                    .get(version)
                    .map(|v| v.namespace.clone());
                namespace.is_some()
            },
        )
        .await;
        self.namespaces[version] = namespace.expect("registered");
    }

    fn spawn(&mut self, version: usize) {
        let worker = Worker::spawn(self.db, &Self::env(version));
        self.pids[version].insert(i64::from(worker.pid()));
        self.workers[version].push(worker);
    }

    /// SIGKILLs the holder of `version`'s lease (once one of its workers holds it) and starts
    /// a replacement.
    async fn kill_holder(&mut self, version: usize) {
        let mut pid = None;
        let (client, namespace, workers) = (
            self.client,
            &self.namespaces[version],
            &self.workers[version],
        );
        wait_for("a holder to kill", Duration::from_secs(20), async || {
            pid = holder(client, namespace).await;
            pid.is_some_and(|pid| workers.iter().any(|w| w.pid() == pid))
        })
        .await;
        let workers = &mut self.workers[version];
        let index = workers
            .iter()
            .position(|w| Some(w.pid()) == pid)
            .expect("a worker");
        workers[index].kill();
        workers.remove(index);
        self.spawn(version);
        self.kills += 1;
    }
}

/// Acceptance 2: two processes of each version, holders killed during the build, in the middle
/// of the switch and right after it: both versions exactly once, one switch, each version
/// written only by its own processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_of_each_version_with_kills_switch_once_and_stay_exactly_once() {
    let started = Instant::now();
    let db = fresh_database().await;
    let store = Arc::new(db.event_store().await);
    db.checkpoint_storage().await;
    let client = db.client().await;
    let stop = Arc::new(AtomicBool::new(false));
    let appending = appender(store.clone(), stop.clone(), Duration::from_millis(30));
    let (watching, definitions) = view_watcher(&db, stop.clone());
    let mut fleet = Fleet {
        db: &db,
        client: &client,
        workers: [Vec::new(), Vec::new()],
        pids: [BTreeSet::new(), BTreeSet::new()],
        namespaces: [String::new(), String::new()],
        kills: 0,
    };
    fleet.start(0).await;
    // A backlog for v2 to build.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A reader holds the stable view from now on, so that v2's switch, once v2 caught up,
    // waits in its transaction (the registry's rows changed, the view not yet) to be killed.
    let blocker = db.client().await;
    blocker
        .batch_execute("BEGIN; SELECT count(*) FROM public.versioned")
        .await
        .expect("a reader holds the view");
    fleet.start(1).await;
    // Kill the holders during the build (v2's three times, v1's once), then v2's in the
    // middle of its switch, then once each right after the switch.
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        fleet.kill_holder(usize::from(round != 2)).await;
    }
    wait_for(
        "v2's switch to wait for the reader",
        Duration::from_mins(1),
        async || switching(&client).await,
    )
    .await;
    fleet.kill_holder(1).await;
    // The killed holder's backend still waits; the next holder's switch queues behind it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    blocker
        .batch_execute("COMMIT")
        .await
        .expect("the reader lets go");
    wait_for("the switch to v2", Duration::from_mins(1), async || {
        registry(&client)
            .await
            .get(1)
            .is_some_and(|v| v.state == "active")
    })
    .await;
    fleet.kill_holder(1).await;
    fleet.kill_holder(0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let appended = appending.await.expect("appender");
    let head = i64::try_from(appended).expect("fits");
    let versions = registry(&client).await;
    assert_eq!(
        versions
            .iter()
            .map(|v| v.state.as_str())
            .collect::<Vec<_>>(),
        ["previous", "active"],
        "v2 switched to, v1 following within its grace"
    );
    for (version, registered) in versions.iter().enumerate() {
        let table = format!("\"{}\".versioned", registered.schema);
        let written = assert_exactly_once(&client, head, &table).await;
        assert!(
            written.is_subset(&fleet.pids[version]),
            "version {}'s table was written by {written:?}, not only by its processes {:?}",
            version + 1,
            fleet.pids[version]
        );
    }
    watching.await.expect("watcher");
    let definitions = definitions.lock().expect("lock").clone();
    assert_eq!(
        definitions.len(),
        2,
        "one switch of the stable name: {definitions:?}"
    );
    assert!(
        definitions[0].contains(&versions[0].schema),
        "{definitions:?}"
    );
    assert!(
        definitions[1].contains(&versions[1].schema),
        "{definitions:?}"
    );
    println!(
        "fleet versions: {} kills, {appended} events, {:.1} s",
        fleet.kills,
        started.elapsed().as_secs_f64()
    );
}
