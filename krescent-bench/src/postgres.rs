//! The `PostgreSQL` figures: append, replay with and without checkpoints, resume, live latency,
//! large state.

use std::collections::HashMap;
use std::error::Error;
use std::pin::pin;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt as _;
use krescent::checkpoint::{CheckpointBucket, CheckpointStorage, CheckpointSupport};
use krescent::fleet::Slice;
use krescent::prelude::*;
use krescent::store::{EventStore, ExpectedVersion, PostgresConfig, PostgresEventStore};
use krescent::CaughtUp;
use krescent_testkit::all_documents_model;
use krescent_testkit::workload::{
    apply_by_hand_bytes, DocumentCreated, DocumentEvent, Documents, Workload, SEED,
};
use serde_json::value::RawValue;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{FromSql, Json, Type};
use tokio_postgres::{Client, NoTls};

use crate::large;
use crate::measure::{latency, median, medians_in_turns, rate, throughput};
use crate::Options;

all_documents_model! {
    #[model(name = "bench.documents", version = 1)]
    #[checkpoint(strategy = "fixed_events(25)", storage = "postgres")]
    struct Documents25;
}

all_documents_model! {
    #[model(name = "bench.documents.plain", version = 1)]
    struct DocumentsPlain;
}

/// A `jsonb` value's JSON bytes as the binary protocol sends them (a version byte, then the
/// text), borrowed from the row: what a careful hand-written client decodes from.
pub(crate) struct JsonbBytes<'a>(pub(crate) &'a [u8]);

impl<'a> FromSql<'a> for JsonbBytes<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        match raw.split_first() {
            Some((1, json)) => Ok(JsonbBytes(json)),
            _ => Err("not a version 1 jsonb value".into()),
        }
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }
}

/// A model whose handler notes when it was called.
#[derive(EventModel, Default)]
#[model(name = "bench.latency", version = 1)]
struct Latency {
    handled: Vec<Instant>,
}

#[krescent::handlers]
impl Latency {
    fn created(&mut self, _: &DocumentCreated) {
        self.handled.push(Instant::now());
    }
}

const BATCH: usize = 1_000;

/// A row as the `COPY` baseline writes it: stream, version, id, type, payload, slice.
type CopyRow = (String, i64, uuid::Uuid, String, Box<RawValue>, i16);

/// The database: `DATABASE_URL` when set, else a throwaway server started as the tests start it.
pub(crate) async fn database_url() -> (String, Option<krescent_testkit::postgres::TestDatabase>) {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => (url, None),
        _ => {
            let database = krescent_testkit::postgres::fresh_database().await;
            (database.url().to_owned(), Some(database))
        }
    }
}

pub(crate) async fn client(url: &str) -> Result<Client, Box<dyn Error>> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("bench connection: {e}");
        }
    });
    Ok(client)
}

pub(crate) async fn run(options: &Options) -> Result<(), Box<dyn Error>> {
    let (url, _database) = database_url().await;
    let config = PostgresConfig::in_schema("krescent_bench");
    let client = client(&url).await?;
    client.batch_execute("DROP SCHEMA IF EXISTS krescent_bench CASCADE; DROP SCHEMA IF EXISTS krescent_bench_live CASCADE").await?;
    let store = PostgresEventStore::connect_with(&url, config.clone()).await?;
    store.migrate().await?;
    let storage = store.checkpoint_storage();
    storage.migrate().await?;
    let events = format!("krescent_bench.{}", config.events_table);
    let checkpoints = format!("krescent_bench.{}", config.checkpoints_table);

    let krescent = Krescent::new(store).with_storage("postgres", storage.clone());
    if options.only.as_deref() == Some("large_state") {
        return large_state(options, &krescent, &storage, &client, &checkpoints).await;
    }
    let workload: Vec<_> = Workload::new(SEED).take(options.events).collect();
    append(options, krescent.store(), &client, &events, &workload).await?;

    let full = replay(options, &krescent, &storage, &client, &events).await?;
    resume(options, &krescent, full).await?;
    live_latency(options, &url).await?;
    large_state(options, &krescent, &storage, &client, &checkpoints).await?;
    Ok(())
}

