//! The metrics every running model records, through the [`metrics`] facade.
//!
//! krescent installs no recorder: an application that wants the figures installs one (for
//! Prometheus, `metrics-exporter-prometheus`; see the `prometheus` example) before it starts its
//! models; without one, recording costs next to nothing. Every metric carries the label `model`
//! (the model's name, or a segment's namespace); none carries a stream id. Runners record once per batch of events, not
//! per event.
//!
//! | name | kind | what |
//! | --- | --- | --- |
//! | `krescent_events_processed_total` | counter | events the model's handlers processed |
//! | `krescent_events_after_restart` | gauge | events processed since the model last started |
//! | `krescent_checkpoints_total` | counter | checkpoints taken |
//! | `krescent_checkpoint_duration_seconds` | histogram | time the model's task spent on a checkpoint: the snapshot, plus the write where it is written in line (a transactional commit, the final checkpoint of a stop) |
//! | `krescent_checkpoint_bytes` | gauge | size of the last checkpoint's bucket as JSON |
//! | `krescent_lag_events` | gauge | the store's head minus the model's position; 0 when caught up |
//! | `krescent_lag_seconds` | gauge | now minus the recorded-at time of the last event processed while events were waiting; 0 when caught up |
//! | `krescent_events_parked` | gauge | the model's parked events ([`crate::deadletter`]), as the running model knows them |
//! | `krescent_parkings_total` | counter | events the model parked (a failed one, or one parked behind it) |
//!
//! The lag is updated after every batch, while catching up and live. The head it subtracts
//! from is read when the model starts and again at most once a second while events arrive, so
//! between two reads `krescent_lag_events` may be low by the events appended meanwhile; it
//! is exact (0) whenever the model has read everything.

use std::time::{Duration, Instant, SystemTime};

use metrics::{Counter, Gauge, Histogram};

use crate::checkpoint::{BucketValue, CheckpointBucket};
use crate::Position;

/// Counter: events the model's handlers processed.
pub const EVENTS_PROCESSED_TOTAL: &str = "krescent_events_processed_total";
/// Gauge: events processed since the model last started.
pub const EVENTS_AFTER_RESTART: &str = "krescent_events_after_restart";
/// Counter: checkpoints taken.
pub const CHECKPOINTS_TOTAL: &str = "krescent_checkpoints_total";
/// Histogram: seconds the model's task spent on a checkpoint.
pub const CHECKPOINT_DURATION_SECONDS: &str = "krescent_checkpoint_duration_seconds";
/// Gauge: bytes of the last checkpoint's bucket as JSON.
pub const CHECKPOINT_BYTES: &str = "krescent_checkpoint_bytes";
/// Gauge: the store's head minus the model's position.
pub const LAG_EVENTS: &str = "krescent_lag_events";
/// Gauge: seconds between now and the recorded-at time of the last processed event.
pub const LAG_SECONDS: &str = "krescent_lag_seconds";
/// Gauge: the model's parked events.
pub const EVENTS_PARKED: &str = "krescent_events_parked";
/// Counter: events the model parked.
pub const PARKINGS_TOTAL: &str = "krescent_parkings_total";
/// The label that names the model: its name, or for one segment of a model split by
/// `#[model(segments = N)]` the segment's namespace (`<model>#<index>/<count>`).
pub const MODEL_LABEL: &str = "model";

/// How often a running model reads the store's head again while events arrive.
const HEAD_REFRESH: Duration = Duration::from_secs(1);

