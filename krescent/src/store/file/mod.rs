//! The embedded default: an append-only event log in segment files, read through an index.
//!
//! A store is a directory:
//!
//! - `<first position>.seg`: segments of the log, each starting with a versioned header,
//!   then frames of events (`format.rs`). A new segment is begun when an append finds the last
//!   one larger than the segment size (32 MiB by default), so an append never spans two segments.
//! - `<first position>.idx`: the sparse index of a sealed segment; `head.state`: the index of
//!   the last segment and every stream's version. Derived data, checked and rebuilt when
//!   missing or damaged.
//! - `LOCK`: held exclusively by the process that has the store open.
//!
//! Memory holds the sparse index (16 bytes every 64 KiB of log) and one version per stream, not
//! the events: reads seek into the segments, and opening costs the index files plus a scan of
//! what they do not cover yet (at most the appends since `head.state` was last written, about
//! 8 MiB, or one large append).

mod format;
mod index;
mod legacy;
mod recover;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};
use std::time::SystemTime;

use tokio::sync::watch;

use self::format::{Draft, FrameHeader, Names, FRAME_HEADER, SEGMENT_HEADER};
use self::index::{HeadState, SegmentIndex};
use super::{
    check_payloads, AppendCondition, Appended, EventBatch, EventStore, ExpectedVersion, Query,
    StoreError,
};
use crate::checkpoint::truncate_to_micros;
use crate::durable::{is_temporary, write_atomically};
use crate::event::{NewEvent, RecordedEvent};
use crate::Position;

/// The segment size after which an append begins a new segment, unless set otherwise.
pub const DEFAULT_SEGMENT_BYTES: u64 = 32 * 1024 * 1024;
/// `head.state` is rewritten after this many bytes of appends (or more, for many streams).
const STATE_EVERY: u64 = 8 * 1024 * 1024;
/// A batch stops after about this many bytes of frames, even below its limit.
const BATCH_BYTES: u64 = 4 * 1024 * 1024;
const STATE_FILE: &str = "head.state";
const LOCK_FILE: &str = "LOCK";

/// How to open a [`FileEventStore`].
#[derive(Debug, Clone)]
pub struct FileStoreOptions {
    segment_bytes: u64,
    create: bool,
}

impl Default for FileStoreOptions {
    fn default() -> Self {
        FileStoreOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            create: true,
        }
    }
}

impl FileStoreOptions {
    /// Begin a new segment once the last one holds `bytes` (at least 4 KiB; default 32 MiB).
    #[must_use]
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes.max(4096);
        self
    }

    /// Whether a missing or empty directory becomes a new store (default) or is refused.
    #[must_use]
    pub fn create(mut self, create: bool) -> Self {
        self.create = create;
        self
    }
}

/// Events in segment files on disk, synced on every append.
///
/// A store is a directory: `<first position>.seg` segment files, each with a versioned header
/// (a new one is begun when an append finds the last larger than the segment size, 32 MiB by
/// default, so an append never spans two); `<first position>.idx` and `head.state`, the sparse
/// index and every stream's version (derived data, rebuilt when missing or damaged); and `LOCK`.
///
/// **Durability**: an append returns only after its bytes are synced (`fdatasync`); a crash
/// loses no acknowledged append. **All or nothing**: an append is framed as one unit; a crash in
/// the middle of one leaves none of its events after the next open. **Torn tail versus
/// corruption**: an incomplete final append is cut off when the store is opened (logged as a
/// warning); any other damage — a checksum that fails on a complete frame, a gap in positions,
/// a damaged header, a sealed segment that ends mid-append — is [`StoreError::Corrupt`] naming
/// the file and offset, when the store opens or when the damaged part is read, and no file is
/// changed. **Strings**: any `String` round-trips byte for byte (quotes, control characters,
/// NUL, non-ASCII); payloads must be JSON ([`StoreError::Rejected`] otherwise). **Limits**: one
/// process at a time ([`StoreError::Locked`] for a second); memory grows with the number of
/// streams (one version each) and by 16 bytes per 64 KiB of log, not with the events; a single
/// event's fields and a 1024-event frame are at most 4 GiB.
///
/// **Queries** ([`read_matching`](EventStore::read_matching), what write models load with, and
/// the condition of [`append_if`](EventStore::append_if)): the store keeps no per-stream index
/// of positions, so both read the log from the query's position on and keep the matching
/// events. Loading a stream costs the whole log after its snapshot (after the start without
/// one), all streams included; checking a condition costs the events appended since the
/// decision read.
#[derive(Debug)]
pub struct FileEventStore {
    inner: Arc<Inner>,
}

