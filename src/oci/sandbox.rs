//! OCI spec -> sandbox configuration (virtcontainers' `SandboxConfig`).

use std::collections::BTreeMap;
use std::path::Path;

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::Serialize;

use super::annotations::{self, BUNDLE_PATH_KEY};
use super::container::{container_config, ContainerConfig, Mount};
use super::experimental::Feature;
use super::hypervisor::{HypervisorConfig, DEFAULT_SHM_SIZE};
use super::names::{HypervisorType, InterworkingModel};
use super::runtime::{AgentConfig, RuntimeConfig};
use super::Error;

/// How the sandbox joins the network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NetworkConfig {
    /// The network namespace to join (empty: create one).
    pub net_ns_path: String,
    /// Do not create a network namespace for the hypervisor.
    pub disable_new_netns: bool,
    /// How the VM is connected to the container network interface.
    pub interworking_model: InterworkingModel,
}

/// Everything needed to create a sandbox and its first container.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SandboxConfig {
    /// Sandbox id (the id of its first container).
    pub id: String,
    /// Hostname of the sandbox.
    pub hostname: String,
    /// The hypervisor.
    pub hypervisor_type: HypervisorType,
    /// The hypervisor settings, after annotation overrides.
    pub hypervisor_config: HypervisorConfig,
    /// The agent settings, after annotation overrides.
    pub agent_config: AgentConfig,
    /// The network settings.
    pub network_config: NetworkConfig,
    /// The first container (the sandbox's own).
    pub containers: Vec<ContainerConfig>,
    /// The bundle path and the asset annotations (kernel, image, ... and their hashes).
    pub annotations: BTreeMap<String, String>,
    /// Bytes of /dev/shm (0: no /dev/shm mount).
    pub shm_size: u64,
    /// Put every sandbox process in the sandbox cgroup only.
    pub sandbox_cgroup_only: bool,
    /// Size the VM once, at boot, from the pod's resources (no hotplug afterwards).
    pub static_sandbox_resource_mgmt: bool,
    /// Do not apply seccomp inside the guest.
    pub disable_guest_seccomp: bool,
    /// Experimental features turned on.
    pub experimental: Vec<Feature>,
}

/// Converts a sandbox bundle's spec: the runtime settings, the spec's own container, then the
/// annotation overrides allowed by the runtime's annotation policy.
pub fn sandbox_config(
    spec: &Spec,
    runtime: &RuntimeConfig,
    bundle: &Path,
    id: &str,
) -> Result<SandboxConfig, Error> {
    let container = container_config(spec, bundle, id)?;
    let shm_size = shm_size(&container.mounts)?;
    let mut sandbox = SandboxConfig {
        id: id.to_owned(),
        hostname: spec.hostname().clone().unwrap_or_default(),
        hypervisor_type: runtime.hypervisor_type,
        hypervisor_config: runtime.hypervisor_config.clone(),
        agent_config: runtime.agent_config.clone(),
        network_config: network_config(spec, runtime),
        containers: vec![container],
        annotations: BTreeMap::from([(
            BUNDLE_PATH_KEY.to_owned(),
            bundle.to_string_lossy().into_owned(),
        )]),
        shm_size,
        sandbox_cgroup_only: runtime.sandbox_cgroup_only,
        static_sandbox_resource_mgmt: runtime.static_sandbox_resource_mgmt,
        disable_guest_seccomp: runtime.disable_guest_seccomp,
        experimental: runtime.experimental.clone(),
    };
    if let Some(map) = spec.annotations() {
        annotations::apply(map, &runtime.annotation_policy, &mut sandbox)?;
    }
    annotations::check_shared_fs(&sandbox)?;
    Ok(sandbox)
}

/// The network namespace path of the spec (the last network namespace with a path) and the
/// runtime's network settings.
fn network_config(spec: &Spec, runtime: &RuntimeConfig) -> NetworkConfig {
    let net_ns_path = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
        .filter(|n| n.typ() == LinuxNamespaceType::Network)
        .filter_map(|n| n.path().as_ref())
        .rfind(|p| !p.as_os_str().is_empty())
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    NetworkConfig {
        net_ns_path,
        disable_new_netns: runtime.disable_new_netns,
        interworking_model: runtime.inter_network_model,
    }
}

/// Size of /dev/shm: 0 without a /dev/shm mount, the size of the source file system for a bind
/// mount of anything but /dev/shm, 64 MiB otherwise.
fn shm_size(mounts: &[Mount]) -> Result<u64, Error> {
    let Some(m) = mounts
        .iter()
        .find(|m| Path::new(&m.destination) == Path::new("/dev/shm"))
    else {
        return Ok(0);
    };
    if m.fs_type != "bind" || Path::new(&m.source) == Path::new("/dev/shm") {
        return Ok(DEFAULT_SHM_SIZE);
    }
    let stat = nix::sys::statfs::statfs(Path::new(&m.source)).map_err(|source| Error::ShmSize {
        path: m.source.clone().into(),
        source,
    })?;
    let block_size = u64::try_from(stat.block_size()).unwrap_or(0);
    Ok(block_size.saturating_mul(stat.blocks()))
}
