//! The keys a tracked collection changed since its last checkpoint.

use std::borrow::Borrow;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::Hash;

/// A collection's changed keys at O(1) per change, or "everything" once recording them would
/// cost more than the whole collection: then its next checkpoint writes it whole. Each key is
/// kept with whether the collection held it at the last checkpoint: one added and removed again
/// in between is no change at all (no tombstone for a key no checkpoint holds).
#[derive(Debug, Clone)]
pub(super) struct Changes<K> {
    keys: HashMap<K, bool>,
    all: bool,
}

/// A collection may record this many changed keys more than twice its size before it records
/// "all". Keys added and removed again between two checkpoints are recorded but written to no
/// delta, so a collection that churns through many short-lived keys records more keys than it
/// holds and still writes a small delta.
const FLOOR: usize = 1024;

impl<K> Default for Changes<K> {
    fn default() -> Self {
        Changes {
            keys: HashMap::new(),
            all: false,
        }
    }
}

impl<K: Eq + Hash> Changes<K> {
    /// Records `key` (owned, just removed: the collection held it) as changed, in a collection
    /// of `len` entries.
    ///
    /// A key that the last checkpoint did not hold is forgotten instead: added and removed
    /// between two checkpoints, it is no change, and a collection that churns through
    /// short-lived keys keeps a record (and a snapshot) as small as what really changed.
    pub(super) fn note_removed(&mut self, key: K, len: usize) {
        if self.all {
            return;
        }
        match self.keys.entry(key) {
            Entry::Occupied(noted) => {
                if !*noted.get() {
                    noted.remove();
                }
            }
            Entry::Vacant(first) => {
                first.insert(true);
                self.overflow(len);
            }
        }
    }

    /// Records `key` as changed, cloning it only the first time; `held` says (asked only
    /// then) whether the collection holds it before this change.
    pub(super) fn note(&mut self, key: &K, len: usize, held: impl FnOnce() -> bool)
    where
        K: Clone,
    {
        if !self.covers(key) {
            self.note_new(key.clone(), held(), len);
        }
    }

    /// Whether a change of `key` is recorded already: the key is, or everything is. One
    /// lookup in the record, and none in the collection: the collections ask this first, so
    /// that a key changed again before the next checkpoint costs the record no more.
    pub(super) fn covers<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.all || self.keys.contains_key(key)
    }

    /// Records `key`, which [`covers`](Self::covers) said is not recorded, as changed in a
    /// collection of `len` entries; `held`: whether the collection held it before this change.
    pub(super) fn note_new(&mut self, key: K, held: bool, len: usize) {
        self.keys.insert(key, held);
        self.overflow(len);
    }

    /// Records that every entry may have changed (a `clear`, a mutable iteration).
    pub(super) fn note_all(&mut self) {
        self.all = true;
        self.keys = HashMap::new();
    }

    fn overflow(&mut self, len: usize) {
        if self.keys.len() > len.saturating_mul(2).saturating_add(FLOOR) {
            self.note_all();
        }
    }

    /// The changed keys, each with whether the last checkpoint held it, or `None` when
    /// everything may have changed.
    pub(super) fn keys(&self) -> Option<&HashMap<K, bool>> {
        (!self.all).then_some(&self.keys)
    }

    /// How many keys changed; `None` for everything.
    pub(super) fn count(&self) -> Option<usize> {
        self.keys().map(HashMap::len)
    }

    /// Forgets the changes: a checkpoint holds them now.
    pub(super) fn seal(&mut self) {
        self.all = false;
        if self.keys.capacity() > 4 * self.keys.len().max(FLOOR) {
            self.keys = HashMap::new();
        } else {
            self.keys.clear();
        }
    }
}
