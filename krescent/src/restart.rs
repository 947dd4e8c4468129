//! A streaming model restarted from its last checkpoint after a transient failure.

use std::time::{Instant, SystemTime};

use tokio::sync::watch;
use tracing::warn;

use crate::checkpoint::CheckpointTrigger;
use crate::krescent::CaughtUp;
use crate::model::EventModel;
use crate::running::{follow, Control, Status};
use crate::store::EventStore;
use crate::supervisor::report::describe;
use crate::supervisor::{ModelState, RestartPolicy};
use crate::{Error, Krescent};

/// What the restart loop tells a supervisor: a setback (backing off, failed) that the
/// model's [`Status`] cannot say, and how many restarts there were.
#[derive(Debug, Clone, Default)]
pub(crate) struct Attempts {
    pub(crate) setback: Option<ModelState>,
    pub(crate) restarts: u32,
}

/// Where each run's model comes from.
pub(crate) enum Models<M> {
    /// Built afresh for every run.
    Make(Box<dyn FnMut() -> M + Send>),
    /// One value ([`Krescent::stream`]): given to the first run, and after a failure restored
    /// in place from the last checkpoint, which overwrites every checkpointed field.
    Once(Option<M>),
}

/// Runs the models `models` gives until stopped: restores one, catches up and follows appends;
/// after a failure the policy restarts after (by default a transient one,
/// [`Error::is_transient`]) — the open transaction was rolled back — it waits as `policy` says
/// and starts again from the last checkpoint, with a fresh model or, for [`Models::Once`],
/// the same one restored in place (only when there is a checkpoint to restore: otherwise the
/// failure ends it). Any other failure, or one more than the policy allows, ends it.
pub(crate) async fn follow_restarting<S: EventStore, M: EventModel>(
    krescent: Krescent<S>,
    mut models: Models<M>,
    policy: RestartPolicy,
    trigger: CheckpointTrigger,
    control: &mut Control,
    attempts: &watch::Sender<Attempts>,
) -> Result<CaughtUp<M>, Error> {
    let mut failures = 0;
    // For `Models::Once`: the model a failed run handed back, and whether it holds events that
    // only a restored checkpoint can undo.
    let mut kept: Option<M> = None;
    let mut dirty = false;
    let mut last_error: Option<Error> = None;
    loop {
        let model = match &mut models {
            Models::Make(make) => make(),
            Models::Once(first) => match first.take().or_else(|| kept.take()) {
                Some(model) => model,
                None => {
                    return Err(last_error.unwrap_or(Error::Aborted {
                        model: M::NAME,
                        reason: "no model to restart".to_owned(),
                    }))
                }
            },
        };
        let began = Instant::now();
        let (error, back) = match krescent.start_keeping(model, trigger.clone()).await {
            Err((error, model)) => (error, model),
            Ok(mut runner) => {
                let restored = runner.origin.restored_from().is_some();
                if dirty && !restored {
                    // Nothing overwrote what the failed run applied: replaying over it would
                    // count events twice. (Dropping the runner rolls back what `begin` did.)
                    drop(runner);
                    let error = last_error.unwrap_or(Error::Aborted {
                        model: M::NAME,
                        reason: "no checkpoint to restart from".to_owned(),
                    });
                    return Err(failed(attempts, error));
                }
                match follow(krescent.store(), &mut runner, control).await {
                    Ok(()) => return Ok(runner.into_caught_up()),
                    Err(error) => {
                        // A fresh model from `Make` holds nothing of this run.
                        dirty = matches!(models, Models::Once(_));
                        (error, runner.into_caught_up().model)
                    }
                }
            }
        };
        if matches!(models, Models::Once(_)) {
            kept = Some(back);
        } else {
            drop(back);
        }
        if policy.healthy(began.elapsed()) {
            failures = 0;
        }
        failures += 1;
        if !policy.restarts_after(&error) || policy.exhausted(failures) || control.stop_requested()
        {
            return Err(failed(attempts, error));
        }
        let delay = policy.delay(failures);
        let error_text = describe(&error);
        warn!(model = M::NAME, error = %error_text, retry_in = ?delay, failure = failures, "model failed; restarting from its last checkpoint");
        attempts.send_modify(|a| {
            a.setback = Some(ModelState::BackingOff {
                attempt: failures,
                next_attempt: SystemTime::now() + delay,
                error: error_text,
            });
        });
        control.set_status(Status::Starting);
        if control.wait_or_stop(tokio::time::sleep(delay)).await {
            return Err(error);
        }
        last_error = Some(error);
        attempts.send_modify(|a| {
            a.setback = None;
            a.restarts += 1;
        });
    }
}

/// Reports the model failed with `error`, for good, and gives the error back.
fn failed(attempts: &watch::Sender<Attempts>, error: Error) -> Error {
    let error_text = describe(&error);
    attempts.send_modify(|a| a.setback = Some(ModelState::Failed { error: error_text }));
    error
}
