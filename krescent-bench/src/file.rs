//! The embedded file store's figures: a replay from disk against the same replay from memory,
//! and a resume at the tail — its time and its peak memory, measured in a process of its own.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use krescent::checkpoint::FileCheckpointStorage;
use krescent::store::{EventStore, ExpectedVersion, FileEventStore, InMemoryEventStore};
use krescent::{Krescent, NewEvent};
use krescent_testkit::all_documents_model;
use krescent_testkit::workload::{DocumentEvent, Workload, SEED};

use crate::measure::{median, throughput};
use crate::memory::Replayed;
use crate::Options;

all_documents_model! {
    #[model(name = "bench.documents.file", version = 1)]
    #[checkpoint(strategy = "on_shutdown", storage = "bench")]
    pub(crate) struct Resumed;
}

/// Events an append carries, and the new events a resume replays.
const BATCH: usize = 1000;

/// The flag that makes the program the resume's child process.
pub(crate) const RESUME_CHILD: &str = "--file-resume-child";

fn batches(workload: impl Iterator<Item = DocumentEvent>) -> Vec<Vec<NewEvent>> {
    let events: Vec<NewEvent> = workload.map(|e| e.to_new_event()).collect();
    events.chunks(BATCH).map(<[NewEvent]>::to_vec).collect()
}

fn events_dir(dir: &Path) -> PathBuf {
    dir.join("events")
}

fn checkpoints_dir(dir: &Path) -> PathBuf {
    dir.join("checkpoints")
}

pub(crate) async fn run(options: &Options) -> Result<(), Box<dyn Error>> {
    let dir = std::env::temp_dir().join(format!("krescent-bench-file-{}", std::process::id()));
    let result = measure(options, &dir).await;
    std::fs::remove_dir_all(&dir)?;
    result
}

async fn measure(options: &Options, dir: &Path) -> Result<(), Box<dyn Error>> {
    let file = Arc::new(FileEventStore::open(events_dir(dir))?);
    let memory = Arc::new(InMemoryEventStore::new());
    let filling = Instant::now();
    for (b, batch) in batches(Workload::new(SEED).take(options.events))
        .into_iter()
        .enumerate()
    {
        let stream = format!("bench-{b}");
        memory
            .append(&stream, ExpectedVersion::NoStream, batch.clone())
            .await?;
        file.append(&stream, ExpectedVersion::NoStream, batch)
            .await?;
    }
    eprintln!(
        "file store: {} events appended in {:.1?}, one fsync per 1,000",
        options.events,
        filling.elapsed()
    );

    let from_memory = median(options.reps, || async {
        let caught_up = Krescent::with_shared_store(memory.clone())
            .catch_up(Replayed::default())
            .await?;
        Ok::<_, krescent::Error>(caught_up.model.documents.len())
    })
    .await?;
    drop(memory);
    let from_file = median(options.reps, || async {
        let caught_up = Krescent::with_shared_store(file.clone())
            .catch_up(Replayed::default())
            .await?;
        Ok::<_, krescent::Error>(caught_up.model.documents.len())
    })
    .await?;
    throughput("file_replay", options.events, from_file, from_memory);

    // The checkpoint at the tail, then the resumes, each in a fresh process.
    Krescent::with_shared_store(file.clone())
        .with_storage("bench", FileCheckpointStorage::open(checkpoints_dir(dir))?)
        .catch_up(Resumed::default())
        .await?;
    drop(file);
    let mut resumes = Vec::with_capacity(options.reps);
    let mut peak_kb = 0;
    for rep in 0..options.reps {
        let output = std::process::Command::new(std::env::current_exe()?)
            .args([RESUME_CHILD, &dir.display().to_string(), &rep.to_string()])
            .output()?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let field = |name: &str| -> Result<u64, Box<dyn Error>> {
            let value = stdout
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='));
            let value = value.ok_or_else(|| {
                format!(
                    "the resume printed no `{name}`: {stdout}{}",
                    String::from_utf8_lossy(&output.stderr)
                )
            })?;
            Ok(value.parse()?)
        };
        resumes.push(Duration::from_micros(field("micros")?));
        peak_kb = peak_kb.max(field("rss_kb")?);
    }
    resumes.sort_unstable();
    let resume = resumes[resumes.len() / 2];
    println!(
        "bench file_resume ratio={:.4} rss_mb={} resume_ms={:.1} full_replay_ms={:.1}",
        resume.as_secs_f64() / from_file.as_secs_f64(),
        peak_kb.div_ceil(1024),
        resume.as_secs_f64() * 1e3,
        from_file.as_secs_f64() * 1e3,
    );
    Ok(())
}

/// The resume's process: appends 1,000 new events (untimed), then opens the store and catches
/// the model up from its checkpoint at the old tail, timed; prints the time and its peak memory.
pub(crate) async fn resume_child(dir: &Path, rep: u64) -> Result<(), Box<dyn Error>> {
    {
        let store = FileEventStore::open(events_dir(dir))?;
        let batch = batches(Workload::new(SEED ^ (rep + 1)).take(BATCH)).remove(0);
        store
            .append(&format!("resume-{rep}"), ExpectedVersion::NoStream, batch)
            .await?;
    }
    let start = Instant::now();
    let store = FileEventStore::open(events_dir(dir))?;
    let storage = FileCheckpointStorage::open(checkpoints_dir(dir))?;
    let run = Krescent::new(store)
        .with_storage("bench", storage)
        .catch_up(Resumed::default())
        .await?;
    let micros = start.elapsed().as_micros();
    if run.origin.restored_from().is_none() || run.processed != BATCH as u64 {
        return Err(format!(
            "the resume replayed {} events, from {:?}",
            run.processed, run.origin
        )
        .into());
    }
    let status = std::fs::read_to_string("/proc/self/status")?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or("no VmHWM in /proc/self/status")?;
    println!("resume micros={micros} rss_kb={rss_kb}");
    Ok(())
}
