//! The guest's memory on QEMU's command line: its size and hotplug slots, and what backs it
//! (anonymous memory, a memfd that virtiofsd can map, huge pages, or files in a directory).

use super::qemu::option_value;
use crate::oci::HypervisorConfig;

/// Where huge pages are mounted (hugetlbfs), where kata looks for them too.
pub const HUGEPAGES_DIR: &str = "/dev/hugepages";
/// The smallest guest QEMU is given, MiB.
const MIN_MEMORY_MIB: u32 = 128;

/// Above this much memory (MiB) a guest kernel sets a bounce buffer aside for devices that
/// cannot reach it.
const DMA32_LIMIT_MIB: u32 = 4096;

/// The memory the guest's hotplug slots (`mem_slots`) can grow it to: the host's, when that
/// is more than the boot size.
fn max_memory_mib(config: &HypervisorConfig, host_memory_mib: u32) -> Option<u32> {
    let size = config.memory_size.max(MIN_MEMORY_MIB);
    (config.mem_slots > 0 && host_memory_mib > size).then_some(host_memory_mib)
}

/// QEMU's memory arguments. `-m` carries the hotplug slots up to the host's memory; a
/// backend object (and its NUMA node) comes when plain anonymous memory will not do: huge
/// pages, a file-backed directory, `shared` memory another process maps (vhost-user:
/// virtiofsd), or preallocation.
pub fn arguments(config: &HypervisorConfig, shared: bool, host_memory_mib: u32) -> Vec<String> {
    let size = config.memory_size.max(MIN_MEMORY_MIB);
    let mut memory = format!("{size}M");
    if let Some(max) = max_memory_mib(config, host_memory_mib) {
        memory.push_str(&format!(",slots={},maxmem={max}M", config.mem_slots));
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
    let backend = if config.huge_pages {
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
    args
}

/// The guest kernel's parameters for its memory: memory that can be plugged above 4 GiB would
/// make it set 64 MiB aside as a DMA bounce buffer (SWIOTLB) that the guest's devices, all
/// virtio and able to reach any address, never use.
pub fn kernel_params(config: &HypervisorConfig, host_memory_mib: u32) -> Option<&'static str> {
    max_memory_mib(config, host_memory_mib)
        .filter(|max| *max > DMA32_LIMIT_MIB)
        .map(|_| "swiotlb=noforce")
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

    #[test]
    fn plain_memory_is_a_size_with_its_hotplug_slots() {
        let plain = HypervisorConfig {
            mem_slots: 10,
            ..config()
        };
        assert_eq!(
            arguments(&plain, false, 24000),
            ["-m", "512M,slots=10,maxmem=24000M"]
        );
        assert_eq!(kernel_params(&plain, 24000), Some("swiotlb=noforce"));
        assert_eq!(kernel_params(&plain, 2048), None);
        // No room to grow, or no slots: the size alone.
        assert_eq!(arguments(&plain, false, 512), ["-m", "512M"]);
        assert_eq!(kernel_params(&plain, 512), None);
        assert_eq!(kernel_params(&config(), 24000), None);
        assert_eq!(arguments(&config(), false, 24000), ["-m", "512M"]);
        assert_eq!(
            arguments(&HypervisorConfig::default(), false, 0),
            ["-m", "128M"]
        );
    }

    #[test]
    fn each_backing_gets_its_memory_backend() {
        let backend = |config: &HypervisorConfig, shared: bool| {
            let args = arguments(config, shared, 0);
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
