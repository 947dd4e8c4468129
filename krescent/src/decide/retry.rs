//! How long a decision waits before it retries after a conflict.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// The longest wait between two attempts.
const CAP: Duration = Duration::from_millis(250);

/// Exponential backoff with full jitter: before retry `n` (from 0) a decision sleeps a uniformly
/// random time in `[0, min(base × 2ⁿ, 250 ms)]`, so that deciders that conflicted together do
/// not retry together.
///
/// The randomness comes from `std`'s `RandomState` (seeded randomly per process), hashing the
/// attempt and the clock: enough to spread deciders apart, and no RNG crate needed.
pub(crate) fn delay(base: Duration, retry: u32) -> Duration {
    let ceiling = base
        .saturating_mul(1u32.checked_shl(retry.min(16)).unwrap_or(u32::MAX))
        .min(CAP);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(retry);
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(hasher.finish() % nanos.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_the_growing_ceiling_and_vary() {
        let base = Duration::from_millis(2);
        for retry in 0..40 {
            let ceiling = (base * 2u32.pow(retry.min(16))).min(CAP);
            assert!(delay(base, retry) <= ceiling, "retry {retry}");
        }
        let samples: std::collections::BTreeSet<_> = (0..50).map(|_| delay(base, 3)).collect();
        assert!(samples.len() > 10, "jittered: {samples:?}");
        assert_eq!(delay(Duration::ZERO, 5), Duration::ZERO);
    }
}