/// `append`: batches of 1,000 through the store, against binary `COPY` of the same rows, 1,000
/// rows a `COPY`, into an equally indexed table (`append`) and into one with only the primary
/// key (`append_pk_only`).
async fn append(
    options: &Options,
    store: &PostgresEventStore,
    client: &Client,
    events: &str,
    workload: &[DocumentEvent],
) -> Result<(), Box<dyn Error>> {
    let batches: Vec<Vec<NewEvent>> = workload
        .chunks(BATCH)
        .map(|chunk| chunk.iter().map(DocumentEvent::to_new_event).collect())
        .collect();
    let rows: Vec<Vec<CopyRow>> = batches
        .iter()
        .enumerate()
        .map(|(b, batch)| {
            batch
                .iter()
                .zip(1..)
                .map(|(e, v)| {
                    let stream = format!("bench-{b}");
                    let slice = i16::try_from(Slice::of(&stream).get()).unwrap_or(i16::MAX);
                    Ok((
                        stream,
                        v,
                        e.event_id,
                        e.event_type.to_string(),
                        RawValue::from_string(e.payload.to_string())?,
                        slice,
                    ))
                })
                .collect::<Result<_, serde_json::Error>>()
        })
        .collect::<Result<_, _>>()?;
    client.batch_execute(&format!(
        "DROP TABLE IF EXISTS krescent_bench.copy_target, krescent_bench.copy_pk_only;
         CREATE TABLE krescent_bench.copy_target (LIKE {events} INCLUDING ALL);
         CREATE TABLE krescent_bench.copy_pk_only (LIKE {events} INCLUDING DEFAULTS INCLUDING IDENTITY, PRIMARY KEY (position))"
    )).await?;

    let copy = |table: &'static str| {
        let rows = &rows;
        async move {
            client
                .batch_execute(&format!("TRUNCATE krescent_bench.{table} RESTART IDENTITY"))
                .await?;
            let types = [
                Type::TEXT,
                Type::INT8,
                Type::UUID,
                Type::TEXT,
                Type::JSONB,
                Type::INT2,
            ];
            for batch in rows {
                let sink = client.copy_in(&format!("COPY krescent_bench.{table} (stream_id, stream_version, event_id, event_type, payload, slice) FROM STDIN BINARY")).await?;
                let mut writer = pin!(BinaryCopyInWriter::new(sink, &types));
                for (stream, version, id, event_type, payload, slice) in batch {
                    writer
                        .as_mut()
                        .write(&[stream, version, id, event_type, &Json(&**payload), slice])
                        .await?;
                }
                writer.finish().await?;
            }
            Ok::<_, Box<dyn Error>>(())
        }
    };
    let append = || async {
        client
            .batch_execute(&format!("TRUNCATE {events} RESTART IDENTITY"))
            .await?;
        for (b, batch) in batches.iter().enumerate() {
            store
                .append(
                    &format!("bench-{b}"),
                    ExpectedVersion::NoStream,
                    batch.clone(),
                )
                .await?;
        }
        Ok::<_, Box<dyn Error>>(())
    };
    // In turns with the indexed `COPY`: the server's background work (its checkpoints after
    // a million rows, autovacuum) weighs on both alike, not on whichever runs last.
    let (copy_indexed, appended) =
        medians_in_turns(options.reps, || copy("copy_target"), append).await?;
    let copy_pk_only = median(options.reps, || copy("copy_pk_only")).await?;
    throughput("append", workload.len(), appended, copy_indexed);
    throughput("append_pk_only", workload.len(), appended, copy_pk_only);
    Ok(())
}

/// `postgres_replay_plain` (no checkpoints) and `postgres_replay` (`fixed_events(25)`
/// checkpoints into Postgres): the whole table into the model, against one streaming `SELECT`
/// in the binary protocol that decodes every jsonb payload from the row's bytes.
async fn replay(
    options: &Options,
    krescent: &Krescent<PostgresEventStore>,
    storage: &impl CheckpointStorage,
    client: &Client,
    events: &str,
) -> Result<Duration, Box<dyn Error>> {
    let select = format!("SELECT event_type, payload FROM {events} ORDER BY position");
    let baseline = median(options.reps, || async {
        let rows = client
            .query_raw(&select, std::iter::empty::<&str>())
            .await?;
        let mut rows = pin!(rows);
        let mut documents = Documents::new();
        while let Some(row) = rows.try_next().await? {
            let payload: JsonbBytes<'_> = row.try_get(1)?;
            apply_by_hand_bytes(&mut documents, row.try_get(0)?, payload.0)
                .map_err(|e| Box::new(e) as Box<dyn Error>)?;
        }
        Ok::<_, Box<dyn Error>>(documents.len())
    })
    .await?;
    let plain = median(options.reps, || async {
        let run: CaughtUp<DocumentsPlain> = krescent.catch_up(DocumentsPlain::default()).await?;
        Ok::<_, Box<dyn Error>>(run.model.documents.len())
    })
    .await?;
    throughput("postgres_replay_plain", options.events, plain, baseline);
    let checkpoints = std::cell::Cell::new(0);
    let replayed = median(options.reps, || async {
        storage.delete("bench.documents").await?;
        let run: CaughtUp<Documents25> = krescent.catch_up(Documents25::default()).await?;
        checkpoints.set(run.checkpoints);
        Ok::<_, Box<dyn Error>>(run.model.documents.len())
    })
    .await?;
    eprintln!(
        "postgres_replay: {} checkpoints written in the last run",
        checkpoints.get()
    );
    throughput("postgres_replay", options.events, replayed, baseline);
    Ok(replayed)
}

