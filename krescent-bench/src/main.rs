//! The benchmark program: every figure of `WORKLOAD.md` measured against its baseline in the same
//! run, several repetitions each, medians.
//!
//! ```text
//! cargo run --release -p krescent-bench -- [--events N] [--reps R] [--only PART]
//! ```
//!
//! where `PART` is one of [`PARTS`].
//!
//! It prints one line per figure:
//! `bench <figure> ratio=<krescent/baseline> krescent=<events/s> baseline=<events/s>`.

mod decide;
mod file;
mod incremental;
mod large;
mod measure;
mod memory;
mod object;
mod postgres;
mod rebuild;
mod segments;
mod upcast;

use std::error::Error;

/// What to run.
pub(crate) struct Options {
    /// Events in the stream (1,000,000 for the published figures).
    pub(crate) events: usize,
    /// Repetitions of each measurement; the median is reported.
    pub(crate) reps: usize,
    /// Only the figures of one of [`PARTS`].
    pub(crate) only: Option<String>,
}

/// The parts `--only` selects: the in-memory, the file store, the Postgres, the write-model
/// (`decide`), the segments, the object-store, the projection rebuild or the upcasting
/// figures, or only `large_state`, `large_state_incremental` or `incremental_replay`.
const PARTS: &[&str] = &[
    "memory",
    "file",
    "postgres",
    "large_state",
    "large_state_incremental",
    "incremental_replay",
    "decide",
    "segments",
    "object_store",
    "projection_rebuild",
    "upcast",
];

fn options() -> Result<Options, String> {
    let mut options = Options {
        events: 1_000_000,
        reps: 5,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| format!("`{arg}` needs a value"))?;
        if arg == "--only" {
            if !PARTS.contains(&value.as_str()) {
                return Err(format!(
                    "`--only {value}`: expected one of {}",
                    PARTS.join(", ")
                ));
            }
            options.only = Some(value);
            continue;
        }
        let number = value
            .parse::<usize>()
            .map_err(|e| format!("`{arg} {value}`: {e}"))?;
        match arg.as_str() {
            "--events" => options.events = number.max(1_000),
            "--reps" => options.reps = number.max(1),
            other => {
                return Err(format!(
                    "unknown argument `{other}`; expected `--events N`, `--reps R` or `--only {}`",
                    PARTS.join("|")
                ))
            }
        }
    }
    Ok(options)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some(file::RESUME_CHILD) {
        let dir = args.next().ok_or("the resume needs a directory")?;
        let rep = args
            .next()
            .ok_or("the resume needs a repetition")?
            .parse()?;
        return file::resume_child(std::path::Path::new(&dir), rep).await;
    }
    let options = options()?;
    eprintln!(
        "workload: {} events, seed {}, {} repetitions, medians",
        options.events,
        krescent_testkit::workload::SEED,
        options.reps
    );
    let runs = |part: &str| options.only.as_deref().is_none_or(|only| only == part);
    if runs("memory") {
        memory::run(&options).await?;
    }
    if runs("file") {
        file::run(&options).await?;
    }
    if runs("postgres") || runs("large_state") {
        postgres::run(&options).await?;
    }
    if runs("large_state_incremental") || runs("incremental_replay") {
        incremental::run(&options).await?;
    }
    if runs("decide") {
        decide::run(&options).await?;
    }
    if runs("segments") {
        segments::run(&options).await?;
    }
    if runs("object_store") {
        object::run(&options).await?;
    }
    if runs("projection_rebuild") {
        Box::pin(rebuild::run(&options)).await?;
    }
    if runs("upcast") {
        upcast::run(&options).await?;
    }
    Ok(())
}
