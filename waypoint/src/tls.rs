//! The waypoint's server certificate on 15008: its own identity, from the
//! certificate manager (renewed at half-life), verified against the current
//! trust bundle. The rustls config is rebuilt only when the certificate or
//! the roots change.

use std::sync::Arc;

use parking_lot::Mutex;
use weft_hbone::{HboneError, ServerTls, SpiffeId};
use weft_runtime::certs::CertManager;
use weft_runtime::trust::TrustState;

pub struct WaypointTls {
    pub certs: CertManager,
    pub identity: SpiffeId,
    pub trust: TrustState,
    cache: Mutex<Option<(String, u64, Arc<rustls::ServerConfig>)>>,
}

impl WaypointTls {
    pub fn new(certs: CertManager, identity: SpiffeId, trust: TrustState) -> WaypointTls {
        WaypointTls {
            certs,
            identity,
            trust,
            cache: Mutex::new(None),
        }
    }
}

impl ServerTls for WaypointTls {
    async fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, HboneError> {
        let cert = self
            .certs
            .get(&self.identity)
            .await
            .map_err(|e| HboneError::NoCertificate(e.to_string()))?;
        let (trust_version, bundle) = self.trust.get();
        let mut cache = self.cache.lock();
        if let Some((serial, version, config)) = cache.as_ref()
            && serial == cert.serial()
            && *version == trust_version
        {
            return Ok(config.clone());
        }
        let config = weft_hbone::tls::server_config(&cert, &bundle)?;
        *cache = Some((cert.serial().to_owned(), trust_version, config.clone()));
        Ok(config)
    }
}
