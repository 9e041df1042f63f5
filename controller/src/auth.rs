//! Who is calling the controller: bootstrap tokens (files mode) or
//! Kubernetes TokenReview.
//!
//! Both the config stream and the CA take `authorization: Bearer <token>`.
//! The result is a [`Caller`]; the CA then decides which identities that
//! caller may obtain.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};
use sha2::{Digest, Sha256};

/// The audience weft's proxies request for the token they show the
/// controller (a projected ServiceAccount token), and the one the controller
/// requires by default. A token for the API server's default audience — the
/// one every pod gets automounted — is not enough: an attacker who steals an
/// application's token cannot use it here, and a weft token is no use
/// against the API server.
pub const CONTROLLER_AUDIENCE: &str = "weft.dev/controller";

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A node's ztunnel. Its credential always names its node (a bootstrap
    /// token by its file name, a ServiceAccount token by the node the API
    /// server bound it to): the node limits which identities it may obtain,
    /// so a node taken from the request would let one stolen token obtain
    /// every node's. A credential that names no node is refused
    /// ([`AuthError::UnboundZtunnel`]).
    Ztunnel {
        /// The node the credential belongs to.
        node: String,
    },
    /// Any other ServiceAccount: a waypoint, if a waypoint runs as it.
    ServiceAccount {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// Authentication is disabled (tests and benchmarks only).
    Anonymous,
}

/// Why a caller was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `authorization: Bearer` metadata.
    #[error("missing bearer token")]
    Missing,
    /// The token is not known or not valid.
    #[error("invalid token")]
    Invalid,
    /// The token belongs to an identity that may not call the controller.
    #[error("{0} may not call the controller")]
    NotAllowed(String),
    /// The token is not valid, or not for the controller's audience.
    #[error(
        "invalid token, or not one for audience {0} (proxies need a projected ServiceAccount token with that audience)"
    )]
    Audience(String),
    /// A token of the ztunnel's ServiceAccount that the API server bound to
    /// no node. Such a token would be good on every node, and so would
    /// obtain every node's identities.
    #[error("{}", unbound_ztunnel(.audiences, .pod.as_deref()))]
    UnboundZtunnel {
        /// The audiences the controller requires (the API server's default
        /// when empty): the ones the ztunnel's projected token must carry.
        audiences: String,
        /// The pod the token is bound to, if it is bound to one.
        pod: Option<String>,
    },
    /// TokenReview failed.
    #[error("token review failed: {0}")]
    Review(#[from] kube::Error),
    /// The token directory could not be read.
    #[error("cannot read bootstrap tokens from {path}: {source}")]
    Tokens {
        /// The directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// What [`AuthError::UnboundZtunnel`] tells the operator: the two causes
/// need different fixes (the ztunnel's token, or the API server).
fn unbound_ztunnel(audiences: &str, pod: Option<&str>) -> String {
    match pod {
        Some(pod) => format!(
            "the ztunnel's token is bound to pod {pod} but the API server did not say which node \
             that pod runs on: the controller binds a ztunnel to its node from the token, which \
             needs Kubernetes 1.30 or later (feature gate ServiceAccountTokenPodNodeInfo)"
        ),
        None => {
            let audience = if audiences.is_empty() {
                "the API server's default audience".to_string()
            } else {
                format!("audience {audiences}")
            };
            format!(
                "the ztunnel's token is bound to no node: ztunnels must present a pod-bound \
                 ServiceAccount token (a projected serviceAccountToken volume with {audience}); \
                 a token from `kubectl create token` without --bound-object-kind Pod, or a \
                 legacy Secret token, is refused"
            )
        }
    }
}

/// Authenticates a bearer token.
pub trait Authenticator: Send + Sync + 'static {
    /// The caller the token belongs to.
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>>;
}

/// Reads the bearer token from request metadata.
pub fn bearer_token(metadata: &tonic::metadata::MetadataMap) -> Result<&str, AuthError> {
    metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::Missing)
}