/// `resume`: with a checkpoint at the tail, 1,000 new events; its time over a full replay's.
async fn resume(
    options: &Options,
    krescent: &Krescent<PostgresEventStore>,
    full: Duration,
) -> Result<(), Box<dyn Error>> {
    let mut fresh = Workload::new(SEED ^ 0x5eed);
    let mut times = Vec::with_capacity(options.reps);
    for _ in 0..options.reps {
        let batch: Vec<NewEvent> = fresh
            .by_ref()
            .take(BATCH)
            .map(|e| e.to_new_event())
            .collect();
        krescent
            .store()
            .append("bench-resume", ExpectedVersion::Any, batch)
            .await?;
        let start = Instant::now();
        let run = krescent.catch_up(Documents25::default()).await?;
        times.push(start.elapsed());
        assert!(
            run.origin.restored_from().is_some() && run.processed == BATCH as u64,
            "resume starts from the checkpoint at the tail"
        );
    }
    times.sort_unstable();
    let resumed = times[times.len() / 2];
    println!(
        "bench resume ratio={:.4} krescent={:.0} baseline={:.0}",
        resumed.as_secs_f64() / full.as_secs_f64(),
        rate(BATCH, resumed),
        rate(options.events, full)
    );
    Ok(())
}

/// `live_latency`: single appends, each waited for, from before the append to the handler call.
async fn live_latency(options: &Options, url: &str) -> Result<(), Box<dyn Error>> {
    let store =
        PostgresEventStore::connect_with(url, PostgresConfig::in_schema("krescent_bench_live"))
            .await?;
    store.migrate().await?;
    let krescent = Krescent::new(store);
    let count = (options.events / 100).clamp(1_000, 10_000);
    let running = krescent.stream(Latency::default());
    let mut sent = Vec::with_capacity(count);
    for (i, event) in Workload::new(SEED)
        .filter(|e| matches!(e, DocumentEvent::Created(_)))
        .take(count)
        .enumerate()
    {
        sent.push(Instant::now());
        let appended = krescent
            .store()
            .append(
                &format!("live-{i}"),
                ExpectedVersion::NoStream,
                vec![event.to_new_event()],
            )
            .await?;
        running.reached(appended.position).await?;
    }
    let model = running.shutdown().await?.model;
    latency("live_latency", &sent, &model.handled);
    Ok(())
}

