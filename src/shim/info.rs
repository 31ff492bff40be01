//! `-info`: what containerd 2.x asks a runtime before it runs a spec that needs a feature not
//! every runtime has (idmap mounts, recursive read-only mounts): a `RuntimeInfo` protobuf on
//! stdout, for the configuration containerd's runtime options name (read from stdin).
//!
//! - `features`: the OCI runtime's own features document (runtime-spec `features.md`): on the
//!   linux backend `<oci_runtime> features`; on the vm backend the guest's crun's, recorded
//!   beside the guest image by `make guest`, less what a VM cannot do (idmap mounts of host
//!   directories, hooks, which the guest does not run, AppArmor and SELinux labels).
//! - `annotations`: every annotation the shim honours, with what it takes.

use std::{path::Path, process::Command};

use containerd_shim_protos::{
    protobuf::{well_known_types::any::Any, Message},
    types::introspection::{RuntimeInfo, RuntimeVersion},
};
use serde_json::Value;

use super::{bundle, RUNTIME_ID};
use crate::config::{Config, SandboxBackend};
use crate::oci::annotations;

/// The type containerd decodes a features document as (JSON, by typeurl's registry).
const FEATURES_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/features/Features";
/// The file beside the guest image holding the guest runtime's features.
pub const GUEST_FEATURES_FILE: &str = "runtime-features.json";

/// The encoded `RuntimeInfo` for the runtime options containerd sent (`options`, possibly
/// empty).
pub fn runtime_info(options: &[u8]) -> Result<Vec<u8>, String> {
    let options = if options.is_empty() {
        None
    } else {
        Some(Any::parse_from_bytes(options).map_err(|e| format!("runtime options: {e}"))?)
    };
    let path = bundle::config_path(options.as_ref());
    let config = Config::load(path.as_deref().map(Path::new)).map_err(|e| e.to_string())?;
    let features = features(&config)?;
    let info = RuntimeInfo {
        name: RUNTIME_ID.to_string(),
        version: Some(RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
        .into(),
        options: options.into(),
        features: Some(Any {
            type_url: FEATURES_TYPE.to_string(),
            value: serde_json::to_vec(&features).map_err(|e| e.to_string())?,
            ..Default::default()
        })
        .into(),
        annotations: annotations::honoured()
            .map(|(key, takes)| (key.to_string(), takes.to_string()))
            .collect(),
        ..Default::default()
    };
    info.write_to_bytes().map_err(|e| e.to_string())
}

/// The features document of the configured backend's OCI runtime.
fn features(config: &Config) -> Result<Value, String> {
    match config.runtime.sandbox_backend {
        SandboxBackend::Linux => {
            let binary = config
                .runtime
                .oci_runtime_binary()
                .map_err(|e| e.to_string())?;
            let out = Command::new(&binary)
                .arg("features")
                .output()
                .map_err(|e| format!("{} features: {e}", binary.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "{} features: {}: {}",
                    binary.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            parse(&out.stdout, &binary.display().to_string())
        }
        SandboxBackend::Vm => {
            let initrd = &config.hypervisor.qemu.initrd;
            let file = Path::new(initrd)
                .parent()
                .unwrap_or(Path::new("/"))
                .join(GUEST_FEATURES_FILE);
            let text = std::fs::read(&file).map_err(|e| {
                format!(
                    "{}: {e} (written beside the guest image by make guest)",
                    file.display()
                )
            })?;
            let mut features = parse(&text, &file.display().to_string())?;
            in_a_vm(&mut features);
            Ok(features)
        }
    }
}

/// A features document (a JSON object) from `text`, said by `origin`.
fn parse(text: &[u8], origin: &str) -> Result<Value, String> {
    match serde_json::from_slice(text) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err(format!(
            "{origin}: the features document is not a JSON object"
        )),
        Err(e) => Err(format!("{origin}: features: {e}")),
    }
}

/// What the guest runtime can do, less what it cannot do inside a VM sandbox.
fn in_a_vm(features: &mut Value) {
    features["hooks"] = Value::Array(Vec::new());
    let linux = &mut features["linux"];
    for (path, value) in [
        ("/mountExtensions/idmap/enabled", false),
        ("/apparmor/enabled", false),
        ("/selinux/enabled", false),
        ("/intelRdt/enabled", false),
    ] {
        if let Some(field) = linux.pointer_mut(path) {
            *field = Value::Bool(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_takes_away_what_the_guest_cannot_do() {
        let mut features = parse(
            br#"{"ociVersionMin":"1.0.0","ociVersionMax":"1.2.1","hooks":["prestart"],
                 "linux":{"mountExtensions":{"idmap":{"enabled":true}},
                          "apparmor":{"enabled":true},"selinux":{"enabled":true},
                          "namespaces":["pid","network"]}}"#,
            "crun",
        )
        .unwrap();
        in_a_vm(&mut features);
        assert_eq!(features["ociVersionMax"], "1.2.1");
        assert_eq!(features["hooks"], Value::Array(Vec::new()));
        assert_eq!(
            features["linux"]["mountExtensions"]["idmap"]["enabled"],
            false
        );
        assert_eq!(features["linux"]["apparmor"]["enabled"], false);
        assert_eq!(features["linux"]["selinux"]["enabled"], false);
        assert_eq!(features["linux"]["namespaces"][1], "network");
    }

    #[test]
    fn a_features_document_must_be_an_object() {
        assert!(parse(b"[1]", "runc")
            .unwrap_err()
            .contains("not a JSON object"));
        assert!(parse(b"{", "runc").unwrap_err().contains("runc: features"));
    }
}
