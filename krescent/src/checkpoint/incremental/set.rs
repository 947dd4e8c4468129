//! A hash set that records its inserted and removed elements.

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::ops::Deref;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::changes::Changes;
use super::{Incremental, CHANGED, REMOVED};
use crate::checkpoint::field::presized;
use crate::checkpoint::{BucketValue, CheckpointBucket, CheckpointError};

/// A [`HashSet`] that records which elements were inserted or removed since the last
/// checkpoint, for `#[checkpoint(incremental)]` fields, as [`TrackedMap`](super::TrackedMap)
/// records keys: it reads like the set (it derefs to [`HashSet`]), changes through its own
/// methods at O(1) each, and serializes as the set.
///
/// ```
/// use krescent::checkpoint::TrackedSet;
///
/// let mut seen: TrackedSet<u64> = TrackedSet::new();
/// assert!(seen.insert(7));
/// assert!(!seen.insert(7));
/// assert!(seen.contains(&7));
/// ```
pub struct TrackedSet<T, S = RandomState> {
    set: HashSet<T, S>,
    changes: Changes<T>,
}

impl<T> TrackedSet<T, RandomState> {
    /// An empty set.
    #[must_use]
    pub fn new() -> Self {
        Self::from(HashSet::new())
    }

    /// An empty set with room for `capacity` elements.
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        Self::from(HashSet::with_capacity(capacity))
    }
}

impl<T, S> From<HashSet<T, S>> for TrackedSet<T, S> {
    /// The set, with no change recorded.
    fn from(set: HashSet<T, S>) -> Self {
        TrackedSet {
            set,
            changes: Changes::default(),
        }
    }
}

impl<T, S> TrackedSet<T, S> {
    /// The set, without its record of changes.
    #[must_use]
    pub fn into_inner(self) -> HashSet<T, S> {
        self.set
    }
}

impl<T, S> TrackedSet<T, S>
where
    T: Eq + Hash + Clone,
    S: BuildHasher,
{
    /// Inserts `value`; whether it was absent.
    pub fn insert(&mut self, value: T) -> bool {
        if self.changes.covers(&value) {
            return self.set.insert(value);
        }
        let (len, noted) = (self.set.len(), value.clone());
        let inserted = self.set.insert(value);
        if inserted {
            self.changes.note_new(noted, false, len);
        }
        inserted
    }

    /// Removes `value`; whether it was present.
    pub fn remove<Q>(&mut self, value: &Q) -> bool
    where
        T: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Some(value) = self.set.take(value) else {
            return false;
        };
        let len = self.set.len();
        self.changes.note_removed(value, len);
        true
    }

    /// Keeps only the elements `keep` accepts; the others are recorded as removed.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let changes = &mut self.changes;
        let len = self.set.len();
        self.set.retain(|value| {
            let kept = keep(value);
            if !kept {
                changes.note(value, len, || true);
            }
            kept
        });
    }

    /// Removes every element (recorded as "every element": the next checkpoint writes the set
    /// whole).
    pub fn clear(&mut self) {
        self.set.clear();
        self.changes.note_all();
    }
}

impl<T, S> Deref for TrackedSet<T, S> {
    type Target = HashSet<T, S>;

    fn deref(&self) -> &Self::Target {
        &self.set
    }
}

impl<'a, T, S> IntoIterator for &'a TrackedSet<T, S> {
    type Item = &'a T;
    type IntoIter = std::collections::hash_set::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.set.iter()
    }
}

impl<T, S> Extend<T> for TrackedSet<T, S>
where
    T: Eq + Hash + Clone,
    S: BuildHasher,
{
    fn extend<I: IntoIterator<Item = T>>(&mut self, values: I) {
        for value in values {
            self.insert(value);
        }
    }
}

impl<T, S> FromIterator<T> for TrackedSet<T, S>
where
    T: Eq + Hash,
    S: BuildHasher + Default,
{
    fn from_iter<I: IntoIterator<Item = T>>(values: I) -> Self {
        Self::from(values.into_iter().collect::<HashSet<T, S>>())
    }
}

impl<T, S: Default> Default for TrackedSet<T, S> {
    fn default() -> Self {
        Self::from(HashSet::default())
    }
}

impl<T: Clone, S: Clone> Clone for TrackedSet<T, S> {
    fn clone(&self) -> Self {
        TrackedSet {
            set: self.set.clone(),
            changes: self.changes.clone(),
        }
    }
}

impl<T: fmt::Debug, S> fmt::Debug for TrackedSet<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.set.fmt(f)
    }
}

/// Two sets are equal when their elements are; what changed is not compared.
impl<T: Eq + Hash, S: BuildHasher> PartialEq for TrackedSet<T, S> {
    fn eq(&self, other: &Self) -> bool {
        self.set == other.set
    }
}

impl<T: Eq + Hash, S: BuildHasher> Eq for TrackedSet<T, S> {}

impl<T: Serialize, S> Serialize for TrackedSet<T, S> {
    fn serialize<Z: Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        serializer.collect_seq(&self.set)
    }
}

impl<'de, T, S> Deserialize<'de> for TrackedSet<T, S>
where
    T: Deserialize<'de> + Eq + Hash,
    S: BuildHasher + Default,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        HashSet::deserialize(deserializer).map(Self::from)
    }
}

impl<T, S> Incremental for TrackedSet<T, S>
where
    T: Serialize + DeserializeOwned + Eq + Hash + Clone,
    S: BuildHasher + Default,
{
    fn put_whole(&self, bucket: &mut CheckpointBucket, key: &str) -> Result<(), CheckpointError> {
        bucket.put(key, &self.set)
    }

    fn put_changes(&self, delta: &mut CheckpointBucket) -> Result<(), CheckpointError> {
        let mut inserted = Vec::new();
        let mut removed = Vec::new();
        for (value, held) in self.changes.keys().into_iter().flatten() {
            if self.set.contains(value) {
                inserted.push(value);
            } else if *held {
                // Only a value the last checkpoint held needs a tombstone.
                removed.push(value);
            }
        }
        delta.put(CHANGED, &inserted)?;
        delta.put(REMOVED, &removed)
    }

    fn restore_whole(value: &BucketValue) -> Result<Self, String> {
        value
            .to_serde_seed(presized::<HashSet<T, S>>(value))
            .map(Self::from)
    }

    fn apply_changes(&mut self, delta: &CheckpointBucket) -> Result<(), String> {
        let inserted: Vec<T> = delta.get(CHANGED).map_err(|e| e.to_string())?;
        let removed: Vec<T> = delta.get(REMOVED).map_err(|e| e.to_string())?;
        for value in &removed {
            self.set.remove(value);
        }
        self.set.extend(inserted);
        Ok(())
    }

    fn seal(&mut self) {
        self.changes.seal();
    }

    fn changed(&self) -> Option<usize> {
        self.changes.count()
    }
}
