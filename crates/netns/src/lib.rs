//! The kernel edge weft's components share, and the only place `unsafe`
//! is allowed in the workspace.
//!
//! - [`NetNs`] ([`netns`]): an open network namespace — run code inside it
//!   on a fresh thread, or briefly on the current one; run a command in it;
//!   read what listens there.
//! - [`fd`]: the fds that carry namespaces between processes: receiving
//!   them over a unix socket, accepting on one, and registering an owned fd
//!   with tokio's reactor.
//! - [`startup_pages`]: a process's own pages that only its start-up
//!   needed, given back once it serves.
//!
//! Each `unsafe` block here is the smallest wrapper around one system call
//! or one API that cannot be safe in general, and is safe in how this crate
//! calls it; its SAFETY comment says why.

pub mod fd;
pub mod netns;
pub mod startup_pages;

pub use netns::{NetNs, NetnsError};
