//! Writing to stdout: tables for people, JSON for scripts.

use std::fmt::Write as _;
use std::io::Write as _;

use serde::Serialize;

use crate::error::CliError;

/// Writes `text` and a newline to stdout.
pub fn line(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .map_err(CliError::Output)
}

/// Writes `value` as pretty JSON.
pub fn json<T: Serialize>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::Output(std::io::Error::other(e)))?;
    line(&text)
}

/// Writes `value` as one line of JSON.
pub fn json_line<T: Serialize>(value: &T) -> Result<(), CliError> {
    let text =
        serde_json::to_string(value).map_err(|e| CliError::Output(std::io::Error::other(e)))?;
    line(&text)
}

/// Writes rows as a table: columns padded to their widest cell, the last one not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> Result<(), CliError> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let format_row = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  "); // a String takes any text
            }
        }
        text.trim_end().to_owned()
    };
    line(&format_row(&mut header.iter().copied()))?;
    for row in rows {
        line(&format_row(&mut row.iter().map(String::as_str)))?;
    }
    Ok(())
}

/// `names` in backticks, separated by commas: `` `a`, `b` ``.
pub fn quoted<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names
        .into_iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
