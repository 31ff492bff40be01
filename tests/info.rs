//! `containerd-shim-vessel-v2 -info`: the `RuntimeInfo` containerd 2.x reads (runtime options
//! on stdin, the protobuf on stdout) before it runs a spec with idmap or recursive read-only
//! mounts: the OCI runtime's features for the configuration the options name, and the
//! annotations the shim honours. No containerd needed.

mod common;

use std::{
    io::Write,
    process::{Command, Stdio},
};

use containerd_shim_protos::{
    protobuf::{well_known_types::any::Any, Message},
    types::introspection::RuntimeInfo,
};
use serde_json::Value;

/// containerd's CRI runtime options (`runtimeoptions.v1.Options`) naming `config_path`.
fn runtime_options(config_path: &str) -> Vec<u8> {
    let mut value = vec![0x12, config_path.len() as u8];
    value.extend_from_slice(config_path.as_bytes());
    Any {
        type_url: "runtimeoptions.v1.Options".into(),
        value,
        ..Default::default()
    }
    .write_to_bytes()
    .unwrap()
}

/// Runs `-info` with `stdin`; the RuntimeInfo, or the failure's stderr.
fn info(stdin: &[u8]) -> Result<RuntimeInfo, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_containerd-shim-vessel-v2"))
        .arg("-info")
        .env_remove("VESSEL_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the shim");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(RuntimeInfo::parse_from_bytes(&out.stdout).expect("a RuntimeInfo protobuf"))
}

fn features(info: &RuntimeInfo) -> Value {
    assert!(
        info.features
            .type_url
            .ends_with("runtime-spec/1/features/Features"),
        "{}",
        info.features.type_url
    );
    serde_json::from_slice(&info.features.value).expect("features are JSON")
}

#[test]
fn info_reports_the_linux_backends_runtime_and_the_annotations_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("configuration.toml");
    std::fs::write(&config, "[runtime]\noci_runtime = \"runc\"\n").unwrap();
    let info = info(&runtime_options(config.to_str().unwrap())).expect("-info");
    assert_eq!(info.name, "io.containerd.vessel.v2");
    assert_eq!(info.version.version, env!("CARGO_PKG_VERSION"));
    let runc: Value = serde_json::from_slice(
        &Command::new("runc")
            .arg("features")
            .output()
            .expect("runc features")
            .stdout,
    )
    .unwrap();
    assert_eq!(features(&info), runc, "runc's own features document");
    let takes = |key: &str| info.annotations.get(key).cloned().unwrap_or_default();
    assert_eq!(
        takes("io.katacontainers.config.hypervisor.default_memory"),
        "unsigned integer"
    );
    assert!(takes("io.katacontainers.config.hypervisor.kernel").contains("enable_annotations"));
}

#[test]
fn info_reports_what_the_guest_runtime_can_do_in_a_vm() {
    let config = common::containerd_dir().join("vessel-vm.toml");
    let info = info(&runtime_options(config.to_str().unwrap())).expect("-info (vm)");
    let features = features(&info);
    assert_eq!(features["ociVersionMin"], "1.0.0");
    assert_eq!(
        features["linux"]["mountExtensions"]["idmap"]["enabled"], false,
        "no idmap mounts of host directories in a VM"
    );
    assert_eq!(
        features["hooks"],
        Value::Array(Vec::new()),
        "no hooks in the guest"
    );
    let options = features["mountOptions"].as_array().expect("mount options");
    assert!(
        options.iter().any(|o| o == "rro"),
        "recursive read-only mounts"
    );
}

#[test]
fn info_names_a_bad_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("configuration.toml");
    std::fs::write(&config, "[runtime]\nsandbox_backend = \"xen\"\n").unwrap();
    let error = info(&runtime_options(config.to_str().unwrap())).unwrap_err();
    assert!(error.contains("runtime.sandbox_backend"), "{error}");
    let error = info(b"\xff\xff").unwrap_err();
    assert!(error.contains("runtime options"), "{error}");
}
