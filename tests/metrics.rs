//! The metrics a running model records, read back through `metrics-util`'s debugging recorder:
//! after a known replay, during it (the lag), and after live appends.

// The values compared are whole counts, exact in an `f64`.
#![allow(clippy::float_cmp, clippy::cast_precision_loss)]

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use krescent::metrics::{
    CHECKPOINTS_TOTAL, CHECKPOINT_BYTES, EVENTS_AFTER_RESTART, EVENTS_PROCESSED_TOTAL, LAG_EVENTS,
    LAG_SECONDS,
};
use krescent::prelude::*;
use krescent::store::{EventStore, ExpectedVersion, InMemoryEventStore};
use krescent::Position;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;

const MODEL: &str = "metrics.ticks";
const REPLAYED: u64 = 10_000;

/// What the recorder holds for [`MODEL`]. A snapshot of the debugging recorder takes every
/// value and leaves 0 behind, so counters are added up here, histograms collected, and a gauge
/// reads 0 in every snapshot after the one that saw it set.
struct Recorded {
    snapshotter: Snapshotter,
    values: BTreeMap<String, f64>,
    durations: Vec<f64>,
    labels_seen: Vec<(String, String)>,
}

impl Recorded {
    fn refresh(&mut self) -> &mut Self {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let (kind, key) = key.into_parts();
            for label in key.labels() {
                let seen = (label.key().to_owned(), label.value().to_owned());
                if !self.labels_seen.contains(&seen) {
                    self.labels_seen.push(seen);
                }
            }
            if !key
                .labels()
                .any(|l| l.key() == "model" && l.value() == MODEL)
            {
                continue;
            }
            let name = key.name().to_owned();
            match (kind, value) {
                (MetricKind::Counter, DebugValue::Counter(n)) => {
                    let n = n as f64;
                    *self.values.entry(name).or_default() += n;
                }
                (MetricKind::Gauge, DebugValue::Gauge(g)) => {
                    self.values.insert(name, g.into_inner());
                }
                (MetricKind::Histogram, DebugValue::Histogram(h)) => {
                    self.durations
                        .extend(h.into_iter().map(ordered_float_inner));
                }
                _ => {}
            }
        }
        self
    }

    fn get(&self, name: &str) -> f64 {
        *self
            .values
            .get(name)
            .unwrap_or_else(|| panic!("`{name}` recorded"))
    }
}

fn recorded() -> std::sync::MutexGuard<'static, Recorded> {
    static RECORDED: OnceLock<Mutex<Recorded>> = OnceLock::new();
    RECORDED
        .get_or_init(|| {
            let recorder = DebuggingRecorder::new();
            let snapshotter = recorder.snapshotter();
            recorder
                .install()
                .expect("the only recorder of this test binary");
            Mutex::new(Recorded {
                snapshotter,
                values: BTreeMap::new(),
                durations: Vec::new(),
                labels_seen: Vec::new(),
            })
        })
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "tick")]
struct Tick {
    n: u64,
}

/// Counts ticks; at every event whose snapshot saw the lag gauge change (the first event of
/// each batch), notes the position, the lag and the seconds behind.
#[derive(EventModel, Default)]
#[model(name = "metrics.ticks", version = 1)]
#[checkpoint(strategy = "fixed_events(1000)", storage = "memory")]
struct Ticks {
    #[checkpoint]
    sum: u64,
    lags: Vec<(Position, f64, f64)>,
}

#[krescent::handlers]
impl Ticks {
    fn tick(&mut self, e: &Tick, meta: &EventMeta) {
        self.sum += e.n;
        let mut recorded = recorded();
        let recorded = recorded.refresh();
        let lag = recorded.values.get(LAG_EVENTS).copied().unwrap_or(-1.0);
        if self.lags.last().is_none_or(|&(_, last, _)| last != lag) {
            let seconds = recorded.values.get(LAG_SECONDS).copied().unwrap_or(-1.0);
            self.lags.push((meta.position, lag, seconds));
        }
    }
}

fn ticks(from: u64, count: u64) -> Vec<NewEvent> {
    (from..from + count)
        .map(|n| NewEvent::new(&Tick { n }).expect("encode"))
        .collect()
}

