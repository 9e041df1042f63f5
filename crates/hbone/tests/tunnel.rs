//! HBONE client and server on loopback: integrity, pooling, stream caps,
//! idle expiry, half-close, refusals and malformed requests.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_hbone::{
    ByteCounters, DirectDialer, HboneError, PoolSettings, TunnelPool, copy_bidirectional,
};
use weft_testkit::ca::*;
use weft_testkit::eventually_async;
use weft_testkit::hbone::*;

fn pool(ca: &TestCa) -> TunnelPool {
    TunnelPool::new(PoolSettings::default(), ca.bundle.clone())
}

#[tokio::test]
async fn multi_mib_round_trip_keeps_integrity() {
    let ca = TestCa::new();
    let (client_id, server_id) = (id("a", "client"), id("b", "server"));
    let seen = Arc::new(Seen::default());
    let server = start_server(&ca.issue(&server_id), &ca.bundle, Echo(seen.clone())).await;
    let pool = pool(&ca);
    let tunnel = pool
        .connect(
            &ca.issue(&client_id),
            &target(server.addr, &server_id),
            &DirectDialer,
        )
        .await
        .expect("tunnel");

    // 8 MiB of non-repeating bytes, written and read concurrently.
    let data: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let expected = Sha256::digest(&data);
    let (mut rd, mut wr) = tokio::io::split(tunnel);
    let writer = tokio::spawn(async move {
        wr.write_all(&data).await.expect("write");
        wr.shutdown().await.expect("finish");
    });
    let mut echoed = Vec::new();
    rd.read_to_end(&mut echoed).await.expect("read");
    writer.await.expect("writer");
    assert_eq!(echoed.len(), 8 * 1024 * 1024);
    assert_eq!(Sha256::digest(&echoed), expected);

    // The server saw the client's identity from its certificate, the
    // authority, and the forwarded client IP and trace context.
    let peers = seen.peers.lock().unwrap();
    assert_eq!(peers.len(), 1);
    let (peer, authority, client_ip, traceparent) = &peers[0];
    assert_eq!(peer, &client_id);
    assert_eq!(authority.to_string(), "10.0.0.1:8080");
    assert_eq!(
        client_ip.map(|ip| ip.to_string()).as_deref(),
        Some("10.0.0.2")
    );
    assert!(
        traceparent
            .as_deref()
            .unwrap_or("")
            .starts_with("00-0af7651916cd43dd")
    );
}

#[tokio::test]
async fn tcp_to_tunnel_to_tcp_copies_with_counts() {
    let ca = TestCa::new();
    let (client_id, server_id) = (id("a", "client"), id("b", "server"));

    // The "application": reads everything, answers with its SHA-256.
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = app.accept().await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        s.write_all(&Sha256::digest(&buf)).await.unwrap();
        s.shutdown().await.unwrap();
    });
    let server = start_server(&ca.issue(&server_id), &ca.bundle, ForwardTo(app_addr)).await;

    // The "outbound proxy": a TCP listener whose connection is copied into
    // a tunnel, as ztunnel's outbound does.
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let pool = pool(&ca);
    let cert = ca.issue(&client_id);
    let t = target(server.addr, &server_id);
    let proxy_task = tokio::spawn(async move {
        let (mut s, _) = proxy.accept().await.unwrap();
        let tunnel = pool.connect(&cert, &t, &DirectDialer).await.unwrap();
        let counters = ByteCounters::default();
        copy_bidirectional(&mut s, tunnel, &counters).await.unwrap();
        (counters.sent(), counters.received())
    });

    let payload = vec![0x5au8; 3 * 1024 * 1024 + 17];
    let mut client = TcpStream::connect(proxy_addr).await.unwrap();
    client.write_all(&payload).await.unwrap();
    client.shutdown().await.unwrap();
    let mut digest = Vec::new();
    client.read_to_end(&mut digest).await.unwrap();
    assert_eq!(digest, Sha256::digest(&payload).to_vec());
    let (sent, received) = proxy_task.await.unwrap();
    assert_eq!(sent, payload.len() as u64);
    assert_eq!(received, 32);
}

