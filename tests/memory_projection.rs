//! The memory projection checkpoints by value: restoring it and applying the remaining events
//! gives the same map as replaying everything.

use krescent::prelude::*;
use krescent::projection::MemoryProjection;
use krescent::store::{EventStore, ExpectedVersion, InMemoryEventStore};
use proptest::prelude::*;

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(name = "stock.changed")]
struct Changed {
    item: u8,
    delta: i64,
}

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(name = "stock.dropped")]
struct Dropped {
    item: u8,
}

/// A stock model keyed by number (not by string), with the given configuration.
macro_rules! stock_model {
    ($name:ident $(, #[$config:meta])?) => {
        #[derive(Debug, Default, EventModel)]
        #[model(name = "stock", version = 1)]
        $(#[$config])?
        struct $name {
            #[checkpoint(support)]
            stock: MemoryProjection<u8, i64>,
        }

        #[krescent::handlers]
        impl $name {
            fn changed(&mut self, e: &Changed) {
                *self.stock.entry(e.item).or_default() += e.delta;
            }
            fn dropped(&mut self, e: &Dropped) {
                self.stock.remove(&e.item);
            }
        }
    };
}

stock_model!(Checkpointed, #[checkpoint(strategy = "fixed_events(4)", storage = "memory")]);
stock_model!(Replayed);

fn event() -> impl Strategy<Value = NewEvent> {
    prop_oneof![
        3 => (0u8..10, -100i64..100).prop_map(|(item, delta)| NewEvent::new(&Changed { item, delta }).expect("encode")),
        1 => (0u8..10).prop_map(|item| NewEvent::new(&Dropped { item }).expect("encode")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn memory_projection_restore_plus_remaining_events_equals_a_full_replay(
        events in prop::collection::vec(event(), 0..80),
        cuts in prop::collection::vec(0usize..80, 1..4),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let krescent = Krescent::new(InMemoryEventStore::new());
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(events.len())).collect();
            cuts.push(events.len());
            cuts.sort_unstable();
            let mut appended = 0;
            let mut last = None;
            for cut in cuts {
                if cut > appended {
                    krescent.store().append("stock", ExpectedVersion::Any, events[appended..cut].to_vec()).await.expect("append");
                }
                appended = cut;
                last = Some(krescent.catch_up(Checkpointed::default()).await.expect("resume").model);
            }
            let full = krescent.catch_up(Replayed::default()).await.expect("replay").model;
            assert_eq!(last.expect("a run").stock, full.stock);
            let restored = krescent.restore_only(Checkpointed::default()).await.expect("restore").model;
            assert_eq!(restored.stock, full.stock, "the checkpoint holds the map by value");
        });
    }
}
