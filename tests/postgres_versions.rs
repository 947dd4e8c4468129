//! Blue/green versions of a `PostgresProjection`: a new version builds beside the one readers
//! see, the switch repoints the stable names in one transaction, a rollback switches back
//! within the grace period, and retired versions neither run nor rebuild.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use krescent::checkpoint::StorageError;
use krescent::prelude::*;
use krescent::projection::{
    PostgresProjection, ProjectionError, ProjectionVersions, VersionError, VersionState, Versioning,
};
use krescent::store::{EventStore, ExpectedVersion, PostgresEventStore};
use krescent::{Error, Origin};
use krescent_testkit::postgres::{fresh_database, tokio_postgres, TestDatabase};

#[derive(Event, Serialize, Deserialize)]
#[event(name = "added")]
struct Added {
    key: i64,
}

/// Declares version `$version` of the model `titles`, whose table `titles` gets a row per key
/// labelled `$label` (version 2's table has one more column).
macro_rules! titles_model {
    ($name:ident, $version:literal, $label:literal, $create:literal, $insert:literal) => {
        #[derive(EventModel)]
        #[model(name = "titles", version = $version)]
        #[checkpoint(strategy = "fixed_events(40)", storage = "postgres")]
        struct $name {
            #[checkpoint(support)]
            table: PostgresProjection,
        }

        #[krescent::handlers]
        impl $name {
            async fn added(&mut self, e: &Added, _meta: &EventMeta) -> Result<(), ProjectionError> {
                let sql = format!($insert, self.table.name_of("titles").expect("the table"));
                self.table.queue(&sql, &[&e.key, &$label]).await
            }
        }

        impl $name {
            fn new(store: &PostgresEventStore, versioning: Versioning) -> Self {
                let table = PostgresProjection::new(&store.checkpoint_storage(), 1)
                    .table("titles", $create)
                    .expect("a valid table name")
                    .versioned(versioning);
                $name { table }
            }
        }
    };
}

titles_model!(
    V1,
    1,
    "v1",
    "CREATE TABLE {table} (key bigint PRIMARY KEY, label text NOT NULL)",
    "INSERT INTO {} (key, label) VALUES ($1, $2)"
);
titles_model!(
    V2,
    2,
    "v2",
    "CREATE TABLE {table} (key bigint PRIMARY KEY, label text NOT NULL, doubled bigint NOT NULL)",
    "INSERT INTO {} (key, label, doubled) VALUES ($1, $2, $1::bigint * 2)"
);
titles_model!(
    V3,
    3,
    "v3",
    "CREATE TABLE {table} (key bigint PRIMARY KEY, label text NOT NULL)",
    "INSERT INTO {} (key, label) VALUES ($1, $2)"
);

async fn setup() -> (
    TestDatabase,
    Krescent<PostgresEventStore>,
    tokio_postgres::Client,
) {
    let database = fresh_database().await;
    let store = database.event_store().await;
    let storage = store.checkpoint_storage();
    storage.migrate().await.expect("migrate");
    let client = database.client().await;
    (
        database,
        Krescent::new(store).with_storage("postgres", storage),
        client,
    )
}

async fn append(krescent: &Krescent<PostgresEventStore>, keys: std::ops::Range<i64>) {
    let events = keys
        .map(|key| NewEvent::new(&Added { key }).expect("encode"))
        .collect();
    krescent
        .store()
        .append("titles", ExpectedVersion::Any, events)
        .await
        .expect("append");
}

fn versions(krescent: &Krescent<PostgresEventStore>) -> ProjectionVersions {
    ProjectionVersions::new(&krescent.store().checkpoint_storage())
}

/// What a reader sees through the stable name: the row count and the labels.
async fn seen(
    client: &tokio_postgres::Client,
) -> Result<(i64, Vec<String>), tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT count(*), COALESCE(array_agg(DISTINCT label), '{}') FROM titles",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// The state of each version of `titles`, oldest first.
async fn states(krescent: &Krescent<PostgresEventStore>) -> Vec<(String, VersionState)> {
    versions(krescent)
        .list("titles")
        .await
        .expect("list")
        .into_iter()
        .map(|v| (v.version, v.state))
        .collect()
}

