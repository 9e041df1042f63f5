//! SPIFFE identities of Kubernetes workloads:
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! The URI SAN of a peer's certificate is the only source of identity in weft,
//! so parsing is strict: anything that is not exactly this shape is refused
//! with an error that says what is wrong.

use std::fmt;
use std::str::FromStr;

/// The trust domain used when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

const SCHEME: &str = "spiffe://";
/// The SPIFFE spec caps an ID at 2048 bytes.
const MAX_LEN: usize = 2048;
/// Kubernetes caps namespace and service account names at 253 characters.
const MAX_NAME_LEN: usize = 253;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("SPIFFE ID is empty")]
    Empty,
    #[error("SPIFFE ID is longer than {MAX_LEN} bytes")]
    TooLong,
    #[error("SPIFFE ID must start with \"spiffe://\": {0:?}")]
    Scheme(String),
    #[error("SPIFFE ID has an empty trust domain")]
    EmptyTrustDomain,
    #[error("trust domain {domain:?} has an invalid character {ch:?} (allowed: a-z 0-9 . - _)")]
    TrustDomainChar { domain: String, ch: char },
    #[error("SPIFFE ID must not carry a port, query, fragment or user info: {0:?}")]
    UriParts(String),
    #[error("SPIFFE ID path must be /ns/<namespace>/sa/<service-account>, got {0:?}")]
    Path(String),
    #[error(
        "{what} {name:?} is not a valid Kubernetes name (lowercase a-z 0-9 . -, at most {MAX_NAME_LEN})"
    )]
    Name { what: &'static str, name: String },
}

/// A workload identity. Ordering and hashing follow the textual form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl SpiffeId {
    /// Builds an identity from its parts, validating each.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        validate_trust_domain(trust_domain)?;
        validate_name("namespace", namespace)?;
        validate_name("service account", service_account)?;
        let id = SpiffeId {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        };
        if id.to_string().len() > MAX_LEN {
            return Err(IdentityError::TooLong);
        }
        Ok(id)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(IdentityError::Empty);
        }
        if s.len() > MAX_LEN {
            return Err(IdentityError::TooLong);
        }
        // The scheme is case-insensitive in URIs, but SPIFFE requires lowercase.
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| IdentityError::Scheme(s.to_owned()))?;
        let (domain, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if domain.contains(['@', ':']) || s.contains(['?', '#']) {
            return Err(IdentityError::UriParts(s.to_owned()));
        }
        validate_trust_domain(domain)?;
        let mut segments = path.split('/');
        // `path` starts with '/', so the first segment is always empty.
        segments.next();
        match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => SpiffeId::new(domain, ns, sa),
            _ => Err(IdentityError::Path(path.to_owned())),
        }
    }
}

impl TryFrom<&str> for SpiffeId {
    type Error = IdentityError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

fn validate_trust_domain(domain: &str) -> Result<(), IdentityError> {
    if domain.is_empty() {
        return Err(IdentityError::EmptyTrustDomain);
    }
    match domain
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        Some(ch) => Err(IdentityError::TrustDomainChar {
            domain: domain.to_owned(),
            ch,
        }),
        None => Ok(()),
    }
}

/// Namespaces and service accounts are DNS-1123 subdomains in Kubernetes.
fn validate_name(what: &'static str, name: &str) -> Result<(), IdentityError> {
    let bad = || IdentityError::Name {
        what,
        name: name.to_owned(),
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(bad());
    }
    let ok_chars = name
        .chars()
        .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '-'));
    let alnum_edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok_chars || !alnum_edge(name.chars().next()) || !alnum_edge(name.chars().last()) {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_formats() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/web".parse().unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "web");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/web");
    }

    #[test]
    fn refuses_malformed_ids_with_a_reason() {
        let cases = [
            ("", IdentityError::Empty),
            (
                "http://cluster.local/ns/a/sa/b",
                IdentityError::Scheme("http://cluster.local/ns/a/sa/b".into()),
            ),
            ("spiffe:///ns/a/sa/b", IdentityError::EmptyTrustDomain),
            (
                "spiffe://Cluster.local/ns/a/sa/b",
                IdentityError::TrustDomainChar {
                    domain: "Cluster.local".into(),
                    ch: 'C',
                },
            ),
            (
                "spiffe://td:8080/ns/a/sa/b",
                IdentityError::UriParts("spiffe://td:8080/ns/a/sa/b".into()),
            ),
            (
                "spiffe://td/ns/a/sa/b?x=1",
                IdentityError::UriParts("spiffe://td/ns/a/sa/b?x=1".into()),
            ),
            ("spiffe://td/ns/a", IdentityError::Path("/ns/a".into())),
            (
                "spiffe://td/ns/a/sa/b/extra",
                IdentityError::Path("/ns/a/sa/b/extra".into()),
            ),
            (
                "spiffe://td/sa/b/ns/a",
                IdentityError::Path("/sa/b/ns/a".into()),
            ),
            (
                "spiffe://td/ns/A/sa/b",
                IdentityError::Name {
                    what: "namespace",
                    name: "A".into(),
                },
            ),
            (
                "spiffe://td/ns/a/sa/",
                IdentityError::Name {
                    what: "service account",
                    name: "".into(),
                },
            ),
            (
                "spiffe://td/ns/-a/sa/b",
                IdentityError::Name {
                    what: "namespace",
                    name: "-a".into(),
                },
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(input.parse::<SpiffeId>(), Err(expected), "input {input:?}");
        }
    }

    #[test]
    fn error_messages_name_the_problem() {
        let err = "spiffe://td/ns/a".parse::<SpiffeId>().unwrap_err();
        assert!(
            err.to_string()
                .contains("/ns/<namespace>/sa/<service-account>")
        );
    }

    fn k8s_name() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9.-]{0,30}[a-z0-9])?"
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,300}") {
            let _ = s.parse::<SpiffeId>();
        }

        #[test]
        fn never_panics_on_near_misses(s in "spiffe://[a-zA-Z0-9.:@/_-]{0,40}/ns/[a-z/.-]{0,10}/sa/[a-zA-Z./-]{0,10}") {
            let _ = s.parse::<SpiffeId>();
        }

        #[test]
        fn round_trips(td in "[a-z0-9._-]{1,30}", ns in k8s_name(), sa in k8s_name()) {
            let id = SpiffeId::new(&td, &ns, &sa).unwrap();
            let parsed: SpiffeId = id.to_string().parse().unwrap();
            prop_assert_eq!(parsed, id);
        }
    }
}
