//! The demo's voice: numbered sections, a sentence of what is about to
//! happen, the real command and its real output, and a verdict line.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::cluster::Progress;

/// Prints the demo.
#[derive(Debug)]
pub struct Narrator {
    section: AtomicUsize,
    color: bool,
}

impl Default for Narrator {
    fn default() -> Narrator {
        Narrator::new()
    }
}

impl Narrator {
    /// Colours when stdout is a terminal and `NO_COLOR` is unset.
    pub fn new() -> Narrator {
        Narrator {
            section: AtomicUsize::new(0),
            color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn print(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }

    /// A numbered section title.
    pub fn section(&self, title: &str) {
        let n = self.section.fetch_add(1, Ordering::Relaxed) + 1;
        self.print("");
        self.print(&self.paint("1;36", &format!("── {n}. {title} ")));
    }

    /// A sentence of explanation.
    pub fn say(&self, text: &str) {
        for line in text.lines() {
            self.print(&format!("   {line}"));
        }
    }

    /// A command as a user would type it, and its output.
    pub fn command(&self, shown: &str, output: &str) {
        self.print(&self.paint("33", &format!("   $ {shown}")));
        for line in output.trim_end().lines() {
            self.print(&self.paint("2", &format!("     {line}")));
        }
    }

    /// Something shown, indented, without a command line.
    pub fn show(&self, output: &str) {
        for line in output.trim_end().lines() {
            self.print(&self.paint("2", &format!("     {line}")));
        }
    }

    /// A check that held.
    pub fn ok(&self, text: &str) {
        self.print(&format!("   {} {text}", self.paint("1;32", "✓")));
    }

    /// A check that did not hold.
    pub fn fail(&self, text: &str) {
        self.print(&format!("   {} {text}", self.paint("1;31", "✗")));
    }

    /// A progress line (long operations).
    pub fn progress_line(&self, text: &str) {
        self.print(&self.paint("2", &format!("   … {text}")));
    }

    /// The cluster's progress messages, printed as progress lines.
    pub fn progress(self: &Arc<Self>) -> Progress {
        let me = self.clone();
        Arc::new(move |msg| me.progress_line(msg))
    }
}
