//! OCI spec -> container configuration (virtcontainers' `ContainerConfig`).

use std::collections::BTreeMap;
use std::path::Path;

use oci_spec::runtime::{self as oci, LinuxDeviceType, LinuxResources, Spec};
use serde::Serialize;

use super::annotations::{BUNDLE_PATH_KEY, CONTAINER_TYPE_KEY};
use super::cri::container_type;
use super::env::{process_envs, EnvVar};
use super::Error;

/// The container root file system on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RootFs {
    /// Host path of the root file system (relative spec paths are joined to the bundle).
    pub target: String,
    /// The root file system is already mounted.
    pub mounted: bool,
}

/// Capability sets of a process, each sorted (`CAP_` names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// Bounding set.
    pub bounding: Vec<String>,
    /// Effective set.
    pub effective: Vec<String>,
    /// Inheritable set.
    pub inheritable: Vec<String>,
    /// Permitted set.
    pub permitted: Vec<String>,
    /// Ambient set.
    pub ambient: Vec<String>,
}

/// The process to run in a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cmd {
    /// argv.
    pub args: Vec<String>,
    /// Environment.
    pub envs: Vec<EnvVar>,
    /// Working directory inside the container.
    pub work_dir: String,
    /// uid, as a decimal string.
    pub user: String,
    /// gid, as a decimal string.
    pub primary_group: String,
    /// Additional gids, as decimal strings.
    pub supplementary_groups: Vec<String>,
    /// Allocate a terminal.
    pub interactive: bool,
    /// Console path (empty: none yet).
    pub console: String,
    /// Do not wait for the process.
    pub detach: bool,
    /// Set no_new_privs.
    pub no_new_privileges: bool,
    /// Capabilities, when the spec lists them.
    pub capabilities: Option<Capabilities>,
}

/// A mount of the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// Source on the host (or a pseudo source such as `proc`).
    pub source: String,
    /// Destination inside the container.
    pub destination: String,
    /// File system type.
    #[serde(rename = "type")]
    pub fs_type: String,
    /// Mount options.
    pub options: Vec<String>,
}

/// A device node of the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    /// Path inside the container.
    pub container_path: String,
    /// `c`, `b`, `u` or `p`.
    pub dev_type: String,
    /// Major number.
    pub major: i64,
    /// Minor number.
    pub minor: i64,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Permission bits.
    pub file_mode: u32,
}

/// Everything needed to create one container in a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerConfig {
    /// Container id.
    pub id: String,
    /// Root file system.
    pub rootfs: RootFs,
    /// Mount the root file system read-only.
    pub readonly_rootfs: bool,
    /// The process.
    pub cmd: Cmd,
    /// Bundle path and container type annotations.
    pub annotations: BTreeMap<String, String>,
    /// Mounts, in spec order.
    pub mounts: Vec<Mount>,
    /// Device nodes.
    pub device_infos: Vec<DeviceInfo>,
    /// cgroup resources (the OCI default, all unset, when the spec has none).
    pub resources: LinuxResources,
    /// The spec itself, for later rewriting (ephemeral storage, empty dirs).
    pub custom_spec: Spec,
}

/// Converts a bundle's spec to a container configuration. `process`, `root` and `linux` are
/// required; absent `linux.resources` is the OCI default. The console is empty and the process
/// detached.
pub fn container_config(spec: &Spec, bundle: &Path, id: &str) -> Result<ContainerConfig, Error> {
    let process = spec
        .process()
        .as_ref()
        .ok_or(Error::MissingSection("process"))?;
    let root = spec.root().as_ref().ok_or(Error::MissingSection("root"))?;
    let linux = spec
        .linux()
        .as_ref()
        .ok_or(Error::MissingSection("linux"))?;
    let ctype = container_type(spec)?;
    let bundle_text = bundle.to_string_lossy().into_owned();
    let annotations = BTreeMap::from([
        (BUNDLE_PATH_KEY.to_owned(), bundle_text),
        (CONTAINER_TYPE_KEY.to_owned(), ctype.as_str().to_owned()),
    ]);
    Ok(ContainerConfig {
        id: id.to_owned(),
        rootfs: RootFs {
            target: bundle.join(root.path()).to_string_lossy().into_owned(),
            mounted: true,
        },
        readonly_rootfs: root.readonly().unwrap_or(false),
        cmd: cmd(process)?,
        annotations,
        mounts: spec.mounts().iter().flatten().map(mount).collect(),
        device_infos: devices(linux.devices().as_deref().unwrap_or_default())?,
        resources: linux.resources().clone().unwrap_or_default(),
        custom_spec: spec.clone(),
    })
}

fn cmd(process: &oci::Process) -> Result<Cmd, Error> {
    let user = process.user();
    Ok(Cmd {
        args: process.args().clone().unwrap_or_default(),
        envs: process_envs(process.env().as_deref().unwrap_or_default())?,
        work_dir: process.cwd().to_string_lossy().into_owned(),
        user: user.uid().to_string(),
        primary_group: user.gid().to_string(),
        supplementary_groups: user
            .additional_gids()
            .iter()
            .flatten()
            .map(u32::to_string)
            .collect(),
        interactive: process.terminal().unwrap_or(false),
        console: String::new(),
        detach: true,
        no_new_privileges: process.no_new_privileges().unwrap_or(false),
        capabilities: process.capabilities().as_ref().map(capabilities),
    })
}

fn capability_names(set: &Option<oci::Capabilities>) -> Vec<String> {
    let mut names: Vec<String> = set
        .iter()
        .flatten()
        .map(|cap| format!("CAP_{cap}"))
        .collect();
    names.sort();
    names
}

fn capabilities(caps: &oci::LinuxCapabilities) -> Capabilities {
    Capabilities {
        bounding: capability_names(caps.bounding()),
        effective: capability_names(caps.effective()),
        inheritable: capability_names(caps.inheritable()),
        permitted: capability_names(caps.permitted()),
        ambient: capability_names(caps.ambient()),
    }
}

fn mount(m: &oci::Mount) -> Mount {
    Mount {
        source: m
            .source()
            .as_ref()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        destination: m.destination().to_string_lossy().into_owned(),
        fs_type: m.typ().clone().unwrap_or_default(),
        options: m.options().clone().unwrap_or_default(),
    }
}

fn devices(list: &[oci::LinuxDevice]) -> Result<Vec<DeviceInfo>, Error> {
    list.iter()
        .enumerate()
        .map(|(i, d)| {
            if d.typ() == LinuxDeviceType::A {
                return Err(Error::InvalidField {
                    field: format!("linux.devices[{i}].type"),
                    reason: format!(
                        "unexpected device type \"a\" for device {:?} (accepted: c, b, u, p)",
                        d.path()
                    ),
                });
            }
            if d.path().as_os_str().is_empty() {
                return Err(Error::InvalidField {
                    field: format!("linux.devices[{i}].path"),
                    reason: "the path cannot be empty".to_owned(),
                });
            }
            Ok(DeviceInfo {
                container_path: d.path().to_string_lossy().into_owned(),
                dev_type: d.typ().as_str().to_owned(),
                major: d.major(),
                minor: d.minor(),
                uid: d.uid().unwrap_or(0),
                gid: d.gid().unwrap_or(0),
                file_mode: d.file_mode().unwrap_or(0),
            })
        })
        .collect()
}
