//! The gRPC port under a flood of connections that never send a
//! ClientHello: they are closed (at once beyond a cap, at the handshake
//! deadline within it) while real proxies still get config and certificates.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Harness, Limits, Subscriber, pod, state};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use weft_api::ca::CreateCertificateRequest;
use weft_api::ca::certificate_authority_client::CertificateAuthorityClient;
use weft_controller::auth::AllowAll;
use weft_controller::server::ConnectionLimits;
use weft_identity::SpiffeId;
use weft_identity::ca::generate_csr;

/// A TCP connection to `addr` from `source` (another loopback address, so
/// that the attacker is a different source than the real client on
/// 127.0.0.1), that never sends anything.
async fn stalled(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("source"))
        .expect("bind source");
    socket.connect(addr).await.expect("connect")
}

/// Waits up to `within` for the server to close `stream`.
async fn closed_within(mut stream: TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(within, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => panic!("the server sent data before any ClientHello"),
        Err(_) => false,
    }
}

/// Splits `streams` into those the server closes within `within` and those
/// still open then (checked concurrently).
async fn partition(streams: Vec<TcpStream>, within: Duration) -> (usize, Vec<TcpStream>) {
    let mut closed = 0;
    let mut open = Vec::new();
    let peeks = streams.into_iter().map(|s| async move {
        let mut buf = [0u8; 1];
        match tokio::time::timeout(within, s.peek(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => None,
            Ok(Ok(_)) => panic!("the server sent data before any ClientHello"),
            Err(_) => Some(s),
        }
    });
    for result in futures::future::join_all(peeks).await {
        match result {
            None => closed += 1,
            Some(s) => open.push(s),
        }
    }
    (closed, open)
}

async fn certificate(h: &Harness) -> Result<Vec<String>, tonic::Status> {
    let id = SpiffeId::new("cluster.local", "shop", "web").expect("id");
    let (csr_pem, _key) = generate_csr(&id).expect("csr");
    CertificateAuthorityClient::new(h.channel().await)
        .create_certificate(CreateCertificateRequest {
            csr_pem,
            node: "node-a".into(),
            ttl_seconds: 600,
        })
        .await
        .map(|r| r.into_inner().cert_chain_pem)
}

fn limits(connections: ConnectionLimits) -> Limits {
    Limits {
        connections,
        ..Limits::default()
    }
}

#[tokio::test]
async fn stalled_handshakes_are_closed_and_real_proxies_still_served() {
    let timeout = Duration::from_secs(2);
    let connections = ConnectionLimits {
        handshake_timeout: timeout,
        max_pending_handshakes: 64,
        max_pending_handshakes_per_source: 4,
        max_connections: 64,
    };
    let a = pod("shop", "web-1", "node-a", "web", "10.244.1.5");
    let h = Harness::start_limited(
        state(std::slice::from_ref(&a)),
        Arc::new(AllowAll),
        limits(connections),
    )
    .await;

    let started = Instant::now();
    let mut flood = Vec::new();
    for _ in 0..12 {
        flood.push(stalled("127.0.0.2", h.addr).await);
    }
    // Beyond the per-source cap: closed at once.
    let (closed, pending) = partition(flood, Duration::from_millis(500)).await;
    assert_eq!(closed, 8, "connections beyond the per-source cap");
    assert_eq!(pending.len(), 4);

    // Meanwhile a real proxy gets its config and its certificate.
    let mut sub = Subscriber::connect(h.channel().await, None, "node-a")
        .await
        .expect("subscribe during the flood");
    assert!(sub.next().await.full_snapshot);
    assert!(
        certificate(&h).await.is_ok(),
        "certificate during the flood"
    );

    // Within the cap: closed at the handshake deadline.
    let within = timeout + Duration::from_secs(1);
    let closes = pending
        .into_iter()
        .map(|s| closed_within(s, within.saturating_sub(started.elapsed())));
    let closed = futures::future::join_all(closes).await;
    assert!(closed.iter().all(|c| *c), "stalled handshakes left open");
    assert!(started.elapsed() >= timeout - Duration::from_millis(200));
}

#[tokio::test]
async fn the_global_caps_close_connections_at_once_and_keep_room_for_real_proxies() {
    let timeout = Duration::from_secs(1);
    let connections = ConnectionLimits {
        handshake_timeout: timeout,
        max_pending_handshakes: 4,
        max_pending_handshakes_per_source: 2,
        max_connections: 64,
    };
    let h = Harness::start_limited(state(&[]), Arc::new(AllowAll), limits(connections)).await;
    // Three sources at their own cap: the third one's are over the global cap.
    let mut flood = Vec::new();
    for source in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        for _ in 0..2 {
            flood.push(stalled(source, h.addr).await);
        }
    }
    // Over the global cap the oldest handshakes are closed for the newest.
    let (closed, pending) = partition(flood, Duration::from_millis(300)).await;
    assert_eq!(closed, 2, "handshakes beyond the global cap");
    assert_eq!(pending.len(), 4);
    // So the flood, though it fills the table, does not lock a real proxy
    // out: its handshake takes the place of a stalled one.
    let mut sub = Subscriber::connect(h.channel().await, None, "node-a")
        .await
        .expect("subscribe during the flood");
    assert!(sub.next().await.full_snapshot);
    let (closed, pending) = partition(pending, Duration::from_millis(100)).await;
    assert_eq!(closed, 1, "the oldest stalled handshake made room");
    for s in pending {
        assert!(closed_within(s, timeout + Duration::from_secs(1)).await);
    }

    // The open-connection cap counts established connections too.
    let connections = ConnectionLimits {
        handshake_timeout: timeout,
        max_connections: 2,
        ..ConnectionLimits::default()
    };
    let h = Harness::start_limited(state(&[]), Arc::new(AllowAll), limits(connections)).await;
    let mut sub = Subscriber::connect(h.channel().await, None, "node-a")
        .await
        .expect("subscribe");
    assert!(sub.next().await.full_snapshot);
    let second = stalled("127.0.0.2", h.addr).await;
    let third = stalled("127.0.0.3", h.addr).await;
    assert!(
        closed_within(third, Duration::from_millis(500)).await,
        "a connection over the open-connection cap"
    );
    assert!(!closed_within(second, Duration::from_millis(200)).await);
}
