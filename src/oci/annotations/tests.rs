//! Every annotation key: valid values, each kind of invalid value, boundaries, and the policy.

use std::collections::BTreeSet;
use std::path::Path;

use glob::Pattern;

use super::*;
use crate::oci::{
    host_cpus, max_qemu_vcpus, sandbox_config, BlockDeviceDriver, InterworkingModel, Param,
    RuntimeConfig, SandboxConfig, SharedFs, VirtioFsCache,
};

const HV: &str = "io.katacontainers.config.hypervisor.";
const RT: &str = "io.katacontainers.config.runtime.";
const AG: &str = "io.katacontainers.config.agent.";

fn base_runtime() -> RuntimeConfig {
    let mut runtime = RuntimeConfig::default();
    runtime.hypervisor_config.virtio_fs_daemon = "/usr/libexec/virtiofsd".into();
    runtime.hypervisor_config.memory_size = 2048;
    runtime.hypervisor_config.mem_slots = 10;
    runtime
}

fn globs(list: &[&str]) -> Vec<Pattern> {
    list.iter().filter_map(|g| Pattern::new(g).ok()).collect()
}

/// A runtime whose policy enables every key and allows `/ok/*` for every path list.
fn permissive() -> RuntimeConfig {
    let mut runtime = base_runtime();
    let ok = globs(&["/ok/*"]);
    runtime.annotation_policy = AnnotationPolicy {
        enable_annotations: keys().map(str::to_owned).collect(),
        valid_hypervisor_paths: ok.clone(),
        valid_kernel_paths: ok.clone(),
        valid_image_paths: ok.clone(),
        valid_initrd_paths: ok.clone(),
        valid_firmware_paths: ok.clone(),
        valid_virtio_fs_daemon_paths: ok.clone(),
        valid_file_mem_backends: ok.clone(),
        valid_entropy_sources: ok,
    };
    runtime
}

use crate::oci::spec_with_annotations as spec_with;

fn convert(runtime: &RuntimeConfig, pairs: &[(&str, &str)]) -> Result<SandboxConfig, String> {
    sandbox_config(&spec_with(pairs), runtime, Path::new("/bundle"), "sb")
        .map_err(|e| e.to_string())
}

fn ok(runtime: &RuntimeConfig, key: &str, value: &str) -> SandboxConfig {
    match convert(runtime, &[(key, value)]) {
        Ok(sandbox) => sandbox,
        Err(e) => panic!("{key}={value:?} rejected: {e}"),
    }
}

fn rejected(runtime: &RuntimeConfig, key: &str, value: &str) -> String {
    match convert(runtime, &[(key, value)]) {
        Ok(_) => panic!("{key}={value:?} accepted"),
        Err(e) => {
            assert!(
                e.contains(key),
                "{key}={value:?}: error does not name the key: {e}"
            );
            assert!(!e.contains('\n'), "{e}");
            e
        }
    }
}

fn sha() -> String {
    "ab".repeat(64)
}

