//! `[hypervisor.qemu]`: the VM settings and the annotation policy.

use glob::Pattern;
use serde::Deserialize;

use super::Error;
use crate::oci::annotations::{resolve_enable_entry, AnnotationPolicy};
use crate::oci::{
    host_cpus, max_qemu_vcpus, BlockDeviceDriver, HypervisorConfig, Param, SharedFs, VirtioFsCache,
    MIN_HYPERVISOR_MEMORY,
};

/// The `[hypervisor]` table: one hypervisor, `qemu`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HypervisorTable {
    /// `[hypervisor.qemu]`.
    pub qemu: QemuSection,
}

/// `[hypervisor.qemu]` (kata's key names).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QemuSection {
    /// QEMU binary.
    pub path: String,
    /// Guest kernel.
    pub kernel: String,
    /// Guest initrd (exclusive with `image`).
    pub initrd: String,
    /// Guest root image (exclusive with `initrd`).
    pub image: String,
    /// Guest firmware.
    pub firmware: String,
    /// QEMU machine type.
    pub machine_type: String,
    /// QEMU machine accelerators.
    pub machine_accelerators: String,
    /// Guest CPU features.
    pub cpu_features: String,
    /// vCPUs at boot (0: 1; more than the host has: the host count).
    pub default_vcpus: u32,
    /// vCPUs the guest can grow to (0 or more than the host has: the host count; capped at
    /// QEMU's maximum).
    pub default_maxvcpus: u32,
    /// Guest memory at boot, MiB (at least 256).
    pub default_memory: u32,
    /// Memory the guest can grow to, MiB (0 or more than the host has: the host's).
    pub default_maxmemory: u32,
    /// Memory hotplug slots.
    pub memory_slots: u32,
    /// Memory offset for NVDIMM, MiB.
    pub memory_offset: u32,
    /// Grow and shrink the guest's memory with the pod through a virtio-mem device (off: the
    /// guest keeps its boot memory; vCPUs still follow the pod).
    pub enable_virtio_mem: bool,
    /// Preallocate guest memory.
    pub enable_mem_prealloc: bool,
    /// Back guest memory with huge pages.
    pub enable_hugepages: bool,
    /// Let guest memory be swapped (otherwise it is locked).
    pub enable_swap: bool,
    /// Shared file system.
    pub shared_fs: SharedFs,
    /// virtio-fs daemon binary.
    pub virtio_fs_daemon: String,
    /// virtio-fs cache mode.
    pub virtio_fs_cache: VirtioFsCache,
    /// virtio-fs DAX window, MiB (0: none).
    pub virtio_fs_cache_size: u32,
    /// 9p msize (at least 1).
    pub msize_9p: u32,
    /// Extra guest kernel parameters, space separated.
    pub kernel_params: String,
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
    /// Talk to the agent over vsock.
    pub use_vsock: bool,
    /// Do not use vhost-net.
    pub disable_vhost_net: bool,
    /// Do not put the root image on an NVDIMM.
    pub disable_image_nvdimm: bool,
    /// Hotplug VFIO devices on the root bus.
    pub hotplug_vfio_on_root_bus: bool,
    /// PCIe root ports to create.
    pub pcie_root_port: u32,
    /// Host entropy device.
    pub entropy_source: String,
    /// Run QEMU without its seccomp filter (kata's `disable_seccomp`). Off by default: QEMU
    /// runs with `-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,
    /// resourcecontrol=deny`, so that a guest that takes QEMU over cannot execute programs,
    /// change its credentials or use obsolete system calls.
    pub disable_seccomp: bool,
    /// Under emulation (TCG, no usable /dev/kvm), the size in MiB of QEMU's cache of
    /// translated guest code (`-accel tcg,tb-size=N`); 0 leaves QEMU's default (touched as it
    /// fills). Each VM's cache is its own memory: a cap keeps an idle VM small at the cost of
    /// translating again what no longer fits. Unused under KVM.
    pub tcg_tb_size: u32,
    /// Host directory backing guest memory with files (empty: anonymous memory).
    pub file_mem_backend: String,
    /// Path inside the guest of OCI hooks.
    pub guest_hook_path: String,
    /// Annotations a pod may use (see [`AnnotationPolicy`]); empty: every non-path annotation.
    pub enable_annotations: Vec<String>,
    /// Globs for the `path` and `jailer_path` annotations.
    pub valid_hypervisor_paths: Vec<String>,
    /// Globs for the `kernel` annotation.
    pub valid_kernel_paths: Vec<String>,
    /// Globs for the `image` annotation.
    pub valid_image_paths: Vec<String>,
    /// Globs for the `initrd` annotation.
    pub valid_initrd_paths: Vec<String>,
    /// Globs for the `firmware` annotation.
    pub valid_firmware_paths: Vec<String>,
    /// Globs for the `virtio_fs_daemon` annotation.
    pub valid_virtio_fs_daemon_paths: Vec<String>,
    /// Globs for the `file_mem_backend` annotation.
    pub valid_file_mem_backends: Vec<String>,
    /// Globs for the `entropy_source` annotation.
    pub valid_entropy_sources: Vec<String>,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

