//! Peer verification: each kind of certificate the design refuses is
//! presented for real, by a server to the pool and by a client to the server.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use rustls::pki_types::UnixTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_hbone::{DirectDialer, HboneError, PoolSettings, TrustBundle, TunnelPool, tls};
use weft_testkit::ca::*;
use weft_testkit::hbone::*;

/// A certificate the verifiers must refuse, and the words the refusal uses.
struct BadCert {
    name: &'static str,
    cert: Crafted,
    reason: &'static str,
}

fn bad_certs(ca: &TestCa) -> Vec<BadCert> {
    let expired = {
        let mut p = svid_params(&["spiffe://cluster.local/ns/b/sa/server"]);
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(3);
        p.not_after = now - time::Duration::hours(1);
        p
    };
    vec![
        BadCert {
            name: "expired",
            cert: ca.craft(expired),
            reason: "Expired",
        },
        BadCert {
            name: "another trust domain",
            cert: ca.craft(svid_params(&["spiffe://evil.example/ns/b/sa/server"])),
            reason: "trust domain",
        },
        BadCert {
            name: "two URI SANs",
            cert: ca.craft(svid_params(&[
                "spiffe://cluster.local/ns/b/sa/server",
                "spiffe://cluster.local/ns/b/sa/other",
            ])),
            reason: "2 URI SANs",
        },
        BadCert {
            name: "CA certificate as leaf",
            cert: ca.craft(ca_params("spiffe://cluster.local/ns/b/sa/server")),
            reason: "CA certificate",
        },
        BadCert {
            name: "no SPIFFE SAN",
            cert: {
                let mut p = svid_params(&[]);
                p.subject_alt_names = vec![rcgen::SanType::DnsName(
                    "server.example".try_into().unwrap(),
                )];
                ca.craft(p)
            },
            reason: "no SPIFFE",
        },
        BadCert {
            // The impostor root has the same subject name as ours, so the
            // chain builds and the signature check is what fails.
            name: "signed by another root",
            cert: TestCa::new().craft(svid_params(&["spiffe://cluster.local/ns/b/sa/server"])),
            reason: "BadSignature",
        },
    ]
}

#[test]
fn verifier_names_each_refusal() {
    let ca = TestCa::new();
    let algorithms = tls::provider().signature_verification_algorithms;
    for bad in bad_certs(&ca) {
        for usage in [
            webpki::KeyUsage::server_auth(),
            webpki::KeyUsage::client_auth(),
        ] {
            let err = tls::verify_svid(
                &bad.cert.chain[0],
                &bad.cert.chain[1..],
                &ca.bundle,
                &algorithms,
                usage,
                UnixTime::now(),
            )
            .expect_err(bad.name);
            assert!(
                format!("{err:?} {err}").contains(bad.reason),
                "{}: {err:?} should mention {:?}",
                bad.name,
                bad.reason
            );
        }
    }
}

#[tokio::test]
async fn client_refuses_each_bad_server_certificate() {
    let ca = TestCa::new();
    let client = ca.issue(&id("a", "client"));
    let expected = id("b", "server");
    for bad in bad_certs(&ca) {
        let seen = Arc::new(Seen::default());
        let server = start_raw_server(bad.cert.server_config(), seen.clone()).await;
        let pool = TunnelPool::new(PoolSettings::default(), ca.bundle.clone());
        let err = pool
            .connect(&client, &target(server, &expected), &DirectDialer)
            .await
            .expect_err(bad.name);
        assert!(matches!(err, HboneError::Tls { .. }), "{}: {err}", bad.name);
        assert!(
            err.to_string().contains(bad.reason) || format!("{err:?}").contains(bad.reason),
            "{}: {err} should mention {:?}",
            bad.name,
            bad.reason
        );
        assert_eq!(seen.tunnels.load(Ordering::SeqCst), 0, "{}", bad.name);
    }
}

