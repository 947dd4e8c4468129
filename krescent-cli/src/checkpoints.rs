//! `krescent checkpoints list | show | delete`.

use krescent::checkpoint::{BucketValue, CheckpointBucket, StoredCheckpoint};
use krescent::projection::PostgresProjection;
use krescent::Position;
use serde::Serialize;

use crate::backend::Backend;
use crate::cli::{CheckpointsCommand, DeleteArgs};
use crate::confirm::confirm;
use crate::error::CliError;
use crate::models::refuse_segment;
use crate::output;
use crate::time::rfc3339;

pub async fn run(
    backend: &Backend,
    command: CheckpointsCommand,
    json: bool,
) -> Result<(), CliError> {
    match command {
        CheckpointsCommand::List => list(backend, json).await,
        CheckpointsCommand::Show { namespace } => show(backend, &namespace, json).await,
        CheckpointsCommand::Delete(args) => delete(backend, &args, json).await,
    }
}

/// A checkpoint as `list` and `show` print it.
#[derive(Serialize)]
pub struct Summary {
    namespace: String,
    version: String,
    position: u64,
    taken_at: String,
    /// Bytes of the bucket as JSON.
    size_bytes: usize,
    /// The store's head minus the position.
    lag: u64,
}

impl Summary {
    pub fn of(checkpoint: &StoredCheckpoint, head: Position) -> Self {
        Summary {
            namespace: checkpoint.namespace.clone(),
            version: checkpoint.version.to_string(),
            position: checkpoint.position.get(),
            taken_at: rfc3339(checkpoint.taken_at),
            size_bytes: serde_json::to_vec(&checkpoint.bucket).map_or(0, |json| json.len()),
            lag: head.get().saturating_sub(checkpoint.position.get()),
        }
    }

    fn row(&self) -> Vec<String> {
        vec![
            self.namespace.clone(),
            self.version.clone(),
            self.position.to_string(),
            self.taken_at.clone(),
            self.size_bytes.to_string(),
            self.lag.to_string(),
        ]
    }
}

const HEADER: [&str; 6] = [
    "NAMESPACE",
    "VERSION",
    "POSITION",
    "TAKEN AT",
    "SIZE",
    "LAG",
];

#[derive(Serialize)]
struct Listing {
    head: u64,
    checkpoints: Vec<Summary>,
}

async fn list(backend: &Backend, json: bool) -> Result<(), CliError> {
    let head = backend.head().await?;
    let mut checkpoints = Vec::new();
    for namespace in backend.storage().list().await? {
        // Deleted between `list` and `load`: not listed.
        if let Some(checkpoint) = backend.storage().load(&namespace).await? {
            checkpoints.push(Summary::of(&checkpoint, head));
        }
    }
    if json {
        return output::json(&Listing {
            head: head.get(),
            checkpoints,
        });
    }
    let rows: Vec<Vec<String>> = checkpoints.iter().map(Summary::row).collect();
    output::table(&HEADER, &rows)
}

/// A key of a bucket, as `show` prints it.
#[derive(Serialize)]
struct Key {
    #[serde(rename = "key")]
    name: String,
    kind: &'static str,
    size_bytes: usize,
    /// The keys of a nested bucket.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    keys: Vec<Key>,
}

fn keys_of(bucket: &CheckpointBucket) -> Vec<Key> {
    bucket
        .iter()
        .map(|(key, value)| Key {
            name: key.to_owned(),
            kind: value.kind(),
            size_bytes: serde_json::to_vec(value).map_or(0, |json| json.len()),
            keys: match value {
                BucketValue::Bucket(nested) => keys_of(nested),
                _ => Vec::new(),
            },
        })
        .collect()
}

#[derive(Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    summary: Summary,
    keys: Vec<Key>,
    bucket: &'a CheckpointBucket,
}

async fn show(backend: &Backend, namespace: &str, json: bool) -> Result<(), CliError> {
    let head = backend.head().await?;
    let checkpoint = backend.checkpoint(namespace).await?;
    let shown = Shown {
        summary: Summary::of(&checkpoint, head),
        keys: keys_of(&checkpoint.bucket),
        bucket: &checkpoint.bucket,
    };
    if json {
        return output::json(&shown);
    }
    let s = &shown.summary;
    for (name, value) in [
        ("namespace", s.namespace.clone()),
        ("version", s.version.clone()),
        ("position", s.position.to_string()),
        ("taken at", s.taken_at.clone()),
        ("size", format!("{} bytes", s.size_bytes)),
        ("lag", format!("{} events", s.lag)),
    ] {
        output::line(&format!("{name:<10} {value}"))?;
    }
    output::line("")?;
    let mut rows = Vec::new();
    flatten(&shown.keys, "", &mut rows);
    output::table(&["KEY", "KIND", "SIZE"], &rows)
}

/// The keys as rows, a nested bucket's keys indented under it.
fn flatten(keys: &[Key], indent: &str, rows: &mut Vec<Vec<String>>) {
    for key in keys {
        rows.push(vec![
            format!("{indent}{}", key.name),
            key.kind.to_owned(),
            key.size_bytes.to_string(),
        ]);
        flatten(&key.keys, &format!("{indent}  "), rows);
    }
}

/// What a deletion did, or would do.
#[derive(Serialize)]
pub struct Deletion {
    pub namespace: String,
    pub position: u64,
    pub dry_run: bool,
    pub deleted: bool,
    /// The tables dropped with it (`models delete`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tables: Option<Vec<String>>,
    /// The namespaces of the checkpoints deleted with a split model (`models delete`): its
    /// segments' (`<model>#i/N`), and its own if it has one. `position` is the lowest of theirs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<Vec<String>>,
}

async fn delete(backend: &Backend, args: &DeleteArgs, json: bool) -> Result<(), CliError> {
    let checkpoint = backend.checkpoint(&args.namespace).await?;
    let at = checkpoint.position;
    let mut deletion = Deletion {
        namespace: args.namespace.clone(),
        position: at.get(),
        dry_run: args.dry_run,
        deleted: false,
        tables: None,
        segments: None,
    };
    refuse_shared_tables(backend, &checkpoint)?;
    let what = format!("the checkpoint of `{}` at position {at}", args.namespace);
    backend
        .refuse_if_leased(&args.namespace, args.force)
        .await?;
    if !args.dry_run {
        if !args.yes {
            confirm(&format!(
                "delete {what}? The model replays every event on its next start."
            ))?;
        }
        deletion.deleted = backend.storage().delete(&args.namespace).await?;
    }
    report(&deletion, &what, json)
}

/// Refuses to delete one segment's checkpoint of a split `PostgresProjection` alone: the
/// segment would restart without a checkpoint and join the other segments' tables (see
/// `reset_segment`), replaying its streams into tables that still hold its rows.
fn refuse_shared_tables(backend: &Backend, checkpoint: &StoredCheckpoint) -> Result<(), CliError> {
    let Backend::Postgres { storage, .. } = backend else {
        return Ok(());
    };
    if PostgresProjection::from_checkpoint(storage, &checkpoint.bucket).is_none() {
        return Ok(());
    }
    refuse_segment(&checkpoint.namespace)
}

/// Prints what a deletion did.
pub fn report(deletion: &Deletion, what: &str, json: bool) -> Result<(), CliError> {
    if json {
        return output::json(deletion);
    }
    output::line(&if deletion.dry_run {
        format!("would delete {what} (dry run: nothing deleted)")
    } else if deletion.deleted {
        format!("deleted {what}; the model replays every event on its next start")
    } else {
        format!("{what} was already gone")
    })
}
