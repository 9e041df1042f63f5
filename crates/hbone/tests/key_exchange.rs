//! Key exchange (docs/design.md §4): weft offers and prefers the hybrid
//! post-quantum X25519MLKEM768, still accepts peers that only do X25519,
//! and a peer with no group in common is refused with an error that says
//! so, not one that blames a certificate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rustls::NamedGroup;
use rustls::crypto::aws_lc_rs::kx_group;
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use weft_hbone::{
    DirectDialer, H2Stream, HboneError, HboneServer, PoolSettings, ServerSettings, TunnelPool, tls,
};
use weft_testkit::ca::*;
use weft_testkit::hbone::*;

/// weft's provider restricted to `groups`: a peer that offers only those.
fn only(groups: &[&'static dyn SupportedKxGroup]) -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        kx_groups: groups.to_vec(),
        ..CryptoProvider::clone(&tls::provider())
    })
}

/// A TLS handshake with `config` to `addr`, then a CONNECT: the group the
/// handshake settled on and whether the tunnel was opened.
async fn connect_raw(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> Result<(NamedGroup, http::StatusCode), std::io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
            tcp,
        )
        .await
        .map_err(tls::explain_handshake_error)?;
    let group = tls
        .get_ref()
        .1
        .negotiated_key_exchange_group()
        .expect("a TLS 1.3 handshake has a group")
        .name();
    let (mut h2, conn) = h2::client::handshake(tls)
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("10.0.0.1:80")
        .body(())
        .expect("request");
    let (resp, _send) = h2.send_request(req, false).map_err(std::io::Error::other)?;
    let status = resp.await.map_err(std::io::Error::other)?.status();
    Ok((group, status))
}

/// An HBONE server presenting `server`'s certificate with `provider`.
async fn server_with(ca: &TestCa, provider: Arc<CryptoProvider>, seen: Arc<Seen>) -> SocketAddr {
    let config = tls::server_config_with(provider, &ca.issue(&id("b", "server")), &ca.bundle)
        .expect("server config");
    let server = HboneServer::new(config, Echo(seen), ServerSettings::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { server.serve(listener, CancellationToken::new()).await });
    addr
}

/// A tunnel from weft's own pool, as client a to server b.
async fn weft_client_tunnel(ca: &TestCa, addr: SocketAddr) -> Result<H2Stream, HboneError> {
    let pool = TunnelPool::new(PoolSettings::default(), ca.bundle.clone());
    let client = ca.issue(&id("a", "client"));
    pool.connect(&client, &target(addr, &id("b", "server")), &DirectDialer)
        .await
}

#[tokio::test]
async fn weft_prefers_x25519mlkem768_and_still_accepts_x25519_only_peers() {
    let ca = TestCa::new();
    let server_id = id("b", "server");
    let seen = Arc::new(Seen::default());
    let server = start_server(&ca.issue(&server_id), &ca.bundle, Echo(seen.clone())).await;
    let client = ca.issue(&id("a", "client"));
    let cases = [
        (
            "weft's own client",
            tls::provider(),
            NamedGroup::X25519MLKEM768,
        ),
        (
            "a peer offering only X25519MLKEM768",
            only(&[kx_group::X25519MLKEM768]),
            NamedGroup::X25519MLKEM768,
        ),
        (
            "a peer without ML-KEM",
            only(&[kx_group::X25519]),
            NamedGroup::X25519,
        ),
    ];
    for (who, provider, expected) in cases {
        let config = tls::client_config_with(provider, &client, &ca.bundle, &server_id).unwrap();
        let (group, status) = connect_raw(config, server.addr)
            .await
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        assert_eq!(group, expected, "{who}");
        assert_eq!(status, http::StatusCode::OK, "{who}");
    }
    assert_eq!(seen.tunnels.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn weft_client_reaches_a_server_that_offers_only_x25519mlkem768() {
    let ca = TestCa::new();
    let seen = Arc::new(Seen::default());
    let addr = server_with(&ca, only(&[kx_group::X25519MLKEM768]), seen.clone()).await;
    let mut tunnel = weft_client_tunnel(&ca, addr)
        .await
        .expect("a post-quantum-only server accepts weft's client");
    tunnel.write_all(b"pq").await.unwrap();
    let mut echoed = [0u8; 2];
    tunnel.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"pq");
    assert_eq!(seen.tunnels.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn weft_client_names_the_key_exchange_when_a_server_requires_a_group_it_lacks() {
    let ca = TestCa::new();
    let seen = Arc::new(Seen::default());
    // Pure ML-KEM-1024: a group weft does not offer.
    let addr = server_with(&ca, only(&[kx_group::MLKEM1024]), seen.clone()).await;
    let err = weft_client_tunnel(&ca, addr)
        .await
        .expect_err("no group in common");
    assert!(matches!(err, HboneError::Tls { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("accepts none of the TLS parameters we offered")
            && text.contains("key exchange group")
            && text.contains("HandshakeFailure")
            && text.contains("X25519MLKEM768, X25519"),
        "{text}"
    );
    assert!(!text.contains("certificate"), "{text}");
    assert_eq!(seen.tunnels.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn weft_server_names_the_key_exchange_when_a_client_offers_no_group_it_has() {
    let ca = TestCa::new();
    let server_id = id("b", "server");
    let server = HboneServer::new(
        tls::server_config(&ca.issue(&server_id), &ca.bundle).unwrap(),
        Echo(Arc::default()),
        ServerSettings::default(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Serve one connection by hand, to see the server's own error.
    let served = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        server.serve_connection(tcp, CancellationToken::new()).await
    });
    let config = tls::client_config_with(
        only(&[kx_group::MLKEM1024]),
        &ca.issue(&id("a", "client")),
        &ca.bundle,
        &server_id,
    )
    .unwrap();
    let client_err = connect_raw(config, addr)
        .await
        .expect_err("no group in common");
    let server_err = served.await.unwrap().expect_err("refused");

    let server_text = server_err.to_string();
    assert!(
        server_text.contains("no key exchange group in common")
            && server_text.contains("we offer TLS 1.3, key exchange X25519MLKEM768"),
        "{server_text}"
    );
    // The client learns it from the alert the server sent.
    let client_text = client_err.to_string();
    assert!(
        client_text.contains("accepts none of the TLS parameters we offered"),
        "{client_text}"
    );
    assert!(!client_text.contains("certificate"), "{client_text}");
}
