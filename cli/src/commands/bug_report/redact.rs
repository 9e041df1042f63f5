//! What `weftctl bug-report` removes from every file before it goes into
//! the archive: private keys, tokens and other secrets, replaced by
//! [`REDACTED`]. Certificates are public and stay.
//!
//! Text (logs, and every string inside a JSON document):
//!
//! - PEM private key blocks of any kind (`-----BEGIN [WORDS ]PRIVATE
//!   KEY-----` to the matching `END` line; a block cut off before its `END`,
//!   from `BEGIN` to the end of its base64);
//! - JWT-shaped strings: three base64url segments, the first starting `eyJ`
//!   (`{"` encoded);
//! - the value of an `Authorization` header (its scheme is kept) and any
//!   `Bearer <credential>` (of 8 characters or more);
//! - `NAME=VALUE`, `"NAME": VALUE` and `NAME: "VALUE"` (and `NAME: VALUE`
//!   at the start of a line, as YAML writes it) where NAME looks like a
//!   secret ([`is_secret_name`]);
//! - exact values the caller knows are secret ([`Redactor::with_literal`]).
//!
//! JSON documents are walked: the value of a field whose name looks like a
//! secret is replaced whole (objects and arrays included), as is the
//! `value` of a `{"name": SECRET-LOOKING, "value": …}` pair (environment
//! variables, header lists); empty values, `null` and booleans stay, so a
//! report still shows whether a secret was set.

use std::sync::LazyLock;

use regex::{Captures, Regex};
use serde_json::Value;

/// What a secret is replaced with.
pub const REDACTED: &str = "<redacted>";

/// A known secret shorter than this is not looked for: it would match
/// ordinary text, and no credential is that short.
pub const MIN_LITERAL: usize = 8;

/// Words that make a name secret on their own.
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "secrets",
    "token",
    "tokens",
    "credential",
    "credentials",
    "apikey",
    "authorization",
    "cookie",
    "privatekey",
];

/// Before `key`, these make it key material (`privateKey`, `tls.key`,
/// `caKey`); `publicKey` and a bare `key` (label selectors) stay.
const KEY_OWNERS: &[&str] = &[
    "private",
    "signing",
    "client",
    "server",
    "serving",
    "tls",
    "ssh",
    "secret",
    "api",
    "encryption",
    "session",
    "root",
    "ca",
];

/// After `key`, these make it key material (`keyPem`, `root-key.pem`).
const KEY_FORMS: &[&str] = &["pem", "der", "data", "material", "bytes"];

/// A last word that says the field is about a secret, not the secret:
/// `tokenFile`, `secretName`, `keyId`, `privateKeyPath`, `tokenTtl`.
const HARMLESS_LAST: &[&str] = &[
    "id",
    "ids",
    "file",
    "files",
    "path",
    "paths",
    "dir",
    "name",
    "names",
    "ref",
    "refs",
    "type",
    "kind",
    "count",
    "ttl",
    "expiry",
    "expires",
    "expiration",
    "issuer",
    "audience",
    "usage",
    "usages",
    "algorithm",
    "length",
    "size",
    "source",
    "present",
    "mode",
];