async fn schema_exists(client: &tokio_postgres::Client, schema: &str) -> bool {
    client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&schema],
        )
        .await
        .expect("query")
        .get(0)
}

/// What a reader saw each time: the row count and labels, or the error.
type Answers = Vec<Result<(i64, Vec<String>), String>>;

/// A reader querying the stable name in a loop until stopped: every answer, in order.
fn reader(database: &TestDatabase, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Answers> {
    let config = database.config();
    tokio::spawn(async move {
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        let mut answers = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            answers.push(seen(&client).await.map_err(|e| e.to_string()));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        answers
    })
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_mins(1);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Acceptance 1: v1 serves and follows live appends, v2 builds from scratch beside it and is
/// switched to automatically when it caught up, v1 retires after its grace: a reader of the
/// stable name never fails, never sees fewer rows than before, and ends on v2's rows.
#[tokio::test]
async fn a_blue_green_deploy_never_shows_readers_a_missing_or_shrinking_table() {
    let (database, krescent, client) = setup().await;
    append(&krescent, 0..400).await;
    let store = krescent.shared_store().clone();
    let grace = Duration::from_millis(500);
    let v1 = krescent.stream(V1::new(&store, Versioning::automatic().grace(grace)));
    v1.reached(krescent::Position::new(400))
        .await
        .expect("v1 caught up");
    assert_eq!(
        seen(&client).await.expect("read"),
        (400, vec!["v1".to_owned()])
    );

    let stop = Arc::new(AtomicBool::new(false));
    let readings = reader(&database, stop.clone());
    let appending = {
        let krescent = Krescent::new(database.event_store().await);
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut key = 400;
            while !stop.load(Ordering::Relaxed) {
                append(&krescent, key..key + 3).await;
                key += 3;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            key
        })
    };
    let v2 = krescent.stream(V2::new(&store, Versioning::automatic().grace(grace)));
    wait_for("the switch to v2", async || {
        let states = states(&krescent).await;
        states.len() == 2 && states[1].1 == VersionState::Active
    })
    .await;
    // v1 retires itself after its grace, at its next commit: its run ends, typed.
    wait_for("v1 to end after its grace", async || v1.is_finished()).await;
    match v1.shutdown().await {
        Err(Error::Storage {
            source: StorageError::Retired { model, .. },
            ..
        }) => assert_eq!(model, "titles"),
        other => panic!("v1 should end retired, got {:?}", other.map(|c| c.position)),
    }
    stop.store(true, Ordering::Relaxed);
    let appended = appending.await.expect("appender");
    let readings = readings.await.expect("reader");
    let last = appended;
    v2.reached(krescent::Position::new(
        u64::try_from(last).expect("positive"),
    ))
    .await
    .expect("v2 follows");
    v2.shutdown().await.expect("v2 stops");

    // Every answer: no error, never fewer rows than the answer before, one version's rows.
    let mut before = 0;
    let mut switched = false;
    for answer in &readings {
        let (count, labels) = answer.as_ref().expect("the stable name is always there");
        assert!(
            *count >= before,
            "the reader saw {count} rows after {before}"
        );
        assert_eq!(labels.len(), 1, "one version's rows at a time: {labels:?}");
        if labels[0] == "v2" {
            switched = true;
        } else {
            assert!(!switched, "v1's rows after v2's");
        }
        before = *count;
    }
    assert!(
        switched,
        "the reader saw v2's rows ({} answers)",
        readings.len()
    );
    assert!(readings.len() > 10, "the reader ran throughout");
    // After it all, exactly once: every key once, doubled by v2.
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT key), bool_and(doubled = key * 2), min(key), max(key) FROM titles",
            &[],
        )
        .await
        .expect("v2's columns through the stable name");
    let (count, distinct, doubled): (i64, i64, bool) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((count, distinct, doubled), (last, last, true));
    let states = states(&krescent).await;
    assert_eq!(
        states.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        [VersionState::Retired, VersionState::Active]
    );
    let retired = &versions(&krescent).list("titles").await.expect("list")[0];
    assert!(
        !schema_exists(&client, &retired.schema).await,
        "v1's tables are dropped"
    );
}

