//! The benchmark workload of `WORKLOAD.md`: a seeded stream of document events and the "all
//! documents" read model.

use std::collections::HashMap;

use krescent::prelude::*;

/// The field names a document may have.
pub const FIELDS: [&str; 5] = ["title", "author", "content", "tags", "summary"];

/// The values a field may take.
pub const VALUES: [&str; 5] = [
    "Lorem ipsum dolor sit amet",
    "Consectetur adipiscing elit",
    "Sed do eiusmod tempor incididunt",
    "Ut labore et dolore magna aliqua",
    "Excepteur sint occaecat cupidatat non proident",
];

/// The seed every figure uses unless told otherwise.
pub const SEED: u64 = 42;

/// `document.created`.
#[derive(Debug, Clone, PartialEq, Event, Serialize, Deserialize)]
#[event(name = "document.created")]
#[serde(rename_all = "camelCase")]
pub struct DocumentCreated {
    /// The new document.
    pub document_id: String,
}

/// `document.field.set`.
#[derive(Debug, Clone, PartialEq, Event, Serialize, Deserialize)]
#[event(name = "document.field.set")]
#[serde(rename_all = "camelCase")]
pub struct FieldSet {
    /// The document.
    pub document_id: String,
    /// The field.
    pub field_name: String,
    /// Its new value.
    pub field_value: String,
}

/// `document.field.removed`.
#[derive(Debug, Clone, PartialEq, Event, Serialize, Deserialize)]
#[event(name = "document.field.removed")]
#[serde(rename_all = "camelCase")]
pub struct FieldRemoved {
    /// The document.
    pub document_id: String,
    /// The removed field.
    pub field_name: String,
}

/// `document.deleted`.
#[derive(Debug, Clone, PartialEq, Event, Serialize, Deserialize)]
#[event(name = "document.deleted")]
#[serde(rename_all = "camelCase")]
pub struct DocumentDeleted {
    /// The deleted document.
    pub document_id: String,
}

/// One event of the workload.
#[derive(Debug, Clone, PartialEq)]
pub enum DocumentEvent {
    /// A document was created.
    Created(DocumentCreated),
    /// A field was set.
    FieldSet(FieldSet),
    /// A field was removed.
    FieldRemoved(FieldRemoved),
    /// A document was deleted.
    Deleted(DocumentDeleted),
}

impl DocumentEvent {
    /// The event as a store appends it.
    ///
    /// # Panics
    /// Never: the workload's events always serialize.
    #[must_use]
    pub fn to_new_event(&self) -> NewEvent {
        match self {
            DocumentEvent::Created(e) => NewEvent::new(e),
            DocumentEvent::FieldSet(e) => NewEvent::new(e),
            DocumentEvent::FieldRemoved(e) => NewEvent::new(e),
            DocumentEvent::Deleted(e) => NewEvent::new(e),
        }
        .expect("workload events serialize")
    }

    /// The event's stream: its document.
    #[must_use]
    pub fn document_id(&self) -> &str {
        match self {
            DocumentEvent::Created(DocumentCreated { document_id })
            | DocumentEvent::FieldSet(FieldSet { document_id, .. })
            | DocumentEvent::FieldRemoved(FieldRemoved { document_id, .. })
            | DocumentEvent::Deleted(DocumentDeleted { document_id }) => document_id,
        }
    }
}

/// `SplitMix64`: small, fast and the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`; `n` must not be 0.
    pub fn below(&mut self, n: usize) -> usize {
        // Truncation is the point: the low bits of a 64-bit draw, reduced.
        #[allow(clippy::cast_possible_truncation)]
        let draw = ((u128::from(self.next_u64()) * n as u128) >> 64) as usize;
        draw
    }

    /// A UUID-formatted id (version 4 layout) drawn from the generator.
    pub fn uuid(&mut self) -> String {
        let (a, b) = (self.next_u64(), self.next_u64());
        let a = (a & 0xffff_ffff_ffff_0fff) | 0x4000;
        let b = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xffff,
            b >> 48,
            b & 0xffff_ffff_ffff
        )
    }
}

struct Document {
    id: String,
    fields: Vec<usize>,
}

/// The seeded document stream: an endless iterator of [`DocumentEvent`]s, the same for the same
/// seed.
pub struct Workload {
    rng: Rng,
    live: Vec<Document>,
}

impl Workload {
    /// The stream of `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Workload {
            rng: Rng::new(seed),
            live: Vec::new(),
        }
    }

    /// The number of documents that exist after the events generated so far.
    #[must_use]
    pub fn live_documents(&self) -> usize {
        self.live.len()
    }

    fn try_next(&mut self) -> Option<DocumentEvent> {
        let rng = &mut self.rng;
        match rng.below(4) {
            0 => {
                let id = rng.uuid();
                self.live.push(Document {
                    id: id.clone(),
                    fields: Vec::new(),
                });
                Some(DocumentEvent::Created(DocumentCreated { document_id: id }))
            }
            1 => {
                let doc = self
                    .live
                    .len()
                    .checked_sub(1)
                    .map(|_| rng.below(self.live.len()))?;
                let doc = &mut self.live[doc];
                let (field, value) = (rng.below(FIELDS.len()), rng.below(VALUES.len()));
                if !doc.fields.contains(&field) {
                    doc.fields.push(field);
                }
                Some(DocumentEvent::FieldSet(FieldSet {
                    document_id: doc.id.clone(),
                    field_name: FIELDS[field].to_owned(),
                    field_value: VALUES[value].to_owned(),
                }))
            }
            2 => {
                let doc = self
                    .live
                    .len()
                    .checked_sub(1)
                    .map(|_| rng.below(self.live.len()))?;
                let doc = &mut self.live[doc];
                let field = doc
                    .fields
                    .len()
                    .checked_sub(1)
                    .map(|_| rng.below(doc.fields.len()))?;
                let field = doc.fields.swap_remove(field);
                Some(DocumentEvent::FieldRemoved(FieldRemoved {
                    document_id: doc.id.clone(),
                    field_name: FIELDS[field].to_owned(),
                }))
            }
            _ => {
                let doc = self
                    .live
                    .len()
                    .checked_sub(1)
                    .map(|_| rng.below(self.live.len()))?;
                let doc = self.live.swap_remove(doc);
                Some(DocumentEvent::Deleted(DocumentDeleted {
                    document_id: doc.id,
                }))
            }
        }
    }
}

