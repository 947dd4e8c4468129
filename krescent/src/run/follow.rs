//! Reading the store into a running model: the replay up to the store's head, then (unless the
//! run stops there) the live appends, until stopped; then the final checkpoint.

use std::time::Duration;

use tracing::warn;

use super::plan::Until;
use super::runner::Runner;
use super::running::{wait_or_stop, Control, Status};
use crate::fleet::Segment;
use crate::model::EventModel;
use crate::store::{EventStore, SegmentBatch, StoreError, BATCH};
use crate::{Error, Position};

/// While following, a batch of at least this many events means a backlog: the next batch is
/// read while it is applied. (A replay to the head always reads ahead.)
const READ_AHEAD_FROM: usize = 64;
/// The longest pause between retries after the store failed transiently.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Replays every event after the runner's position and, with [`Until::Stopped`], follows live
/// appends until stopped, checkpointing when idle; then takes the final checkpoint. While
/// following, transient store failures are retried with backoff from the last processed
/// position; any other failure (with [`Until::Head`], every failure) ends it, and the restart
/// loop (`restart.rs`) decides what comes next.
pub(crate) async fn follow<S: EventStore, M: EventModel>(
    store: &S,
    runner: &mut Runner<M>,
    control: &mut Control,
    until: Until,
) -> Result<(), Error> {
    let following = until == Until::Stopped;
    let mut caught_up_at = None;
    let mut backoff = Duration::from_millis(50);
    // The batch after the one applied last, read while it was applied.
    let mut read_ahead = None;
    control.set_status(Status::Running);
    control.set_parked(runner.parked());
    while !*control.stop.borrow() {
        let read = match read_ahead.take() {
            Some((after, read)) if after == runner.position => read,
            _ => read(store, runner.segment, runner.position, false).await,
        };
        let read = match read {
            Ok(batch) => batch,
            Err(e) if following && e.is_transient() => {
                warn!(error = %e, retry_in = ?backoff, "event store unavailable; retrying");
                if wait_or_stop(&mut control.stop, tokio::time::sleep(backoff)).await {
                    break;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(source) => {
                return Err(Error::Store {
                    model: M::NAME,
                    source,
                })
            }
        };
        backoff = Duration::from_millis(50);
        let after = read.read_to();
        let batch = read.events();
        if !batch.is_empty() {
            runner.observe_head(store).await;
            if following && batch.len() < READ_AHEAD_FROM {
                // Live events, a few at a time: the handler runs without waiting for a read
                // to be started, and the next read is most likely empty anyway.
                runner.apply(batch).await?;
            } else {
                // The next batch is read while this one is applied: a store that waits for a
                // database keeps it busy meanwhile.
                let (next, applied) = tokio::join!(
                    self::read(store, runner.segment, after, true),
                    runner.apply(batch)
                );
                applied?;
                read_ahead = Some((after, next));
            }
            // A segment's read may have seen past its last event: none up to there is its.
            runner.advance(after);
            control.progress.send_replace(runner.position);
            control.set_parked(runner.parked());
            continue;
        }
        // A quiet segment: nothing of its own up to the head the read saw.
        runner.advance(after);
        runner.caught_up();
        if caught_up_at != Some(runner.position) {
            caught_up_at = Some(runner.position);
            runner.model.on_caught_up(runner.position);
            control.progress.send_replace(runner.position);
        }
        if !following {
            break;
        }
        if runner.due_when_idle() {
            runner.checkpoint_idle().await?;
        }
        // Parked events an operator dropped or asked to retry meanwhile.
        runner.poll_parked(store).await?;
        control.set_parked(runner.parked());
        let deadline = [runner.idle_deadline(), runner.parked_deadline()]
            .into_iter()
            .flatten()
            .min();
        let position = runner.position;
        let wake = async {
            tokio::select! {
                woke = store.wait_for_append(position) => if let Err(e) = woke {
                    warn!(error = %e, "waiting for appends failed; polling");
                    tokio::time::sleep(backoff).await;
                },
                () = sleep_until(deadline) => {},
            }
        };
        if wait_or_stop(&mut control.stop, wake).await {
            break;
        }
    }
    runner.finish().await
}

/// The events after `after`: a segment's (see [`EventStore::read_segment`]), or every event;
/// `ahead` for a read awaited while the batch before is applied.
async fn read<S: EventStore>(
    store: &S,
    segment: Option<Segment>,
    after: Position,
    ahead: bool,
) -> Result<SegmentBatch, StoreError> {
    match (segment, ahead) {
        (Some(segment), false) => store.read_segment(segment, after, BATCH).await,
        (Some(segment), true) => store.read_segment_ahead(segment, after, BATCH).await,
        (None, false) => Ok(SegmentBatch::unfiltered(
            store.read_batch(after, BATCH).await?,
            after,
        )),
        (None, true) => Ok(SegmentBatch::unfiltered(
            store.read_ahead(after, BATCH).await?,
            after,
        )),
    }
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
