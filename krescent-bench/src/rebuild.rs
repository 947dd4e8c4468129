//! `projection_rebuild`: the document workload rebuilt into a `PostgresProjection` (a row per
//! document field, upserted; a row per event, inserted), `fixed_events(1000)`, by a group
//! handler writing set-based SQL per group (queued, with the event rows copied), against the same SQL effects written by hand with the best batching we know, and
//! against the awaited path (one round trip per statement). `live_latency_projection`: append
//! → handler of a streaming projection that queues its writes.

use std::collections::{HashMap, HashSet};
use std::error::Error;
use std::pin::pin;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt as _;
use krescent::checkpoint::CheckpointStorage as _;
use krescent::prelude::*;
use krescent::projection::{PostgresProjection, ProjectionError};
use krescent::store::{ExpectedVersion, PostgresConfig, PostgresEventStore};
use krescent_testkit::workload::{
    DocumentCreated, DocumentDeleted, DocumentEvent, FieldRemoved, FieldSet, Workload, SEED,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use crate::measure::{latency, median, rate};
use crate::postgres::{client, database_url, JsonbBytes};
use crate::Options;

const SCHEMA: &str = "krescent_bench_rebuild";
const BATCH: usize = 1_000;

/// The statements of the rebuild, with the tables' qualified names in them: per event (the
/// awaited path) and per group (the group handler; the same as the hand-written rebuild's).
struct Sql {
    set: String,
    removed: String,
    deleted: String,
    event: String,
    delete_documents: String,
    delete_fields: String,
    upsert: String,
}

impl Sql {
    fn new(fields: &str, events: &str) -> Self {
        Sql {
            set: format!("INSERT INTO {fields} (document_id, field, value) VALUES ($1, $2, $3) ON CONFLICT (document_id, field) DO UPDATE SET value = excluded.value"),
            removed: format!("DELETE FROM {fields} WHERE document_id = $1 AND field = $2"),
            deleted: format!("DELETE FROM {fields} WHERE document_id = $1"),
            event: format!("INSERT INTO {events} (position, document_id, event_type) VALUES ($1, $2, $3)"),
            delete_documents: format!("DELETE FROM {fields} WHERE document_id = ANY($1::text[])"),
            delete_fields: format!("DELETE FROM {fields} f USING unnest($1::text[], $2::text[]) AS r(d, n) WHERE f.document_id = r.d AND f.field = r.n"),
            upsert: format!("INSERT INTO {fields} (document_id, field, value) SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ON CONFLICT (document_id, field) DO UPDATE SET value = excluded.value"),
        }
    }
}

const FIELDS_TABLE: &str = "CREATE TABLE {table} (document_id text NOT NULL, field text NOT NULL, value text NOT NULL, PRIMARY KEY (document_id, field))";
const EVENTS_TABLE: &str = "CREATE TABLE {table} (position bigint PRIMARY KEY, document_id text NOT NULL, event_type text NOT NULL)";

/// The two tables of a rebuild, and its statements.
fn tables(store: &PostgresEventStore) -> Result<(PostgresProjection, Sql), Box<dyn Error>> {
    let tables = PostgresProjection::new(&store.checkpoint_storage(), 1)
        .table("doc_fields", FIELDS_TABLE)?
        .table("doc_events", EVENTS_TABLE)?;
    let sql = Sql::new(
        tables.name_of("doc_fields").ok_or("declared")?,
        tables.name_of("doc_events").ok_or("declared")?,
    );
    Ok((tables, sql))
}

/// Why the group handler failed.
#[derive(Debug, thiserror::Error)]
enum RebuildError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Projection(#[from] ProjectionError),
}

/// The documents rebuilt into two tables by a group handler: each group's effects folded
/// (the last value of each field, the removed fields, the deleted documents) into one delete
/// of the deleted documents' fields, one of the removed fields, one multi-row upsert, and the
/// events' rows copied.
#[derive(EventModel)]
#[model(name = "bench.rebuild", version = 1)]
#[checkpoint(strategy = "fixed_events(1000)", storage = "postgres")]
struct Rebuild {
    #[checkpoint(support)]
    tables: PostgresProjection,
    sql: Sql,
}

#[krescent::handlers]
impl Rebuild {
    #[group(DocumentCreated, FieldSet, FieldRemoved, DocumentDeleted)]
    async fn rebuild(&mut self, group: Group<'_>) -> Result<(), RebuildError> {
        // Each document's fields as the group leaves them (`None`: removed).
        let mut fields: HashMap<String, HashMap<String, Option<String>>> = HashMap::new();
        let mut deleted: Vec<String> = Vec::new();
        for event in group {
            let meta = event.meta();
            let document_id = if let Some(e) = event.decode::<FieldSet>()? {
                let document = fields.entry(e.document_id.clone()).or_default();
                document.insert(e.field_name, Some(e.field_value));
                e.document_id
            } else if let Some(e) = event.decode::<FieldRemoved>()? {
                let document = fields.entry(e.document_id.clone()).or_default();
                document.insert(e.field_name, None);
                e.document_id
            } else if let Some(e) = event.decode::<DocumentDeleted>()? {
                fields.remove(&e.document_id);
                deleted.push(e.document_id.clone());
                e.document_id
            } else if let Some(e) = event.decode::<DocumentCreated>()? {
                e.document_id
            } else {
                continue;
            };
            let position = i64::try_from(meta.position.get()).unwrap_or(i64::MAX);
            let event_type: &str = &meta.event_type;
            self.tables
                .insert("doc_events", &[&position, &document_id, &event_type])
                .await?;
        }
        let (mut set_d, mut set_f, mut set_v) = (Vec::new(), Vec::new(), Vec::new());
        let (mut rem_d, mut rem_f) = (Vec::new(), Vec::new());
        for (document, document_fields) in &fields {
            for (field, value) in document_fields {
                if let Some(value) = value {
                    set_d.push(document);
                    set_f.push(field);
                    set_v.push(value);
                } else {
                    rem_d.push(document);
                    rem_f.push(field);
                }
            }
        }
        if !deleted.is_empty() {
            self.tables
                .queue(&self.sql.delete_documents, &[&deleted])
                .await?;
        }
        if !rem_d.is_empty() {
            self.tables
                .queue(&self.sql.delete_fields, &[&rem_d, &rem_f])
                .await?;
        }
        if !set_d.is_empty() {
            self.tables
                .queue(&self.sql.upsert, &[&set_d, &set_f, &set_v])
                .await?;
        }
        Ok(())
    }
}

/// The same rebuild on the path before queued writes: a statement per write, each awaited.
#[derive(EventModel)]
#[model(name = "bench.rebuild", version = 1)]
#[checkpoint(strategy = "fixed_events(1000)", storage = "postgres")]
struct Awaited {
    #[checkpoint(support)]
    tables: PostgresProjection,
    sql: Sql,
}

impl Awaited {
    async fn write(
        &mut self,
        which: fn(&Sql) -> &String,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(), ProjectionError> {
        self.tables
            .execute(which(&self.sql), params)
            .await
            .map(drop)
    }

    /// The event's row.
    async fn event(&mut self, meta: &EventMeta, document_id: &str) -> Result<(), ProjectionError> {
        let position = i64::try_from(meta.position.get()).unwrap_or(i64::MAX);
        let event_type: &str = &meta.event_type;
        self.write(|s| &s.event, &[&position, &document_id, &event_type])
            .await
    }
}

#[krescent::handlers]
impl Awaited {
    async fn created(
        &mut self,
        e: &DocumentCreated,
        meta: &EventMeta,
    ) -> Result<(), ProjectionError> {
        self.event(meta, &e.document_id).await
    }

    async fn set(&mut self, e: &FieldSet, meta: &EventMeta) -> Result<(), ProjectionError> {
        self.write(|s| &s.set, &[&e.document_id, &e.field_name, &e.field_value])
            .await?;
        self.event(meta, &e.document_id).await
    }

    async fn removed(&mut self, e: &FieldRemoved, meta: &EventMeta) -> Result<(), ProjectionError> {
        self.write(|s| &s.removed, &[&e.document_id, &e.field_name])
            .await?;
        self.event(meta, &e.document_id).await
    }

    async fn deleted(
        &mut self,
        e: &DocumentDeleted,
        meta: &EventMeta,
    ) -> Result<(), ProjectionError> {
        self.write(|s| &s.deleted, &[&e.document_id]).await?;
        self.event(meta, &e.document_id).await
    }
}

/// A model whose handler queues a row and notes when it was called.
#[derive(EventModel)]
#[model(name = "bench.live_projection", version = 1)]
#[checkpoint(strategy = "fixed_events(1000)", storage = "postgres")]
struct LiveProjection {
    #[checkpoint(support)]
    tables: PostgresProjection,
    insert: String,
    handled: Vec<Instant>,
}

#[krescent::handlers]
impl LiveProjection {
    async fn created(
        &mut self,
        e: &DocumentCreated,
        meta: &EventMeta,
    ) -> Result<(), ProjectionError> {
        self.handled.push(Instant::now());
        let position = i64::try_from(meta.position.get()).unwrap_or(i64::MAX);
        let event_type: &str = &meta.event_type;
        self.tables
            .queue(&self.insert, &[&position, &e.document_id, &event_type])
            .await
    }
}

/// A payload of the workload, as the hand-written rebuild decodes it.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    document_id: String,
    field_name: Option<String>,
    field_value: Option<String>,
}

pub(crate) async fn run(options: &Options) -> Result<(), Box<dyn Error>> {
    let (url, _database) = database_url().await;
    let client = client(&url).await?;
    let prefix_schema = format!("{SCHEMA}_awaited");
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; DROP SCHEMA IF EXISTS {prefix_schema} CASCADE; DROP SCHEMA IF EXISTS {SCHEMA}_live CASCADE"
        ))
        .await?;
    let workload: Vec<_> = Workload::new(SEED).take(options.events).collect();
    let store = filled(&url, SCHEMA, &workload).await?;
    // The awaited path is measured on the first tenth of the stream: at one round trip per
    // statement the whole would take minutes.
    let awaited_events = (options.events / 10).max(1_000).min(options.events);
    let prefix = filled(&url, &prefix_schema, &workload[..awaited_events]).await?;

    let baseline = median(options.reps, || by_hand(&client, &url)).await?;
    let krescent = Box::pin(rebuild(options, store, true)).await?;
    same_tables(&client).await?;
    let awaited = Box::pin(rebuild(options, prefix, false)).await?;
    let (k, b, a) = (
        rate(options.events, krescent),
        rate(options.events, baseline),
        rate(awaited_events, awaited),
    );
    println!(
        "bench projection_rebuild ratio={:.3} vs_awaited={:.2} krescent={k:.0} baseline={b:.0} awaited={a:.0} awaited_events={awaited_events}",
        k / b,
        k / a
    );
    live_latency(options, &url).await
}