#[tokio::test]
async fn concurrent_tunnels_share_one_connection() {
    let ca = TestCa::new();
    let (client_id, server_id) = (id("a", "client"), id("b", "server"));
    let seen = Arc::new(Seen::default());
    let server = start_server(&ca.issue(&server_id), &ca.bundle, Echo(seen.clone())).await;
    let pool = pool(&ca);
    let cert = ca.issue(&client_id);
    let t = target(server.addr, &server_id);

    let mut tasks = Vec::new();
    for i in 0..50u32 {
        let (pool, cert, t) = (pool.clone(), cert.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            let mut tunnel = pool
                .connect(&cert, &t, &DirectDialer)
                .await
                .expect("tunnel");
            let msg = format!("hello {i}");
            tunnel.write_all(msg.as_bytes()).await.unwrap();
            tunnel.shutdown().await.unwrap();
            let mut back = String::new();
            tunnel.read_to_string(&mut back).await.unwrap();
            assert_eq!(back, msg);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(seen.tunnels.load(Ordering::SeqCst), 50);
    assert_eq!(
        server.accepted.load(Ordering::SeqCst),
        1,
        "one TCP connection carried all tunnels"
    );
    assert_eq!(pool.connections_opened(), 1);
}

#[tokio::test]
async fn a_second_connection_opens_past_the_stream_cap() {
    let ca = TestCa::new();
    let (client_id, server_id) = (id("a", "client"), id("b", "server"));
    let server = start_server(&ca.issue(&server_id), &ca.bundle, Echo(Arc::default())).await;
    let settings = PoolSettings {
        max_streams_per_connection: 3,
        ..PoolSettings::default()
    };
    let pool = TunnelPool::new(settings, ca.bundle.clone());
    let cert = ca.issue(&client_id);
    let t = target(server.addr, &server_id);

    // Hold 7 tunnels open at once: 3 + 3 + 1 -> three connections.
    let mut open = Vec::new();
    for _ in 0..7 {
        open.push(
            pool.connect(&cert, &t, &DirectDialer)
                .await
                .expect("tunnel"),
        );
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 3);
    let mut streams: Vec<usize> = pool
        .connections()
        .iter()
        .map(|c| c.active_streams)
        .collect();
    streams.sort();
    assert_eq!(streams, vec![1, 3, 3]);

    // Closing tunnels frees slots; a new tunnel reuses a connection.
    open.truncate(2);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _again = pool
        .connect(&cert, &t, &DirectDialer)
        .await
        .expect("tunnel");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn idle_connections_expire() {
    let ca = TestCa::new();
    let (client_id, server_id) = (id("a", "client"), id("b", "server"));
    let server = start_server(&ca.issue(&server_id), &ca.bundle, Echo(Arc::default())).await;
    let settings = PoolSettings {
        idle_timeout: Duration::from_millis(200),
        ..PoolSettings::default()
    };
    let pool = TunnelPool::new(settings, ca.bundle.clone());
    let cert = ca.issue(&client_id);
    let t = target(server.addr, &server_id);
    {
        let mut tunnel = pool.connect(&cert, &t, &DirectDialer).await.unwrap();
        tunnel.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        tunnel.read_exact(&mut b).await.unwrap();
    }
    assert_eq!(pool.connections().len(), 1);
    // Wait (by polling state, not by asserting a duration) for the reaper.
    eventually_async(
        "the idle connection to be closed",
        Duration::from_secs(5),
        async || pool.connections().is_empty(),
    )
    .await;
    let _t = pool.connect(&cert, &t, &DirectDialer).await.unwrap();
    assert_eq!(
        server.accepted.load(Ordering::SeqCst),
        2,
        "a new connection replaced the idle one"
    );
}

#[tokio::test]
async fn half_close_carries_both_ways() {
    let ca = TestCa::new();
    let (client_id, server_id) = (id("a", "client"), id("b", "server"));
    let server = start_server(&ca.issue(&server_id), &ca.bundle, CountThenReply).await;
    let pool = pool(&ca);
    let mut tunnel = pool
        .connect(
            &ca.issue(&client_id),
            &target(server.addr, &server_id),
            &DirectDialer,
        )
        .await
        .unwrap();
    tunnel.write_all(&[1u8; 100_000]).await.unwrap();
    // Our half-close is the server's EOF; it answers only after seeing it,
    // and its own half-close is our EOF.
    tunnel.shutdown().await.unwrap();
    let mut reply = String::new();
    tunnel.read_to_string(&mut reply).await.unwrap();
    assert_eq!(reply, "received 100000 bytes");
}

#[tokio::test]
async fn half_close_through_tcp_copiers() {
    let ca = TestCa::new();
    let (client_id, server_id) = (id("a", "client"), id("b", "server"));
    // The app writes a greeting, then waits for the client's EOF before
    // answering: it only works if the client's FIN crosses the tunnel while
    // the app's direction stays open.
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = app.accept().await.unwrap();
        s.write_all(b"hi;").await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        s.write_all(format!("got {}", buf.len()).as_bytes())
            .await
            .unwrap();
    });
    let server = start_server(&ca.issue(&server_id), &ca.bundle, ForwardTo(app_addr)).await;
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let (pool, cert, t) = (
        pool(&ca),
        ca.issue(&client_id),
        target(server.addr, &server_id),
    );
    tokio::spawn(async move {
        let (mut s, _) = proxy.accept().await.unwrap();
        let tunnel = pool.connect(&cert, &t, &DirectDialer).await.unwrap();
        let _ = copy_bidirectional(&mut s, tunnel, &ByteCounters::default()).await;
    });
    let mut client = TcpStream::connect(proxy_addr).await.unwrap();
    let mut hi = [0u8; 3];
    client.read_exact(&mut hi).await.unwrap();
    client.write_all(b"12345").await.unwrap();
    client.shutdown().await.unwrap();
    let mut rest = String::new();
    client.read_to_string(&mut rest).await.unwrap();
    assert_eq!(rest, "got 5");
}

#[tokio::test]
async fn refusal_status_reaches_the_client() {
    let ca = TestCa::new();
    let (client_id, server_id) = (id("a", "client"), id("b", "server"));
    let server = start_server(&ca.issue(&server_id), &ca.bundle, Refuse).await;
    let err = pool(&ca)
        .connect(
            &ca.issue(&client_id),
            &target(server.addr, &server_id),
            &DirectDialer,
        )
        .await
        .expect_err("refused");
    assert!(
        matches!(err, HboneError::Refused(StatusCode::FORBIDDEN)),
        "{err}"
    );
    assert!(err.is_refusal());
}

/// A raw HTTP/2 client over the same mTLS, to send what the pool never would.
async fn raw_h2(
    ca: &TestCa,
    server: std::net::SocketAddr,
    client_id: &weft_hbone::SpiffeId,
    server_id: &weft_hbone::SpiffeId,
) -> h2::client::SendRequest<Bytes> {
    let (send, conn) = raw_h2_undriven(ca, server, client_id, server_id).await;
    tokio::spawn(conn);
    send
}

/// As [`raw_h2`], handing back the connection future for the caller to
/// drive, or not.
async fn raw_h2_undriven(
    ca: &TestCa,
    server: std::net::SocketAddr,
    client_id: &weft_hbone::SpiffeId,
    server_id: &weft_hbone::SpiffeId,
) -> (
    h2::client::SendRequest<Bytes>,
    h2::client::Connection<tokio_rustls::client::TlsStream<TcpStream>, Bytes>,
) {
    let config =
        weft_hbone::tls::client_config(&ca.issue(client_id), &ca.bundle, server_id).unwrap();
    let tcp = TcpStream::connect(server).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::IpAddress(server.ip().into()),
            tcp,
        )
        .await
        .unwrap();
    h2::client::handshake(tls).await.unwrap()
}

