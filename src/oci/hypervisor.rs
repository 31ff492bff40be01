//! The hypervisor part of a sandbox configuration, and its kernel parameters.

use std::sync::OnceLock;

use serde::Serialize;

use super::names::{BlockDeviceDriver, SharedFs, VirtioFsCache};
use super::Error;

/// The smallest guest memory, in MiB, a sandbox may ask for.
pub const MIN_HYPERVISOR_MEMORY: u32 = 256;

/// Bytes of /dev/shm given to a sandbox that mounts /dev/shm without a sized source.
pub const DEFAULT_SHM_SIZE: u64 = 65536 * 1024;

/// One guest kernel parameter: `key` or `key=value`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Param {
    /// The parameter name.
    pub key: String,
    /// The value; empty for a bare `key`.
    pub value: String,
}

impl Param {
    /// Splits space-separated `key=value` / `key` words into parameters (the value keeps any
    /// further `=`). Names are not checked here: [`HypervisorConfig::add_kernel_param`] does.
    pub fn parse_list(text: &str) -> Vec<Param> {
        text.split_whitespace()
            .map(|word| match word.split_once('=') {
                Some((key, value)) => Param {
                    key: key.to_owned(),
                    value: value.to_owned(),
                },
                None => Param {
                    key: word.to_owned(),
                    value: String::new(),
                },
            })
            .collect()
    }
}

/// How to start the VM of a sandbox (virtcontainers' `HypervisorConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HypervisorConfig {
    /// Host path of the hypervisor binary.
    pub hypervisor_path: String,
    /// Host path of the jailer binary, if any.
    pub jailer_path: String,
    /// Host path of the guest kernel.
    pub kernel_path: String,
    /// Host path of the guest root image.
    pub image_path: String,
    /// Host path of the guest initrd.
    pub initrd_path: String,
    /// Host path of the guest firmware.
    pub firmware_path: String,
    /// Extra guest kernel parameters, in order.
    pub kernel_params: Vec<Param>,
    /// The QEMU machine type.
    pub hypervisor_machine_type: String,
    /// The QEMU machine accelerators.
    pub machine_accelerators: String,
    /// Guest CPU features.
    pub cpu_features: String,
    /// vCPUs at boot.
    pub num_vcpus: u32,
    /// vCPUs the guest can grow to.
    pub default_max_vcpus: u32,
    /// Guest memory at boot, MiB.
    pub memory_size: u32,
    /// Memory the guest can grow to, MiB (0: the host's).
    pub default_max_memory: u32,
    /// Memory hotplug slots.
    pub mem_slots: u32,
    /// Memory offset for NVDIMM, MiB.
    pub mem_offset: u32,
    /// Use virtio-mem for memory hotplug.
    pub virtio_mem: bool,
    /// Preallocate guest memory.
    pub mem_prealloc: bool,
    /// Back guest memory with huge pages.
    pub huge_pages: bool,
    /// Lock guest memory (no swap).
    pub mlock: bool,
    /// Host directory backing guest memory with files.
    pub file_backed_mem_root_dir: String,
    /// Host entropy device for the guest.
    pub entropy_source: String,
    /// Run QEMU without its seccomp filter.
    pub disable_seccomp: bool,
    /// Under emulation (TCG), the size of QEMU's translated-code cache, MiB (0: QEMU's own).
    pub tcg_tb_size: u32,
    /// Debug output: the guest's console goes to the shim's log (`[runtime] enable_debug`).
    pub debug: bool,
    /// Path inside the guest of OCI hooks.
    pub guest_hook_path: String,
    /// Do not use vhost-net.
    pub disable_vhost_net: bool,
    /// Talk to the agent over vsock.
    pub use_vsock: bool,
    /// Do not put the root image on an NVDIMM.
    pub disable_image_nvdimm: bool,
    /// Hotplug VFIO devices on the root bus.
    pub hotplug_vfio_on_root_bus: bool,
    /// PCIe root ports to create.
    pub pcie_root_port: u32,
    /// Block device driver.
    pub block_device_driver: BlockDeviceDriver,
    /// Do not use block devices for container root file systems.
    pub disable_block_device_use: bool,
    /// Use I/O threads for block devices.
    pub enable_iothreads: bool,
    /// Set the block device cache options.
    pub block_device_cache_set: bool,
    /// Use O_DIRECT for block devices.
    pub block_device_cache_direct: bool,
    /// Ignore flush requests for block devices.
    pub block_device_cache_noflush: bool,
    /// Shared file system.
    pub shared_fs: SharedFs,
    /// Host path of the virtio-fs daemon.
    pub virtio_fs_daemon: String,
    /// virtio-fs cache mode.
    pub virtio_fs_cache: VirtioFsCache,
    /// virtio-fs DAX window, MiB.
    pub virtio_fs_cache_size: u32,
    /// 9p msize.
    #[serde(rename = "msize_9p")]
    pub msize_9p: u32,
}

impl HypervisorConfig {
    /// Appends a guest kernel parameter; a parameter without a name is an error.
    pub fn add_kernel_param(&mut self, param: Param) -> Result<(), Error> {
        if param.key.is_empty() {
            return Err(Error::EmptyKernelParam(format!("={}", param.value)));
        }
        self.kernel_params.push(param);
        Ok(())
    }
}

/// Number of CPUs this process may run on (cached; at least 1).
pub fn host_cpus() -> u32 {
    static CPUS: OnceLock<u32> = OnceLock::new();
    *CPUS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1)
    })
}

/// Most vCPUs QEMU supports for a guest on this architecture.
pub fn max_qemu_vcpus() -> u32 {
    if cfg!(target_arch = "aarch64") {
        123
    } else if cfg!(target_arch = "powerpc64") {
        128
    } else if cfg!(target_arch = "s390x") {
        248
    } else {
        240
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_list_keeps_bare_keys_and_later_equals() {
        let params = Param::parse_list(" quiet  a=b=c x= ");
        let pairs: Vec<(&str, &str)> = params
            .iter()
            .map(|p| (p.key.as_str(), p.value.as_str()))
            .collect();
        assert_eq!(pairs, [("quiet", ""), ("a", "b=c"), ("x", "")]);
    }

    #[test]
    fn add_kernel_param_rejects_empty_name() {
        let mut config = HypervisorConfig::default();
        for param in Param::parse_list("a=1 =2") {
            let _ = config.add_kernel_param(param);
        }
        assert_eq!(config.kernel_params.len(), 1);
        let err = config.add_kernel_param(Param::default());
        assert!(err.is_err());
    }

    #[test]
    fn host_cpus_is_positive() {
        assert!(host_cpus() >= 1);
        assert!(max_qemu_vcpus() >= 123);
    }
}
