//! Sharing a split model's segments out over the instances that run it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Krescent;
use crate::fleet::Segment;
use crate::model::EventModel;
use crate::run::{CaughtUp, Running, Status};
use crate::store::EventStore;
use crate::{Error, Position};

/// Builds the model of a segment, for each start of the segment.
type Make<M> = Arc<Mutex<dyn FnMut(Segment) -> M + Send>>;

/// The segments this instance runs, each with its status and position.
type Statuses = Arc<Mutex<BTreeMap<Segment, (watch::Receiver<Status>, watch::Receiver<Position>)>>>;

/// What the segments this instance ran ended with: each segment's model, as its last run here
/// left it.
pub type SegmentsEnded<M> = Result<Vec<(Segment, CaughtUp<M>)>, Error>;

/// The segments of a split model that this instance runs, from
/// [`Krescent::stream_segments`].
///
/// With a [`PostgresCheckpointStorage`](crate::checkpoint::storage::PostgresCheckpointStorage),
/// every instance that runs the model is a member of its fleet (a lease row of its own,
/// renewed like any lease), and every member runs a fair share of the segments: with `N`
/// segments over `k` live members, each runs `N / k` of them, and the first `N % k` members (by
/// member id) one more. A member checks the fleet every [`LeaseConfig::poll`](crate::fleet::LeaseConfig):
/// one above its share stops its surplus segments gracefully (final commit, lease released);
/// one below it starts segments whose lease nobody holds. So the segments spread over the
/// instances, move to the survivors when one dies (its member lease and its segments' leases
/// expire), and rebalance when one joins. Each segment is run as
/// [`Krescent::stream_with`] runs a model, holding the segment's lease (fenced like any lease:
/// see [`crate::fleet`]).
///
/// With any other storage (memory, file: one process), this instance runs every segment.
#[derive(Debug)]
pub struct RunningSegments<M> {
    stop: watch::Sender<bool>,
    statuses: Statuses,
    fenced: Arc<AtomicU64>,
    task: JoinHandle<SegmentsEnded<M>>,
}

impl<M: EventModel> RunningSegments<M> {
    /// The segments this instance runs now, and what each is doing ([`Status::Standby`]: its
    /// lease was taken by another instance first; it is given up at the next check).
    #[must_use]
    pub fn segments(&self) -> Vec<(Segment, Status)> {
        lock(&self.statuses)
            .iter()
            .map(|(segment, (status, _))| (*segment, *status.borrow()))
            .collect()
    }

    /// The lowest position the segments this instance processes have reached
    /// ([`Position::START`] while it processes none). Every segment's position moves over the
    /// other segments' events too, so once every segment here is at `p`, every event of theirs
    /// up to `p` is processed. Only segments already processing ([`Status::Running`]) count: a
    /// segment still starting (a split projection's segments start one at a time) or on standby
    /// does not hold it back, so to wait for all of them, wait for [`held`](Self::held) to list
    /// them too.
    #[must_use]
    pub fn position(&self) -> Position {
        lock(&self.statuses)
            .values()
            .filter(|(status, _)| *status.borrow() == Status::Running)
            .map(|(_, position)| *position.borrow())
            .min()
            .unwrap_or(Position::START)
    }

    /// The segments this instance processes events of now ([`Status::Running`]).
    #[must_use]
    pub fn held(&self) -> Vec<Segment> {
        self.segments()
            .into_iter()
            .filter(|(_, status)| *status == Status::Running)
            .map(|(segment, _)| segment)
            .collect()
    }

    /// How many times a segment run here was fenced: another instance took its lease over
    /// while this one ran it (it was paused or cut off past the lease), so its last commit was
    /// rejected and rolled back, or its heartbeat found the lease taken before it committed
    /// again; the segment was given up.
    #[must_use]
    pub fn fenced(&self) -> u64 {
        self.fenced.load(Ordering::Relaxed)
    }

    /// Whether the task sharing the segments has ended (after a segment failed, or a
    /// shutdown).
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops every segment gracefully (as [`Running::shutdown`] does) and leaves the fleet, so
    /// that the other members take the segments over at their next check.
    ///
    /// # Errors
    /// The first error a segment ended with (other than being fenced, which only means another
    /// instance took the segment over): a segment that failed for good ends the sharing, and
    /// every other segment is stopped.
    pub async fn shutdown(self) -> SegmentsEnded<M> {
        let _ = self.stop.send(true);
        self.task.await.map_err(|e| Error::Aborted {
            model: M::NAME,
            reason: e.to_string(),
        })?
    }
}

