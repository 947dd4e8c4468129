//! `krescent parked list | retry | drop`: the events models parked, kept where their
//! checkpoints are.

use krescent::deadletter::ParkedEvent;
use krescent::Position;
use serde::Serialize;

use crate::backend::Backend;
use crate::cli::{ParkedArgs, ParkedCommand};
use crate::confirm::confirm;
use crate::error::CliError;
use crate::output::{self, quoted};
use crate::time::rfc3339;

pub async fn run(backend: &Backend, command: ParkedCommand, json: bool) -> Result<(), CliError> {
    match command {
        ParkedCommand::List { namespace } => list(backend, namespace.as_deref(), json).await,
        ParkedCommand::Retry(args) => retry(backend, &args, json).await,
        ParkedCommand::Drop(args) => drop_parked(backend, &args, json).await,
    }
}

/// A parked event as the commands show it.
#[derive(Serialize)]
struct Shown {
    namespace: String,
    position: u64,
    stream_id: String,
    event_type: String,
    attempts: u32,
    parked_at: String,
    /// The parked event of the same stream it waits behind.
    #[serde(skip_serializing_if = "Option::is_none")]
    behind: Option<u64>,
    /// An operator asked for a retry that the model has not done yet.
    retry: bool,
    error: String,
    chain: Vec<String>,
}

impl Shown {
    fn of(event: &ParkedEvent) -> Self {
        Shown {
            namespace: event.namespace.clone(),
            position: event.position.get(),
            stream_id: event.stream_id.clone(),
            event_type: event.event_type.clone(),
            attempts: event.attempts,
            parked_at: rfc3339(event.parked_at),
            behind: event.behind.map(Position::get),
            retry: event.retry,
            error: event.error.clone(),
            chain: event.chain.clone(),
        }
    }

    fn row(&self) -> Vec<String> {
        vec![
            self.namespace.clone(),
            self.position.to_string(),
            self.stream_id.clone(),
            self.event_type.clone(),
            self.attempts.to_string(),
            self.parked_at.clone(),
            if self.retry { "asked" } else { "-" }.to_owned(),
            std::iter::once(self.error.as_str())
                .chain(self.chain.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(": "),
        ]
    }
}

#[derive(Serialize)]
struct Listing {
    parked: Vec<Shown>,
}

async fn list(backend: &Backend, namespace: Option<&str>, json: bool) -> Result<(), CliError> {
    let namespaces = match namespace {
        Some(namespace) => {
            parked_of(backend, namespace).await?;
            vec![namespace.to_owned()]
        }
        None => backend.storage().parked_namespaces().await?,
    };
    let mut parked = Vec::new();
    for namespace in namespaces {
        parked.extend(
            backend
                .storage()
                .parked(&namespace)
                .await?
                .iter()
                .map(Shown::of),
        );
    }
    if json {
        return output::json(&Listing { parked });
    }
    let rows: Vec<Vec<String>> = parked.iter().map(Shown::row).collect();
    output::table(
        &[
            "NAMESPACE",
            "POSITION",
            "STREAM",
            "TYPE",
            "ATTEMPTS",
            "PARKED AT",
            "RETRY",
            "ERROR",
        ],
        &rows,
    )
}

/// The parked events of `namespace`, or [`CliError::NothingParked`] naming the namespaces that
/// have some.
async fn parked_of(backend: &Backend, namespace: &str) -> Result<Vec<ParkedEvent>, CliError> {
    let parked = backend.storage().parked(namespace).await?;
    if !parked.is_empty() {
        return Ok(parked);
    }
    let namespaces = backend.storage().parked_namespaces().await?;
    let known = if namespaces.is_empty() {
        "no model has parked events".to_owned()
    } else {
        format!(
            "parked events are kept for {}",
            quoted(namespaces.iter().map(String::as_str))
        )
    };
    Err(CliError::NothingParked {
        namespace: namespace.to_owned(),
        known,
    })
}

/// The parked events of `args.namespace` that `args.positions` name (all when none), or
/// [`CliError::NotParked`] for a position that is not parked.
async fn chosen(backend: &Backend, args: &ParkedArgs) -> Result<Vec<ParkedEvent>, CliError> {
    let parked = parked_of(backend, &args.namespace).await?;
    if args.positions.is_empty() {
        return Ok(parked);
    }
    for position in &args.positions {
        if !parked.iter().any(|e| e.position == *position) {
            return Err(CliError::NotParked {
                namespace: args.namespace.clone(),
                position: *position,
            });
        }
    }
    Ok(parked
        .into_iter()
        .filter(|e| args.positions.contains(&e.position))
        .collect())
}

/// What `retry` or `drop` did, or would do.
#[derive(Serialize)]
struct Change {
    namespace: String,
    positions: Vec<u64>,
    dry_run: bool,
}

async fn retry(backend: &Backend, args: &ParkedArgs, json: bool) -> Result<(), CliError> {
    let mut chosen = chosen(backend, args).await?;
    let what = describe(&args.namespace, &chosen);
    if !args.dry_run {
        for event in &mut chosen {
            event.retry = true;
        }
        backend.storage().park(&chosen).await?;
    }
    let change = change(args, &chosen);
    if json {
        return output::json(&change);
    }
    output::line(&if args.dry_run {
        format!("would ask for a retry of {what} (dry run: nothing changed)")
    } else {
        format!("asked for a retry of {what}: a running model handles them within seconds, in position order; a stopped one when it starts; `krescent parked list` shows those that fail again")
    })
}

async fn drop_parked(backend: &Backend, args: &ParkedArgs, json: bool) -> Result<(), CliError> {
    let chosen = chosen(backend, args).await?;
    let what = describe(&args.namespace, &chosen);
    if !args.dry_run {
        if !args.yes {
            confirm(&format!(
                "drop {what}? The model never applies them; the events stay in the store."
            ))?;
        }
        let positions: Vec<Position> = chosen.iter().map(|e| e.position).collect();
        backend
            .storage()
            .unpark(&args.namespace, &positions)
            .await?;
    }
    let change = change(args, &chosen);
    if json {
        return output::json(&change);
    }
    output::line(&if args.dry_run {
        format!("would drop {what} (dry run: nothing dropped)")
    } else {
        format!("dropped {what}")
    })
}

fn change(args: &ParkedArgs, chosen: &[ParkedEvent]) -> Change {
    Change {
        namespace: args.namespace.clone(),
        positions: chosen.iter().map(|e| e.position.get()).collect(),
        dry_run: args.dry_run,
    }
}

/// `the 3 parked events of `steps` (positions 20 to 100)`.
fn describe(namespace: &str, chosen: &[ParkedEvent]) -> String {
    let (first, last) = match (chosen.first(), chosen.last()) {
        (Some(first), Some(last)) => (first.position, last.position),
        _ => return format!("no parked event of `{namespace}`"),
    };
    if chosen.len() == 1 {
        format!("the parked event of `{namespace}` at position {first}")
    } else {
        format!(
            "the {} parked events of `{namespace}` (positions {first} to {last})",
            chosen.len()
        )
    }
}