/// Describes every metric (units and help texts) to the installed recorder; optional, for
/// exporters that print descriptions, such as Prometheus'. Call it after installing one.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        EVENTS_PROCESSED_TOTAL,
        Unit::Count,
        "Events the model's handlers processed."
    );
    describe_gauge!(
        EVENTS_AFTER_RESTART,
        Unit::Count,
        "Events processed since the model last started."
    );
    describe_counter!(CHECKPOINTS_TOTAL, Unit::Count, "Checkpoints taken.");
    describe_histogram!(
        CHECKPOINT_DURATION_SECONDS,
        Unit::Seconds,
        "Time the model's task spent on a checkpoint."
    );
    describe_gauge!(
        CHECKPOINT_BYTES,
        Unit::Bytes,
        "Size of the last checkpoint's bucket as JSON."
    );
    describe_gauge!(
        LAG_EVENTS,
        Unit::Count,
        "The store's head minus the model's position."
    );
    describe_gauge!(EVENTS_PARKED, Unit::Count, "The model's parked events.");
    describe_counter!(PARKINGS_TOTAL, Unit::Count, "Events the model parked.");
    describe_gauge!(
        LAG_SECONDS,
        Unit::Seconds,
        "Now minus the recorded-at time of the last processed event; 0 when caught up."
    );
}

/// The handles of one running model's metrics, registered once when it starts.
pub(crate) struct ModelMetrics {
    processed: Counter,
    after_restart: Gauge,
    checkpoints: Counter,
    checkpoint_duration: Histogram,
    checkpoint_bytes: Gauge,
    lag_events: Gauge,
    lag_seconds: Gauge,
    events_parked: Gauge,
    parkings: Counter,
    /// The last head read from the store, or a later position seen since.
    head: Position,
    /// When the head was last read; `None` before the first read.
    head_read: Option<Instant>,
}

impl ModelMetrics {
    /// The handles of model `name` (a segment's namespace for a segment).
    pub(crate) fn new(name: &str) -> Self {
        let labels = [(MODEL_LABEL, name.to_owned())];
        ModelMetrics {
            processed: metrics::counter!(EVENTS_PROCESSED_TOTAL, &labels),
            after_restart: metrics::gauge!(EVENTS_AFTER_RESTART, &labels),
            checkpoints: metrics::counter!(CHECKPOINTS_TOTAL, &labels),
            checkpoint_duration: metrics::histogram!(CHECKPOINT_DURATION_SECONDS, &labels),
            checkpoint_bytes: metrics::gauge!(CHECKPOINT_BYTES, &labels),
            lag_events: metrics::gauge!(LAG_EVENTS, &labels),
            lag_seconds: metrics::gauge!(LAG_SECONDS, &labels),
            events_parked: metrics::gauge!(EVENTS_PARKED, &labels),
            parkings: metrics::counter!(PARKINGS_TOTAL, &labels),
            head: Position::START,
            head_read: None,
        }
    }

    /// After a batch: `handled` more events processed, `processed` in this run so far.
    pub(crate) fn processed(&self, handled: u64, processed: u64) {
        if handled > 0 {
            self.processed.increment(handled);
        }
        #[allow(clippy::cast_precision_loss)] // a gauge is a float; exact up to 2^53 events
        self.after_restart.set(processed as f64);
    }

    /// The model holds `parked` parked events, `new` of them just parked.
    pub(crate) fn parked(&self, parked: usize, new: u64) {
        if new > 0 {
            self.parkings.increment(new);
        }
        #[allow(clippy::cast_precision_loss)] // a gauge is a float
        self.events_parked.set(parked as f64);
    }

    /// A checkpoint of `bytes` ([`json_len`]) was taken; `spent` on the model's task.
    pub(crate) fn checkpoint_taken(&self, spent: Duration, bytes: usize) {
        self.checkpoints.increment(1);
        self.checkpoint_duration.record(spent.as_secs_f64());
        #[allow(clippy::cast_precision_loss)] // a gauge is a float
        self.checkpoint_bytes.set(bytes as f64);
    }

    /// Whether the head should be read from the store again before [`lag`](Self::lag).
    pub(crate) fn head_due(&self) -> bool {
        self.head_read
            .is_none_or(|read| read.elapsed() >= HEAD_REFRESH)
    }

    /// The store's head was read just now.
    pub(crate) fn head_read(&mut self, head: Position) {
        self.head = self.head.max(head);
        self.head_read = Some(Instant::now());
    }