/// Whether krescent's rebuild and the hand-written one left the same rows.
async fn same_tables(client: &Client) -> Result<(), Box<dyn Error>> {
    for (ours, theirs) in [("doc_fields", "hand_fields"), ("doc_events", "hand_events")] {
        let differ: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM ((TABLE {SCHEMA}.{ours} EXCEPT TABLE {SCHEMA}.{theirs}) UNION ALL (TABLE {SCHEMA}.{theirs} EXCEPT TABLE {SCHEMA}.{ours})) d"
                ),
                &[],
            )
            .await?
            .get(0);
        if differ != 0 {
            return Err(format!("{ours} and {theirs} differ in {differ} rows").into());
        }
    }
    Ok(())
}

/// A store in `schema` holding `workload`, appended in batches of 1,000 (one stream each).
async fn filled(
    url: &str,
    schema: &str,
    workload: &[DocumentEvent],
) -> Result<PostgresEventStore, Box<dyn Error>> {
    let store = PostgresEventStore::connect_with(url, PostgresConfig::in_schema(schema)).await?;
    store.migrate().await?;
    store.checkpoint_storage().migrate().await?;
    for (b, batch) in workload.chunks(BATCH).enumerate() {
        let batch = batch.iter().map(DocumentEvent::to_new_event).collect();
        store
            .append(&format!("rebuild-{b}"), ExpectedVersion::NoStream, batch)
            .await?;
    }
    Ok(store)
}

