//! Driver and pool failures as store and storage errors, with what was being done.

use std::error::Error as StdError;
use std::fmt;

use deadpool_postgres::{HookError, PoolError};

use crate::checkpoint::StorageError;
use crate::store::StoreError;

/// A database failure and the operation it interrupted, such as "append to stream `a-1`".
#[derive(Debug)]
pub(crate) struct Failed {
    doing: String,
    source: Box<dyn StdError + Send + Sync + 'static>,
    /// Whether retrying may help (a lost or refused connection).
    transient: bool,
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.doing)?;
        // The driver's own message is terse ("db error"): say what the server said, with its
        // SQLSTATE, and what each cause said.
        if let Some(db) = self
            .source
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::as_db_error)
        {
            write!(
                f,
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            )?;
            if let Some(detail) = db.detail() {
                write!(f, "; {detail}")?;
            }
            return Ok(());
        }
        write!(f, "{}", self.source)?;
        let mut cause = self.source.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

impl StdError for Failed {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

/// A failure of the driver or of the pool.
pub(crate) enum DbFailure {
    /// The driver failed.
    Driver(tokio_postgres::Error),
    /// The pool could not hand out a connection.
    Pool(PoolError),
    /// No connection of a pool became free in time.
    Exhausted(super::PoolExhausted),
    /// Something else went wrong (a value the database returned is out of range).
    Other(String),
    /// The checkpoint storage failed to read a checkpoint that a transaction needed (a
    /// rescale reads the old segment count's).
    Storage(crate::checkpoint::StorageError),
}

impl From<tokio_postgres::Error> for DbFailure {
    fn from(e: tokio_postgres::Error) -> Self {
        DbFailure::Driver(e)
    }
}

impl From<PoolError> for DbFailure {
    fn from(e: PoolError) -> Self {
        DbFailure::Pool(e)
    }
}

impl DbFailure {
    /// Whether retrying may help: the connection was lost, refused or timed out, or the server
    /// is shutting down or starting up.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            DbFailure::Driver(e)
            | DbFailure::Pool(
                PoolError::Backend(e) | PoolError::PostCreateHook(HookError::Backend(e)),
            ) => driver_error_is_transient(e),
            DbFailure::Pool(PoolError::Timeout(_)) | DbFailure::Exhausted(_) => true,
            DbFailure::Storage(crate::checkpoint::StorageError::Database(source)) => {
                transient_cause(&**source).unwrap_or(false)
            }
            DbFailure::Pool(_) | DbFailure::Other(_) | DbFailure::Storage(_) => false,
        }
    }

    /// The detail of a unique violation of the constraint whose name ends with `suffix`
    /// (`Key (event_id)=(…) already exists.`), if this is one.
    pub(crate) fn unique_violation(&self, suffix: &str) -> Option<&str> {
        let DbFailure::Driver(e) = self else {
            return None;
        };
        let db = e.as_db_error()?;
        let violated = *db.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            && db.constraint().is_some_and(|name| name.ends_with(suffix));
        violated.then(|| db.detail().unwrap_or_default())
    }

    pub(crate) fn into_source(self) -> Box<dyn StdError + Send + Sync + 'static> {
        match self {
            DbFailure::Driver(e) => Box::new(e),
            DbFailure::Pool(e) => Box::new(e),
            DbFailure::Exhausted(e) => Box::new(e),
            DbFailure::Other(message) => message.into(),
            DbFailure::Storage(e) => Box::new(e),
        }
    }

    /// The failure as a store error, saying what was being done.
    pub(crate) fn store(self, doing: impl Into<String>) -> StoreError {
        let transient = self.is_transient();
        StoreError::Database {
            source: Box::new(Failed {
                doing: doing.into(),
                source: self.into_source(),
                transient,
            }),
            transient,
        }
    }

    /// The failure as a storage error, saying what was being done.
    pub(crate) fn storage(self, doing: impl Into<String>) -> StorageError {
        let transient = self.is_transient();
        StorageError::Database(Box::new(Failed {
            doing: doing.into(),
            source: self.into_source(),
            transient,
        }))
    }
}

/// Whether `error` itself is a database failure that retrying may cure; `None` when it is no
/// database error of this crate or of the driver.
pub(crate) fn transient_cause(error: &(dyn StdError + 'static)) -> Option<bool> {
    if let Some(failed) = error.downcast_ref::<Failed>() {
        return Some(failed.transient);
    }
    if let Some(e) = error.downcast_ref::<tokio_postgres::Error>() {
        return Some(driver_error_is_transient(e));
    }
    if error.is::<super::PoolExhausted>() {
        return Some(true);
    }
    if let Some(e) = error.downcast_ref::<PoolError>() {
        return Some(match e {
            PoolError::Backend(e) | PoolError::PostCreateHook(HookError::Backend(e)) => {
                driver_error_is_transient(e)
            }
            PoolError::Timeout(_) => true,
            _ => false,
        });
    }
    None
}

/// SQLSTATE codes that mean "the server is going away or not there yet".
const TRANSIENT_STATES: [&str; 7] = [
    "57P01", // admin_shutdown
    "57P02", // crash_shutdown
    "57P03", // cannot_connect_now (starting up, shutting down, in recovery)
    // The server ended the session for idling (in a transaction: a process paused past a
    // lease's ttl, which fenced transactions set as the timeout); a new session may succeed.
    "25P03", // idle_in_transaction_session_timeout
    "57P05", // idle_session_timeout
    "53300", // too_many_connections
    "58030", // io_error (of the server)
];

/// Whether a driver error means a lost, refused or timed-out connection, or a server going away.
pub(crate) fn driver_error_is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(state) = e.code() {
        let code = state.code();
        // Class 08: connection exception.
        return code.starts_with("08") || TRANSIENT_STATES.contains(&code);
    }
    // Not a server error: a socket that failed or was refused, or a connect timeout.
    let mut source = e.source();
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    e.to_string().starts_with("timeout")
}
