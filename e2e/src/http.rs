//! A minimal blocking HTTP/1.0 GET, for the components' admin and readiness
//! endpoints (JSON on 127.0.0.1 inside their namespace, or a unix socket).
//! HTTP/1.0 keeps the answer simple to read: no chunking, the server closes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::netns::Netns;

/// An answer.
#[derive(Clone, Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: String,
}

impl Response {
    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.body).map_err(|e| Error::decode("an HTTP answer", e))
    }
}

fn exchange(mut stream: impl Read + Write, path: &str) -> std::io::Result<Response> {
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {head:.80}")))?;
    Ok(Response {
        status,
        body: body.to_string(),
    })
}

/// GET `path` from `addr`, connecting from inside `netns` (or from here).
pub fn get(netns: Option<&Netns>, addr: SocketAddr, path: &str) -> Result<Response> {
    let timeout = Duration::from_secs(5);
    let call = || -> std::io::Result<Response> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        exchange(stream, path)
    };
    let result = match netns {
        Some(ns) => ns.run(call)?,
        None => call(),
    };
    result.map_err(|e| Error::Invalid(format!("GET http://{addr}{path}: {e}")))
}

/// GET `path` over the unix socket at `socket`.
pub fn get_unix(socket: &Path, path: &str) -> Result<Response> {
    let call = || -> std::io::Result<Response> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        exchange(stream, path)
    };
    call().map_err(|e| Error::Invalid(format!("GET unix:{}{path}: {e}", socket.display())))
}
