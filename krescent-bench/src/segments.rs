//! `segments`: the replay of a model split into 4 segments, by one instance (all 4) against two
//! instances (2 each), on the document workload appended one stream per document.

use std::collections::HashMap;
use std::error::Error;
use std::pin::pin;

use krescent::fleet::Segment;
use krescent::store::{PostgresConfig, PostgresEventStore};
use krescent::Krescent;
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
    let two = [instance(url).await?, instance(url).await?];
    let all: Vec<Segment> = Segment::all(4).collect();
    let events = u64::try_from(options.events)?;
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
        "bench segments ratio={:.3} one_instance_ms={} two_instances_ms={} segments=4",
        alone.as_secs_f64() / shared.as_secs_f64(),
        alone.as_millis(),
        shared.as_millis()
    );
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        .await?;
    Ok(())
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
        .copy_in(&format!("COPY {SCHEMA}.krescent_events (stream_id, stream_version, event_id, event_type, payload) FROM STDIN BINARY"))
        .await?;
    let types = [Type::TEXT, Type::INT8, Type::UUID, Type::TEXT, Type::JSONB];
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &types));
    let mut versions: HashMap<String, i64> = HashMap::new();
    for event in Workload::new(SEED).take(options.events) {
        let stream = format!("document-{}", event.document_id());
        let version = versions.entry(stream.clone()).or_default();
        *version += 1;
        let new = event.to_new_event();
        let payload = serde_json::value::RawValue::from_string(new.payload.to_string())?;
        writer
            .as_mut()
            .write(&[
                &stream,
                &*version,
                &new.event_id,
                &new.event_type.to_string(),
                &Json(&*payload),
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}
