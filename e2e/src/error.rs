//! What can go wrong while building, using or tearing down a cluster. Every
//! variant names the thing that failed, so a red test says what to look at.

use std::path::PathBuf;
use std::time::Duration;

/// Why a harness operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The harness needs root (network namespaces, veths, netfilter).
    #[error("the e2e harness creates network namespaces and must run as root (try sudo)")]
    NotRoot,
    /// A tool or file the harness relies on is missing.
    #[error("{what} missing: {hint}")]
    Missing {
        /// The tool or file.
        what: String,
        /// How to get it.
        hint: String,
    },
    /// A command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its stderr (trimmed).
        stderr: String,
    },
    /// A command could not be started.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The error.
        source: std::io::Error,
    },
    /// File I/O.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Entering or inspecting a network namespace failed.
    #[error("network namespace {name}: {message}")]
    Netns {
        /// The namespace.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// Something did not become ready in time.
    #[error("{what} not ready after {waited:?}{}", tail_suffix(log_tail))]
    NotReady {
        /// What was waited for.
        what: String,
        /// How long.
        waited: Duration,
        /// The end of the process's log, when there is one.
        log_tail: String,
    },
    /// A process exited while the harness needed it.
    #[error("{name} exited ({status}){}", tail_suffix(log_tail))]
    Exited {
        /// The process.
        name: String,
        /// Its exit status.
        status: String,
        /// The end of its log.
        log_tail: String,
    },
    /// The CNI chain refused a pod.
    #[error("CNI {command} for pod {pod} failed in plugin {plugin}: {output}")]
    Cni {
        /// ADD or DEL.
        command: String,
        /// namespace/name.
        pod: String,
        /// The plugin that failed.
        plugin: String,
        /// Its stdout (the CNI error object) and stderr.
        output: String,
    },
    /// A document (CNI result, state file, JSON answer) did not decode.
    #[error("cannot decode {what}: {message}")]
    Decode {
        /// What was decoded.
        what: String,
        /// Why it failed.
        message: String,
    },
    /// The caller asked for something the cluster does not have or allow.
    #[error("{0}")]
    Invalid(String),
}

fn tail_suffix(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("; last log lines:\n{tail}")
    }
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// A decode error.
    pub fn decode(what: impl Into<String>, message: impl ToString) -> Error {
        Error::Decode {
            what: what.into(),
            message: message.to_string(),
        }
    }
}

/// The harness's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