impl Default for QemuSection {
    fn default() -> Self {
        Self {
            path: "/usr/bin/qemu-system-x86_64".to_owned(),
            kernel: "/usr/share/vessel/vmlinux".to_owned(),
            initrd: "/usr/share/vessel/initramfs.img".to_owned(),
            image: String::new(),
            firmware: String::new(),
            machine_type: "q35".to_owned(),
            machine_accelerators: String::new(),
            cpu_features: "pmu=off".to_owned(),
            default_vcpus: 1,
            default_maxvcpus: 0,
            default_memory: 2048,
            default_maxmemory: 0,
            memory_slots: 10,
            memory_offset: 0,
            enable_virtio_mem: true,
            enable_mem_prealloc: false,
            enable_hugepages: false,
            enable_swap: false,
            shared_fs: SharedFs::VirtioFs,
            virtio_fs_daemon: "/usr/libexec/virtiofsd".to_owned(),
            virtio_fs_cache: VirtioFsCache::Auto,
            virtio_fs_cache_size: 0,
            msize_9p: 8192,
            kernel_params: String::new(),
            block_device_driver: BlockDeviceDriver::VirtioScsi,
            disable_block_device_use: false,
            enable_iothreads: false,
            block_device_cache_set: false,
            block_device_cache_direct: false,
            block_device_cache_noflush: false,
            use_vsock: true,
            disable_vhost_net: false,
            disable_image_nvdimm: false,
            hotplug_vfio_on_root_bus: false,
            pcie_root_port: 0,
            entropy_source: "/dev/urandom".to_owned(),
            disable_seccomp: false,
            tcg_tb_size: 0,
            file_mem_backend: String::new(),
            guest_hook_path: String::new(),
            enable_annotations: Vec::new(),
            valid_hypervisor_paths: strings(&["/usr/bin/qemu-system-x86_64"]),
            valid_kernel_paths: strings(&["/usr/share/vessel/vmlinu*"]),
            valid_image_paths: strings(&["/usr/share/vessel/*.img"]),
            valid_initrd_paths: strings(&["/usr/share/vessel/initramfs*.img"]),
            valid_firmware_paths: Vec::new(),
            valid_virtio_fs_daemon_paths: strings(&["/usr/libexec/virtiofsd"]),
            valid_file_mem_backends: strings(&["/dev/shm"]),
            valid_entropy_sources: strings(&["/dev/urandom", "/dev/random"]),
        }
    }
}

const SECTION: &str = "hypervisor.qemu";

fn key(name: &str) -> String {
    format!("{SECTION}.{name}")
}

fn globs(name: &str, list: &[String]) -> Result<Vec<Pattern>, Error> {
    list.iter()
        .map(|g| {
            Pattern::new(g)
                .map_err(|e| Error::invalid(&key(name), format!("invalid glob {g:?}: {}", e.msg)))
        })
        .collect()
}

/// vCPUs at boot: 0 means 1, more than the host has means the host count (as kata does).
fn boot_vcpus(requested: u32, host: u32) -> u32 {
    requested.clamp(1, host.max(1))
}

/// vCPU ceiling: 0 or more than the host has means the host count, never above `qemu_max`.
fn max_vcpus(requested: u32, host: u32, qemu_max: u32) -> u32 {
    let n = if requested == 0 || requested > host {
        host
    } else {
        requested
    };
    n.min(qemu_max)
}

