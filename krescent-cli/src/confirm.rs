//! The question before a destructive step.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use crate::error::CliError;

/// Asks `question` on stderr and reads the answer from stdin: `y` or `yes` confirms; anything
/// else declines with [`CliError::NotConfirmed`]. Without a terminal on stdin nobody can
/// answer: that declines too, without asking (a script passes `--yes`).
pub fn confirm(question: &str) -> Result<(), CliError> {
    if !std::io::stdin().is_terminal() {
        return Err(CliError::NotConfirmed);
    }
    let mut stderr = std::io::stderr();
    write!(stderr, "{question} [y/N] ").map_err(CliError::Output)?;
    stderr.flush().map_err(CliError::Output)?;
    let mut answer = String::new();
    // A stdin that cannot be read is a "no".
    let _ = std::io::stdin().lock().read_line(&mut answer);
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(CliError::NotConfirmed),
    }
}