/// The store itself, shared with the blocking threads that read ahead.
#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    segment_bytes: u64,
    state: RwLock<State>,
    writer: tokio::sync::Mutex<Writer>,
    head: watch::Sender<Position>,
    /// The batches read ahead most recently, kept so that the reading thread, not the model's,
    /// usually frees their events: freeing is cheapest where the memory was allocated.
    read_ahead: std::sync::Mutex<std::collections::VecDeque<Arc<[RecordedEvent]>>>,
    /// Holds the directory's lock while the store is open.
    _lock: File,
}

/// What readers see: the committed part of every segment, and each stream's version.
#[derive(Debug)]
struct State {
    /// Never empty; the last is the segment appends go to.
    segments: Vec<SegmentIndex>,
    streams: HashMap<Arc<str>, u64>,
}

impl State {
    fn head(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.last)
    }

    fn active(&self) -> &SegmentIndex {
        self.segments.last().expect("a store has a segment")
    }

    fn active_mut(&mut self) -> &mut SegmentIndex {
        self.segments.last_mut().expect("a store has a segment")
    }
}

/// The appender's side, behind the append lock.
#[derive(Debug)]
struct Writer {
    /// The last segment, open for appending; `None` after a failure that left it unknown.
    file: Option<File>,
    /// Bytes appended since `head.state` was written.
    unsaved: u64,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

fn index_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.idx"))
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    path: &Path,
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(io_at(path)(io::Error::other(e.to_string()))))
}

