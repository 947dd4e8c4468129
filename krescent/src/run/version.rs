//! Blue/green versions of a model's projection
//! ([`PostgresProjection::versioned`](crate::projection::PostgresProjection::versioned)): each
//! model of a run enters this build's version before it starts (the first one before the lease
//! is taken), and the run checkpoints and leases under the version's namespace.

use std::sync::Arc;

use crate::checkpoint::{CheckpointVersion, StorageError};
use crate::fleet::Segment;
use crate::model::EventModel;
use crate::Error;

/// Enters this build's version of `model`'s projection: the namespace the run checkpoints and
/// leases under, `None` when the model keeps no versions (checkpointing under `namespace`).
pub(crate) async fn enter<M: EventModel>(
    namespace: &str,
    segment: Option<Segment>,
    model: &mut M,
) -> Result<Option<Arc<str>>, Error> {
    let Some(transaction) = model.transaction() else {
        return Ok(None);
    };
    let version = CheckpointVersion::of::<M>();
    let entered = transaction
        .enter_version(M::NAME, &version)
        .await
        .map_err(|e| Error::storage(namespace, e))?;
    let Some(entered) = entered else {
        return Ok(None);
    };
    if let Some(segment) = segment {
        return Err(Error::storage(
            namespace,
            StorageError::Database(
                format!("`{}` keeps projection versions, which cannot run in segments (segment {segment})", M::NAME)
                    .into(),
            ),
        ));
    }
    Ok(Some(entered.into()))
}
