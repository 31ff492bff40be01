//! `[runtime] sandbox_cgroup_only` (kata's key): the VM's processes (QEMU, virtiofsd) and the
//! shim live in the sandbox's cgroup, the `cgroupsPath` of the pod's sandbox spec, under the
//! pod's cgroup that kubelet sizes with the RuntimeClass overhead: the pod's memory is
//! accounted where Kubernetes looks. The cgroup goes with the sandbox; the shim moves to the
//! parent (the pod's cgroup) first, as it outlives the VM by a moment.

use cgroups_rs::{
    fs::{hierarchies, Cgroup},
    CgroupPid,
};
use oci_spec::runtime::Spec;

use super::super::{Error, Result};

/// The sandbox's cgroup, joined.
pub struct SandboxCgroup {
    cgroup: Cgroup,
    path: String,
}

/// The cgroup path (relative to the hierarchies' roots) of a `cgroupsPath`: a cgroupfs path
/// (`/kubepods/burstable/pod1/c1`) as it is, a systemd one (`SLICE:PREFIX:NAME`) as runc's
/// systemd driver lays it out (`kubepods.slice/kubepods-burstable.slice/.../PREFIX-NAME.scope`).
pub fn relative_path(cgroups_path: &str) -> Result<String> {
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    let path = match parts[..] {
        [path] => path.trim_start_matches('/').to_string(),
        [slice, prefix, name] => {
            let mut path = expand_slice(if slice.is_empty() {
                "system.slice"
            } else {
                slice
            })?;
            path.push('/');
            path.push_str(&if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}-{name}.scope")
            });
            path
        }
        _ => {
            return Err(Error::Unsupported(format!(
                "linux.cgroupsPath {cgroups_path:?}: neither a path nor SLICE:PREFIX:NAME"
            )))
        }
    };
    if path.is_empty()
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(Error::Unsupported(format!(
            "linux.cgroupsPath {cgroups_path:?}: sandbox_cgroup_only needs a cgroup below the \
             root, without `.` or `..`"
        )));
    }
    Ok(path)
}

/// `a-b-c.slice` as nested directories: `a.slice/a-b.slice/a-b-c.slice`.
fn expand_slice(slice: &str) -> Result<String> {
    let bad = || {
        Error::Unsupported(format!(
            "linux.cgroupsPath: slice {slice:?} is not NAME.slice (dash-separated parts)"
        ))
    };
    let name = slice.strip_suffix(".slice").ok_or_else(bad)?;
    if name == "-" {
        return Ok(String::new());
    }
    if name.is_empty() || name.contains('/') || name.split('-').any(str::is_empty) {
        return Err(bad());
    }
    let parts: Vec<&str> = name.split('-').collect();
    Ok((1..=parts.len())
        .map(|n| format!("{}.slice", parts[..n].join("-")))
        .collect::<Vec<_>>()
        .join("/"))
}

impl SandboxCgroup {
    /// Creates the cgroup of the sandbox spec `spec` and puts `pids` in it; None when the
    /// spec names no cgroup.
    pub fn join(spec: &Spec, pids: &[u32]) -> Result<Option<Self>> {
        let Some(cgroups_path) = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| !p.is_empty())
        else {
            return Ok(None);
        };
        let path = relative_path(&cgroups_path)?;
        let failed = |what: &str, e: cgroups_rs::fs::error::Error| {
            Error::io(
                format!("sandbox_cgroup_only: {what} cgroup {path}"),
                std::io::Error::other(e.to_string()),
            )
        };
        let cgroup = Cgroup::new(hierarchies::auto(), &path).map_err(|e| failed("create", e))?;
        let moved = pids.iter().try_for_each(|pid| {
            cgroup
                .add_task_by_tgid(CgroupPid::from(u64::from(*pid)))
                .map_err(|e| failed(&format!("move {pid} into"), e))
        });
        let joined = Self {
            cgroup,
            path: path.clone(),
        };
        match moved {
            Ok(()) => Ok(Some(joined)),
            Err(e) => {
                joined.remove();
                Err(e)
            }
        }
    }

    /// Moves what is left in the cgroup (the shim) to its parent and removes it.
    pub fn remove(self) {
        for pid in self.cgroup.procs() {
            let _ = self.cgroup.move_task_to_parent_by_tgid(pid);
        }
        if let Err(e) = self.cgroup.delete() {
            log::warn!("sandbox_cgroup_only: remove cgroup {}: {e}", self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_and_systemd_paths_are_laid_out_as_runc_does() {
        assert_eq!(
            relative_path("/kubepods/burstable/pod1/c1").unwrap(),
            "kubepods/burstable/pod1/c1"
        );
        assert_eq!(
            relative_path("kubepods-burstable-pod1.slice:cri-containerd:c1").unwrap(),
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-c1.scope"
        );
        assert_eq!(
            relative_path(":cri-containerd:c1").unwrap(),
            "system.slice/cri-containerd-c1.scope"
        );
        for bad in [
            "/",
            "/a/../b",
            "a:b",
            "x.slice-:p:n",
            "kube/pods.slice:p:n",
            "a:b:c:d",
        ] {
            assert!(relative_path(bad).is_err(), "{bad}");
        }
    }
}
