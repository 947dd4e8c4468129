//! How long a lease lasts and how often it is renewed and polled.

use std::time::Duration;

/// Who holds a model's lease now, as
/// [`PostgresCheckpointStorage::lease`](crate::checkpoint::storage::PostgresCheckpointStorage::lease) reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    /// The holder's id: its process id, a colon, and a random id of its run.
    pub holder: String,
    /// The epoch it took the lease under.
    pub epoch: u64,
}

/// The timing of a model's lease; set it with [`Configure::lease`](crate::Configure::lease).
///
/// A holder renews its lease every `heartbeat`; a lease not renewed for `ttl` (measured by the
/// database server's clock) may be taken over; a standby tries to take it every `poll`. So a
/// standby takes over at most `ttl + poll` after the holder died. Keep `heartbeat` well below
/// `ttl` (a third, as the default does), or a holder busy with a slow database loses its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long a lease lasts after its last renewal. Default 3 s.
    pub ttl: Duration,
    /// How often the holder renews it. Default 1 s.
    pub heartbeat: Duration,
    /// How often a standby tries to take it. Default 500 ms.
    pub poll: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            ttl: Duration::from_secs(3),
            heartbeat: Duration::from_secs(1),
            poll: Duration::from_millis(500),
        }
    }
}
