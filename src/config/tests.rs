//! The configuration file: shipped defaults, strictness, lookup and value rules.

use std::path::{Path, PathBuf};

use super::*;
use crate::oci::{InterworkingModel, SharedFs};

const SHIPPED: &str = include_str!("../../config/configuration.toml");

fn parse(text: &str) -> Result<Config, String> {
    load::parse(text, Path::new("test.toml")).map_err(|e| e.to_string())
}

fn file_with(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("configuration.toml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    (dir, path)
}

fn file_error(text: &str) -> String {
    let (_dir, path) = file_with(text);
    match Config::from_file(&path) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("configuration.toml"), "{e}");
            assert!(!e.contains('\n'), "{e}");
            e
        }
    }
}

#[test]
fn shipped_config_equals_the_built_in_defaults() {
    let shipped = parse(SHIPPED).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(shipped, Config::default());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/configuration.toml");
    let loaded = Config::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded, Config::default());
}

#[test]
fn defaults() {
    let c = Config::default();
    assert_eq!(c.runtime.sandbox_backend, SandboxBackend::Linux);
    assert_eq!(c.runtime.oci_runtime, "runc");
    assert!(!c.runtime.enable_debug);
    assert_eq!(c.hypervisor.qemu.kernel, "/usr/share/vessel/vmlinux");
    assert_eq!(c.hypervisor.qemu.initrd, "/usr/share/vessel/initramfs.img");
    assert!(c.hypervisor.qemu.enable_annotations.is_empty());
    let rt = c.runtime_config().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rt.hypervisor_config.memory_size, 2048);
    assert_eq!(rt.hypervisor_config.num_vcpus, 1);
    assert!(rt.hypervisor_config.default_max_vcpus >= 1);
    assert!(rt.hypervisor_config.mlock);
    assert_eq!(rt.hypervisor_config.shared_fs, SharedFs::VirtioFs);
    assert_eq!(rt.inter_network_model, InterworkingModel::TcFilter);
    assert!(rt.disable_guest_seccomp);
    assert_eq!(rt.agent_config.dial_timeout, 30);
    assert_eq!(rt.factory_config.template_path, "/run/vessel/vm/template");
    assert_eq!(rt.annotation_policy.valid_entropy_sources.len(), 2);
}

#[test]
fn empty_and_partial_files_fall_back_per_key() {
    assert_eq!(parse("").ok(), Some(Config::default()));
    let c = parse("[runtime]\noci_runtime = \"crun\"\nsandbox_backend = \"vm\"\n")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.runtime.oci_runtime, "crun");
    assert_eq!(c.runtime.sandbox_backend, SandboxBackend::Vm);
    assert_eq!(c.hypervisor, HypervisorTable::default());
}

#[test]
fn unknown_keys_name_the_key() {
    let e = file_error("[runtime]\nsandbox_backnd = \"vm\"\n");
    assert!(
        e.contains(":2: runtime.sandbox_backnd") && e.contains("unknown field `sandbox_backnd`"),
        "{e}"
    );
    let e = file_error("[hypervisor.qemu]\ndefault_memroy = 512\n");
    assert!(e.contains("hypervisor.qemu.default_memroy"), "{e}");
    let e = file_error("[hypervisor.firecracker]\npath = \"/x\"\n");
    assert!(e.contains("firecracker"), "{e}");
    let e = file_error("[agent.vessel]\ntrace = true\n");
    assert!(e.contains("agent.vessel.trace"), "{e}");
    let e = file_error("[factory]\ntemplate = true\n");
    assert!(e.contains("factory.template"), "{e}");
    let e = file_error("[nonsense]\n");
    assert!(e.contains("nonsense"), "{e}");
}

#[test]
fn invalid_values_name_the_field_and_accepted_values() {
    let e = file_error("[runtime]\nsandbox_backend = \"xen\"\n");
    assert!(
        e.contains("runtime.sandbox_backend") && e.contains("`linux`") && e.contains("`vm`"),
        "{e}"
    );
    let e = file_error("[hypervisor.qemu]\nshared_fs = \"nfs\"\n");
    assert!(
        e.contains("hypervisor.qemu.shared_fs") && e.contains("virtio-9p"),
        "{e}"
    );
    let e = file_error("[hypervisor.qemu]\nblock_device_driver = \"ide\"\n");
    assert!(
        e.contains("block_device_driver") && e.contains("virtio-blk-ccw"),
        "{e}"
    );
    let e = file_error("[runtime]\ninternetworking_model = \"bridge\"\n");
    assert!(
        e.contains("internetworking_model") && e.contains("tcfilter"),
        "{e}"
    );
    let e = file_error("[hypervisor.qemu]\ndefault_memory = -1\n");
    assert!(e.contains("hypervisor.qemu.default_memory"), "{e}");
    let e = file_error("[runtime]\nenable_debug = \"yes\"\n");
    assert!(e.contains("runtime.enable_debug"), "{e}");
    let e = file_error("[runtime\n");
    assert!(e.contains(":1:"), "{e}");
}

