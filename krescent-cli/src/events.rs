//! `krescent events tail`: events as JSON lines, with their revision and metadata.

use krescent::RecordedEvent;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::backend::Backend;
use crate::cli::{EventsCommand, TailArgs};
use crate::error::CliError;
use crate::output;
use crate::time::rfc3339;

/// Events read at once.
const BATCH: usize = 1024;

/// One line of output.
#[derive(Serialize)]
struct Line<'a> {
    position: u64,
    stream_id: &'a str,
    stream_version: u64,
    event_id: String,
    #[serde(rename = "type")]
    event_type: &'a str,
    revision: u32,
    recorded_at: String,
    /// The event's metadata, an object; `{}` for none.
    metadata: serde_json::Map<String, serde_json::Value>,
    payload: &'a RawValue,
}

pub async fn run(backend: &Backend, command: EventsCommand) -> Result<(), CliError> {
    let EventsCommand::Tail(args) = command;
    tail(backend, &args).await
}

async fn tail(backend: &Backend, args: &TailArgs) -> Result<(), CliError> {
    if args.follow {
        // Refused before anything is printed.
        if let Backend::File { .. } = backend {
            return backend.wait_for_append(args.after).await;
        }
    }
    let mut after = args.after;
    let mut printed = 0;
    loop {
        let batch = backend.read_batch(after, BATCH).await?;
        if batch.is_empty() {
            if !args.follow {
                return Ok(());
            }
            backend.wait_for_append(after).await?;
            continue;
        }
        for event in batch.iter() {
            after = event.position();
            if !args.types.is_empty() && !args.types.iter().any(|t| t == event.event_type()) {
                continue;
            }
            if args.limit.is_some_and(|limit| printed >= limit) {
                return Ok(());
            }
            print(event)?;
            printed += 1;
        }
        if args.limit.is_some_and(|limit| printed >= limit) {
            return Ok(());
        }
    }
}

fn print(event: &RecordedEvent) -> Result<(), CliError> {
    let payload: &RawValue = serde_json::from_str(&event.payload).map_err(|e| {
        CliError::Output(std::io::Error::other(format!(
            "the payload at position {} is not JSON: {e}",
            event.position()
        )))
    })?;
    let meta = &event.meta;
    output::json_line(&Line {
        position: meta.position.get(),
        stream_id: &meta.stream_id,
        stream_version: meta.stream_version,
        event_id: meta.event_id.to_string(),
        event_type: &meta.event_type,
        revision: meta.revision,
        recorded_at: rfc3339(meta.recorded_at),
        metadata: meta
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        payload,
    })
}
