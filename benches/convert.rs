//! One sandbox conversion of a spec carrying 40 annotations.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use oci_spec::runtime::Spec;
use vessel::config::Config;
use vessel::oci::sandbox_config;

const CONFIG: &str = r#"
[hypervisor.qemu]
enable_annotations = [
    "kernel", "initrd", "path", "virtio_fs_daemon", "entropy_source", "file_mem_backend",
    "kernel_hash", "initrd_hash", "hypervisor_hash", "default_vcpus", "default_max_vcpus",
    "default_memory", "memory_slots", "memory_offset", "enable_virtio_mem", "enable_mem_prealloc",
    "enable_swap", "enable_hugepages", "block_device_driver", "disable_block_device_use",
    "enable_iothreads", "block_device_cache_set", "block_device_cache_direct",
    "block_device_cache_noflush", "shared_fs", "virtio_fs_cache", "virtio_fs_cache_size",
    "msize_9p", "kernel_params", "machine_type", "cpu_features", "disable_vhost_net", "use_vsock",
    "pcie_root_port", "runtime.disable_guest_seccomp", "runtime.sandbox_cgroup_only",
    "runtime.internetworking_model", "agent.kernel_modules", "agent.enable_tracing",
    "agent.container_pipe_size",
]
valid_kernel_paths = ["/usr/share/vessel/vmlinuz*"]
valid_initrd_paths = ["/usr/share/vessel/initramfs*.img"]
valid_hypervisor_paths = ["/usr/bin/qemu-system-*"]
valid_virtio_fs_daemon_paths = ["/usr/libexec/virtiofsd"]
valid_entropy_sources = ["/dev/urandom"]
valid_file_mem_backends = ["/dev/shm"]
"#;

fn annotations() -> HashMap<String, String> {
    let sha = "0123456789abcdef".repeat(8);
    let hv = |k: &str, v: &str| {
        (
            format!("io.katacontainers.config.hypervisor.{k}"),
            v.to_owned(),
        )
    };
    let other = |k: &str, v: &str| (format!("io.katacontainers.config.{k}"), v.to_owned());
    let pairs = vec![
        hv("kernel", "/usr/share/vessel/vmlinuz-6.6"),
        hv("initrd", "/usr/share/vessel/initramfs-6.6.img"),
        hv("path", "/usr/bin/qemu-system-x86_64"),
        hv("virtio_fs_daemon", "/usr/libexec/virtiofsd"),
        hv("entropy_source", "/dev/urandom"),
        hv("file_mem_backend", "/dev/shm"),
        hv("kernel_hash", &sha),
        hv("initrd_hash", &sha),
        hv("hypervisor_hash", &sha),
        hv("default_vcpus", "1"),
        hv("default_max_vcpus", "1"),
        hv("default_memory", "1024"),
        hv("memory_slots", "8"),
        hv("memory_offset", "0"),
        hv("enable_virtio_mem", "false"),
        hv("enable_mem_prealloc", "false"),
        hv("enable_swap", "false"),
        hv("enable_hugepages", "false"),
        hv("block_device_driver", "virtio-blk"),
        hv("disable_block_device_use", "false"),
        hv("enable_iothreads", "true"),
        hv("block_device_cache_set", "true"),
        hv("block_device_cache_direct", "false"),
        hv("block_device_cache_noflush", "false"),
        hv("shared_fs", "virtio-fs"),
        hv("virtio_fs_cache", "always"),
        hv("virtio_fs_cache_size", "1024"),
        hv("msize_9p", "8192"),
        hv(
            "kernel_params",
            "quiet systemd.show_status=false agent.log=debug",
        ),
        hv("machine_type", "q35"),
        hv("cpu_features", "pmu=off"),
        hv("disable_vhost_net", "false"),
        hv("use_vsock", "true"),
        hv("pcie_root_port", "2"),
        other("runtime.disable_guest_seccomp", "true"),
        other("runtime.sandbox_cgroup_only", "true"),
        other("runtime.internetworking_model", "tcfilter"),
        other(
            "agent.kernel_modules",
            "e1000e InterruptThrottleRate=3000;i915",
        ),
        other("agent.enable_tracing", "false"),
        other("agent.container_pipe_size", "4096"),
    ];
    assert_eq!(pairs.len(), 40);
    pairs.into_iter().collect()
}

fn bench(c: &mut Criterion) {
    let config: Config = toml::from_str(CONFIG).unwrap_or_else(|e| panic!("{e}"));
    let runtime = config.runtime_config().unwrap_or_else(|e| panic!("{e}"));
    let mut spec = Spec::default();
    spec.set_annotations(Some(annotations()));
    let bundle = Path::new("/run/containerd/io.containerd.runtime.v2.task/k8s.io/pod");
    // The spec must convert before it is measured.
    if let Err(e) = sandbox_config(&spec, &runtime, bundle, "pod") {
        panic!("{e}");
    }
    c.bench_function("sandbox_config_40_annotations", |b| {
        b.iter(|| sandbox_config(black_box(&spec), black_box(&runtime), bundle, "pod"))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