#[tokio::test]
async fn counters_and_lag_after_a_replay_and_after_live_appends() {
    drop(recorded()); // installs the recorder
    let krescent = Krescent::new(InMemoryEventStore::new());
    krescent
        .store()
        .append("ticks", ExpectedVersion::NoStream, ticks(0, REPLAYED))
        .await
        .expect("append");

    let caught_up = krescent.catch_up(Ticks::default()).await.expect("catch up");
    assert_eq!(caught_up.processed, REPLAYED);
    {
        let mut recorded = recorded();
        let r = recorded.refresh();
        let (replayed, checkpoints) = (REPLAYED as f64, caught_up.checkpoints as f64);
        assert_eq!(r.get(EVENTS_PROCESSED_TOTAL), replayed);
        assert_eq!(r.get(EVENTS_AFTER_RESTART), replayed);
        assert!(caught_up.checkpoints >= 1);
        assert_eq!(r.get(CHECKPOINTS_TOTAL), checkpoints);
        assert_eq!(
            r.durations.len(),
            usize::try_from(caught_up.checkpoints).expect("small")
        );
        assert!(r.durations.iter().all(|d| *d >= 0.0));
        assert!(r.get(CHECKPOINT_BYTES) > 0.0, "the bucket has a sum");
        assert_eq!(
            (r.get(LAG_EVENTS), r.get(LAG_SECONDS)),
            (0.0, 0.0),
            "caught up"
        );
        assert!(
            r.labels_seen.iter().all(|(key, _)| key == "model"),
            "only the model label: {:?}",
            r.labels_seen
        );
    }
    // The runner reads more than one batch of 10,000 events; after each, the lag was the
    // head minus the batch's last position, and the seconds behind more than zero.
    let lags = &caught_up.model.lags;
    let behind: Vec<_> = lags.iter().filter(|(_, lag, _)| *lag > 0.0).collect();
    assert!(!behind.is_empty(), "a lag while replaying: {lags:?}");
    for &&(position, lag, seconds) in &behind {
        let expected = (REPLAYED - (position.get() - 1)) as f64;
        assert_eq!(lag, expected, "at {position}: {lags:?}");
        assert!(seconds > 0.0, "seconds behind at {position}: {seconds}");
    }

    // Live: restored from the checkpoint, then 25 appends.
    let running = krescent.stream(Ticks::default());
    running
        .reached(Position::new(REPLAYED))
        .await
        .expect("replayed");
    krescent
        .store()
        .append("ticks", ExpectedVersion::Any, ticks(REPLAYED, 25))
        .await
        .expect("append");
    running
        .reached(Position::new(REPLAYED + 25))
        .await
        .expect("live");
    let stopped = running.shutdown().await.expect("stop");
    assert_eq!(
        stopped.origin.restored_from(),
        Some(Position::new(REPLAYED))
    );
    assert_eq!(stopped.processed, 25);
    let mut recorded = recorded();
    let r = recorded.refresh();
    let total = (REPLAYED + 25) as f64;
    assert_eq!(r.get(EVENTS_PROCESSED_TOTAL), total);
    assert_eq!(r.get(EVENTS_AFTER_RESTART), 25.0, "since the restart");
    assert_eq!(
        (r.get(LAG_EVENTS), r.get(LAG_SECONDS)),
        (0.0, 0.0),
        "caught up live"
    );
    let checkpoints = (caught_up.checkpoints + stopped.checkpoints) as f64;
    assert_eq!(r.get(CHECKPOINTS_TOTAL), checkpoints);
    assert!(stopped.checkpoints >= 1, "the stop checkpoints");
}

/// The `prometheus` example serves the same metrics in the Prometheus text format.
#[test]
fn the_prometheus_example_serves_the_metrics() {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};

    let mut child =
        std::process::Command::new(krescent_testkit::examples::example_binary("prometheus"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--seconds",
                "3",
                "--every-ms",
                "50",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the example");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("read");
    let address = first
        .trim()
        .strip_prefix("serving metrics on http://")
        .and_then(|a| a.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("an address in {first:?}"))
        .to_owned();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut connection = std::net::TcpStream::connect(&address).expect("connect");
    connection
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    connection.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    for line in [
        "# TYPE krescent_events_processed_total counter",
        "krescent_events_processed_total{model=\"bookstore.copies\"}",
        "krescent_lag_events{model=\"bookstore.copies\"}",
        "krescent_checkpoints_total{model=\"bookstore.copies\"}",
    ] {
        assert!(response.contains(line), "`{line}` in {response}");
    }
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).expect("read");
    assert!(child.wait().expect("wait").success());
    assert!(rest.contains("summary: processed="), "{rest}");
}

fn ordered_float_inner(value: impl Into<f64>) -> f64 {
    value.into()
}