impl FileEventStore {
    /// Opens the store in directory `path`, creating it if missing or empty.
    ///
    /// # Errors
    /// [`StoreError::NotAStore`] when `path` holds something else (a file, including the
    /// single-file log of krescent 0.1 — see [`import_legacy`](Self::import_legacy) — or a
    /// directory with other files); [`StoreError::Locked`] when another process has it open;
    /// [`StoreError::UnsupportedFormat`] for segments of another format; [`StoreError::Corrupt`]
    /// for damage that is not a torn tail; [`StoreError::Io`] when the file system fails.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::open_with(path, &FileStoreOptions::default())
    }

    /// Opens an existing store, never creating one: [`StoreError::NotAStore`] for a missing or
    /// empty directory too.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_existing(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::open_with(path, &FileStoreOptions::default().create(false))
    }

    /// Opens the store in `path` with `options`.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_with(
        path: impl Into<PathBuf>,
        options: &FileStoreOptions,
    ) -> Result<Self, StoreError> {
        let dir = path.into();
        let not_a_store = |reason: &str| StoreError::NotAStore {
            path: dir.clone(),
            reason: reason.to_owned(),
        };
        if dir.is_file() {
            return Err(not_a_store(
                "a file, not a store directory (a single-file log of krescent 0.1 is read with `FileEventStore::import_legacy`)",
            ));
        }
        if !dir.exists() {
            if !options.create {
                return Err(not_a_store("no such directory"));
            }
            fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        }
        let mut firsts = Vec::new();
        let mut foreign = None;
        for entry in fs::read_dir(&dir).map_err(io_at(&dir))? {
            let name = entry.map_err(io_at(&dir))?.file_name();
            let name = name.to_string_lossy();
            if let Some(first) = name
                .strip_suffix(".seg")
                .and_then(|n| n.parse::<u64>().ok())
            {
                firsts.push(first);
            } else if !(name.ends_with(".idx")
                || name == STATE_FILE
                || name == LOCK_FILE
                || is_temporary(&name))
            {
                foreign.get_or_insert_with(|| name.into_owned());
            }
        }
        if firsts.is_empty() {
            if let Some(name) = foreign {
                return Err(not_a_store(&format!(
                    "the directory holds `{name}` and no segments"
                )));
            }
            if !options.create {
                return Err(not_a_store("the directory holds no segments"));
            }
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_at(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(StoreError::Locked { path: dir }),
            Err(fs::TryLockError::Error(e)) => return Err(io_at(&lock_path)(e)),
        }
        remove_temporaries(&dir)?;
        let saved = fs::read(dir.join(STATE_FILE))
            .ok()
            .and_then(|b| index::decode_state(&b));
        if let Some(saved) = &saved {
            check_evidence(&dir, saved)?;
        }
        if firsts.is_empty() {
            let path = segment_path(&dir, 1);
            write_atomically(&path, &format::segment_header(1)).map_err(io_at(&path))?;
            firsts.push(1);
        }
        firsts.sort_unstable();
        let (mut state, scanned) = recover(&dir, &firsts, saved)?;
        upgrade_if_empty(&dir, state.active_mut())?;
        let active = state.active();
        let path = segment_path(&dir, active.first);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_at(&path))?;
        let head = watch::Sender::new(Position::new(state.head()));
        let mut store = Inner {
            segment_bytes: options.segment_bytes,
            writer: tokio::sync::Mutex::new(Writer {
                file: Some(file),
                unsaved: scanned,
            }),
            state: RwLock::new(state),
            head,
            read_ahead: std::sync::Mutex::default(),
            dir,
            _lock: lock,
        };
        if scanned >= STATE_EVERY / 8 {
            store.save_state();
            store.writer.get_mut().unsaved = 0;
        }
        Ok(FileEventStore {
            inner: Arc::new(store),
        })
    }

    /// The store's directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.inner.dir
    }

    /// The version of `stream_id` (0 when it has no events).
    #[must_use]
    pub fn stream_version(&self, stream_id: &str) -> u64 {
        self.inner
            .read_state()
            .streams
            .get(stream_id)
            .copied()
            .unwrap_or(0)
    }

    /// Imports the single-file log of krescent 0.1 at `legacy` into this store, which must be
    /// empty: every event keeps its position, stream version, id and time. The old file is
    /// only read; remove it once the import has returned. Returns the number of events.
    ///
    /// # Errors
    /// [`StoreError::Rejected`] when this store is not empty; [`StoreError::Corrupt`] for damage
    /// in the old log other than a torn last record; [`StoreError::Io`].
    pub async fn import_legacy(&self, legacy: &Path) -> Result<u64, StoreError> {
        if self.inner.head().get() != 0 {
            return Err(StoreError::Rejected {
                stream: String::new(),
                reason: format!("importing `{}` needs an empty store", legacy.display()),
            });
        }
        let mut reader = legacy::LegacyReader::open(legacy)?;
        let mut run: Vec<legacy::Record> = Vec::new();
        let mut imported = 0;
        loop {
            let next = reader.next_record()?;
            let ends_run = match (&next, run.first()) {
                (Some(r), Some(first)) => {
                    r.stream != first.stream
                        || r.recorded_at() != first.recorded_at()
                        || run.len() == 1024
                }
                (None, Some(_)) => true,
                (_, None) => false,
            };
            if ends_run {
                let first = &run[0];
                let events = run
                    .iter()
                    .map(|r| NewEvent {
                        event_id: r.id,
                        event_type: r.event_type.as_str().into(),
                        payload: r.payload().into(),
                        revision: 1,
                        metadata: crate::Metadata::new(),
                    })
                    .collect();
                let expected = match first.version {
                    0 | 1 => ExpectedVersion::NoStream,
                    version => ExpectedVersion::Exact(version - 1),
                };
                let appended = self
                    .inner
                    .append(
                        &first.stream,
                        expected,
                        events,
                        Some(first.recorded_at()),
                        None,
                    )
                    .await?;
                if appended.position.get() != run.last().map_or(0, |r| r.position) {
                    return Err(StoreError::Corrupt {
                        path: legacy.to_path_buf(),
                        offset: 0,
                        reason: format!(
                            "the old log's positions are not consecutive before position {}",
                            appended.position
                        ),
                    });
                }
                imported += run.len() as u64;
                run.clear();
            }
            match next {
                Some(record) => run.push(record),
                None => return Ok(imported),
            }
        }
    }
}

