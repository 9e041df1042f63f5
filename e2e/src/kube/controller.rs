//! weft's controller against the real control plane, run by the harness as
//! a process on loopback (until the harness's kubelet runs it from its
//! Deployment): as ServiceAccount `weft-system/weft-controller`, with a
//! token from the TokenRequest API, so it has exactly the RBAC deploy/
//! grants it.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{KubeRun, free_loopback_addr};
use crate::binaries::{self, Binaries};
use crate::error::Result;
use crate::process::ManagedProcess;

/// The namespace deploy/ installs weft into.
pub const NAMESPACE: &str = "weft-system";

/// The controller's ServiceAccount in deploy/.
pub const SERVICE_ACCOUNT: &str = "weft-controller";

/// How long it may take to serve after start.
const SERVING_WITHIN: Duration = Duration::from_secs(30);

/// One controller replica.
pub struct ControllerProcess {
    process: ManagedProcess,
    replica: String,
    grpc: SocketAddr,
    debug: SocketAddr,
}

impl ControllerProcess {
    /// Starts replica `replica` (its `POD_NAME`, the Lease holder name) with
    /// `extra` flags, and waits until it serves gRPC.
    pub fn start(run: &mut KubeRun, replica: &str, extra: &[&str]) -> Result<ControllerProcess> {
        let kubeconfig = run
            .plane()
            .service_account_kubeconfig(NAMESPACE, SERVICE_ACCOUNT)?;
        let binary = Binaries::locate()?.require(binaries::CONTROLLER)?;
        let (grpc, debug) = (free_loopback_addr()?, free_loopback_addr()?);
        let mut cmd = Command::new(binary);
        cmd.env("KUBECONFIG", &kubeconfig)
            .env("POD_NAME", replica)
            .env("WEFT_ROOT_NAMESPACE", NAMESPACE)
            .env(
                "RUST_LOG",
                std::env::var("WEFT_E2E_LOG").unwrap_or_else(|_| "info".into()),
            )
            .args(["--registry", "kubernetes"])
            .arg(format!("--grpc-addr={grpc}"))
            .arg(format!("--metrics-addr={}", free_loopback_addr()?))
            .arg(format!("--debug-addr={debug}"))
            .args(extra);
        let log = run.state().dir.join(format!("{replica}.log"));
        let mut process = ManagedProcess::spawn(replica, cmd, &log)?;
        run.state_mut().record_process(&process)?;
        process.wait_ready("serving gRPC", SERVING_WITHIN, || {
            TcpStream::connect(grpc).is_ok()
        })?;
        Ok(ControllerProcess {
            process,
            replica: replica.to_string(),
            grpc,
            debug,
        })
    }

    /// Its replica name (the Lease holder identity).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The config stream and CA (TLS, the root in Secret `weft-ca`).
    pub fn grpc(&self) -> SocketAddr {
        self.grpc
    }

    /// The debug API (plain HTTP on loopback).
    pub fn debug(&self) -> SocketAddr {
        self.debug
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        self.process.log()
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// The process, to signal, stop or check.
    pub fn process_mut(&mut self) -> &mut ManagedProcess {
        &mut self.process
    }
}
