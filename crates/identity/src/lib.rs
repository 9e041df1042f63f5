//! weft-identity: who a workload is, and how that is proved.
//!
//! - [`identity`]: SPIFFE ids of workloads.
//! - [`ca`]: the root, CSR validation and X.509-SVID signing (the
//!   controller's CA, and a proxy's local CA in local mode).
//! - [`certs`]: workload certificates, trust bundles, a store by identity.
//! - [`tls`]: rustls configs that verify peers by SPIFFE id.
//!
//! Apart from the tunnel (`weft-hbone`), so that the controller signs
//! certificates without compiling the HBONE pool (docs/design.md §5).

pub mod ca;
pub mod certs;
pub mod identity;
pub mod tls;

pub use ca::{CertificateAuthority, CertificateRequest, CsrError};
pub use certs::{CertificateStore, TrustBundle, WorkloadCertificate};
pub use identity::SpiffeId;
