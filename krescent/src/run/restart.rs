//! Starting a model, and starting it again from its last checkpoint after a failure that its
//! restart policy restarts after.

use std::time::{Instant, SystemTime};

use tokio::sync::watch;
use tracing::warn;

use super::follow::follow;
use super::plan::{CaughtUp, Plan};
use super::restore::restore_keeping;
use super::runner::Runner;
use super::running::{Control, Status};
use crate::error::describe;
use crate::model::EventModel;
use crate::store::EventStore;
use crate::Error;

/// What the restart loop tells a supervisor: a setback (backing off, failed) that the
/// model's [`Status`] cannot say, and how many restarts there were.
#[derive(Debug, Clone, Default)]
pub(crate) struct Attempts {
    pub(crate) setback: Option<Setback>,
    pub(crate) restarts: u32,
}

/// A model's setback, as the supervisor reports it
/// ([`ModelState`](crate::supervisor::ModelState)).
#[derive(Debug, Clone)]
pub(crate) enum Setback {
    /// Failed; restarts at `next_attempt`.
    BackingOff {
        /// The consecutive failure this is (1 for the first).
        attempt: u32,
        /// When it restarts.
        next_attempt: SystemTime,
        /// What failed, with its causes.
        error: String,
    },
    /// Failed for good.
    Failed {
        /// What failed, with its causes.
        error: String,
    },
}

/// Where each start's model comes from.
pub(crate) enum Models<M> {
    /// Built afresh for every start.
    Make(Box<dyn FnMut() -> M + Send>),
    /// One value ([`Krescent::stream`](crate::Krescent::stream), `catch_up`): given to the
    /// first start, and after a failure restored in place from the last checkpoint, which
    /// overwrites every checkpointed field.
    Once(Option<M>),
}

/// Restores `model` as `plan` says and makes it a runner, handing the model back on failure
/// (for a restart in place); handles its parked events again first when the plan says so.
async fn start<S: EventStore, M: EventModel>(
    plan: &Plan<S>,
    model: M,
) -> Result<Runner<M>, (Error, M)> {
    let checkpointing = match &plan.checkpointing {
        Ok(checkpointing) => checkpointing.clone(),
        Err(unregistered) => return Err((unregistered.error(M::NAME), model)),
    };
    let on_error = match &plan.on_error {
        Ok(policy) => *policy,
        Err(source) => {
            let error = Error::InvalidErrorPolicy {
                model: M::NAME,
                source: source.clone(),
            };
            return Err((error, model));
        }
    };
    let start = restore_keeping(model, checkpointing.as_ref()).await?;
    let mut runner = Runner::begin(start, checkpointing, plan.trigger.clone(), on_error).await?;
    if plan.retry_parked || runner.parking.requested() {
        if let Err(error) = runner.retry_parked(&*plan.store, !plan.retry_parked).await {
            return Err((error, runner.into_caught_up().model));
        }
    }
    Ok(runner)
}

/// Runs the models `models` gives until they end as `plan.until` says: restores one, replays
/// (and follows) the store; after a failure the policy restarts after (by default a transient
/// one, [`Error::is_transient`]) — the open transaction was rolled back — it waits as the
/// policy says and starts again from the last checkpoint, with a fresh model or, for
/// [`Models::Once`], the same one restored in place (only when there is a checkpoint to
/// restore: otherwise the failure ends it). Any other failure, or one more than the policy
/// allows, ends it.
pub(crate) async fn restarting<S: EventStore, M: EventModel>(
    plan: &Plan<S>,
    mut models: Models<M>,
    control: &mut Control,
    attempts: &watch::Sender<Attempts>,
) -> Result<CaughtUp<M>, Error> {
    let policy = &plan.policy;
    let mut failures = 0;
    // For `Models::Once`: the model a failed run handed back, and whether it holds events that
    // only a restored checkpoint can undo.
    let mut kept: Option<M> = None;
    let mut dirty = false;
    let mut last_error: Option<Error> = None;
    loop {
        let mut model = match &mut models {
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
        // Each model of a blue/green projection enters the version (a fresh one places its
        // tables in the version's schema; a retired version stops here).
        if let Ok(Some(checkpointing)) = &plan.checkpointing {
            if let Err(error) =
                super::version::enter(&checkpointing.namespace, plan.segment, &mut model).await
            {
                return Err(failed(attempts, error));
            }
        }
        let began = Instant::now();
        let (error, back) = match start(plan, model).await {
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
                match follow(&*plan.store, &mut runner, control, plan.until).await {
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
            a.setback = Some(Setback::BackingOff {
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
    attempts.send_modify(|a| a.setback = Some(Setback::Failed { error: error_text }));
    error
}
