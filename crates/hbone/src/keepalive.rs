//! HTTP/2 PING keepalive, the same on both ends of a tunnel connection: a
//! peer that stops answering (crashed, partitioned, or a client that holds a
//! connection open without reading it) is found within one interval plus
//! one timeout, instead of holding its connection until TCP gives up.

use tokio::time::timeout;

use crate::settings::H2Settings;

/// Why PINGing stopped.
#[derive(Debug)]
pub enum Unanswered {
    /// No PONG within the timeout.
    Timeout,
    /// The connection failed while PINGing.
    Failed(h2::Error),
}

/// PINGs every `keepalive_interval` and returns when one is not answered
/// within `keepalive_timeout`. Poll it beside the connection's own future:
/// the connection carries the PING and its PONG.
pub async fn until_unanswered(mut ping_pong: h2::PingPong, settings: &H2Settings) -> Unanswered {
    loop {
        tokio::time::sleep(settings.keepalive_interval).await;
        match timeout(
            settings.keepalive_timeout,
            ping_pong.ping(h2::Ping::opaque()),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Unanswered::Failed(e),
            Err(_) => return Unanswered::Timeout,
        }
    }
}
