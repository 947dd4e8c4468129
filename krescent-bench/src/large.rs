//! The large state that `large_state` and `object_store_checkpoint` checkpoint: a map of every
//! created document of the workload, its snapshot as a running model takes it, and the same map
//! encoded by hand (the floors' and baselines' encoding).

use std::collections::HashMap;
use std::error::Error;

use krescent::checkpoint::{
    CheckpointBucket, CheckpointFormat, CheckpointSupport, CheckpointVersion, StoredCheckpoint,
};
use krescent::{EventModel, Position};
use krescent_testkit::workload::{DocumentCreated, DocumentEvent, Workload, SEED};

/// A model with one large checkpointed map, checkpointed to the storage `postgres` by
/// `large_state`; `object_store_checkpoint` snapshots it and stores it in a bucket itself.
#[derive(EventModel, Default)]
#[model(name = "bench.large", version = 1)]
#[checkpoint(strategy = "never", storage = "postgres")]
pub(crate) struct Large {
    #[checkpoint]
    pub(crate) entries: HashMap<String, u64>,
}

#[krescent::handlers]
impl Large {
    fn created(&mut self, e: &DocumentCreated) {
        let next = self.entries.len() as u64;
        self.entries.insert(e.document_id.clone(), next);
    }
}

/// Document id → the order it was created in, for the first `events` created documents.
pub(crate) fn entries(events: usize) -> HashMap<String, u64> {
    Workload::new(SEED)
        .filter_map(|e| match e {
            DocumentEvent::Created(c) => Some(c.document_id),
            _ => None,
        })
        .take(events)
        .zip(0..)
        .collect()
}

/// `model`'s checkpoint at `position`, its bucket in `format`: the snapshot a running model
/// takes before it stores it.
pub(crate) fn snapshot<M: EventModel + CheckpointSupport>(
    model: &M,
    format: CheckpointFormat,
    position: usize,
) -> Result<StoredCheckpoint, Box<dyn Error>> {
    let mut bucket = CheckpointBucket::with_format(format);
    model.create_checkpoint(&mut bucket)?;
    Ok(StoredCheckpoint::new(
        M::NAME,
        CheckpointVersion::of::<M>(),
        Position::new(position as u64),
        bucket,
    ))
}

/// The map as the bucket's `MessagePack` document holds it (`{"entries": {"MessagePack":
/// <bin>}}`), written by hand into a buffer allocated once: the checkpoint floor's encoding.
pub(crate) fn encode_by_hand(entries: &HashMap<String, u64>) -> Result<Vec<u8>, Box<dyn Error>> {
    let size = entries.keys().map(|k| k.len() + 2 + 9).sum::<usize>() + 64;
    let mut field = Vec::with_capacity(size);
    rmp::encode::write_map_len(&mut field, u32::try_from(entries.len())?)?;
    for (key, value) in entries {
        rmp::encode::write_str(&mut field, key)?;
        rmp::encode::write_uint(&mut field, *value)?;
    }
    let mut document = Vec::with_capacity(field.len() + 64);
    rmp::encode::write_map_len(&mut document, 1)?;
    rmp::encode::write_str(&mut document, "entries")?;
    rmp::encode::write_map_len(&mut document, 1)?;
    rmp::encode::write_str(&mut document, "MessagePack")?;
    rmp::encode::write_bin(&mut document, &field)?;
    Ok(document)
}
