//! Errors, and the exit codes scripts can rely on.
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success; `explain`: allowed; `check`: no problem |
//! | 1 | an unexpected error (a component answered something invalid, a file could not be written, ...) |
//! | 2 | the command line is wrong (clap's own code) |
//! | 3 | a component could not be reached (admin socket, node agent, controller, API server) |
//! | 4 | something named on the command line does not exist (namespace, pod, service, waypoint, node) |
//! | 5 | `check` found at least one problem |
//! | 6 | `explain`: the connection or request would be denied (or fail) |
//! | 7 | partial: some nodes answered and others could not be reached; what was read is printed |

use std::fmt;

/// How a command that ran to completion ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything as asked.
    Ok,
    /// `check` found problems.
    Problems,
    /// `explain` says denied.
    Denied,
    /// Some nodes could not be read.
    Partial,
}

impl Outcome {
    /// The process exit code.
    pub fn code(self) -> i32 {
        match self {
            Outcome::Ok => 0,
            Outcome::Problems => 5,
            Outcome::Denied => 6,
            Outcome::Partial => 7,
        }
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A component could not be reached.
    #[error("{what} is unreachable: {detail}{}", Hint(.hint))]
    Unreachable {
        /// What we tried to reach, e.g. `ztunnel admin on node-1 (unix:/run/x.sock)`.
        what: String,
        /// The underlying error.
        detail: String,
        /// What the user can do about it.
        hint: String,
    },
    /// Something named on the command line does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The arguments make no sense together (beyond what clap checks).
    #[error("{0}")]
    Usage(String),
    /// Anything else.
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

struct Hint<'a>(&'a str);

impl fmt::Display for Hint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, "\n  hint: {}", self.0)
        }
    }
}

impl CliError {
    /// The process exit code.
    pub fn code(&self) -> i32 {
        match self {
            CliError::Other(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Unreachable { .. } => 3,
            CliError::NotFound(_) => 4,
        }
    }

    /// An unreachable component.
    pub fn unreachable(
        what: impl Into<String>,
        detail: impl fmt::Display,
        hint: impl Into<String>,
    ) -> CliError {
        CliError::Unreachable {
            what: what.into(),
            detail: detail.to_string(),
            hint: hint.into(),
        }
    }

    /// Anything else, from a message.
    pub fn other(message: impl fmt::Display) -> CliError {
        CliError::Other(anyhow::anyhow!("{message}"))
    }
}

/// Shorthand for command results.
pub type Result<T, E = CliError> = std::result::Result<T, E>;
