//! `krescent store stats`.

use std::collections::BTreeMap;

use krescent::Position;
use serde::Serialize;

use crate::backend::Backend;
use crate::cli::StoreCommand;
use crate::error::CliError;
use crate::output;

/// Events read at once.
const BATCH: usize = 4096;

#[derive(Serialize)]
struct Stats {
    head: u64,
    events: u64,
    types: BTreeMap<String, u64>,
}

pub async fn run(backend: &Backend, command: StoreCommand, json: bool) -> Result<(), CliError> {
    let StoreCommand::Stats = command;
    let head = backend.head().await?;
    let mut stats = Stats {
        head: head.get(),
        events: 0,
        types: BTreeMap::new(),
    };
    // Up to the head read first: events appended meanwhile are not counted.
    let mut after = Position::START;
    while after < head {
        let batch = backend.read_batch(after, BATCH).await?;
        let Some(last) = batch.last() else { break };
        after = last.position();
        for event in batch.iter().filter(|e| e.position() <= head) {
            stats.events += 1;
            *stats
                .types
                .entry(event.event_type().to_owned())
                .or_default() += 1;
        }
    }
    if json {
        return output::json(&stats);
    }
    output::line(&format!("head    {}", stats.head))?;
    output::line(&format!("events  {}", stats.events))?;
    output::line("")?;
    let rows: Vec<Vec<String>> = stats
        .types
        .iter()
        .map(|(t, n)| vec![t.clone(), n.to_string()])
        .collect();
    output::table(&["TYPE", "EVENTS"], &rows)
}