/// Authenticates the metadata of a request with `auth`.
pub async fn authenticate(
    auth: &dyn Authenticator,
    metadata: &tonic::metadata::MetadataMap,
) -> Result<Caller, AuthError> {
    let token = bearer_token(metadata);
    match token {
        Ok(token) => auth.authenticate(token).await,
        Err(e) => {
            // Anonymous authenticators accept requests without a token.
            match auth.authenticate("").await {
                Ok(Caller::Anonymous) => Ok(Caller::Anonymous),
                _ => Err(e),
            }
        }
    }
}

/// Accepts everyone. For tests and the benchmark; never the binary's default.
pub struct AllowAll;

impl Authenticator for AllowAll {
    fn authenticate<'a>(&'a self, _token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
        Box::pin(async { Ok(Caller::Anonymous) })
    }
}

/// Files mode: one token per node and per waypoint, in a directory:
///
/// ```text
/// <dir>/nodes/<node>                          -> the ztunnel of <node>
/// <dir>/waypoints/<namespace>/<serviceaccount> -> that waypoint
/// ```
///
/// Each file holds the token (surrounding whitespace ignored).
#[derive(Clone, Debug, Default)]
pub struct BootstrapTokens {
    tokens: HashMap<String, Caller>,
}

impl BootstrapTokens {
    /// Reads the token directory.
    pub fn load(dir: &Path) -> Result<BootstrapTokens, AuthError> {
        let io = |source| AuthError::Tokens {
            path: dir.display().to_string(),
            source,
        };
        let mut tokens = HashMap::new();
        let nodes = dir.join("nodes");
        if nodes.is_dir() {
            for entry in std::fs::read_dir(&nodes).map_err(io)? {
                let entry = entry.map_err(io)?;
                let token = std::fs::read_to_string(entry.path()).map_err(io)?;
                let node = entry.file_name().to_string_lossy().into_owned();
                tokens.insert(token.trim().to_string(), Caller::Ztunnel { node });
            }
        }
        let waypoints = dir.join("waypoints");
        if waypoints.is_dir() {
            for ns in std::fs::read_dir(&waypoints).map_err(io)? {
                let ns = ns.map_err(io)?;
                if !ns.path().is_dir() {
                    continue;
                }
                for sa in std::fs::read_dir(ns.path()).map_err(io)? {
                    let sa = sa.map_err(io)?;
                    let token = std::fs::read_to_string(sa.path()).map_err(io)?;
                    tokens.insert(
                        token.trim().to_string(),
                        Caller::ServiceAccount {
                            namespace: ns.file_name().to_string_lossy().into_owned(),
                            name: sa.file_name().to_string_lossy().into_owned(),
                        },
                    );
                }
            }
        }
        tokens.remove("");
        Ok(BootstrapTokens { tokens })
    }

    /// Adds a token (tests and harnesses).
    pub fn insert(&mut self, token: impl Into<String>, caller: Caller) {
        self.tokens.insert(token.into(), caller);
    }
}

impl Authenticator for BootstrapTokens {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
        let caller = self.tokens.get(token).cloned().ok_or(AuthError::Invalid);
        Box::pin(async move { caller })
    }
}

/// Files mode's authenticator: the bootstrap token directory (see
/// [`BootstrapTokens`]), read again at every call, so a token written or
/// removed while the controller runs counts at once — a local harness
/// creates a waypoint's token when it starts the waypoint, long after the
/// controller. Calls are rare (a subscription, a certificate every few
/// hours per proxy) and the directory small. If the directory cannot be
/// read, the last set read is used.
#[derive(Debug)]
pub struct TokenDirectory {
    dir: std::path::PathBuf,
    last: parking_lot::RwLock<BootstrapTokens>,
}

impl TokenDirectory {
    /// Reads `dir` (it must be readable at start).
    pub fn open(dir: &Path) -> Result<TokenDirectory, AuthError> {
        Ok(TokenDirectory {
            dir: dir.to_path_buf(),
            last: parking_lot::RwLock::new(BootstrapTokens::load(dir)?),
        })
    }

