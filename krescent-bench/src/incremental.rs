//! Incremental checkpoints on PostgreSQL: `large_state_incremental` (a map of `--events` keys,
//! 1,000 of them changed between checkpoints: each delta's checkpoint against the whole map's,
//! and the restore of a base and 50 deltas against the whole map's restore) and
//! `incremental_replay` (the workload replayed with `fixed_events(25)` into a model whose
//! checkpointed state is a tracked map of 100,000 keys, against the same replay without
//! checkpoints and against the same model with the map as a whole-state field).

use std::cell::RefCell;
use std::collections::HashMap;
use std::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use krescent::checkpoint::{
    CheckpointBucket, CheckpointFormat, CheckpointStorage, CheckpointSupport, CheckpointVersion,
    Link, Piece, PieceInfo, PostgresCheckpointStorage, StorageError, StoredCheckpoint, TrackedMap,
};
use krescent::prelude::*;
use krescent::store::{EventStore, ExpectedVersion, PostgresConfig, PostgresEventStore};
use krescent_testkit::workload::{
    DocumentCreated, DocumentDeleted, DocumentEvent, FieldRemoved, FieldSet, Workload, SEED,
};

use crate::large;
use crate::measure::{median, medians_in_turns, rate};
use crate::postgres::{client, database_url};
use crate::Options;

/// The keys changed between two checkpoints of `large_state_incremental`.
const CHANGED: usize = 1_000;
/// The deltas of `large_state_incremental`'s chain.
const DELTAS: usize = 50;
/// The keys of `incremental_replay`'s map before the first event.
const REPLAY_KEYS: usize = 100_000;

/// `large::Large` with its map tracked: checkpointed as a base and deltas.
#[derive(EventModel, Default)]
#[model(name = "bench.large.tracked", version = 1)]
#[checkpoint(strategy = "never", storage = "postgres", compact_at = "10000%")]
struct LargeTracked {
    #[checkpoint(incremental)]
    entries: TrackedMap<String, u64>,
}

#[krescent::handlers]
impl LargeTracked {
    fn created(&mut self, e: &DocumentCreated) {
        let next = self.entries.len() as u64;
        self.entries.insert(e.document_id.clone(), next);
    }
}

/// A replayed model named `$name`: document id → fields set, in `$map`, checkpointed as the
/// field attribute `$field` says.
macro_rules! replayed {
    ($ty:ident, $name:literal, $strategy:literal, $map:ty, [$($field:tt)*]) => {
        #[derive(EventModel, Default)]
        #[model(name = $name, version = 1)]
        #[checkpoint(strategy = $strategy, storage = "postgres")]
        struct $ty {
            $($field)*
            documents: $map,
        }

        #[krescent::handlers]
        impl $ty {
            fn created(&mut self, e: &DocumentCreated) {
                self.documents.insert(e.document_id.clone(), 0);
            }
            fn set(&mut self, e: &FieldSet) {
                if let Some(fields) = self.documents.get_mut(&e.document_id) {
                    *fields += 1;
                }
            }
            fn removed(&mut self, e: &FieldRemoved) {
                if let Some(fields) = self.documents.get_mut(&e.document_id) {
                    *fields = fields.saturating_sub(1);
                }
            }
            fn deleted(&mut self, e: &DocumentDeleted) {
                self.documents.remove(&e.document_id);
            }
        }

        impl $ty {
            /// The model with [`REPLAY_KEYS`] keys before the first event.
            fn filled() -> Self {
                let mut model = Self::default();
                for i in 0..REPLAY_KEYS {
                    model.documents.insert(format!("filler-{i:06}"), 0);
                }
                model
            }
        }
    };
}

