//! The CNI spec 1.0 surface a chained plugin needs: the `CNI_*` environment,
//! the network configuration on stdin (with `prevResult`), and the error
//! object printed on failure. Nothing here talks to the agent.
//!
//! Everything read here comes from a container runtime and is treated as
//! untrusted: parsing never panics, and every failure is a [`CniError`] with
//! the spec's code and a message that names what was wrong.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The spec version this plugin speaks natively.
pub const CNI_VERSION: &str = "1.0.0";

/// Versions whose configuration and `prevResult` this plugin accepts. A
/// chained plugin only reads `prevResult.ips` and passes the result through,
/// and that part is the same from 0.3.0 on.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// The operation the runtime asked for (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Attach the container to the network.
    Add,
    /// Detach it; must tolerate missing resources.
    Del,
    /// Verify the attachment.
    Check,
    /// Report supported versions.
    Version,
}

/// Error codes of the CNI spec (section "Error").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorCode {
    /// The configuration's `cniVersion` is not supported.
    IncompatibleVersion = 1,
    /// A field in the configuration is not supported.
    UnsupportedField = 2,
    /// A required environment variable is missing or invalid.
    InvalidEnvironment = 4,
    /// An I/O failure (e.g. reading stdin).
    Io = 5,
    /// stdin could not be decoded.
    Decode = 6,
    /// The configuration is invalid.
    InvalidConfig = 7,
    /// A transient failure: the runtime should retry.
    TryAgainLater = 11,
    /// weft-specific: the pod must be enrolled but the node agent could not
    /// be reached or refused; fail closed.
    EnrollmentFailed = 100,
}

/// A CNI error: printed as the spec's error object on stdout, exit code 1.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("CNI error {}: {msg}{}", *code as u32, details.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
pub struct CniError {
    /// The spec's code.
    pub code: ErrorCode,
    /// Short message.
    pub msg: String,
    /// Longer explanation, if any.
    pub details: Option<String>,
}

impl CniError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: None,
        }
    }

    /// Adds the longer explanation.
    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = Some(details.into());
        self
    }

    /// The spec's JSON error object.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        struct ErrorObject<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            details: Option<&'a str>,
        }
        let obj = ErrorObject {
            cni_version,
            code: self.code as u32,
            msg: &self.msg,
            details: self.details.as_deref(),
        };
        // Serializing strings and integers cannot fail; fall back to a fixed
        // object rather than panic all the same.
        serde_json::to_string(&obj).unwrap_or_else(|_| {
            format!(
                r#"{{"cniVersion":"{CNI_VERSION}","code":{},"msg":"error"}}"#,
                self.code as u32
            )
        })
    }
}

/// The `CNI_*` environment of one invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (required for ADD, DEL, CHECK).
    pub container_id: String,
    /// `CNI_NETNS` (required for ADD and CHECK; may be empty on DEL).
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, parsed as `K=V;K=V`.
    pub args: BTreeMap<String, String>,
}

impl CniEnv {
    /// Reads the environment through `get` (so tests need not touch the
    /// process environment).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<CniEnv, CniError> {
        let command = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some(other) => {
                return Err(CniError::new(
                    ErrorCode::InvalidEnvironment,
                    format!("unknown CNI_COMMAND {other:?}"),
                ));
            }
            None => {
                return Err(CniError::new(
                    ErrorCode::InvalidEnvironment,
                    "CNI_COMMAND is not set",
                ));
            }
        };
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let required = |k: &str| {
            nonempty(k).ok_or_else(|| {
                CniError::new(ErrorCode::InvalidEnvironment, format!("{k} is not set"))
            })
        };
        if command == Command::Version {
            return Ok(CniEnv {
                command,
                container_id: String::new(),
                netns: None,
                ifname: String::new(),
                args: BTreeMap::new(),
            });
        }
        let container_id = required("CNI_CONTAINERID")?;
        let ifname = required("CNI_IFNAME")?;
        let netns = nonempty("CNI_NETNS");
        if netns.is_none() && command != Command::Del {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                "CNI_NETNS is not set",
            ));
        }
        let args = parse_args(&get("CNI_ARGS").unwrap_or_default())?;
        Ok(CniEnv {
            command,
            container_id,
            netns,
            ifname,
            args,
        })
    }

    /// The Kubernetes pod these args name (`K8S_POD_NAMESPACE`,
    /// `K8S_POD_NAME`, optional `K8S_POD_UID`), if the runtime passed them.
    pub fn pod(&self) -> Option<PodRef> {
        let namespace = self
            .args
            .get("K8S_POD_NAMESPACE")
            .filter(|v| !v.is_empty())?;
        let name = self.args.get("K8S_POD_NAME").filter(|v| !v.is_empty())?;
        Some(PodRef {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: self
                .args
                .get("K8S_POD_UID")
                .filter(|v| !v.is_empty())
                .cloned(),
        })
    }
}

/// Which pod an invocation is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID, when the runtime knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

fn parse_args(raw: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut args = BTreeMap::new();
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("CNI_ARGS entry {pair:?} is not K=V"),
            ));
        };
        args.insert(k.to_string(), v.to_string());
    }
    Ok(args)
}

/// The network configuration on stdin, as a chained plugin sees it.
#[derive(Debug, Deserialize)]
pub struct NetConf {
    /// Spec version of this configuration.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Network name.
    #[serde(default)]
    pub name: String,
    /// Plugin type (`weft-cni`).
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The result of the previous plugins, kept as raw bytes so it is passed
    /// on exactly as received.
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Box<RawValue>>,
    /// The node agent's request socket.
    #[serde(rename = "agentSocket", default = "default_agent_socket")]
    pub agent_socket: String,
    /// The enrollment cache the agent keeps for when it is unreachable.
    #[serde(rename = "enrollmentCache", default = "default_enrollment_cache")]
    pub enrollment_cache: String,
    /// How long to wait for the agent, in milliseconds.
    #[serde(rename = "agentTimeoutMs", default = "default_timeout_ms")]
    pub agent_timeout_ms: u64,
    /// Namespaces never enrolled and never failed closed (e.g. kube-system).
    #[serde(rename = "excludeNamespaces", default)]
    pub exclude_namespaces: Vec<String>,
}