    /// The tokens as the directory has them now.
    fn current(&self) -> BootstrapTokens {
        match BootstrapTokens::load(&self.dir) {
            Ok(tokens) => {
                *self.last.write() = tokens.clone();
                tokens
            }
            Err(e) => {
                tracing::warn!("bootstrap tokens: {e}; using the last set read");
                self.last.read().clone()
            }
        }
    }
}

impl Authenticator for TokenDirectory {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
        Box::pin(async move { self.current().authenticate(token).await })
    }
}

/// How long a token the API server accepted is taken without asking again.
/// Every proxy authenticates each config stream and each certificate
/// request; after a controller restart a thousand proxies do so at once, and
/// one TokenReview each would queue behind the API server's rate limits.
/// The cost: a token revoked (its pod deleted) is still honoured for at most
/// this long.
pub const REVIEW_CACHE_TTL: Duration = Duration::from_secs(10);

/// Tokens remembered at most (a few per proxy).
const REVIEW_CACHE_CAPACITY: u64 = 50_000;

/// Kubernetes: the caller's ServiceAccount token, checked with TokenReview.
/// Accepted tokens are remembered for [`REVIEW_CACHE_TTL`], keyed by their
/// SHA-256 (the cache holds no token); refusals are not remembered, so a
/// token fixed by its owner works at the next call.
pub struct TokenReviewer {
    client: Client,
    /// The ztunnel's ServiceAccount (`namespace`, `name`).
    ztunnel: (String, String),
    audiences: Vec<String>,
    accepted: moka::future::Cache<[u8; 32], Caller>,
}

impl TokenReviewer {
    /// `ztunnel` is the DaemonSet's ServiceAccount, e.g. `weft-system/ztunnel`.
    pub fn new(
        client: Client,
        ztunnel: (String, String),
        audiences: Vec<String>,
    ) -> Arc<TokenReviewer> {
        Self::with_cache_ttl(client, ztunnel, audiences, REVIEW_CACHE_TTL)
    }

    /// As [`TokenReviewer::new`], remembering accepted tokens for `ttl`
    /// (zero: ask the API server every time).
    pub fn with_cache_ttl(
        client: Client,
        ztunnel: (String, String),
        audiences: Vec<String>,
        ttl: Duration,
    ) -> Arc<TokenReviewer> {
        Arc::new(TokenReviewer {
            client,
            ztunnel,
            audiences,
            accepted: moka::future::Cache::builder()
                .max_capacity(REVIEW_CACHE_CAPACITY)
                .time_to_live(ttl)
                .build(),
        })
    }
}

/// The node a bound ServiceAccount token was issued for: the node of the pod
/// it is bound to (Kubernetes 1.30 and later), or the Node it is bound to.
const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// The pod a bound ServiceAccount token was issued for.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

impl Authenticator for TokenReviewer {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
        Box::pin(async move {
            if token.is_empty() {
                return Err(AuthError::Missing);
            }
            let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            if let Some(caller) = self.accepted.get(&key).await {
                return Ok(caller);
            }
            let caller = self.review(token).await?;
            self.accepted.insert(key, caller.clone()).await;
            Ok(caller)
        })
    }
}