/// One valid value for every key, and invalid values where the key has any.
fn cases() -> Vec<(String, String, Vec<String>)> {
    let s = |v: &str| v.to_owned();
    let bad_bool = vec![s("yes"), s(""), s("tRue")];
    let bad_u32 = vec![s("-1"), s("abc"), s("4294967296"), s(" 1"), s("+1")];
    let bad_path = vec![
        s("/elsewhere/x"),
        s("relative"),
        s("/ok/../etc/shadow"),
        s("/ok/a/b"),
        s(""),
    ];
    let mut out = Vec::new();
    let mut add = |key: String, valid: &str, invalid: &[String]| {
        out.push((key, valid.to_owned(), invalid.to_vec()))
    };
    for k in [
        "kernel",
        "image",
        "initrd",
        "firmware",
        "path",
        "jailer_path",
        "virtio_fs_daemon",
        "file_mem_backend",
        "entropy_source",
    ] {
        add(format!("{HV}{k}"), "/ok/file", &bad_path);
    }
    for k in [
        "kernel_hash",
        "image_hash",
        "initrd_hash",
        "firmware_hash",
        "hypervisor_hash",
        "jailer_hash",
    ] {
        add(
            format!("{HV}{k}"),
            &sha(),
            &[s("abc"), "zz".repeat(64), s("")],
        );
    }
    add(
        s("io.katacontainers.asset_hash_type"),
        "sha512",
        &[s("sha256"), s("")],
    );
    add(format!("{HV}default_vcpus"), "1", &bad_u32);
    add(format!("{HV}default_max_vcpus"), "1", &bad_u32);
    add(
        format!("{HV}default_memory"),
        "256",
        &[s("255"), s("0"), s("x"), s("-256")],
    );
    for k in [
        "memory_slots",
        "memory_offset",
        "virtio_fs_cache_size",
        "pcie_root_port",
    ] {
        add(format!("{HV}{k}"), "7", &bad_u32);
    }
    add(format!("{HV}msize_9p"), "1", &[s("0"), s("x"), s("-1")]);
    add(format!("{AG}container_pipe_size"), "4096", &bad_u32);
    for k in [
        "enable_virtio_mem",
        "enable_mem_prealloc",
        "enable_swap",
        "enable_hugepages",
        "disable_block_device_use",
        "enable_iothreads",
        "block_device_cache_set",
        "block_device_cache_direct",
        "block_device_cache_noflush",
        "disable_vhost_net",
        "use_vsock",
        "disable_image_nvdimm",
        "hotplug_vfio_on_root_bus",
    ] {
        add(format!("{HV}{k}"), "true", &bad_bool);
    }
    for k in [
        "disable_guest_seccomp",
        "sandbox_cgroup_only",
        "disable_new_netns",
    ] {
        add(format!("{RT}{k}"), "false", &bad_bool);
    }
    add(format!("{AG}enable_tracing"), "1", &bad_bool);
    add(
        format!("{HV}block_device_driver"),
        "virtio-blk",
        &[s("ide"), s(""), s("VIRTIO-BLK")],
    );
    add(format!("{HV}shared_fs"), "virtio-9p", &[s("nfs"), s("")]);
    add(format!("{HV}virtio_fs_cache"), "none", &[s("never"), s("")]);
    add(
        format!("{RT}internetworking_model"),
        "macvtap",
        &[s("bridge"), s("")],
    );
    add(
        format!("{RT}experimental"),
        "vm_backend",
        &[s("nope"), s("vm_backend nope")],
    );
    add(
        format!("{HV}kernel_params"),
        "quiet a=b",
        &[s("=x"), s("ok =y")],
    );
    add(
        format!("{AG}kernel_modules"),
        "e1000e InterruptThrottleRate=3000;i915",
        &[s("a=b")],
    );
    for k in [
        "machine_type",
        "machine_accelerators",
        "cpu_features",
        "guest_hook_path",
    ] {
        add(format!("{HV}{k}"), "value", &[]);
    }
    for k in ["trace_mode", "trace_type"] {
        add(format!("{AG}{k}"), "static", &[]);
    }
    out
}

#[test]
fn every_key_has_a_case_and_every_case_behaves() {
    let runtime = permissive();
    let cases = cases();
    let covered: BTreeSet<&str> = cases.iter().map(|(k, _, _)| k.as_str()).collect();
    let all: BTreeSet<&str> = keys().collect();
    assert_eq!(covered, all, "every annotation key needs a case");
    assert_eq!(cases.len(), all.len(), "one case per key");
    for (key, valid, invalid) in &cases {
        ok(&runtime, key, valid);
        for bad in invalid {
            rejected(&runtime, key, bad);
        }
    }
}