impl Inner {
    fn head(&self) -> Position {
        *self.head.borrow()
    }

    /// Refuses an append to `stream_id` whose condition finds a matching event.
    fn check_condition(
        &self,
        stream_id: &str,
        condition: Option<&AppendCondition>,
    ) -> Result<(), StoreError> {
        let Some(condition) = condition else {
            return Ok(());
        };
        match self.latest_matching(&condition.query, condition.read_at)? {
            Some(found) => Err(StoreError::QueryConflict {
                stream: stream_id.to_owned(),
                query: condition.query.to_string(),
                read_at: condition.read_at,
                found,
            }),
            None => Ok(()),
        }
    }

    /// The latest event matching `query` after `after`, read from the segments: the cost is
    /// the events appended after `after`, which for a decision is those appended since it read.
    fn latest_matching(
        &self,
        query: &Query,
        after: Position,
    ) -> Result<Option<Position>, StoreError> {
        let (head, mut at) = (self.head().get(), after.get());
        let mut latest = None;
        while at < head && !query.is_empty() {
            let events = self.read_segment(at + 1, 4096)?;
            let Some(last) = events.last() else { break };
            at = last.position().get();
            if let Some(e) = events.iter().rev().find(|e| query.matches(e)) {
                latest = Some(e.position());
            }
        }
        Ok(latest)
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        // Writers change the state only in whole steps, so a poisoned lock still guards a consistent one.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `head.state` so the next open resumes here. Failures only cost the next open a scan.
    fn save_state(&self) {
        let bytes = {
            let state = self.read_state();
            index::encode_state(state.active(), &state.streams)
        };
        let path = self.dir.join(STATE_FILE);
        if let Err(e) = write_atomically(&path, &bytes) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the store's head state; the next open scans more");
        }
    }

