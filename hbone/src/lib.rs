//! weft-hbone: the tunnel both of weft's proxies speak.
//!
//! - [`identity`]: SPIFFE IDs of workloads.
//! - [`ca`]: the root, CSR validation and X.509-SVID signing (the controller's CA).
//! - [`certs`]: workload certificates, trust bundles, a store by identity.
//! - [`tls`]: rustls configs that verify peers by SPIFFE ID.

pub mod ca;
pub mod certs;
pub mod identity;
pub mod tls;

pub use ca::{CertificateAuthority, CertificateRequest, CsrError};
pub use certs::{CertificateStore, TrustBundle, WorkloadCertificate};
pub use identity::SpiffeId;
