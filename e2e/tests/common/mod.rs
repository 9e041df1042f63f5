//! Shared by the scenario tests: a mesh cluster (ztunnel required, so a
//! missing ztunnel fails loudly instead of passing vacuously), one cluster
//! at a time per test binary (the machines have 2 cores), and the waits.

#![allow(dead_code)]

pub mod kube;
pub mod nodes;
pub mod weftctl;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use weft_e2e::app::protocol::LoadReport;
use weft_e2e::{Cluster, ClusterConfig, Pod, ZtunnelMode};

/// How long the mesh may take to converge after a change.
pub const CONVERGE: Duration = Duration::from_secs(20);

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Holds the per-binary cluster lock.
pub fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A two-node cluster with ztunnel on every node.
pub fn mesh_cluster() -> Cluster {
    Cluster::up(ClusterConfig {
        ztunnel: ZtunnelMode::On,
        ..ClusterConfig::default()
    })
    .expect("cluster up")
}

/// Runs the load generator in `from` against `to` for `seconds` at `rate`
/// new connections per second, and returns its report.
pub fn load(from: &Pod, to: std::net::SocketAddr, rate: u32, seconds: u32) -> LoadReport {
    let out = from
        .app_command()
        .args([
            "load",
            &to.to_string(),
            "--rate",
            &rate.to_string(),
            "--duration-seconds",
            &seconds.to_string(),
        ])
        .output()
        .expect("run load");
    assert!(
        out.status.success(),
        "load: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("load report")
}

/// The identity of a pod.
pub fn identity(pod: &Pod) -> String {
    format!(
        "spiffe://cluster.local/ns/{}/sa/{}",
        pod.namespace(),
        pod.service_account()
    )
}

/// Asks the controller's CA at `url` (trusting `root_pem`) for `identity`
/// with bearer `token`, naming `node`, as a ztunnel does; returns the
/// certificate chain or the refusal. Blocking: it runs its own runtime on
/// the calling thread, so the socket is made in that thread's namespace.
pub fn ask_ca(
    url: &str,
    root_pem: &str,
    token: &str,
    node: &str,
    identity: &str,
) -> Result<Vec<String>, tonic::Status> {
    ask_ca_named(url, None, root_pem, token, node, identity)
}

/// [`ask_ca`], checking the CA's certificate for `tls_name` rather than the
/// URL's host (a Service reached by its cluster IP).
pub fn ask_ca_named(
    url: &str,
    tls_name: Option<&str>,
    root_pem: &str,
    token: &str,
    node: &str,
    identity: &str,
) -> Result<Vec<String>, tonic::Status> {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    use weft_api::ca::CreateCertificateRequest;
    use weft_api::ca::certificate_authority_client::CertificateAuthorityClient;

    let id: weft_hbone::SpiffeId = identity.parse().expect("identity");
    let (csr_pem, _key) = weft_hbone::ca::generate_csr(&id).expect("csr");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let channel = Channel::from_shared(url.to_string())
            .expect("url")
            .tls_config({
                let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(root_pem));
                match tls_name {
                    Some(name) => tls.domain_name(name),
                    None => tls,
                }
            })
            .expect("tls")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("connect: {e:?}")))?;
        let mut request = tonic::Request::new(CreateCertificateRequest {
            csr_pem,
            node: node.to_string(),
            ttl_seconds: 600,
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", token.trim()).parse().expect("header"),
        );
        CertificateAuthorityClient::new(channel)
            .create_certificate(request)
            .await
            .map(|r| r.into_inner().cert_chain_pem)
    })
}