#[test]
fn bools_set_their_field() {
    let runtime = permissive();
    type Get = fn(&SandboxConfig) -> bool;
    let fields: [(&str, Get); 17] = [
        ("enable_virtio_mem", |c| c.hypervisor_config.virtio_mem),
        ("enable_mem_prealloc", |c| c.hypervisor_config.mem_prealloc),
        ("enable_swap", |c| !c.hypervisor_config.mlock),
        ("enable_hugepages", |c| c.hypervisor_config.huge_pages),
        ("disable_block_device_use", |c| {
            c.hypervisor_config.disable_block_device_use
        }),
        ("enable_iothreads", |c| c.hypervisor_config.enable_iothreads),
        ("block_device_cache_set", |c| {
            c.hypervisor_config.block_device_cache_set
        }),
        ("block_device_cache_direct", |c| {
            c.hypervisor_config.block_device_cache_direct
        }),
        ("block_device_cache_noflush", |c| {
            c.hypervisor_config.block_device_cache_noflush
        }),
        ("disable_vhost_net", |c| {
            c.hypervisor_config.disable_vhost_net
        }),
        ("use_vsock", |c| c.hypervisor_config.use_vsock),
        ("disable_image_nvdimm", |c| {
            c.hypervisor_config.disable_image_nvdimm
        }),
        ("hotplug_vfio_on_root_bus", |c| {
            c.hypervisor_config.hotplug_vfio_on_root_bus
        }),
        ("../runtime.disable_guest_seccomp", |c| {
            c.disable_guest_seccomp
        }),
        ("../runtime.sandbox_cgroup_only", |c| c.sandbox_cgroup_only),
        ("../runtime.disable_new_netns", |c| {
            c.network_config.disable_new_netns
        }),
        ("../agent.enable_tracing", |c| c.agent_config.trace),
    ];
    for (suffix, get) in fields {
        let key = match suffix.strip_prefix("../") {
            Some(rest) => format!("io.katacontainers.config.{rest}"),
            None => format!("{HV}{suffix}"),
        };
        for (text, want) in [
            ("true", true),
            ("T", true),
            ("1", true),
            ("false", false),
            ("F", false),
            ("0", false),
        ] {
            assert_eq!(get(&ok(&runtime, &key, text)), want, "{key}={text}");
        }
    }
}

#[test]
fn u32_boundaries() {
    let runtime = permissive();
    let host = host_cpus();
    let vcpus = format!("{HV}default_vcpus");
    assert_eq!(
        ok(&runtime, &vcpus, &host.to_string())
            .hypervisor_config
            .num_vcpus,
        host
    );
    assert_eq!(ok(&runtime, &vcpus, "0").hypervisor_config.num_vcpus, 0);
    let e = rejected(&runtime, &vcpus, &(host + 1).to_string());
    assert!(e.contains(&format!("0..={host}")), "{e}");

    let max = format!("{HV}default_max_vcpus");
    let top = host.min(max_qemu_vcpus());
    assert_eq!(
        ok(&runtime, &max, &top.to_string())
            .hypervisor_config
            .default_max_vcpus,
        top
    );
    let e = rejected(&runtime, &max, &(top + 1).to_string());
    assert!(
        e.contains("default_max_vcpus") && !e.contains("default_maxvcpus"),
        "{e}"
    );
    rejected(&runtime, &max, "241");

    let mem = format!("{HV}default_memory");
    assert_eq!(ok(&runtime, &mem, "256").hypervisor_config.memory_size, 256);
    assert_eq!(
        ok(&runtime, &mem, "4294967295")
            .hypervisor_config
            .memory_size,
        u32::MAX
    );
    let e = rejected(&runtime, &mem, "255");
    assert!(e.contains("256..=4294967295"), "{e}");

    // memory_slots / memory_offset apply only when > 0.
    let slots = format!("{HV}memory_slots");
    assert_eq!(ok(&runtime, &slots, "0").hypervisor_config.mem_slots, 10);
    assert_eq!(
        ok(&runtime, &slots, "4294967295")
            .hypervisor_config
            .mem_slots,
        u32::MAX
    );
    let offset = format!("{HV}memory_offset");
    assert_eq!(ok(&runtime, &offset, "0").hypervisor_config.mem_offset, 0);
    assert_eq!(ok(&runtime, &offset, "64").hypervisor_config.mem_offset, 64);

    let msize = format!("{HV}msize_9p");
    assert_eq!(
        ok(&runtime, &msize, "4294967295")
            .hypervisor_config
            .msize_9p,
        u32::MAX
    );
    let size = format!("{HV}virtio_fs_cache_size");
    assert_eq!(
        ok(&runtime, &size, "0")
            .hypervisor_config
            .virtio_fs_cache_size,
        0
    );
    let port = format!("{HV}pcie_root_port");
    assert_eq!(ok(&runtime, &port, "3").hypervisor_config.pcie_root_port, 3);
    let pipe = format!("{AG}container_pipe_size");
    assert_eq!(
        ok(&runtime, &pipe, "4294967295")
            .agent_config
            .container_pipe_size,
        u32::MAX
    );
}

