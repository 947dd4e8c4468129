//! `krescent`: see and steer the models of a krescent store from a shell.
//!
//! Works on a file data directory (`--data-dir DIR`, as the bookstore example writes it) or on
//! PostgreSQL (`--database-url URL` or `DATABASE_URL`, with `--schema`). Exit codes: 0 done, 1
//! failed (the store, the database, an unknown namespace, a declined confirmation; one line
//! on stderr, nothing changed), 2 bad usage (an unknown flag, a malformed value, no store, a
//! command the file store cannot do).

mod backend;
mod checkpoints;
mod cli;
mod confirm;
mod data_dir;
mod error;
mod events;
mod models;
mod output;
mod parked;
mod stats;
mod time;
mod versions;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser as _;

use crate::cli::{Cli, Command};
use crate::error::CliError;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage(&e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return report(&CliError::Runtime(e)),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    refuse_on_a_data_dir(&cli)?;
    let backend = backend::Backend::open(&cli.store).await?;
    let json = cli.json;
    match cli.command {
        Command::Checkpoints(command) => checkpoints::run(&backend, command, json).await,
        Command::Models(command) => models::run(&backend, command, json).await,
        Command::Store(command) => stats::run(&backend, command, json).await,
        Command::Events(command) => events::run(&backend, command).await,
        Command::Parked(command) => parked::run(&backend, command, json).await,
        Command::Versions(command) => versions::run(&backend, command, json).await,
    }
}

/// Bad usage found before anything is opened: a command that needs PostgreSQL, given a data
/// directory (exit 2, whatever the directory holds).
fn refuse_on_a_data_dir(cli: &Cli) -> Result<(), CliError> {
    if cli.store.checkpoints.is_some() && matches!(cli.command, Command::Models(_)) {
        return Err(CliError::models_delete_with_a_bucket());
    }
    if cli.store.data_dir.is_none() {
        return Ok(());
    }
    match &cli.command {
        Command::Events(cli::EventsCommand::Tail(args)) if args.follow => {
            Err(CliError::follow_needs_postgres())
        }
        Command::Models(cli::ModelsCommand::Delete(_)) => {
            Err(CliError::models_delete_needs_postgres())
        }
        Command::Versions(_) => Err(CliError::versions_need_postgres()),
        _ => Ok(()),
    }
}

/// Prints help and version as clap renders them; any other usage error as one line, exit 2.
fn usage(error: &clap::Error) -> ExitCode {
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        // Printing help can only fail when stdout is gone; nothing is left to tell then.
        let _ = error.print();
        return if error.use_stderr() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let rendered = error.render().to_string();
    let first = rendered.lines().next().unwrap_or("bad usage");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    eprintln!("krescent: {first} (see `krescent --help`)");
    ExitCode::from(2)
}

/// Prints `error` as one line on stderr; the exit code it means.
fn report(error: &CliError) -> ExitCode {
    if error.is_broken_pipe() {
        // The reader went away (`krescent events tail | head`): not a failure.
        return ExitCode::SUCCESS;
    }
    let mut line = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
        source = cause_of(source);
    }
    eprintln!("krescent: {}", line.replace(['\n', '\r'], " "));
    ExitCode::from(error.exit_code())
}

fn cause_of<'a>(
    error: Option<&'a (dyn std::error::Error + 'static)>,
) -> Option<&'a (dyn std::error::Error + 'static)> {
    error.and_then(std::error::Error::source)
}
