//! An HTTP-level fake Kubernetes API server (filled in by the kubernetes
//! registry tests).