    /// Begins a new segment after the last one, sealing it with its index file.
    fn roll(&self, writer: &mut Writer) -> Result<(), StoreError> {
        let (sealed, next) = {
            let state = self.read_state();
            let active = state.active();
            (index::encode_index(active), (active.first, active.last + 1))
        };
        let idx = index_path(&self.dir, next.0);
        if let Err(e) = write_atomically(&idx, &sealed) {
            tracing::warn!(path = %idx.display(), error = %e, "cannot write a segment index; the next open rebuilds it");
        }
        let path = segment_path(&self.dir, next.1);
        write_atomically(&path, &format::segment_header(next.1)).map_err(io_at(&path))?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_at(&path))?;
        self.state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .segments
            .push(SegmentIndex::new(next.1));
        writer.file = Some(file);
        writer.unsaved = STATE_EVERY;
        Ok(())
    }

    /// Reads the events from `target` on within one segment: at most `limit`, and about
    /// [`BATCH_BYTES`] of frames.
    fn read_segment(&self, target: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let (path, offset, end, segment_format) = {
            let state = self.read_state();
            if target > state.head() {
                return Ok(Vec::new());
            }
            let i = state.segments.partition_point(|s| s.first <= target) - 1;
            let segment = &state.segments[i];
            (
                segment_path(&self.dir, segment.first),
                segment.seek(target),
                segment.len,
                segment.format,
            )
        };
        let last = target.saturating_add(limit as u64 - 1);
        let file = File::open(&path).map_err(io_at(&path))?;
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        reader.seek(SeekFrom::Start(offset)).map_err(io_at(&path))?;
        let corrupt = |offset: u64, reason: &str| StoreError::Corrupt {
            path: path.clone(),
            offset,
            reason: reason.to_owned(),
        };
        let (mut at, mut names, mut body) = (offset, Names::default(), Vec::new());
        let mut events = Vec::with_capacity(limit.min(4096));
        let mut header = [0; FRAME_HEADER];
        while at < end && events.len() < limit && at - offset < BATCH_BYTES {
            reader.read_exact(&mut header).map_err(io_at(&path))?;
            let frame = FrameHeader::parse(&header)
                .ok_or_else(|| corrupt(at, "frame header checksum mismatch"))?;
            if at + frame.frame_len() > end {
                return Err(corrupt(
                    at,
                    "a frame runs past the committed end of its segment",
                ));
            }
            if frame.last() < target {
                reader
                    .seek_relative(i64::from(frame.len))
                    .map_err(io_at(&path))?;
            } else {
                body.resize(frame.len as usize, 0);
                reader.read_exact(&mut body).map_err(io_at(&path))?;
                if !frame.checks(&body) {
                    return Err(corrupt(at, "frame body checksum mismatch"));
                }
                format::decode_frame(
                    segment_format,
                    &frame,
                    &body,
                    target,
                    last,
                    &mut names,
                    &mut events,
                )
                .map_err(|reason| corrupt(at, reason))?;
            }
            at += frame.frame_len();
        }
        if events.is_empty() {
            return Err(corrupt(
                offset,
                "the index points at no event of the position",
            ));
        }
        Ok(events)
    }
}

/// Removes the temporary files a crash may have left.
fn remove_temporaries(dir: &Path) -> Result<(), StoreError> {
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        if is_temporary(&entry.file_name().to_string_lossy()) {
            fs::remove_file(entry.path()).map_err(io_at(&entry.path()))?;
        }
    }
    Ok(())
}

