//! Work in progress: see the e2e issue.