#[test]
fn choices_set_their_field_and_list_the_accepted_names() {
    let runtime = permissive();
    for name in BlockDeviceDriver::NAMES {
        let c = ok(&runtime, &format!("{HV}block_device_driver"), name);
        assert_eq!(c.hypervisor_config.block_device_driver.as_str(), *name);
    }
    let e = rejected(&runtime, &format!("{HV}block_device_driver"), "ide");
    assert!(
        e.contains("virtio-scsi, virtio-blk, virtio-mmio, nvdimm, virtio-blk-ccw"),
        "{e}"
    );
    let c = ok(&runtime, &format!("{HV}shared_fs"), "virtio-9p");
    assert_eq!(c.hypervisor_config.shared_fs, SharedFs::Virtio9p);
    for name in VirtioFsCache::NAMES {
        let c = ok(&runtime, &format!("{HV}virtio_fs_cache"), name);
        assert_eq!(c.hypervisor_config.virtio_fs_cache.as_str(), *name);
    }
    for name in InterworkingModel::NAMES {
        let c = ok(&runtime, &format!("{RT}internetworking_model"), name);
        assert_eq!(c.network_config.interworking_model.as_str(), *name);
    }
    let e = rejected(&runtime, &format!("{RT}internetworking_model"), "bridge");
    assert!(e.contains("default, macvtap, tcfilter, none"), "{e}");
}

#[test]
fn text_overrides() {
    let runtime = permissive();
    let mut rt = runtime.clone();
    rt.hypervisor_config.hypervisor_machine_type = "q35".into();
    let c = ok(&rt, &format!("{HV}machine_type"), "");
    assert_eq!(
        c.hypervisor_config.hypervisor_machine_type, "q35",
        "empty does not override"
    );
    let c = ok(&rt, &format!("{HV}machine_type"), "pc");
    assert_eq!(c.hypervisor_config.hypervisor_machine_type, "pc");
    let c = ok(&runtime, &format!("{HV}machine_accelerators"), "nofw");
    assert_eq!(c.hypervisor_config.machine_accelerators, "nofw");
    let c = ok(&runtime, &format!("{HV}cpu_features"), "pmu=off");
    assert_eq!(c.hypervisor_config.cpu_features, "pmu=off");
    let c = ok(&runtime, &format!("{HV}guest_hook_path"), "/hooks");
    assert_eq!(c.hypervisor_config.guest_hook_path, "/hooks");
    let c = ok(&runtime, &format!("{AG}trace_mode"), "dynamic");
    assert_eq!(c.agent_config.trace_mode, "dynamic");
    let c = ok(&runtime, &format!("{AG}trace_type"), "collated");
    assert_eq!(c.agent_config.trace_type, "collated");
}

#[test]
fn kernel_params_append_and_reject_empty_names() {
    let mut runtime = permissive();
    let _ = runtime.add_kernel_param(Param {
        key: "console".into(),
        value: "hvc0".into(),
    });
    let c = ok(&runtime, &format!("{HV}kernel_params"), " quiet  a=b=c ");
    let got: Vec<(&str, &str)> = c
        .hypervisor_config
        .kernel_params
        .iter()
        .map(|p| (p.key.as_str(), p.value.as_str()))
        .collect();
    assert_eq!(got, [("console", "hvc0"), ("quiet", ""), ("a", "b=c")]);
    let e = rejected(&runtime, &format!("{HV}kernel_params"), "=x");
    assert!(e.contains("empty name"), "{e}");
}

#[test]
fn kernel_modules_split_on_semicolons() {
    let runtime = permissive();
    let c = ok(
        &runtime,
        &format!("{AG}kernel_modules"),
        "e1000e InterruptThrottleRate=3000 ; ;i915",
    );
    assert_eq!(
        c.agent_config.kernel_modules,
        ["e1000e InterruptThrottleRate=3000", "i915"]
    );
    let c = ok(&runtime, &format!("{AG}kernel_modules"), "");
    assert!(c.agent_config.kernel_modules.is_empty());
}

#[test]
fn experimental_features_come_from_the_registry() {
    let runtime = permissive();
    let c = ok(&runtime, &format!("{RT}experimental"), "vm_backend");
    let names: Vec<&str> = c.experimental.iter().map(|f| f.name).collect();
    assert_eq!(names, ["vm_backend"]);
    assert!(ok(&runtime, &format!("{RT}experimental"), "")
        .experimental
        .is_empty());
    let e = rejected(&runtime, &format!("{RT}experimental"), "nope");
    assert!(e.contains("\"nope\"") && e.contains("vm_backend"), "{e}");
}

