//! Shared pieces of the hbone integration tests: a CA, certificates (good and
//! deliberately bad), and HBONE servers with simple handlers on loopback.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use weft_hbone::{
    CertificateAuthority, HboneServer, InboundTunnel, ServerSettings, SpiffeId, TrustBundle,
    TunnelHandler, WorkloadCertificate, tls,
};

pub const TD: &str = "cluster.local";

pub fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(TD, ns, sa).expect("valid test identity")
}

pub struct TestCa {
    pub ca: CertificateAuthority,
    pub bundle: TrustBundle,
}

impl TestCa {
    pub fn new() -> Self {
        Self::for_domain(TD)
    }

    pub fn for_domain(td: &str) -> Self {
        let ca = CertificateAuthority::generate(td, Duration::from_secs(3600)).expect("root");
        let bundle = TrustBundle::from_pems(td, &[ca.root_pem()]).expect("bundle");
        TestCa { ca, bundle }
    }

    pub fn issue(&self, identity: &SpiffeId) -> Arc<WorkloadCertificate> {
        Arc::new(
            self.ca
                .issue(identity, Duration::from_secs(3600))
                .expect("issue"),
        )
    }

    /// Signs arbitrary parameters with this CA's root, bypassing the CA's
    /// rules: for presenting certificates the verifiers must refuse.
    pub fn craft(&self, params: CertificateParams) -> Crafted {
        let root_key = KeyPair::from_pem(self.ca.key_pem()).expect("root key");
        let issuer = Issuer::from_ca_cert_pem(self.ca.root_pem(), root_key).expect("issuer");
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = params.signed_by(&key, &issuer).expect("sign");
        Crafted {
            chain: vec![cert.der().clone(), self.ca.root_der().clone()],
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }
}

/// A certificate and key that may not be a valid X.509-SVID.
pub struct Crafted {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Crafted {
    /// As a workload certificate, for certificates that still carry one
    /// SPIFFE ID (expired, other trust domain).
    pub fn workload(&self) -> Arc<WorkloadCertificate> {
        Arc::new(
            WorkloadCertificate::from_der(self.chain.clone(), self.key.clone_key())
                .expect("crafted certificate has a SPIFFE ID"),
        )
    }

    /// A plain TLS server presenting this certificate, speaking h2, asking
    /// for no client certificate: the client's verifier is under test.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .expect("server cert");
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }

    /// A plain TLS client presenting this certificate and trusting any
    /// server: the server's verifier is under test.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut config = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .expect("client cert");
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }
}

#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Parameters of a valid SVID for `uri`, to be spoiled by the test.
pub fn svid_params(uris: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().expect("ia5")))
        .collect();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::hours(1);
    params.use_authority_key_identifier_extension = true;
    params
}

pub fn ca_params(uri: &str) -> CertificateParams {
    let mut params = svid_params(&[uri]);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Peer identity, authority, forwarded client IP, traceparent.
pub type SeenTunnel = (
    SpiffeId,
    SocketAddr,
    Option<std::net::IpAddr>,
    Option<String>,
);

/// What the handler saw of each tunnel.
#[derive(Default)]
pub struct Seen {
    pub tunnels: AtomicUsize,
    pub peers: std::sync::Mutex<Vec<SeenTunnel>>,
}

/// Echoes every tunnel's bytes back, and half-closes when the client does.
pub struct Echo(pub Arc<Seen>);

impl TunnelHandler for Echo {
    async fn handle(&self, tunnel: InboundTunnel) {
        self.0.tunnels.fetch_add(1, Ordering::SeqCst);
        self.0.peers.lock().unwrap().push((
            tunnel.peer_identity.clone(),
            tunnel.authority,
            tunnel.client_ip(),
            tunnel.header("traceparent").map(str::to_owned),
        ));
        let Ok(stream) = tunnel.accept() else { return };
        let (mut send, mut recv) = stream.split();
        while let Ok(Some(chunk)) = recv.recv().await {
            if send.send(chunk).await.is_err() {
                return;
            }
        }
        let _ = send.finish();
    }
}

/// Reads until EOF, then answers with the byte count and half-closes.
pub struct CountThenReply;

impl TunnelHandler for CountThenReply {
    async fn handle(&self, tunnel: InboundTunnel) {
        let Ok(mut stream) = tunnel.accept() else {
            return;
        };
        let mut buf = Vec::new();
        if stream.read_to_end(&mut buf).await.is_err() {
            return;
        }
        let _ = stream
            .write_all(format!("received {} bytes", buf.len()).as_bytes())
            .await;
        let _ = stream.shutdown().await;
    }
}

/// Refuses every tunnel with 403.
pub struct Refuse;

impl TunnelHandler for Refuse {
    async fn handle(&self, tunnel: InboundTunnel) {
        tunnel.refuse(http::StatusCode::FORBIDDEN);
    }
}

/// Forwards each tunnel to a TCP address on loopback (what ztunnel's
/// inbound does, minus policy).
pub struct ForwardTo(pub SocketAddr);

impl TunnelHandler for ForwardTo {
    async fn handle(&self, tunnel: InboundTunnel) {
        let Ok(mut tcp) = TcpStream::connect(self.0).await else {
            tunnel.refuse(http::StatusCode::SERVICE_UNAVAILABLE);
            return;
        };
        let Ok(stream) = tunnel.accept() else { return };
        let counters = weft_hbone::ByteCounters::default();
        let _ = weft_hbone::copy_bidirectional(&mut tcp, stream, &counters).await;
    }
}

/// An HBONE server on an ephemeral loopback port; counts TCP accepts.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

pub async fn start_server<H: TunnelHandler>(
    cert: &WorkloadCertificate,
    bundle: &TrustBundle,
    handler: H,
) -> RunningServer {
    start_server_with(cert, bundle, handler, ServerSettings::default()).await
}

pub async fn start_server_with<H: TunnelHandler>(
    cert: &WorkloadCertificate,
    bundle: &TrustBundle,
    handler: H,
    settings: ServerSettings,
) -> RunningServer {
    let config = tls::server_config(cert, bundle).expect("server config");
    let server = HboneServer::new(config, handler, settings);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let counted = accepted.clone();
    let stop = shutdown.clone();
    // Accept by hand (instead of `serve`) to count TCP connections.
    let task = tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r { Ok(r) => r, Err(_) => return },
            };
            counted.fetch_add(1, Ordering::SeqCst);
            let server = server.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let _ = server.serve_connection(tcp, stop).await;
            });
        }
    });
    RunningServer {
        addr,
        accepted,
        shutdown,
        task,
    }
}

pub fn target(server: SocketAddr, expected: &SpiffeId) -> weft_hbone::TunnelTarget {
    weft_hbone::TunnelTarget {
        hbone_addr: server,
        expected_identity: expected.clone(),
        authority: "10.0.0.1:8080".parse().expect("addr"),
        client_ip: Some("10.0.0.2".parse().expect("ip")),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        baggage: None,
    }
}
