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

/// Runs a model made by `make` until stopped: restores it, catches up and follows appends;
/// after a failure the policy restarts after (by default a transient one,
/// [`Error::is_transient`]) — the open transaction was rolled back — it waits as `policy` says
/// and starts again with a fresh model from the last checkpoint. Any other failure, or one
/// more than the policy allows, ends it.
pub(crate) async fn follow_restarting<S: EventStore, M: EventModel>(
    krescent: Krescent<S>,
    mut make: impl FnMut() -> M,
    policy: RestartPolicy,
    trigger: CheckpointTrigger,
    control: &mut Control,
    attempts: &watch::Sender<Attempts>,
) -> Result<CaughtUp<M>, Error> {
    let mut failures = 0;
    loop {
        let began = Instant::now();
        let run = async {
            let runner = krescent.start(make(), trigger.clone()).await?;
            follow(krescent.store(), runner, control).await
        };
        let error = match run.await {
            Ok(done) => return Ok(done),
            Err(error) => error,
        };
        if policy.healthy(began.elapsed()) {
            failures = 0;
        }
        failures += 1;
        if !policy.restarts_after(&error) || policy.exhausted(failures) || control.stop_requested()
        {
            let error_text = describe(&error);
            attempts.send_modify(|a| {
                a.setback = Some(ModelState::Failed { error: error_text });
            });
            return Err(error);
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
        attempts.send_modify(|a| {
            a.setback = None;
            a.restarts += 1;
        });
    }
}
