//! The supervisor: many models in one process, restarted from their last checkpoint with
//! backoff after a transient failure, failed for good after a permanent one, reported, and
//! stopped together with their final checkpoints.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use krescent::prelude::*;
use krescent::store::ExpectedVersion;
use krescent::supervisor::{ModelReport, ModelState, RestartPolicy, Supervisor};
use krescent::{Error, Origin, Transient};

#[derive(Event, Serialize, Deserialize)]
#[event(name = "counted")]
struct Counted {
    n: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("the service refused event {0}")]
struct Refused(Position);

/// Counts events; fails transiently at `fail_at` for as long as `failures_left` is above 0.
#[derive(EventModel)]
#[model(name = "flaky")]
#[checkpoint(strategy = "fixed_events(5)", storage = "memory")]
struct Flaky {
    #[checkpoint]
    events: u64,
    #[checkpoint]
    sum: u64,
    fail_at: Position,
    failures_left: Arc<AtomicU32>,
}

#[krescent::handlers]
impl Flaky {
    fn counted(&mut self, e: &Counted, meta: &EventMeta) -> Result<(), Transient> {
        self.events += 1;
        self.sum += e.n;
        if meta.position == self.fail_at
            && self
                .failures_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(Transient::new(Refused(meta.position)));
        }
        Ok(())
    }
}

/// Counts events; fails permanently (a bug) at `fail_at`.
#[derive(EventModel)]
#[model(name = "buggy")]
#[checkpoint(strategy = "fixed_events(5)", storage = "memory")]
struct Buggy {
    #[checkpoint]
    events: u64,
    fail_at: Position,
}

#[krescent::handlers]
impl Buggy {
    fn counted(&mut self, _: &Counted, meta: &EventMeta) -> Result<(), Refused> {
        if meta.position == self.fail_at {
            return Err(Refused(meta.position));
        }
        self.events += 1;
        Ok(())
    }
}

/// Checkpoints only when stopped.
#[derive(EventModel, Default)]
#[model(name = "on_stop")]
#[checkpoint(strategy = "on_shutdown", storage = "memory")]
struct OnStop {
    #[checkpoint]
    events: u64,
}

#[krescent::handlers]
impl OnStop {
    fn counted(&mut self, _: &Counted) {
        self.events += 1;
    }
}

/// Another model that checkpoints only when stopped.
#[derive(EventModel, Default)]
#[model(name = "on_stop.sum")]
#[checkpoint(strategy = "on_shutdown", storage = "memory")]
struct OnStopSum {
    #[checkpoint]
    sum: u64,
}

#[krescent::handlers]
impl OnStopSum {
    fn counted(&mut self, e: &Counted) {
        self.sum += e.n;
    }
}

async fn krescent_with(events: u64) -> (Krescent<InMemoryEventStore>, Position) {
    let krescent = Krescent::new(InMemoryEventStore::new());
    let mut head = Position::START;
    for n in 1..=events {
        let event = NewEvent::new(&Counted { n }).expect("encode");
        head = krescent
            .store()
            .append("counts", ExpectedVersion::Any, vec![event])
            .await
            .expect("append")
            .position;
    }
    (krescent, head)
}