/// Acceptance 3: switch to v2, roll back to v1, switch again, each seen whole by a reader;
/// the refusals of a switch that would show less, of an unknown version and of dropping the
/// active one.
#[tokio::test]
async fn switch_roll_back_and_switch_again_each_atomic_for_readers() {
    let (database, krescent, client) = setup().await;
    append(&krescent, 0..120).await;
    let store = krescent.shared_store().clone();
    let manual = || Versioning::manual().grace(Duration::from_hours(1));
    let v1 = krescent
        .catch_up(V1::new(&store, manual()))
        .await
        .expect("v1");
    assert_eq!(v1.origin, Origin::Scratch);
    assert!(matches!(
        versions(&krescent).rollback("titles").await,
        Err(VersionError::NoPrevious { .. })
    ));
    let v2 = krescent
        .catch_up(V2::new(&store, manual()))
        .await
        .expect("v2 builds");
    assert_eq!(v2.position, v1.position);
    let ids: Vec<String> = states(&krescent)
        .await
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    assert_eq!(
        states(&krescent)
            .await
            .iter()
            .map(|(_, s)| *s)
            .collect::<Vec<_>>(),
        [VersionState::Active, VersionState::Building],
        "a manual version waits, built"
    );
    assert_eq!(
        seen(&client).await.expect("read"),
        (120, vec!["v1".to_owned()])
    );

    let stop = Arc::new(AtomicBool::new(false));
    let readings = reader(&database, stop.clone());
    let api = versions(&krescent);
    for (step, (to, label)) in [(&ids[1], "v2"), (&ids[0], "v1"), (&ids[1], "v2")]
        .into_iter()
        .enumerate()
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let switched = if step == 1 {
            api.rollback("titles").await.expect("roll back")
        } else {
            api.promote("titles", to).await.expect("promote")
        };
        assert_eq!(&switched.to, to);
        assert_eq!(
            seen(&client).await.expect("read"),
            (120, vec![label.to_owned()])
        );
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, Ordering::Relaxed);
    let readings = readings.await.expect("reader");
    let labels: Vec<&str> = readings
        .iter()
        .map(|a| {
            let (count, labels) = a.as_ref().expect("always there");
            assert_eq!(*count, 120, "never a partial table");
            assert_eq!(labels.len(), 1, "never two versions' rows");
            labels[0].as_str()
        })
        .collect();
    let mut changes: Vec<&str> = labels.clone();
    changes.dedup();
    assert_eq!(
        changes,
        ["v1", "v2", "v1", "v2"],
        "three switches, each seen whole"
    );

    assert_refusals(&krescent, &client, &ids).await;
}

/// With v2 active and v1 previous: a promote of v1 once behind, of an unknown version and of
/// the active one, and a drop of the active one, are refused and change nothing.
async fn assert_refusals(
    krescent: &Krescent<PostgresEventStore>,
    client: &tokio_postgres::Client,
    ids: &[String],
) {
    let store = krescent.shared_store().clone();
    let manual = || Versioning::manual().grace(Duration::from_hours(1));
    let api = versions(krescent);
    // v1 (previous now) falls behind: promoting it would show fewer rows, refused.
    append(krescent, 120..150).await;
    krescent
        .catch_up(V2::new(&store, manual()))
        .await
        .expect("v2 follows");
    match api.promote("titles", &ids[0]).await {
        Err(VersionError::Behind {
            position, active, ..
        }) => {
            assert_eq!((position.get(), active.get()), (120, 150));
        }
        other => panic!("expected Behind, got {other:?}"),
    }
    assert!(matches!(
        api.promote("titles", "000000000000").await,
        Err(VersionError::Unknown { .. })
    ));
    assert!(matches!(
        api.drop_version("titles", &ids[1]).await,
        Err(VersionError::Active { .. })
    ));
    assert!(matches!(
        api.promote("titles", &ids[1]).await,
        Err(VersionError::NotSwitchable {
            state: VersionState::Active,
            ..
        })
    ));
    assert_eq!(
        seen(client).await.expect("read"),
        (150, vec!["v2".to_owned()])
    );
}

