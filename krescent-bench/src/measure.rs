//! Timing: medians of repeated runs, and the figure lines.

use std::future::Future;
use std::time::{Duration, Instant};

/// Runs `work` `reps` times and returns the median duration. What `work` returns is dropped
/// after the clock stops: the time to free a result is not the time to make it.
pub(crate) async fn median<T, E, F, Fut>(reps: usize, mut work: F) -> Result<Duration, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        let result = work().await?;
        times.push(start.elapsed());
        drop(std::hint::black_box(result));
    }
    times.sort_unstable();
    Ok(times[times.len() / 2])
}

/// Runs `a` and `b` in turns, `reps` times each, and returns the median duration of each: a
/// change in the machine's load during the run (other builds, a server's background work)
/// weighs on both alike, as it would not on two medians taken one after the other.
pub(crate) async fn medians_in_turns<TA, TB, E, FA, FutA, FB, FutB>(
    reps: usize,
    mut a: FA,
    mut b: FB,
) -> Result<(Duration, Duration), E>
where
    FA: FnMut() -> FutA,
    FutA: Future<Output = Result<TA, E>>,
    FB: FnMut() -> FutB,
    FutB: Future<Output = Result<TB, E>>,
{
    let (mut times_a, mut times_b) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
    for _ in 0..reps {
        let start = Instant::now();
        let result = a().await?;
        times_a.push(start.elapsed());
        drop(std::hint::black_box(result));
        let start = Instant::now();
        let result = b().await?;
        times_b.push(start.elapsed());
        drop(std::hint::black_box(result));
    }
    times_a.sort_unstable();
    times_b.sort_unstable();
    Ok((times_a[reps / 2], times_b[reps / 2]))
}

/// Prints a latency figure: from each of `sent` to the `handled` beside it, the median, the
/// 90th and 99th percentiles and the maximum, in microseconds.
pub(crate) fn latency(figure: &str, sent: &[Instant], handled: &[Instant]) {
    let mut latencies: Vec<Duration> = handled
        .iter()
        .zip(sent)
        .map(|(handled, sent)| handled.saturating_duration_since(*sent))
        .collect();
    latencies.sort_unstable();
    let percentile = |p: usize| {
        latencies
            .get((latencies.len() * p / 100).min(latencies.len().saturating_sub(1)))
            .map_or(0, Duration::as_micros)
    };
    println!(
        "bench {figure} p50_us={} p99_us={} p90_us={} max_us={}",
        percentile(50),
        percentile(99),
        percentile(90),
        latencies.last().map_or(0, Duration::as_micros)
    );
}

/// Events per second.
#[allow(clippy::cast_precision_loss)]
pub(crate) fn rate(events: usize, time: Duration) -> f64 {
    events as f64 / time.as_secs_f64()
}

/// Prints a throughput figure: the ratio of krescent's rate to the baseline's.
pub(crate) fn throughput(figure: &str, events: usize, krescent: Duration, baseline: Duration) {
    let (k, b) = (rate(events, krescent), rate(events, baseline));
    println!(
        "bench {figure} ratio={:.3} krescent={k:.0} baseline={b:.0}",
        k / b
    );
}
