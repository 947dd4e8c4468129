//! The checkpoint bucket: an ordered map of named values.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use base64::Engine;
use bytes::Bytes;
use serde::de::{DeserializeOwned, DeserializeSeed};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use super::{CheckpointError, CheckpointFormat};

/// A value in a [`CheckpointBucket`].
///
/// Primitives stay primitives, bytes stay bytes, any other serde value is kept encoded in the
/// bucket's [`CheckpointFormat`]: JSON text, or `MessagePack` bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BucketValue {
    /// A string.
    Str(String),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer above `i64::MAX`.
    Uint(u64),
    /// A float; stored as text when it is not finite.
    Float(#[serde(with = "float")] f64),
    /// A boolean.
    Bool(bool),
    /// Any other serde value, as JSON.
    Json(Box<RawValue>),
    /// Binary data, base64 in the encoding.
    Bytes(#[serde(with = "base64_bytes")] Vec<u8>),
    /// Any other serde value, as `MessagePack` ([`CheckpointFormat::MessagePack`]); base64 in a
    /// JSON encoding. Shared, not copied, where a storage writes it out whole (the object
    /// storage's `PUT` sends these very bytes).
    MessagePack(#[serde(with = "base64_bytes")] Bytes),
    /// A nested bucket, written by an extension's own [`CheckpointSupport`](super::CheckpointSupport).
    Bucket(CheckpointBucket),
}

impl PartialEq for BucketValue {
    fn eq(&self, other: &Self) -> bool {
        use BucketValue as V;
        match (self, other) {
            (V::Str(a), V::Str(b)) => a == b,
            (V::Int(a), V::Int(b)) => a == b,
            (V::Uint(a), V::Uint(b)) => a == b,
            (V::Float(a), V::Float(b)) => a.to_bits() == b.to_bits(),
            (V::Bool(a), V::Bool(b)) => a == b,
            (V::Json(a), V::Json(b)) => a.get() == b.get(),
            (V::Bytes(a), V::Bytes(b)) => a == b,
            (V::MessagePack(a), V::MessagePack(b)) => a == b,
            (V::Bucket(a), V::Bucket(b)) => a == b,
            _ => false,
        }
    }
}

impl BucketValue {
    /// The kind's name, as error messages say it.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            BucketValue::Str(_) => "string",
            BucketValue::Int(_) | BucketValue::Uint(_) => "integer",
            BucketValue::Float(_) => "float",
            BucketValue::Bool(_) => "bool",
            BucketValue::Json(_) => "json",
            BucketValue::Bytes(_) => "bytes",
            BucketValue::MessagePack(_) => "messagepack",
            BucketValue::Bucket(_) => "bucket",
        }
    }

    /// Serializes `value`, keeping a primitive as a primitive.
    ///
    /// # Errors
    /// When serde cannot serialize the value as JSON.
    pub fn from_serde<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        // Serialized straight into a `RawValue`: serde_json's own output needs no second pass
        // to check that it is JSON (`RawValue::from_string` would parse it all again).
        let raw = serde_json::value::to_raw_value(value)?;
        let json = raw.get();
        Ok(match json.as_bytes().first() {
            Some(b'"') => BucketValue::Str(serde_json::from_str(json)?),
            Some(b't') => BucketValue::Bool(true),
            Some(b'f') => BucketValue::Bool(false),
            Some(b'-' | b'0'..=b'9') => {
                if let Ok(i) = json.parse::<i64>() {
                    BucketValue::Int(i)
                } else if let Ok(u) = json.parse::<u64>() {
                    BucketValue::Uint(u)
                } else {
                    BucketValue::Float(serde_json::from_str(json)?)
                }
            }
            _ => BucketValue::Json(raw),
        })
    }

    /// Serializes `value` in `format`, keeping a primitive as a primitive.
    ///
    /// # Errors
    /// When serde cannot serialize the value in that format.
    pub fn from_serde_in<T: Serialize + ?Sized>(
        format: CheckpointFormat,
        value: &T,
    ) -> Result<Self, String> {
        match format {
            CheckpointFormat::Json => Self::from_serde(value).map_err(|e| e.to_string()),
            CheckpointFormat::MessagePack => {
                let packed = rmp_serde::to_vec_named(value).map_err(|e| e.to_string())?;
                Self::from_message_pack(packed).map_err(|e| e.to_string())
            }
        }
    }

    /// A `MessagePack` encoding, a primitive as a primitive (told by its first byte).
    fn from_message_pack(packed: Vec<u8>) -> Result<Self, rmp_serde::decode::Error> {
        Ok(match packed.first() {
            // fixstr, str 8/16/32
            Some(0xa0..=0xbf | 0xd9..=0xdb) => BucketValue::Str(rmp_serde::from_slice(&packed)?),
            Some(0xc2) => BucketValue::Bool(false),
            Some(0xc3) => BucketValue::Bool(true),
            // float 32/64
            Some(0xca | 0xcb) => BucketValue::Float(rmp_serde::from_slice(&packed)?),
            // fixint, int 8..64, uint 8..64
            Some(0x00..=0x7f | 0xe0..=0xff | 0xd0..=0xd3 | 0xcc..=0xcf) => {
                let value: i128 = rmp_serde::from_slice(&packed)?;
                match i64::try_from(value) {
                    Ok(i) => BucketValue::Int(i),
                    Err(_) => BucketValue::Uint(u64::try_from(value).unwrap_or(u64::MAX)),
                }
            }
            _ => BucketValue::MessagePack(packed.into()),
        })
    }

    /// Deserializes the value as `T`.
    ///
    /// # Errors
    /// When the value is bytes or a bucket, or does not deserialize as `T`.
    pub fn to_serde<T: DeserializeOwned>(&self) -> Result<T, String> {
        self.to_serde_seed(PhantomData::<T>)
    }

    /// Deserializes the value with `seed` (which may, say, size a collection beforehand).
    pub(crate) fn to_serde_seed<T, S>(&self, seed: S) -> Result<T, String>
    where
        S: for<'de> DeserializeSeed<'de, Value = T>,
    {
        let result = match self {
            BucketValue::Str(s) => seed.deserialize(serde_json::Value::from(s.as_str())),
            BucketValue::Int(i) => seed.deserialize(serde_json::Value::from(*i)),
            BucketValue::Uint(u) => seed.deserialize(serde_json::Value::from(*u)),
            BucketValue::Float(f) if f.is_finite() => seed.deserialize(serde_json::Value::from(*f)),
            BucketValue::Bool(b) => seed.deserialize(serde_json::Value::from(*b)),
            // JSON has no NaN or infinity (`Value::from` would make them null).
            BucketValue::Float(f) => {
                let value = serde::de::value::F64Deserializer::<serde::de::value::Error>::new(*f);
                return seed.deserialize(value).map_err(|e| e.to_string());
            }
            BucketValue::Json(raw) => {
                let mut decoder = serde_json::Deserializer::from_str(raw.get());
                seed.deserialize(&mut decoder)
                    .and_then(|value| decoder.end().map(|()| value))
            }
            BucketValue::MessagePack(packed) => {
                let mut decoder = rmp_serde::Deserializer::from_read_ref(&packed[..]);
                return seed.deserialize(&mut decoder).map_err(|e| e.to_string());
            }
            BucketValue::Bytes(_) | BucketValue::Bucket(_) => {
                return Err(format!("expected a serde value, found {}", self.kind()));
            }
        };
        result.map_err(|e| e.to_string())
    }

    /// The length of the value's encoding, when it is kept encoded (JSON or `MessagePack`):
    /// a bound on how many entries it can hold.
    pub(crate) fn encoded_len(&self) -> Option<usize> {
        match self {
            BucketValue::Json(raw) => Some(raw.get().len()),
            BucketValue::MessagePack(packed) => Some(packed.len()),
            _ => None,
        }
    }
}

