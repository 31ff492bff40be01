//! The table of every annotation the conversion honours: key, kind (parser and rule) and the
//! field it sets. One entry per key; `apply` walks the table in order, so the first failing key
//! (in table order) is the one reported.

use super::policy::PathList;
use crate::oci::experimental;
use crate::oci::hypervisor::{host_cpus, max_qemu_vcpus, Param, MIN_HYPERVISOR_MEMORY};
use crate::oci::names::{
    BlockDeviceDriver, HypervisorType, InterworkingModel, SharedFs, VirtioFsCache,
};
use crate::oci::SandboxConfig;

/// The range a u32 annotation must fall in.
#[derive(Debug, Clone, Copy)]
pub(super) enum Bound {
    /// Any u32.
    Any,
    /// At least this much.
    AtLeast(u32),
    /// At most the host CPU count.
    HostCpus,
    /// At most the host CPU count, and QEMU's maximum when the hypervisor is QEMU.
    MaxVcpus,
}

impl Bound {
    /// Inclusive range, and why its top is what it is.
    pub(super) fn range(self, hypervisor: HypervisorType) -> (u32, u32, String) {
        match self {
            Self::Any => (0, u32::MAX, String::new()),
            Self::AtLeast(min) => (min, u32::MAX, String::new()),
            Self::HostCpus => {
                let cpus = host_cpus();
                (0, cpus, format!(" (the host has {cpus} CPUs)"))
            }
            Self::MaxVcpus => {
                let cpus = host_cpus();
                match hypervisor {
                    HypervisorType::Qemu => {
                        let qemu = max_qemu_vcpus();
                        let why = format!(" (the host has {cpus} CPUs, QEMU supports {qemu})");
                        (0, cpus.min(qemu), why)
                    }
                }
            }
        }
    }
}

/// Sets a field from a parsed value.
type Set<T> = fn(&mut SandboxConfig, T);

/// How a key's value is parsed and checked, and what it sets.
pub(super) enum Kind {
    /// A Go-style boolean.
    Bool(Set<bool>),
    /// A decimal u32 within a bound.
    U32(Bound, Set<u32>),
    /// One of fixed names; the setter returns false for a name it does not accept.
    Choice(
        &'static [&'static str],
        fn(&mut SandboxConfig, &str) -> bool,
    ),
    /// Free text.
    Text(fn(&mut SandboxConfig, &str)),
    /// A host path, checked against `enable_annotations` and an allow-list.
    Path(PathList, fn(&mut SandboxConfig, &str)),
    /// A SHA-512 digest (only copied).
    Sha512,
    /// Parsed by the setter, which explains a rejection.
    Custom(fn(&mut SandboxConfig, &str) -> Result<(), String>),
}

/// One annotation key.
pub(super) struct Entry {
    /// The full key.
    pub(super) key: &'static str,
    /// Parser, rule and setter.
    pub(super) kind: Kind,
    /// The value is also copied into the sandbox annotations (an asset).
    pub(super) asset: bool,
}

macro_rules! hv {
    ($suffix:literal) => {
        concat!("io.katacontainers.config.hypervisor.", $suffix)
    };
}
macro_rules! rt {
    ($suffix:literal) => {
        concat!("io.katacontainers.config.runtime.", $suffix)
    };
}
macro_rules! ag {
    ($suffix:literal) => {
        concat!("io.katacontainers.config.agent.", $suffix)
    };
}

const fn entry(key: &'static str, kind: Kind) -> Entry {
    Entry {
        key,
        kind,
        asset: false,
    }
}

const fn asset(key: &'static str, kind: Kind) -> Entry {
    Entry {
        key,
        kind,
        asset: true,
    }
}