#[tokio::test]
async fn malformed_connect_gets_400_and_other_streams_keep_working() {
    let ca = TestCa::new();
    let (client_id, server_id) = (id("a", "client"), id("b", "server"));
    let server = start_server(&ca.issue(&server_id), &ca.bundle, Echo(Arc::default())).await;
    let mut h2 = raw_h2(&ca, server.addr, &client_id, &server_id).await;

    // A good tunnel on this connection, opened first and used throughout.
    let good = Request::builder()
        .method(Method::CONNECT)
        .uri("10.0.0.1:80")
        .body(())
        .unwrap();
    let (resp, mut good_send) = h2.send_request(good, false).unwrap();
    let good_recv = resp.await.unwrap();
    assert_eq!(good_recv.status(), StatusCode::OK);
    let mut good_body = good_recv.into_body();

    let bad_requests = [
        Request::builder()
            .method(Method::GET)
            .uri("http://10.0.0.1:80/")
            .body(())
            .unwrap(),
        Request::builder()
            .method(Method::CONNECT)
            .uri("example.com:80")
            .body(())
            .unwrap(),
        Request::builder()
            .method(Method::CONNECT)
            .uri("10.0.0.1:0")
            .body(())
            .unwrap(),
        Request::builder()
            .method(Method::POST)
            .uri("https://10.0.0.1:80/x")
            .body(())
            .unwrap(),
    ];
    for (i, bad) in bad_requests.into_iter().enumerate() {
        let (resp, _send) = h2.send_request(bad, true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "bad request {i}");
        let mut body = resp.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = body.data().await {
            text.extend_from_slice(&chunk.unwrap());
        }
        assert!(!text.is_empty(), "400 says why");

        // The good tunnel still echoes after each bad request.
        let msg = Bytes::from(format!("still here {i}"));
        good_send.send_data(msg.clone(), false).unwrap();
        let echoed = good_body.data().await.unwrap().unwrap();
        let _ = good_body.flow_control().release_capacity(echoed.len());
        assert_eq!(echoed, msg);
    }

    // A CONNECT with no :authority at all is malformed at the HTTP/2 layer
    // (RFC 9113 §8.5): that one stream is reset with PROTOCOL_ERROR, and
    // the connection and its other streams are untouched.
    let no_authority = Request::builder()
        .method(Method::CONNECT)
        .uri("/")
        .body(())
        .unwrap();
    let (resp, _send) = h2.send_request(no_authority, true).unwrap();
    let err = resp.await.expect_err("reset");
    assert_eq!(err.reason(), Some(h2::Reason::PROTOCOL_ERROR));
    let msg = Bytes::from_static(b"after reset");
    good_send.send_data(msg.clone(), false).unwrap();
    assert_eq!(good_body.data().await.unwrap().unwrap(), msg);
}

