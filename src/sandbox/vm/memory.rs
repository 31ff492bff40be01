//! The guest's memory on QEMU's command line: its size and hotplug slots, and what backs it
//! (anonymous memory, a memfd that virtiofsd can map, huge pages, or files in a directory).

use super::{
    qemu::{option_value, TemplateRole},
    sizing,
};
use crate::oci::HypervisorConfig;

/// Where huge pages are mounted (hugetlbfs), where kata looks for them too.
pub const HUGEPAGES_DIR: &str = "/dev/hugepages";
/// The smallest guest QEMU is given, MiB.
const MIN_MEMORY_MIB: u32 = 128;

/// Above this much memory (MiB) a guest kernel sets a bounce buffer aside for devices that
/// cannot reach it.
const DMA32_LIMIT_MIB: u32 = 4096;

/// The guest's memory as QEMU is given it: the boot size, what it can grow to, and whether a
/// virtio-mem device grows it with the pod (`sizing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// At boot, MiB.
    pub size: u32,
    /// The most it can grow to (hotplug slots or virtio-mem), MiB.
    pub max: Option<u32>,
    /// A virtio-mem device of `max - size` grows and shrinks it.
    pub virtio_mem: bool,
}

/// The memory layout of `config` on a host of `host_memory_mib` whose guests address
/// `phys_bits` bits: it can grow to `default_max_memory` (0: the host's memory), within half
/// the guest's physical address space (the rest is the PCI holes and 64-bit device windows);
/// through virtio-mem when `resizable` (dynamic sizing) and the memory is plain (not huge
/// pages, files or preallocated).
pub fn layout(
    config: &HypervisorConfig,
    host_memory_mib: u32,
    phys_bits: u32,
    resizable: bool,
) -> Layout {
    let size = config.memory_size.max(MIN_MEMORY_MIB);
    let cap = match config.default_max_memory {
        0 => host_memory_mib,
        max => max.min(host_memory_mib),
    };
    let addressable = 1u64 << (phys_bits.clamp(32, 52) - 1) >> 20;
    let cap = cap.min(u32::try_from(addressable).unwrap_or(u32::MAX));
    let plain =
        !config.huge_pages && config.file_backed_mem_root_dir.is_empty() && !config.mem_prealloc;
    let virtio_mem = resizable && config.virtio_mem && plain && cap > size;
    // virtio-mem's device is a whole number of its 2 MiB blocks.
    let cap = size + (cap.saturating_sub(size) & !1);
    let max = ((config.mem_slots > 0 || virtio_mem) && cap > size).then_some(cap);
    Layout {
        size,
        max,
        virtio_mem,
    }
}

/// QEMU's memory arguments. `-m` carries the hotplug slots and the most the guest can grow
/// to; a backend object (and its NUMA node) comes when plain anonymous memory will not do:
/// huge pages, a file-backed directory, `shared` memory another process maps (vhost-user:
/// virtiofsd), or preallocation; the virtio-mem device, when the layout has one, is backed
/// the same way (shared with virtiofsd too).
pub fn arguments(
    config: &HypervisorConfig,
    shared: bool,
    layout: &Layout,
    template: Option<&TemplateRole>,
) -> Vec<String> {
    let size = layout.size;
    let mut memory = format!("{size}M");
    if let Some(max) = layout.max {
        if config.mem_slots > 0 {
            memory.push_str(&format!(",slots={}", config.mem_slots));
        }
        memory.push_str(&format!(",maxmem={max}M"));
    }
    let prealloc = if config.mem_prealloc {
        ",prealloc=on"
    } else {
        ""
    };
    let file = |dir: &str| {
        format!(
            "memory-backend-file,id=mem,size={size}M,mem-path={},share=on{prealloc}",
            option_value(dir)
        )
    };
    let backend = if let Some(role) = template {
        // A template's memory is its file, shared so that the save leaves it out
        // (`x-ignore-shared`); a clone maps it privately, copy-on-write.
        let mode = match role {
            TemplateRole::Save(_) => "share=on",
            TemplateRole::Clone(_) => "share=off,readonly=on,rom=off",
        };
        Some(format!(
            "memory-backend-file,id=mem,size={size}M,mem-path={},{mode}",
            option_value(&role.memory().to_string_lossy())
        ))
    } else if config.huge_pages {
        Some(file(HUGEPAGES_DIR))
    } else if !config.file_backed_mem_root_dir.is_empty() {
        Some(file(&config.file_backed_mem_root_dir))
    } else if shared {
        Some(format!(
            "memory-backend-memfd,id=mem,size={size}M,share=on{prealloc}"
        ))
    } else if config.mem_prealloc {
        Some(format!(
            "memory-backend-ram,id=mem,size={size}M,prealloc=on"
        ))
    } else {
        None
    };
    let mut args = vec!["-m".to_string(), memory];
    if let Some(backend) = backend {
        args.extend([
            "-object".into(),
            backend,
            "-numa".into(),
            "node,memdev=mem".into(),
        ]);
    }
    if let (true, Some(max)) = (layout.virtio_mem, layout.max) {
        let kind = if shared {
            "memory-backend-memfd"
        } else {
            "memory-backend-ram"
        };
        let share = if shared { ",share=on" } else { "" };
        args.extend([
            "-object".into(),
            format!(
                "{kind},id={},size={}M,reserve=off{share}",
                sizing::MEMORY_BACKEND,
                max - size
            ),
            "-device".into(),
            format!(
                "virtio-mem-pci,id={},memdev={},requested-size=0",
                sizing::MEMORY_DEVICE,
                sizing::MEMORY_BACKEND
            ),
        ]);
    }
    args
}