/// Polls the report until `wanted` holds for the model at `index`; at most 20 s.
async fn wait_report<S: krescent::store::EventStore>(
    supervisor: &Supervisor<S>,
    index: usize,
    what: &str,
    wanted: impl Fn(&ModelReport) -> bool,
) -> ModelReport {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let report = supervisor.report().swap_remove(index);
        if wanted(&report) {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the report stayed {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn sum_to(n: u64) -> u64 {
    n * (n + 1) / 2
}

#[tokio::test]
async fn supervisor_restarts_after_a_transient_handler_error_with_backoff() {
    let (krescent, head) = krescent_with(20).await;
    let failures_left = Arc::new(AtomicU32::new(2));
    let made = Arc::new(AtomicU32::new(0));
    let (left, count) = (failures_left.clone(), made.clone());
    let policy = RestartPolicy::default()
        .initial_backoff(Duration::from_millis(300))
        .max_backoff(Duration::from_secs(1));
    let supervisor = Supervisor::new(krescent.clone())
        .with_policy(policy)
        .model(move || {
            count.fetch_add(1, Ordering::SeqCst);
            Flaky {
                events: 0,
                sum: 0,
                fail_at: Position::new(12),
                failures_left: left.clone(),
            }
        });

    let backing_off = wait_report(&supervisor, 0, "first failure", |r| {
        matches!(r.state, ModelState::BackingOff { .. })
    })
    .await;
    let ModelState::BackingOff {
        attempt,
        next_attempt,
        error,
    } = backing_off.state
    else {
        unreachable!()
    };
    assert_eq!(attempt, 1);
    assert!(error.contains("the service refused event 12"), "{error}");
    assert!(next_attempt > std::time::SystemTime::now() - Duration::from_millis(300));
    assert_eq!(backing_off.name, "flaky");

    // The second failure waits twice as long as the first.
    let second = wait_report(&supervisor, 0, "second failure", |r| {
        matches!(r.state, ModelState::BackingOff { attempt: 2, .. })
    })
    .await;
    assert_eq!(second.restarts, 1);
    let running = wait_report(&supervisor, 0, "recovered", |r| {
        r.state == ModelState::Running && r.position == head
    })
    .await;
    assert_eq!(running.restarts, 2);
    assert_eq!(failures_left.load(Ordering::SeqCst), 0);
    assert_eq!(
        made.load(Ordering::SeqCst),
        3,
        "a fresh model for each start"
    );

    let exits = supervisor.shutdown().await;
    assert_eq!(exits.len(), 1);
    assert_eq!(exits[0].result.as_ref().expect("stopped"), &head);
    // Restarted from the checkpoint at 10 each time, with a fresh model: every event counted
    // exactly once.
    let restored = krescent
        .restore_only(Flaky {
            events: 0,
            sum: 0,
            fail_at: Position::START,
            failures_left: Arc::default(),
        })
        .await
        .expect("restore");
    assert_eq!(restored.origin, Origin::Restored { position: head });
    assert_eq!(
        (restored.model.events, restored.model.sum),
        (20, sum_to(20))
    );
}

#[tokio::test]
async fn supervisor_reports_a_permanent_error_as_failed_and_keeps_the_others_running() {
    let (krescent, head) = krescent_with(10).await;
    let supervisor = Supervisor::new(krescent.clone())
        .with_policy(RestartPolicy::default().initial_backoff(Duration::from_millis(10)))
        .model(|| Buggy {
            events: 0,
            fail_at: Position::new(7),
        })
        .model(OnStop::default);
    let failed = wait_report(&supervisor, 0, "the bug", |r| {
        matches!(r.state, ModelState::Failed { .. })
    })
    .await;
    let ModelState::Failed { error } = &failed.state else {
        unreachable!()
    };
    assert!(error.contains("the service refused event 7"), "{error}");
    assert!(
        error.contains("model `buggy` failed on `counted` event at position 7"),
        "{error}"
    );
    assert_eq!(failed.restarts, 0, "a permanent error is not retried");
    // It stays failed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(supervisor.report()[0].state, failed.state);
    let other = wait_report(&supervisor, 1, "the other model", |r| {
        r.state == ModelState::Running && r.position == head
    })
    .await;
    assert_eq!(other.name, "on_stop");

    let exits = supervisor.shutdown().await;
    match &exits[0].result {
        Err(Error::Handler { position, .. }) => assert_eq!(*position, Position::new(7)),
        other => panic!("expected the handler's error, got {other:?}"),
    }
    assert_eq!(exits[1].result.as_ref().expect("stopped"), &head);
    // The failed model's last checkpoint is before the failed event.
    let restored = krescent
        .restore_only(Buggy {
            events: 0,
            fail_at: Position::START,
        })
        .await
        .expect("restore");
    assert_eq!(
        restored.origin,
        Origin::Restored {
            position: Position::new(5)
        }
    );
    assert_eq!(restored.model.events, 5);
}

#[tokio::test]
async fn supervisor_fails_a_model_after_max_restarts() {
    let (krescent, _) = krescent_with(3).await;
    let supervisor = Supervisor::new(krescent)
        .with_policy(
            RestartPolicy::default()
                .initial_backoff(Duration::from_millis(5))
                .max_restarts(2),
        )
        .model(|| Flaky {
            events: 0,
            sum: 0,
            fail_at: Position::new(2),
            failures_left: Arc::new(AtomicU32::new(u32::MAX)),
        });
    let failed = wait_report(&supervisor, 0, "exhausted", |r| {
        matches!(r.state, ModelState::Failed { .. })
    })
    .await;
    assert_eq!(failed.restarts, 2, "{failed:?}");
    let exits = supervisor.shutdown().await;
    let error = exits[0].result.as_ref().expect_err("failed");
    assert!(
        error.is_transient(),
        "the last error is the transient one: {error}"
    );
}

#[tokio::test]
async fn supervisor_shutdown_stops_every_model_with_its_final_checkpoint() {
    let (krescent, head) = krescent_with(30).await;
    let supervisor = Supervisor::new(krescent.clone())
        .model(OnStop::default)
        .model(OnStopSum::default);
    tokio::time::timeout(Duration::from_secs(20), supervisor.reached(head))
        .await
        .expect("both models reach the head");
    let report = supervisor.report();
    assert_eq!(
        report
            .iter()
            .map(|r| (r.name, r.state.clone(), r.position))
            .collect::<Vec<_>>(),
        vec![
            ("on_stop", ModelState::Running, head),
            ("on_stop.sum", ModelState::Running, head),
        ]
    );
    // Nothing checkpointed while they ran.
    let before = krescent
        .restore_only(OnStop::default())
        .await
        .expect("restore");
    assert_eq!(before.origin, Origin::Scratch);

    let exits = supervisor.shutdown().await;
    assert_eq!(
        exits
            .iter()
            .map(|e| (e.name, *e.result.as_ref().expect("stopped")))
            .collect::<Vec<_>>(),
        vec![("on_stop", head), ("on_stop.sum", head)]
    );
    let count = krescent
        .restore_only(OnStop::default())
        .await
        .expect("restore");
    assert_eq!(count.origin, Origin::Restored { position: head });
    assert_eq!(count.model.events, 30);
    let sum = krescent
        .restore_only(OnStopSum::default())
        .await
        .expect("restore");
    assert_eq!(sum.origin, Origin::Restored { position: head });
    assert_eq!(sum.model.sum, sum_to(30));
}

#[tokio::test]
async fn stream_with_restarts_after_a_transient_handler_error() {
    let (krescent, head) = krescent_with(20).await;
    let failures_left = Arc::new(AtomicU32::new(1));
    let left = failures_left.clone();
    let running = krescent.stream_with(move || Flaky {
        events: 0,
        sum: 0,
        fail_at: Position::new(17),
        failures_left: left.clone(),
    });
    tokio::time::timeout(Duration::from_secs(20), running.reached(head))
        .await
        .expect("in time")
        .expect("recovered");
    assert_eq!(failures_left.load(Ordering::SeqCst), 0);
    let done = running.shutdown().await.expect("shutdown");
    // Restored from a checkpoint before the failed event (which one the snapshot budget
    // decides): every event counted exactly once.
    assert_eq!((done.model.events, done.model.sum), (20, sum_to(20)));
    let restored_from = done.origin.restored_from().expect("restored");
    assert!(restored_from < Position::new(17), "{restored_from}");
}

#[tokio::test]
async fn a_permanent_handler_error_ends_stream_with() {
    let (krescent, _) = krescent_with(10).await;
    let running = krescent.stream_with(|| Buggy {
        events: 0,
        fail_at: Position::new(3),
    });
    let ended = tokio::time::timeout(Duration::from_secs(20), running.reached(Position::new(10)))
        .await
        .expect("in time");
    assert!(matches!(ended, Err(Error::Stopped { .. })), "{ended:?}");
    match running.shutdown().await {
        Err(e @ Error::Handler { .. }) => assert!(!e.is_transient()),
        other => panic!(
            "expected the handler's error, got {:?}",
            other.map(|c| c.position)
        ),
    }
}

#[tokio::test]
async fn supervisor_restarts_what_the_policy_says() {
    let (krescent, _) = krescent_with(10).await;
    let made = Arc::new(AtomicU32::new(0));
    let count = made.clone();
    let supervisor = Supervisor::new(krescent)
        .with_policy(
            RestartPolicy::default()
                .initial_backoff(Duration::from_millis(5))
                .max_restarts(3)
                .restart_if(|e| matches!(e, Error::Handler { .. })),
        )
        .model(move || {
            count.fetch_add(1, Ordering::SeqCst);
            Buggy {
                events: 0,
                fail_at: Position::new(7),
            }
        });
    let failed = wait_report(&supervisor, 0, "exhausted", |r| {
        matches!(r.state, ModelState::Failed { .. })
    })
    .await;
    assert_eq!(
        failed.restarts, 3,
        "a permanent error restarted as the policy says"
    );
    assert_eq!(made.load(Ordering::SeqCst), 4);
    let exits = supervisor.shutdown().await;
    assert!(matches!(exits[0].result, Err(Error::Handler { .. })));
}

#[tokio::test]
async fn stream_restores_its_model_in_place_after_a_transient_handler_error() {
    let (krescent, head) = krescent_with(20).await;
    let failures_left = Arc::new(AtomicU32::new(2));
    let running = krescent.stream(Flaky {
        events: 0,
        sum: 0,
        fail_at: Position::new(13),
        failures_left: failures_left.clone(),
    });
    tokio::time::timeout(Duration::from_secs(20), running.reached(head))
        .await
        .expect("in time")
        .expect("recovered");
    assert_eq!(failures_left.load(Ordering::SeqCst), 0);
    let done = running.shutdown().await.expect("shutdown");
    // The checkpointed fields were overwritten from the checkpoint before event 13 each time:
    // every event counted exactly once.
    assert_eq!((done.model.events, done.model.sum), (20, sum_to(20)));
    assert!(done.origin.restored_from().expect("restored") < Position::new(13));
}

#[tokio::test]
async fn stream_ends_when_it_fails_before_its_first_checkpoint() {
    let (krescent, _) = krescent_with(20).await;
    let failures_left = Arc::new(AtomicU32::new(1));
    // Fails at 3, before the first checkpoint (at 5): there is nothing to restore the model
    // from in place, and replaying over its state would count events 1 and 2 twice.
    let running = krescent.stream(Flaky {
        events: 0,
        sum: 0,
        fail_at: Position::new(3),
        failures_left: failures_left.clone(),
    });
    let ended = tokio::time::timeout(Duration::from_secs(20), running.reached(Position::new(20)))
        .await
        .expect("in time");
    assert!(matches!(ended, Err(Error::Stopped { .. })), "{ended:?}");
    match running.shutdown().await {
        Err(e @ Error::Handler { .. }) => assert!(e.is_transient(), "{e}"),
        other => panic!(
            "expected the handler's error, got {:?}",
            other.map(|c| c.position)
        ),
    }
    // `stream_with` builds a fresh model instead, and gets there.
    failures_left.store(1, Ordering::SeqCst);
    let left = failures_left.clone();
    let running = krescent.stream_with(move || Flaky {
        events: 0,
        sum: 0,
        fail_at: Position::new(3),
        failures_left: left.clone(),
    });
    tokio::time::timeout(Duration::from_secs(20), running.reached(Position::new(20)))
        .await
        .expect("in time")
        .expect("recovered");
    let done = running.shutdown().await.expect("shutdown");
    assert_eq!((done.model.events, done.model.sum), (20, sum_to(20)));
}
