//! A container's OCI spec, made fit for the guest: its root and bind mount sources resolved in
//! the shared directory, the pod's namespaces joined in the guest, and what names host objects
//! (hooks, security labels, the host's cgroup path) left out.

use std::path::Path;

use oci_spec::runtime::{
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, Mount, MountBuilder, Process,
    RootBuilder, Spec,
};

use crate::{error::Refused, paths::SharedDir};

/// Parses the request's JSON `document` (its `field`) as `T`, naming the document's field that
/// is wrong.
pub fn parse<T: serde::de::DeserializeOwned>(
    field: &'static str,
    document: &[u8],
) -> Result<T, Refused> {
    let mut json = serde_json::Deserializer::from_slice(document);
    serde_path_to_error::deserialize(&mut json).map_err(|e| Refused::Malformed {
        field,
        message: format!("{}: {}", e.path(), e.inner()),
    })
}

/// Parses a container's spec: the request's `spec_json`.
pub fn parse_spec(document: &[u8]) -> Result<Spec, Refused> {
    vessel::oci::parse_spec(document).map_err(|e| Refused::Malformed {
        field: "spec_json",
        message: e.to_string(),
    })
}

/// Parses an exec's process: the request's `process_json`.
pub fn parse_process(document: &[u8]) -> Result<Process, Refused> {
    parse("process_json", document)
}

/// Rewrites `spec` for the guest:
/// - its root is `rootfs`, resolved in the shared directory;
/// - each bind mount's source is resolved in the shared directory (other mounts name file
///   systems the guest makes: proc, tmpfs, ...);
/// - the network namespace goes (the pod shares the VM's network); a namespace the host
///   spec joins by path joins the pod's first container's instead (`pod_pid`), or a new one
///   for the pod's first container itself;
/// - hooks, AppArmor and SELinux labels go (they name host programs and host policy), and
///   the cgroup is `/vessel/<id>` in the guest's hierarchy;
/// - the container sees its own cgroup at `/sys/fs/cgroup` ([`own_cgroup`]).
pub fn for_guest(
    mut spec: Spec,
    id: &str,
    shared: &SharedDir,
    rootfs: &str,
    pod_pid: Option<u32>,
) -> Result<Spec, Refused> {
    let root = shared.resolve("rootfs", rootfs)?;
    let readonly = spec.root().as_ref().and_then(|r| r.readonly());
    let root = RootBuilder::default()
        .path(root)
        .readonly(readonly.unwrap_or(false))
        .build()
        .map_err(|e| Refused::Malformed {
            field: "rootfs",
            message: e.to_string(),
        })?;
    spec.set_root(Some(root));

    if let Some(mounts) = spec.mounts_mut() {
        for (i, mount) in mounts.iter_mut().enumerate() {
            if !vessel::oci::is_bind(mount) {
                continue;
            }
            let field = format!("spec_json: mounts[{i}].source");
            let source = mount
                .source()
                .as_ref()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let resolved = shared.resolve(&field, &source)?;
            mount.set_source(Some(resolved));
        }
    }

    spec.set_hooks(None);
    if let Some(process) = spec.process_mut() {
        process.set_apparmor_profile(None);
        process.set_selinux_label(None);
    }
    if let Some(linux) = spec.linux_mut() {
        if let Some(sysctl) = linux.sysctl_mut() {
            // The container shares the VM's network namespace, whose net.* sysctls the agent
            // sets (net_sysctls): the OCI runtime refuses them without a namespace of its own.
            sysctl.retain(|key, _| !key.starts_with("net."));
        }
        linux.set_mount_label(None);
        linux.set_cgroups_path(Some(Path::new("/vessel").join(id)));
        if let Some(namespaces) = linux.namespaces_mut() {
            namespaces.retain(|ns| ns.typ() != LinuxNamespaceType::Network);
            for ns in namespaces.iter_mut() {
                join_pod(ns, pod_pid);
            }
        }
    }
    own_cgroup(&mut spec)?;
    Ok(spec)
}