#[test]
fn seed_defect_errors_name_the_real_key() {
    let runtime = base_runtime();
    let e = rejected(&runtime, &format!("{RT}disable_new_netns"), "maybe");
    assert!(!e.contains("experimental"), "{e}");
    let e = rejected(&runtime, &format!("{HV}default_max_vcpus"), "x");
    assert!(!e.contains("maxvcpus"), "{e}");
    let e = rejected(&runtime, &format!("{HV}disable_image_nvdimm"), "x");
    assert!(!e.contains("use_nvdimm"), "{e}");
    let e = rejected(&runtime, &format!("{AG}enable_tracing"), "x");
    assert!(!e.contains("agent.trace:"), "{e}");
}

#[test]
fn assets_are_copied_and_applied() {
    let runtime = permissive();
    let pairs = [
        (format!("{HV}kernel"), "/ok/vmlinuz".to_owned()),
        (format!("{HV}image"), "/ok/image".to_owned()),
        (format!("{HV}initrd"), "/ok/initrd".to_owned()),
        (format!("{HV}firmware"), "/ok/fw".to_owned()),
        (format!("{HV}path"), "/ok/qemu".to_owned()),
        (format!("{HV}jailer_path"), "/ok/jailer".to_owned()),
        (format!("{HV}kernel_hash"), sha()),
        (format!("{HV}jailer_hash"), sha()),
        (
            "io.katacontainers.asset_hash_type".to_owned(),
            "sha512".to_owned(),
        ),
    ];
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let c = convert(&runtime, &refs).unwrap_or_else(|e| panic!("{e}"));
    for (k, v) in &refs {
        assert_eq!(c.annotations.get(*k).map(String::as_str), Some(*v), "{k}");
    }
    let hv = &c.hypervisor_config;
    assert_eq!(
        [
            &hv.kernel_path,
            &hv.image_path,
            &hv.initrd_path,
            &hv.firmware_path,
            &hv.hypervisor_path,
            &hv.jailer_path
        ],
        [
            "/ok/vmlinuz",
            "/ok/image",
            "/ok/initrd",
            "/ok/fw",
            "/ok/qemu",
            "/ok/jailer"
        ]
    );
    assert_eq!(
        c.annotations.get(BUNDLE_PATH_KEY).map(String::as_str),
        Some("/bundle")
    );
    // Non-asset keys are not copied.
    let c = ok(&runtime, &format!("{HV}entropy_source"), "/ok/random");
    assert_eq!(c.hypervisor_config.entropy_source, "/ok/random");
    assert!(!c.annotations.contains_key(&format!("{HV}entropy_source")));
}

#[test]
fn path_annotations_are_denied_by_default() {
    let runtime = base_runtime();
    for key in keys().filter(|k| TABLE.iter().any(|e| e.key == *k && e.path_list().is_some())) {
        let e = rejected(&runtime, key, "/usr/bin/anything");
        assert!(
            e.contains("not enabled") && e.contains("enable_annotations"),
            "{e}"
        );
        let suffix = key.trim_start_matches(HV);
        assert!(e.contains(&format!("\"{suffix}\"")), "{e}");
    }
}

#[test]
fn path_annotation_needs_both_listing_and_glob() {
    let mut runtime = base_runtime();
    runtime.annotation_policy.enable_annotations = vec!["kernel".into(), "virtio_fs_daemon".into()];
    // Listed, but the allow-list is empty.
    let e = rejected(
        &runtime,
        &format!("{HV}kernel"),
        "/usr/share/vessel/vmlinuz",
    );
    assert!(e.contains("valid_kernel_paths"), "{e}");
    runtime.annotation_policy.valid_kernel_paths = globs(&["/usr/share/vessel/vmlinuz*"]);
    let c = ok(
        &runtime,
        &format!("{HV}kernel"),
        "/usr/share/vessel/vmlinuz-6.1",
    );
    assert_eq!(
        c.hypervisor_config.kernel_path,
        "/usr/share/vessel/vmlinuz-6.1"
    );
    for bad in [
        "/usr/share/vessel/vmlinuz/../../../bin/sh",
        "/usr/share/vessel/./vmlinuz",
        "/tmp/vmlinuz",
        "usr/share/vessel/vmlinuz",
    ] {
        let e = rejected(&runtime, &format!("{HV}kernel"), bad);
        assert!(e.contains("valid_kernel_paths"), "{e}");
    }
    // Globbed, but the key is not listed.
    runtime.annotation_policy.valid_initrd_paths = globs(&["/usr/share/vessel/*"]);
    let e = rejected(&runtime, &format!("{HV}initrd"), "/usr/share/vessel/initrd");
    assert!(
        e.contains("\"initrd\"") && e.contains("valid_initrd_paths"),
        "{e}"
    );
    // The daemon list is separate from the hypervisor list.
    runtime.annotation_policy.valid_hypervisor_paths = globs(&["/usr/libexec/*"]);
    rejected(
        &runtime,
        &format!("{HV}virtio_fs_daemon"),
        "/usr/libexec/virtiofsd",
    );
    runtime.annotation_policy.valid_virtio_fs_daemon_paths = globs(&["/usr/libexec/virtiofsd"]);
    ok(
        &runtime,
        &format!("{HV}virtio_fs_daemon"),
        "/usr/libexec/virtiofsd",
    );
}

