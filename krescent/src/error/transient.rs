//! Which failures a restart may cure, decided along an error's causes: here, because the
//! answer needs the errors of every layer (stores, checkpoint storages, projections, the
//! PostgreSQL driver). The lower layers' public `is_transient` methods are defined here too.

use std::error::Error as StdError;

use crate::checkpoint::StorageError;
use crate::model::HandlerError;

impl HandlerError {
    /// Whether retrying the event may succeed: the handler's error is (or is caused by) a
    /// [`Transient`](crate::Transient), or a lost database connection (a
    /// [`ProjectionError`](crate::projection::ProjectionError) whose connection went away). A
    /// payload that does not decode never is.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            HandlerError::Decode(_) => false,
            HandlerError::Failed(source) => is_transient(&**source),
        }
    }
}

impl StorageError {
    /// Whether retrying may succeed: the database connection was lost, refused or timed out,
    /// or the server is shutting down or starting up; the object store's connection failed,
    /// was cut or timed out, or it answered 5xx or 429.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            StorageError::Database(source) => is_transient(&**source),
            StorageError::ObjectStore { transient, .. } => *transient,
            StorageError::Io { .. }
            | StorageError::CannotFence { .. }
            | StorageError::Corrupt { .. }
            | StorageError::Encode { .. }
            // Another instance holds the lease: retrying under the old epoch never succeeds.
            | StorageError::Fenced { .. }
            // A retired version never runs again.
            | StorageError::Retired { .. }
            | StorageError::Chain { .. } => false,
        }
    }
}

/// Whether `error` or one of its causes says that retrying may succeed: a [`Transient`], a
/// lost, refused or timed-out database connection, a store error marked transient. The first
/// cause that is a database or store error decides.
pub(crate) fn is_transient(error: &(dyn StdError + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<crate::Transient>() {
            return true;
        }
        if let Some(store) = e.downcast_ref::<crate::store::StoreError>() {
            return store.is_transient();
        }
        if let Some(storage) = e.downcast_ref::<crate::checkpoint::StorageError>() {
            return storage.is_transient();
        }
        #[cfg(feature = "postgres")]
        if let Some(projection) = e.downcast_ref::<crate::projection::ProjectionError>() {
            return projection.is_transient();
        }
        #[cfg(feature = "postgres")]
        if let Some(transient) = crate::postgres::transient_cause(e) {
            return transient;
        }
        cause = e.source();
    }
    false
}
