//! The runtime configuration file: TOML in kata's `configuration.toml` layout, restricted to what
//! vessel supports. Unknown keys are errors, so a typo never falls back to a default.
//!
//! Lookup ([`Config::load`]): an explicit path (`--config`, or the containerd runtime option
//! `ConfigPath`), then `$VESSEL_CONFIG`, then `/etc/vessel/configuration.toml`, then
//! `/usr/share/defaults/vessel/configuration.toml`, then the built-in defaults (which equal the
//! shipped `config/configuration.toml`).

mod agent;
mod error;
mod factory;
mod hypervisor;
mod load;
mod runtime;

use std::path::Path;

use serde::Deserialize;

pub use agent::{AgentSection, AgentTable};
pub use error::Error;
pub use factory::FactorySection;
pub use hypervisor::{HypervisorTable, QemuSection};
pub use load::{CONFIG_ENV, SYSTEM_PATHS};
pub use runtime::{RuntimeSection, SandboxBackend};

use crate::oci::{HypervisorType, RuntimeConfig};

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[hypervisor.qemu]`.
    pub hypervisor: HypervisorTable,
    /// `[agent.vessel]`.
    pub agent: AgentTable,
    /// `[runtime]`.
    pub runtime: RuntimeSection,
    /// `[factory]`.
    pub factory: FactorySection,
}

impl Config {
    /// Loads the configuration following the lookup order (see the module documentation).
    pub fn load(explicit: Option<&Path>) -> Result<Config, Error> {
        let env = std::env::var_os(CONFIG_ENV);
        let system = SYSTEM_PATHS.map(Path::new);
        match load::locate(explicit, env.as_deref(), &system) {
            Some(path) => Config::from_file(&path),
            None => Ok(Config::default()),
        }
    }

    /// Reads, parses and checks one file.
    pub fn from_file(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = load::parse(&text, path)?;
        config
            .runtime_config()
            .map_err(|e| e.in_file(path.to_path_buf()))?;
        Ok(config)
    }

    /// The runtime settings a conversion starts from, including the annotation policy.
    pub fn runtime_config(&self) -> Result<RuntimeConfig, Error> {
        let qemu = &self.hypervisor.qemu;
        let runtime = &self.runtime;
        runtime.check_oci_runtime()?;
        self.factory.check(qemu)?;
        let mut hypervisor_config = qemu.hypervisor_config()?;
        hypervisor_config.debug = runtime.enable_debug;
        Ok(RuntimeConfig {
            hypervisor_type: HypervisorType::Qemu,
            hypervisor_config,
            agent_config: self.agent.vessel.agent_config(),
            inter_network_model: runtime.internetworking_model,
            factory_config: self.factory.factory_config(),
            debug: runtime.enable_debug,
            trace: runtime.enable_tracing,
            disable_guest_seccomp: runtime.disable_guest_seccomp,
            disable_new_netns: runtime.disable_new_netns,
            sandbox_cgroup_only: runtime.sandbox_cgroup_only,
            static_sandbox_resource_mgmt: runtime.static_sandbox_resource_mgmt,
            experimental: runtime.experimental_features()?,
            annotation_policy: qemu.annotation_policy()?,
        })
    }
}

#[cfg(test)]
mod tests;