/// The guest kernel's parameters for its memory: memory that can be plugged above 4 GiB would
/// make it set 64 MiB aside as a DMA bounce buffer (SWIOTLB) that the guest's devices, all
/// virtio and able to reach any address, never use; memory virtio-mem plugs is onlined at
/// once, movable, so that it can be unplugged again.
pub fn kernel_params(layout: &Layout) -> Vec<&'static str> {
    let mut params = Vec::new();
    if layout.max.is_some_and(|max| max > DMA32_LIMIT_MIB) {
        params.push("swiotlb=noforce");
    }
    if layout.virtio_mem {
        params.push("memhp_default_state=online_movable");
    }
    params
}

/// The bits of physical address a guest CPU has: the host's (`address sizes` of
/// /proc/cpuinfo), at most QEMU's 40 for its emulated CPU (TCG), which any accelerator the
/// backend tries can fall back to.
pub fn guest_phys_bits() -> u32 {
    const TCG_PHYS_BITS: u32 = 40;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("address sizes")?.split(':').nth(1))
        .and_then(|sizes| sizes.split_whitespace().next()?.parse().ok())
        .map_or(TCG_PHYS_BITS, |bits: u32| bits.min(TCG_PHYS_BITS))
}

/// The figure of `key` in a `/proc/meminfo` text (KiB, or a count for the huge page lines).
pub fn meminfo_value(meminfo: &str, key: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// The host's memory, MiB (`MemTotal` of `/proc/meminfo`); 0 when it cannot be read.
pub fn host_memory_mib() -> u32 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo_value(&meminfo, "MemTotal")
        .map_or(0, |kib| u32::try_from(kib / 1024).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HypervisorConfig {
        HypervisorConfig {
            memory_size: 512,
            ..Default::default()
        }
    }

    /// The arguments of `config` on a 24000 MiB TCG host, not resized with the pod.
    fn fixed(config: &HypervisorConfig, host: u32) -> (Vec<String>, Vec<&'static str>) {
        let layout = layout(config, host, 40, false);
        (
            arguments(config, false, &layout, None),
            kernel_params(&layout),
        )
    }

    #[test]
    fn plain_memory_is_a_size_with_its_hotplug_slots() {
        let plain = HypervisorConfig {
            mem_slots: 10,
            ..config()
        };
        let (args, params) = fixed(&plain, 24000);
        assert_eq!(args, ["-m", "512M,slots=10,maxmem=24000M"]);
        assert_eq!(params, ["swiotlb=noforce"]);
        assert!(fixed(&plain, 2048).1.is_empty());
        // No room to grow, or no slots: the size alone.
        assert_eq!(
            fixed(&plain, 512),
            (vec!["-m".into(), "512M".into()], vec![])
        );
        assert_eq!(
            fixed(&config(), 24000),
            (vec!["-m".into(), "512M".into()], vec![])
        );
        assert_eq!(fixed(&HypervisorConfig::default(), 0).0, ["-m", "128M"]);
        // default_max_memory caps it.
        let capped = HypervisorConfig {
            default_max_memory: 2048,
            ..plain.clone()
        };
        assert_eq!(
            fixed(&capped, 24000).0,
            ["-m", "512M,slots=10,maxmem=2048M"]
        );
    }

    #[test]
    fn a_resizable_guest_grows_through_one_virtio_mem_device_within_its_address_space() {
        let resizable = HypervisorConfig {
            virtio_mem: true,
            default_max_memory: 4608,
            ..config()
        };
        let grows = layout(&resizable, 24000, 40, true);
        assert_eq!(
            arguments(&resizable, false, &grows, None),
            [
                "-m",
                "512M,maxmem=4608M",
                "-object",
                "memory-backend-ram,id=hotmem,size=4096M,reserve=off",
                "-device",
                "virtio-mem-pci,id=hotmem0,memdev=hotmem,requested-size=0"
            ]
        );
        assert_eq!(
            kernel_params(&grows),
            ["swiotlb=noforce", "memhp_default_state=online_movable"]
        );
        // Shared with virtiofsd, its memory is a shared memfd too.
        assert!(arguments(&resizable, true, &grows, None)
            .contains(&"memory-backend-memfd,id=hotmem,size=4096M,reserve=off,share=on".into()));
        // A host whose guests address 34 bits: 8 GiB at most.
        let unbounded = HypervisorConfig {
            default_max_memory: 0,
            ..resizable.clone()
        };
        assert_eq!(layout(&unbounded, 64000, 34, true).max, Some(8192));
        // An odd-sized host: the device stays whole blocks.
        assert_eq!(layout(&unbounded, 24001, 40, true).max, Some(24000));
        // Static sizing, huge pages or preallocation: no virtio-mem device.
        assert!(!layout(&resizable, 24000, 40, false).virtio_mem);
        let huge = HypervisorConfig {
            huge_pages: true,
            ..resizable.clone()
        };
        assert!(!layout(&huge, 24000, 40, true).virtio_mem);
        assert_eq!(layout(&huge, 24000, 40, true).max, None);
    }

    #[test]
    fn each_backing_gets_its_memory_backend() {
        let backend = |config: &HypervisorConfig, shared: bool| {
            let args = arguments(config, shared, &layout(config, 0, 40, true), None);
            assert_eq!(args[2..], ["-object", &args[3], "-numa", "node,memdev=mem"]);
            args[3].clone()
        };
        let prealloc = HypervisorConfig {
            mem_prealloc: true,
            ..config()
        };
        assert_eq!(
            backend(&prealloc, false),
            "memory-backend-ram,id=mem,size=512M,prealloc=on"
        );
        assert_eq!(
            backend(&config(), true),
            "memory-backend-memfd,id=mem,size=512M,share=on"
        );
        assert_eq!(
            backend(&prealloc, true),
            "memory-backend-memfd,id=mem,size=512M,share=on,prealloc=on"
        );
        let huge = HypervisorConfig {
            huge_pages: true,
            file_backed_mem_root_dir: "/dev/shm".into(),
            ..config()
        };
        assert_eq!(
            backend(&huge, true),
            "memory-backend-file,id=mem,size=512M,mem-path=/dev/hugepages,share=on"
        );
        // A comma in a path cannot add options of its own.
        let files = HypervisorConfig {
            file_backed_mem_root_dir: "/dev/shm/a,prealloc=on".into(),
            ..config()
        };
        assert_eq!(
            backend(&files, false),
            "memory-backend-file,id=mem,size=512M,mem-path=/dev/shm/a,,prealloc=on,share=on"
        );
    }

    #[test]
    fn the_host_memory_is_read() {
        assert!(host_memory_mib() > 0);
        let meminfo = "MemTotal:       24000000 kB\nHugePages_Free:      300\n";
        assert_eq!(meminfo_value(meminfo, "MemTotal"), Some(24000000));
        assert_eq!(meminfo_value(meminfo, "HugePages_Free"), Some(300));
        assert_eq!(meminfo_value(meminfo, "HugePages"), None);
    }
}
