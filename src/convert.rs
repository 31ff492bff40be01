//! The `convert` command: a bundle's `config.json` -> the sandbox or container configuration,
//! as JSON.

use std::path::Path;

use oci_spec::runtime::Spec;
use serde_json::{json, Value};

use crate::config::Config;
use crate::oci::{self, ContainerType};

/// Converts `bundle/config.json` with the configuration found from `config` (see
/// [`Config::load`]). `id` defaults to the bundle directory's name.
///
/// A sandbox (CRI sandbox or standalone container) gives
/// `{"kind":"sandbox","sandbox":{...}}`, a pod container
/// `{"kind":"container","sandbox_id":"...","container":{...}}`. The error is one line naming the
/// field or annotation and the accepted values.
pub fn convert(bundle: &Path, config: Option<&Path>, id: Option<&str>) -> Result<Value, String> {
    one_line(run(bundle, config, id))
}

fn one_line<T>(result: Result<T, String>) -> Result<T, String> {
    result.map_err(|e| e.replace(['\n', '\r'], " "))
}

fn run(bundle: &Path, config: Option<&Path>, id: Option<&str>) -> Result<Value, String> {
    let bundle = bundle
        .canonicalize()
        .map_err(|e| format!("bundle {}: {e}", bundle.display()))?;
    let spec = read_spec(&bundle.join("config.json"))?;
    let runtime = Config::load(config)
        .and_then(|c| c.runtime_config())
        .map_err(|e| e.to_string())?;
    let id = match id {
        Some(id) => id.to_owned(),
        None => bundle_name(&bundle)?,
    };
    let err = |e: oci::Error| e.to_string();
    let value = match oci::container_type(&spec).map_err(err)? {
        ContainerType::PodSandbox => {
            let sandbox = oci::sandbox_config(&spec, &runtime, &bundle, &id).map_err(err)?;
            json!({ "kind": "sandbox", "sandbox": sandbox })
        }
        ContainerType::PodContainer => {
            let sandbox_id = oci::sandbox_id(&spec).map_err(err)?;
            let container = oci::container_config(&spec, &bundle, &id).map_err(err)?;
            json!({ "kind": "container", "sandbox_id": sandbox_id, "container": container })
        }
    };
    Ok(value)
}

fn read_spec(path: &Path) -> Result<Spec, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bundle = path.parent().unwrap_or(path);
    oci::parse_spec(&text).map_err(|e| format!("bundle {}: {e}", bundle.display()))
}

fn bundle_name(bundle: &Path) -> Result<String, String> {
    bundle
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            format!(
                "bundle {}: no directory name to use as id (pass --id)",
                bundle.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    const SANDBOX: &str = r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
        "process":{"user":{"uid":0,"gid":0},"args":["/pause"],"cwd":"/"},
        "linux":{"namespaces":[{"type":"network","path":"/run/netns/cni-1"}]},
        "annotations":{"io.kubernetes.cri.container-type":"sandbox",
                       "io.katacontainers.config.hypervisor.default_memory":"512"}}"#;

    fn bundle(spec: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let bundle = dir.path().join("pod-1");
        std::fs::create_dir(&bundle).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(bundle.join("config.json"), spec).unwrap_or_else(|e| panic!("{e}"));
        let config = dir.path().join("configuration.toml");
        std::fs::write(&config, "").unwrap_or_else(|e| panic!("{e}"));
        (dir, bundle)
    }

    fn config_of(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("configuration.toml")
    }

    #[test]
    fn sandbox_output() {
        let (dir, bundle) = bundle(SANDBOX);
        let value =
            convert(&bundle, Some(&config_of(&dir)), None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(value["kind"], "sandbox");
        let sandbox = &value["sandbox"];
        assert_eq!(sandbox["id"], "pod-1");
        assert_eq!(sandbox["hypervisor_config"]["memory_size"], 512);
        assert_eq!(sandbox["network_config"]["net_ns_path"], "/run/netns/cni-1");
        let target = sandbox["containers"][0]["rootfs"]["target"]
            .as_str()
            .unwrap_or_default();
        assert!(target.ends_with("pod-1/rootfs"), "{target}");
        assert_eq!(sandbox["containers"][0]["cmd"]["args"][0], "/pause");
    }

    #[test]
    fn container_output() {
        let spec = SANDBOX.replace("\"sandbox\"", "\"container\"").replace(
            "\"io.katacontainers",
            "\"io.kubernetes.cri.sandbox-id\":\"pod-0\",\"io.katacontainers",
        );
        let (dir, bundle) = bundle(&spec);
        let value =
            convert(&bundle, Some(&config_of(&dir)), Some("ctr")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(value["kind"], "container");
        assert_eq!(value["sandbox_id"], "pod-0");
        assert_eq!(value["container"]["id"], "ctr");
        assert_eq!(
            value["container"]["annotations"]["io.katacontainers.pkg.oci.container_type"],
            "pod_container"
        );
    }

    #[test]
    fn errors_are_one_line() {
        let (dir, bundle) = bundle(&SANDBOX.replace("\"512\"", "\"12\""));
        let e = convert(&bundle, Some(&config_of(&dir)), None)
            .err()
            .unwrap_or_default();
        assert!(e.contains("default_memory") && e.contains("256..="), "{e}");
        let (dir, bundle) = bundle_with_bad_json();
        let e = convert(&bundle, Some(&config_of(&dir)), None)
            .err()
            .unwrap_or_default();
        assert!(e.contains("config.json") && !e.contains('\n'), "{e}");
        std::fs::write(config_of(&dir), "[runtime]\nsandbox_backend = \"xen\"\n")
            .unwrap_or_default();
        std::fs::write(bundle.join("config.json"), SANDBOX).unwrap_or_default();
        let e = convert(&bundle, Some(&config_of(&dir)), None)
            .err()
            .unwrap_or_default();
        assert!(
            e.contains("runtime.sandbox_backend") && !e.contains('\n'),
            "{e}"
        );
        let e = convert(Path::new("/nonexistent/bundle"), None, None)
            .err()
            .unwrap_or_default();
        assert!(e.contains("/nonexistent/bundle"), "{e}");
    }

    fn bundle_with_bad_json() -> (tempfile::TempDir, PathBuf) {
        bundle("{\"process\": {\n\"cwd\": 3}}")
    }

    #[test]
    fn one_line_flattens() {
        assert_eq!(one_line::<()>(Err("a\nb\rc".into())), Err("a b c".into()));
    }
}
