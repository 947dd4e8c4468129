//! How the derive restores a `#[checkpoint]` field: through [`CheckpointBucket::get`], except a
//! hash map or set, which is allocated at its final size first.
//!
//! serde's own `HashMap` and `HashSet` impls trust a format's announced length only up to
//! 1 MiB of entries and grow from there, rehashing every key at each doubling: the benchmark's
//! 1,000,000-key map (`large_state`) restored in 703 ms that way and in 593 ms at its final
//! size, which is what the same map decoded by hand costs. Here the capacity is the announced
//! length, but at most half as many entries as the encoding has bytes (a map's entry takes at
//! least two), so a corrupt length cannot make it allocate much more than the checkpoint holds.
//!
//! The choice is made where the field's type is known, by method resolution: the generated
//! code calls `(&&Field::<T>::new()).restore(..)`, which finds [`RestoreSized`] (implemented
//! for `&Field<HashMap<..>>` and `&Field<HashSet<..>>`, whose elements deserialize) before
//! [`RestoreAny`] (for every `Field<T>`).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;

use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{CheckpointBucket, CheckpointError};

/// The restore of a field of type `T`.
pub struct Field<T>(PhantomData<fn() -> T>);

impl<T> Field<T> {
    /// The restore of a field of type `T`.
    #[must_use]
    pub const fn new() -> Self {
        Field(PhantomData)
    }
}

impl<T> Default for Field<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Any serde field: [`CheckpointBucket::get`].
pub trait RestoreAny<T> {
    /// The field under `key`.
    ///
    /// # Errors
    /// As [`CheckpointBucket::get`].
    fn restore(&self, bucket: &CheckpointBucket, key: &str) -> Result<T, CheckpointError>
    where
        T: DeserializeOwned;
}

impl<T> RestoreAny<T> for Field<T> {
    fn restore(&self, bucket: &CheckpointBucket, key: &str) -> Result<T, CheckpointError>
    where
        T: DeserializeOwned,
    {
        bucket.get(key)
    }
}

/// A collection allocated at its final size before it is filled.
pub trait RestoreSized<T> {
    /// The field under `key`.
    ///
    /// # Errors
    /// As [`CheckpointBucket::get`].
    fn restore(&self, bucket: &CheckpointBucket, key: &str) -> Result<T, CheckpointError>;
}

impl<T> RestoreSized<T> for &Field<T>
where
    T: Collection,
{
    fn restore(&self, bucket: &CheckpointBucket, key: &str) -> Result<T, CheckpointError> {
        bucket.get_with(key, presized::<T>)
    }
}

/// A collection that can be allocated for a number of entries, filled from a serde map or
/// sequence.
pub trait Collection: Sized {
    /// Deserializes it with `seed`, which allocates it for at most `seed.most` entries.
    ///
    /// # Errors
    /// The deserializer's.
    fn deserialize_sized<'de, D: Deserializer<'de>>(
        deserializer: D,
        seed: Presized<Self>,
    ) -> Result<Self, D::Error>;
}

/// The seed and visitor of a [`Collection`] allocated for the entries its encoding announces,
/// at most `most`.
pub struct Presized<T> {
    most: usize,
    marker: PhantomData<fn() -> T>,
}

/// The seed that restores a collection encoded as `value`, allocated for the entries it
/// announces (at most half as many as its encoding has bytes).
pub(crate) fn presized<T>(value: &super::BucketValue) -> Presized<T> {
    Presized {
        // A map's entry takes at least two bytes.
        most: value.encoded_len().map_or(0, |len| len / 2),
        marker: PhantomData,
    }
}

impl<T> Presized<T> {
    /// The capacity for `announced` entries.
    fn capacity(&self, announced: Option<usize>) -> usize {
        announced.unwrap_or(0).min(self.most)
    }
}

impl<'de, T: Collection> DeserializeSeed<'de> for Presized<T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        T::deserialize_sized(deserializer, self)
    }
}

impl<'de, K, V, S> Visitor<'de> for Presized<HashMap<K, V, S>>
where
    K: DeserializeOwned + Eq + Hash,
    V: DeserializeOwned,
    S: BuildHasher + Default,
{
    type Value = HashMap<K, V, S>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let capacity = self.capacity(access.size_hint());
        let mut map = HashMap::with_capacity_and_hasher(capacity, S::default());
        while let Some((key, value)) = access.next_entry()? {
            map.insert(key, value);
        }
        Ok(map)
    }
}