/// An old build started after its version was dropped sees it retired and says so: it neither
/// rebuilds nor takes anything over.
#[tokio::test]
async fn an_old_build_after_the_switch_sees_its_version_retired() {
    let (_database, krescent, client) = setup().await;
    append(&krescent, 0..50).await;
    let store = krescent.shared_store().clone();
    krescent
        .catch_up(V1::new(&store, Versioning::manual()))
        .await
        .expect("v1");
    krescent
        .catch_up(V2::new(&store, Versioning::automatic()))
        .await
        .expect("v2 builds and switches");
    let listed = versions(&krescent).list("titles").await.expect("list");
    assert_eq!(listed[1].state, VersionState::Active, "{listed:?}");
    assert_eq!(listed[0].state, VersionState::Previous);
    assert_eq!(listed[1].lag, Some(0));
    versions(&krescent)
        .drop_version("titles", &listed[0].version)
        .await
        .expect("drop v1");
    assert!(!schema_exists(&client, &listed[0].schema).await);
    match krescent
        .catch_up(V1::new(&store, Versioning::manual()))
        .await
    {
        Err(Error::Storage {
            source: StorageError::Retired { model, version },
            ..
        }) => assert_eq!(
            (model.as_str(), version.as_str()),
            ("titles", listed[0].version.as_str())
        ),
        other => panic!("expected Retired, got {:?}", other.map(|c| c.position)),
    }
    assert!(
        !schema_exists(&client, &listed[0].schema).await,
        "nothing rebuilt"
    );
    assert_eq!(
        seen(&client).await.expect("read"),
        (50, vec!["v2".to_owned()])
    );
}

/// A third version deployed while the second builds: the newest wins, the second is retired
/// and dropped, and a build of it refuses to start.
#[tokio::test]
async fn a_third_version_supersedes_the_one_still_building() {
    let (_database, krescent, client) = setup().await;
    append(&krescent, 0..30).await;
    let store = krescent.shared_store().clone();
    krescent
        .catch_up(V1::new(&store, Versioning::manual()))
        .await
        .expect("v1");
    krescent
        .catch_up(V2::new(&store, Versioning::manual()))
        .await
        .expect("v2 builds");
    krescent
        .catch_up(V3::new(&store, Versioning::manual()))
        .await
        .expect("v3 builds");
    let listed = versions(&krescent).list("titles").await.expect("list");
    assert_eq!(
        listed.iter().map(|v| v.state).collect::<Vec<_>>(),
        [
            VersionState::Active,
            VersionState::Retired,
            VersionState::Building
        ]
    );
    assert!(
        !schema_exists(&client, &listed[1].schema).await,
        "v2 dropped"
    );
    assert!(matches!(
        krescent
            .catch_up(V2::new(&store, Versioning::manual()))
            .await,
        Err(Error::Storage {
            source: StorageError::Retired { .. },
            ..
        })
    ));
    assert_eq!(
        seen(&client).await.expect("read"),
        (30, vec!["v1".to_owned()])
    );
}

/// A database of the previous release: the checkpoints table at schema 7, and the table and
/// checkpoint of the unversioned `titles` in the stable place (the fixture); `keys` appended
/// (the fixture's checkpoint covers the first 40).
async fn previous_release(
    keys: std::ops::Range<i64>,
) -> (
    TestDatabase,
    Krescent<PostgresEventStore>,
    tokio_postgres::Client,
) {
    let database = fresh_database().await;
    let client = database.client().await;
    client
        .batch_execute(include_str!("fixtures/checkpoints-schema-7.sql"))
        .await
        .expect("the schema 7 tables, the projection and its checkpoint");
    let store = database.event_store().await;
    let storage = store.checkpoint_storage();
    storage.migrate().await.expect("migrate");
    storage
        .migrate()
        .await
        .expect("migrate again: nothing to do");
    let version: i32 = client
        .query_one(
            "SELECT version FROM krescent_schema_migrations WHERE component = 'checkpoints:krescent_checkpoints'",
            &[],
        )
        .await
        .expect("version")
        .get(0);
    assert_eq!(version, 8, "step 8 adds the versions' table");
    let krescent = Krescent::new(store).with_storage("postgres", storage);
    append(&krescent, keys).await;
    (database, krescent, client)
}

