//! What generated code reaches; not public API.

pub use core::future::Future;
pub use core::num::NonZeroU32;
pub use core::time::Duration;

pub use crate::checkpoint::field::{Field, RestoreAny, RestoreSized};
pub use crate::checkpoint::incremental::{
    present as incremental_present, put as incremental_put, restore as incremental_restore,
    Incremental,
};
pub use crate::checkpoint::{
    BucketValue, CheckpointBucket, CheckpointConfig, CheckpointError, CheckpointSupport,
    CheckpointTransaction, OnInvalid, Strategy,
};
pub use crate::event::{is_named, Event, EventType, RecordedEvent};
pub use crate::group::Group;
pub use crate::model::{EventModel, HandlerError, HandlerOutput, Handlers};
pub use crate::upcast::{from_value, hop, json_hop, parse, DecodeFailure};
pub use crate::{EventMeta, Origin, Position};
pub use serde;
pub use serde_json::Value as JsonValue;

/// `future`, required to be `Send`: wraps each async handler's call, so that a handler future
/// that is not `Send` is reported at the handler rather than at `#[handlers]`.
pub fn send<F: Future + Send>(future: F) -> F {
    future
}

/// Whether two event type names are the same; for the compile-time check of `#[handlers]`.
#[must_use]
pub const fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// `error` from a nested bucket (a `#[checkpoint(support)]` field), its key prefixed with the
/// nested bucket's: `index.entries`.
#[must_use]
pub fn nested_error(key: &str, error: CheckpointError) -> CheckpointError {
    match error {
        CheckpointError::Serialize { key: inner, reason } => CheckpointError::Serialize {
            key: format!("{key}.{inner}"),
            reason,
        },
        CheckpointError::Missing { key: inner } => CheckpointError::Missing {
            key: format!("{key}.{inner}"),
        },
        CheckpointError::Invalid { key: inner, reason } => CheckpointError::Invalid {
            key: format!("{key}.{inner}"),
            reason,
        },
        other @ CheckpointError::StaleReference { .. } => other,
    }
}

/// Compiles only when the `postgres` feature is on; generated for `storage = "postgres"`.
#[cfg(feature = "postgres")]
#[macro_export]
#[doc(hidden)]
macro_rules! __krescent_require_postgres {
    () => {};
}

/// Compiles only when the `postgres` feature is on; generated for `storage = "postgres"`.
#[cfg(not(feature = "postgres"))]
#[macro_export]
#[doc(hidden)]
macro_rules! __krescent_require_postgres {
    () => {
        ::core::compile_error!("checkpoint storage `postgres` needs the `postgres` feature of `krescent`; enable it with `krescent = { features = [\"postgres\"] }`")
    };
}

pub use crate::__krescent_require_postgres as require_postgres;
