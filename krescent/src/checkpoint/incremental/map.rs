//! A hash map that records its changed keys.

use std::borrow::Borrow;
use std::collections::hash_map::{Entry, RandomState};
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::ops::Deref;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::changes::Changes;
use super::{Incremental, CHANGED, REMOVED};
use crate::checkpoint::field::presized;
use crate::checkpoint::{BucketValue, CheckpointBucket, CheckpointError};

/// A [`HashMap`] that records which keys were inserted, changed or removed since the last
/// checkpoint, for `#[checkpoint(incremental)]` fields: a checkpoint then writes those entries
/// only (see [`crate::checkpoint::incremental`]).
///
/// It reads like the map it wraps (it derefs to [`HashMap`]: `get`, `len`, `iter`,
/// `contains_key`, …); it changes through its own methods, each recording the key at O(1)
/// (one insertion into a set of changed keys, the key cloned the first time it changes).
/// [`clear`](Self::clear) and [`values_mut`](Self::values_mut) record "every entry", as does
/// recording more keys than the map holds: the next checkpoint then writes the map whole.
///
/// It serializes as the map does, so a whole-state checkpoint of it is the map's.
///
/// ```
/// use krescent::checkpoint::TrackedMap;
///
/// let mut counts: TrackedMap<String, u64> = TrackedMap::new();
/// counts.insert("a".to_owned(), 1);
/// *counts.entry_or_default("b".to_owned()) += 2;
/// counts.remove("a");
/// assert_eq!(counts.get("b"), Some(&2));
/// assert_eq!(counts.len(), 1);
/// ```
pub struct TrackedMap<K, V, S = RandomState> {
    map: HashMap<K, V, S>,
    changes: Changes<K>,
}

impl<K, V> TrackedMap<K, V, RandomState> {
    /// An empty map.
    #[must_use]
    pub fn new() -> Self {
        Self::from(HashMap::new())
    }

    /// An empty map with room for `capacity` entries.
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        Self::from(HashMap::with_capacity(capacity))
    }
}

impl<K, V, S> From<HashMap<K, V, S>> for TrackedMap<K, V, S> {
    /// The map, with no change recorded.
    fn from(map: HashMap<K, V, S>) -> Self {
        TrackedMap {
            map,
            changes: Changes::default(),
        }
    }
}

impl<K, V, S> TrackedMap<K, V, S> {
    /// The map, without its record of changes.
    #[must_use]
    pub fn into_inner(self) -> HashMap<K, V, S> {
        self.map
    }
}

impl<K, V, S> TrackedMap<K, V, S>
where
    K: Eq + Hash + Clone,
    S: BuildHasher,
{
    /// Inserts `value` under `key`, returning the value it replaces.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        if self.changes.covers(&key) {
            return self.map.insert(key, value);
        }
        let (len, noted) = (self.map.len(), key.clone());
        let replaced = self.map.insert(key, value);
        self.changes.note_new(noted, replaced.is_some(), len);
        replaced
    }

    /// Removes `key`'s entry, returning its value.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (key, value) = self.map.remove_entry(key)?;
        let len = self.map.len();
        self.changes.note_removed(key, len);
        Some(value)
    }

    /// The value of `key`, to change in place.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if !self.changes.covers(key) {
            let len = self.map.len();
            let (stored, _) = self.map.get_key_value(key)?;
            self.changes.note_new(stored.clone(), true, len);
        }
        self.map.get_mut(key)
    }

    /// The value of `key`, inserted with `make` when there is none, to change in place.
    pub fn entry_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        if self.changes.covers(&key) {
            return self.map.entry(key).or_insert_with(make);
        }
        let (len, noted) = (self.map.len(), key.clone());
        let entry = self.map.entry(key);
        let held = matches!(entry, Entry::Occupied(_));
        self.changes.note_new(noted, held, len);
        entry.or_insert_with(make)
    }

    /// The value of `key`, its default inserted when there is none, to change in place.
    pub fn entry_or_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        self.entry_or_insert_with(key, V::default)
    }

    /// Keeps only the entries `keep` accepts; the others are recorded as removed.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        let changes = &mut self.changes;
        let len = self.map.len();
        self.map.retain(|key, value| {
            let kept = keep(key, value);
            if !kept {
                changes.note(key, len, || true);
            }
            kept
        });
    }

    /// Removes every entry (recorded as "every entry": the next checkpoint writes the map whole).
    pub fn clear(&mut self) {
        self.map.clear();
        self.changes.note_all();
    }

    /// Every value, to change in place (recorded as "every entry").
    pub fn values_mut(&mut self) -> std::collections::hash_map::ValuesMut<'_, K, V> {
        self.changes.note_all();
        self.map.values_mut()
    }
}

impl<K, V, S> Deref for TrackedMap<K, V, S> {
    type Target = HashMap<K, V, S>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl<'a, K, V, S> IntoIterator for &'a TrackedMap<K, V, S> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::collections::hash_map::Iter<'a, K, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.map.iter()
    }
}

impl<K, V, S> Extend<(K, V)> for TrackedMap<K, V, S>
where
    K: Eq + Hash + Clone,
    S: BuildHasher,
{
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, entries: I) {
        for (key, value) in entries {
            self.insert(key, value);
        }
    }
}

