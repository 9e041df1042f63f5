//! Probes, run by the kubelet from the node's network namespace as a real
//! kubelet runs them: HTTP GET (any status from 200 to 399 passes), TCP
//! connect, and exec inside the container.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http_body_util::Empty;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::runtime::Runc;

/// A probe's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Passed.
    Success,
    /// Failed, and why.
    Failure(String),
}

/// The port a probe names: a number, or one of the container's named ports.
pub fn port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} is out of range")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("container {} has no port named {name:?}", container.name)),
    }
}

async fn http_get(addr: SocketAddr, host: &str, path: &str) -> Result<u16, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP to {addr}: {e}"))?;
    tokio::spawn(conn);
    let request = http::Request::get(path)
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "kube-probe/1.37")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("probe request for {path:?}: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP GET {path} at {addr}: {e}"))?;
    Ok(response.status().as_u16())
}

/// Runs `probe` once against `container` of the pod at `pod_ip`.
pub async fn run(
    probe: &Probe,
    container: &Container,
    pod_ip: IpAddr,
    runc: &Runc,
    container_id: &str,
) -> Outcome {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    let verdict = async {
        if let Some(get) = &probe.http_get {
            let port = port(&get.port, container)?;
            let ip = match get.host.as_deref() {
                Some(h) if !h.is_empty() => {
                    h.parse().map_err(|e| format!("probe host {h:?}: {e}"))?
                }
                _ => pod_ip,
            };
            let addr = SocketAddr::new(ip, port);
            let path = get.path.as_deref().unwrap_or("/");
            let status = tokio::time::timeout(timeout, http_get(addr, &addr.to_string(), path))
                .await
                .map_err(|_| format!("HTTP GET {path} at {addr}: timed out after {timeout:?}"))??;
            if (200..400).contains(&status) {
                Ok(())
            } else {
                Err(format!("HTTP GET {path} at {addr}: status {status}"))
            }
        } else if let Some(tcp) = &probe.tcp_socket {
            let addr = SocketAddr::new(pod_ip, port(&tcp.port, container)?);
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("TCP connect to {addr}: {e}")),
                Err(_) => Err(format!(
                    "TCP connect to {addr}: timed out after {timeout:?}"
                )),
            }
        } else if let Some(exec) = &probe.exec {
            let argv = exec.command.clone().unwrap_or_default();
            // As a real kubelet, the command's output is the reason.
            match runc.exec(container_id, &argv, timeout).await? {
                (true, _) => Ok(()),
                (false, out) => Err(format!("exec {argv:?}: non-zero exit: {out}")),
            }
        } else {
            Err("a probe kind the harness' kubelet does not run (gRPC)".to_string())
        }
    };
    match verdict.await {
        Ok(()) => Outcome::Success,
        Err(why) => Outcome::Failure(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn named_ports_resolve_through_the_container() {
        let c: Container = serde_json::from_value(
            json!({"name": "c", "ports": [{"name": "grpc", "containerPort": 15012}]}),
        )
        .expect("c");
        assert_eq!(port(&IntOrString::String("grpc".into()), &c), Ok(15012));
        assert_eq!(port(&IntOrString::Int(80), &c), Ok(80));
        assert!(port(&IntOrString::String("http".into()), &c).is_err());
        assert!(port(&IntOrString::Int(70000), &c).is_err());
    }
}