/// Checks the segments `firsts` of `dir` and finds where their committed appends end: from
/// `head.state` and the `.idx` files where they hold, by scanning where they do not. Cuts a
/// torn tail. Returns the state and the bytes scanned.
fn recover(
    dir: &Path,
    firsts: &[u64],
    saved: Option<HeadState>,
) -> Result<(State, u64), StoreError> {
    // The state holds only while its segment is at least as long as it says (checked by
    // `check_evidence` before: a shorter one lost appends it counted).
    let resume = saved.as_ref().and_then(|s| {
        let i = firsts.iter().position(|&f| f == s.index.first)?;
        let len = fs::metadata(segment_path(dir, firsts[i])).ok()?.len();
        (len >= s.index.len).then_some(i)
    });
    let (resume, mut streams, covered, resume_index) = if let (
        Some(i),
        Some(HeadState { index, streams }),
    ) = (resume, saved)
    {
        (i, streams, index.last, Some(index))
    } else {
        if firsts.len() > 1
            || fs::metadata(segment_path(dir, firsts[0]))
                .is_ok_and(|m| m.len() > SEGMENT_HEADER as u64)
        {
            tracing::warn!(dir = %dir.display(), "the store's head state is missing or damaged; rebuilding it from the segments");
        }
        (0, HashMap::new(), 0, None)
    };
    let mut segments: Vec<SegmentIndex> = Vec::with_capacity(firsts.len());
    let mut scanned = 0;
    for (i, &first) in firsts.iter().enumerate() {
        let path = segment_path(dir, first);
        let is_last = i + 1 == firsts.len();
        let mut file = OpenOptions::new()
            .read(true)
            .write(is_last)
            .open(&path)
            .map_err(io_at(&path))?;
        let file_len = file.metadata().map_err(io_at(&path))?.len();
        let format = check_segment_header(&path, &mut file, first)?;
        let expected_first = segments.last().map_or(1, |s| s.last + 1);
        if first != expected_first {
            return Err(StoreError::Corrupt {
                path,
                offset: 0,
                reason: format!(
                    "the segment starts at position {first} where {expected_first} was expected: events {expected_first}..={} are missing (a segment deleted, or the one before cut short)",
                    first.saturating_sub(1)
                ),
            });
        }
        let known = match (i.cmp(&resume), &resume_index) {
            (std::cmp::Ordering::Equal, Some(index)) => Some(index.clone()),
            (std::cmp::Ordering::Less, _) if !is_last => sealed_index(dir, &path, first, file_len)?,
            _ => None,
        };
        let had_index = known.is_some();
        let start = known.unwrap_or_else(|| SegmentIndex::new(first));
        let result = recover::scan(
            &path,
            &file,
            file_len,
            start,
            is_last,
            &mut streams,
            covered,
        )?;
        scanned += result.bytes_read;
        if let Some(torn_at) = result.torn_at {
            tracing::warn!(path = %path.display(), offset = torn_at, dropped = file_len - torn_at, "cutting off a torn append at the end of the event log");
            file.set_len(torn_at)
                .and_then(|()| file.sync_all())
                .map_err(io_at(&path))?;
        }
        if !(is_last || had_index && result.bytes_read == 0) {
            let idx = index_path(dir, first);
            if let Err(e) = write_atomically(&idx, &index::encode_index(&result.index)) {
                tracing::warn!(path = %idx.display(), error = %e, "cannot write a segment index");
            }
        }
        if !is_last && result.index.is_empty() {
            return Err(StoreError::Corrupt {
                path,
                offset: SEGMENT_HEADER as u64,
                reason: "a sealed segment holds no event".into(),
            });
        }
        let mut index = result.index;
        index.format = format;
        segments.push(index);
    }
    Ok((State { segments, streams }, scanned))
}

/// Refuses a log shorter than its own evidence: `saved`, a valid `head.state`, records the
/// committed appends of its segment up to a length. A crash cannot lose them (a segment is
/// synced before the state that counts it is written), so a segment that is missing or shorter
/// lost committed events: an operator's mistake or a bad restore, [`StoreError::Corrupt`]
/// naming the segment, never a shorter log.
fn check_evidence(dir: &Path, saved: &HeadState) -> Result<(), StoreError> {
    let index = &saved.index;
    if index.is_empty() {
        return Ok(());
    }
    let path = segment_path(dir, index.first);
    let len = match fs::metadata(&path) {
        Ok(metadata) => metadata.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StoreError::Corrupt {
                reason: format!(
                    "the segment is missing: `{STATE_FILE}` records events {}..={} committed in it",
                    index.first, index.last
                ),
                path,
                offset: 0,
            });
        }
        Err(e) => return Err(io_at(&path)(e)),
    };
    if len < index.len {
        return Err(StoreError::Corrupt {
            reason: format!(
                "the segment holds {len} bytes where `{STATE_FILE}` records {} committed (events {}..={}): it was cut short",
                index.len, index.first, index.last
            ),
            path,
            offset: len,
        });
    }
    Ok(())
}

/// The index file of the sealed segment at `path` (starting at `first`, `file_len` bytes), when
/// it holds; `None` when it is missing or damaged (the segment is scanned instead).
///
/// # Errors
/// [`StoreError::Corrupt`] when the index records more committed bytes than the segment holds:
/// the segment was cut short after it was sealed.
fn sealed_index(
    dir: &Path,
    path: &Path,
    first: u64,
    file_len: u64,
) -> Result<Option<SegmentIndex>, StoreError> {
    let index_path = index_path(dir, first);
    let Some(index) = fs::read(&index_path)
        .ok()
        .and_then(|b| index::decode_index(&b))
        .filter(|index| index.first == first)
    else {
        return Ok(None);
    };
    if index.len > file_len {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            offset: file_len,
            reason: format!(
                "the sealed segment holds {file_len} bytes where its index `{}` records {} committed (events {}..={}): it was cut short",
                index_path.display(), index.len, index.first, index.last
            ),
        });
    }
    Ok((index.len == file_len).then_some(index))
}

