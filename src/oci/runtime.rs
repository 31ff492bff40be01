//! The runtime configuration the conversion starts from (built from the configuration file).

use serde::Serialize;

use super::annotations::AnnotationPolicy;
use super::experimental::Feature;
use super::hypervisor::{HypervisorConfig, Param};
use super::names::{HypervisorType, InterworkingModel};
use super::Error;

/// Settings of the in-guest agent (virtcontainers' `KataAgentConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AgentConfig {
    /// Kernel modules the agent loads, each `name [param=value ...]`.
    pub kernel_modules: Vec<String>,
    /// Agent tracing.
    pub trace: bool,
    /// Agent trace mode.
    pub trace_mode: String,
    /// Agent trace type.
    pub trace_type: String,
    /// Size of the container stdio pipes, bytes (0: the guest default).
    pub container_pipe_size: u32,
    /// Seconds to wait for the agent to answer.
    pub dial_timeout: u32,
}

/// VM factory settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FactoryConfig {
    /// Start VMs from a template.
    pub template: bool,
    /// Where the template lives.
    pub template_path: String,
    /// VMs kept ready in the cache.
    pub vm_cache_number: u32,
    /// Endpoint of the VM cache server.
    pub vm_cache_endpoint: String,
}

/// All runtime settings a conversion needs.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    /// The hypervisor.
    pub hypervisor_type: HypervisorType,
    /// The hypervisor settings.
    pub hypervisor_config: HypervisorConfig,
    /// The agent settings.
    pub agent_config: AgentConfig,
    /// How the VM joins the container network.
    pub inter_network_model: InterworkingModel,
    /// VM factory settings.
    pub factory_config: FactoryConfig,
    /// Debug output.
    pub debug: bool,
    /// Tracing.
    pub trace: bool,
    /// Do not apply seccomp inside the guest.
    pub disable_guest_seccomp: bool,
    /// Do not create a network namespace for the hypervisor.
    pub disable_new_netns: bool,
    /// Put every sandbox process in the sandbox cgroup only.
    pub sandbox_cgroup_only: bool,
    /// Size the VM once, at boot, from the pod's resources (no hotplug afterwards).
    pub static_sandbox_resource_mgmt: bool,
    /// Experimental features turned on.
    pub experimental: Vec<Feature>,
    /// Which annotations a pod may use, and the paths they may name.
    pub annotation_policy: AnnotationPolicy,
}

impl RuntimeConfig {
    /// Appends a guest kernel parameter to the hypervisor settings.
    pub fn add_kernel_param(&mut self, param: Param) -> Result<(), Error> {
        self.hypervisor_config.add_kernel_param(param)
    }
}