/// Where a container's cgroup file system is mounted.
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// Gives the container its own cgroup at `/sys/fs/cgroup`, as on a cgroup v2 host: a cgroup
/// namespace of its own when the spec has none (containerd on a cgroup v1 host sends none; the
/// guest is cgroup v2), and a cgroup mount at `/sys/fs/cgroup`, right after `/sys`'s, when the
/// spec mounts sysfs at `/sys` but no cgroup there (read-only when `/sys` is). The OCI runtime
/// then mounts the container's cgroup there: its `memory.max`, `cpu.max`, `pids.max`.
fn own_cgroup(spec: &mut Spec) -> Result<(), Refused> {
    let Some(linux) = spec.linux_mut() else {
        return Ok(());
    };
    let namespaces = linux.namespaces_mut().get_or_insert_with(Vec::new);
    if !namespaces
        .iter()
        .any(|ns| ns.typ() == LinuxNamespaceType::Cgroup)
    {
        let cgroup = LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Cgroup)
            .build()
            .map_err(|e| Refused::Malformed {
                field: "spec_json",
                message: format!("linux.namespaces: {e}"),
            })?;
        namespaces.push(cgroup);
    }

    let Some(mounts) = spec.mounts_mut() else {
        return Ok(());
    };
    let at = |mount: &Mount, path: &str| mount.destination() == Path::new(path);
    if mounts.iter().any(|m| at(m, CGROUP_MOUNT)) {
        return Ok(());
    }
    let Some(sys) = mounts.iter().rposition(|m| at(m, "/sys")) else {
        return Ok(());
    };
    let readonly = mounts[sys].options().iter().flatten().any(|o| o == "ro");
    let mut options: Vec<String> = ["nosuid", "noexec", "nodev", "relatime"]
        .map(String::from)
        .to_vec();
    options.push(if readonly { "ro" } else { "rw" }.into());
    let cgroup = MountBuilder::default()
        .destination(CGROUP_MOUNT)
        .typ("cgroup")
        .source("cgroup")
        .options(options)
        .build()
        .map_err(|e| Refused::Malformed {
            field: "spec_json",
            message: format!("mounts: {e}"),
        })?;
    mounts.insert(sys + 1, cgroup);
    Ok(())
}

/// The `net.*` sysctls of a spec: the pod's network settings (containerd 2.x sets
/// `net.ipv4.ip_unprivileged_port_start` and `net.ipv4.ping_group_range` on every pod), for
/// the VM's network namespace, which the pod's containers share. A key that is not a plain
/// dotted name under `net.` is refused, naming it.
pub fn net_sysctls(spec: &Spec) -> Result<Vec<(String, String)>, Refused> {
    let Some(sysctl) = spec.linux().as_ref().and_then(|l| l.sysctl().as_ref()) else {
        return Ok(Vec::new());
    };
    let mut wanted = Vec::new();
    for (key, value) in sysctl.iter().filter(|(key, _)| key.starts_with("net.")) {
        let plain = key.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
        if !plain || value.contains('\n') {
            return Err(Refused::Malformed {
                field: "spec_json: linux.sysctl",
                message: format!(
                    "{key:?}: a network sysctl is a dotted name of letters, digits, '_' and '-' \
                     with a one-line value"
                ),
            });
        }
        wanted.push((key.clone(), value.clone()));
    }
    wanted.sort();
    Ok(wanted)
}

