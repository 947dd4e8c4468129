//! Restoring a model from its checkpoint: loaded, checked against the model's version and
//! validation, and restored, or set aside as the model's `on_invalid` says.

use tracing::{debug, warn};

use super::plan::Checkpointing;
use crate::checkpoint::incremental::chain_sizes;
use crate::checkpoint::{CheckpointVersion, OnInvalid, Piece};
use crate::fleet::Handover;
use crate::model::{EventModel, Origin};
use crate::{Error, Position};

/// Where a runner's model starts, before any event.
pub(crate) struct Start<M> {
    pub(crate) model: M,
    pub(crate) origin: Origin,
    pub(crate) position: Position,
    /// The restored checkpoint's piece and the sizes of its base and deltas, which the next
    /// delta follows.
    pub(crate) chain: Option<(Piece, (u64, u64))>,
    /// What a segment still skips of the slices it took over when the segment count changed.
    pub(crate) handover: Option<Handover>,
}

/// Loads and checks the model's checkpoint (of `checkpointing`'s namespace) and restores it;
/// with [`OnInvalid::Rebuild`] an unusable checkpoint means starting from scratch.
pub(crate) async fn restore<M: EventModel>(
    model: M,
    checkpointing: Option<&Checkpointing>,
) -> Result<Start<M>, Error> {
    restore_keeping(model, checkpointing)
        .await
        .map_err(|(e, _)| e)
}

/// [`restore`], handing the model back on failure (for a restart in place).
pub(crate) async fn restore_keeping<M: EventModel>(
    mut model: M,
    checkpointing: Option<&Checkpointing>,
) -> Result<Start<M>, (Error, M)> {
    if let Err(e) = check_event_names::<M>() {
        return Err((e, model));
    }
    let scratch = |model| Start {
        model,
        origin: Origin::Scratch,
        position: Position::START,
        chain: None,
        handover: None,
    };
    let Some(Checkpointing {
        storage, namespace, ..
    }) = checkpointing
    else {
        return Ok(scratch(model));
    };
    let on_invalid = M::checkpointing().map(|c| c.on_invalid).unwrap_or_default();
    let namespace = &**namespace;
    let invalid = |model, reason: String| match on_invalid {
        OnInvalid::Fail => Err((
            Error::InvalidCheckpoint {
                namespace: namespace.to_owned(),
                reason,
            },
            model,
        )),
        OnInvalid::Rebuild => {
            warn!(model = namespace, %reason, "discarding the checkpoint and rebuilding from the start of the stream");
            Ok(Start {
                model,
                origin: Origin::Rebuilt { reason },
                position: Position::START,
                chain: None,
                handover: None,
            })
        }
    };
    if let Some(transaction) = model.transaction() {
        if let Err(e) = transaction.prepare().await {
            return Err((Error::storage(namespace, e), model));
        }
    }
    let checkpoint = match storage.load(namespace).await {
        Ok(Some(checkpoint)) => checkpoint,
        Ok(None) => return Ok(scratch(model)),
        Err(e) if e.is_corrupt() => return invalid(model, e.to_string()),
        Err(source) => return Err((Error::storage(namespace, source), model)),
    };
    let version = CheckpointVersion::of::<M>();
    if checkpoint.version != version {
        return invalid(
            model,
            format!(
                "it was written by version `{}`, this build is version `{version}`",
                checkpoint.version
            ),
        );
    }
    if !model.validate_checkpoint(&checkpoint.bucket) {
        return invalid(model, "it failed validation".to_owned());
    }
    if let Err(e) = model.restore_checkpoint(&checkpoint.bucket) {
        return invalid(model, e.to_string());
    }
    let handover = match checkpoint.bucket.value(Handover::KEY) {
        None => None,
        Some(value) => match value.to_serde::<Handover>().and_then(Handover::checked) {
            Ok(handover) => Some(handover),
            Err(reason) => return invalid(model, format!("its `{}`: {reason}", Handover::KEY)),
        },
    };
    debug!(model = namespace, position = %checkpoint.position, "restored from checkpoint");
    Ok(Start {
        model,
        origin: Origin::Restored {
            position: checkpoint.position,
        },
        position: checkpoint.position,
        chain: Some((checkpoint.piece, chain_sizes(&checkpoint.bucket))),
        handover,
    })
}

/// Two handled event types with one recorded name, current or old (`old_names`), would make
/// the second handler unreachable for its events; `#[handlers]` refuses equal current names at
/// compile time where it can, this is for the rest (old names, a generic block, a hand-written
/// [`Handlers`](crate::model::Handlers) impl).
fn check_event_names<M: EventModel>() -> Result<(), Error> {
    for (i, later) in M::EVENTS.iter().enumerate() {
        let names = std::iter::once(later.name).chain(later.old_names.iter().copied());
        for name in names {
            if M::EVENTS[..i].iter().any(|earlier| earlier.is_named(name)) {
                return Err(Error::DuplicateEventName {
                    model: M::NAME,
                    name,
                });
            }
        }
    }
    Ok(())
}