/// Rewrites the last segment, `active`, in this build's format when it is of an older one and
/// holds no event; one that holds events is sealed as it is at the next append.
fn upgrade_if_empty(dir: &Path, active: &mut SegmentIndex) -> Result<(), StoreError> {
    if active.format != format::FORMAT && active.is_empty() {
        let path = segment_path(dir, active.first);
        write_atomically(&path, &format::segment_header(active.first)).map_err(io_at(&path))?;
        active.format = format::FORMAT;
    }
    Ok(())
}

/// Checks the header of the segment `first`; returns its format.
fn check_segment_header(path: &Path, file: &mut File, first: u64) -> Result<u32, StoreError> {
    let mut header = [0; SEGMENT_HEADER];
    let read = file.read(&mut header).map_err(io_at(path))?;
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        reason,
    };
    match format::parse_segment_header(&header[..read]) {
        Ok((found, format)) if found == first => Ok(format),
        Ok((found, _)) => Err(corrupt(format!(
            "the header says the segment starts at position {found}, its name {first}"
        ))),
        Err(format::HeaderError::Damaged(reason)) => Err(corrupt(reason.to_owned())),
        Err(format::HeaderError::Format(found)) => Err(StoreError::UnsupportedFormat {
            path: path.to_path_buf(),
            found,
            supported: format::FORMAT,
        }),
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Worth a write only where the next open would otherwise scan much.
        if self.writer.get_mut().unsaved >= 64 * 1024 {
            self.save_state();
        }
    }
}

impl Inner {
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        recorded_at: Option<SystemTime>,
        condition: Option<&AppendCondition>,
    ) -> Result<Appended, StoreError> {
        check_payloads(stream_id, &events)?;
        let mut writer = self.writer.lock().await;
        // Under the writer's lock: no append can come between the check and this one.
        self.check_condition(stream_id, condition)?;
        let (actual, head, segment_len, segment_empty, segment_format) = {
            let state = self.read_state();
            let active = state.active();
            (
                state.streams.get(stream_id).copied().unwrap_or(0),
                state.head(),
                active.len,
                active.is_empty(),
                active.format,
            )
        };
        if !expected.matches(actual) {
            return Err(StoreError::conflict(stream_id, expected, actual));
        }
        if events.is_empty() {
            return Ok(Appended {
                position: Position::new(head),
                stream_version: actual,
            });
        }
        let drafts: Vec<Draft<'_>> = events
            .iter()
            .map(|e| Draft {
                id: e.event_id,
                event_type: &e.event_type,
                payload: &e.payload,
                revision: e.revision,
                metadata: e.metadata.to_json(),
            })
            .collect();
        let recorded_at = truncate_to_micros(recorded_at.unwrap_or_else(SystemTime::now));
        let bytes = format::encode_append(stream_id, actual + 1, head + 1, recorded_at, &drafts)
            .map_err(|e| StoreError::Rejected {
                stream: stream_id.to_owned(),
                reason: format!(
                    "the append's {} is larger than the file format's 4 GiB",
                    e.0
                ),
            })?;
        drop(drafts);
        if writer.file.is_none() {
            return Err(io_at(&self.dir)(io::Error::other(
                "an earlier append failed and could not be undone; reopen the store",
            )));
        }
        // A segment of an older format is sealed as it is: its frames cannot say a revision.
        let outdated = segment_format != format::FORMAT;
        let segment_len = if (segment_len >= self.segment_bytes || outdated) && !segment_empty {
            self.roll(&mut writer)?;
            SEGMENT_HEADER as u64
        } else {
            segment_len
        };
        let path = segment_path(&self.dir, self.read_state().active().first);
        let mut file = writer.file.take().expect("checked above");
        let len = bytes.len() as u64;
        let (file, written, bytes) = tokio::task::spawn_blocking(move || {
            let written = file.write_all(&bytes).and_then(|()| file.sync_data());
            // Cut off whatever part was written, so the log holds whole appends only.
            let undone = written.is_ok()
                || file
                    .set_len(segment_len)
                    .and_then(|()| file.sync_data())
                    .is_ok();
            (undone.then_some(file), written, bytes)
        })
        .await
        .map_err(|e| io_at(&path)(io::Error::other(e.to_string())))?;
        writer.file = file;
        written.map_err(io_at(&path))?;

        let appended = {
            let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
            let active = state.active_mut();
            let mut at = 0;
            while at < bytes.len() {
                let frame = FrameHeader::parse(&bytes[at..]).expect("frames this store encoded");
                active.push(&frame, segment_len + at as u64);
                at += usize::try_from(frame.frame_len()).expect("an encoded frame fits memory");
            }
            let position = active.last;
            let key = super::stream_key(&state.streams, stream_id);
            let stream_version = actual + events.len() as u64;
            state.streams.insert(key, stream_version);
            Appended {
                position: Position::new(position),
                stream_version,
            }
        };
        self.head.send_replace(appended.position);
        writer.unsaved += len;
        let streams = self.read_state().streams.len() as u64;
        if writer.unsaved >= STATE_EVERY.max(streams * 256) {
            writer.unsaved = 0;
            self.save_state();
        }
        Ok(appended)
    }
}