async fn relkind(client: &tokio_postgres::Client, name: &str) -> Option<String> {
    client
        .query_one(
            "SELECT (SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1))",
            &[&name],
        )
        .await
        .expect("query")
        .get(0)
}

/// Upgrade in place: the first versioned start of the same version adopts the previous
/// release's table and checkpoint as the active version, without a rebuild (the fixture's rows
/// keep their label), and the stable name becomes a view of it.
#[tokio::test]
async fn a_projection_of_the_previous_release_is_adopted_without_a_rebuild() {
    let (_database, krescent, client) = previous_release(0..60).await;
    let store = krescent.shared_store().clone();
    let run = krescent
        .catch_up(V1::new(&store, Versioning::manual()))
        .await
        .expect("v1 adopts its tables");
    assert_eq!(
        run.origin.restored_from(),
        Some(krescent::Position::new(40)),
        "{:?}",
        run.origin
    );
    assert_eq!(run.processed, 20, "only the events after the checkpoint");
    let labels: Vec<(String, i64)> = client
        .query(
            "SELECT label, count(*) FROM titles GROUP BY label ORDER BY label",
            &[],
        )
        .await
        .expect("read")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(labels, [("legacy".to_owned(), 40), ("v1".to_owned(), 20)]);
    assert_eq!(
        relkind(&client, "public.titles").await.as_deref(),
        Some("v")
    );
    let listed = versions(&krescent).list("titles").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, VersionState::Active);
    assert_eq!(
        listed[0].namespace, "titles",
        "the checkpoint stays where it was"
    );
    assert_eq!(listed[0].position, Some(krescent::Position::new(60)));
    assert_eq!(
        relkind(&client, &format!("{}.titles", listed[0].schema))
            .await
            .as_deref(),
        Some("r")
    );
    // And a restart restores, as before.
    let again = krescent
        .catch_up(V1::new(&store, Versioning::manual()))
        .await
        .expect("v1 again");
    assert_eq!(
        again.origin.restored_from(),
        Some(krescent::Position::new(60))
    );
}

/// Upgrade in place with a new version: the previous release's projection is adopted as the
/// active version (readers keep its rows), and the new version builds beside it and is
/// switched to when caught up.
#[tokio::test]
async fn a_new_version_over_the_previous_release_builds_beside_the_adopted_one() {
    let (_database, krescent, client) = previous_release(0..40).await;
    let store = krescent.shared_store().clone();
    krescent
        .catch_up(V2::new(&store, Versioning::manual()))
        .await
        .expect("v2 builds");
    let listed = versions(&krescent).list("titles").await.expect("list");
    assert_eq!(
        listed.iter().map(|v| v.state).collect::<Vec<_>>(),
        [VersionState::Active, VersionState::Building]
    );
    assert_eq!(listed[0].namespace, "titles");
    assert_eq!(listed[0].checkpoint_version, "v1-0719ae054d03fab2");
    assert_eq!(listed[1].lag, Some(0));
    assert_eq!(
        seen(&client).await.expect("read"),
        (40, vec!["legacy".to_owned()])
    );
    versions(&krescent)
        .promote("titles", &listed[1].version)
        .await
        .expect("promote v2");
    assert_eq!(
        seen(&client).await.expect("read"),
        (40, vec!["v2".to_owned()])
    );
    versions(&krescent)
        .rollback("titles")
        .await
        .expect("roll back to the adopted");
    assert_eq!(
        seen(&client).await.expect("read"),
        (40, vec!["legacy".to_owned()])
    );
}

/// `krescent` on the test database; stdin closed, so a question is declined.
fn cli(database: &TestDatabase) -> std::process::Command {
    let mut command = std::process::Command::new(krescent_testkit::examples::workspace_binary(
        "krescent-cli",
        "krescent",
    ));
    command
        .env_remove("DATABASE_URL")
        .stdin(std::process::Stdio::null())
        .args(["--database-url", database.url()]);
    command
}

