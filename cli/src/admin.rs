//! A small HTTP/1 client for the admin APIs (ztunnel, waypoint, controller
//! debug), over whatever byte stream reaches them: a unix socket (local
//! clusters), TCP inside a network namespace (a component that only listens
//! on its own 127.0.0.1), or the API server's port-forward (Kubernetes).
//!
//! One connection per request: admin calls are rare, and a fresh connection
//! never inherits a broken one's state.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::exit::{CliError, Result};

/// Largest JSON document or tap line accepted from a component.
const MAX_BODY: usize = 64 << 20;
const MAX_LINE: usize = 1 << 20;

/// A byte stream to a component.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How to open a connection to one admin API.
#[derive(Clone)]
pub enum Dialer {
    /// A unix stream socket.
    Unix(PathBuf),
    /// TCP, from inside the network namespace at `netns` when set (entering
    /// it needs CAP_SYS_ADMIN, i.e. root).
    Tcp {
        /// `ip:port`.
        addr: SocketAddr,
        /// A netns path (`/var/run/netns/NAME`, `/proc/PID/ns/net`).
        netns: Option<PathBuf>,
    },
    /// The API server's port-forward to a pod's port.
    PortForward {
        /// Pods of the pod's namespace.
        pods: kube::Api<Pod>,
        /// The pod.
        pod: String,
        /// The port inside the pod.
        port: u16,
    },
}

impl std::fmt::Display for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dialer::Unix(path) => write!(f, "unix:{}", path.display()),
            Dialer::Tcp { addr, netns: None } => write!(f, "{addr}"),
            Dialer::Tcp {
                addr,
                netns: Some(ns),
            } => write!(f, "{addr} in netns {}", ns.display()),
            Dialer::PortForward { pod, port, .. } => write!(f, "port-forward pod/{pod}:{port}"),
        }
    }
}

impl Dialer {
    async fn dial(&self) -> std::io::Result<Box<dyn Io>> {
        match self {
            Dialer::Unix(path) => Ok(Box::new(tokio::net::UnixStream::connect(path).await?)),
            Dialer::Tcp { addr, netns: None } => {
                Ok(Box::new(tokio::net::TcpStream::connect(addr).await?))
            }
            Dialer::Tcp {
                addr,
                netns: Some(ns),
            } => {
                let stream = connect_in_netns(ns.clone(), *addr).await?;
                Ok(Box::new(stream))
            }
            Dialer::PortForward { pods, pod, port } => {
                let mut forwarder = match pods.portforward(pod, &[*port]).await {
                    Ok(forwarder) => forwarder,
                    Err(e) => return Err(portforward_error(pods, pod, e).await),
                };
                let stream = forwarder.take_stream(*port).ok_or_else(|| {
                    std::io::Error::other("the API server opened no stream for the port")
                })?;
                // The forwarder's task keeps running after this handle is
                // dropped, until the stream is closed.
                Ok(Box::new(stream))
            }
        }
    }
}

/// A port-forward refusal, with what the pod's state says about it: the API
/// server answers a forward to a pod that is not running with a bare 400.
async fn portforward_error(
    pods: &kube::Api<k8s_openapi::api::core::v1::Pod>,
    pod: &str,
    error: kube::Error,
) -> std::io::Error {
    let state = match pods.get(pod).await {
        Ok(p) => {
            let phase = p
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "Unknown".into());
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
            match (phase.as_str(), node) {
                ("Running", _) => String::new(),
                (_, None) => format!(" (pod {pod} is {phase} and not scheduled to a node)"),
                (_, Some(node)) => format!(" (pod {pod} is {phase} on node {node}, not running)"),
            }
        }
        Err(_) => String::new(),
    };
    std::io::Error::other(format!("port-forward to pod {pod}: {error}{state}"))
}

/// Connects to `addr` from inside another network namespace: a short-lived
/// thread enters it, connects, and exits; the socket stays in that namespace.
async fn connect_in_netns(
    netns: PathBuf,
    addr: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let std_stream = tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || -> std::io::Result<std::net::TcpStream> {
            let ns = std::fs::File::open(&netns)?;
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            std::net::TcpStream::connect(addr)
        })
        .join()
        .map_err(|_| std::io::Error::other("netns thread panicked"))?
    })
    .await
    .map_err(std::io::Error::other)??;
    std_stream.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(std_stream)
}

