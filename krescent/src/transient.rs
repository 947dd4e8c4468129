//! Failures that retrying may cure: a lost database connection, or what the application says.

use std::error::Error as StdError;
use std::fmt;

/// A handler error that the application marks as transient: retrying the event later may
/// succeed (a service that was briefly unavailable). A streaming model restarts from its last
/// checkpoint after one, with backoff ([`Krescent::stream_with`](crate::Krescent::stream_with),
/// the [`Supervisor`](crate::supervisor::Supervisor)); any other handler error ends it.
///
/// Return it from a handler (`Result<(), Transient>`), or keep it as the `#[source]` of a
/// variant of your own error: krescent looks for it along the error's
/// [`source`](std::error::Error::source) chain. (A `#[error(transparent)]` variant hides it:
/// thiserror forwards `source` to the inner error's source.)
///
/// ```
/// use krescent::Transient;
///
/// #[derive(Debug, thiserror::Error)]
/// enum LookupError {
///     #[error("the price service is unavailable")]
///     Unavailable(#[source] Transient),
///     #[error("unknown book `{0}`")]
///     Unknown(String),
/// }
///
/// let down = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
/// let error = krescent::HandlerError::Failed(Box::new(LookupError::Unavailable(Transient::new(down))));
/// assert!(error.is_transient());
/// let error = krescent::HandlerError::Failed(Box::new(LookupError::Unknown("x".into())));
/// assert!(!error.is_transient());
/// ```
#[derive(Debug)]
pub struct Transient(Box<dyn StdError + Send + Sync + 'static>);

impl Transient {
    /// Marks `error` as transient.
    pub fn new(error: impl Into<Box<dyn StdError + Send + Sync + 'static>>) -> Self {
        Transient(error.into())
    }

    /// The error it marks.
    #[must_use]
    pub fn into_inner(self) -> Box<dyn StdError + Send + Sync + 'static> {
        self.0
    }
}

impl fmt::Display for Transient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "transient: {}", self.0)
    }
}

impl StdError for Transient {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.0)
    }
}
