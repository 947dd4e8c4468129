//! The command line: one enum per group of subcommands, the store options flattened.

// The doc comments are the `--help` text, read as plain text on a terminal.
#![allow(clippy::doc_markdown)]

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use krescent::Position;

/// See and steer the models of a krescent store: their checkpoints, how far behind the
/// store's head they are, the store itself and its events.
///
/// Name the store with `--data-dir DIR` (a file data directory, as the bookstore example
/// writes it) or `--database-url URL` (PostgreSQL; or set DATABASE_URL), and checkpoints kept
/// in a bucket with `--checkpoints s3://bucket/prefix`. Exit codes: 0 done,
/// 1 failed (one line on stderr; nothing changed), 2 bad usage. With `--json`, output is one
/// JSON document (`events tail`: one per line) whose fields stay stable.
#[derive(Debug, Parser)]
#[command(name = "krescent", version)]
pub struct Cli {
    #[command(flatten)]
    pub store: StoreOptions,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the store is.
#[derive(Debug, Args)]
pub struct StoreOptions {
    /// A file data directory: `DIR/events/` and `DIR/checkpoints/`, refused while a program
    /// has it open. Wins over DATABASE_URL.
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// A PostgreSQL database: `postgres://user:password@host/db` or `host=… dbname=…`.
    #[arg(
        long,
        env = "DATABASE_URL",
        value_name = "URL",
        global = true,
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// The schema of the events and checkpoints tables (PostgreSQL).
    #[arg(long, default_value = "public", global = true)]
    pub schema: String,
    /// Checkpoints in a bucket rather than the store's own (`checkpoints` commands):
    /// `s3://bucket/prefix`, configured from the AWS environment (AWS_ENDPOINT_URL for an
    /// S3-compatible server, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, …). The
    /// store still gives the head (the lag) and, on PostgreSQL, the leases.
    #[arg(long, env = "KRESCENT_CHECKPOINTS", value_name = "URL", global = true)]
    pub checkpoints: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List, show and delete checkpoints.
    #[command(subcommand)]
    Checkpoints(CheckpointsCommand),
    /// Delete models that project into PostgreSQL tables.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// The event store.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Read events.
    #[command(subcommand)]
    Events(EventsCommand),
    /// List, retry and drop the events models parked (`#[model(on_error = "park")]`).
    #[command(subcommand)]
    Parked(ParkedCommand),
    /// The blue/green versions of a `PostgresProjection` model (`versioned`): list, promote,
    /// roll back, drop (PostgreSQL).
    #[command(subcommand)]
    Versions(VersionsCommand),
}

#[derive(Debug, Subcommand)]
pub enum VersionsCommand {
    /// The model's versions, oldest first: id, state (building, active, previous, retired),
    /// checkpoint position, lag behind the active version, namespace, schema, checkpoint
    /// version.
    List {
        /// The model's name.
        model: String,
    },
    /// Switch readers to a version (building, or previous) in one transaction, when it has
    /// caught up with the active one (within the lag it was deployed with). Safe while the
    /// versions' processes run: the switch waits for their commits in flight, so no lease is
    /// checked.
    Promote(VersionArgs),
    /// Switch readers back to the previous version (within its grace period), as promote
    /// does.
    Rollback(ModelArgs),
    /// Drop a version that is not the active one: its tables, schema and checkpoint go in one
    /// transaction, and a build of it refuses to start. Refused while a running instance holds
    /// the version's lease, unless `--force`.
    Drop(VersionArgs),
}

/// A change of one version of a model, and its safeguards.
#[derive(Debug, Args)]
pub struct VersionArgs {
    /// The model's name.
    pub model: String,
    /// The version's id, as `versions list` shows it.
    pub version: String,
    #[command(flatten)]
    pub safeguards: Safeguards,
}

/// A change of a model's versions, and its safeguards.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// The model's name.
    pub model: String,
    #[command(flatten)]
    pub safeguards: Safeguards,
}

