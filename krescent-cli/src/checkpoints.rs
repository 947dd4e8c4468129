//! `krescent checkpoints list | show | delete`.

use krescent::checkpoint::{BucketValue, CheckpointBucket, Integrity, Piece, StoredCheckpoint};
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
    /// `verified` (its checksum matched) or `unchecked` (written before checksums).
    integrity: &'static str,
    /// The checksum, as `0x` and eight hex digits, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    checksum: Option<String>,
}

impl Summary {
    pub fn of(checkpoint: &StoredCheckpoint, integrity: Integrity, head: Position) -> Self {
        let (integrity, checksum) = match integrity {
            Integrity::Verified { checksum } => ("verified", Some(format!("{checksum:#010x}"))),
            Integrity::Unchecked => ("unchecked", None),
        };
        Summary {
            integrity,
            checksum,
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
            self.integrity.to_owned(),
        ]
    }
}

const HEADER: [&str; 7] = [
    "NAMESPACE",
    "VERSION",
    "POSITION",
    "TAKEN AT",
    "SIZE",
    "LAG",
    "INTEGRITY",
];

#[derive(Serialize)]
struct Listing {
    head: u64,
    checkpoints: Vec<Summary>,
    /// Checkpoints that do not load: their checksum fails, or they do not decode.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    corrupt: Vec<Corrupt>,
}

/// A checkpoint that does not load, as `list` reports it.
#[derive(Serialize)]
struct Corrupt {
    namespace: String,
    reason: String,
}

async fn list(backend: &Backend, json: bool) -> Result<(), CliError> {
    let head = backend.head().await?;
    let mut checkpoints = Vec::new();
    let mut corrupt = Vec::new();
    for namespace in backend.storage().list().await? {
        match backend.storage().load_checked(&namespace).await {
            Ok(Some((checkpoint, integrity))) => {
                checkpoints.push(Summary::of(&checkpoint, integrity, head));
            }
            // Deleted between `list` and `load`: not listed.
            Ok(None) => {}
            Err(e) if e.is_corrupt() => corrupt.push(Corrupt {
                namespace,
                reason: e.to_string(),
            }),
            Err(e) => return Err(e.into()),
        }
    }
    if json {
        return output::json(&Listing {
            head: head.get(),
            checkpoints,
            corrupt,
        });
    }
    let mut rows: Vec<Vec<String>> = checkpoints.iter().map(Summary::row).collect();
    for c in &corrupt {
        let mut row = vec![c.namespace.clone()];
        row.extend(std::iter::repeat_n("-".to_owned(), HEADER.len() - 2));
        row.push("corrupt".to_owned());
        rows.push(row);
    }
    rows.sort_by(|a, b| a[0].cmp(&b[0]));
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
    /// A checkpoint made of a base and deltas: its pieces, base first (absent for a whole one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pieces: Option<Vec<ShownPiece>>,
    keys: Vec<Key>,
    bucket: &'a CheckpointBucket,
}

/// A piece of an incremental checkpoint as `show` reports it.
#[derive(Serialize)]
struct ShownPiece {
    /// `base`, or `delta N`.
    piece: String,
    position: u64,
    size_bytes: u64,
}

/// The pieces of `namespace`'s checkpoint when it has deltas.
async fn pieces_of(
    backend: &Backend,
    namespace: &str,
) -> Result<Option<Vec<ShownPiece>>, CliError> {
    let pieces = backend.storage().pieces(namespace).await?;
    if pieces.len() < 2 {
        return Ok(None);
    }
    Ok(Some(
        pieces
            .iter()
            .map(|p| ShownPiece {
                piece: match p.piece {
                    Piece::Whole => "base".to_owned(),
                    Piece::Delta(link) => format!("delta {}", link.sequence),
                },
                position: p.position.get(),
                size_bytes: p.bytes,
            })
            .collect(),
    ))
}

async fn show(backend: &Backend, namespace: &str, json: bool) -> Result<(), CliError> {
    let head = backend.head().await?;
    let (checkpoint, integrity) = backend.checkpoint(namespace).await?;
    let shown = Shown {
        summary: Summary::of(&checkpoint, integrity, head),
        pieces: pieces_of(backend, namespace).await?,
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
        (
            "integrity",
            match &s.checksum {
                Some(checksum) => format!("verified (checksum {checksum})"),
                None => "unchecked (no checksum: written before checksums)".to_owned(),
            },
        ),
    ] {
        output::line(&format!("{name:<10} {value}"))?;
    }
    if let Some(pieces) = &shown.pieces {
        output::line("")?;
        let rows: Vec<Vec<String>> = pieces
            .iter()
            .map(|p| {
                vec![
                    p.piece.clone(),
                    p.position.to_string(),
                    p.size_bytes.to_string(),
                ]
            })
            .collect();
        output::table(&["PIECE", "POSITION", "SIZE"], &rows)?;
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
    /// The checkpoint's position; absent for a corrupt checkpoint, whose position is unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
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
    let (position, what) = match backend.checkpoint(&args.namespace).await {
        Ok((checkpoint, _)) => {
            refuse_shared_tables(backend, &checkpoint)?;
            let at = checkpoint.position;
            let what = format!("the checkpoint of `{}` at position {at}", args.namespace);
            (Some(at.get()), what)
        }
        // A corrupt checkpoint can be deleted (its model would discard it anyway), except one
        // segment's: what it refers to cannot be read, so it may share a projection's tables.
        Err(CliError::Storage(e)) if e.is_corrupt() => {
            if matches!(backend, Backend::Postgres { .. }) {
                refuse_segment(&args.namespace)?;
            }
            let what = format!("the corrupt checkpoint of `{}` ({e})", args.namespace);
            (None, what)
        }
        Err(e) => return Err(e),
    };
    let mut deletion = Deletion {
        namespace: args.namespace.clone(),
        position,
        dry_run: args.dry_run,
        deleted: false,
        tables: None,
        segments: None,
    };
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