impl<K, V, S> FromIterator<(K, V)> for TrackedMap<K, V, S>
where
    K: Eq + Hash,
    S: BuildHasher + Default,
{
    fn from_iter<I: IntoIterator<Item = (K, V)>>(entries: I) -> Self {
        Self::from(entries.into_iter().collect::<HashMap<K, V, S>>())
    }
}

impl<K, V, S: Default> Default for TrackedMap<K, V, S> {
    fn default() -> Self {
        Self::from(HashMap::default())
    }
}

impl<K: Clone, V: Clone, S: Clone> Clone for TrackedMap<K, V, S> {
    fn clone(&self) -> Self {
        TrackedMap {
            map: self.map.clone(),
            changes: self.changes.clone(),
        }
    }
}

impl<K: fmt::Debug, V: fmt::Debug, S> fmt::Debug for TrackedMap<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.map.fmt(f)
    }
}

/// Two maps are equal when their entries are; what changed is not compared.
impl<K, V, S> PartialEq for TrackedMap<K, V, S>
where
    K: Eq + Hash,
    V: PartialEq,
    S: BuildHasher,
{
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl<K: Eq + Hash, V: Eq, S: BuildHasher> Eq for TrackedMap<K, V, S> {}

impl<K: Serialize, V: Serialize, S> Serialize for TrackedMap<K, V, S> {
    fn serialize<Z: Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        serializer.collect_map(&self.map)
    }
}

impl<'de, K, V, S> Deserialize<'de> for TrackedMap<K, V, S>
where
    K: Deserialize<'de> + Eq + Hash,
    V: Deserialize<'de>,
    S: BuildHasher + Default,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        HashMap::deserialize(deserializer).map(Self::from)
    }
}

impl<K, V, S> Incremental for TrackedMap<K, V, S>
where
    K: Serialize + DeserializeOwned + Eq + Hash + Clone,
    V: Serialize + DeserializeOwned,
    S: BuildHasher + Default,
{
    fn put_whole(&self, bucket: &mut CheckpointBucket, key: &str) -> Result<(), CheckpointError> {
        bucket.put(key, &self.map)
    }

    fn put_changes(&self, delta: &mut CheckpointBucket) -> Result<(), CheckpointError> {
        let keys = self.changes.keys().into_iter().flatten();
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        for (key, held) in keys {
            match self.map.get(key) {
                Some(value) => changed.push((key, value)),
                // A key the last checkpoint did not hold needs no tombstone.
                None if *held => removed.push(key),
                None => {}
            }
        }
        delta.put(CHANGED, &changed)?;
        delta.put(REMOVED, &removed)
    }

    fn restore_whole(value: &BucketValue) -> Result<Self, String> {
        value
            .to_serde_seed(presized::<HashMap<K, V, S>>(value))
            .map(Self::from)
    }

    fn apply_changes(&mut self, delta: &CheckpointBucket) -> Result<(), String> {
        let changed: Vec<(K, V)> = delta.get(CHANGED).map_err(|e| e.to_string())?;
        let removed: Vec<K> = delta.get(REMOVED).map_err(|e| e.to_string())?;
        for key in &removed {
            self.map.remove(key);
        }
        self.map.extend(changed);
        Ok(())
    }

    fn seal(&mut self) {
        self.changes.seal();
    }

    fn changed(&self) -> Option<usize> {
        self.changes.count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::CheckpointFormat;

    /// Each way of changing the map records the key once, with whether the last checkpoint
    /// held it: the delta holds the changed entries and a tombstone only for a held key, and
    /// applied to the map as checkpointed it gives the map as it is.
    #[test]
    fn every_change_is_recorded_once_with_whether_the_checkpoint_held_it() {
        let checkpointed: HashMap<String, u64> = (0..3).map(|i| (format!("k{i}"), i)).collect();
        let mut map = TrackedMap::from(checkpointed.clone());
        *map.get_mut("k0").expect("held") += 10;
        *map.get_mut("k0").expect("held") += 1;
        assert_eq!(map.get_mut("missing"), None);
        *map.entry_or_insert_with("k1".to_owned(), || 0) += 5;
        *map.entry_or_default("new".to_owned()) += 7;
        map.insert("k2".to_owned(), 20);
        map.remove("k2");
        map.insert("gone".to_owned(), 1);
        map.remove("gone");
        assert_eq!(map.changed(), Some(4), "k0, k1, new, k2; not `gone`");

        let mut delta = CheckpointBucket::delta_with_format(CheckpointFormat::MessagePack);
        map.put_changes(&mut delta).expect("put");
        let mut changed: Vec<(String, u64)> = delta.get(CHANGED).expect("changed");
        changed.sort();
        let expected = [("k0", 11), ("k1", 6), ("new", 7)].map(|(k, v)| (k.to_owned(), v));
        assert_eq!(changed, expected);
        let removed: Vec<String> = delta.get(REMOVED).expect("removed");
        assert_eq!(removed, ["k2"]);

        let mut restored = TrackedMap::from(checkpointed);
        restored.apply_changes(&delta).expect("apply");
        assert_eq!(restored, map);
        map.seal();
        assert_eq!(map.changed(), Some(0));
    }
}
