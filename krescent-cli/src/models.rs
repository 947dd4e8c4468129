//! `krescent models delete`: a `PostgresProjection` model, its tables and its checkpoint.

use krescent::projection::PostgresProjection;

use crate::backend::Backend;
use crate::checkpoints::{report, Deletion};
use crate::cli::{DeleteArgs, ModelsCommand};
use crate::confirm::confirm;
use crate::error::CliError;

pub async fn run(backend: &Backend, command: ModelsCommand, json: bool) -> Result<(), CliError> {
    match command {
        ModelsCommand::Delete(args) => delete(backend, &args, json).await,
    }
}

async fn delete(backend: &Backend, args: &DeleteArgs, json: bool) -> Result<(), CliError> {
    let Backend::Postgres { storage, .. } = backend else {
        return Err(CliError::NeedsPostgres {
            what: "`models delete`",
            why: "projections keep their tables in PostgreSQL",
        });
    };
    let checkpoint = backend.checkpoint(&args.namespace).await?;
    let projection = PostgresProjection::from_checkpoint(storage, &checkpoint.bucket)
        .ok_or_else(|| CliError::NoProjection(args.namespace.clone()))?;
    let tables: Vec<String> = projection.table_names().map(str::to_owned).collect();
    let what = format!(
        "the model `{}` (checkpoint at position {}, tables {})",
        args.namespace,
        checkpoint.position,
        tables
            .iter()
            .map(|t| format!("`{t}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut deletion = Deletion {
        namespace: args.namespace.clone(),
        position: checkpoint.position.get(),
        dry_run: args.dry_run,
        deleted: false,
        tables: Some(tables),
    };
    backend
        .refuse_if_leased(&args.namespace, args.force)
        .await?;
    if !args.dry_run {
        if !args.yes {
            confirm(&format!(
                "delete {what}? Its tables are dropped and it rebuilds on its next start."
            ))?;
        }
        projection.delete_model(&args.namespace).await?;
        deletion.deleted = true;
    }
    report(&deletion, &what, json)
}