#[test]
fn rules_checked_after_parsing() {
    let cases = [
        (
            "[hypervisor.qemu]\ndefault_memory = 255\n",
            "hypervisor.qemu.default_memory",
            "256",
        ),
        (
            "[hypervisor.qemu]\nmsize_9p = 0\n",
            "hypervisor.qemu.msize_9p",
            "1..",
        ),
        (
            "[hypervisor.qemu]\nvirtio_fs_daemon = \"\"\n",
            "hypervisor.qemu.virtio_fs_daemon",
            "virtio-fs",
        ),
        (
            "[hypervisor.qemu]\nkernel_params = \"a =b\"\n",
            "hypervisor.qemu.kernel_params",
            "empty name",
        ),
        (
            "[hypervisor.qemu]\nenable_annotations = [\"kernel_parms\"]\n",
            "hypervisor.qemu.enable_annotations",
            "kernel_parms",
        ),
        (
            "[hypervisor.qemu]\nvalid_kernel_paths = [\"/a/[\"]\n",
            "hypervisor.qemu.valid_kernel_paths",
            "invalid glob",
        ),
        (
            "[runtime]\nexperimental = [\"warp\"]\n",
            "runtime.experimental",
            "vm_backend",
        ),
        (
            "[runtime]\noci_runtime = \"\"\n",
            "runtime.oci_runtime",
            "PATH",
        ),
        (
            "[runtime]\noci_runtime = \"bin/runc\"\n",
            "runtime.oci_runtime",
            "absolute",
        ),
    ];
    for (text, key, accepted) in cases {
        let e = file_error(text);
        assert!(e.contains(key) && e.contains(accepted), "{text}: {e}");
    }
}

#[test]
fn valid_settings_reach_the_runtime_config() {
    let text = "[hypervisor.qemu]\nshared_fs = \"virtio-9p\"\nvirtio_fs_daemon = \"\"\n\
                kernel_params = \"quiet a=b\"\nenable_swap = true\ndefault_vcpus = 0\n\
                enable_annotations = [\"kernel\", \"runtime.experimental\", \"io.katacontainers.config.agent.trace_mode\"]\n\
                [runtime]\nexperimental = [\"vm_backend\"]\noci_runtime = \"/usr/local/bin/crun\"\n\
                [agent.vessel]\nkernel_modules = [\"i915\"]\n[factory]\nvm_cache_number = 0\n";
    let c = parse(text).unwrap_or_else(|e| panic!("{e}"));
    let rt = c.runtime_config().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rt.hypervisor_config.kernel_params.len(), 2);
    assert!(!rt.hypervisor_config.mlock);
    assert_eq!(rt.hypervisor_config.num_vcpus, 1);
    assert_eq!(rt.experimental.len(), 1);
    assert_eq!(rt.agent_config.kernel_modules, ["i915"]);
    assert_eq!(rt.factory_config.vm_cache_number, 0);
    assert_eq!(rt.annotation_policy.enable_annotations.len(), 3);
}

#[test]
fn what_the_factory_cannot_do_is_refused_not_ignored() {
    let e = file_error("[factory]\nvm_cache_number = 3\n");
    assert!(
        e.contains("factory.vm_cache_number")
            && e.contains("accepted: 0")
            && e.contains("enable_template"),
        "{e}"
    );
    let template =
        "[factory]\nenable_template = true\n[hypervisor.qemu]\nshared_fs = \"virtio-9p\"\n";
    let (_dir, path) = file_with(template);
    let rt = Config::from_file(&path).unwrap().runtime_config().unwrap();
    assert!(rt.factory_config.template);
    for (setting, key) in [
        ("shared_fs = \"virtio-fs\"", "hypervisor.qemu.shared_fs"),
        (
            "shared_fs = \"virtio-9p\"\nenable_mem_prealloc = true",
            "enable_mem_prealloc",
        ),
        (
            "shared_fs = \"virtio-9p\"\nenable_hugepages = true",
            "enable_hugepages",
        ),
    ] {
        let text = format!("[factory]\nenable_template = true\n[hypervisor.qemu]\n{setting}\n");
        let e = file_error(&text);
        assert!(
            e.contains(key) && e.contains("factory.enable_template") && e.contains("accepted"),
            "{e}"
        );
    }
    let e = file_error("[factory]\nenable_template = true\ntemplate_path = \"tpl\"\n[hypervisor.qemu]\nshared_fs = \"virtio-9p\"\n");
    assert!(e.contains("factory.template_path"), "{e}");
}

#[test]
fn missing_explicit_file_is_an_error() {
    let e = Config::load(Some(Path::new("/nonexistent/vessel.toml")))
        .err()
        .map(|e| e.to_string());
    assert!(e.unwrap_or_default().contains("/nonexistent/vessel.toml"));
}

#[test]
fn explicit_file_is_used() {
    let (_dir, path) = file_with("[runtime]\noci_runtime = \"crun\"\n");
    let c = Config::load(Some(&path)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.runtime.oci_runtime, "crun");
}

#[test]
fn oci_runtime_binary_lookup() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let bin = dir.path().join("fake-runc");
    std::fs::write(&bin, "#!/bin/sh\n").unwrap_or_else(|e| panic!("{e}"));
    let mut section = RuntimeSection {
        oci_runtime: bin.to_string_lossy().into_owned(),
        ..RuntimeSection::default()
    };
    assert!(section.oci_runtime_binary().is_err(), "not executable");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(section.oci_runtime_binary().ok(), Some(bin));
    section.oci_runtime = "sh".into();
    assert!(section.oci_runtime_binary().is_ok_and(|p| p.is_absolute()));
    section.oci_runtime = "no-such-runtime-vessel".into();
    let e = section
        .oci_runtime_binary()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("runtime.oci_runtime"), "{e}");
}