/// A rebuild from scratch of the whole store into the model (the group handler's, or the
/// awaited one's), median of the repetitions.
async fn rebuild(
    options: &Options,
    store: PostgresEventStore,
    queued: bool,
) -> Result<Duration, Box<dyn Error>> {
    let storage = store.checkpoint_storage();
    let krescent = Krescent::new(store).with_storage("postgres", storage.clone());
    let store = krescent.store();
    let head = store.head().await?;
    median(options.reps, || async {
        storage.delete("bench.rebuild").await?;
        let (tables, sql) = tables(store)?;
        let (position, processed) = if queued {
            let run = krescent.catch_up(Rebuild { tables, sql }).await?;
            (run.position, run.processed)
        } else {
            let run = krescent.catch_up(Awaited { tables, sql }).await?;
            (run.position, run.processed)
        };
        if position != head {
            return Err(format!("the rebuild stopped at {position} of {head}").into());
        }
        Ok::<_, Box<dyn Error>>(processed)
    })
    .await
}

/// The same rebuild by hand: one streaming `SELECT` over the events; per 1,000 events, the
/// batch's effects folded (the last value of each field, the removed fields, the deleted
/// documents) and sent pipelined in one transaction: a delete of the deleted documents' fields
/// and of the removed fields (`unnest`), one multi-row upsert (`unnest`), one insert of the
/// events' rows (`unnest`), the checkpoint row, `COMMIT`.
async fn by_hand(reader: &Client, url: &str) -> Result<usize, Box<dyn Error>> {
    let writer = client(url).await?;
    let fields = format!("{SCHEMA}.hand_fields");
    let events = format!("{SCHEMA}.hand_events");
    let checkpoint = format!("{SCHEMA}.hand_checkpoint");
    writer
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {fields}, {events}, {checkpoint};
             {}; {};
             CREATE TABLE {checkpoint} (name text PRIMARY KEY, position bigint NOT NULL)",
            FIELDS_TABLE.replace("{table}", &fields),
            EVENTS_TABLE.replace("{table}", &events),
        ))
        .await?;
    let delete_documents = writer
        .prepare(&format!(
            "DELETE FROM {fields} WHERE document_id = ANY($1::text[])"
        ))
        .await?;
    let delete_fields = writer
        .prepare(&format!("DELETE FROM {fields} f USING unnest($1::text[], $2::text[]) AS r(d, n) WHERE f.document_id = r.d AND f.field = r.n"))
        .await?;
    let upsert = writer
        .prepare(&format!("INSERT INTO {fields} (document_id, field, value) SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ON CONFLICT (document_id, field) DO UPDATE SET value = excluded.value"))
        .await?;
    let insert = writer
        .prepare(&format!("INSERT INTO {events} (position, document_id, event_type) SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[])"))
        .await?;
    let checkpoint = writer
        .prepare(&format!("INSERT INTO {checkpoint} (name, position) VALUES ('hand', $1) ON CONFLICT (name) DO UPDATE SET position = excluded.position"))
        .await?;

    let select = format!(
        "SELECT position, event_type, payload FROM {SCHEMA}.{} ORDER BY position",
        PostgresConfig::in_schema(SCHEMA).events_table
    );
    let rows = reader
        .query_raw(&select, std::iter::empty::<&str>())
        .await?;
    let mut rows = pin!(rows);
    let mut batch = Batch::default();
    let mut total = 0;
    loop {
        let row = rows.try_next().await?;
        if let Some(row) = &row {
            let position: i64 = row.try_get(0)?;
            let event_type: String = row.try_get(1)?;
            let payload: JsonbBytes<'_> = row.try_get(2)?;
            let payload: Payload = serde_json::from_slice(payload.0)?;
            batch.add(position, event_type, payload);
        }
        if batch.len == BATCH || (row.is_none() && batch.len > 0) {
            total += batch.len;
            let deleted: Vec<&String> = batch.deleted.iter().collect();
            let (mut set_d, mut set_f, mut set_v) = (Vec::new(), Vec::new(), Vec::new());
            let (mut rem_d, mut rem_f) = (Vec::new(), Vec::new());
            for ((document, field), value) in &batch.fields {
                if batch.deleted.contains(document) {
                    continue;
                }
                if let Some(value) = value {
                    set_d.push(document);
                    set_f.push(field);
                    set_v.push(value);
                } else {
                    rem_d.push(document);
                    rem_f.push(field);
                }
            }
            let last = batch.positions.last().copied().unwrap_or(0);
            let deleted: [&(dyn ToSql + Sync); 1] = [&deleted];
            let removed: [&(dyn ToSql + Sync); 2] = [&rem_d, &rem_f];
            let set: [&(dyn ToSql + Sync); 3] = [&set_d, &set_f, &set_v];
            let rows: [&(dyn ToSql + Sync); 3] = [&batch.positions, &batch.documents, &batch.types];
            let last: [&(dyn ToSql + Sync); 1] = [&last];
            tokio::try_join!(
                writer.batch_execute("BEGIN"),
                writer.execute(&delete_documents, &deleted),
                writer.execute(&delete_fields, &removed),
                writer.execute(&upsert, &set),
                writer.execute(&insert, &rows),
                writer.execute(&checkpoint, &last),
                writer.batch_execute("COMMIT"),
            )?;
            batch = Batch::default();
        }
        if row.is_none() {
            break;
        }
    }
    Ok(total)
}