fn kernel_params(c: &mut SandboxConfig, value: &str) -> Result<(), String> {
    for param in Param::parse_list(value) {
        c.hypervisor_config
            .add_kernel_param(param)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn kernel_modules(c: &mut SandboxConfig, value: &str) -> Result<(), String> {
    let mut modules = Vec::new();
    for module in value.split(';').map(str::trim).filter(|m| !m.is_empty()) {
        if module
            .split_whitespace()
            .next()
            .is_some_and(|name| name.contains('='))
        {
            return Err(format!(
                "module {module:?} has no name (accepted: \"name [param=value ...]\" entries \
                 separated by ';')"
            ));
        }
        modules.push(module.to_owned());
    }
    c.agent_config.kernel_modules = modules;
    Ok(())
}

fn experimental_features(c: &mut SandboxConfig, value: &str) -> Result<(), String> {
    c.experimental = experimental::features(value.split_whitespace()).map_err(|name| {
        format!(
            "unknown experimental feature {name:?} (accepted: space-separated names among: {})",
            experimental::accepted()
        )
    })?;
    Ok(())
}

/// Every honoured annotation, in the order they are applied.
pub(super) static TABLE: &[Entry] = &[
    // Assets: copied into the sandbox annotations, path-valued ones also set.
    asset(
        hv!("kernel"),
        Kind::Path(PathList::Kernel, |c, v| {
            c.hypervisor_config.kernel_path = v.into()
        }),
    ),
    asset(
        hv!("image"),
        Kind::Path(PathList::Image, |c, v| {
            c.hypervisor_config.image_path = v.into()
        }),
    ),
    asset(
        hv!("initrd"),
        Kind::Path(PathList::Initrd, |c, v| {
            c.hypervisor_config.initrd_path = v.into()
        }),
    ),
    asset(
        hv!("firmware"),
        Kind::Path(PathList::Firmware, |c, v| {
            c.hypervisor_config.firmware_path = v.into()
        }),
    ),
    asset(
        hv!("path"),
        Kind::Path(PathList::Hypervisor, |c, v| {
            c.hypervisor_config.hypervisor_path = v.into()
        }),
    ),
    asset(
        hv!("jailer_path"),
        Kind::Path(PathList::Hypervisor, |c, v| {
            c.hypervisor_config.jailer_path = v.into()
        }),
    ),
    asset(hv!("kernel_hash"), Kind::Sha512),
    asset(hv!("image_hash"), Kind::Sha512),
    asset(hv!("initrd_hash"), Kind::Sha512),
    asset(hv!("firmware_hash"), Kind::Sha512),
    asset(hv!("hypervisor_hash"), Kind::Sha512),
    asset(hv!("jailer_hash"), Kind::Sha512),
    asset(
        "io.katacontainers.asset_hash_type",
        Kind::Choice(&["sha512"], |_, v| v == "sha512"),
    ),
    // CPU.
    entry(
        hv!("default_vcpus"),
        Kind::U32(Bound::HostCpus, |c, n| c.hypervisor_config.num_vcpus = n),
    ),
    entry(
        hv!("default_max_vcpus"),
        Kind::U32(Bound::MaxVcpus, |c, n| {
            c.hypervisor_config.default_max_vcpus = n
        }),
    ),
    // Memory.
    entry(
        hv!("default_memory"),
        Kind::U32(Bound::AtLeast(MIN_HYPERVISOR_MEMORY), |c, n| {
            c.hypervisor_config.memory_size = n
        }),
    ),
    entry(
        hv!("memory_slots"),
        Kind::U32(Bound::Any, |c, n| {
            if n > 0 {
                c.hypervisor_config.mem_slots = n
            }
        }),
    ),
    entry(
        hv!("memory_offset"),
        Kind::U32(Bound::Any, |c, n| {
            if n > 0 {
                c.hypervisor_config.mem_offset = n
            }
        }),
    ),
    entry(
        hv!("enable_virtio_mem"),
        Kind::Bool(|c, b| c.hypervisor_config.virtio_mem = b),
    ),
    entry(
        hv!("enable_mem_prealloc"),
        Kind::Bool(|c, b| c.hypervisor_config.mem_prealloc = b),
    ),
    entry(
        hv!("enable_swap"),
        Kind::Bool(|c, b| c.hypervisor_config.mlock = !b),
    ),
    entry(
        hv!("file_mem_backend"),
        Kind::Path(PathList::FileMemBackend, |c, v| {
            c.hypervisor_config.file_backed_mem_root_dir = v.into()
        }),
    ),
    entry(
        hv!("enable_hugepages"),
        Kind::Bool(|c, b| c.hypervisor_config.huge_pages = b),
    ),
    // Block devices.
    entry(
        hv!("block_device_driver"),
        Kind::Choice(BlockDeviceDriver::NAMES, |c, v| {
            BlockDeviceDriver::from_name(v)
                .map(|d| c.hypervisor_config.block_device_driver = d)
                .is_some()
        }),
    ),
    entry(
        hv!("disable_block_device_use"),
        Kind::Bool(|c, b| c.hypervisor_config.disable_block_device_use = b),
    ),
    entry(
        hv!("enable_iothreads"),
        Kind::Bool(|c, b| c.hypervisor_config.enable_iothreads = b),
    ),
    entry(
        hv!("block_device_cache_set"),
        Kind::Bool(|c, b| c.hypervisor_config.block_device_cache_set = b),
    ),
    entry(
        hv!("block_device_cache_direct"),
        Kind::Bool(|c, b| c.hypervisor_config.block_device_cache_direct = b),
    ),
    entry(
        hv!("block_device_cache_noflush"),
        Kind::Bool(|c, b| c.hypervisor_config.block_device_cache_noflush = b),
    ),
    // Shared file system.
    entry(
        hv!("shared_fs"),
        Kind::Choice(SharedFs::NAMES, |c, v| {
            SharedFs::from_name(v)
                .map(|fs| c.hypervisor_config.shared_fs = fs)
                .is_some()
        }),
    ),
    entry(
        hv!("virtio_fs_daemon"),
        Kind::Path(PathList::VirtioFsDaemon, |c, v| {
            c.hypervisor_config.virtio_fs_daemon = v.into()
        }),
    ),
    entry(
        hv!("virtio_fs_cache"),
        Kind::Choice(VirtioFsCache::NAMES, |c, v| {
            VirtioFsCache::from_name(v)
                .map(|m| c.hypervisor_config.virtio_fs_cache = m)
                .is_some()
        }),
    ),
    entry(
        hv!("virtio_fs_cache_size"),
        Kind::U32(Bound::Any, |c, n| {
            c.hypervisor_config.virtio_fs_cache_size = n
        }),
    ),
    entry(
        hv!("msize_9p"),
        Kind::U32(Bound::AtLeast(1), |c, n| c.hypervisor_config.msize_9p = n),
    ),
    // Generic hypervisor settings.
    entry(hv!("kernel_params"), Kind::Custom(kernel_params)),
    entry(
        hv!("machine_type"),
        Kind::Text(|c, v| {
            if !v.is_empty() {
                c.hypervisor_config.hypervisor_machine_type = v.into()
            }
        }),
    ),
    entry(
        hv!("machine_accelerators"),
        Kind::Text(|c, v| {
            if !v.is_empty() {
                c.hypervisor_config.machine_accelerators = v.into()
            }
        }),
    ),
    entry(
        hv!("cpu_features"),
        Kind::Text(|c, v| {
            if !v.is_empty() {
                c.hypervisor_config.cpu_features = v.into()
            }
        }),
    ),
    entry(
        hv!("disable_vhost_net"),
        Kind::Bool(|c, b| c.hypervisor_config.disable_vhost_net = b),
    ),
    entry(
        hv!("guest_hook_path"),
        Kind::Text(|c, v| {
            if !v.is_empty() {
                c.hypervisor_config.guest_hook_path = v.into()
            }
        }),
    ),
    entry(
        hv!("use_vsock"),
        Kind::Bool(|c, b| c.hypervisor_config.use_vsock = b),
    ),
    entry(
        hv!("disable_image_nvdimm"),
        Kind::Bool(|c, b| c.hypervisor_config.disable_image_nvdimm = b),
    ),
    entry(
        hv!("hotplug_vfio_on_root_bus"),
        Kind::Bool(|c, b| c.hypervisor_config.hotplug_vfio_on_root_bus = b),
    ),
    entry(
        hv!("pcie_root_port"),
        Kind::U32(Bound::Any, |c, n| c.hypervisor_config.pcie_root_port = n),
    ),
    entry(
        hv!("entropy_source"),
        Kind::Path(PathList::EntropySource, |c, v| {
            c.hypervisor_config.entropy_source = v.into()
        }),
    ),
    // Runtime.
    entry(
        rt!("disable_guest_seccomp"),
        Kind::Bool(|c, b| c.disable_guest_seccomp = b),
    ),
    entry(
        rt!("sandbox_cgroup_only"),
        Kind::Bool(|c, b| c.sandbox_cgroup_only = b),
    ),
    entry(rt!("experimental"), Kind::Custom(experimental_features)),
    entry(
        rt!("disable_new_netns"),
        Kind::Bool(|c, b| c.network_config.disable_new_netns = b),
    ),
    entry(
        rt!("internetworking_model"),
        Kind::Choice(InterworkingModel::NAMES, |c, v| {
            InterworkingModel::from_name(v)
                .map(|m| c.network_config.interworking_model = m)
                .is_some()
        }),
    ),
    // Agent.
    entry(ag!("kernel_modules"), Kind::Custom(kernel_modules)),
    entry(
        ag!("enable_tracing"),
        Kind::Bool(|c, b| c.agent_config.trace = b),
    ),
    entry(
        ag!("trace_mode"),
        Kind::Text(|c, v| c.agent_config.trace_mode = v.into()),
    ),
    entry(
        ag!("trace_type"),
        Kind::Text(|c, v| c.agent_config.trace_type = v.into()),
    ),
    entry(
        ag!("container_pipe_size"),
        Kind::U32(Bound::Any, |c, n| c.agent_config.container_pipe_size = n),
    ),
];