/// `large_state`: a checkpoint of an N-key map written to Postgres in the storage's format, and
/// restored from it; `bytes` is the size of the stored bucket before the server compresses it.
async fn large_state(
    options: &Options,
    krescent: &Krescent<PostgresEventStore>,
    storage: &impl CheckpointStorage,
    client: &Client,
    checkpoints: &str,
) -> Result<(), Box<dyn Error>> {
    let model = large::Large {
        entries: large::entries(options.events),
    };
    let checkpoint = median(options.reps, || async {
        let stored = large::snapshot(&model, storage.format(), options.events)?;
        storage.store(&stored).await?;
        Ok::<_, Box<dyn Error>>(())
    })
    .await?;
    // The checkpoint floor: the map encoded by hand (rmp, into a buffer of its final size) and
    // sent as one bytea parameter of a plain upsert into the same table, without krescent.
    let upsert = format!(
        "INSERT INTO {checkpoints} (namespace, version, position, taken_at, format, data_binary)
         VALUES ('bench.large.floor', '', 0, now(), 2, $1)
         ON CONFLICT (namespace) DO UPDATE SET data_binary = excluded.data_binary"
    );
    let checkpoint_floor = median(options.reps, || async {
        let document = large::encode_by_hand(&model.entries)?;
        client.execute(&upsert, &[&document]).await?;
        Ok::<_, Box<dyn Error>>(())
    })
    .await?;
    client
        .execute(
            &format!("DELETE FROM {checkpoints} WHERE namespace = 'bench.large.floor'"),
            &[],
        )
        .await?;
    let snapshot = median(options.reps, || async {
        let mut bucket = CheckpointBucket::with_format(storage.format());
        model.create_checkpoint(&mut bucket)?;
        Ok::<_, Box<dyn Error>>(bucket)
    })
    .await?;
    let load = median(options.reps, || async {
        Ok::<_, Box<dyn Error>>(storage.load("bench.large").await?)
    })
    .await?;
    eprintln!(
        "large_state: of which the snapshot {} ms; of the restore, loading the bucket {} ms",
        snapshot.as_millis(),
        load.as_millis()
    );
    let restore = median(options.reps, || async {
        let restored = krescent.restore_only(large::Large::default()).await?;
        assert_eq!(
            restored.model.entries.len(),
            model.entries.len(),
            "the whole map is restored"
        );
        // Freed after the clock stops, like every result.
        Ok::<_, Box<dyn Error>>(restored)
    })
    .await?;
    let checksum = checksum_time(options, storage).await?;
    let select = format!("SELECT data_binary FROM {checkpoints} WHERE namespace = 'bench.large'");
    let floor = median(options.reps, || async {
        let row = client.query_one(&select, &[]).await?;
        let document: &[u8] = row.try_get(0)?;
        let restored = restore_by_hand(document)?;
        assert_eq!(
            restored.len(),
            model.entries.len(),
            "the whole map is restored"
        );
        Ok::<_, Box<dyn Error>>(restored)
    })
    .await?;
    let bytes = stored_bytes(client, checkpoints).await?;
    println!(
        "bench large_state keys={} format={:?} checkpoint_ms={} checkpoint_floor_ms={} restore_ms={} restore_floor_ms={} bytes={bytes} checksum_ms={:.1} checksum_share_checkpoint={:.4} checksum_share_restore={:.4}",
        model.entries.len(),
        storage.format(),
        checkpoint.as_millis(),
        checkpoint_floor.as_millis(),
        restore.as_millis(),
        floor.as_millis(),
        checksum.as_secs_f64() * 1e3,
        checksum.as_secs_f64() / checkpoint.as_secs_f64(),
        checksum.as_secs_f64() / restore.as_secs_f64(),
    );
    Ok(())
}

/// The size of the large checkpoint's stored bucket, before the server compresses it.
async fn stored_bytes(client: &Client, checkpoints: &str) -> Result<i64, Box<dyn Error>> {
    Ok(client
        .query_one(
            &format!("SELECT coalesce(octet_length(data_binary), octet_length(data::text))::bigint FROM {checkpoints} WHERE namespace = 'bench.large'"),
            &[],
        )
        .await?
        .try_get(0)?)
}

/// The checksum each write of the large checkpoint records and each restore checks, alone:
/// what it adds to both.
async fn checksum_time(
    options: &Options,
    storage: &impl CheckpointStorage,
) -> Result<Duration, Box<dyn Error>> {
    let loaded = storage
        .load("bench.large")
        .await?
        .ok_or("the large checkpoint is stored")?;
    median(options.reps, || async {
        Ok::<_, Box<dyn Error>>(std::hint::black_box(loaded.checksum()))
    })
    .await
}

/// The restore floor: the map rebuilt by hand from the row's `MessagePack` document (the bucket
/// `{"entries": {"MessagePack": <bin>}}`, the field's map inside the binary), allocated once at
/// its final size, each key borrowed from the row's bytes until it is copied into its `String`.
/// What any restore of this `HashMap` costs, whatever decodes it.
fn restore_by_hand(document: &[u8]) -> Result<HashMap<String, u64>, Box<dyn Error>> {
    let mut rest = document;
    let expect = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!("the large state's document: expected {what}"))
        }
    };
    expect(rmp::decode::read_map_len(&mut rest)? == 1, "one key")?;
    let (key, after) = rmp::decode::read_str_from_slice(rest).map_err(|e| e.to_string())?;
    expect(key == "entries", "`entries`")?;
    rest = after;
    expect(rmp::decode::read_map_len(&mut rest)? == 1, "one kind")?;
    let (kind, after) = rmp::decode::read_str_from_slice(rest).map_err(|e| e.to_string())?;
    expect(kind == "MessagePack", "`MessagePack`")?;
    rest = after;
    let len = rmp::decode::read_bin_len(&mut rest)? as usize;
    let mut field = rest
        .get(..len)
        .ok_or("the large state's binary is cut short")?;
    let entries = rmp::decode::read_map_len(&mut field)? as usize;
    let mut map = HashMap::with_capacity(entries);
    for _ in 0..entries {
        let (key, after) = rmp::decode::read_str_from_slice(field).map_err(|e| e.to_string())?;
        field = after;
        let value: u64 = rmp::decode::read_int(&mut field)?;
        map.insert(key.to_owned(), value);
    }
    Ok(map)
}