#[tokio::test]
async fn garbage_frames_close_only_their_own_connection() {
    let ca = TestCa::new();
    let (client_id, server_id) = (id("a", "client"), id("b", "server"));
    let server = start_server(&ca.issue(&server_id), &ca.bundle, Echo(Arc::default())).await;
    let pool = pool(&ca);
    let cert = ca.issue(&client_id);
    let mut good = pool
        .connect(&cert, &target(server.addr, &server_id), &DirectDialer)
        .await
        .unwrap();

    // Several mTLS connections that then speak nonsense instead of HTTP/2,
    // or a valid preface followed by malformed frames.
    let config = weft_hbone::tls::client_config(&cert, &ca.bundle, &server_id).unwrap();
    let payloads: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
        [
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(),
            // A HEADERS frame claiming 16 MiB of payload on stream 0.
            &[0xff, 0xff, 0xff, 0x01, 0x04, 0, 0, 0, 0],
        ]
        .concat(),
        [
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(),
            // SETTINGS with a length that is not a multiple of 6.
            &[0, 0, 5, 0x04, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5],
        ]
        .concat(),
    ];
    for payload in payloads {
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(
                rustls::pki_types::ServerName::IpAddress(server.addr.ip().into()),
                tcp,
            )
            .await
            .unwrap();
        let _ = tls.write_all(&payload).await;
        let mut sink = Vec::new();
        // The server closes this connection (GOAWAY or EOF), bounded.
        let closed =
            tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut sink)).await;
        assert!(closed.is_ok(), "server kept a garbage connection open");
    }

    // The good tunnel on its own connection is untouched.
    good.write_all(b"still fine").await.unwrap();
    let mut back = [0u8; 10];
    good.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"still fine");
}