/// Runs a command that must succeed; its stdout.
fn cli_ok(command: &mut std::process::Command) -> String {
    let output = command.output().expect("run krescent");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Runs a command that must fail with exit 1 and one line on stderr; that line.
fn cli_fails(command: &mut std::process::Command) -> String {
    let output = command.output().expect("run krescent");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{command:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr:?}");
    assert!(output.stdout.is_empty(), "nothing on stdout on failure");
    stderr
}

/// v1 active and v2 built beside it (manual), at position 30.
async fn two_versions() -> (
    TestDatabase,
    Krescent<PostgresEventStore>,
    tokio_postgres::Client,
    Vec<String>,
) {
    let (database, krescent, client) = setup().await;
    append(&krescent, 0..30).await;
    let store = krescent.shared_store().clone();
    krescent
        .catch_up(V1::new(&store, Versioning::manual()))
        .await
        .expect("v1");
    krescent
        .catch_up(V2::new(&store, Versioning::manual()))
        .await
        .expect("v2");
    let ids = states(&krescent)
        .await
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    (database, krescent, client, ids)
}

/// Acceptance 5: `krescent versions` lists, promotes, rolls back and drops, with `--dry-run`,
/// confirmation and the lease's refusal; bad input is refused with exit 1 and one line.
#[tokio::test]
async fn the_cli_lists_promotes_rolls_back_and_drops_versions() {
    let (database, krescent, client, ids) = two_versions().await;
    let (v1, v2) = (ids[0].as_str(), ids[1].as_str());
    let listed: serde_json::Value = serde_json::from_str(&cli_ok(
        cli(&database).args(["versions", "list", "titles", "--json"]),
    ))
    .expect("JSON");
    assert_eq!(listed[0]["version"], v1);
    assert_eq!(listed[0]["state"], "active");
    assert_eq!(listed[1]["state"], "building");
    assert_eq!(listed[1]["position"], 30);
    assert_eq!(listed[1]["lag"], 0);
    let table = cli_ok(cli(&database).args(["versions", "list", "titles"]));
    assert!(table.starts_with("VERSION"), "{table}");
    assert!(table.contains(v2) && table.contains("building"), "{table}");

    assert!(cli_fails(cli(&database).args(["versions", "list", "nosuch"])).contains("`nosuch`"));
    let usage = cli(&database)
        .args(["versions", "promote", "titles"])
        .output()
        .expect("run krescent");
    assert_eq!(
        usage.status.code(),
        Some(2),
        "a missing version is bad usage"
    );
    let dry = cli_ok(cli(&database).args(["versions", "promote", "titles", v2, "--dry-run"]));
    assert!(dry.contains("would switch"), "{dry}");
    assert!(
        cli_fails(cli(&database).args(["versions", "promote", "titles", v2]))
            .contains("not confirmed")
    );
    assert_eq!(
        seen(&client).await.expect("read"),
        (30, vec!["v1".to_owned()])
    );
    let unknown =
        cli_fails(cli(&database).args(["versions", "promote", "titles", "000000000000", "--yes"]));
    assert!(
        unknown.contains("no version `000000000000`") && unknown.contains(v2),
        "{unknown}"
    );

    cli_ok(cli(&database).args(["versions", "promote", "titles", v2, "--yes"]));
    assert_eq!(
        seen(&client).await.expect("read"),
        (30, vec!["v2".to_owned()])
    );
    let active = cli_fails(cli(&database).args(["versions", "drop", "titles", v2, "--yes"]));
    assert!(active.contains("active"), "{active}");
    cli_ok(cli(&database).args(["versions", "rollback", "titles", "--yes"]));
    assert_eq!(
        seen(&client).await.expect("read"),
        (30, vec!["v1".to_owned()])
    );
    cli_ok(cli(&database).args(["versions", "promote", "titles", v2, "--yes"]));
    assert_eq!(
        seen(&client).await.expect("read"),
        (30, vec!["v2".to_owned()])
    );

    // v1 (previous) follows in a running process: dropping it is refused while it runs.
    let store = krescent.shared_store().clone();
    let running = krescent.stream(V1::new(&store, Versioning::manual()));
    running
        .reached(krescent::Position::new(30))
        .await
        .expect("v1 follows");
    let leased = cli_fails(cli(&database).args(["versions", "drop", "titles", v1, "--yes"]));
    assert!(leased.contains("--force"), "{leased}");
    running.shutdown().await.expect("v1 stops");
    cli_ok(cli(&database).args(["versions", "drop", "titles", v1, "--yes"]));
    let listed = versions(&krescent).list("titles").await.expect("list");
    assert_eq!(listed[0].state, VersionState::Retired);
    assert!(!schema_exists(&client, &listed[0].schema).await);
    assert!(
        cli_fails(cli(&database).args(["versions", "rollback", "titles", "--yes"]))
            .contains("no previous")
    );
}

/// The backend of the CLI process named `name`, once it waits for a lock.
async fn blocked_backend(client: &tokio_postgres::Client, name: &str) -> i32 {
    let mut pid = None;
    wait_for("the CLI to block on a lock", async || {
        pid = client
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
                &[&name],
            )
            .await
            .expect("query")
            .map(|r| r.get(0));
        pid.is_some()
    })
    .await;
    pid.expect("a backend")
}