/// The safeguards of a change of versions.
#[derive(Debug, Args)]
pub struct Safeguards {
    /// Say what would change, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long, short)]
    pub yes: bool,
    /// Drop even while a running instance holds the version's lease.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum ParkedCommand {
    /// The parked events, in position order: namespace, position, stream, type, attempts,
    /// when, whether a retry was asked for, and the error with its causes.
    List {
        /// Only this namespace's (the model's name; a segment's is `<model>#i/N`).
        namespace: Option<String>,
    },
    /// Ask the model to handle its parked events again, once its handler is fixed: a running
    /// model does within seconds, in position order (one stream's events in their order); a
    /// stopped one when it starts. Events that fail again stay parked with one more attempt.
    Retry(ParkedArgs),
    /// Drop parked events for good: the model never applies them (the events stay in the
    /// store). A stream's later parked events still wait behind those that stay.
    Drop(ParkedArgs),
}

/// The parked events a command changes, and its safeguards.
#[derive(Debug, Args)]
pub struct ParkedArgs {
    /// The namespace (the model's name; a segment's is `<model>#i/N`).
    pub namespace: String,
    /// Only the event at this position; may be repeated. All of the namespace's when absent.
    #[arg(long = "position", value_name = "P", value_parser = parse_position)]
    pub positions: Vec<Position>,
    /// Say what would change, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation (`drop`).
    #[arg(long, short)]
    pub yes: bool,
}

#[derive(Debug, Subcommand)]
pub enum CheckpointsCommand {
    /// Every checkpoint: namespace, version, position, taken-at, size, and lag (the store's
    /// head minus the position: events the model has yet to process).
    List,
    /// One checkpoint: its fields, and the keys and kinds of its bucket.
    Show {
        /// The checkpoint's namespace (the model's name).
        namespace: String,
    },
    /// Delete a checkpoint: the model replays every event on its next start.
    ///
    /// A checkpoint holds the model's state at its position, so unlike a consumer offset it
    /// cannot be moved to another position: it can only be deleted. Stop the model first; a
    /// running model writes a new checkpoint at its next one. On PostgreSQL, delete refuses
    /// while a running instance holds the model's lease, unless `--force`.
    /// A model that projects into PostgreSQL tables is deleted with `krescent models delete`;
    /// one segment's checkpoint of a split model that does is refused, because the segment
    /// would replay its streams into tables that still hold its rows.
    Delete(DeleteArgs),
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Delete a `PostgresProjection` model: drop the tables its checkpoint names and delete
    /// the checkpoint, in one transaction; the model rebuilds on its next start.
    ///
    /// A model split into segments (`#[model(segments = N)]`) is named by the model's name:
    /// its segments' checkpoints (`<model>#i/N`) share one set of tables, so every segment's
    /// checkpoint and every table any of them names go in the same transaction. One segment's
    /// namespace is refused: deleting it alone would drop the other segments' rows.
    ///
    /// Stop the model first: delete refuses while a running instance holds the model's lease
    /// (of a split model, any segment's), unless `--force`.
    Delete(DeleteArgs),
}

/// A deletion and its safeguards.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The namespace (the model's name; a segment's is `<model>#i/N`).
    pub namespace: String,
    /// Say what would be deleted, and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long, short)]
    pub yes: bool,
    /// Delete even while a running instance holds the model's lease (PostgreSQL).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// The head (last position), the number of events, and the number of each type.
    Stats,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print events as JSON lines (position, stream_id, stream_version, event_id, type,
    /// recorded_at, payload), oldest first.
    Tail(TailArgs),
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Start after this position (0: from the first event).
    #[arg(long, value_name = "P", default_value = "0", value_parser = parse_position)]
    pub after: Position,
    /// Only events of this type; may be repeated.
    #[arg(long = "type", value_name = "T")]
    pub types: Vec<String>,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Keep waiting for new events (PostgreSQL only) until interrupted.
    #[arg(long)]
    pub follow: bool,
}

fn parse_position(text: &str) -> Result<Position, krescent::PositionParseError> {
    text.parse()
}
