//! The conversion core: an OCI bundle's spec -> the sandbox or container configuration, a port
//! of kata-containers' `virtcontainers/pkg/oci` with its known defects fixed and annotations
//! treated as untrusted.
//!
//! - [`sandbox_config`] / [`container_config`]: the conversions.
//! - [`parse_spec`]: `config.json`, with errors naming the field.
//! - [`container_type`] / [`sandbox_id`]: what a bundle is, from CRI annotations.
//! - [`annotations`]: the honoured annotation keys and the policy that restricts them.
//! - [`RuntimeConfig`]: the settings a conversion starts from (see [`crate::config`]).

pub mod annotations;
mod container;
mod cri;
mod env;
mod error;
pub mod experimental;
mod hypervisor;
mod names;
mod runtime;
mod sandbox;
mod spec;
mod state;

pub(crate) use names::named_enum;

pub use container::{
    container_config, Capabilities, Cmd, ContainerConfig, DeviceInfo, Mount, RootFs,
};
pub use cri::{container_type, sandbox_id, ContainerType};
pub use env::{env_vars, EnvVar};
pub use error::Error;
pub use hypervisor::{
    host_cpus, max_qemu_vcpus, HypervisorConfig, Param, DEFAULT_SHM_SIZE, MIN_HYPERVISOR_MEMORY,
};
pub use names::{BlockDeviceDriver, HypervisorType, InterworkingModel, SharedFs, VirtioFsCache};
pub use runtime::{AgentConfig, FactoryConfig, RuntimeConfig};
pub use sandbox::{sandbox_config, NetworkConfig, SandboxConfig};
pub use spec::{is_bind, parse_spec};
pub use state::State;

#[cfg(test)]
mod tests;

/// A default spec carrying `pairs` as its annotations (for tests).
#[cfg(test)]
pub(crate) fn spec_with_annotations(pairs: &[(&str, &str)]) -> oci_spec::runtime::Spec {
    let map: std::collections::HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut spec = oci_spec::runtime::Spec::default();
    spec.set_annotations(Some(map));
    spec
}
