//! The bundle containerd hands the shim: its spec, its conversion, and the runtime options that
//! came with it.

use std::path::Path;

use containerd_shim_protos::protobuf::{well_known_types::any::Any, CodedInputStream};
use oci_spec::runtime::Spec;

use crate::oci::{self, ContainerType, RuntimeConfig};

/// Reads `config.json` of the bundle.
pub fn load_spec(bundle: &Path) -> Result<Spec, String> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| format!("bundle spec {}: {e}", path.display()))?;
    oci::parse_spec(&text).map_err(|e| format!("bundle {}: {e}", bundle.display()))
}

/// A bundle as the conversion core makes it.
pub enum Converted {
    /// The pod's sandbox (or a standalone container, a pod of one).
    Sandbox(Box<oci::SandboxConfig>),
    /// A container joining the pod `sandbox_id`.
    Container {
        /// The pod's sandbox id.
        sandbox_id: String,
        /// The container.
        config: Box<oci::ContainerConfig>,
    },
}

/// Runs the bundle through the conversion core: a spec or annotation vessel refuses fails
/// Create with the conversion core's message.
pub fn convert(
    spec: &Spec,
    runtime: &RuntimeConfig,
    bundle: &Path,
    id: &str,
) -> Result<Converted, String> {
    let converted = match oci::container_type(spec).map_err(|e| e.to_string())? {
        ContainerType::PodContainer => oci::container_config(spec, bundle, id).and_then(|config| {
            Ok(Converted::Container {
                sandbox_id: oci::sandbox_id(spec)?,
                config: Box::new(config),
            })
        }),
        _ => {
            oci::sandbox_config(spec, runtime, bundle, id).map(|c| Converted::Sandbox(Box::new(c)))
        }
    };
    converted.map_err(|e| e.to_string())
}

/// The id of the sandbox a bundle belongs to: its pod's sandbox id, or its own id.
pub fn grouping(spec: &Spec, id: &str) -> Result<String, String> {
    match oci::container_type(spec).map_err(|e| e.to_string())? {
        ContainerType::PodContainer => oci::sandbox_id(spec).map_err(|e| e.to_string()),
        _ => Ok(id.to_string()),
    }
}

/// The `ConfigPath` of containerd's runtime options (`runtimeoptions.v1.Options`, field 2),
/// as the CRI plugin sends them for a runtime handler's `options` table.
pub fn config_path(options: Option<&Any>) -> Option<String> {
    let options = options?;
    if !options.type_url.ends_with("runtimeoptions.v1.Options") {
        return None;
    }
    let mut input = CodedInputStream::from_bytes(&options.value);
    while let Ok(Some(tag)) = input.read_raw_tag_or_eof() {
        let (field, wire) = (tag >> 3, tag & 7);
        if field == 2 && wire == 2 {
            return input.read_string().ok().filter(|p| !p.is_empty());
        }
        let wire = containerd_shim_protos::protobuf::rt::WireType::new(wire)?;
        input.skip_field(wire).ok()?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::CodedOutputStream;

    fn options(type_url: &str, path: &str) -> Any {
        let mut value = Vec::new();
        {
            let mut out = CodedOutputStream::vec(&mut value);
            out.write_string(1, "io.containerd.vessel.v2.options")
                .unwrap();
            out.write_string(2, path).unwrap();
            out.flush().unwrap();
        }
        Any {
            type_url: type_url.to_string(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn config_path_is_read_from_runtime_options() {
        let any = options("runtimeoptions.v1.Options", "/etc/vessel/vm.toml");
        assert_eq!(
            config_path(Some(&any)).as_deref(),
            Some("/etc/vessel/vm.toml")
        );
    }

    #[test]
    fn config_path_ignores_other_option_types_and_empty_paths() {
        assert_eq!(config_path(None), None);
        let runc = options("containerd.runc.v1.Options", "/x");
        assert_eq!(config_path(Some(&runc)), None);
        let empty = options("runtimeoptions.v1.Options", "");
        assert_eq!(config_path(Some(&empty)), None);
    }
}
