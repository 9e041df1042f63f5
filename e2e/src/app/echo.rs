//! The echo servers: TCP (a JSON line per received line) and HTTP (a JSON
//! body per request; `/status/<code>` answers that code). Both report the
//! caller address their accepted socket shows, which is what the tests of
//! source preservation look at.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::protocol::{EchoReply, MAX_LINE};

/// Serves TCP echo on `tcp` and HTTP echo on `http` (either may be absent)
/// until the process ends.
pub async fn serve(
    name: String,
    tcp: Option<SocketAddr>,
    http: Option<SocketAddr>,
) -> std::io::Result<()> {
    let name = Arc::new(name);
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = tcp {
        let listener = TcpListener::bind(addr).await?;
        eprintln!("tcp echo on {addr}");
        tasks.spawn(accept_tcp(listener, name.clone()));
    }
    if let Some(addr) = http {
        let listener = TcpListener::bind(addr).await?;
        eprintln!("http echo on {addr}");
        tasks.spawn(accept_http(listener, name.clone()));
    }
    while let Some(result) = tasks.join_next().await {
        if let Ok(Err(e)) = result {
            return Err(e);
        }
    }
    Ok(())
}

async fn accept_tcp(listener: TcpListener, name: Arc<String>) -> std::io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let name = name.clone();
        tokio::spawn(async move {
            if let Err(e) = tcp_session(stream, peer, &name).await {
                eprintln!("tcp {peer}: {e}");
            }
        });
    }
}

async fn tcp_session(stream: TcpStream, peer: SocketAddr, name: &str) -> std::io::Result<()> {
    let local = stream.local_addr()?;
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut lines)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let reply = EchoReply {
            server: name.to_string(),
            peer,
            local,
            message: line.trim_end_matches(['\r', '\n']).to_string(),
            method: None,
            path: None,
            headers: BTreeMap::new(),
        };
        let mut out = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
        out.push(b'\n');
        write.write_all(&out).await?;
    }
}

async fn accept_http(listener: TcpListener, name: Arc<String>) -> std::io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let local = stream.local_addr()?;
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let name = name.clone();
                async move { Ok::<_, Infallible>(http_echo(req, &name, peer, local).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                eprintln!("http {peer}: {e}");
            }
        });
    }
}

async fn http_echo(
    req: Request<Incoming>,
    name: &str,
    peer: SocketAddr,
    local: SocketAddr,
) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let status = path
        .strip_prefix("/status/")
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::OK);
    let body = match Limited::new(req.into_body(), MAX_LINE).collect().await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        Err(e) => format!("<unreadable body: {e}>"),
    };
    let reply = EchoReply {
        server: name.to_string(),
        peer,
        local,
        message: body,
        method: Some(method),
        path: Some(path),
        headers,
    };
    let text = serde_json::to_string(&reply).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(text + "\n")));
    *response.status_mut() = status;
    response
}