/// One admin API.
#[derive(Clone)]
pub struct AdminEndpoint {
    /// What it is, for messages: `ztunnel on node-1`.
    pub label: String,
    /// How to reach it.
    pub dialer: Dialer,
    /// Connect and answer timeout.
    pub timeout: Duration,
    /// What to do when it cannot be reached.
    pub hint: String,
}

impl AdminEndpoint {
    /// An endpoint with a timeout and no hint.
    pub fn new(label: impl Into<String>, dialer: Dialer, timeout: Duration) -> AdminEndpoint {
        AdminEndpoint {
            label: label.into(),
            dialer,
            timeout,
            hint: String::new(),
        }
    }

    /// The same endpoint with a hint for when it is unreachable.
    pub fn with_hint(mut self, hint: impl Into<String>) -> AdminEndpoint {
        self.hint = hint.into();
        self
    }

    fn unreachable(&self, detail: impl std::fmt::Display) -> CliError {
        CliError::unreachable(
            format!("{} ({})", self.label, self.dialer),
            detail,
            self.hint.clone(),
        )
    }

    /// Sends a request and returns the response head and streaming body.
    pub async fn send(&self, method: Method, path: &str) -> Result<Response<Incoming>> {
        let attempt = async {
            let io = self.dialer.dial().await.map_err(|e| self.unreachable(e))?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .map_err(|e| self.unreachable(e))?;
            tokio::spawn(async move {
                // Ends when the response body is read or dropped.
                let _ = connection.await;
            });
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, "localhost")
                .header(http::header::USER_AGENT, "weftctl")
                .body(Empty::<Bytes>::new())
                .map_err(CliError::other)?;
            sender
                .send_request(request)
                .await
                .map_err(|e| self.unreachable(e))
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .map_err(|_| self.unreachable(format!("no answer within {:?}", self.timeout)))?
    }

    /// GETs `path` and returns its status and body as text.
    pub async fn get_text(&self, path: &str) -> Result<(StatusCode, String)> {
        let response = self.send(Method::GET, path).await?;
        let status = response.status();
        let body = tokio::time::timeout(self.timeout, read_body(response.into_body()))
            .await
            .map_err(|_| {
                self.unreachable(format!("{path}: body not read within {:?}", self.timeout))
            })?
            .map_err(|e| self.unreachable(format!("{path}: {e}")))?;
        Ok((status, body))
    }

    /// GETs `path` and decodes its JSON body; any status but 200 is an error.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let (status, body) = self.get_text(path).await?;
        if status != StatusCode::OK {
            return Err(CliError::other(format!(
                "{} answered {path} with {status}: {}",
                self.label,
                body.trim()
            )));
        }
        serde_json::from_str(&body).map_err(|e| {
            CliError::other(format!(
                "{} sent an invalid {path} document: {e}",
                self.label
            ))
        })
    }

    /// GETs a stream of newline-delimited records (`/tap`).
    pub async fn get_lines(&self, path: &str) -> Result<Lines> {
        let response = self.send(Method::GET, path).await?;
        let status = response.status();
        if status != StatusCode::OK {
            let body = read_body(response.into_body()).await.unwrap_or_default();
            return Err(CliError::other(format!(
                "{} answered {path} with {status}: {}",
                self.label,
                body.trim()
            )));
        }
        Ok(Lines {
            body: Box::pin(response.into_body()),
            buffer: Vec::new(),
        })
    }
}

async fn read_body(mut body: Incoming) -> std::result::Result<String, String> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > MAX_BODY {
                return Err(format!("body larger than {MAX_BODY} bytes"));
            }
            out.extend_from_slice(&data);
        }
    }
    String::from_utf8(out).map_err(|e| format!("body is not UTF-8: {e}"))
}

/// Newline-delimited records from a streaming response.
pub struct Lines {
    body: Pin<Box<Incoming>>,
    buffer: Vec<u8>,
}

impl Lines {
    /// The next line without its newline; `None` when the stream ended.
    pub async fn next_line(&mut self) -> std::result::Result<Option<String>, String> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line[..end]);
                return Ok(Some(text.trim_end_matches('\r').to_string()));
            }
            if self.buffer.len() > MAX_LINE {
                return Err(format!("a line longer than {MAX_LINE} bytes"));
            }
            match self.body.frame().await {
                None if self.buffer.is_empty() => return Ok(None),
                None => {
                    let rest = std::mem::take(&mut self.buffer);
                    return Ok(Some(String::from_utf8_lossy(&rest).into_owned()));
                }
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}