replayed!(ReplayPlain, "bench.replay.plain", "never", HashMap<String, u64>, []);
replayed!(ReplayTracked, "bench.replay.tracked", "fixed_events(25)", TrackedMap<String, u64>, [#[checkpoint(incremental)]]);
replayed!(ReplayUntaken, "bench.replay.untaken", "never", TrackedMap<String, u64>, [#[checkpoint(incremental)]]);
replayed!(ReplayWhole, "bench.replay.whole", "fixed_events(25)", HashMap<String, u64>, [#[checkpoint]]);

/// Runs `large_state_incremental` and `incremental_replay`, or the one `options.only` names.
pub(crate) async fn run(options: &Options) -> Result<(), Box<dyn Error>> {
    let (url, _database) = database_url().await;
    let config = PostgresConfig::in_schema("krescent_bench_incremental");
    let client = client(&url).await?;
    client
        .batch_execute("DROP SCHEMA IF EXISTS krescent_bench_incremental CASCADE")
        .await?;
    let store = PostgresEventStore::connect_with(&url, config.clone()).await?;
    store.migrate().await?;
    let storage = store.checkpoint_storage();
    storage.migrate().await?;
    let krescent = Krescent::new(store).with_storage("postgres", storage.clone());
    let runs = |figure: &str| options.only.as_deref().is_none_or(|only| only == figure);
    if runs("large_state_incremental") {
        large_state_incremental(options, &krescent, &storage).await?;
    }
    if runs("incremental_replay") {
        replay(options, &krescent, &storage).await?;
    }
    Ok(())
}

/// `large_state_incremental`: a base of the map, then [`DELTAS`] deltas of [`CHANGED`] keys
/// each, every one taken as a running model takes it (snapshot, seal, store); the same map's
/// whole checkpoint; the restores of both.
async fn large_state_incremental(
    options: &Options,
    krescent: &Krescent<PostgresEventStore>,
    storage: &PostgresCheckpointStorage,
) -> Result<(), Box<dyn Error>> {
    let entries = large::entries(options.events);
    let keys: Vec<String> = entries.keys().take(CHANGED).cloned().collect();
    let whole = large::Large {
        entries: entries.clone(),
    };
    let mut tracked = LargeTracked {
        entries: TrackedMap::from(entries),
    };
    let format = storage.format();
    let version = CheckpointVersion::of::<LargeTracked>();
    let base = Position::new(1);
    let checkpoint = |model: &mut LargeTracked, piece: Piece, position: Position| {
        let mut bucket = match piece {
            Piece::Whole => CheckpointBucket::with_format(format),
            Piece::Delta(_) => CheckpointBucket::delta_with_format(format),
        };
        model.create_checkpoint(&mut bucket)?;
        model.checkpoint_taken();
        Ok::<_, Box<dyn Error>>(
            StoredCheckpoint::new(LargeTracked::NAME, version.clone(), position, bucket)
                .with_piece(piece),
        )
    };
    storage
        .store(&checkpoint(&mut tracked, Piece::Whole, base)?)
        .await?;
    let mut times = Vec::with_capacity(DELTAS);
    let mut previous = base;
    for delta in 1..=DELTAS {
        for (i, key) in keys.iter().enumerate() {
            tracked
                .entries
                .insert(key.clone(), (delta * CHANGED + i) as u64);
        }
        let position = Position::new(1 + delta as u64);
        let piece = Piece::Delta(Link {
            base,
            previous,
            sequence: u32::try_from(delta)?,
        });
        let started = Instant::now();
        storage
            .store(&checkpoint(&mut tracked, piece, position)?)
            .await?;
        times.push(started.elapsed());
        previous = position;
    }
    times.sort_unstable();
    let delta_checkpoint = times[times.len() / 2];
    let pieces = storage.pieces(LargeTracked::NAME).await?;
    let mut delta_bytes: Vec<u64> = pieces.iter().skip(1).map(|p| p.bytes).collect();
    delta_bytes.sort_unstable();
    let bytes = delta_bytes.get(delta_bytes.len() / 2).copied().unwrap_or(0);
    let base_bytes = pieces.first().map_or(0, |p| p.bytes);

    let full_checkpoint = median(options.reps, || async {
        let stored = large::snapshot(&whole, format, options.events)?;
        storage.store(&stored).await?;
        Ok::<_, Box<dyn Error>>(())
    })
    .await?;
    let (restore, full_restore) = restores(options, krescent, &tracked, &whole).await?;
    let load = median(options.reps, || async {
        Ok::<_, Box<dyn Error>>(storage.load(LargeTracked::NAME).await?)
    })
    .await?;
    let full_load = median(options.reps, || async {
        Ok::<_, Box<dyn Error>>(storage.load(large::Large::NAME).await?)
    })
    .await?;
    eprintln!(
        "large_state_incremental: of the restores, loading the pieces {} ms, the whole bucket {} ms",
        load.as_millis(),
        full_load.as_millis()
    );
    println!(
        "bench large_state_incremental keys={} changed={CHANGED} deltas={DELTAS} checkpoint_ms={:.2} full_checkpoint_ms={} ratio={:.4} restore_ms={} full_restore_ms={} restore_ratio={:.3} bytes={bytes} base_bytes={base_bytes}",
        whole.entries.len(),
        delta_checkpoint.as_secs_f64() * 1e3,
        full_checkpoint.as_millis(),
        delta_checkpoint.as_secs_f64() / full_checkpoint.as_secs_f64(),
        restore.as_millis(),
        full_restore.as_millis(),
        restore.as_secs_f64() / full_restore.as_secs_f64(),
    );
    Ok(())
}

/// The medians of the restores of `tracked`'s base and deltas and of `whole`'s map, interleaved.
async fn restores(
    options: &Options,
    krescent: &Krescent<PostgresEventStore>,
    tracked: &LargeTracked,
    whole: &large::Large,
) -> Result<(Duration, Duration), Box<dyn Error>> {
    // Interleaved, so that both restores meet the machine in the same state (the allocator's,
    // the other processes'): a base and its deltas, then the whole map, `reps` times each.
    let (mut chain_times, mut whole_times) = (Vec::new(), Vec::new());
    for _ in 0..options.reps {
        let started = Instant::now();
        let restored = krescent.restore_only(LargeTracked::default()).await?;
        chain_times.push(started.elapsed());
        if *restored.model.entries != *tracked.entries {
            return Err("the base and its deltas restore the map as it was".into());
        }
        drop(restored);
        let started = Instant::now();
        let restored = krescent.restore_only(large::Large::default()).await?;
        whole_times.push(started.elapsed());
        if restored.model.entries.len() != whole.entries.len() {
            return Err("the whole map is restored".into());
        }
    }
    let middle = |times: &mut Vec<Duration>| {
        times.sort_unstable();
        times[times.len() / 2]
    };
    Ok((middle(&mut chain_times), middle(&mut whole_times)))
}

/// `incremental_replay`: the workload's first `--events` events replayed from PostgreSQL into
/// the three replayed models, each from no checkpoint, medians.
#[allow(clippy::cast_precision_loss)] // counts of checkpoints, far below 2^52
async fn replay(
    options: &Options,
    krescent: &Krescent<PostgresEventStore>,
    storage: &PostgresCheckpointStorage,
) -> Result<(), Box<dyn Error>> {
    let workload: Vec<DocumentEvent> = Workload::new(SEED).take(options.events).collect();
    for (b, batch) in workload.chunks(1_000).enumerate() {
        krescent
            .store()
            .append(
                &format!("bench-{b}"),
                ExpectedVersion::NoStream,
                batch.iter().map(DocumentEvent::to_new_event).collect(),
            )
            .await?;
    }
    // The plain and the tracked replays in turns: the acceptance's ratio is theirs, and a
    // change in the machine's load (other builds on its two cores) weighs on both alike.
    let written = Arc::new(Written::new(storage.clone()));
    let counting = krescent
        .clone()
        .with_shared_storage("postgres", written.clone());
    let checkpoints = RefCell::new((Vec::new(), Vec::new()));
    let (plain, tracked) = medians_in_turns(
        options.reps,
        || async { Ok::<_, Box<dyn Error>>(krescent.catch_up(ReplayPlain::filled()).await?) },
        || async {
            storage.delete(ReplayTracked::NAME).await?;
            written.reset();
            let run = counting.catch_up(ReplayTracked::filled()).await?;
            checkpoints.borrow_mut().0.push(run.checkpoints);
            Ok::<_, Box<dyn Error>>(run)
        },
    )
    .await?;
    let (bases, deltas) = written.counts();
    // Where the tracked replay's time goes: the same tracked map never checkpointed (the
    // change tracking alone) against the plain replay, in turns.
    let (plain_again, untaken) = medians_in_turns(
        options.reps,
        || async { Ok::<_, Box<dyn Error>>(krescent.catch_up(ReplayPlain::filled()).await?) },
        || async { Ok::<_, Box<dyn Error>>(krescent.catch_up(ReplayUntaken::filled()).await?) },
    )
    .await?;
    eprintln!(
        "incremental_replay: the tracked map never checkpointed, {:.0}/s against the plain replay's {:.0}/s in the same turns (ratio {:.3})",
        rate(workload.len(), untaken),
        rate(workload.len(), plain_again),
        rate(workload.len(), untaken) / rate(workload.len(), plain_again)
    );
    let whole = median(options.reps, || async {
        storage.delete(ReplayWhole::NAME).await?;
        let run = krescent.catch_up(ReplayWhole::filled()).await?;
        checkpoints.borrow_mut().1.push(run.checkpoints);
        Ok::<_, Box<dyn Error>>(run)
    })
    .await?;
    let middle = |counts: &mut Vec<u64>| {
        counts.sort_unstable();
        counts[counts.len() / 2]
    };
    let (mut tracked_counts, mut whole_counts) = checkpoints.into_inner();
    let (tracked_checkpoints, whole_checkpoints) =
        (middle(&mut tracked_counts), middle(&mut whole_counts));
    let events = workload.len();
    println!(
        "bench incremental_replay keys={REPLAY_KEYS} ratio={:.3} tracked={:.0} plain={:.0} whole={:.0} whole_ratio={:.3} checkpoints={tracked_checkpoints} bases={bases} deltas={deltas} whole_checkpoints={whole_checkpoints} checkpoints_ratio={:.1}",
        rate(events, tracked) / rate(events, plain),
        rate(events, tracked),
        rate(events, plain),
        rate(events, whole),
        rate(events, whole) / rate(events, plain),
        tracked_checkpoints as f64 / whole_checkpoints.max(1) as f64,
    );
    Ok(())
}

/// The PostgreSQL storage, counting the bases and the deltas a run writes (of the last run
/// since [`reset`](Self::reset)): how many of `incremental_replay`'s checkpoints were
/// compactions.
#[derive(Debug)]
struct Written {
    inner: PostgresCheckpointStorage,
    bases: AtomicU64,
    deltas: AtomicU64,
}

impl Written {
    fn new(inner: PostgresCheckpointStorage) -> Self {
        Written {
            inner,
            bases: AtomicU64::new(0),
            deltas: AtomicU64::new(0),
        }
    }

    fn reset(&self) {
        self.bases.store(0, Ordering::Relaxed);
        self.deltas.store(0, Ordering::Relaxed);
    }

    /// The bases and the deltas written since the last reset.
    fn counts(&self) -> (u64, u64) {
        (
            self.bases.load(Ordering::Relaxed),
            self.deltas.load(Ordering::Relaxed),
        )
    }
}

#[krescent::async_trait]
impl CheckpointStorage for Written {
    async fn load(&self, namespace: &str) -> Result<Option<StoredCheckpoint>, StorageError> {
        self.inner.load(namespace).await
    }
    fn format(&self) -> CheckpointFormat {
        self.inner.format()
    }
    fn keeps_deltas(&self) -> bool {
        self.inner.keeps_deltas()
    }
    async fn pieces(&self, namespace: &str) -> Result<Vec<PieceInfo>, StorageError> {
        self.inner.pieces(namespace).await
    }
    async fn store(&self, checkpoint: &StoredCheckpoint) -> Result<(), StorageError> {
        let counter = match checkpoint.piece {
            Piece::Whole => &self.bases,
            Piece::Delta(_) => &self.deltas,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.inner.store(checkpoint).await
    }
    async fn delete(&self, namespace: &str) -> Result<bool, StorageError> {
        self.inner.delete(namespace).await
    }
    async fn list(&self) -> Result<Vec<String>, StorageError> {
        self.inner.list().await
    }
}
