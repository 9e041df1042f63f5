//! One-shot clients: a TCP exchange with the echo server, and one HTTP/1.1
//! request. Failures come back as short, stable texts (`connect: Connection
//! refused`, `read: Connection reset by peer`, `timed out`) that tests and
//! the load report group by.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::protocol::{EchoReply, MAX_LINE};

/// Why an exchange failed, as a short text.
fn describe(step: &str, e: &std::io::Error) -> String {
    let kind = match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "Connection refused".to_string(),
        std::io::ErrorKind::ConnectionReset => "Connection reset by peer".to_string(),
        std::io::ErrorKind::TimedOut => "timed out".to_string(),
        std::io::ErrorKind::UnexpectedEof => "closed without a reply".to_string(),
        _ => e.to_string(),
    };
    format!("{step}: {kind}")
}

/// Connects to `addr`, sends `message` as a line, and reads one reply line.
pub async fn tcp_exchange(
    addr: SocketAddr,
    message: &str,
    timeout: Duration,
) -> Result<EchoReply, String> {
    let run = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| describe("connect", &e))?;
        let _ = stream.set_nodelay(true);
        let (read, mut write) = stream.into_split();
        write
            .write_all(format!("{message}\n").as_bytes())
            .await
            .map_err(|e| describe("write", &e))?;
        let mut line = String::new();
        let n = BufReader::new(read)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
            .await
            .map_err(|e| describe("read", &e))?;
        if n == 0 {
            return Err("read: closed without a reply".to_string());
        }
        let reply: EchoReply =
            serde_json::from_str(line.trim()).map_err(|e| format!("reply: {e}: {line:.200}"))?;
        if reply.message != message {
            return Err(format!(
                "reply: echoed {:?}, sent {message:?}",
                reply.message
            ));
        }
        Ok(reply)
    };
    tokio::time::timeout(timeout, run)
        .await
        .unwrap_or_else(|_| Err("timed out".to_string()))
}

/// Sends one HTTP/1.1 request to `url` (`http://host:port/path`) and returns
/// the status and body.
pub async fn http_request(
    url: &str,
    method: &str,
    headers: &[(String, String)],
    body: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("url {url}: {e}"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| format!("url {url}: no host"))?
        .clone();
    let addr: SocketAddr = authority
        .as_str()
        .parse()
        .or_else(|_| format!("{}:80", authority.as_str()).parse())
        .map_err(|e| format!("url {url}: the host must be an IP address: {e}"))?;
    let run = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| describe("connect", &e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, authority.as_str());
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, run)
        .await
        .unwrap_or_else(|_| Err("timed out".to_string()))
}
