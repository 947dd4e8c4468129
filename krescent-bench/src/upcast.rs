//! The upcasting figure: the document workload stored at revision 1 and upcast through two
//! hops into the structs of revision 3, against the same replay of the same payloads stored at
//! the handlers' own revision (no upcasting), both from the memory store, in the same run, the
//! repetitions of the two alternating.

use std::error::Error;
use std::sync::Arc;

use krescent::store::{EventStore, ExpectedVersion, InMemoryEventStore};
use krescent::Krescent;
use krescent_testkit::workload::{Documents, Workload, SEED};

use crate::measure::{medians_in_turns, throughput};
use crate::memory::{filled_store, Replayed};
use crate::Options;

/// An event of the workload at revision 3, with the structs of revisions 1 and 2 (the same
/// fields, each revision converting into the next by moving them): the two hops of the
/// figure cost what a real chain costs beyond its fields, a decode into the oldest struct and
/// two moves.
macro_rules! evolved {
    ($module:ident, $name:literal, $ty:ident { $($field:ident),* }) => {
        mod $module {
            use krescent::Event;
            use serde::{Deserialize, Serialize};

            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            pub(crate) struct V1 {
                $(pub(crate) $field: String),*
            }

            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            pub(crate) struct V2 {
                $(pub(crate) $field: String),*
            }

            impl From<V1> for V2 {
                fn from(v1: V1) -> Self {
                    V2 { $($field: v1.$field),* }
                }
            }

            #[derive(Event, Serialize, Deserialize)]
            #[event(name = $name, revision = 3, upcast(1 = V1, 2 = V2))]
            #[serde(rename_all = "camelCase")]
            pub(crate) struct $ty {
                $(pub(crate) $field: String),*
            }

            impl From<V2> for $ty {
                fn from(v2: V2) -> Self {
                    $ty { $($field: v2.$field),* }
                }
            }
        }
    };
}

evolved!(created, "document.created", Created { document_id });
evolved!(
    set,
    "document.field.set",
    FieldSet {
        document_id,
        field_name,
        field_value
    }
);
evolved!(
    removed,
    "document.field.removed",
    FieldRemoved {
        document_id,
        field_name
    }
);
evolved!(deleted, "document.deleted", Deleted { document_id });

/// "All documents" over the events of revision 3.
#[derive(Debug, Default, krescent::EventModel)]
#[model(name = "bench.upcast", version = 1)]
struct Upcast {
    documents: Documents,
}

#[krescent::handlers]
impl Upcast {
    fn created(&mut self, e: created::Created) {
        self.documents
            .insert(e.document_id, std::collections::HashMap::new());
    }
    fn field_set(&mut self, e: set::FieldSet) {
        if let Some(doc) = self.documents.get_mut(&e.document_id) {
            doc.insert(e.field_name, e.field_value);
        }
    }
    fn field_removed(&mut self, e: &removed::FieldRemoved) {
        if let Some(doc) = self.documents.get_mut(&e.document_id) {
            doc.remove(&e.field_name);
        }
    }
    fn deleted(&mut self, e: &deleted::Deleted) {
        self.documents.remove(&e.document_id);
    }
}

pub(crate) async fn run(options: &Options) -> Result<(), Box<dyn Error>> {
    let current = filled_store(options.events).await?;
    let old = Arc::new(InMemoryEventStore::new());
    for event in Workload::new(SEED).take(options.events) {
        old.append(
            event.document_id(),
            ExpectedVersion::Any,
            vec![event.to_new_event().with_revision(1)],
        )
        .await?;
    }
    let (plain, upcast) = (
        Krescent::with_shared_store(current.clone())
            .catch_up(Replayed::default())
            .await?,
        Krescent::with_shared_store(old.clone())
            .catch_up(Upcast::default())
            .await?,
    );
    if plain.model.documents != upcast.model.documents {
        return Err("the upcast replay differs from the plain one".into());
    }
    let (baseline, upcasting) = medians_in_turns(
        options.reps,
        || async {
            let caught_up = Krescent::with_shared_store(current.clone())
                .catch_up(Replayed::default())
                .await?;
            Ok::<_, krescent::Error>(caught_up.model.documents.len())
        },
        || async {
            let caught_up = Krescent::with_shared_store(old.clone())
                .catch_up(Upcast::default())
                .await?;
            Ok::<_, krescent::Error>(caught_up.model.documents.len())
        },
    )
    .await?;
    throughput("upcast", options.events, upcasting, baseline);
    Ok(())
}