fn lock<T: ?Sized>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<S: EventStore> Krescent<S> {
    /// Runs this instance's share of the segments of `M`, a model split by
    /// `#[model(segments = N)]`; `make` builds a segment's model for each of its starts. See
    /// [`RunningSegments`] for how the segments are shared out. A model that is not split
    /// runs whole, as [`stream_with`](Self::stream_with) runs it.
    pub fn stream_segments<M: EventModel>(
        &self,
        make: impl FnMut(Segment) -> M + Send + 'static,
    ) -> RunningSegments<M> {
        let (stop, stop_rx) = watch::channel(false);
        let statuses = Statuses::default();
        let fenced = Arc::new(AtomicU64::new(0));
        let make: Make<M> = Arc::new(Mutex::new(make));
        let sharing = Sharing {
            krescent: self.clone(),
            make,
            statuses: statuses.clone(),
            fenced: fenced.clone(),
            streams: BTreeMap::new(),
        };
        let span = tracing::info_span!("segments", model = M::NAME);
        let task = tokio::spawn(tracing::Instrument::instrument(sharing.run(stop_rx), span));
        RunningSegments {
            stop,
            statuses,
            fenced,
            task,
        }
    }
}

/// The sharing task's state: the segments it runs.
struct Sharing<S, M> {
    krescent: Krescent<S>,
    make: Make<M>,
    statuses: Statuses,
    fenced: Arc<AtomicU64>,
    streams: BTreeMap<Segment, Running<M>>,
}

impl<S: EventStore, M: EventModel> Sharing<S, M> {
    async fn run(mut self, mut stop: watch::Receiver<bool>) -> SegmentsEnded<M> {
        let checkpointing = self.krescent.checkpointing_of::<M>()?;
        if M::SEGMENTS == 1 {
            let make = self.make.clone();
            let whole = Segment::all(1).next().ok_or(Error::Segmented {
                model: M::NAME,
                segments: 1,
                asked: None,
            })?;
            let running = self.krescent.stream_with(move || (lock(&make))(whole));
            self.track(whole, running);
            return self.until_stopped(&mut stop).await;
        }
        let checkpointing = checkpointing.ok_or(Error::NotCheckpointed { model: M::NAME })?;
        #[cfg(feature = "postgres")]
        if let Some(leases) = checkpointing.storage.leases() {
            return self.share(&leases, &mut stop).await;
        }
        #[cfg(not(feature = "postgres"))]
        let _ = checkpointing;
        for segment in Segment::all(M::SEGMENTS) {
            self.start(segment);
        }
        self.until_stopped(&mut stop).await
    }

    /// Starts running `segment` here (it waits as a standby while another instance holds it).
    fn start(&mut self, segment: Segment) {
        let make = self.make.clone();
        let running = self
            .krescent
            .for_segment(segment)
            .stream_with(move || (lock(&make))(segment));
        self.track(segment, running);
    }

    /// Keeps `running`, the run of `segment`, with its status and position for the handle.
    fn track(&mut self, segment: Segment, running: Running<M>) {
        lock(&self.statuses).insert(
            segment,
            (running.status_changes(), running.progress_changes()),
        );
        self.streams.insert(segment, running);
    }

