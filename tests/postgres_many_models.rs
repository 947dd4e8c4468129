//! Many models in one process never starve each other of connections: 64 `PostgresProjection`
//! models, and the 64 segments of one split projection, streamed from one store all reach the
//! head; with the pool of projection transactions deliberately too small, starting them fails
//! with the typed, transient `PoolExhausted` within its bound instead of hanging.

use std::fmt::Write as _;
use std::time::Duration;

use krescent::checkpoint::PostgresCheckpointStorage;
use krescent::fleet::Segment;
use krescent::prelude::*;
use krescent::projection::{PostgresProjection, ProjectionError};
use krescent::store::{PoolExhausted, PoolRole, PostgresConfig, PostgresEventStore};
use krescent_testkit::postgres::{fresh_database, TestDatabase};

#[derive(Event, Serialize, Deserialize)]
#[event(name = "many.tick")]
struct Tick {
    n: u64,
}

const EVENTS: u64 = 500;
const BOUND: Duration = Duration::from_mins(2);

/// Declares one projection model per line: a table of its own, one row per event.
macro_rules! projections {
    ($($model:ident $name:literal $table:literal;)*) => {
        $(
            #[derive(EventModel)]
            #[model(name = $name)]
            #[checkpoint(strategy = "fixed_events(20)", storage = "postgres")]
            struct $model {
                #[checkpoint(support)]
                table: PostgresProjection,
                insert: String,
            }

            #[krescent::handlers]
            impl $model {
                async fn tick(&mut self, e: &Tick) -> Result<(), ProjectionError> {
                    let n = i64::try_from(e.n).expect("small");
                    self.table.execute(&self.insert, &[&n]).await?;
                    Ok(())
                }
            }

            impl $model {
                fn new(storage: &PostgresCheckpointStorage) -> Self {
                    let table = PostgresProjection::new(storage, 1)
                        .table($table, "CREATE TABLE {table} (n bigint NOT NULL)")
                        .expect("a valid table");
                    let name = table.name_of($table).expect("declared").to_owned();
                    $model { table, insert: format!("INSERT INTO {name} (n) VALUES ($1)") }
                }
            }
        )*

        const TABLES: &[&str] = &[$($table),*];

        /// Streams every model until it reaches `head`, then stops it: what each returned.
        async fn stream_all(
            krescent: &Krescent<PostgresEventStore>,
            storage: &PostgresCheckpointStorage,
            head: Position,
        ) -> Vec<Result<(), Error>> {
            let mut runs = Vec::new();
            $(
                let running = krescent.stream($model::new(storage));
                runs.push(tokio::spawn(async move {
                    let reached = running.reached(head).await;
                    let stopped = running.shutdown().await.map(drop);
                    reached.and(stopped)
                }));
            )*
            let mut results = Vec::new();
            for run in runs {
                results.push(run.await.expect("the run's task"));
            }
            results
        }

        /// Catches every model up at once: what each returned.
        async fn catch_up_all(
            krescent: &Krescent<PostgresEventStore>,
            storage: &PostgresCheckpointStorage,
        ) -> Vec<Result<(), Error>> {
            let mut runs = Vec::new();
            $(
                let (instance, model) = (krescent.clone(), $model::new(storage));
                runs.push(tokio::spawn(async move { instance.catch_up(model).await.map(drop) }));
            )*
            let mut results = Vec::new();
            for run in runs {
                results.push(run.await.expect("the run's task"));
            }
            results
        }
    };
}

projections! {
    P00 "many.p00" "many_p00";
    P01 "many.p01" "many_p01";
    P02 "many.p02" "many_p02";
    P03 "many.p03" "many_p03";
    P04 "many.p04" "many_p04";
    P05 "many.p05" "many_p05";
    P06 "many.p06" "many_p06";
    P07 "many.p07" "many_p07";
    P08 "many.p08" "many_p08";
    P09 "many.p09" "many_p09";
    P10 "many.p10" "many_p10";
    P11 "many.p11" "many_p11";
    P12 "many.p12" "many_p12";
    P13 "many.p13" "many_p13";
    P14 "many.p14" "many_p14";
    P15 "many.p15" "many_p15";
    P16 "many.p16" "many_p16";
    P17 "many.p17" "many_p17";
    P18 "many.p18" "many_p18";
    P19 "many.p19" "many_p19";
    P20 "many.p20" "many_p20";
    P21 "many.p21" "many_p21";
    P22 "many.p22" "many_p22";
    P23 "many.p23" "many_p23";
    P24 "many.p24" "many_p24";
    P25 "many.p25" "many_p25";
    P26 "many.p26" "many_p26";
    P27 "many.p27" "many_p27";
    P28 "many.p28" "many_p28";
    P29 "many.p29" "many_p29";
    P30 "many.p30" "many_p30";
    P31 "many.p31" "many_p31";
    P32 "many.p32" "many_p32";
    P33 "many.p33" "many_p33";
    P34 "many.p34" "many_p34";
    P35 "many.p35" "many_p35";
    P36 "many.p36" "many_p36";
    P37 "many.p37" "many_p37";
    P38 "many.p38" "many_p38";
    P39 "many.p39" "many_p39";
    P40 "many.p40" "many_p40";
    P41 "many.p41" "many_p41";
    P42 "many.p42" "many_p42";
    P43 "many.p43" "many_p43";
    P44 "many.p44" "many_p44";
    P45 "many.p45" "many_p45";
    P46 "many.p46" "many_p46";
    P47 "many.p47" "many_p47";
    P48 "many.p48" "many_p48";
    P49 "many.p49" "many_p49";
    P50 "many.p50" "many_p50";
    P51 "many.p51" "many_p51";
    P52 "many.p52" "many_p52";
    P53 "many.p53" "many_p53";
    P54 "many.p54" "many_p54";
    P55 "many.p55" "many_p55";
    P56 "many.p56" "many_p56";
    P57 "many.p57" "many_p57";
    P58 "many.p58" "many_p58";
    P59 "many.p59" "many_p59";
    P60 "many.p60" "many_p60";
    P61 "many.p61" "many_p61";
    P62 "many.p62" "many_p62";
    P63 "many.p63" "many_p63";
}