    /// The lag after a batch whose last event, at `position`, was recorded at `recorded_at`.
    pub(crate) fn lag(&mut self, position: Position, recorded_at: SystemTime) {
        self.head = self.head.max(position);
        let behind = self.head.get() - position.get();
        #[allow(clippy::cast_precision_loss)] // a gauge is a float
        self.lag_events.set(behind as f64);
        if behind == 0 {
            self.lag_seconds.set(0.0);
        } else {
            let age = SystemTime::now()
                .duration_since(recorded_at)
                .unwrap_or_default();
            self.lag_seconds.set(age.as_secs_f64());
        }
    }

    /// The model has read everything up to `position`, the store's head.
    pub(crate) fn caught_up(&mut self, position: Position) {
        self.head = self.head.max(position);
        self.lag_events.set(0.0);
        self.lag_seconds.set(0.0);
    }
}

/// The length of `bucket` serialized as JSON, without serializing the large values: a value
/// kept as JSON text is counted by its length. Equal to `serde_json::to_vec(bucket)?.len()`.
pub(crate) fn json_len(bucket: &CheckpointBucket) -> usize {
    let mut len = 2 + bucket.len().saturating_sub(1); // braces and commas
    for (key, value) in bucket.iter() {
        // `"key":{"kind":value}`
        len += quoted_len(key) + 1 + 2 + quoted_len(value_kind(value)) + 1 + value_len(value);
    }
    len
}

/// The tag a value's kind serializes with.
fn value_kind(value: &BucketValue) -> &'static str {
    match value {
        BucketValue::Str(_) => "str",
        BucketValue::Int(_) => "int",
        BucketValue::Uint(_) => "uint",
        BucketValue::Float(_) => "float",
        BucketValue::Bool(_) => "bool",
        BucketValue::Json(_) => "json",
        BucketValue::Bytes(_) => "bytes",
        BucketValue::Bucket(_) => "bucket",
        BucketValue::MessagePack(_) => "messagepack",
    }
}

/// The length of `value` serialized as JSON (see [`json_len`]).
pub(crate) fn value_len(value: &BucketValue) -> usize {
    match value {
        BucketValue::Json(raw) => raw.get().len(),
        BucketValue::Bytes(bytes) => base64_len(bytes.len()),
        BucketValue::MessagePack(packed) => base64_len(packed.len()),
        BucketValue::Bucket(nested) => json_len(nested),
        // Small values: serialized (a value that cannot be is counted as nothing).
        small => serde_json::to_vec(small)
            .map_or(0, |json| json.len() - quoted_len(value_kind(small)) - 3),
    }
}

/// The length of `len` bytes as a base64 JSON string.
fn base64_len(len: usize) -> usize {
    len.div_ceil(3) * 4 + 2
}

/// The length of `text` as a JSON string.
fn quoted_len(text: &str) -> usize {
    serde_json::to_string(text).map_or(text.len() + 2, |q| q.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_len_is_the_serialized_length() {
        let mut bucket = CheckpointBucket::new();
        bucket.put("name", "a \"quoted\" name").expect("put");
        bucket.put("count", &42_u32).expect("put");
        bucket.put("big", &u64::MAX).expect("put");
        bucket.put("ratio", &0.25_f64).expect("put");
        bucket.put("flag", &true).expect("put");
        bucket.put("map", &[("a", 1), ("b", 2)]).expect("put");
        bucket.put_bytes("raw", &[1, 2, 3, 4, 5]);
        let mut nested = CheckpointBucket::new();
        nested.put("revision", &1_u32).expect("put");
        bucket.insert("nested", BucketValue::Bucket(nested));
        let expected = serde_json::to_vec(&bucket).expect("serialize").len();
        assert_eq!(json_len(&bucket), expected);
        assert_eq!(json_len(&CheckpointBucket::new()), 2);
    }
}