/// An ordered map of key → [`BucketValue`]: what a model writes into a checkpoint.
///
/// The derive fills it from the `#[checkpoint]` fields; hand-written
/// [`CheckpointSupport`](super::CheckpointSupport) impls use [`put`](Self::put) and
/// [`get`](Self::get). [`put`](Self::put) encodes in the bucket's [`format`](Self::format);
/// [`get`](Self::get) reads either format. Two buckets are equal when their values are: the
/// format only says how the next values are put.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CheckpointBucket {
    values: BTreeMap<String, BucketValue>,
    #[serde(skip)]
    format: CheckpointFormat,
    /// Whether incremental fields put their changes only (a delta's bucket).
    #[serde(skip)]
    delta: bool,
}

impl PartialEq for CheckpointBucket {
    fn eq(&self, other: &Self) -> bool {
        self.values == other.values
    }
}

impl CheckpointBucket {
    /// An empty bucket that puts values as JSON.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty bucket that puts values in `format`.
    #[must_use]
    pub fn with_format(format: CheckpointFormat) -> Self {
        CheckpointBucket {
            values: BTreeMap::new(),
            format,
            delta: false,
        }
    }

    /// An empty bucket that puts values in `format`, and of `#[checkpoint(incremental)]`
    /// fields only what changed since the last checkpoint: a delta's.
    #[must_use]
    pub fn delta_with_format(format: CheckpointFormat) -> Self {
        CheckpointBucket {
            delta: true,
            ..Self::with_format(format)
        }
    }

