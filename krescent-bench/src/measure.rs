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
