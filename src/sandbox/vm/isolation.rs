//! What a VM cannot share with the host, refused before anything is made: a container or pod
//! that asks for the host's network, PID or IPC namespace, or for mounts that propagate back
//! to the host, would run half-isolated (or not as asked) in a guest. Such a spec fails its
//! Create with the field that asks for it.

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::super::{Error, Result};

/// The namespaces a VM gives every container of its own, and what sharing the host's means.
const OWN_NAMESPACES: [(LinuxNamespaceType, &str, &str); 3] = [
    (LinuxNamespaceType::Network, "network", "hostNetwork"),
    (LinuxNamespaceType::Pid, "pid", "hostPID"),
    (LinuxNamespaceType::Ipc, "ipc", "hostIPC"),
];

/// Mount propagation options that send the container's mounts back to the host.
const TO_HOST: [&str; 2] = ["shared", "rshared"];

/// Refuses a spec of container `id` that shares a host namespace or propagates mounts to the
/// host, naming the field.
pub fn refuse_host_sharing(id: &str, spec: &Spec) -> Result<()> {
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (typ, name, pod_field) in OWN_NAMESPACES {
        if !namespaces.iter().any(|n| n.typ() == typ) {
            return Err(Error::Unsupported(format!(
                "container {id}: linux.namespaces has no {name} namespace, so it would share the \
                 host's ({pod_field}): a VM sandbox has its own and cannot share the host's; \
                 run it with a runtime handler that runs containers on the host"
            )));
        }
    }
    for (index, mount) in spec.mounts().iter().flatten().enumerate() {
        let options = mount.options().iter().flatten();
        if let Some(option) = options.into_iter().find(|o| TO_HOST.contains(&o.as_str())) {
            return Err(Error::Unsupported(format!(
                "container {id}: mounts[{index}] ({}): propagation {option:?} \
                 (mountPropagation: Bidirectional) would make mounts made in the container \
                 reach the host, which a VM sandbox cannot do (accepted: private, rprivate, \
                 slave, rslave)",
                mount.destination().display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder, MountBuilder, SpecBuilder};

    use super::*;

    fn spec(namespaces: &[LinuxNamespaceType], mount_options: &[&str]) -> Spec {
        let namespaces: Vec<_> = namespaces
            .iter()
            .map(|&typ| LinuxNamespaceBuilder::default().typ(typ).build().unwrap())
            .collect();
        let mount = MountBuilder::default()
            .destination("/data")
            .source("/srv/data")
            .options(
                mount_options
                    .iter()
                    .map(|o| o.to_string())
                    .collect::<Vec<_>>(),
            )
            .build()
            .unwrap();
        SpecBuilder::default()
            .linux(
                LinuxBuilder::default()
                    .namespaces(namespaces)
                    .build()
                    .unwrap(),
            )
            .mounts(vec![mount])
            .build()
            .unwrap()
    }

    const ALL: [LinuxNamespaceType; 5] = [
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
    ];

    #[test]
    fn a_container_with_namespaces_of_its_own_runs() {
        refuse_host_sharing("c1", &spec(&ALL, &["rbind", "rprivate"])).unwrap();
        refuse_host_sharing("c1", &spec(&ALL, &["rbind", "rslave"])).unwrap();
    }

    #[test]
    fn each_host_namespace_is_refused_by_name() {
        for (missing, name, field) in [
            (LinuxNamespaceType::Network, "network", "hostNetwork"),
            (LinuxNamespaceType::Pid, "pid", "hostPID"),
            (LinuxNamespaceType::Ipc, "ipc", "hostIPC"),
        ] {
            let namespaces: Vec<_> = ALL.iter().copied().filter(|&t| t != missing).collect();
            let message = refuse_host_sharing("c1", &spec(&namespaces, &[]))
                .unwrap_err()
                .to_string();
            assert!(
                message.contains(&format!("no {name} namespace")) && message.contains(field),
                "{message}"
            );
        }
    }

    #[test]
    fn propagation_to_the_host_is_refused_with_its_mount() {
        for option in ["rshared", "shared"] {
            let message = refuse_host_sharing("c1", &spec(&ALL, &["rbind", option]))
                .unwrap_err()
                .to_string();
            assert!(
                message.contains("mounts[0] (/data)") && message.contains(option),
                "{message}"
            );
        }
    }
}
