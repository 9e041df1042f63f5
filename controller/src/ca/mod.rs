//! The CA service: `CreateCertificate` with the blast-radius rule.
//!
//! A ztunnel gets an identity only if a pod with that service account runs on
//! its node, and never a waypoint's; a waypoint (a ServiceAccount the
//! deployer made for a waypoint Gateway) gets only its own identity. The signing itself is
//! `weft_identity::ca`.

pub mod root;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic::{Request, Response, Status};
use weft_api::ca::certificate_authority_server::CertificateAuthority as CaRpc;
use weft_api::ca::{CreateCertificateRequest, CreateCertificateResponse};
use weft_identity::{CertificateAuthority, CertificateRequest, SpiffeId};

use crate::auth::{self, Authenticator, Caller};
use weft_cluster::model::waypoints::{is_waypoint_service_account_name, waypoints_run_by};
use weft_cluster::model::workloads::{node_name, service_account};
use weft_cluster::registry::ClusterState;

/// The gRPC CA.
pub struct CaService {
    ca: Arc<CertificateAuthority>,
    auth: Arc<dyn Authenticator>,
    states: watch::Receiver<Arc<ClusterState>>,
    max_ttl: Duration,
}

impl CaService {
    /// A CA that signs with `ca`, checks callers with `auth`, and looks up
    /// pods and waypoints in `states`. `max_ttl` is also the default lifetime.
    pub fn new(
        ca: Arc<CertificateAuthority>,
        auth: Arc<dyn Authenticator>,
        states: watch::Receiver<Arc<ClusterState>>,
        max_ttl: Duration,
    ) -> CaService {
        CaService {
            ca,
            auth,
            states,
            max_ttl,
        }
    }

    /// Decides whether `caller` on `node` may hold `identity`; the error says why not.
    pub fn authorize(
        &self,
        caller: &Caller,
        node: &str,
        identity: &SpiffeId,
    ) -> Result<(), String> {
        let state = self.states.borrow().clone();
        match caller {
            Caller::Anonymous => Ok(()),
            Caller::Ztunnel { node: bound } => {
                // The node comes from the credential; the request's is only
                // checked against it, so a ztunnel cannot speak for another.
                if bound != node {
                    return Err(format!(
                        "caller is the ztunnel of node {bound:?}, but the request names node {node:?}"
                    ));
                }
                if is_waypoint_service_account_name(
                    &state,
                    identity.namespace(),
                    identity.service_account(),
                ) {
                    return Err(format!(
                        "{identity} is a waypoint's identity, which only the waypoint itself \
                         may obtain, not a ztunnel for a pod running as it"
                    ));
                }
                let runs_here = state.pods.values().any(|pod| {
                    node_name(pod) == Some(node)
                        && pod.metadata.namespace.as_deref() == Some(identity.namespace())
                        && service_account(pod) == identity.service_account()
                });
                if runs_here {
                    Ok(())
                } else {
                    Err(format!(
                        "no pod with service account {}/{} runs on node {node:?}",
                        identity.namespace(),
                        identity.service_account()
                    ))
                }
            }
            Caller::ServiceAccount { namespace, name } => {
                if waypoints_run_by(&state, namespace, name).next().is_none() {
                    return Err(format!(
                        "{namespace}/{name} is neither a ztunnel nor a waypoint"
                    ));
                }
                if identity.namespace() != namespace || identity.service_account() != name {
                    return Err(format!(
                        "waypoint {namespace}/{name} may only obtain its own identity, not {identity}"
                    ));
                }
                Ok(())
            }
        }
    }
}

#[tonic::async_trait]
impl CaRpc for CaService {
    async fn create_certificate(
        &self,
        request: Request<CreateCertificateRequest>,
    ) -> Result<Response<CreateCertificateResponse>, Status> {
        let refuse = |reason: &'static str| {
            metrics::counter!("weft_ca_signings_total", "result" => reason).increment(1);
        };
        let caller = auth::authenticate(self.auth.as_ref(), request.metadata())
            .await
            .map_err(|e| {
                refuse("unauthenticated");
                Status::unauthenticated(e.to_string())
            })?;
        let req = request.into_inner();
        let csr = CertificateRequest::from_pem(&req.csr_pem).map_err(|e| {
            refuse("bad_csr");
            Status::invalid_argument(format!("bad CSR: {e}"))
        })?;
        if !self.states.borrow().synced {
            // Not knowing the pods yet is not a refusal: the caller retries.
            refuse("unavailable");
            return Err(Status::unavailable(
                "the controller has not read the cluster yet",
            ));
        }
        let identity = csr.identity().clone();
        if identity.trust_domain() != self.ca.trust_domain() {
            refuse("bad_csr");
            return Err(Status::invalid_argument(format!(
                "bad CSR: trust domain {:?} is not {:?}",
                identity.trust_domain(),
                self.ca.trust_domain()
            )));
        }
        if let Err(reason) = self.authorize(&caller, &req.node, &identity) {
            refuse("denied");
            tracing::warn!(?caller, node = req.node, %identity, "certificate refused: {reason}");
            return Err(Status::permission_denied(reason));
        }
        let ttl = match req.ttl_seconds {
            0 => self.max_ttl,
            s => Duration::from_secs(s).min(self.max_ttl),
        };
        let chain = self.ca.sign(&csr, ttl).map_err(|e| {
            refuse("error");
            Status::internal(format!("signing failed: {e}"))
        })?;
        metrics::counter!("weft_ca_signings_total", "result" => "signed").increment(1);
        tracing::info!(?caller, node = req.node, %identity, "certificate signed");
        Ok(Response::new(CreateCertificateResponse {
            cert_chain_pem: chain,
        }))
    }
}
