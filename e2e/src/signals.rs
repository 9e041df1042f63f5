//! Ctrl-C (and SIGTERM, SIGHUP) tears down every live cluster of the process
//! before it exits.
//!
//! The signal handler only writes the signal number to a pipe (all a handler
//! may safely do); a watcher thread reads it, tears down each registered run
//! from its state file — not from the harness's memory, whose owner may be
//! in the middle of changing it — and exits with 128 + the signal. Tests get
//! this too: the first cluster a test process brings up installs it.

use std::os::fd::{IntoRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, Once};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

use crate::cleanup;
use crate::state::RunState;

static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);
static RUNS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static INSTALL: Once = Once::new();

#[allow(unsafe_code)]
extern "C" fn on_signal(sig: libc::c_int) {
    let fd = PIPE_WRITE.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = sig as u8;
        // SAFETY: write(2) on a pipe is async-signal-safe; the buffer is a
        // local byte.
        unsafe {
            libc::write(fd, (&byte as *const u8).cast(), 1);
        }
    }
}

/// Installs the handlers once per process.
#[allow(unsafe_code)]
pub fn install() {
    INSTALL.call_once(|| {
        let Ok((read, write)) = nix::unistd::pipe() else {
            eprintln!("weft-e2e: cannot create the signal pipe; Ctrl-C will not clean up");
            return;
        };
        PIPE_WRITE.store(write.into_raw_fd(), Ordering::Relaxed);
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            // SAFETY: the handler only calls write(2).
            if let Err(e) = unsafe { sigaction(sig, &action) } {
                eprintln!("weft-e2e: cannot handle {sig}: {e}");
            }
        }
        std::thread::spawn(move || watch(read));
    });
}

fn watch(read: OwnedFd) {
    let mut file = std::fs::File::from(read);
    let mut byte = [0u8; 1];
    if std::io::Read::read_exact(&mut file, &mut byte).is_err() {
        return;
    }
    let sig = i32::from(byte[0]);
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