/// Points a namespace the host spec joins by path at the pod's first container's namespace
/// of that kind, or makes it a new one when there is no pod yet.
fn join_pod(ns: &mut LinuxNamespace, pod_pid: Option<u32>) {
    if ns.path().is_none() {
        return;
    }
    let name = match ns.typ() {
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Time => "time",
        LinuxNamespaceType::Network => "net",
    };
    ns.set_path(pod_pid.map(|pid| {
        Path::new("/proc")
            .join(pid.to_string())
            .join("ns")
            .join(name)
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "/host/bundle/rootfs", "readonly": true},
            "process": {"cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0},
                        "apparmorProfile": "cri-containerd.apparmor.d"},
            "hooks": {"prestart": [{"path": "/usr/bin/host-hook"}]},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "c1/hosts",
                 "options": ["rbind", "ro"]}
            ],
            "linux": {
                "cgroupsPath": "kubepods-besteffort.slice:cri-containerd:c1",
                "namespaces": [
                    {"type": "pid"},
                    {"type": "network", "path": "/var/run/netns/cni-1"},
                    {"type": "ipc", "path": "/proc/4242/ns/ipc"},
                    {"type": "mount"}
                ]
            }
        })
    }

    fn shared() -> (tempfile::TempDir, SharedDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("c1/rootfs")).unwrap();
        std::fs::write(dir.path().join("c1/hosts"), "127.0.0.1 localhost\n").unwrap();
        let shared = SharedDir::new(dir.path()).unwrap();
        (dir, shared)
    }

    #[test]
    fn root_and_bind_sources_move_into_the_shared_directory() {
        let (dir, shared) = shared();
        let guest = for_guest(spec(base()), "c1", &shared, "c1/rootfs", None).unwrap();
        let root = dir.path().canonicalize().unwrap();
        assert_eq!(
            guest.root().as_ref().unwrap().path(),
            &root.join("c1/rootfs")
        );
        assert_eq!(guest.root().as_ref().unwrap().readonly(), Some(true));
        let mounts = guest.mounts().as_ref().unwrap();
        assert_eq!(mounts[0].source().as_deref(), Some(Path::new("proc")));
        assert_eq!(
            mounts[1].source().as_deref(),
            Some(root.join("c1/hosts").as_path())
        );
    }

    #[test]
    fn host_objects_are_left_out() {
        let (_dir, shared) = shared();
        let guest = for_guest(spec(base()), "c1", &shared, "c1/rootfs", None).unwrap();
        assert!(guest.hooks().is_none());
        assert!(guest
            .process()
            .as_ref()
            .unwrap()
            .apparmor_profile()
            .is_none());
        let linux = guest.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/vessel/c1"))
        );
        let kinds: Vec<_> = linux
            .namespaces()
            .iter()
            .flatten()
            .map(|n| n.typ())
            .collect();
        assert!(!kinds.contains(&LinuxNamespaceType::Network), "{kinds:?}");
    }

    #[test]
    fn network_sysctls_go_to_the_vm_and_out_of_the_spec() {
        let (_dir, shared) = shared();
        let mut json = base();
        json["linux"]["sysctl"] = serde_json::json!({
            "net.ipv4.ip_unprivileged_port_start": "0",
            "net.ipv4.ping_group_range": "0 2147483647",
            "kernel.shm_rmid_forced": "1"
        });
        let host = spec(json.clone());
        assert_eq!(
            net_sysctls(&host).unwrap(),
            [
                ("net.ipv4.ip_unprivileged_port_start".into(), "0".into()),
                ("net.ipv4.ping_group_range".into(), "0 2147483647".into())
            ]
        );
        let guest = for_guest(host, "c1", &shared, "c1/rootfs", None).unwrap();
        let sysctl = guest.linux().as_ref().unwrap().sysctl().clone().unwrap();
        assert_eq!(
            sysctl.keys().collect::<Vec<_>>(),
            ["kernel.shm_rmid_forced"],
            "the IPC sysctl stays for the container's own namespace"
        );

        for bad in [
            "net.ipv4/../../kernel.core_pattern",
            "net..x",
            "net.ipv4.x y",
        ] {
            json["linux"]["sysctl"] = serde_json::json!({ bad: "1" });
            let message = net_sysctls(&spec(json.clone())).unwrap_err().to_string();
            assert!(
                message.contains("linux.sysctl") && message.contains(bad),
                "{message}"
            );
        }
        json["linux"]["sysctl"] = serde_json::json!({"net.core.somaxconn": "1\n2"});
        assert!(net_sysctls(&spec(json)).is_err());
    }

    #[test]
    fn namespaces_joined_by_path_join_the_pods_first_container() {
        let (_dir, shared) = shared();
        let ipc = |guest: &Spec| {
            guest
                .linux()
                .as_ref()
                .unwrap()
                .namespaces()
                .iter()
                .flatten()
                .find(|n| n.typ() == LinuxNamespaceType::Ipc)
                .and_then(|n| n.path().clone())
        };
        let first = for_guest(spec(base()), "c1", &shared, "c1/rootfs", None).unwrap();
        assert_eq!(ipc(&first), None, "the pod's first container makes its own");
        let second = for_guest(spec(base()), "c2", &shared, "c1/rootfs", Some(17)).unwrap();
        assert_eq!(ipc(&second).as_deref(), Some(Path::new("/proc/17/ns/ipc")));
    }

    #[test]
    fn a_bind_source_outside_the_shared_directory_is_refused() {
        let (_dir, shared) = shared();
        let mut json = base();
        json["mounts"][1]["source"] = "/etc/passwd".into();
        let message = for_guest(spec(json), "c1", &shared, "c1/rootfs", None)
            .unwrap_err()
            .to_string();
        assert!(message.contains("mounts[1].source"), "{message}");
        assert!(message.contains("absolute"), "{message}");
        let message = for_guest(spec(base()), "c1", &shared, "../c1/rootfs", None)
            .unwrap_err()
            .to_string();
        assert!(message.starts_with("rootfs"), "{message}");
    }

    fn namespace_kinds(spec: &Spec) -> Vec<LinuxNamespaceType> {
        spec.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .iter()
            .flatten()
            .map(|n| n.typ())
            .collect()
    }

    fn destinations(spec: &Spec) -> Vec<String> {
        spec.mounts()
            .iter()
            .flatten()
            .map(|m| m.destination().display().to_string())
            .collect()
    }

    #[test]
    fn the_container_gets_its_own_cgroup_at_sys_fs_cgroup() {
        let (_dir, shared) = shared();
        let mut json = base();
        json["mounts"] = serde_json::json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/etc/hosts", "type": "bind", "source": "c1/hosts",
             "options": ["rbind", "ro"]}
        ]);
        let guest = for_guest(spec(json.clone()), "c1", &shared, "c1/rootfs", None).unwrap();
        let kinds = namespace_kinds(&guest);
        assert_eq!(
            kinds
                .iter()
                .filter(|&&k| k == LinuxNamespaceType::Cgroup)
                .count(),
            1,
            "{kinds:?}"
        );
        let cgroup_ns = guest
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap();
        assert!(cgroup_ns
            .iter()
            .all(|n| n.typ() != LinuxNamespaceType::Cgroup || n.path().is_none()));
        assert_eq!(
            destinations(&guest),
            ["/proc", "/sys", "/sys/fs/cgroup", "/etc/hosts"],
            "after /sys, which would hide it"
        );
        let cgroup = &guest.mounts().as_ref().unwrap()[2];
        assert_eq!(cgroup.typ().as_deref(), Some("cgroup"));
        assert_eq!(cgroup.source().as_deref(), Some(Path::new("cgroup")));
        assert_eq!(
            cgroup.options().as_deref().unwrap(),
            ["nosuid", "noexec", "nodev", "relatime", "ro"]
        );

        // A writable /sys (a privileged container's) gets a writable cgroup mount.
        json["mounts"][1]["options"] = serde_json::json!(["nosuid", "noexec", "nodev", "rw"]);
        let guest = for_guest(spec(json.clone()), "c1", &shared, "c1/rootfs", None).unwrap();
        let options = guest.mounts().as_ref().unwrap()[2]
            .options()
            .clone()
            .unwrap();
        assert_eq!(options.last().map(String::as_str), Some("rw"));

        // containerd's own cgroup mount and namespace stay as they are, once.
        json["mounts"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!(
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}));
        json["linux"]["namespaces"] = serde_json::json!([{"type": "cgroup"}, {"type": "pid"}]);
        let host = spec(json.clone());
        let guest = for_guest(host.clone(), "c1", &shared, "c1/rootfs", None).unwrap();
        assert_eq!(destinations(&guest), destinations(&host));
        assert_eq!(
            guest.mounts().as_ref().unwrap()[3],
            host.mounts().as_ref().unwrap()[3]
        );
        assert_eq!(
            namespace_kinds(&guest),
            [LinuxNamespaceType::Cgroup, LinuxNamespaceType::Pid]
        );

        // A pod's second container that joins the first's cgroup namespace joins it in the
        // guest.
        json["linux"]["namespaces"] =
            serde_json::json!([{"type": "cgroup", "path": "/proc/9/ns/cgroup"}]);
        let guest = for_guest(spec(json.clone()), "c2", &shared, "c1/rootfs", Some(17)).unwrap();
        let namespaces = guest
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .clone()
            .unwrap();
        assert_eq!(namespaces.len(), 1);
        assert_eq!(
            namespaces[0].path().as_deref(),
            Some(Path::new("/proc/17/ns/cgroup"))
        );

        // No sysfs at /sys: no cgroup mount either (there is no /sys/fs to mount it on);
        // no namespaces at all: a cgroup one.
        json["mounts"] =
            serde_json::json!([{"destination": "/proc", "type": "proc", "source": "proc"}]);
        json["linux"]["namespaces"] = serde_json::Value::Null;
        let guest = for_guest(spec(json), "c1", &shared, "c1/rootfs", None).unwrap();
        assert_eq!(destinations(&guest), ["/proc"]);
        assert_eq!(namespace_kinds(&guest), [LinuxNamespaceType::Cgroup]);
    }

    #[test]
    fn a_malformed_process_names_its_field() {
        let message = parse_process(br#"{"cwd": "/", "args": 3}"#)
            .unwrap_err()
            .to_string();
        assert!(message.starts_with("process_json: args"), "{message}");
        let message = parse_spec(b"{not json").unwrap_err().to_string();
        assert!(message.starts_with("spec_json"), "{message}");
    }
}