impl<K, V, S> Collection for HashMap<K, V, S>
where
    K: DeserializeOwned + Eq + Hash,
    V: DeserializeOwned,
    S: BuildHasher + Default,
{
    fn deserialize_sized<'de, D: Deserializer<'de>>(
        deserializer: D,
        seed: Presized<Self>,
    ) -> Result<Self, D::Error> {
        deserializer.deserialize_map(seed)
    }
}

impl<'de, T, S> Visitor<'de> for Presized<HashSet<T, S>>
where
    T: DeserializeOwned + Eq + Hash,
    S: BuildHasher + Default,
{
    type Value = HashSet<T, S>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let capacity = self.capacity(access.size_hint());
        let mut set = HashSet::with_capacity_and_hasher(capacity, S::default());
        while let Some(element) = access.next_element()? {
            set.insert(element);
        }
        Ok(set)
    }
}

impl<T, S> Collection for HashSet<T, S>
where
    T: DeserializeOwned + Eq + Hash,
    S: BuildHasher + Default,
{
    fn deserialize_sized<'de, D: Deserializer<'de>>(
        deserializer: D,
        seed: Presized<Self>,
    ) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(seed)
    }
}

// The double reference picks the restore, as in the generated code.
#[cfg(test)]
#[allow(clippy::needless_borrow)]
mod tests {
    use std::collections::{BTreeMap, HashMap, HashSet};

    use super::{Field, RestoreAny as _, RestoreSized as _};
    use crate::checkpoint::{BucketValue, CheckpointBucket, CheckpointError, CheckpointFormat};

    fn bucket_with<T: serde::Serialize>(format: CheckpointFormat, value: &T) -> CheckpointBucket {
        let mut bucket = CheckpointBucket::with_format(format);
        bucket.put("field", value).expect("put");
        bucket
    }

    #[test]
    fn maps_and_sets_restore_as_serde_restores_them_in_both_formats() {
        let map: HashMap<String, u64> = (0..5_000).map(|i| (format!("key-{i}"), i)).collect();
        let set: HashSet<u32> = (0..5_000).collect();
        for format in [CheckpointFormat::Json, CheckpointFormat::MessagePack] {
            let bucket = bucket_with(format, &map);
            let sized = (&&Field::<HashMap<String, u64>>::new())
                .restore(&bucket, "field")
                .expect("restore");
            let plain: HashMap<String, u64> = bucket.get("field").expect("get");
            assert_eq!(sized, plain);
            assert_eq!(sized, map);

            let bucket = bucket_with(format, &set);
            let sized = (&&Field::<HashSet<u32>>::new())
                .restore(&bucket, "field")
                .expect("restore");
            assert_eq!(sized, set);
        }
    }

    #[test]
    fn other_types_restore_through_get() {
        let map: BTreeMap<String, u64> = [("a".to_owned(), 1)].into();
        let bucket = bucket_with(CheckpointFormat::MessagePack, &map);
        let restored = (&&Field::<BTreeMap<String, u64>>::new())
            .restore(&bucket, "field")
            .expect("restore");
        assert_eq!(restored, map);
    }

    #[test]
    fn a_length_the_encoding_cannot_hold_is_an_error_not_an_allocation() {
        // A `MessagePack` map announcing 4,294,967,295 entries, with none after it.
        let mut bucket = CheckpointBucket::with_format(CheckpointFormat::MessagePack);
        bucket.insert(
            "field",
            BucketValue::MessagePack(vec![0xdf, 0xff, 0xff, 0xff, 0xff].into()),
        );
        let restored = (&&Field::<HashMap<String, u64>>::new()).restore(&bucket, "field");
        assert!(
            matches!(&restored, Err(CheckpointError::Invalid { key, .. }) if key == "field"),
            "{restored:?}"
        );
    }

    #[test]
    fn a_missing_key_is_named() {
        let bucket = CheckpointBucket::new();
        let restored = (&&Field::<HashMap<String, u64>>::new()).restore(&bucket, "field");
        assert!(
            matches!(&restored, Err(CheckpointError::Missing { key }) if key == "field"),
            "{restored:?}"
        );
    }
}
