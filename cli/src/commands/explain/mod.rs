//! `weftctl explain`: would this connection or request be allowed, by whom,
//! and where?
//!
//! - [`target`]: `--from` and `--to`, resolved against the model.
//! - [`path`]: the enforcers on the path and their decisions, made by
//!   `weft_api::authz` (the proxies' own evaluator).
//! - [`render`]: the explanation for people.
//!
//! The model is built by the controller's model builder from the cluster's
//! objects, plus the objects of `--with-file`, so weftctl sees exactly what
//! the controller would stream.

pub mod path;
pub mod render;
pub mod target;

use std::path::Path;

use kube::ResourceExt;
use weft_cluster::model::labels::{USE_WAYPOINT, USE_WAYPOINT_NAMESPACE, WAYPOINT_FOR};
use weft_cluster::model::waypoints::is_waypoint_gateway;
use weft_cluster::model::{self, ModelConfig};
use weft_cluster::registry::{AnyObject, ClusterState, Kind, ObjectKey};

use self::path::{Analysis, Explanation, Request, Verdict};
use self::target::Destination;
use crate::args::{AppProtocol, ExplainArgs, Format, GlobalArgs};
use crate::cluster::Cluster;
use crate::exit::{CliError, Outcome, Result};
use crate::output;

/// Runs the command.
pub async fn run(global: &GlobalArgs, args: &ExplainArgs) -> Result<Outcome> {
    let cluster = Cluster::connect(global).await?;
    let mut state = (*cluster.state().await?).clone();
    for file in &args.with_files {
        add_objects_from_file(&mut state, file)?;
    }
    let explanation = explain(&state, cluster.model_config(), args)?;
    let text = match global.output {
        Format::Table | Format::Wide => render::text(&explanation, global.output == Format::Wide),
        other => output::render(other, &explanation, |_| output::Table::default())?,
    };
    output::print(&text);
    Ok(match explanation.verdict {
        Verdict::Allowed => Outcome::Ok,
        _ => Outcome::Denied,
    })
}

/// Explains one connection on `state` (pure: no I/O).
pub fn explain(
    state: &ClusterState,
    config: &ModelConfig,
    args: &ExplainArgs,
) -> Result<Explanation> {
    let model = model::build(state, config);
    let client = target::resolve_client(
        &args.from,
        &args.namespace,
        state,
        &model,
        &config.trust_domain,
    )?;
    let dest = target::resolve_destination(&args.to, &args.namespace, state, &model)?;
    let request = request(args, &dest)?;
    let l7_given = args.method.is_some() || args.path.is_some() || !args.headers.is_empty();
    let mut explanation = Analysis::new(&model, &client, &dest, &request, l7_given).run();
    let mut warnings = missing_waypoint_warnings(state, &dest);
    warnings.append(&mut explanation.warnings);
    explanation.warnings = warnings;
    Ok(explanation)
}

fn request(args: &ExplainArgs, dest: &Destination) -> Result<Request> {
    let headers = args
        .headers
        .iter()
        .map(|h| {
            h.split_once('=')
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.to_string()))
                .ok_or_else(|| CliError::Usage(format!("--header {h:?}: write NAME=VALUE")))
        })
        .collect::<Result<Vec<_>>>()?;
    let declared = dest.app_protocol.as_deref().and_then(declared_protocol);
    Ok(Request {
        protocol: args.protocol.or(declared).unwrap_or(AppProtocol::Http),
        protocol_guessed: args.protocol.is_none() && declared.is_none(),
        method: args.method.clone().unwrap_or_else(|| "GET".into()),
        path: args.path.clone().unwrap_or_else(|| "/".into()),
        host: args.host.clone().unwrap_or_else(|| dest.host.clone()),
        headers,
        assumed: args.method.is_none() && args.path.is_none(),
    })
}

/// What a port's `appProtocol` says it speaks, as the waypoint reads it;
/// `None` when it says nothing (the waypoint sniffs).
fn declared_protocol(app_protocol: &str) -> Option<AppProtocol> {
    match app_protocol.trim().to_ascii_lowercase().as_str() {
        "" => None,
        "http" | "http2" | "h2c" | "grpc" | "grpc-web" | "kubernetes.io/h2c"
        | "kubernetes.io/ws" | "ws" => Some(AppProtocol::Http),
        _ => Some(AppProtocol::Tcp),
    }
}