/// A TCP connection from `source` that never starts its TLS handshake.
async fn silent_connection(source: &str, server: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("source"))
        .expect("bind source");
    socket.connect(server).await.expect("connect")
}

/// True if the server closes (or resets) `stream` within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(limit, stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Security finding 4: unauthenticated handshakes were uncapped and held
/// for 10 s with a 64 KiB buffer each. Now one source gets a bounded share,
/// the others are still served, and a silent peer is gone after the
/// (short) pre-authentication deadline.
#[tokio::test]
async fn silent_handshakes_are_bounded_per_source_and_in_time() {
    let ca = TestCa::new();
    let (client_id, server_id) = (id("a", "client"), id("b", "server"));
    let settings = weft_hbone::ServerSettings {
        handshake_timeout: Duration::from_millis(500),
        handshakes: weft_hbone::HandshakeGate::new(100, 4),
        ..weft_hbone::ServerSettings::default()
    };
    let gate = settings.handshakes.clone();
    let seen = Arc::new(Seen::default());
    let server = start_server_with(&ca.issue(&server_id), &ca.bundle, Echo(seen), settings).await;

    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(silent_connection("127.0.0.2", server.addr).await);
    }
    eventually_async(
        "the silent connections to be counted",
        Duration::from_secs(1),
        async || gate.in_progress() == 4,
    )
    .await;
    let mut fifth = silent_connection("127.0.0.2", server.addr).await;
    assert!(
        closed_within(&mut fifth, Duration::from_millis(300)).await,
        "a connection over the source's share was not closed at once"
    );

    // Another source is served while that one is at its cap.
    let pool = pool(&ca);
    let mut tunnel = pool
        .connect(
            &ca.issue(&client_id),
            &target(server.addr, &server_id),
            &DirectDialer,
        )
        .await
        .expect("a real client gets its tunnel");
    tunnel.write_all(b"ping").await.expect("write");
    let mut echo = [0u8; 4];
    tunnel.read_exact(&mut echo).await.expect("echo");
    assert_eq!(&echo, b"ping");

    for s in &mut silent {
        assert!(
            closed_within(s, Duration::from_secs(3)).await,
            "a silent connection outlived the handshake deadline"
        );
    }
    assert_eq!(gate.in_progress(), 0);
}

/// Answers each tunnel only after a while, as ztunnel does after it has
/// dialled the application.
struct SlowAccept;

impl weft_hbone::TunnelHandler for SlowAccept {
    async fn handle(&self, tunnel: weft_hbone::InboundTunnel) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = tunnel.accept();
    }
}

