//! The property behind checkpointing: restoring a checkpoint and applying the remaining events
//! gives the same state as replaying everything.

use std::collections::BTreeMap;

use krescent::prelude::*;
use krescent::store::{EventStore, ExpectedVersion, InMemoryEventStore};
use krescent::Origin;
use proptest::prelude::*;

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(name = "kv.set")]
struct Set {
    key: u8,
    value: i64,
}

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(name = "kv.added")]
struct Added {
    key: u8,
    delta: i64,
}

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(name = "kv.removed")]
struct Removed {
    key: u8,
}

/// A model with fields of every bucket kind, the same handlers, and the given configuration.
macro_rules! kv_model {
    ($name:ident $(, #[$config:meta])?) => {
        #[derive(Debug, Default, PartialEq, EventModel)]
        #[model(name = "kv", version = 1)]
        $(#[$config])?
        struct $name {
            #[checkpoint]
            values: BTreeMap<u8, i64>,
            #[checkpoint(key = "count")]
            applied: u64,
            #[checkpoint]
            last_removed: Option<String>,
            #[checkpoint]
            trail: Vec<u8>,
            #[checkpoint]
            mean: f64,
        }

        #[krescent::handlers]
        impl $name {
            fn set(&mut self, e: &Set) {
                self.values.insert(e.key, e.value);
                self.touch(e.key);
            }
            fn added(&mut self, e: &Added) {
                *self.values.entry(e.key).or_default() += e.delta;
                self.touch(e.key);
            }
            fn removed(&mut self, e: &Removed) {
                self.values.remove(&e.key);
                self.last_removed = Some(format!("key {}", e.key));
                self.touch(e.key);
            }
        }

        impl $name {
            #[allow(clippy::cast_precision_loss)]
            fn touch(&mut self, key: u8) {
                self.applied += 1;
                self.trail.push(key);
                self.mean = self.values.values().sum::<i64>() as f64 / self.values.len().max(1) as f64;
            }

            fn state(&self) -> (&BTreeMap<u8, i64>, u64, &Option<String>, &Vec<u8>, u64) {
                (&self.values, self.applied, &self.last_removed, &self.trail, self.mean.to_bits())
            }
        }
    };
}

kv_model!(Checkpointed, #[checkpoint(strategy = "fixed_events(3)", storage = "memory")]);
kv_model!(Replayed);

#[derive(Debug, Clone)]
enum Op {
    Set(Set),
    Added(Added),
    Removed(Removed),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..8, -1000i64..1000).prop_map(|(key, value)| Op::Set(Set { key, value })),
        (0u8..8, -50i64..50).prop_map(|(key, delta)| Op::Added(Added { key, delta })),
        (0u8..8).prop_map(|key| Op::Removed(Removed { key })),
    ]
}

fn encode(op: &Op) -> NewEvent {
    match op {
        Op::Set(e) => NewEvent::new(e),
        Op::Added(e) => NewEvent::new(e),
        Op::Removed(e) => NewEvent::new(e),
    }
    .expect("encode")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn restore_plus_remaining_events_equals_a_full_replay(ops in prop::collection::vec(op(), 0..60), cuts in prop::collection::vec(0usize..60, 0..4)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let krescent = Krescent::new(InMemoryEventStore::new());
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(ops.len())).collect();
            cuts.push(ops.len());
            cuts.sort_unstable();
            let mut appended = 0;
            let mut resumed = None;
            for cut in cuts {
                for op in &ops[appended..cut] {
                    krescent.store().append("kv", ExpectedVersion::Any, vec![encode(op)]).await.expect("append");
                }
                appended = cut;
                let run = krescent.catch_up(Checkpointed::default()).await.expect("resume");
                if let Some(position) = run.origin.restored_from() {
                    assert!(matches!(run.origin, Origin::Restored { .. }));
                    assert!(position <= run.position);
                }
                resumed = Some(run.model);
            }
            let full = krescent.catch_up(Replayed::default()).await.expect("full replay").model;
            let resumed = resumed.expect("at least one run");
            assert_eq!(resumed.state(), full.state());
            let restored = krescent.restore_only(Checkpointed::default()).await.expect("restore").model;
            assert_eq!(restored.state(), full.state(), "the last checkpoint holds the whole state");
        });
    }
}