impl TokenReviewer {
    /// One TokenReview, and what it says about the caller.
    async fn review(&self, token: &str) -> Result<Caller, AuthError> {
        {
            let api: Api<TokenReview> = Api::all(self.client.clone());
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: token.to_string(),
                    audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
                },
                ..TokenReview::default()
            };
            let result = api.create(&PostParams::default(), &review).await?;
            let status = result.status.unwrap_or_default();
            // An API server that ignores `spec.audiences` would accept a
            // token of any audience; it must say which of ours it checked.
            let for_us = self.audiences.is_empty()
                || status
                    .audiences
                    .as_ref()
                    .is_some_and(|a| a.iter().any(|a| self.audiences.contains(a)));
            if status.authenticated != Some(true) || !for_us {
                tracing::debug!(
                    error = status.error.as_deref().unwrap_or(""),
                    "token review refused a token"
                );
                return Err(if self.audiences.is_empty() {
                    AuthError::Invalid
                } else {
                    AuthError::Audience(self.audiences.join(","))
                });
            }
            let user = status.user.unwrap_or_default();
            let username = user.username.unwrap_or_default();
            let Some(rest) = username.strip_prefix("system:serviceaccount:") else {
                return Err(AuthError::NotAllowed(username));
            };
            let Some((namespace, name)) = rest.split_once(':') else {
                return Err(AuthError::NotAllowed(username));
            };
            if (namespace, name) == (self.ztunnel.0.as_str(), self.ztunnel.1.as_str()) {
                let extra = user.extra.unwrap_or_default();
                let first = |key: &str| {
                    extra
                        .get(key)
                        .and_then(|v| v.first())
                        .filter(|v| !v.is_empty())
                        .cloned()
                };
                let pod = first(POD_NAME_EXTRA).map(|pod| format!("{namespace}/{pod}"));
                let Some(node) = first(NODE_NAME_EXTRA) else {
                    tracing::warn!(
                        pod = pod.as_deref().unwrap_or(""),
                        "refused a ztunnel token bound to no node"
                    );
                    return Err(AuthError::UnboundZtunnel {
                        audiences: self.audiences.join(","),
                        pod,
                    });
                };
                tracing::debug!(
                    node,
                    pod = pod.as_deref().unwrap_or(""),
                    "ztunnel authenticated"
                );
                return Ok(Caller::Ztunnel { node });
            }
            Ok(Caller::ServiceAccount {
                namespace: namespace.to_string(),
                name: name.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unbound_ztunnel_token_is_refused_with_what_to_fix() {
        // No pod: the token itself is the wrong kind.
        let legacy = AuthError::UnboundZtunnel {
            audiences: CONTROLLER_AUDIENCE.into(),
            pod: None,
        }
        .to_string();
        assert!(
            legacy.contains("pod-bound ServiceAccount token")
                && legacy.contains("audience weft.dev/controller")
                && legacy.contains("--bound-object-kind Pod"),
            "{legacy}"
        );
        let default_audience = AuthError::UnboundZtunnel {
            audiences: String::new(),
            pod: None,
        }
        .to_string();
        assert!(
            default_audience.contains("with the API server's default audience"),
            "{default_audience}"
        );
        // Bound to a pod, but the API server is too old to say its node.
        let old_server = AuthError::UnboundZtunnel {
            audiences: CONTROLLER_AUDIENCE.into(),
            pod: Some("weft-system/ztunnel-x7k2p".into()),
        }
        .to_string();
        assert!(
            old_server.contains("bound to pod weft-system/ztunnel-x7k2p")
                && old_server.contains("Kubernetes 1.30"),
            "{old_server}"
        );
    }

    #[tokio::test]
    async fn a_token_written_or_removed_while_running_counts_at_once() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir_all(dir.path().join("nodes")).expect("nodes");
        std::fs::write(dir.path().join("nodes/node-1"), "node-token\n").expect("node token");
        let auth = TokenDirectory::open(dir.path()).expect("open");
        assert_eq!(
            auth.authenticate("node-token").await.expect("node"),
            Caller::Ztunnel {
                node: "node-1".into()
            }
        );
        assert!(auth.authenticate("wp-token").await.is_err());

        // A waypoint started after the controller gets its token then.
        let wp = dir.path().join("waypoints/shop");
        std::fs::create_dir_all(&wp).expect("waypoint dir");
        std::fs::write(wp.join("shop-waypoint"), "wp-token").expect("wp token");
        assert_eq!(
            auth.authenticate("wp-token").await.expect("waypoint"),
            Caller::ServiceAccount {
                namespace: "shop".into(),
                name: "shop-waypoint".into()
            }
        );

        // Stopped: its token no longer works.
        std::fs::remove_file(wp.join("shop-waypoint")).expect("remove");
        assert!(matches!(
            auth.authenticate("wp-token").await,
            Err(AuthError::Invalid)
        ));
        assert!(auth.authenticate("node-token").await.is_ok());
    }
}