/// Where the agent listens for the plugin by default.
pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/weft/cni.sock";
/// Where the agent writes its enrollment cache by default.
pub const DEFAULT_ENROLLMENT_CACHE: &str = "/var/run/weft/enrollment.json";

fn default_agent_socket() -> String {
    DEFAULT_AGENT_SOCKET.to_string()
}
fn default_enrollment_cache() -> String {
    DEFAULT_ENROLLMENT_CACHE.to_string()
}
fn default_timeout_ms() -> u64 {
    2000
}

impl NetConf {
    /// Parses stdin and checks the version.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                ErrorCode::Decode,
                "cannot decode the network configuration on stdin",
            )
            .with_details(e.to_string())
        })?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!("cniVersion {:?} is not supported", conf.cni_version),
            )
            .with_details(format!("supported: {}", SUPPORTED_VERSIONS.join(", "))));
        }
        Ok(conf)
    }

    /// The pod IPs the previous plugins assigned (`prevResult.ips[].address`,
    /// CIDR notation).
    pub fn prev_ips(&self) -> Result<Vec<IpAddr>, CniError> {
        let Some(raw) = &self.prev_result else {
            return Ok(Vec::new());
        };
        #[derive(Deserialize)]
        struct Result {
            #[serde(default)]
            ips: Vec<IpConfig>,
        }
        #[derive(Deserialize)]
        struct IpConfig {
            address: String,
        }
        let result: Result = serde_json::from_str(raw.get()).map_err(|e| {
            CniError::new(ErrorCode::InvalidConfig, "prevResult is not a CNI result")
                .with_details(e.to_string())
        })?;
        result
            .ips
            .iter()
            .map(|ip| {
                let addr = ip
                    .address
                    .split_once('/')
                    .map_or(ip.address.as_str(), |(a, _)| a);
                addr.parse().map_err(|_| {
                    CniError::new(
                        ErrorCode::InvalidConfig,
                        format!("prevResult address {:?} is not an IP/prefix", ip.address),
                    )
                })
            })
            .collect()
    }
}

/// The VERSION answer.
pub fn version_json() -> String {
    let versions: Vec<String> = SUPPORTED_VERSIONS
        .iter()
        .map(|v| format!("\"{v}\""))
        .collect();
    format!(
        r#"{{"cniVersion":"{CNI_VERSION}","supportedVersions":[{}]}}"#,
        versions.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn environment() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_UID=u",
            ),
        ])
        .expect("valid");
        assert_eq!(e.command, Command::Add);
        assert_eq!(
            e.pod(),
            Some(PodRef {
                namespace: "ns".into(),
                name: "p".into(),
                uid: Some("u".into())
            })
        );

        assert_eq!(
            env(&[]).expect_err("no command").code,
            ErrorCode::InvalidEnvironment
        );
        assert_eq!(
            env(&[("CNI_COMMAND", "BOGUS")]).expect_err("bad").code,
            ErrorCode::InvalidEnvironment
        );
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
        ])
        .expect_err("no netns");
        assert!(e.msg.contains("CNI_NETNS"), "{e}");
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/x"),
            ("CNI_ARGS", "novalue"),
        ])
        .expect_err("bad args");
        assert!(e.msg.contains("novalue"));
        // DEL tolerates a missing netns.
        env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
        ])
        .expect("del");
        env(&[("CNI_COMMAND", "VERSION")]).expect("version");
    }

    #[test]
    fn config_and_prev_result() {
        let stdin = br#"{"cniVersion":"1.0.0","name":"n","type":"weft-cni",
            "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],
            "ips":[{"address":"10.244.1.5/24","gateway":"10.244.1.1","interface":0}]}}"#;
        let conf = NetConf::parse(stdin).expect("valid");
        assert_eq!(
            conf.prev_ips().expect("ips"),
            vec!["10.244.1.5".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(conf.agent_socket, DEFAULT_AGENT_SOCKET);
        // Passed through byte-for-byte, whitespace included.
        assert!(
            conf.prev_result
                .expect("prev")
                .get()
                .starts_with(r#"{"cniVersion":"1.0.0","interfaces""#)
        );

        assert_eq!(
            NetConf::parse(b"{not json").expect_err("garbage").code,
            ErrorCode::Decode
        );
        assert_eq!(
            NetConf::parse(b"").expect_err("empty").code,
            ErrorCode::Decode
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"9.9.9","type":"weft-cni"}"#)
                .expect_err("version")
                .code,
            ErrorCode::IncompatibleVersion
        );
        let bad_ip = NetConf::parse(br#"{"cniVersion":"1.0.0","type":"weft-cni","prevResult":{"ips":[{"address":"nope"}]}}"#)
            .expect("parses");
        assert_eq!(
            bad_ip.prev_ips().expect_err("bad ip").code,
            ErrorCode::InvalidConfig
        );
    }

    #[test]
    fn error_object() {
        let e = CniError::new(ErrorCode::Decode, "bad \"stdin\"").with_details("line 1");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.0.0")).expect("json");
        assert_eq!(v["code"], 6);
        assert_eq!(v["msg"], "bad \"stdin\"");
        assert_eq!(v["details"], "line 1");
        let v: serde_json::Value = serde_json::from_str(&version_json()).expect("json");
        assert_eq!(v["supportedVersions"][3], "1.0.0");
    }
}
