//! vessel: a containerd shim v2 runtime that runs pods and containers in sandboxes.
//!
//! - [`oci`]: the conversion core, OCI bundle -> sandbox / container config.
//! - [`config`]: the runtime configuration file and its allow-lists.
//! - [`check`]: what this host can do for each backend.
//! - [`shim`]: the containerd Task service.
//! - [`sandbox`]: the sandbox backends behind one trait.
//! - [`protos`]: the guest agent's ttrpc API.

pub mod check;
pub mod config;
pub mod convert;
pub mod factory;
pub mod logging;
pub mod oci;
pub mod protos;
pub mod sandbox;
pub mod shim;
