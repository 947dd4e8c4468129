//! `segments`: on the document workload appended one stream per document, the replay of one
//! segment of a model split into 4 against the replay of the same model unsplit (the
//! server returns a segment only its own events: `one_segment_ratio`, and the rows each
//! segment's reads returned), and the replay of all 4 segments by one instance against two
//! instances (2 each). Then `slices_fill`: the same table taken back to the schema before
//! slices, and the migration that gives every row its slice timed, while an appender appends
//! one event at a time (the longest append it waited for).

use std::collections::HashMap;
use std::error::Error;
use std::pin::pin;

use krescent::fleet::{Segment, Slice};
use krescent::store::{EventStore, PostgresConfig, PostgresEventStore};
use krescent::Krescent;
use krescent::Position;
use krescent_testkit::all_documents_model;
use krescent_testkit::workload::{Workload, SEED};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{Json, Type};

use crate::measure::median;
use crate::Options;

all_documents_model! {
    #[model(name = "bench.documents.segmented", version = 1, segments = 4)]
    #[checkpoint(strategy = "fixed_events(25)", storage = "postgres")]
    struct Segmented;
}

all_documents_model! {
    #[model(name = "bench.documents.unsplit", version = 1)]
    #[checkpoint(strategy = "fixed_events(25)", storage = "postgres")]
    struct Unsplit;
}

const SCHEMA: &str = "krescent_bench_segments";

/// An instance: a store of its own (its own pool) and the checkpoint storage on it.
async fn instance(url: &str) -> Result<Krescent<PostgresEventStore>, Box<dyn Error>> {
    let store = PostgresEventStore::connect_with(url, PostgresConfig::in_schema(SCHEMA)).await?;
    let storage = store.checkpoint_storage();
    Ok(Krescent::new(store).with_storage("postgres", storage))
}

/// Every segment of `segments` caught up by `krescent`, at once.
async fn catch_up(
    krescent: &Krescent<PostgresEventStore>,
    segments: &[Segment],
) -> Result<u64, krescent::Error> {
    let runs = segments.iter().map(|segment| {
        let krescent = krescent.for_segment(*segment);
        tokio::spawn(async move { krescent.catch_up(Segmented::default()).await })
    });
    let mut processed = 0;
    for run in runs.collect::<Vec<_>>() {
        let caught_up = run.await.map_err(|e| krescent::Error::Aborted {
            model: "bench.documents.segmented",
            reason: e.to_string(),
        })??;
        processed += caught_up.processed;
    }
    Ok(processed)
}

pub(crate) async fn run(options: &Options) -> Result<(), Box<dyn Error>> {
    let (url, _database) = crate::postgres::database_url().await;
    let url = url.as_str();
    let client = crate::postgres::client(url).await?;
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        .await?;
    let one = instance(url).await?;
    one.store().migrate().await?;
    one.store().checkpoint_storage().migrate().await?;
    copy_by_document(options, &client).await?;
    client
        .batch_execute(&format!("VACUUM ANALYZE {SCHEMA}.krescent_events"))
        .await?;
    let two = [instance(url).await?, instance(url).await?];
    let all: Vec<Segment> = Segment::all(4).collect();
    let events = u64::try_from(options.events)?;
    let unsplit = median(options.reps, || async {
        one.delete_checkpoint::<Unsplit>().await?;
        let caught_up = one.catch_up(Unsplit::default()).await?;
        check(caught_up.processed, events)
    })
    .await?;
    let first = all[0];
    let first_processed = std::cell::Cell::new(0);
    let one_segment = median(options.reps, || async {
        one.delete_checkpoint::<Segmented>().await?;
        first_processed.set(catch_up(&one, &[first]).await?);
        Ok::<_, Box<dyn Error>>(())
    })
    .await?;
    let mut rows = Vec::new();
    for segment in &all {
        rows.push(rows_returned(one.store(), *segment).await?.to_string());
    }
    let first_processed = first_processed.get();
    if rows[0] != first_processed.to_string() {
        return Err(format!(
            "segment 0 processed {first_processed} events, its reads returned {} rows",
            rows[0]
        )
        .into());
    }
    let reset = || async {
        one.delete_checkpoint::<Segmented>().await?;
        Ok::<_, krescent::Error>(())
    };
    let alone = median(options.reps, || async {
        reset().await?;
        let processed = catch_up(&one, &all).await?;
        check(processed, events)
    })
    .await?;
    let shared = median(options.reps, || async {
        reset().await?;
        let (a, b) = tokio::join!(catch_up(&two[0], &all[..2]), catch_up(&two[1], &all[2..]));
        check(a? + b?, events)
    })
    .await?;
    println!(
        "bench segments one_segment_ratio={:.3} one_segment_ms={} unsplit_ms={} rows_per_segment={} events={events} ratio={:.3} one_instance_ms={} two_instances_ms={} segments=4",
        one_segment.as_secs_f64() / unsplit.as_secs_f64(),
        one_segment.as_millis(),
        unsplit.as_millis(),
        rows.join("/"),
        alone.as_secs_f64() / shared.as_secs_f64(),
        alone.as_millis(),
        shared.as_millis()
    );
    fill(url, &client, events).await?;
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        .await?;
    Ok(())
}