impl Iterator for Workload {
    type Item = DocumentEvent;

    fn next(&mut self) -> Option<DocumentEvent> {
        loop {
            if let Some(event) = self.try_next() {
                return Some(event);
            }
        }
    }
}

/// The "all documents" state: document id → field name → value.
pub type Documents = HashMap<String, HashMap<String, String>>;

/// Applies one recorded event to `documents` by hand: the baseline loop of the benchmarks, and the
/// reference the krescent models are compared with.
///
/// # Errors
/// When the payload does not decode.
pub fn apply_by_hand(
    documents: &mut Documents,
    event_type: &str,
    payload: &str,
) -> Result<(), serde_json::Error> {
    apply_from(
        documents,
        event_type,
        &mut serde_json::Deserializer::from_str(payload),
    )
}

/// [`apply_by_hand`] with the payload as bytes (as a database row holds it), decoded in place.
///
/// # Errors
/// When the payload does not decode.
pub fn apply_by_hand_bytes(
    documents: &mut Documents,
    event_type: &str,
    payload: &[u8],
) -> Result<(), serde_json::Error> {
    apply_from(
        documents,
        event_type,
        &mut serde_json::Deserializer::from_slice(payload),
    )
}

fn apply_from<'de, R: serde_json::de::Read<'de>>(
    documents: &mut Documents,
    event_type: &str,
    payload: &mut serde_json::Deserializer<R>,
) -> Result<(), serde_json::Error> {
    fn decode<'de, T: serde::Deserialize<'de>, R: serde_json::de::Read<'de>>(
        payload: &mut serde_json::Deserializer<R>,
    ) -> Result<T, serde_json::Error> {
        let value = T::deserialize(&mut *payload)?;
        payload.end()?;
        Ok(value)
    }
    match event_type {
        "document.created" => {
            let e: DocumentCreated = decode(payload)?;
            documents.insert(e.document_id, HashMap::new());
        }
        "document.field.set" => {
            let e: FieldSet = decode(payload)?;
            if let Some(doc) = documents.get_mut(&e.document_id) {
                doc.insert(e.field_name, e.field_value);
            }
        }
        "document.field.removed" => {
            let e: FieldRemoved = decode(payload)?;
            if let Some(doc) = documents.get_mut(&e.document_id) {
                doc.remove(&e.field_name);
            }
        }
        "document.deleted" => {
            let e: DocumentDeleted = decode(payload)?;
            documents.remove(&e.document_id);
        }
        _ => {}
    }
    Ok(())
}

/// Declares an "all documents" read model named `$name` with the given struct attributes (a
/// `#[model(...)]` and, optionally, a `#[checkpoint(...)]`).
#[macro_export]
macro_rules! all_documents_model {
    ($(#[$attr:meta])* $vis:vis struct $name:ident;) => {
        #[derive(Debug, Default, ::krescent::EventModel)]
        $(#[$attr])*
        $vis struct $name {
            /// Document id → field name → value.
            #[checkpoint]
            pub documents: $crate::workload::Documents,
        }

        #[::krescent::handlers]
        impl $name {
            fn created(&mut self, e: $crate::workload::DocumentCreated) {
                self.documents.insert(e.document_id, ::std::collections::HashMap::new());
            }
            fn field_set(&mut self, e: $crate::workload::FieldSet) {
                if let Some(doc) = self.documents.get_mut(&e.document_id) {
                    doc.insert(e.field_name, e.field_value);
                }
            }
            fn field_removed(&mut self, e: &$crate::workload::FieldRemoved) {
                if let Some(doc) = self.documents.get_mut(&e.document_id) {
                    doc.remove(&e.field_name);
                }
            }
            fn deleted(&mut self, e: &$crate::workload::DocumentDeleted) {
                self.documents.remove(&e.document_id);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_stream() {
        let a: Vec<_> = Workload::new(SEED).take(1000).collect();
        let b: Vec<_> = Workload::new(SEED).take(1000).collect();
        let c: Vec<_> = Workload::new(7).take(1000).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn the_mix_matches_the_workload_description() {
        let mut workload = Workload::new(SEED);
        let mut counts = [0usize; 4];
        let mut documents = Documents::new();
        for event in workload.by_ref().take(100_000) {
            counts[match &event {
                DocumentEvent::Created(_) => 0,
                DocumentEvent::FieldSet(_) => 1,
                DocumentEvent::FieldRemoved(_) => 2,
                DocumentEvent::Deleted(_) => 3,
            }] += 1;
            let new = event.to_new_event();
            apply_by_hand(&mut documents, &new.event_type, &new.payload).expect("decodes");
        }
        let percent = counts.map(|c| c * 100 / 100_000);
        assert!(
            (28..=32).contains(&percent[0]) && (28..=32).contains(&percent[1]),
            "{percent:?}"
        );
        assert!(
            (9..=13).contains(&percent[2]) && (28..=32).contains(&percent[3]),
            "{percent:?}"
        );
        assert_eq!(documents.len(), workload.live_documents());
        assert!(Rng::new(1).uuid().chars().nth(14) == Some('4'));
    }
}
