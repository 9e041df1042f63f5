//! Ctrl-C (and SIGTERM, SIGHUP) tears down every live cluster of the process
//! before it exits.
//!
//! `signal-hook` turns the signal into a message to a watcher thread (a
//! handler itself may do almost nothing safely); the thread tears down each registered run
//! from its state file — not from the harness's memory, whose owner may be
//! in the middle of changing it — and exits with 128 + the signal. Tests get
//! this too: the first cluster a test process brings up installs it.

use std::path::PathBuf;
use std::sync::{Mutex, Once};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::cleanup;
use crate::state::RunState;

static RUNS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static INSTALL: Once = Once::new();

/// Installs the handlers once per process.
pub fn install() {
    INSTALL.call_once(|| match Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(signals) => {
            std::thread::spawn(move || watch(signals));
        }
        Err(e) => eprintln!("weft-e2e: cannot handle signals ({e}); Ctrl-C will not clean up"),
    });
}

fn watch(mut signals: Signals) {
    let Some(sig) = signals.forever().next() else {
        return;
    };
    eprintln!("\nweft-e2e: interrupted (signal {sig}); tearing down");
    // Twice: a step the owner took while the first pass ran is caught by the
    // second.
    for _ in 0..2 {
        let dirs = RUNS.lock().map(|r| r.clone()).unwrap_or_default();
        for dir in dirs {
            if let Ok(state) = RunState::load(&dir) {
                let report = cleanup::teardown(&state);
                for e in report.errors {
                    eprintln!("weft-e2e: {e}");
                }
            }
        }
    }
    eprintln!("weft-e2e: torn down");
    std::process::exit(128 + sig);
}

/// Registers a run for teardown on a signal.
pub fn register(dir: PathBuf) {
    install();
    if let Ok(mut runs) = RUNS.lock() {
        runs.push(dir);
    }
}

/// Forgets a run (it was torn down, or handed over with `--keep`).
pub fn unregister(dir: &std::path::Path) {
    if let Ok(mut runs) = RUNS.lock() {
        runs.retain(|d| d != dir);
    }
}

/// Blocks until a signal arrives. For a harness that keeps a cluster up until
/// interrupted: the watcher thread tears it down and exits the process.
pub fn wait_forever() -> ! {
    install();
    loop {
        std::thread::park();
    }
}
