//! The parts of a CONNECT request HBONE gives meaning to: the `:authority`
//! (always `IP:port`, never a hostname) and the `forwarded` header's `for=`.

use std::net::{IpAddr, SocketAddr};

/// Why an authority was refused; the server answers 400 with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("missing :authority")]
    Missing,
    #[error("authority {0:?} is not <ip>:<port> (IPv6 in brackets)")]
    NotSocketAddr(String),
    #[error("authority {0:?} has port 0")]
    PortZero(String),
}

/// Parses a CONNECT `:authority`: `10.0.0.1:8080` or `[fd00::1]:8080`.
pub fn parse_authority(authority: &str) -> Result<SocketAddr, AuthorityError> {
    if authority.is_empty() {
        return Err(AuthorityError::Missing);
    }
    let addr: SocketAddr = authority
        .parse()
        .map_err(|_| AuthorityError::NotSocketAddr(authority.to_owned()))?;
    // `SocketAddr` accepts a scoped IPv6 address; a zone means nothing to a
    // remote node and could be used to smuggle an interface choice.
    if let SocketAddr::V6(v6) = addr
        && v6.scope_id() != 0
    {
        return Err(AuthorityError::NotSocketAddr(authority.to_owned()));
    }
    if addr.port() == 0 {
        return Err(AuthorityError::PortZero(authority.to_owned()));
    }
    Ok(addr)
}

/// The `forwarded` value for an original client IP (RFC 7239: IPv6 quoted
/// and bracketed).
pub fn forwarded_for(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("for={v4}"),
        IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
    }
}

/// The first `for=` address of a `forwarded` header, if it is an IP address,
/// with or without a port (`for=10.0.0.1`, `for="10.0.0.1:41234"` as
/// Istio's ztunnel sends it, `for="[fd00::1]:41234"`); obfuscated
/// identifiers and `unknown` are ignored.
pub fn parse_forwarded_for(value: &str) -> Option<IpAddr> {
    value
        .split([',', ';'])
        .filter_map(|pair| {
            let (key, val) = pair.trim().split_once('=')?;
            key.trim().eq_ignore_ascii_case("for").then_some(val.trim())
        })
        .find_map(|val| {
            let val = val.trim_matches('"');
            let val = val
                .strip_prefix('[')
                .and_then(|v| v.split_once(']').map(|(ip, _)| ip))
                .unwrap_or(val);
            val.parse::<IpAddr>()
                .ok()
                .or_else(|| val.parse::<SocketAddr>().ok().map(|a| a.ip()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn authority_forms() {
        assert_eq!(
            parse_authority("10.0.0.1:80"),
            Ok("10.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            parse_authority("[fd00::1]:443"),
            Ok("[fd00::1]:443".parse().unwrap())
        );
        assert_eq!(parse_authority(""), Err(AuthorityError::Missing));
        for bad in [
            "example.com:80",
            "10.0.0.1",
            "10.0.0.1:",
            "10.0.0.1:99999",
            "fd00::1:80",
            "[fe80::1%2]:80",
        ] {
            assert!(
                matches!(parse_authority(bad), Err(AuthorityError::NotSocketAddr(_))),
                "{bad}"
            );
        }
        assert_eq!(
            parse_authority("10.0.0.1:0"),
            Err(AuthorityError::PortZero("10.0.0.1:0".into()))
        );
    }

    #[test]
    fn forwarded_round_trips() {
        for ip in ["10.1.2.3", "fd00::7"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(parse_forwarded_for(&forwarded_for(ip)), Some(ip));
        }
        assert_eq!(
            parse_forwarded_for("proto=https;For=192.0.2.60, for=198.51.100.17"),
            Some("192.0.2.60".parse().unwrap())
        );
        assert_eq!(parse_forwarded_for("for=unknown"), None);
        // Istio's form: quoted, with the client's port.
        assert_eq!(
            parse_forwarded_for("for=\"10.244.1.7:41234\""),
            Some("10.244.1.7".parse().unwrap())
        );
        assert_eq!(
            parse_forwarded_for("for=\"[fd00::7]:41234\""),
            Some("fd00::7".parse().unwrap())
        );
        assert_eq!(
            parse_forwarded_for("for=_hidden, for=10.0.0.9"),
            Some("10.0.0.9".parse().unwrap())
        );
    }

    proptest! {
        #[test]
        fn authority_never_panics(s in ".{0,64}") {
            let _ = parse_authority(&s);
        }

        #[test]
        fn authority_round_trips(addr in any::<SocketAddr>()) {
            let addr = match addr {
                SocketAddr::V6(mut v6) => { v6.set_scope_id(0); v6.set_flowinfo(0); SocketAddr::V6(v6) }
                v4 => v4,
            };
            prop_assume!(addr.port() != 0);
            prop_assert_eq!(parse_authority(&addr.to_string()), Ok(addr));
        }

        #[test]
        fn forwarded_never_panics(s in ".{0,64}") {
            let _ = parse_forwarded_for(&s);
        }
    }
}
