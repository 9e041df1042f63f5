//! One module per command. Each takes the global arguments and its own, and
//! returns the [`Outcome`](crate::exit::Outcome) that becomes the exit code.

pub mod bug_report;
pub mod certs;
pub mod check;
pub mod completion;
pub mod enroll;
pub mod explain;
pub mod install;
pub mod preflight;
pub mod proxy_status;
pub mod resources;
pub mod svg;
pub mod tap;
pub mod top;
pub mod tunnels;
pub mod waypoint;

use std::future::Future;

use crate::cluster::NodeAdmin;
use crate::exit::{CliError, Outcome, Result};

/// Asks every node at once. Returns what the nodes answered, in node order,
/// and [`Outcome::Partial`] when some could not be read (each failure is
/// reported on stderr); fails only when no node answered.
pub async fn per_node<T, F, Fut>(nodes: &[NodeAdmin], ask: F) -> Result<(Vec<(String, T)>, Outcome)>
where
    F: Fn(NodeAdmin) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let answers = futures::future::join_all(nodes.iter().cloned().map(&ask)).await;
    let mut ok = Vec::new();
    let mut failures: Vec<CliError> = Vec::new();
    for (node, answer) in nodes.iter().zip(answers) {
        match answer {
            Ok(value) => ok.push((node.node.clone(), value)),
            Err(e) => failures.push(e),
        }
    }
    if ok.is_empty() && !failures.is_empty() {
        return Err(failures.swap_remove(0));
    }
    for e in &failures {
        eprintln!("weftctl: warning: {e}");
    }
    let outcome = if failures.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Partial
    };
    Ok((ok, outcome))
}

/// `spiffe://td/ns/NS/sa/SA` → `NS/SA`, for narrow tables; anything else as is.
pub fn short_identity(id: &str) -> String {
    let rest = id.strip_prefix("spiffe://").and_then(|r| r.split_once('/'));
    if let Some((_, path)) = rest
        && let Some(tail) = path.strip_prefix("ns/")
        && let Some((ns, sa)) = tail.split_once("/sa/")
    {
        return format!("{ns}/{sa}");
    }
    id.to_string()
}

/// The namespace of a SPIFFE ID, if it has the Kubernetes form.
pub fn identity_namespace(id: &str) -> Option<&str> {
    let (_, path) = id.strip_prefix("spiffe://")?.split_once('/')?;
    let tail = path.strip_prefix("ns/")?;
    Some(tail.split_once("/sa/")?.0)
}

/// A protobuf enum's name without its type prefix: `TUNNEL_PROTOCOL_HBONE` → `HBONE`.
pub fn enum_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix).unwrap_or(full).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities() {
        assert_eq!(short_identity("spiffe://cluster.local/ns/a/sa/b"), "a/b");
        assert_eq!(short_identity("other"), "other");
        assert_eq!(identity_namespace("spiffe://td/ns/a/sa/b"), Some("a"));
        assert_eq!(identity_namespace("spiffe://td/x"), None);
    }
}