/// Starts `args` in a CLI process whose connection is named `name`, waits until it blocks
/// on the lock `blocker` holds, SIGKILLs it, lets its backend go on and waits until the server
/// ended it: whatever it did in its transaction is rolled back, never half applied.
async fn kill_while_blocked(
    database: &TestDatabase,
    client: &tokio_postgres::Client,
    blocker: &tokio_postgres::Client,
    name: &str,
    args: &[&str],
) {
    let url = format!("{} application_name={name}", database.url());
    let mut child = std::process::Command::new(krescent_testkit::examples::workspace_binary(
        "krescent-cli",
        "krescent",
    ))
    .env_remove("DATABASE_URL")
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .args(["--database-url", &url])
    .args(args)
    .spawn()
    .expect("spawn krescent");
    let pid = blocked_backend(client, name).await;
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    blocker
        .batch_execute("COMMIT")
        .await
        .expect("release the lock");
    wait_for("the killed CLI's backend to end", async || {
        client
            .query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .await
            .expect("query")
            .is_none()
    })
    .await;
}

/// Acceptance 4: a SIGKILL in the middle of a switch (its registry rows changed, the views
/// not yet) and of a drop (its tables dropped, the checkpoint not yet) leaves the old state;
/// the same command run again completes.
#[tokio::test]
async fn a_kill_in_the_middle_of_a_switch_or_a_drop_leaves_the_old_state() {
    let (database, krescent, client, ids) = two_versions().await;
    let (v1, v2) = (ids[0].as_str(), ids[1].as_str());
    let blocker = database.client().await;

    // The switch blocks on the view a reader holds, after it changed the registry's rows.
    blocker
        .batch_execute("BEGIN; SELECT count(*) FROM titles")
        .await
        .expect("a reader holds the view");
    kill_while_blocked(
        &database,
        &client,
        &blocker,
        "killed_switch",
        &["versions", "promote", "titles", v2, "--yes"],
    )
    .await;
    assert_eq!(
        states(&krescent)
            .await
            .iter()
            .map(|(_, s)| *s)
            .collect::<Vec<_>>(),
        [VersionState::Active, VersionState::Building],
        "the old state"
    );
    assert_eq!(
        seen(&client).await.expect("read"),
        (30, vec!["v1".to_owned()])
    );
    versions(&krescent)
        .promote("titles", v2)
        .await
        .expect("the switch again");
    assert_eq!(
        seen(&client).await.expect("read"),
        (30, vec!["v2".to_owned()])
    );

    // The drop blocks on v1's checkpoint row, after it dropped v1's tables.
    let listed = versions(&krescent).list("titles").await.expect("list");
    blocker.execute("BEGIN", &[]).await.expect("begin");
    blocker
        .execute(
            "SELECT 1 FROM krescent_checkpoints WHERE namespace = $1 FOR UPDATE",
            &[&listed[0].namespace],
        )
        .await
        .expect("lock v1's checkpoint");
    kill_while_blocked(
        &database,
        &client,
        &blocker,
        "killed_drop",
        &["versions", "drop", "titles", v1, "--yes"],
    )
    .await;
    let after = versions(&krescent).list("titles").await.expect("list");
    assert_eq!(after[0].state, VersionState::Previous, "the old state");
    assert_eq!(after[0].position, Some(krescent::Position::new(30)));
    assert_eq!(
        relkind(&client, &format!("{}.titles", after[0].schema))
            .await
            .as_deref(),
        Some("r"),
        "v1's table is still there"
    );
    versions(&krescent)
        .drop_version("titles", v1)
        .await
        .expect("the drop again");
    assert!(!schema_exists(&client, &after[0].schema).await);
    assert_eq!(
        seen(&client).await.expect("read"),
        (30, vec!["v2".to_owned()])
    );
}