    /// Whether incremental fields put only what changed ([`delta_with_format`](Self::delta_with_format)).
    #[must_use]
    pub fn is_delta(&self) -> bool {
        self.delta
    }

    /// The format [`put`](Self::put) encodes in.
    #[must_use]
    pub fn format(&self) -> CheckpointFormat {
        self.format
    }

    /// Stores `value` under `key`, replacing what was there.
    pub fn insert(&mut self, key: impl Into<String>, value: BucketValue) {
        self.values.insert(key.into(), value);
    }

    /// Serializes `value` under `key`.
    ///
    /// # Errors
    /// [`CheckpointError::Serialize`] naming the key when serde fails.
    pub fn put<T: Serialize + ?Sized>(
        &mut self,
        key: &str,
        value: &T,
    ) -> Result<(), CheckpointError> {
        let value = BucketValue::from_serde_in(self.format, value).map_err(|reason| {
            CheckpointError::Serialize {
                key: key.to_owned(),
                reason,
            }
        })?;
        self.insert(key, value);
        Ok(())
    }

    /// Stores binary data under `key`.
    pub fn put_bytes(&mut self, key: &str, bytes: &[u8]) {
        self.insert(key, BucketValue::Bytes(bytes.to_vec()));
    }

    /// The value under `key`.
    #[must_use]
    pub fn value(&self, key: &str) -> Option<&BucketValue> {
        self.values.get(key)
    }

