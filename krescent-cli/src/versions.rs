//! `krescent versions`: the blue/green versions of a `PostgresProjection` model (see
//! `PostgresProjection::versioned`): list them, promote one, roll back, drop one.

use krescent::projection::{ProjectionVersions, VersionInfo, VersionState};
use serde::Serialize;

use crate::backend::Backend;
use crate::cli::{Safeguards, VersionsCommand};
use crate::confirm::confirm;
use crate::error::CliError;
use crate::output;

pub async fn run(backend: &Backend, command: VersionsCommand, json: bool) -> Result<(), CliError> {
    let Backend::Postgres { storage, .. } = backend else {
        return Err(CliError::versions_need_postgres());
    };
    let versions = ProjectionVersions::new(storage);
    match command {
        VersionsCommand::List { model } => list(&versions, &model, json).await,
        VersionsCommand::Promote(args) => {
            let listed = listed(&versions, &args.model).await?;
            let target = find(&args.model, &listed, &args.version)?;
            let from = active(&listed);
            let what = format!(
                "switch the readers of `{}` from version {from} to `{}`",
                args.model, target.version
            );
            if ask(&args.safeguards, &what)? {
                let switched = versions.promote(&args.model, &target.version).await?;
                done(&what, &switched.to, json)?;
            }
            Ok(())
        }
        VersionsCommand::Rollback(args) => {
            let listed = listed(&versions, &args.model).await?;
            let Some(previous) = listed.iter().find(|v| v.state == VersionState::Previous) else {
                return Err(krescent::projection::VersionError::NoPrevious {
                    model: args.model.clone(),
                }
                .into());
            };
            let what = format!(
                "switch the readers of `{}` back from version {} to `{}`",
                args.model,
                active(&listed),
                previous.version
            );
            if ask(&args.safeguards, &what)? {
                let switched = versions.rollback(&args.model).await?;
                done(&what, &switched.to, json)?;
            }
            Ok(())
        }
        VersionsCommand::Drop(args) => {
            let listed = listed(&versions, &args.model).await?;
            let target = find(&args.model, &listed, &args.version)?;
            if target.state == VersionState::Active {
                return Err(krescent::projection::VersionError::Active {
                    model: args.model.clone(),
                    version: target.version.clone(),
                }
                .into());
            }
            backend
                .refuse_if_leased(&target.namespace, args.safeguards.force)
                .await?;
            let what = format!(
                "drop version `{}` of `{}` (schema `{}`: tables {}; checkpoint `{}`)",
                target.version,
                args.model,
                target.schema,
                output::quoted(target.tables.iter().map(String::as_str)),
                target.namespace
            );
            if ask(&args.safeguards, &what)? {
                versions.drop_version(&args.model, &target.version).await?;
                done(&what, &target.version, json)?;
            }
            Ok(())
        }
    }
}

/// One version, as `list` prints it.
#[derive(Serialize)]
struct Listed<'a> {
    version: &'a str,
    state: &'static str,
    position: Option<u64>,
    lag: Option<u64>,
    namespace: &'a str,
    schema: &'a str,
    tables: &'a [String],
    checkpoint_version: &'a str,
}

const HEADER: [&str; 7] = [
    "VERSION",
    "STATE",
    "POSITION",
    "LAG",
    "NAMESPACE",
    "SCHEMA",
    "CHECKPOINT VERSION",
];

async fn list(versions: &ProjectionVersions, model: &str, json: bool) -> Result<(), CliError> {
    let listed = listed(versions, model).await?;
    let shown: Vec<Listed<'_>> = listed
        .iter()
        .map(|v| Listed {
            version: &v.version,
            state: v.state.as_str(),
            position: v.position.map(krescent::Position::get),
            lag: v.lag,
            namespace: &v.namespace,
            schema: &v.schema,
            tables: &v.tables,
            checkpoint_version: &v.checkpoint_version,
        })
        .collect();
    if json {
        return output::json(&shown);
    }
    let dash = || "-".to_owned();
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|v| {
            vec![
                v.version.to_owned(),
                v.state.to_owned(),
                v.position.map_or_else(dash, |p| p.to_string()),
                v.lag.map_or_else(dash, |l| l.to_string()),
                v.namespace.to_owned(),
                v.schema.to_owned(),
                v.checkpoint_version.to_owned(),
            ]
        })
        .collect();
    output::table(&HEADER, &rows)
}

/// The versions of `model`; a model without any is refused.
async fn listed(versions: &ProjectionVersions, model: &str) -> Result<Vec<VersionInfo>, CliError> {
    let listed = versions.list(model).await?;
    if listed.is_empty() {
        return Err(CliError::NoVersions(model.to_owned()));
    }
    Ok(listed)
}

/// The version asked for.
fn find<'a>(
    model: &str,
    listed: &'a [VersionInfo],
    version: &str,
) -> Result<&'a VersionInfo, CliError> {
    listed.iter().find(|v| v.version == version).ok_or_else(|| {
        krescent::projection::VersionError::Unknown {
            model: model.to_owned(),
            version: version.to_owned(),
            known: listed.iter().map(|v| v.version.clone()).collect(),
        }
        .into()
    })
}

fn active(listed: &[VersionInfo]) -> String {
    listed
        .iter()
        .find(|v| v.state == VersionState::Active)
        .map_or_else(|| "none".to_owned(), |v| format!("`{}`", v.version))
}

/// Whether to go on: not on `--dry-run` (which says what it would do), and only when
/// confirmed or `--yes`.
fn ask(args: &Safeguards, what: &str) -> Result<bool, CliError> {
    if args.dry_run {
        output::line(&format!("would {what}; nothing was changed (--dry-run)"))?;
        return Ok(false);
    }
    if !args.yes {
        confirm(&format!("{what}?"))?;
    }
    Ok(true)
}

#[derive(Serialize)]
struct Done<'a> {
    done: &'a str,
    version: &'a str,
}

fn done(what: &str, version: &str, json: bool) -> Result<(), CliError> {
    if json {
        return output::json(&Done {
            done: what,
            version,
        });
    }
    output::line(&format!("done: {what}"))
}
