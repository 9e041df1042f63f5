//! `weftctl completion SHELL`: a completion script generated from the same
//! clap definition the binary parses with.

use clap::CommandFactory;

use crate::args::{Cli, CompletionArgs};
use crate::exit::{Outcome, Result};

/// Prints the script.
pub fn run(args: &CompletionArgs) -> Result<Outcome> {
    let mut command = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut command, "weftctl", &mut out);
    crate::output::print(&String::from_utf8_lossy(&out));
    Ok(Outcome::Ok)
}