    /// Deserializes the value under `key`.
    ///
    /// # Errors
    /// [`CheckpointError::Missing`] or [`CheckpointError::Invalid`] naming the key.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<T, CheckpointError> {
        self.get_with(key, |_| PhantomData::<T>)
    }

    /// [`get`](Self::get) with the seed `seed` makes from the value (which may, say, size a
    /// collection by the value's [`encoded_len`](BucketValue::encoded_len)).
    pub(crate) fn get_with<T, S>(
        &self,
        key: &str,
        seed: impl FnOnce(&BucketValue) -> S,
    ) -> Result<T, CheckpointError>
    where
        S: for<'de> DeserializeSeed<'de, Value = T>,
    {
        let value = self.require(key)?;
        value
            .to_serde_seed(seed(value))
            .map_err(|reason| CheckpointError::Invalid {
                key: key.to_owned(),
                reason,
            })
    }

    /// The binary data under `key`.
    ///
    /// # Errors
    /// [`CheckpointError::Missing`] or [`CheckpointError::Invalid`] naming the key.
    pub fn get_bytes(&self, key: &str) -> Result<Vec<u8>, CheckpointError> {
        match self.require(key)? {
            BucketValue::Bytes(bytes) => Ok(bytes.clone()),
            other => Err(CheckpointError::Invalid {
                key: key.to_owned(),
                reason: format!("expected bytes, found {}", other.kind()),
            }),
        }
    }

    /// The nested bucket under `key`.
    ///
    /// # Errors
    /// [`CheckpointError::Missing`] or [`CheckpointError::Invalid`] naming the key.
    pub fn bucket(&self, key: &str) -> Result<&CheckpointBucket, CheckpointError> {
        match self.require(key)? {
            BucketValue::Bucket(bucket) => Ok(bucket),
            other => Err(CheckpointError::Invalid {
                key: key.to_owned(),
                reason: format!("expected a bucket, found {}", other.kind()),
            }),
        }
    }

    /// The value under `key`.
    pub(crate) fn require(&self, key: &str) -> Result<&BucketValue, CheckpointError> {
        self.values
            .get(key)
            .ok_or_else(|| CheckpointError::Missing {
                key: key.to_owned(),
            })
    }

    /// Removes and returns the value under `key`.
    pub fn remove(&mut self, key: &str) -> Option<BucketValue> {
        self.values.remove(key)
    }

    /// Whether `key` holds a value.
    #[must_use]
    pub fn contains(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// The keys and values, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &BucketValue)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The number of keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the bucket holds nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// The bucket in one `MessagePack` document, its binary values as `MessagePack` binaries (the
/// Postgres storage's `data_binary`, the body of the object store's objects).
#[cfg(any(feature = "postgres", feature = "object-store", test))]
pub(crate) mod packed {
    use std::collections::BTreeMap;

    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::value::RawValue;

    use super::{BucketValue, CheckpointBucket, CheckpointFormat};

    /// Bytes written as a `MessagePack` binary, not an array of numbers.
    struct Raw<'a>(&'a [u8]);

    impl Serialize for Raw<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    struct RawBuf(Vec<u8>);

    impl<'de> Deserialize<'de> for RawBuf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Bytes;
            impl<'de> Visitor<'de> for Bytes {
                type Value = Vec<u8>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                    Ok(v.to_vec())
                }
                fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                    Ok(v)
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                    let mut bytes = Vec::new();
                    while let Some(byte) = seq.next_element()? {
                        bytes.push(byte);
                    }
                    Ok(bytes)
                }
            }
            d.deserialize_byte_buf(Bytes).map(RawBuf)
        }
    }

    #[derive(Serialize)]
    enum ValueRef<'a> {
        Str(&'a str),
        Int(i64),
        Uint(u64),
        Float(f64),
        Bool(bool),
        Json(&'a str),
        Bytes(Raw<'a>),
        MessagePack(Raw<'a>),
        Bucket(BucketRef<'a>),
    }

    struct BucketRef<'a>(&'a CheckpointBucket);

    impl Serialize for BucketRef<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_map(self.0.values.iter().map(|(key, value)| {
                let value = match value {
                    BucketValue::Str(v) => ValueRef::Str(v),
                    BucketValue::Int(v) => ValueRef::Int(*v),
                    BucketValue::Uint(v) => ValueRef::Uint(*v),
                    BucketValue::Float(v) => ValueRef::Float(*v),
                    BucketValue::Bool(v) => ValueRef::Bool(*v),
                    BucketValue::Json(v) => ValueRef::Json(v.get()),
                    BucketValue::Bytes(v) => ValueRef::Bytes(Raw(v)),
                    BucketValue::MessagePack(v) => ValueRef::MessagePack(Raw(v)),
                    BucketValue::Bucket(v) => ValueRef::Bucket(BucketRef(v)),
                };
                (key, value)
            }))
        }
    }

    #[derive(Deserialize)]
    enum Value {
        Str(String),
        Int(i64),
        Uint(u64),
        Float(f64),
        Bool(bool),
        Json(String),
        Bytes(RawBuf),
        MessagePack(RawBuf),
        Bucket(BTreeMap<String, Value>),
    }

    fn bucket(values: BTreeMap<String, Value>) -> Result<CheckpointBucket, String> {
        let mut decoded = CheckpointBucket::with_format(CheckpointFormat::MessagePack);
        for (key, value) in values {
            let value = match value {
                Value::Str(v) => BucketValue::Str(v),
                Value::Int(v) => BucketValue::Int(v),
                Value::Uint(v) => BucketValue::Uint(v),
                Value::Float(v) => BucketValue::Float(v),
                Value::Bool(v) => BucketValue::Bool(v),
                Value::Json(v) => BucketValue::Json(
                    RawValue::from_string(v).map_err(|e| format!("key `{key}`: {e}"))?,
                ),
                Value::Bytes(v) => BucketValue::Bytes(v.0),
                Value::MessagePack(v) => BucketValue::MessagePack(v.0.into()),
                Value::Bucket(v) => BucketValue::Bucket(bucket(v)?),
            };
            decoded.values.insert(key, value);
        }
        Ok(decoded)
    }

    /// `bucket` as one `MessagePack` document.
    #[cfg(test)]
    pub(crate) fn encode(bucket: &CheckpointBucket) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        encode_into(bucket, &mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// Writes `bucket` as one `MessagePack` document into `out` (the Postgres storage: straight
    /// into the statement's parameter buffer, with no copy in between).
    pub(crate) fn encode_into<W: std::io::Write>(
        bucket: &CheckpointBucket,
        out: &mut W,
    ) -> Result<(), rmp_serde::encode::Error> {
        rmp_serde::encode::write(out, &BucketRef(bucket))
    }

    /// Writes `bucket` after `prefix` as one `MessagePack` document in pieces: the large
    /// `MessagePack` values shared with the bucket, not copied (the object storage's `PUT`
    /// body; a 43 MB value is neither copied nor paged in again).
    #[cfg(feature = "object-store")]
    pub(crate) fn encode_shared(
        bucket: &CheckpointBucket,
        prefix: Vec<u8>,
    ) -> Result<Vec<bytes::Bytes>, rmp_serde::encode::Error> {
        let mut pieces = shared::Pieces::new(bucket, prefix);
        encode_into(bucket, &mut pieces)?;
        Ok(pieces.finish())
    }

    /// About the size [`encode_into`] writes (at least the values' bytes), to reserve it once.
    #[cfg(feature = "postgres")]
    pub(crate) fn size_hint(bucket: &CheckpointBucket) -> usize {
        bucket
            .values
            .iter()
            .map(|(key, value)| {
                key.len()
                    + 16
                    + match value {
                        BucketValue::Str(v) => v.len(),
                        BucketValue::Json(v) => v.get().len(),
                        BucketValue::Bytes(v) => v.len(),
                        BucketValue::MessagePack(v) => v.len(),
                        BucketValue::Bucket(v) => size_hint(v),
                        BucketValue::Int(_)
                        | BucketValue::Uint(_)
                        | BucketValue::Float(_)
                        | BucketValue::Bool(_) => 8,
                    }
            })
            .sum()
    }

    /// The bucket of a document written by [`encode`]; what is wrong with it otherwise.
    pub(crate) fn decode(bytes: &[u8]) -> Result<CheckpointBucket, String> {
        let values: BTreeMap<String, Value> =
            rmp_serde::from_slice(bytes).map_err(|e| e.to_string())?;
        bucket(values)
    }

    /// The writer of [`encode_shared`].
    #[cfg(feature = "object-store")]
    mod shared {
        use bytes::Bytes;

        use super::{BucketValue, CheckpointBucket};

        /// Values shorter than this are copied: a piece of their own costs more than the copy.
        const SHARED_LEN: usize = 64 * 1024;

        /// A document gathered in pieces. The encoder writes a binary value's bytes with one
        /// `write` of the very slice it was given, so a write that *is* one of the bucket's
        /// large values (same address, same length) becomes a piece sharing that value; any
        /// other write is copied into the current piece. Nothing depends on the encoder
        /// writing so but the speed: a value written otherwise is copied, byte for byte the
        /// same document.
        pub(super) struct Pieces<'a> {
            large: Vec<&'a Bytes>,
            current: Vec<u8>,
            done: Vec<Bytes>,
        }

        impl<'a> Pieces<'a> {
            pub(super) fn new(bucket: &'a CheckpointBucket, prefix: Vec<u8>) -> Self {
                let mut large = Vec::new();
                collect(bucket, &mut large);
                Pieces {
                    large,
                    current: prefix,
                    done: Vec::new(),
                }
            }

            pub(super) fn finish(mut self) -> Vec<Bytes> {
                if !self.current.is_empty() {
                    self.done.push(self.current.into());
                }
                self.done
            }
        }

        fn collect<'a>(bucket: &'a CheckpointBucket, large: &mut Vec<&'a Bytes>) {
            for value in bucket.values.values() {
                match value {
                    BucketValue::MessagePack(packed) if packed.len() >= SHARED_LEN => {
                        large.push(packed);
                    }
                    BucketValue::Bucket(nested) => collect(nested, large),
                    _ => {}
                }
            }
        }

        impl std::io::Write for Pieces<'_> {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let shared = (buf.len() >= SHARED_LEN)
                    .then(|| {
                        self.large.iter().find(|value| {
                            value.as_ptr() == buf.as_ptr() && value.len() == buf.len()
                        })
                    })
                    .flatten();
                match shared {
                    Some(value) => {
                        let current = std::mem::take(&mut self.current);
                        if !current.is_empty() {
                            self.done.push(current.into());
                        }
                        self.done.push(Bytes::clone(value));
                    }
                    None => self.current.extend_from_slice(buf),
                }
                Ok(buf.len())
            }

            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
    }
}

