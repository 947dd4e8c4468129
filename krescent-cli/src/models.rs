//! `krescent models delete`: a `PostgresProjection` model, its tables and its checkpoints (of a
//! split model, every segment's: they share the tables).

use std::collections::BTreeSet;

use krescent::checkpoint::StoredCheckpoint;
use krescent::fleet::Segment;
use krescent::projection::PostgresProjection;

use crate::backend::Backend;
use crate::checkpoints::{report, Deletion};
use crate::cli::{DeleteArgs, ModelsCommand};
use crate::confirm::confirm;
use crate::error::CliError;
use crate::output::quoted;

pub async fn run(backend: &Backend, command: ModelsCommand, json: bool) -> Result<(), CliError> {
    match command {
        ModelsCommand::Delete(args) => delete(backend, &args, json).await,
    }
}

/// The model and segment a segment's namespace names: `books#2/4` is segment 2/4 of `books`.
pub fn segment_of(namespace: &str) -> Option<(&str, Segment)> {
    let (model, _) = namespace.rsplit_once('#')?;
    Segment::from_namespace(model, namespace).map(|segment| (model, segment))
}

/// [`CliError::SegmentOfSplitModel`] when `namespace` is one segment's.
pub fn refuse_segment(namespace: &str) -> Result<(), CliError> {
    match segment_of(namespace) {
        Some((model, segment)) => Err(CliError::SegmentOfSplitModel {
            namespace: namespace.to_owned(),
            model: model.to_owned(),
            segment: segment.to_string(),
        }),
        None => Ok(()),
    }
}

async fn delete(backend: &Backend, args: &DeleteArgs, json: bool) -> Result<(), CliError> {
    let Backend::Postgres { storage, .. } = backend else {
        return Err(CliError::models_delete_needs_postgres());
    };
    let model = args.namespace.as_str();
    refuse_segment(model)?;
    let checkpoints = checkpoints_of(backend, model).await?;
    let projection =
        PostgresProjection::from_checkpoints(storage, checkpoints.iter().map(|c| &c.bucket))
            .ok_or_else(|| CliError::NoProjection(model.to_owned()))?;
    let tables: Vec<String> = projection.table_names().map(str::to_owned).collect();
    let namespaces: Vec<&str> = checkpoints.iter().map(|c| c.namespace.as_str()).collect();
    let what = describe(model, &checkpoints, &tables);
    let split = checkpoints.iter().any(|c| c.namespace != model);
    let mut deletion = Deletion {
        namespace: model.to_owned(),
        position: checkpoints.iter().map(|c| c.position.get()).min(),
        dry_run: args.dry_run,
        deleted: false,
        tables: Some(tables),
        segments: split.then(|| namespaces.iter().map(|&n| n.to_owned()).collect()),
    };
    for namespace in leases_to_check(model, &checkpoints) {
        backend.refuse_if_leased(&namespace, args.force).await?;
    }
    if !args.dry_run {
        if !args.yes {
            confirm(&format!(
                "delete {what}? Its tables are dropped and it rebuilds on its next start."
            ))?;
        }
        projection.delete_models(&namespaces).await?;
        deletion.deleted = true;
    }
    report(&deletion, &what, json)
}

/// The checkpoints of `model`: its own and its segments' (`<model>#i/N`), at least one.
async fn checkpoints_of(backend: &Backend, model: &str) -> Result<Vec<StoredCheckpoint>, CliError> {
    let storage = backend.storage();
    let mut found: Vec<StoredCheckpoint> = storage.load(model).await?.into_iter().collect();
    for namespace in storage.list().await? {
        if Segment::from_namespace(model, &namespace).is_none() {
            continue;
        }
        // Deleted between `list` and `load`: nothing to delete.
        if let Some(checkpoint) = storage.load(&namespace).await? {
            found.push(checkpoint);
        }
    }
    if found.is_empty() {
        return backend.unknown(model).await;
    }
    Ok(found)
}

/// Every namespace whose lease a running instance of `model` may hold: the model's, each
/// checkpoint's, and every segment of each segment count the checkpoints have (a segment that
/// has not committed yet holds its lease too).
fn leases_to_check(model: &str, checkpoints: &[StoredCheckpoint]) -> BTreeSet<String> {
    let mut namespaces = BTreeSet::from([model.to_owned()]);
    for checkpoint in checkpoints {
        namespaces.insert(checkpoint.namespace.clone());
        if let Some(segment) = Segment::from_namespace(model, &checkpoint.namespace) {
            namespaces.extend(Segment::all(segment.count()).map(|s| s.namespace(model)));
        }
    }
    namespaces
}

/// What is deleted, for the question and the report: every checkpoint and table.
fn describe(model: &str, checkpoints: &[StoredCheckpoint], tables: &[String]) -> String {
    let tables = quoted(tables.iter().map(String::as_str));
    match checkpoints {
        [only] if only.namespace == model => format!(
            "the model `{model}` (checkpoint at position {}, tables {tables})",
            only.position
        ),
        _ => {
            let at: Vec<String> = checkpoints
                .iter()
                .map(|c| format!("`{}` at position {}", c.namespace, c.position))
                .collect();
            format!(
                "the split model `{model}` (checkpoints {}; tables {tables}, shared by its segments)",
                at.join(", ")
            )
        }
    }
}
