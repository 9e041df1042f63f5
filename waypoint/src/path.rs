//! Request path normalization.
//!
//! Policy, routing and the application must agree on which path a request
//! is for, or a DENY on `/admin` is bypassed by `/./admin`, `//admin` or
//! `/%61dmin`. The waypoint normalizes every path once, authorizes and
//! routes on the result, and forwards the *normalized* path, so the
//! application sees what policy saw:
//!
//! - percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
//!   decoded, others are kept with upper-case hex (`%2F` stays encoded: it
//!   is data, not a separator);
//! - runs of `/` are merged;
//! - `.` and `..` segments are resolved (RFC 3986 §5.2.4), never above `/`.
//!
//! A path that is not origin-form (`/...`), or holds a broken escape or a
//! control byte, is refused (400). `*` (for `OPTIONS *`) is kept as is.

use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with '/'")]
    NotOriginForm,
    #[error("broken percent-escape in the path")]
    BadEscape,
    #[error("control character in the path")]
    Control,
}

/// The normalized form of `path` (without its query).
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    let bytes = path.as_bytes();
    if bytes.iter().any(|b| b.is_ascii_control()) {
        return Err(PathError::Control);
    }
    if !needs_work(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(bytes)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// Fast path: most paths have nothing to normalize.
fn needs_work(bytes: &[u8]) -> bool {
    bytes.contains(&b'%')
        || bytes.windows(2).any(|w| w == b"//")
        || bytes
            .split(|b| *b == b'/')
            .any(|segment| segment == b"." || segment == b"..")
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn decode_unreserved(bytes: &[u8]) -> Result<String, PathError> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            // Input is a &str, and we only skip over whole escapes, so each
            // non-escape byte run is valid UTF-8; push byte-wise as ASCII or
            // copy the multi-byte char whole.
            let ch_len = utf8_len(b);
            let end = (i + ch_len).min(bytes.len());
            out.push_str(std::str::from_utf8(&bytes[i..end]).map_err(|_| PathError::BadEscape)?);
            i = end;
            continue;
        }
        let (Some(h), Some(l)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::BadEscape);
        };
        let value = h * 16 + l;
        if is_unreserved(value) {
            out.push(char::from(value));
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(h)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(l)]));
        }
        i += 3;
    }
    Ok(out)
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// Merges slashes and resolves dot segments; the result starts with `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let trailing_slash = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normal_forms() {
        for (input, want) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("//admin", "/admin"),
            ("/./admin", "/admin"),
            ("/x/../admin", "/admin"),
            ("/../../admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%2Fb/..", "/"),
            ("/a/.", "/a/"),
            ("/a/b/..", "/a/"),
            ("/caf\u{e9}/%7E", "/caf\u{e9}/~"),
            ("*", "*"),
        ] {
            assert_eq!(normalize(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(normalize("admin"), Err(PathError::NotOriginForm));
        assert_eq!(normalize("/a%2"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a\x00"), Err(PathError::Control));
    }

    #[test]
    fn clean_paths_are_not_copied() {
        assert!(matches!(normalize("/api/v1/items"), Ok(Cow::Borrowed(_))));
    }

    proptest! {
        #[test]
        fn never_panics_and_is_idempotent(s in "/[a-z./%0-9A-F\u{e9}]{0,40}") {
            if let Ok(once) = normalize(&s) {
                let twice = normalize(&once).expect("a normal form normalizes");
                prop_assert_eq!(once.as_ref(), twice.as_ref());
                prop_assert!(once.starts_with('/'));
                prop_assert!(!once.contains("//"));
            }
        }

        #[test]
        fn any_text_never_panics(s in ".{0,40}") {
            let _ = normalize(&s);
        }
    }
}
