//! What the `weft-cni` binary does for one invocation: read the config and
//! environment, ask the node agent, print `prevResult` unchanged.
//!
//! Fail closed: if a pod must be enrolled (per the agent, or per the agent's
//! enrollment cache when the agent cannot be reached) and enrollment did not
//! happen, ADD fails, so the runtime never starts a meshed pod outside the
//! mesh. Pods that are not enrolled, and pods the runtime does not name as
//! Kubernetes pods, pass through untouched.

use std::path::Path;
use std::time::Duration;

use crate::cni::{
    CNI_VERSION, CniEnv, CniError, Command, ErrorCode, NetConf, PodRef, version_json,
};
use crate::enrollment::{
    AgentClientError, AgentRequest, AgentResponse, EnrollmentCache, PodAttachment, ask_agent,
};

/// The outcome of one invocation: what to print on stdout and whether it is
/// an error (exit code 1).
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The bytes for stdout (a result, the VERSION answer, an error object,
    /// or nothing).
    pub stdout: String,
    /// Whether the invocation failed.
    pub failed: bool,
}

/// Runs one invocation from its environment lookup and stdin.
pub fn invoke(get_env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let env = match CniEnv::from_lookup(get_env) {
        Ok(env) => env,
        Err(e) => return failure(&e, CNI_VERSION),
    };
    if env.command == Command::Version {
        return Outcome {
            stdout: version_json(),
            failed: false,
        };
    }
    let conf = match NetConf::parse(stdin) {
        Ok(conf) => conf,
        Err(e) => return failure(&e, CNI_VERSION),
    };
    match run(&env, &conf) {
        Ok(stdout) => Outcome {
            stdout,
            failed: false,
        },
        Err(e) => failure(&e, &conf.cni_version),
    }
}

fn failure(e: &CniError, version: &str) -> Outcome {
    Outcome {
        stdout: e.to_json(version),
        failed: true,
    }
}

fn run(env: &CniEnv, conf: &NetConf) -> Result<String, CniError> {
    match env.command {
        Command::Version => Ok(version_json()),
        Command::Add => add(env, conf),
        Command::Del => {
            del(env, conf);
            Ok(String::new())
        }
        Command::Check => check(env, conf).map(|()| String::new()),
    }
}

fn prev_result(conf: &NetConf) -> Result<&str, CniError> {
    conf.prev_result.as_deref().map(|r| r.get()).ok_or_else(|| {
        CniError::new(ErrorCode::InvalidConfig, "prevResult is missing").with_details(
            "weft-cni is a chained plugin: put it after the plugin that creates the interface",
        )
    })
}

/// The pod this invocation is about, unless it is none of weft's business.
fn meshable_pod(env: &CniEnv, conf: &NetConf) -> Option<PodRef> {
    env.pod()
        .filter(|pod| !conf.exclude_namespaces.contains(&pod.namespace))
}

fn add(env: &CniEnv, conf: &NetConf) -> Result<String, CniError> {
    let prev = prev_result(conf)?.to_string();
    let ips = conf.prev_ips()?;
    let Some(pod) = meshable_pod(env, conf) else {
        return Ok(prev);
    };
    let request = AgentRequest::Add(PodAttachment {
        pod: pod.clone(),
        container_id: env.container_id.clone(),
        netns: env.netns.clone().unwrap_or_default(),
        ifname: env.ifname.clone(),
        ips,
    });
    match ask_agent(Path::new(&conf.agent_socket), &request, timeout(conf)) {
        Ok(AgentResponse::Enrolled | AgentResponse::Skipped { .. } | AgentResponse::Ok) => Ok(prev),
        Ok(AgentResponse::Error { message }) => Err(CniError::new(
            ErrorCode::EnrollmentFailed,
            format!("node agent could not enroll pod {pod}"),
        )
        .with_details(message)),
        Ok(AgentResponse::Coverage(_)) => Err(CniError::new(
            ErrorCode::EnrollmentFailed,
            format!("node agent gave an unexpected answer for pod {pod}"),
        )),
        Err(e) => fallback(conf, &pod, e).map(|()| prev),
    }
}

