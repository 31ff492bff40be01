//! Annotation keys, and the overrides a pod's annotations make to its sandbox configuration.
//!
//! Annotations are untrusted: they come from whoever writes the pod spec. Every key the
//! conversion honours is one entry of a table (key, parser and rule, target field); the
//! [`AnnotationPolicy`] of the configuration file decides which keys a pod may use and which
//! host paths the path-valued ones may name.

mod policy;
mod table;
mod value;

use std::collections::HashMap;

pub(crate) use policy::entry_matches;
pub use policy::{AnnotationPolicy, PathList};

use self::policy::enable_hint;
use self::table::{Entry, Kind, TABLE};
use self::value::{is_sha512, parse_bool, parse_u32, BOOL_ACCEPTED, SHA512_ACCEPTED};
use super::names::SharedFs;
use super::{Error, SandboxConfig};

/// Annotation recording the bundle path.
pub const BUNDLE_PATH_KEY: &str = "io.katacontainers.pkg.oci.bundle_path";
/// Annotation recording the container type (`pod_sandbox` / `pod_container`).
pub const CONTAINER_TYPE_KEY: &str = "io.katacontainers.pkg.oci.container_type";
/// Prefix of every configuration annotation.
pub const CONFIG_PREFIX: &str = "io.katacontainers.config.";
/// Prefix of the hypervisor annotations.
pub const HYPERVISOR_PREFIX: &str = "io.katacontainers.config.hypervisor.";

/// Every annotation key the conversion honours, in the order they are applied.
pub fn keys() -> impl Iterator<Item = &'static str> {
    TABLE.iter().map(|e| e.key)
}

/// Every honoured annotation key, with what its value takes (for `-info`).
pub fn honoured() -> impl Iterator<Item = (&'static str, &'static str)> {
    TABLE.iter().map(|e| {
        let takes = match e.kind {
            table::Kind::Bool(_) => "boolean",
            table::Kind::U32(..) => "unsigned integer",
            table::Kind::Choice(..) => "one of fixed names",
            table::Kind::Text(_) | table::Kind::Custom(_) => "text",
            table::Kind::Path(..) => "host path, if enable_annotations and valid_*_paths allow it",
            table::Kind::Sha512 => "SHA-512 digest",
        };
        (e.key, takes)
    })
}

/// The honoured key an `enable_annotations` entry stands for, if any.
pub fn resolve_enable_entry(entry: &str) -> Option<&'static str> {
    keys().find(|key| entry_matches(entry, key))
}

impl Entry {
    fn path_list(&self) -> Option<PathList> {
        match self.kind {
            Kind::Path(list, _) => Some(list),
            _ => None,
        }
    }

    /// Checks `value` against the key's rule and the policy, then sets the target field.
    fn apply(
        &self,
        value: &str,
        policy: &AnnotationPolicy,
        sandbox: &mut SandboxConfig,
    ) -> Result<(), Error> {
        let invalid = |reason: String| Error::InvalidAnnotation {
            key: self.key.to_owned(),
            value: value.to_owned(),
            reason,
        };
        match &self.kind {
            Kind::Bool(set) => {
                let b = parse_bool(value).ok_or_else(|| invalid(BOOL_ACCEPTED.to_owned()))?;
                set(sandbox, b);
            }
            Kind::U32(bound, set) => {
                let (min, max, why) = bound.range(sandbox.hypervisor_type);
                let n = parse_u32(value)
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| {
                        invalid(format!("accepted: an integer in {min}..={max}{why}"))
                    })?;
                set(sandbox, n);
            }
            Kind::Choice(names, set) => {
                if !set(sandbox, value) {
                    return Err(invalid(format!("accepted: {}", names.join(", "))));
                }
            }
            Kind::Text(set) => set(sandbox, value),
            Kind::Path(list, set) => {
                if !policy.is_listed(self.key) {
                    return Err(Error::AnnotationNotEnabled {
                        key: self.key.to_owned(),
                        hint: enable_hint(self.key, Some(*list)),
                    });
                }
                if !policy.path_allowed(*list, value) {
                    return Err(Error::PathNotAllowed {
                        key: self.key,
                        value: value.to_owned(),
                        list: list.config_key(),
                    });
                }
                set(sandbox, value);
            }
            Kind::Sha512 => {
                if !is_sha512(value) {
                    return Err(invalid(SHA512_ACCEPTED.to_owned()));
                }
            }
            Kind::Custom(apply) => apply(sandbox, value).map_err(invalid)?,
        }
        if self.asset {
            sandbox
                .annotations
                .insert(self.key.to_owned(), value.to_owned());
        }
        Ok(())
    }
}

/// Applies the annotations of a spec to its sandbox configuration. With a non-empty
/// `enable_annotations`, any `io.katacontainers.config.*` key it does not list is an error (the
/// smallest such key is reported); then every honoured key present is checked and applied in
/// table order.
pub(crate) fn apply(
    annotations: &HashMap<String, String>,
    policy: &AnnotationPolicy,
    sandbox: &mut SandboxConfig,
) -> Result<(), Error> {
    if !policy.enable_annotations.is_empty() {
        let unlisted = annotations
            .keys()
            .filter(|k| k.starts_with(CONFIG_PREFIX) && !policy.is_listed(k))
            .min();
        if let Some(key) = unlisted {
            let list = TABLE
                .iter()
                .find(|e| e.key == key)
                .and_then(Entry::path_list);
            return Err(Error::AnnotationNotEnabled {
                key: key.clone(),
                hint: enable_hint(key, list),
            });
        }
    }
    for entry in TABLE {
        if let Some(value) = annotations.get(entry.key) {
            entry.apply(value, policy, sandbox)?;
        }
    }
    Ok(())
}

/// virtio-fs needs a daemon path.
pub(crate) fn check_shared_fs(sandbox: &SandboxConfig) -> Result<(), Error> {
    let hv = &sandbox.hypervisor_config;
    if hv.shared_fs == SharedFs::VirtioFs && hv.virtio_fs_daemon.is_empty() {
        return Err(Error::VirtioFsWithoutDaemon);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