impl EventStore for FileEventStore {
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        self.inner
            .append(stream_id, expected, events, None, None)
            .await
    }

    async fn append_if(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        condition: &AppendCondition,
    ) -> Result<Appended, StoreError> {
        self.inner
            .append(stream_id, expected, events, None, Some(condition))
            .await
    }

    async fn read_after(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut events = Vec::new();
        let mut at = after;
        while events.len() < limit {
            let batch = self.read_batch(at, limit - events.len()).await?;
            let Some(last) = batch.last() else { break };
            at = last.position();
            events.extend(batch.into_vec());
        }
        Ok(events)
    }

    async fn read_batch(&self, after: Position, limit: usize) -> Result<EventBatch, StoreError> {
        if limit == 0 || after >= self.inner.head() {
            return Ok(EventBatch::default());
        }
        self.inner
            .read_segment(after.get() + 1, limit)
            .map(EventBatch::from)
    }

    async fn read_ahead(&self, after: Position, limit: usize) -> Result<EventBatch, StoreError> {
        if limit == 0 || after >= self.inner.head() {
            return Ok(EventBatch::default());
        }
        let inner = self.inner.clone();
        blocking(&self.inner.dir, move || {
            let old = {
                let mut kept = inner
                    .read_ahead
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                (kept.len() >= 2).then(|| kept.pop_front()).flatten()
            };
            // Usually the last reference: the model has applied that batch by now.
            drop(old);
            let events: Arc<[RecordedEvent]> = inner.read_segment(after.get() + 1, limit)?.into();
            let mut kept = inner
                .read_ahead
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            kept.push_back(events.clone());
            let len = events.len();
            Ok(EventBatch::shared(events, 0..len))
        })
        .await
    }

    async fn head(&self) -> Result<Position, StoreError> {
        Ok(self.inner.head())
    }

    async fn wait_for_append(&self, after: Position) -> Result<(), StoreError> {
        let mut head = self.inner.head.subscribe();
        // The sender lives as long as `self`, so `wait_for` cannot fail while we borrow it.
        let _ = head.wait_for(|head| *head > after).await;
        Ok(())
    }
}
