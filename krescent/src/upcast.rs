//! Upcasting: what turns a payload stored at an older revision of an event into the current
//! struct, one revision at a time.
//!
//! An event declares its older revisions with `#[event(revision = 3, upcast(1 = BookAddedV1,
//! 2 = BookAddedV2))]`: each older struct reads the payloads of its revision and converts into
//! the next revision's struct by `From` or `TryFrom`. A hop may instead be a function over the
//! JSON, `2 = json(path::to::function)`, a `fn(serde_json::Value) -> Result<serde_json::Value,
//! E>` turning a payload of its revision into one of the next, for what a struct cannot say
//! (JSON hops come before struct hops). The derive generates `Event::upcast` from the list;
//! [`RecordedEvent::decode`](crate::RecordedEvent::decode), the one place krescent decodes a
//! payload for a handler, calls it for every event stored at an older revision.

use serde::de::DeserializeOwned;
use serde_json::Value;

/// Why a payload does not decode as the current revision of its event type.
#[derive(Debug, thiserror::Error)]
pub enum DecodeFailure {
    /// The payload (or what a JSON hop made of it) is not a valid value of its revision's type.
    #[error("the payload is not a valid revision {revision}: {source}")]
    Malformed {
        /// The revision whose type it did not decode as.
        revision: u32,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// The event was stored at a revision this build does not know: newer than its type's, or
    /// one its upcast chain does not start from.
    #[error("stored at revision {stored}, which this build cannot read (it reads revisions 1 to {current})")]
    UnknownRevision {
        /// The stored revision.
        stored: u32,
        /// The revision of the event type in this build.
        current: u32,
    },
    /// A hop's `TryFrom` (or JSON function) refused the payload.
    #[error("upcasting from revision {from} to {to} failed: {source}")]
    Upcast {
        /// The revision the hop starts from.
        from: u32,
        /// The revision it produces.
        to: u32,
        /// What the conversion said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

/// `payload` decoded as `T`, the type of revision `revision`.
///
/// # Errors
/// [`DecodeFailure::Malformed`] naming the revision.
pub fn parse<T: DeserializeOwned>(revision: u32, payload: &str) -> Result<T, DecodeFailure> {
    serde_json::from_str(payload).map_err(|source| DecodeFailure::Malformed { revision, source })
}

/// `value`, the JSON of revision `revision`, decoded as `T`, the type of that revision.
///
/// # Errors
/// [`DecodeFailure::Malformed`] naming the revision.
pub fn from_value<T: DeserializeOwned>(revision: u32, value: Value) -> Result<T, DecodeFailure> {
    serde_json::from_value(value).map_err(|source| DecodeFailure::Malformed { revision, source })
}

/// One struct hop: `old`, of revision `from`, converted into the next revision's type.
///
/// # Errors
/// [`DecodeFailure::Upcast`] with the conversion's error.
pub fn hop<Old, New>(old: Old, from: u32) -> Result<New, DecodeFailure>
where
    New: TryFrom<Old>,
    <New as TryFrom<Old>>::Error: std::error::Error + Send + Sync + 'static,
{
    New::try_from(old).map_err(|e| DecodeFailure::Upcast {
        from,
        to: from + 1,
        source: Box::new(e),
    })
}

/// One JSON hop: `value`, of revision `from`, turned into the next revision's JSON by `hop`.
///
/// # Errors
/// [`DecodeFailure::Upcast`] with the function's error.
pub fn json_hop<E>(
    value: Value,
    from: u32,
    hop: fn(Value) -> Result<Value, E>,
) -> Result<Value, DecodeFailure>
where
    E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    hop(value).map_err(|e| DecodeFailure::Upcast {
        from,
        to: from + 1,
        source: e.into(),
    })
}
