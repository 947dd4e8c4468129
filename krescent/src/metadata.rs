//! Event metadata: string keys and JSON values recorded beside an event's payload.

use std::sync::Arc;

use serde_json::{Map, Value};

/// The metadata of an event: string keys, JSON values (a correlation or causation id, a user,
/// a tenant), recorded beside the payload and handed to handlers in
/// [`EventMeta::metadata`](crate::EventMeta::metadata).
///
/// Empty unless set: an event appended without metadata, and every event stored before
/// krescent recorded metadata, has none. An empty map is stored as no metadata, so the two
/// read back alike. Cloning is cheap (the map is shared).
///
/// ```
/// use krescent::Metadata;
///
/// let metadata = Metadata::new()
///     .with("user", "ada")
///     .with("request", serde_json::json!({"ip": "127.0.0.1", "retries": [1, 2]}));
/// assert_eq!(metadata.get_str("user"), Some("ada"));
/// assert_eq!(metadata.len(), 2);
/// assert_eq!(Metadata::from_json(&metadata.to_json().unwrap()).unwrap(), metadata);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata(Option<Arc<Map<String, Value>>>);

/// The key of the correlation id: the id of the first event (or command) of a chain of causes.
pub const CORRELATION_ID: &str = "correlation_id";
/// The key of the causation id: the id of the event that caused this one.
pub const CAUSATION_ID: &str = "causation_id";

impl Metadata {
    /// No metadata.
    #[must_use]
    pub fn new() -> Self {
        Metadata(None)
    }

    /// This metadata with `key` set to `value` (replacing an earlier value of `key`).
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.insert(key, value);
        self
    }

    /// Sets `key` to `value`, replacing an earlier value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        Arc::make_mut(self.0.get_or_insert_with(Arc::default)).insert(key.into(), value.into());
    }

    /// Every entry of `other` set here, replacing the values of keys both have.
    pub fn extend(&mut self, other: Metadata) {
        if self.is_empty() {
            *self = other;
            return;
        }
        for (key, value) in other.iter() {
            self.insert(key.clone(), value.clone());
        }
    }

    /// The value of `key`.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.as_ref()?.get(key)
    }

    /// The value of `key` when it is a JSON string.
    #[must_use]
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// The correlation id ([`CORRELATION_ID`]), when set as a string.
    #[must_use]
    pub fn correlation_id(&self) -> Option<&str> {
        self.get_str(CORRELATION_ID)
    }

    /// The causation id ([`CAUSATION_ID`]), when set as a string.
    #[must_use]
    pub fn causation_id(&self) -> Option<&str> {
        self.get_str(CAUSATION_ID)
    }

    /// Whether there are no entries.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|m| m.is_empty())
    }

    /// The number of entries.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }

    /// The entries, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.0.iter().flat_map(|m| m.iter())
    }

    /// The entries as a JSON object's text; `None` when there are none (what stores record).
    #[must_use]
    pub fn to_json(&self) -> Option<String> {
        let map = self.0.as_ref().filter(|m| !m.is_empty())?;
        // A map of strings to JSON values always serializes.
        serde_json::to_string(&**map).ok()
    }

    /// Metadata from a JSON object's text, as [`to_json`](Self::to_json) writes it.
    ///
    /// # Errors
    /// When `json` is not a JSON object.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str::<Map<String, Value>>(json).map(Metadata::from)
    }
}

impl From<Map<String, Value>> for Metadata {
    fn from(map: Map<String, Value>) -> Self {
        Metadata((!map.is_empty()).then(|| Arc::new(map)))
    }
}

impl<K: Into<String>, V: Into<Value>> FromIterator<(K, V)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(entries: I) -> Self {
        entries
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect::<Map<String, Value>>()
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_metadata_is_no_metadata() {
        assert_eq!(Metadata::from(Map::new()), Metadata::new());
        assert_eq!(Metadata::new().to_json(), None);
        assert!(Metadata::from_json("{}").unwrap().is_empty());
        assert!(Metadata::from_json("[1]").is_err());
    }

    #[test]
    fn metadata_round_trips_through_its_json() {
        let metadata: Metadata = [
            ("", Value::from("")),
            ("ключ \"q\" \\ \u{1F600}", Value::from("\u{7f}\n\t")),
            (
                "nested",
                serde_json::json!({"a": [1, {"b": null}], "c": 1.5}),
            ),
        ]
        .into_iter()
        .collect();
        let json = metadata.to_json().unwrap();
        assert_eq!(Metadata::from_json(&json).unwrap(), metadata);
    }
}