/// After its grace, a previous version that no process follows is dropped by the active
/// version's next commit; one that a process follows is left to that process.
#[tokio::test]
async fn an_expired_previous_version_nobody_follows_is_dropped_by_the_active_one() {
    let (_database, krescent, client) = setup().await;
    append(&krescent, 0..20).await;
    let store = krescent.shared_store().clone();
    let grace = || Versioning::automatic().grace(Duration::from_millis(100));
    krescent
        .catch_up(V1::new(&store, grace()))
        .await
        .expect("v1");
    krescent
        .catch_up(V2::new(&store, grace()))
        .await
        .expect("v2 switches");
    let listed = versions(&krescent).list("titles").await.expect("list");
    assert_eq!(listed[0].state, VersionState::Previous);
    // v1 is followed (its lease held) past its grace: the active version leaves it alone.
    let following = krescent.stream(V1::new(&store, Versioning::manual()));
    following
        .reached(krescent::Position::new(20))
        .await
        .expect("v1 follows");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(versions(&krescent)
        .retire_expired("titles")
        .await
        .expect("retire")
        .is_empty());
    assert_eq!(
        versions(&krescent).list("titles").await.expect("list")[0].state,
        VersionState::Previous
    );
    // Stopped (its last commit may retire it itself), nobody follows it: v2's next commit
    // drops it at the latest.
    match following.shutdown().await {
        Ok(_)
        | Err(Error::Storage {
            source: StorageError::Retired { .. },
            ..
        }) => {}
        Err(e) => panic!("v1 should stop, or retire itself: {e}"),
    }
    // Nobody follows it now: v2's next commit drops it.
    append(&krescent, 20..30).await;
    krescent
        .catch_up(V2::new(&store, grace()))
        .await
        .expect("v2 follows");
    let listed = versions(&krescent).list("titles").await.expect("list");
    assert_eq!(listed[0].state, VersionState::Retired);
    assert!(!schema_exists(&client, &listed[0].schema).await);
    assert_eq!(
        seen(&client).await.expect("read"),
        (30, vec!["v2".to_owned()])
    );
}

/// A version that must start over (its checkpoint gone) empties its own tables, which the
/// stable views keep showing, and replays: no duplicate, no missing view.
#[tokio::test]
async fn a_version_without_its_checkpoint_rebuilds_its_own_tables_in_place() {
    let (_database, krescent, client) = setup().await;
    append(&krescent, 0..25).await;
    let store = krescent.shared_store().clone();
    krescent
        .catch_up(V1::new(&store, Versioning::manual()))
        .await
        .expect("v1");
    let listed = versions(&krescent).list("titles").await.expect("list");
    client
        .execute(
            "DELETE FROM krescent_checkpoints WHERE namespace = $1",
            &[&listed[0].namespace],
        )
        .await
        .expect("the checkpoint deleted behind the model's back");
    let again = krescent
        .catch_up(V1::new(&store, Versioning::manual()))
        .await
        .expect("v1 rebuilds");
    assert_eq!(again.origin, Origin::Scratch);
    assert_eq!(again.processed, 25);
    assert_eq!(
        seen(&client).await.expect("read"),
        (25, vec!["v1".to_owned()])
    );
    assert_eq!(
        relkind(&client, "public.titles").await.as_deref(),
        Some("v")
    );
}