#[test]
fn enable_annotations_restricts_every_config_key() {
    let mut runtime = base_runtime();
    runtime.annotation_policy.enable_annotations = vec![
        "default_vcpus".into(),
        format!("{RT}sandbox_cgroup_only"),
        "agent.enable_tracing".into(),
    ];
    ok(&runtime, &format!("{HV}default_vcpus"), "1");
    ok(&runtime, &format!("{RT}sandbox_cgroup_only"), "true");
    ok(&runtime, &format!("{AG}enable_tracing"), "true");
    let e = rejected(&runtime, &format!("{HV}default_memory"), "512");
    assert!(
        e.contains("not enabled") && e.contains("\"default_memory\""),
        "{e}"
    );
    let e = rejected(&runtime, &format!("{RT}disable_guest_seccomp"), "true");
    assert!(e.contains("not enabled"), "{e}");
    // Unknown config keys are rejected too; other keys are not config.
    rejected(
        &runtime,
        "io.katacontainers.config.hypervisor.no_such_key",
        "1",
    );
    ok(&runtime, "io.kubernetes.cri.sandbox-name", "x");
    ok(&runtime, "io.katacontainers.asset_hash_type", "sha512");
    // The smallest offending key is reported.
    let e = convert(
        &runtime,
        &[(&format!("{HV}zzz"), "1"), (&format!("{HV}aaa"), "1")],
    );
    assert!(e.err().unwrap_or_default().contains("aaa"));
}

#[test]
fn empty_enable_annotations_ignores_unknown_keys() {
    let runtime = base_runtime();
    ok(
        &runtime,
        "io.katacontainers.config.hypervisor.no_such_key",
        "1",
    );
}

#[test]
fn enable_entries_resolve() {
    assert_eq!(
        resolve_enable_entry("kernel_params"),
        Some("io.katacontainers.config.hypervisor.kernel_params")
    );
    assert_eq!(
        resolve_enable_entry("runtime.experimental"),
        Some("io.katacontainers.config.runtime.experimental")
    );
    assert_eq!(
        resolve_enable_entry(&format!("{AG}trace_mode")),
        Some("io.katacontainers.config.agent.trace_mode")
    );
    assert_eq!(resolve_enable_entry("kernel_param"), None);
    assert_eq!(resolve_enable_entry(""), None);
    assert!(keys().all(|k| k.starts_with(HYPERVISOR_PREFIX)
        || k.starts_with(CONFIG_PREFIX)
        || k == "io.katacontainers.asset_hash_type"));
}

#[test]
fn virtio_fs_needs_a_daemon() {
    let mut runtime = base_runtime();
    runtime.hypervisor_config.virtio_fs_daemon.clear();
    runtime.hypervisor_config.shared_fs = SharedFs::Virtio9p;
    ok(&runtime, "x", "y");
    let e = convert(&runtime, &[(&format!("{HV}shared_fs"), "virtio-fs")]).err();
    assert!(e.unwrap_or_default().contains("virtio_fs_daemon"));
}

#[test]
fn first_failing_key_in_table_order_is_reported() {
    let runtime = base_runtime();
    let e = convert(
        &runtime,
        &[
            (&format!("{AG}enable_tracing"), "x"),
            (&format!("{HV}default_memory"), "1"),
        ],
    );
    assert!(e.err().unwrap_or_default().contains("default_memory"));
}