impl QemuSection {
    /// The hypervisor settings of a conversion; checks the rules the annotations obey too.
    pub fn hypervisor_config(&self) -> Result<HypervisorConfig, Error> {
        if self.default_memory < MIN_HYPERVISOR_MEMORY {
            return Err(Error::invalid(
                &key("default_memory"),
                format!(
                    "{} MiB is below the minimum (accepted: {MIN_HYPERVISOR_MEMORY}..={})",
                    self.default_memory,
                    u32::MAX
                ),
            ));
        }
        if self.msize_9p == 0 {
            return Err(Error::invalid(
                &key("msize_9p"),
                format!("0 (accepted: 1..={})", u32::MAX),
            ));
        }
        if self.shared_fs == SharedFs::VirtioFs && self.virtio_fs_daemon.is_empty() {
            return Err(Error::invalid(
                &key("virtio_fs_daemon"),
                "empty, but shared_fs = \"virtio-fs\" needs a daemon path",
            ));
        }
        let host = host_cpus();
        let mut config = HypervisorConfig {
            hypervisor_path: self.path.clone(),
            jailer_path: String::new(),
            kernel_path: self.kernel.clone(),
            image_path: self.image.clone(),
            initrd_path: self.initrd.clone(),
            firmware_path: self.firmware.clone(),
            kernel_params: Vec::new(),
            hypervisor_machine_type: self.machine_type.clone(),
            machine_accelerators: self.machine_accelerators.clone(),
            cpu_features: self.cpu_features.clone(),
            num_vcpus: boot_vcpus(self.default_vcpus, host),
            default_max_vcpus: max_vcpus(self.default_maxvcpus, host, max_qemu_vcpus()),
            memory_size: self.default_memory,
            default_max_memory: self.default_maxmemory,
            mem_slots: self.memory_slots,
            mem_offset: self.memory_offset,
            virtio_mem: self.enable_virtio_mem,
            mem_prealloc: self.enable_mem_prealloc,
            huge_pages: self.enable_hugepages,
            mlock: !self.enable_swap,
            file_backed_mem_root_dir: self.file_mem_backend.clone(),
            entropy_source: self.entropy_source.clone(),
            disable_seccomp: self.disable_seccomp,
            tcg_tb_size: self.tcg_tb_size,
            debug: false,
            guest_hook_path: self.guest_hook_path.clone(),
            disable_vhost_net: self.disable_vhost_net,
            use_vsock: self.use_vsock,
            disable_image_nvdimm: self.disable_image_nvdimm,
            hotplug_vfio_on_root_bus: self.hotplug_vfio_on_root_bus,
            pcie_root_port: self.pcie_root_port,
            block_device_driver: self.block_device_driver,
            disable_block_device_use: self.disable_block_device_use,
            enable_iothreads: self.enable_iothreads,
            block_device_cache_set: self.block_device_cache_set,
            block_device_cache_direct: self.block_device_cache_direct,
            block_device_cache_noflush: self.block_device_cache_noflush,
            shared_fs: self.shared_fs,
            virtio_fs_daemon: self.virtio_fs_daemon.clone(),
            virtio_fs_cache: self.virtio_fs_cache,
            virtio_fs_cache_size: self.virtio_fs_cache_size,
            msize_9p: self.msize_9p,
        };
        for param in Param::parse_list(&self.kernel_params) {
            config
                .add_kernel_param(param)
                .map_err(|e| Error::invalid(&key("kernel_params"), e.to_string()))?;
        }
        Ok(config)
    }

    /// The annotation policy: every `enable_annotations` entry must name an honoured annotation
    /// and every glob must compile.
    pub fn annotation_policy(&self) -> Result<AnnotationPolicy, Error> {
        if let Some(bad) = self
            .enable_annotations
            .iter()
            .find(|e| resolve_enable_entry(e).is_none())
        {
            return Err(Error::invalid(
                &key("enable_annotations"),
                format!(
                    "{bad:?} names no known annotation (accepted: a suffix of \
                     io.katacontainers.config.hypervisor. such as \"kernel_params\", \
                     \"runtime.<name>\" / \"agent.<name>\", or a full key)"
                ),
            ));
        }
        Ok(AnnotationPolicy {
            enable_annotations: self.enable_annotations.clone(),
            valid_hypervisor_paths: globs("valid_hypervisor_paths", &self.valid_hypervisor_paths)?,
            valid_kernel_paths: globs("valid_kernel_paths", &self.valid_kernel_paths)?,
            valid_image_paths: globs("valid_image_paths", &self.valid_image_paths)?,
            valid_initrd_paths: globs("valid_initrd_paths", &self.valid_initrd_paths)?,
            valid_firmware_paths: globs("valid_firmware_paths", &self.valid_firmware_paths)?,
            valid_virtio_fs_daemon_paths: globs(
                "valid_virtio_fs_daemon_paths",
                &self.valid_virtio_fs_daemon_paths,
            )?,
            valid_file_mem_backends: globs(
                "valid_file_mem_backends",
                &self.valid_file_mem_backends,
            )?,
            valid_entropy_sources: globs("valid_entropy_sources", &self.valid_entropy_sources)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_resolution() {
        assert_eq!(boot_vcpus(0, 8), 1);
        assert_eq!(boot_vcpus(4, 8), 4);
        assert_eq!(boot_vcpus(16, 8), 8);
        assert_eq!(max_vcpus(0, 8, 240), 8);
        assert_eq!(max_vcpus(4, 8, 240), 4);
        assert_eq!(max_vcpus(300, 512, 240), 240);
        assert_eq!(max_vcpus(0, 512, 240), 240);
    }
}
