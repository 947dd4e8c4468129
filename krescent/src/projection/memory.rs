//! A map in memory that checkpoints by value.

use std::collections::HashMap;
use std::hash::Hash;
use std::ops::{Deref, DerefMut};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::checkpoint::{BucketValue, CheckpointBucket, CheckpointError, CheckpointSupport};

/// The key its entries are written under, as a list of `[key, value]` pairs (so that any serde
/// key works, not only strings).
const ENTRIES: &str = "entries";

/// A map a model keeps in memory, checkpointed by value: the checkpoint holds every entry.
///
/// Use it as a `#[checkpoint(support)]` field and as the map it dereferences to:
///
/// ```
/// use krescent::prelude::*;
/// use krescent::projection::MemoryProjection;
///
/// #[derive(Event, Serialize, Deserialize)]
/// #[event(name = "book.added")]
/// struct BookAdded { book_id: String, copies: u32 }
///
/// #[derive(EventModel, Default)]
/// #[model(name = "books.copies", version = 1)]
/// #[checkpoint(strategy = "fixed_events(100)", storage = "memory")]
/// struct Copies {
///     #[checkpoint(support)]
///     copies: MemoryProjection<String, u32>,
/// }
///
/// #[krescent::handlers]
/// impl Copies {
///     fn added(&mut self, e: &BookAdded) {
///         *self.copies.entry(e.book_id.clone()).or_default() += e.copies;
///     }
/// }
/// ```
#[derive(Debug, Clone)]
pub struct MemoryProjection<K, V> {
    entries: HashMap<K, V>,
}

impl<K, V> Default for MemoryProjection<K, V> {
    fn default() -> Self {
        MemoryProjection {
            entries: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash, V: PartialEq> PartialEq for MemoryProjection<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl<K, V> Deref for MemoryProjection<K, V> {
    type Target = HashMap<K, V>;

    fn deref(&self) -> &HashMap<K, V> {
        &self.entries
    }
}

impl<K, V> DerefMut for MemoryProjection<K, V> {
    fn deref_mut(&mut self) -> &mut HashMap<K, V> {
        &mut self.entries
    }
}

impl<K, V> From<HashMap<K, V>> for MemoryProjection<K, V> {
    fn from(entries: HashMap<K, V>) -> Self {
        MemoryProjection { entries }
    }
}

impl<K, V> MemoryProjection<K, V> {
    /// The map.
    #[must_use]
    pub fn into_inner(self) -> HashMap<K, V> {
        self.entries
    }
}

impl<K, V> CheckpointSupport for MemoryProjection<K, V>
where
    K: Serialize + DeserializeOwned + Eq + Hash,
    V: Serialize + DeserializeOwned,
{
    fn create_checkpoint(&self, bucket: &mut CheckpointBucket) -> Result<(), CheckpointError> {
        let pairs: Vec<(&K, &V)> = self.entries.iter().collect();
        bucket.put(ENTRIES, &pairs)
    }

    fn restore_checkpoint(&mut self, bucket: &CheckpointBucket) -> Result<(), CheckpointError> {
        let pairs: Vec<(K, V)> = bucket.get(ENTRIES)?;
        self.entries = pairs.into_iter().collect();
        Ok(())
    }

    fn validate_checkpoint(&self, bucket: &CheckpointBucket) -> bool {
        matches!(
            bucket.value(ENTRIES),
            Some(BucketValue::Json(_) | BucketValue::MessagePack(_))
        )
    }
}