/// Splits a field name into lower-case words: camelCase, snake_case,
/// kebab-case, dotted and SCREAMING_CASE alike.
fn words(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if !c.is_ascii_alphanumeric() {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            prev_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && prev_lower && !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        word.push(c.to_ascii_lowercase());
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// Whether a field (JSON key, `NAME=` in a log, header) holds a secret.
///
/// Secret: a word of `SECRET_WORDS` (`token`, `bootstrapToken`,
/// `client_secret`, `PASSWORD`, `Authorization`), or `key` next to a word
/// that makes it key material (`privateKey`, `private_key`, `keyPem`,
/// `tls.key`, `caKey`, `root-key.pem`). Not secret: anything whose last
/// word names a property of the secret rather than the secret (`keyId`,
/// `tokenFile`, `secretName`, `privateKeyPath`), `publicKey`, and a bare
/// `key` (the key of a label selector).
pub fn is_secret_name(name: &str) -> bool {
    let words = words(name);
    let Some(last) = words.last() else {
        return false;
    };
    if HARMLESS_LAST.contains(&last.as_str()) {
        return false;
    }
    if words.iter().any(|w| SECRET_WORDS.contains(&w.as_str())) {
        return true;
    }
    words.iter().enumerate().any(|(i, w)| {
        (w == "key" || w == "keys")
            && ((i > 0 && KEY_OWNERS.contains(&words[i - 1].as_str()))
                || words
                    .get(i + 1)
                    .is_some_and(|next| KEY_FORMS.contains(&next.as_str())))
    })
}

static PEM_KEY: LazyLock<Regex> = LazyLock::new(|| {
    compile(
        r"(?s)-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----.*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----",
    )
});

/// A `BEGIN` whose `END` never came (a truncated log line): up to where
/// the base64, its headers and line breaks (also escaped ones) stop.
static PEM_KEY_CUT: LazyLock<Regex> = LazyLock::new(|| {
    compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----(?:[A-Za-z0-9+/=:,\- \t\r\n]|\\[nrt])*")
});

static JWT: LazyLock<Regex> =
    LazyLock::new(|| compile(r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*"));

static AUTHORIZATION: LazyLock<Regex> = LazyLock::new(|| {
    compile(
        r#"(?i)(\bauthorization["']?\s*[:=]\s*["']?)((?:bearer|basic|token|negotiate|digest)\s+)?[^\s"',;&)]+"#,
    )
});

/// `Bearer` and a credential: 8 characters or more, so that prose
/// (`bearer token`, `Bearer values`) stays.
static BEARER: LazyLock<Regex> =
    LazyLock::new(|| compile(r"(?i)(\bbearer)\s+[A-Za-z0-9\-._~+/]{8,}=*"));

/// `NAME<sep>VALUE`: the name optionally quoted, the value a quoted string
/// or a run up to a delimiter. Whether NAME is secret is decided in code.
static FIELD: LazyLock<Regex> = LazyLock::new(|| {
    compile(
        r#"("?)([A-Za-z][A-Za-z0-9_.\-]*)("?)(\s*[=:]\s*)("(?:[^"\\]|\\.)*"|'[^']*'|[^\s,;}\]&)"']+)"#,
    )
});

fn compile(pattern: &str) -> Regex {
    // The patterns are constants, checked by the tests.
    Regex::new(pattern).unwrap_or_else(|e| panic!("redaction pattern {pattern}: {e}"))
}

/// Redacts text and JSON documents.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    literals: Vec<String>,
}

impl Redactor {
    /// Patterns only.
    pub fn new() -> Redactor {
        Redactor::default()
    }

    /// Also removes every occurrence of `secret` (ignored when shorter than
    /// [`MIN_LITERAL`]).
    pub fn with_literal(mut self, secret: &str) -> Redactor {
        let secret = secret.trim();
        if secret.len() >= MIN_LITERAL && !self.literals.iter().any(|l| l == secret) {
            self.literals.push(secret.to_string());
            // Longest first: a secret that contains another goes whole.
            self.literals.sort_by_key(|l| std::cmp::Reverse(l.len()));
        }
        self
    }

    /// How many exact values it looks for.
    pub fn literal_count(&self) -> usize {
        self.literals.len()
    }

    /// A file of the archive: a `.json` file that parses is walked as JSON
    /// (and written back pretty), anything else is text. Bytes that are not
    /// UTF-8 are read lossily, so that no pattern can hide behind them.
    pub fn file(&self, path: &str, bytes: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(bytes);
        if path.ends_with(".json")
            && let Ok(mut doc) = serde_json::from_str::<Value>(&text)
        {
            self.json(&mut doc);
            if let Ok(mut out) = serde_json::to_string_pretty(&doc) {
                out.push('\n');
                // Keys are not walked: a secret used as a key goes here.
                return self.scrub_literals(&out).into_bytes();
            }
        }
        self.text(&text).into_bytes()
    }

    /// Redacts text.
    pub fn text(&self, text: &str) -> String {
        let s = PEM_KEY.replace_all(text, REDACTED);
        let s = PEM_KEY_CUT.replace_all(&s, REDACTED);
        let s = JWT.replace_all(&s, REDACTED);
        let s = AUTHORIZATION.replace_all(&s, |c: &Captures| {
            format!("{}{}{REDACTED}", &c[1], c.get(2).map_or("", |m| m.as_str()))
        });
        let s = BEARER.replace_all(&s, |c: &Captures| format!("{} {REDACTED}", &c[1]));
        let s = FIELD.replace_all(&s, |c: &Captures| field(&s, c));
        self.scrub_literals(&s)
    }

    fn scrub_literals(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.literals {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
        out
    }

    /// Redacts a JSON document in place.
    pub fn json(&self, doc: &mut Value) {
        match doc {
            Value::String(s) => {
                let redacted = self.text(s);
                if redacted != *s {
                    *s = redacted;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.json(v)),
            Value::Object(fields) => {
                // `{"name": "TOKEN", "value": "…"}`: the value is the secret.
                let named_secret = fields
                    .get("name")
                    .and_then(Value::as_str)
                    .is_some_and(is_secret_name);
                for (name, value) in fields.iter_mut() {
                    let secret = is_secret_name(name) || (named_secret && name == "value");
                    if secret && holds_something(value) {
                        *value = Value::String(REDACTED.into());
                    } else {
                        self.json(value);
                    }
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
}

/// Whether a secret-named value could carry a secret: not `null`, a
/// boolean, an empty string or an empty collection.
fn holds_something(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(_) => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Number(_) => true,
    }
}

/// One `NAME<sep>VALUE` match of [`FIELD`]: redacted when the name looks
/// like a secret and the shape is an assignment, not prose (`no token:
/// the CA refused` stays).
fn field(text: &str, c: &Captures) -> String {
    let whole = &c[0];
    let name = &c[2];
    let value = &c[5];
    // `Authorization` has its own rule, which keeps the scheme.
    if !is_secret_name(name) || words(name).iter().any(|w| w == "authorization") {
        return whole.to_string();
    }
    let quoted_name = !c[1].is_empty() && !c[3].is_empty();
    let quoted_value = value.starts_with('"') || value.starts_with('\'');
    let colon = c[4].contains(':');
    let starts_line = c.get(0).is_some_and(|m| {
        text[..m.start()]
            .rsplit('\n')
            .next()
            .is_some_and(|before| before.trim_start_matches([' ', '\t', '-']).is_empty())
    });
    if colon && !quoted_name && !quoted_value && !starts_line {
        return whole.to_string();
    }
    let redacted = match value.chars().next() {
        Some(q @ ('"' | '\'')) => format!("{q}{REDACTED}{q}"),
        _ => REDACTED.to_string(),
    };
    format!("{}{name}{}{}{redacted}", &c[1], &c[3], &c[4])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY_BODY: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgVpYt0x3F4q1yQ2ZQ\nhRk3m0Jc9oLq8sPjvW1oVZ2r5wWhRANCAAQy0vZsb8o8YhQYyS1b3mJt3V0Lq8wb";

    fn pem(kind: &str, body: &str) -> String {
        format!("-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----\n")
    }

    #[test]
    fn names() {
        let secret = [
            "token",
            "bootstrapToken",
            "access_token",
            "BOOTSTRAP_TOKEN",
            "password",
            "dbPassword",
            "client_secret",
            "secret",
            "privateKey",
            "private_key",
            "PRIVATE-KEY",
            "keyPem",
            "key_pem",
            "tls.key",
            "caKey",
            "root-key.pem",
            "signingKey",
            "apiKey",
            "api_key",
            "Authorization",
            "cookie",
            "credentials",
        ];
        for name in secret {
            assert!(is_secret_name(name), "{name} should be secret");
        }
        let harmless = [
            "key",
            "keyId",
            "key_id",
            "publicKey",
            "keyUsage",
            "tokenFile",
            "bootstrap-tokens-dir",
            "secretName",
            "privateKeyPath",
            "tokenTtl",
            "identity",
            "chainPem",
            "serial",
            "monkey",
            "keyboard",
            "",
        ];
        for name in harmless {
            assert!(!is_secret_name(name), "{name} should not be secret");
        }
    }

    #[test]
    fn text_cases() {
        let r = Redactor::new();
        let cert = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n";
        let table: &[(String, String)] = &[
            (pem("", KEY_BODY), format!("{REDACTED}\n")),
            (pem("EC ", KEY_BODY), format!("{REDACTED}\n")),
            (pem("RSA ", KEY_BODY), format!("{REDACTED}\n")),
            (pem("ENCRYPTED ", KEY_BODY), format!("{REDACTED}\n")),
            (pem("OPENSSH ", KEY_BODY), format!("{REDACTED}\n")),
            // A certificate is public.
            (cert.into(), cert.into()),
            // A key between two certificates: only the key goes.
            (
                format!("{cert}{}{cert}", pem("", KEY_BODY)),
                format!("{cert}{REDACTED}\n{cert}"),
            ),
            // Cut off before its END.
            (
                "key: -----BEGIN PRIVATE KEY-----\\nMIGHAgEAMBMG\\nhRk3m0J\" rest".into(),
                format!("key: {REDACTED}\" rest"),
            ),
            (
                "got eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl from it".into(),
                format!("got {REDACTED} from it"),
            ),
            (
                "Authorization: Bearer abc.def-ghi".into(),
                format!("Authorization: Bearer {REDACTED}"),
            ),
            (
                "authorization=Basic dXNlcjpwYXNz".into(),
                format!("authorization=Basic {REDACTED}"),
            ),
            (
                "sent with bearer s3cr3t-value".into(),
                format!("sent with bearer {REDACTED}"),
            ),
            (
                "INFO weft: joined token=0123456789abcdef node=node-1".into(),
                format!("INFO weft: joined token={REDACTED} node=node-1"),
            ),
            (
                r#"{"level":"INFO","bootstrapToken":"abcdefgh12345678","keyId":"k1"}"#.into(),
                format!(r#"{{"level":"INFO","bootstrapToken":"{REDACTED}","keyId":"k1"}}"#),
            ),
            (
                r#"Config { password: "hunter22", user: "u" }"#.into(),
                format!(r#"Config {{ password: "{REDACTED}", user: "u" }}"#),
            ),
            ("  token: abcdef\n".into(), format!("  token: {REDACTED}\n")),
            (
                "GET /join?token=abcdef12&node=n1".into(),
                format!("GET /join?token={REDACTED}&node=n1"),
            ),
            ("missing bearer token".into(), "missing bearer token".into()),
            // Prose that mentions a secret is not an assignment.
            (
                "no token: the CA refused".into(),
                "no token: the CA refused".into(),
            ),
            ("keyId=k1 key=app".into(), "keyId=k1 key=app".into()),
        ];
        for (input, want) in table {
            assert_eq!(&r.text(input), want, "input: {input}");
            // Idempotent: redacting twice changes nothing more.
            assert_eq!(&r.text(want), want, "again: {want}");
        }
    }

    #[test]
    fn json_fields() {
        let r = Redactor::new();
        let mut doc = serde_json::json!({
            "node": "node-1",
            "keyId": "k1",
            "certificates": [{"identity": "spiffe://td/ns/a/sa/b", "chainPem": ["-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"]}],
            "privateKey": {"pem": "x", "der": [1, 2]},
            "key_pem": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "token": "",
            "secret": null,
            "tokenPresent": true,
            "tokenFile": "/var/run/secrets/token",
            "selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["x"]}]},
            "env": [{"name": "BOOTSTRAP_TOKEN", "value": "abcdefgh"}, {"name": "LOG", "value": "info"}],
            "note": "Authorization: Bearer abcdef",
        });
        r.json(&mut doc);
        assert_eq!(doc["node"], "node-1");
        assert_eq!(doc["keyId"], "k1");
        assert!(
            doc["certificates"][0]["chainPem"][0]
                .as_str()
                .is_some_and(|c| c.contains("MIIB"))
        );
        assert_eq!(doc["privateKey"], REDACTED);
        assert_eq!(doc["key_pem"], REDACTED);
        assert_eq!(doc["token"], "");
        assert_eq!(doc["secret"], Value::Null);
        assert_eq!(doc["tokenPresent"], true);
        assert_eq!(doc["tokenFile"], "/var/run/secrets/token");
        assert_eq!(doc["selector"]["matchExpressions"][0]["key"], "app");
        assert_eq!(doc["env"][0]["value"], REDACTED);
        assert_eq!(doc["env"][1]["value"], "info");
        assert_eq!(doc["note"], format!("Authorization: Bearer {REDACTED}"));
    }

    #[test]
    fn files_and_literals() {
        let r = Redactor::new()
            .with_literal("0123456789abcdef0123456789abcdef\n")
            .with_literal("short");
        assert_eq!(r.literal_count(), 1);
        let log = b"joining with 0123456789abcdef0123456789abcdef as node-1\n";
        assert_eq!(
            r.file("logs/ztunnel.log", log),
            format!("joining with {REDACTED} as node-1\n").into_bytes()
        );
        // A secret used as a JSON key is caught too.
        let doc = br#"{"0123456789abcdef0123456789abcdef": 1, "a": "short"}"#;
        let out = String::from_utf8(r.file("x.json", doc)).expect("utf-8");
        assert!(!out.contains("0123456789abcdef"), "{out}");
        assert!(out.contains("short"), "{out}");
        // Not JSON after all: treated as text.
        let out = r.file("x.json", b"token=abcdefgh {");
        assert_eq!(out, format!("token={REDACTED} {{").into_bytes());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A private key of any kind, in any text, with any line breaks
        /// (also JSON-escaped), never survives; the text around it does.
        #[test]
        fn private_keys_never_survive(
            before in "[ -~]{0,40}",
            after in "[ -~]{0,40}",
            kind in prop::sample::select(vec!["", "EC ", "RSA ", "ENCRYPTED ", "DSA ", "OPENSSH "]),
            lines in prop::collection::vec("[A-Za-z0-9+/]{16,64}", 1..6),
            newline in prop::sample::select(vec!["\n", "\r\n", "\\n"]),
            terminated in any::<bool>(),
        ) {
            let body = lines.join(newline);
            let mut block = format!("-----BEGIN {kind}PRIVATE KEY-----{newline}{body}{newline}");
            if terminated {
                block.push_str(&format!("-----END {kind}PRIVATE KEY-----"));
            }
            let text = format!("{before} {block} {after}");
            let out = Redactor::new().text(&text);
            for line in &lines {
                prop_assert!(!out.contains(line.as_str()), "{} in {}", line, out);
            }
            prop_assert!(out.contains(REDACTED));
            prop_assert_eq!(Redactor::new().text(&out), out.clone());
        }

        /// JWTs anywhere in text or JSON strings are removed.
        #[test]
        fn jwts_never_survive(
            header in "[A-Za-z0-9_-]{4,40}",
            payload in "[A-Za-z0-9_-]{4,80}",
            signature in "[A-Za-z0-9_-]{0,80}",
            before in "[ -~]{0,30}",
        ) {
            let jwt = format!("eyJ{header}.eyJ{payload}.{signature}");
            let text = format!("{before} {jwt}");
            let claims = format!("eyJ{payload}");
            let out = Redactor::new().text(&text);
            prop_assert!(!out.contains(&claims), "{}", out);
            let mut doc = serde_json::json!({"items": [{"note": text}]});
            Redactor::new().json(&mut doc);
            let doc = doc.to_string();
            prop_assert!(!doc.contains(&claims), "{}", doc);
        }

        /// Whatever a secret-named field holds, at any depth, it is gone;
        /// harmless siblings are kept as they were.
        #[test]
        fn secret_fields_never_survive(
            name in prop::sample::select(vec!["token", "privateKey", "password", "client_secret", "keyPem", "tls.key"]),
            // Upper case and a digit first: nothing else in the document
            // (lower-case names and values) can contain it by chance.
            secret in "[A-Z][0-9][A-Za-z0-9]{6,38}",
            depth in 0usize..4,
            harmless in "[a-z]{1,12}",
        ) {
            let mut doc = serde_json::json!({name: secret, "keyId": harmless});
            for _ in 0..depth {
                doc = serde_json::json!({"nested": [doc]});
            }
            let text = doc.to_string();
            let out = String::from_utf8(Redactor::new().file("d.json", text.as_bytes())).expect("utf-8");
            let kept = format!("\"keyId\": \"{harmless}\"");
            prop_assert!(!out.contains(secret.as_str()), "{}", out);
            prop_assert!(out.contains(&kept), "{}", out);
            // The same document as a log line (JSON logs).
            let line = Redactor::new().text(&text);
            prop_assert!(!line.contains(secret.as_str()), "{}", line);
        }
    }
}