/// `slices_fill`: the events table taken back to the schema before slices (the column, its
/// trigger and index dropped, the version set back), then migrated by a new instance while an
/// appender of the previous release appends one event at a time.
async fn fill(url: &str, client: &tokio_postgres::Client, rows: u64) -> Result<(), Box<dyn Error>> {
    client
        .batch_execute(&format!(
            "DROP TRIGGER krescent_slice ON {SCHEMA}.krescent_events;
             ALTER TABLE {SCHEMA}.krescent_events DROP COLUMN slice;
             UPDATE {SCHEMA}.krescent_schema_migrations SET version = 3
                 WHERE component = 'events:krescent_events';
             DELETE FROM {SCHEMA}.krescent_schema_migrations
                 WHERE component = 'slices:krescent_events'"
        ))
        .await?;
    client
        .batch_execute(&format!("VACUUM ANALYZE {SCHEMA}.krescent_events"))
        .await?;
    let migrating =
        PostgresEventStore::connect_with(url, PostgresConfig::in_schema(SCHEMA)).await?;
    // An appender of the previous release: its insert has no slice (the trigger gives it one).
    let appending = crate::postgres::client(url).await?;
    let insert = appending
        .prepare(&format!(
            "INSERT INTO {SCHEMA}.krescent_events (stream_id, stream_version, event_id, event_type, payload)
             VALUES ('appender-' || $1::bigint, 1, gen_random_uuid(), 'bench.appended', '{{}}')"
        ))
        .await?;
    let done = std::sync::atomic::AtomicBool::new(false);
    let append = async {
        let (mut appends, mut longest) = (0_u64, std::time::Duration::ZERO);
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let started = std::time::Instant::now();
            appending
                .execute(&insert, &[&i64::try_from(appends)?])
                .await?;
            longest = longest.max(started.elapsed());
            appends += 1;
        }
        Ok::<_, Box<dyn Error>>((appends, longest))
    };
    let migrate = async {
        let started = std::time::Instant::now();
        let migrated = migrating.migrate().await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        migrated.map(|()| started.elapsed())
    };
    let (appended, migrated) = tokio::join!(append, migrate);
    let ((appends, longest), took) = (appended?, migrated?);
    let unsliced: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM {SCHEMA}.krescent_events WHERE slice IS NULL"),
            &[],
        )
        .await?
        .get(0);
    if unsliced != 0 {
        return Err(format!("{unsliced} rows have no slice after the migration").into());
    }
    println!(
        "bench slices_fill rows={rows} fill_ms={} appends_during={appends} longest_append_ms={:.1}",
        took.as_millis(),
        longest.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// The rows the server returns to `segment`'s reads from the start to the head, in batches of
/// the size a run reads.
async fn rows_returned(
    store: &PostgresEventStore,
    segment: Segment,
) -> Result<u64, Box<dyn Error>> {
    let mut rows = 0;
    let mut after = Position::START;
    loop {
        let batch = store.read_segment(segment, after, 4096).await?;
        rows += u64::try_from(batch.events().len())?;
        if batch.read_to() == after {
            return Ok(rows);
        }
        after = batch.read_to();
    }
}

/// Every event processed by exactly one segment.
fn check(processed: u64, events: u64) -> Result<(), Box<dyn Error>> {
    if processed == events {
        Ok(())
    } else {
        Err(format!("the segments processed {processed} of {events} events").into())
    }
}

/// The workload into the events table by binary `COPY`, each event in its document's stream.
async fn copy_by_document(
    options: &Options,
    client: &tokio_postgres::Client,
) -> Result<(), Box<dyn Error>> {
    let sink = client
        .copy_in(&format!("COPY {SCHEMA}.krescent_events (stream_id, stream_version, event_id, event_type, payload, slice) FROM STDIN BINARY"))
        .await?;
    let types = [
        Type::TEXT,
        Type::INT8,
        Type::UUID,
        Type::TEXT,
        Type::JSONB,
        Type::INT2,
    ];
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &types));
    let mut versions: HashMap<String, i64> = HashMap::new();
    for event in Workload::new(SEED).take(options.events) {
        let stream = format!("document-{}", event.document_id());
        let version = versions.entry(stream.clone()).or_default();
        *version += 1;
        let new = event.to_new_event();
        let payload = serde_json::value::RawValue::from_string(new.payload.to_string())?;
        let slice = i16::try_from(Slice::of(&stream).get())?;
        writer
            .as_mut()
            .write(&[
                &stream,
                &*version,
                &new.event_id,
                &new.event_type.to_string(),
                &Json(&*payload),
                &slice,
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}