/// Security finding 9: a paced rapid reset (CONNECT, wait, RST) never
/// tripped h2's own limit and each stream cost an upstream connection. Now
/// the streams a client resets before they are answered are counted, and
/// past the limit the connection gets GOAWAY.
#[tokio::test]
async fn a_client_that_keeps_resetting_its_tunnels_gets_goaway() {
    let ca = TestCa::new();
    let (client_id, server_id) = (id("a", "client"), id("b", "server"));
    let settings = weft_hbone::ServerSettings {
        max_early_resets: 10,
        ..weft_hbone::ServerSettings::default()
    };
    let server = start_server_with(&ca.issue(&server_id), &ca.bundle, SlowAccept, settings).await;
    let mut h2 = raw_h2(&ca, server.addr, &client_id, &server_id).await;
    let mut sent = 0;
    let outcome = loop {
        if sent == 200 {
            break Err("200 tunnels reset without GOAWAY".to_owned());
        }
        let ready = match h2.clone().ready().await {
            Ok(ready) => ready,
            Err(e) => break Ok(e),
        };
        h2 = ready;
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri("10.0.0.1:8080")
            .body(())
            .expect("request");
        let (_response, mut stream) = match h2.send_request(request, false) {
            Ok(r) => r,
            Err(e) => break Ok(e),
        };
        sent += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
        stream.send_reset(h2::Reason::CANCEL);
        // Paced: the server answers (too late) before the next one.
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let err = outcome.expect("the server closed the connection");
    assert!(
        err.is_go_away() || err.is_io() || err.is_remote(),
        "after {sent} resets: {err}"
    );
    assert!(sent <= 40, "GOAWAY came only after {sent} resets");
}

/// A connection with no tunnel for the idle timeout is closed by the
/// server (the client pool's own idle timeout is shorter).
#[tokio::test]
async fn an_idle_connection_is_closed_by_the_server() {
    let ca = TestCa::new();
    let (client_id, server_id) = (id("a", "client"), id("b", "server"));
    let settings = weft_hbone::ServerSettings {
        idle_timeout: Duration::from_millis(200),
        ..weft_hbone::ServerSettings::default()
    };
    let server = start_server_with(
        &ca.issue(&server_id),
        &ca.bundle,
        Echo(Arc::default()),
        settings,
    )
    .await;
    let h2 = raw_h2(&ca, server.addr, &client_id, &server_id).await;
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            if h2.clone().ready().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle connection stayed open");
}

/// Security finding 9: the server PINGs its clients. A client that holds a
/// connection open without answering (here: it never reads it) is dropped
/// within one interval plus one timeout; a client that answers keeps its
/// connection.
#[tokio::test]
async fn a_client_that_does_not_answer_pings_is_disconnected() {
    let ca = TestCa::new();
    let (client_id, server_id) = (id("a", "client"), id("b", "server"));
    let mut settings = weft_hbone::ServerSettings::default();
    settings.h2.keepalive_interval = Duration::from_millis(200);
    settings.h2.keepalive_timeout = Duration::from_millis(200);
    let server = start_server_with(&ca.issue(&server_id), &ca.bundle, SlowAccept, settings).await;

    // Answers: its connection is driven by a task of its own.
    let answering = raw_h2(&ca, server.addr, &client_id, &server_id).await;
    // Silent: the connection future is held but never polled.
    let (silent_send, silent_conn) =
        raw_h2_undriven(&ca, server.addr, &client_id, &server_id).await;

    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The silent client's connection was closed by the server: driven now,
    // it ends at once (a live one would stay pending until the idle timeout).
    let ended = tokio::time::timeout(Duration::from_secs(2), silent_conn).await;
    assert!(
        ended.is_ok(),
        "the server kept a client that never answered its PINGs"
    );
    drop(silent_send);
    // The answering client still has its connection: a CONNECT goes through
    // to the handler (which takes its time; the request is accepted).
    let mut answering = answering.ready().await.expect("connection still up");
    let request = Request::builder()
        .method(Method::CONNECT)
        .uri("10.0.0.1:8080")
        .body(())
        .expect("request");
    let (_response, _stream) = answering
        .send_request(request, false)
        .expect("the answering client can still open a tunnel");
}
