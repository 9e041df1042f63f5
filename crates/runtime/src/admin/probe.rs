//! Readiness asked over a unix socket: the client behind `ztunnel probe`,
//! the kubelet's exec probe.
//!
//! ztunnel runs on the host network, and during a rolling update the old
//! and the new process share the readiness port (`SO_REUSEPORT`): an HTTP
//! probe of the new pod is answered by whichever process the kernel picks,
//! often the old, ready one, and the rollout then stops the old ztunnel
//! before the new one can serve. A socket in the container's own emptyDir
//! is bound by that container's process only, so its answer is the new
//! process's own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// What the proxy behind the socket says of itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It can take traffic.
    Ready,
    /// It answers, but cannot take traffic yet (or any more), and why.
    NotReady(String),
}

/// Why no verdict came back: the proxy is not alive (or not yet listening).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot reach the readiness socket {}", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("readiness over {}", path.display())]
    Http { path: PathBuf, source: hyper::Error },
    #[error("readiness over {}", path.display())]
    Request { path: PathBuf, source: http::Error },
    #[error("no answer on the readiness socket {} within {within:?}", path.display())]
    Timeout { path: PathBuf, within: Duration },
}

/// Asks the readiness server on the unix socket at `path`, giving up after
/// `within`.
pub async fn probe(path: &Path, within: Duration) -> Result<Verdict, ProbeError> {
    tokio::time::timeout(within, ask(path))
        .await
        .map_err(|_| ProbeError::Timeout {
            path: path.to_owned(),
            within,
        })?
}

async fn ask(path: &Path) -> Result<Verdict, ProbeError> {
    let http = |source| ProbeError::Http {
        path: path.to_owned(),
        source,
    };
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|source| ProbeError::Connect {
            path: path.to_owned(),
            source,
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    tokio::spawn(connection);
    let request = http::Request::get("/healthz/ready")
        .header(http::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .map_err(|source| ProbeError::Request {
            path: path.to_owned(),
            source,
        })?;
    let response = sender.send_request(request).await.map_err(http)?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(http)?;
    if status == StatusCode::OK {
        return Ok(Verdict::Ready);
    }
    let why = String::from_utf8_lossy(&body.to_bytes()).trim().to_owned();
    Ok(Verdict::NotReady(if why.is_empty() {
        format!("status {status}")
    } else {
        why
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::net::UnixListener;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::admin::serve_readiness;

    const WITHIN: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn the_verdict_is_the_servers_own_check_with_its_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ready.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let ready = Arc::new(AtomicBool::new(false));
        let shutdown = CancellationToken::new();
        let check = ready.clone();
        tokio::spawn(serve_readiness(
            move || match check.load(Ordering::SeqCst) {
                true => Ok(()),
                false => Err("no config received yet".into()),
            },
            listener,
            shutdown.clone(),
        ));
        assert_eq!(
            probe(&path, WITHIN).await.expect("answers"),
            Verdict::NotReady("no config received yet".into())
        );
        ready.store(true, Ordering::SeqCst);
        assert_eq!(probe(&path, WITHIN).await.expect("answers"), Verdict::Ready);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn no_server_and_a_silent_one_are_errors_that_name_the_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let absent = dir.path().join("absent.sock");
        let err = probe(&absent, WITHIN).await.expect_err("nobody listens");
        assert!(matches!(err, ProbeError::Connect { .. }), "{err}");
        assert!(err.to_string().contains("absent.sock"), "{err}");
        assert!(
            std::error::Error::source(&err).is_some(),
            "the OS error is kept"
        );

        // Accepts (the backlog does) but never answers.
        let silent = dir.path().join("silent.sock");
        let _listener = UnixListener::bind(&silent).expect("bind");
        let err = probe(&silent, Duration::from_millis(200))
            .await
            .expect_err("no answer");
        assert!(matches!(err, ProbeError::Timeout { .. }), "{err}");
    }
}