/// A store (with the pools `config` sizes) holding [`EVENTS`] ticks over 10 streams, and a
/// krescent on it.
async fn instance(
    db: &TestDatabase,
    config: PostgresConfig,
) -> (Krescent<PostgresEventStore>, PostgresCheckpointStorage) {
    let store = PostgresEventStore::connect_with(db.url(), config)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    let storage = store.checkpoint_storage();
    storage.migrate().await.expect("migrate");
    let krescent = Krescent::new(store).with_storage("postgres", storage.clone());
    (krescent, storage)
}

async fn append(krescent: &Krescent<PostgresEventStore>) {
    for batch in 0..EVENTS / 50 {
        let events = (0..50)
            .map(|i| NewEvent::new(&Tick { n: batch * 50 + i }).expect("encode"))
            .collect();
        krescent
            .store()
            .append(&format!("ticks-{batch}"), ExpectedVersion::Any, events)
            .await
            .expect("append");
    }
}

async fn rows(db: &TestDatabase, table: &str) -> i64 {
    db.client()
        .await
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_projections_in_one_process_all_reach_the_head() {
    let db = fresh_database().await;
    let (krescent, storage) = instance(&db, PostgresConfig::default()).await;
    append(&krescent).await;
    let results = tokio::time::timeout(
        BOUND,
        stream_all(&krescent, &storage, Position::new(EVENTS)),
    )
    .await
    .expect("every projection reaches the head in time");
    for (result, table) in results.into_iter().zip(TABLES) {
        result.unwrap_or_else(|e| panic!("{table}: {e}"));
        assert_eq!(rows(&db, table).await, 500, "{table}");
    }
}

/// All documents' ticks, split in 64 segments sharing one table.
#[derive(EventModel)]
#[model(name = "many.split", segments = 64)]
#[checkpoint(strategy = "fixed_events(20)", storage = "postgres")]
struct Split {
    #[checkpoint(support)]
    table: PostgresProjection,
    insert: String,
}

#[krescent::handlers]
impl Split {
    async fn tick(&mut self, e: &Tick) -> Result<(), ProjectionError> {
        let n = i64::try_from(e.n).expect("small");
        self.table.execute(&self.insert, &[&n]).await?;
        Ok(())
    }
}

impl Split {
    fn new(storage: &PostgresCheckpointStorage, _: Segment) -> Self {
        let table = PostgresProjection::new(storage, 1)
            .table("many_split", "CREATE TABLE {table} (n bigint NOT NULL)")
            .expect("a valid table");
        let name = table.name_of("many_split").expect("declared").to_owned();
        Split {
            table,
            insert: format!("INSERT INTO {name} (n) VALUES ($1)"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_segments_of_one_projection_all_reach_the_head() {
    let db = fresh_database().await;
    let (krescent, storage) = instance(&db, PostgresConfig::default()).await;
    append(&krescent).await;
    let running = krescent.stream_segments(move |segment| Split::new(&storage, segment));
    tokio::time::timeout(BOUND, async {
        // `position` is the lowest of the segments running here: all 64 must be.
        while running.held().len() < 64 || running.position() < Position::new(EVENTS) {
            assert!(!running.is_finished(), "{:?}", running.segments());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every segment reaches the head in time");
    assert_eq!(running.segments().len(), 64);
    let ended = running
        .shutdown()
        .await
        .expect("every segment stops cleanly");
    assert_eq!(ended.len(), 64);
    assert_eq!(rows(&db, "many_split").await, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_too_small_is_a_typed_transient_error_within_its_bound() {
    let db = fresh_database().await;
    let wait = Duration::from_millis(200);
    let config = PostgresConfig {
        projection_pool_size: 1,
        pool_wait: wait,
        ..PostgresConfig::default()
    };
    let (krescent, storage) = instance(&db, config).await;
    append(&krescent).await;
    let results = tokio::time::timeout(BOUND, catch_up_all(&krescent, &storage))
        .await
        .expect("no hang: every start ends in time");
    let mut exhausted = 0;
    for result in results {
        let Err(error) = result else { continue };
        assert!(error.is_transient(), "{error}");
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        let (mut found, mut chain) = (None, String::new());
        while let Some(e) = source {
            if let Some(e) = e.downcast_ref::<PoolExhausted>() {
                found = Some(e.clone());
            }
            let _ = write!(chain, "{e}; ");
            source = e.source();
        }
        let found = found.unwrap_or_else(|| panic!("not a PoolExhausted: {chain}"));
        // Mostly the one connection of projection transactions; under load the store's 16 may
        // be taken for longer than the bound too.
        match found.pool {
            PoolRole::Projections => {
                assert_eq!((found.size, found.waited), (1, Some(wait)));
                exhausted += 1;
            }
            PoolRole::Store => assert_eq!((found.size, found.waited), (16, Some(wait))),
        }
        assert!(chain.contains("many.p"), "names the model: {chain}");
        assert!(chain.contains("PostgresConfig::"), "{chain}");
    }
    assert!(
        exhausted > 0,
        "64 projections on one connection waited past 20 ms"
    );
}