    /// Runs the segments until a stop, or until one of them fails; then stops the others.
    async fn until_stopped(mut self, stop: &mut watch::Receiver<bool>) -> SegmentsEnded<M> {
        // A segment's task ends by itself only on a failure: then every segment stops.
        let mut checks = tokio::time::interval(std::time::Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = checks.tick() => {
                    if self.streams.values().any(Running::is_finished) {
                        break;
                    }
                }
            }
        }
        self.stop_all().await
    }

    /// Stops every segment; the models, or the first error.
    async fn stop_all(&mut self) -> SegmentsEnded<M> {
        let mut ended = Vec::new();
        let mut first_error = None;
        for (segment, running) in std::mem::take(&mut self.streams) {
            lock(&self.statuses).remove(&segment);
            match running.shutdown().await {
                Ok(caught_up) => ended.push((segment, caught_up)),
                Err(Error::Fenced { .. }) => {
                    self.fenced.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(ended), Err)
    }
}

/// Taking part in a fleet: with leases, in PostgreSQL.
#[cfg(feature = "postgres")]
impl<S: EventStore, M: EventModel> Sharing<S, M> {
    /// Takes part in the fleet until a stop or a segment's failure.
    async fn share(
        mut self,
        leases: &crate::fleet::Leases,
        stop: &mut watch::Receiver<bool>,
    ) -> SegmentsEnded<M> {
        let config = self
            .krescent
            .overrides
            .get(M::NAME)
            .and_then(|o| o.lease)
            .unwrap_or_default();
        let Some(mut member) = leases.join(M::NAME, M::SEGMENTS, config).await else {
            return Ok(Vec::new());
        };
        let mut me = member.fence().namespace.clone();
        let all: Vec<Segment> = Segment::all(M::SEGMENTS).collect();
        let namespaces: Vec<String> = all.iter().map(|s| s.namespace(M::NAME)).collect();
        let mut ticks = tokio::time::interval(config.poll);
        let mut failure = None;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            if let Some(e) = self.reap().await {
                failure = Some(e);
                break;
            }
            let (members, held) = match (
                leases.members(M::NAME, M::SEGMENTS).await,
                leases.held(&namespaces).await,
            ) {
                (Ok(members), Ok(held)) => (members, held),
                (Err(error), _) | (_, Err(error)) => {
                    tracing::warn!(model = M::NAME, %error, "reading the fleet failed; retrying");
                    continue;
                }
            };
            let Some(rank) = members.iter().position(|m| *m == me) else {
                // This instance's member lease expired (it was paused, or cut off): it joins
                // again, and counts from the next check.
                tracing::warn!(
                    model = M::NAME,
                    "this instance's membership expired; joining again"
                );
                if let Some(again) = leases.join(M::NAME, M::SEGMENTS, config).await {
                    member.release().await;
                    member = again;
                    me.clone_from(&member.fence().namespace);
                }
                continue;
            };
            let share = crate::fleet::fair_share(M::SEGMENTS, members.len(), rank);
            let share = usize::try_from(share).unwrap_or(usize::MAX);
            let held_elsewhere = |segment: &Segment| Self::holder(&held, *segment).is_some();
            // Above the share: standbys go first, then the highest segments.
            let mut surplus: Vec<Segment> = self.lost_races(&held);
            let mut keep: Vec<Segment> = self
                .streams
                .keys()
                .filter(|s| !surplus.contains(s))
                .copied()
                .collect();
            while keep.len() > share {
                surplus.extend(keep.pop());
            }
            for segment in surplus {
                tracing::info!(model = M::NAME, %segment, share, "giving the segment up");
                if let Some(e) = self.give_up(segment).await {
                    failure = Some(e);
                    break;
                }
            }
            if failure.is_some() {
                break;
            }
            for segment in &all {
                if self.streams.len() >= share {
                    break;
                }
                if !self.streams.contains_key(segment) && !held_elsewhere(segment) {
                    tracing::info!(model = M::NAME, %segment, share, "taking the segment");
                    self.start(*segment);
                }
            }
        }
        let ended = self.stop_all().await;
        member.release().await;
        match failure {
            Some(e) => Err(e),
            None => ended,
        }
    }

    /// The holder of `segment`'s live lease, among `held` (namespace, holder).
    fn holder(held: &[(String, String)], segment: Segment) -> Option<&str> {
        let namespace = segment.namespace(M::NAME);
        held.iter()
            .find(|(n, _)| *n == namespace)
            .map(|(_, h)| h.as_str())
    }

    /// The segments here waiting as standbys for a lease that another process holds: they
    /// lost the race for it. (A running segment whose lease another process took, this one
    /// paused past it, stops by itself at its lease's next heartbeat, fenced, and is reaped.)
    fn lost_races(&self, held: &[(String, String)]) -> Vec<Segment> {
        self.streams
            .iter()
            .filter(|(s, r)| r.status() == Status::Standby && Self::holder(held, **s).is_some())
            .map(|(s, _)| *s)
            .collect()
    }

    /// Stops `segment` here, gracefully; an error other than being fenced.
    async fn give_up(&mut self, segment: Segment) -> Option<Error> {
        let running = self.streams.remove(&segment)?;
        lock(&self.statuses).remove(&segment);
        match running.shutdown().await {
            Ok(_) => None,
            Err(Error::Fenced { .. }) => {
                self.fenced.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(e) => Some(e),
        }
    }

    /// Collects the segments whose task ended by itself: fenced ones are given up (another
    /// instance holds them), any other failure ends the sharing.
    async fn reap(&mut self) -> Option<Error> {
        let ended: Vec<Segment> = self
            .streams
            .iter()
            .filter(|(_, running)| running.is_finished())
            .map(|(segment, _)| *segment)
            .collect();
        for segment in ended {
            if let Some(e) = self.give_up(segment).await {
                return Some(e);
            }
        }
        None
    }
}