fn del(env: &CniEnv, conf: &NetConf) {
    // DEL must succeed whatever state things are in: the agent also drops
    // pods that disappear from the registry, so telling it is best effort.
    if let Some(pod) = meshable_pod(env, conf) {
        let request = AgentRequest::Del {
            pod,
            container_id: env.container_id.clone(),
        };
        let _ = ask_agent(Path::new(&conf.agent_socket), &request, timeout(conf));
    }
}

fn check(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    prev_result(conf)?;
    let Some(pod) = meshable_pod(env, conf) else {
        return Ok(());
    };
    match ask_agent(
        Path::new(&conf.agent_socket),
        &AgentRequest::Check { pod: pod.clone() },
        timeout(conf),
    ) {
        Ok(AgentResponse::Error { message }) => Err(CniError::new(
            ErrorCode::EnrollmentFailed,
            format!("pod {pod} is not enrolled as it should be"),
        )
        .with_details(message)),
        Ok(_) => Ok(()),
        Err(e) => fallback(conf, &pod, e),
    }
}

/// The agent did not answer: decide from its enrollment cache. A pod that
/// must be enrolled fails; so does every pod when there is no readable cache,
/// because then nothing says the pod may run outside the mesh.
fn fallback(conf: &NetConf, pod: &PodRef, err: AgentClientError) -> Result<(), CniError> {
    let must_enroll = match EnrollmentCache::load(Path::new(&conf.enrollment_cache)) {
        Ok(Some(cache)) => cache.must_enroll(pod),
        Ok(None) | Err(_) => true,
    };
    if must_enroll {
        Err(CniError::new(
            ErrorCode::TryAgainLater,
            format!("pod {pod} must be enrolled in the mesh but the node agent is unavailable"),
        )
        .with_details(err.to_string()))
    } else {
        Ok(())
    }
}

fn timeout(conf: &NetConf) -> Duration {
    Duration::from_millis(conf.agent_timeout_ms.clamp(1, 60_000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn run_with(env: &[(&str, &str)], stdin: &str) -> Outcome {
        let map: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        invoke(|k| map.get(k).cloned(), stdin.as_bytes())
    }

    const ADD_ENV: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/var/run/netns/none"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=dns"),
    ];

    #[test]
    fn malformed_stdin_is_a_cni_error() {
        let out = run_with(ADD_ENV, "{\"cniVersion\":");
        assert!(out.failed);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("error object is JSON");
        assert_eq!(v["code"], 6);
        assert!(v["msg"].as_str().is_some_and(|m| m.contains("stdin")));
    }

    #[test]
    fn missing_prev_result() {
        let out = run_with(
            ADD_ENV,
            r#"{"cniVersion":"1.0.0","name":"n","type":"weft-cni"}"#,
        );
        assert!(out.failed);
        assert!(out.stdout.contains("prevResult"));
    }

    #[test]
    fn excluded_namespace_passes_through_without_agent() {
        let prev = r#"{"cniVersion":"1.0.0", "ips":[{"address":"10.1.0.2/24"}]}"#;
        let stdin = format!(
            r#"{{"cniVersion":"1.0.0","name":"n","type":"weft-cni","agentSocket":"/nonexistent/sock",
               "excludeNamespaces":["kube-system"],"prevResult":{prev}}}"#
        );
        let out = run_with(ADD_ENV, &stdin);
        assert_eq!(
            out,
            Outcome {
                stdout: prev.to_string(),
                failed: false
            }
        );
    }

    #[test]
    fn version() {
        let out = run_with(&[("CNI_COMMAND", "VERSION")], "");
        assert!(!out.failed);
        assert!(out.stdout.contains("supportedVersions"));
    }
}
