//! `[runtime]`: sandbox backend, OCI runtime, networking and runtime switches.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Error;
use crate::oci::experimental::{self, Feature};
use crate::oci::{named_enum, InterworkingModel};

named_enum! {
    /// What runs a sandbox.
    SandboxBackend {
        /// Linux namespaces and cgroups, through an OCI runtime (runc, crun).
        #[default]
        Linux => "linux",
        /// A virtual machine.
        Vm => "vm",
    }
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeSection {
    /// What runs a sandbox.
    pub sandbox_backend: SandboxBackend,
    /// The OCI runtime of the linux backend: a name looked up in PATH, or an absolute path.
    pub oci_runtime: String,
    /// Debug output.
    pub enable_debug: bool,
    /// Tracing.
    pub enable_tracing: bool,
    /// How the VM joins the container network.
    pub internetworking_model: InterworkingModel,
    /// Do not apply seccomp inside the guest.
    pub disable_guest_seccomp: bool,
    /// Do not create a network namespace for the hypervisor.
    pub disable_new_netns: bool,
    /// Put every sandbox process in the sandbox cgroup only.
    pub sandbox_cgroup_only: bool,
    /// Size the VM once, at boot, from the pod's resources (no hotplug afterwards).
    pub static_sandbox_resource_mgmt: bool,
    /// Experimental features to turn on.
    pub experimental: Vec<String>,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        Self {
            sandbox_backend: SandboxBackend::Linux,
            oci_runtime: "runc".to_owned(),
            enable_debug: false,
            enable_tracing: false,
            internetworking_model: InterworkingModel::TcFilter,
            disable_guest_seccomp: true,
            disable_new_netns: false,
            sandbox_cgroup_only: false,
            static_sandbox_resource_mgmt: false,
            experimental: Vec::new(),
        }
    }
}

const OCI_RUNTIME_ACCEPTED: &str =
    "accepted: a binary name looked up in PATH (runc, crun) or an absolute path";

impl RuntimeSection {
    /// The experimental features, each checked against the registry.
    pub fn experimental_features(&self) -> Result<Vec<Feature>, Error> {
        experimental::features(self.experimental.iter().map(String::as_str)).map_err(|name| {
            Error::invalid(
                "runtime.experimental",
                format!(
                    "unknown feature {name:?} (accepted: {})",
                    experimental::accepted()
                ),
            )
        })
    }

    /// Checks `oci_runtime` is a plain name or an absolute path.
    pub fn check_oci_runtime(&self) -> Result<(), Error> {
        let value = self.oci_runtime.as_str();
        let path = Path::new(value);
        if value.is_empty() || (value.contains('/') && !path.is_absolute()) {
            return Err(Error::invalid(
                "runtime.oci_runtime",
                format!("{value:?} ({OCI_RUNTIME_ACCEPTED})"),
            ));
        }
        Ok(())
    }

    /// The OCI runtime binary: `oci_runtime` itself when absolute, else the first executable
    /// file of that name in `PATH`.
    pub fn oci_runtime_binary(&self) -> Result<PathBuf, Error> {
        self.check_oci_runtime()?;
        let name = Path::new(&self.oci_runtime);
        let found = if name.is_absolute() {
            Some(name.to_path_buf()).filter(|p| is_executable(p))
        } else {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|p| is_executable(p))
            })
        };
        found.ok_or_else(|| {
            Error::invalid(
                "runtime.oci_runtime",
                format!(
                    "{:?} is not an executable file ({OCI_RUNTIME_ACCEPTED})",
                    self.oci_runtime
                ),
            )
        })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