/// Adds every object of a YAML file to `state`, replacing objects of the same
/// kind and name (as `kubectl apply` would). Documents of kinds weft does not
/// read are refused, so a typo in `kind` is not silently ignored.
pub fn add_objects_from_file(state: &mut ClusterState, file: &Path) -> Result<()> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::NotFound(format!("--with-file {}: {e}", file.display())))?;
    add_objects(state, &file.display().to_string(), &text)
}

/// Adds every object of a YAML text (several documents) to `state`; `name`
/// says where the text came from, for errors.
pub fn add_objects(state: &mut ClusterState, name: &str, text: &str) -> Result<()> {
    for document in weft_api::yaml::documents(text) {
        let index = document.index;
        let where_ = || format!("{name} document {index}");
        let mut value = document
            .parse::<serde_json::Value>()
            .map_err(|e| CliError::Usage(format!("{}: not YAML: {e}", where_())))?;
        if value.is_null() {
            continue;
        }
        let text_of =
            |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        let (Some(api_version), Some(kind_name)) =
            (text_of(&value, "apiVersion"), text_of(&value, "kind"))
        else {
            return Err(CliError::Usage(format!(
                "{}: apiVersion and kind are required",
                where_()
            )));
        };
        let kind = Kind::from_type_meta(&api_version, &kind_name).ok_or_else(|| {
            CliError::Usage(format!(
                "{}: {api_version}/{kind_name} is not a kind weft reads",
                where_()
            ))
        })?;
        let cluster_scoped = matches!(kind, Kind::Namespace | Kind::GatewayClass);
        if !cluster_scoped
            && let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut())
        {
            // As kubectl does: no namespace means "default".
            meta.entry("namespace").or_insert_with(|| "default".into());
        }
        let object = AnyObject::from_value(kind, value).map_err(|e| {
            CliError::Usage(format!("{}: field {}: {}", where_(), e.path(), e.inner()))
        })?;
        if object.key().name.is_empty() {
            return Err(CliError::Usage(format!(
                "{}: metadata.name is required",
                where_()
            )));
        }
        object.insert_into(state);
    }
    Ok(())
}

/// A label asks for a waypoint that does not exist or does not serve this
/// kind of traffic: traffic then goes direct, and L7 policy is not applied.
fn missing_waypoint_warnings(state: &ClusterState, dest: &Destination) -> Vec<String> {
    let mut out = Vec::new();
    let namespace = state
        .namespaces
        .get(&ObjectKey::new("", dest.namespace.clone()));
    let ns_labels = namespace.map(|n| n.labels().clone()).unwrap_or_default();
    let own_labels = match dest.kind {
        "service" => state
            .services
            .get(&ObjectKey::new(dest.namespace.clone(), dest.name.clone()))
            .map(|s| s.labels().clone()),
        _ => state
            .pods
            .get(&ObjectKey::new(dest.namespace.clone(), dest.name.clone()))
            .map(|p| p.labels().clone()),
    }
    .unwrap_or_default();
    let (labels, on) = if own_labels.contains_key(USE_WAYPOINT) {
        (
            &own_labels,
            format!("{} {}/{}", dest.kind, dest.namespace, dest.name),
        )
    } else {
        (&ns_labels, format!("namespace {}", dest.namespace))
    };
    let Some(name) = labels
        .get(USE_WAYPOINT)
        .filter(|n| !n.is_empty() && *n != "none")
    else {
        return out;
    };
    let ns = labels
        .get(USE_WAYPOINT_NAMESPACE)
        .cloned()
        .unwrap_or_else(|| dest.namespace.clone());
    // Service traffic also passes the endpoint workload's own waypoint.
    let bound = dest.service.as_ref().is_some_and(|s| s.waypoint.is_some())
        || dest.endpoints.iter().any(|e| e.workload.waypoint.is_some());
    if bound {
        return out;
    }
    let gateway = state
        .gateways
        .get(&ObjectKey::new(ns.clone(), name.clone()))
        .filter(|gw| is_waypoint_gateway(gw));
    match gateway {
        None => out.push(format!(
            "{on} asks for waypoint {ns}/{name} ({USE_WAYPOINT}), but there is no Gateway of class weft-waypoint by that name: traffic goes direct and no L7 policy applies (weftctl waypoint apply -n {ns} --name {name})"
        )),
        Some(gw) => {
            let serves = gw.labels().get(WAYPOINT_FOR).cloned().unwrap_or_else(|| "service".into());
            out.push(format!(
                "{on} asks for waypoint {ns}/{name}, but it serves {serves} traffic ({WAYPOINT_FOR}={serves}): traffic addressed to a {} does not pass it",
                dest.kind
            ));
        }
    }
    out
}