mod base64_bytes {
    use super::{Deserialize, Deserializer, Engine, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, T: From<Vec<u8>>>(
        d: D,
    ) -> Result<T, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(T::from)
            .map_err(serde::de::Error::custom)
    }
}

mod float {
    use super::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::trivially_copy_pass_by_ref)] // serde's `with` passes a reference
    pub(super) fn serialize<S: Serializer>(value: &f64, s: S) -> Result<S::Ok, S::Error> {
        if value.is_finite() {
            s.serialize_f64(*value)
        } else {
            s.serialize_str(&value.to_string())
        }
    }

    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Repr<'a> {
        Number(f64),
        Text(&'a str),
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Number(n) => Ok(n),
            Repr::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primitives_stay_primitives() {
        assert_eq!(
            BucketValue::from_serde("a").unwrap(),
            BucketValue::Str("a".into())
        );
        assert_eq!(
            BucketValue::from_serde(&-3i32).unwrap(),
            BucketValue::Int(-3)
        );
        assert_eq!(
            BucketValue::from_serde(&u64::MAX).unwrap(),
            BucketValue::Uint(u64::MAX)
        );
        assert_eq!(
            BucketValue::from_serde(&1.5f64).unwrap(),
            BucketValue::Float(1.5)
        );
        assert_eq!(
            BucketValue::from_serde(&true).unwrap(),
            BucketValue::Bool(true)
        );
        assert_eq!(BucketValue::from_serde(&vec![1, 2]).unwrap().kind(), "json");
        assert_eq!(BucketValue::from_serde(&None::<u8>).unwrap().kind(), "json");
    }

    #[test]
    fn encoding_round_trips_every_kind() {
        let mut inner = CheckpointBucket::new();
        inner.put("n", &7u8).unwrap();
        let mut bucket = CheckpointBucket::new();
        bucket.put("s", "text").unwrap();
        bucket.put("f", &f64::NAN).unwrap();
        bucket.put("g", &f64::NEG_INFINITY).unwrap();
        bucket
            .put("j", &std::collections::BTreeMap::from([("k", [1, 2])]))
            .unwrap();
        bucket.put_bytes("b", &[0, 255, 7]);
        bucket.insert("nested", BucketValue::Bucket(inner));
        let text = serde_json::to_string(&bucket).unwrap();
        let back: CheckpointBucket = serde_json::from_str(&text).unwrap();
        assert_eq!(back, bucket);
        assert_eq!(back.get_bytes("b").unwrap(), vec![0, 255, 7]);
        assert_eq!(back.bucket("nested").unwrap().get::<u8>("n").unwrap(), 7);
    }

    #[test]
    fn message_pack_keeps_primitives_and_round_trips_every_kind() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        #[serde(untagged)]
        enum Loose {
            Number(u32),
            Words(Vec<String>),
        }
        let format = CheckpointFormat::MessagePack;
        assert_eq!(
            BucketValue::from_serde_in(format, "a").unwrap(),
            BucketValue::Str("a".into())
        );
        assert_eq!(
            BucketValue::from_serde_in(format, &-3i32).unwrap(),
            BucketValue::Int(-3)
        );
        assert_eq!(
            BucketValue::from_serde_in(format, &u64::MAX).unwrap(),
            BucketValue::Uint(u64::MAX)
        );
        assert_eq!(
            BucketValue::from_serde_in(format, &1.5f64).unwrap(),
            BucketValue::Float(1.5)
        );
        assert_eq!(
            BucketValue::from_serde_in(format, &false).unwrap(),
            BucketValue::Bool(false)
        );

        let mut inner = CheckpointBucket::with_format(format);
        inner.put("n", &7u8).unwrap();
        let mut bucket = CheckpointBucket::with_format(format);
        bucket.put("s", "text").unwrap();
        bucket.put("f", &f64::NAN).unwrap();
        let map = std::collections::HashMap::from([("k".to_owned(), vec![1u64, 2])]);
        bucket.put("map", &map).unwrap();
        bucket
            .put("loose", &[Loose::Number(1), Loose::Words(vec!["w".into()])])
            .unwrap();
        bucket.put("none", &None::<u8>).unwrap();
        bucket.put_bytes("b", &[0, 255, 7]);
        bucket.insert(
            "raw",
            BucketValue::Json(RawValue::from_string(r#"{ "a" : 1 }"#.to_owned()).unwrap()),
        );
        bucket.insert("nested", BucketValue::Bucket(inner));
        assert_eq!(
            bucket.value("map").map(BucketValue::kind),
            Some("messagepack")
        );

        let packed_bytes = packed::encode(&bucket).unwrap();
        let back = packed::decode(&packed_bytes).unwrap();
        assert_eq!(back, bucket);
        assert_eq!(back.format(), CheckpointFormat::MessagePack);
        assert_eq!(
            back.get::<std::collections::HashMap<String, Vec<u64>>>("map")
                .unwrap(),
            map
        );
        assert_eq!(
            back.get::<Vec<Loose>>("loose").unwrap(),
            [Loose::Number(1), Loose::Words(vec!["w".into()])]
        );
        assert_eq!(back.get::<Option<u8>>("none").unwrap(), None);
        assert!(back.get::<f64>("f").unwrap().is_nan());
        assert_eq!(back.bucket("nested").unwrap().get::<u8>("n").unwrap(), 7);
        // And through a JSON document (the file storage), `MessagePack` values as base64.
        let text = serde_json::to_string(&bucket).unwrap();
        let back: CheckpointBucket = serde_json::from_str(&text).unwrap();
        assert_eq!(back, bucket);
        assert!(packed::decode(&[0x92, 1, 2]).is_err());
    }

    #[cfg(feature = "object-store")]
    #[test]
    fn shared_pieces_are_the_document_with_large_values_not_copied() {
        let format = CheckpointFormat::MessagePack;
        let large: Vec<u64> = (0..40_000).collect();
        let mut inner = CheckpointBucket::with_format(format);
        inner.put("large", &large).unwrap();
        inner.put("small", &[1, 2, 3]).unwrap();
        let mut bucket = CheckpointBucket::with_format(format);
        bucket.put("a", &large).unwrap();
        bucket.put("b", "text").unwrap();
        bucket.insert("nested", BucketValue::Bucket(inner));
        let pieces = packed::encode_shared(&bucket, b"head\n".to_vec()).unwrap();
        let joined: Vec<u8> = pieces
            .iter()
            .flat_map(|piece| piece.iter().copied())
            .collect();
        let mut whole = b"head\n".to_vec();
        whole.extend(packed::encode(&bucket).unwrap());
        assert_eq!(joined, whole);
        let shares = |value: &BucketValue| match value {
            BucketValue::MessagePack(packed) => pieces
                .iter()
                .any(|piece| piece.as_ptr() == packed.as_ptr() && piece.len() == packed.len()),
            other => panic!("unexpected {other:?}"),
        };
        assert!(shares(bucket.value("a").unwrap()));
        assert!(shares(
            bucket.bucket("nested").unwrap().value("large").unwrap()
        ));
        assert!(!shares(
            bucket.bucket("nested").unwrap().value("small").unwrap()
        ));
    }

    #[test]
    fn strings_restore_into_options_and_newtypes() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct BookId(String);
        let mut bucket = CheckpointBucket::new();
        bucket.put("option", &Some("a")).unwrap();
        bucket.put("newtype", &BookId("b".into())).unwrap();
        assert_eq!(
            bucket.get::<Option<String>>("option").unwrap(),
            Some("a".to_owned())
        );
        assert_eq!(bucket.get::<BookId>("newtype").unwrap(), BookId("b".into()));
    }

    #[test]
    fn missing_and_mistyped_keys_are_named() {
        let mut bucket = CheckpointBucket::new();
        bucket.put("s", "text").unwrap();
        assert!(
            matches!(bucket.get::<u32>("x"), Err(CheckpointError::Missing { key }) if key == "x")
        );
        assert!(
            matches!(bucket.get::<u32>("s"), Err(CheckpointError::Invalid { key, .. }) if key == "s")
        );
        assert!(
            matches!(bucket.get_bytes("s"), Err(CheckpointError::Invalid { key, .. }) if key == "s")
        );
    }
}