/// One batch of the hand-written rebuild, folded.
#[derive(Default)]
struct Batch {
    len: usize,
    positions: Vec<i64>,
    documents: Vec<String>,
    types: Vec<String>,
    /// The last value of each field (`None`: removed).
    fields: HashMap<(String, String), Option<String>>,
    deleted: HashSet<String>,
}

impl Batch {
    fn add(&mut self, position: i64, event_type: String, payload: Payload) {
        self.len += 1;
        self.positions.push(position);
        match (event_type.as_str(), payload.field_name) {
            ("document.field.set", Some(field)) => {
                self.fields.insert(
                    (payload.document_id.clone(), field),
                    Some(payload.field_value.unwrap_or_default()),
                );
            }
            ("document.field.removed", Some(field)) => {
                self.fields
                    .insert((payload.document_id.clone(), field), None);
            }
            ("document.deleted", _) => {
                self.deleted.insert(payload.document_id.clone());
            }
            _ => {}
        }
        self.documents.push(payload.document_id);
        self.types.push(event_type);
    }
}

/// `live_latency_projection`: single appends, each waited for, from before the append to the
/// handler call of a streaming projection that queues a row per event (and commits whenever
/// it has caught up).
async fn live_latency(options: &Options, url: &str) -> Result<(), Box<dyn Error>> {
    let store =
        PostgresEventStore::connect_with(url, PostgresConfig::in_schema(format!("{SCHEMA}_live")))
            .await?;
    store.migrate().await?;
    let storage = store.checkpoint_storage();
    storage.migrate().await?;
    let krescent = Krescent::new(store).with_storage("postgres", storage.clone());
    let store = krescent.store();
    let tables = PostgresProjection::new(&storage, 1).table("live_events", EVENTS_TABLE)?;
    let insert = Sql::new("unused", tables.name_of("live_events").ok_or("declared")?).event;
    let count = (options.events / 100).clamp(1_000, 10_000);
    let running = krescent.stream(LiveProjection {
        tables,
        insert,
        handled: Vec::with_capacity(count),
    });
    let mut sent = Vec::with_capacity(count);
    for (i, event) in Workload::new(SEED)
        .filter(|e| matches!(e, DocumentEvent::Created(_)))
        .take(count)
        .enumerate()
    {
        sent.push(Instant::now());
        let appended = store
            .append(
                &format!("live-{i}"),
                ExpectedVersion::NoStream,
                vec![event.to_new_event()],
            )
            .await?;
        running.reached(appended.position).await?;
    }
    let model = running.shutdown().await?.model;
    latency("live_latency_projection", &sent, &model.handled);
    Ok(())
}
