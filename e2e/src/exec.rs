//! Running short commands (`ip`, `nft`, CNI plugins) and turning their
//! failures into errors that quote the command line and its stderr.

use std::ffi::OsStr;
use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::error::{Error, Result};

/// A command line as a person would type it, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` (stdin closed) and returns its output, failing on a non-zero
/// exit with the command and its stderr.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = output(cmd)?;
    if !out.status.success() {
        return Err(Error::Command {
            command: describe(cmd),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// Runs `cmd` and returns its output whatever the exit status.
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            command: describe(cmd),
            source,
        })
}

/// Runs `cmd` with `input` on stdin and returns its output whatever the exit
/// status.
pub fn output_with_stdin(cmd: &mut Command, input: &[u8]) -> Result<Output> {
    let spawn_error = |cmd: &Command, source| Error::Spawn {
        command: describe(cmd),
        source,
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error(cmd, e))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits early closes its stdin; its output says why.
        let _ = stdin.write_all(input);
    }
    child.wait_with_output().map_err(|e| spawn_error(cmd, e))
}

/// Runs `program args...`, failing on a non-zero exit; returns stdout.
pub fn sh<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<String> {
    let out = run(Command::new(program).args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True when `tool` is on the PATH.
pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}