#[tokio::test]
async fn server_refuses_each_bad_client_certificate() {
    let ca = TestCa::new();
    let server_id = id("b", "server");
    let seen = Arc::new(Seen::default());
    let server = start_server(&ca.issue(&server_id), &ca.bundle, Echo(seen.clone())).await;
    for bad in bad_certs(&ca) {
        let result = raw_connect(bad.cert.client_config(), server.addr).await;
        assert!(result.is_err(), "{}: server accepted a tunnel", bad.name);
    }
    assert_eq!(seen.tunnels.load(Ordering::SeqCst), 0);
    // A good client still gets through the same server.
    let pool = TunnelPool::new(PoolSettings::default(), ca.bundle.clone());
    let mut t = pool
        .connect(
            &ca.issue(&id("a", "client")),
            &target(server.addr, &server_id),
            &DirectDialer,
        )
        .await
        .expect("good client");
    t.write_all(b"ok").await.unwrap();
    let mut b = [0u8; 2];
    t.read_exact(&mut b).await.unwrap();
    assert_eq!(seen.tunnels.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn client_refuses_a_server_with_another_identity() {
    let ca = TestCa::new();
    let server = start_server(
        &ca.issue(&id("b", "impostor")),
        &ca.bundle,
        Echo(Arc::default()),
    )
    .await;
    let pool = TunnelPool::new(PoolSettings::default(), ca.bundle.clone());
    let err = pool
        .connect(
            &ca.issue(&id("a", "client")),
            &target(server.addr, &id("b", "server")),
            &DirectDialer,
        )
        .await
        .expect_err("identity mismatch");
    let text = err.to_string();
    assert!(
        text.contains("spiffe://cluster.local/ns/b/sa/impostor") && text.contains("expected"),
        "{text}"
    );
}

#[tokio::test]
async fn server_takes_identity_from_the_certificate_not_headers() {
    let ca = TestCa::new();
    let server_id = id("b", "server");
    let seen = Arc::new(Seen::default());
    let server = start_server(&ca.issue(&server_id), &ca.bundle, Echo(seen.clone())).await;
    let config = tls::client_config(&ca.issue(&id("a", "client")), &ca.bundle, &server_id).unwrap();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::IpAddress(server.addr.ip().into()),
            tcp,
        )
        .await
        .unwrap();
    let (mut h2, conn) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("10.0.0.1:80")
        .header(
            "x-forwarded-client-cert",
            "URI=spiffe://cluster.local/ns/kube-system/sa/admin",
        )
        .header(
            "x-spiffe-id",
            "spiffe://cluster.local/ns/kube-system/sa/admin",
        )
        .body(())
        .unwrap();
    let (resp, _send) = h2.send_request(req, false).unwrap();
    assert_eq!(resp.await.unwrap().status(), http::StatusCode::OK);
    let peers = seen.peers.lock().unwrap();
    assert_eq!(peers[0].0, id("a", "client"));
}

#[tokio::test]
async fn a_bundle_with_two_roots_accepts_both_during_rotation() {
    let old = TestCa::new();
    let new = TestCa::new();
    let mut both = TrustBundle::new(TRUST_DOMAIN);
    both.add_pem(old.ca.root_pem()).unwrap();
    both.add_pem(new.ca.root_pem()).unwrap();
    let server_id = id("b", "server");
    // Server on the new root, trusting both; clients on either root.
    let server = start_server(&new.issue(&server_id), &both, Echo(Arc::default())).await;
    for client_ca in [&old, &new] {
        let pool = TunnelPool::new(PoolSettings::default(), both.clone());
        let mut t = pool
            .connect(
                &client_ca.issue(&id("a", "client")),
                &target(server.addr, &server_id),
                &DirectDialer,
            )
            .await
            .expect("accepted during rotation");
        t.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        t.read_exact(&mut b).await.unwrap();
    }
    // After rotation ends, the old root is dropped and its clients refused.
    let mut new_only = both.clone();
    new_only.remove_der(old.ca.root_der());
    let server2 = start_server(&new.issue(&server_id), &new_only, Echo(Arc::default())).await;
    let result = raw_connect(
        old.craft(svid_params(&["spiffe://cluster.local/ns/a/sa/client"]))
            .client_config(),
        server2.addr,
    )
    .await;
    assert!(result.is_err());
}

/// A TLS+h2 server with an arbitrary config, answering 200 to any CONNECT.
async fn start_raw_server(
    config: Arc<rustls::ServerConfig>,
    seen: Arc<Seen>,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (config, seen) = (config.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await else {
                    return;
                };
                let Ok(mut conn) = h2::server::handshake(tls).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    seen.tunnels.fetch_add(1, Ordering::SeqCst);
                    let _ = respond.send_response(http::Response::new(()), false);
                }
            });
        }
    });
    addr
}

/// Opens a tunnel with a raw client config; Ok only if the server said 200.
async fn raw_connect(
    config: Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
            tcp,
        )
        .await?;
    let (mut h2, conn) = h2::client::handshake(tls).await?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("10.0.0.1:80")
        .body(())?;
    let (resp, _send) = h2.send_request(req, false)?;
    let resp = resp.await?;
    anyhow::ensure!(
        resp.status() == http::StatusCode::OK,
        "status {}",
        resp.status()
    );
    Ok(())
}
