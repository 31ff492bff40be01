//! Container type and sandbox id from the annotations CRI implementations set.

use oci_spec::runtime::Spec;
use serde::Serialize;

use super::Error;

/// What a bundle is, seen from the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ContainerType {
    /// A pod sandbox, or a standalone container that is its own sandbox.
    #[serde(rename = "pod_sandbox")]
    PodSandbox,
    /// A container joining an existing pod sandbox.
    #[serde(rename = "pod_container")]
    PodContainer,
}

impl ContainerType {
    /// The virtcontainers name, stored in the container-type annotation.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PodSandbox => "pod_sandbox",
            Self::PodContainer => "pod_container",
        }
    }
}

/// One CRI implementation's annotation keys and values.
struct Flavour {
    type_key: &'static str,
    sandbox_value: &'static str,
    container_value: &'static str,
    sandbox_id_key: &'static str,
}

/// containerd CRI, CRI-O and dockershim, in the order they are looked up.
const FLAVOURS: [Flavour; 3] = [
    Flavour {
        type_key: "io.kubernetes.cri.container-type",
        sandbox_value: "sandbox",
        container_value: "container",
        sandbox_id_key: "io.kubernetes.cri.sandbox-id",
    },
    Flavour {
        type_key: "io.kubernetes.cri-o.ContainerType",
        sandbox_value: "sandbox",
        container_value: "container",
        sandbox_id_key: "io.kubernetes.cri-o.SandboxID",
    },
    Flavour {
        type_key: "io.kubernetes.docker.type",
        sandbox_value: "podsandbox",
        container_value: "container",
        sandbox_id_key: "io.kubernetes.sandbox.id",
    },
];

fn annotation<'a>(spec: &'a Spec, key: &str) -> Option<&'a String> {
    spec.annotations().as_ref().and_then(|a| a.get(key))
}

/// The container type: from the first CRI type key present; no key at all is a standalone
/// sandbox; a key with a value its CRI does not use is an error.
pub fn container_type(spec: &Spec) -> Result<ContainerType, Error> {
    for flavour in &FLAVOURS {
        let Some(value) = annotation(spec, flavour.type_key) else {
            continue;
        };
        return if value == flavour.sandbox_value {
            Ok(ContainerType::PodSandbox)
        } else if value == flavour.container_value {
            Ok(ContainerType::PodContainer)
        } else {
            Err(Error::UnknownContainerType {
                key: flavour.type_key,
                value: value.clone(),
                accepted: format!("{}, {}", flavour.sandbox_value, flavour.container_value),
            })
        };
    }
    Ok(ContainerType::PodSandbox)
}

/// The sandbox id of a pod container: the first CRI sandbox-id key present.
pub fn sandbox_id(spec: &Spec) -> Result<String, Error> {
    FLAVOURS
        .iter()
        .find_map(|f| annotation(spec, f.sandbox_id_key))
        .cloned()
        .ok_or_else(|| Error::MissingSandboxId {
            accepted: FLAVOURS
                .iter()
                .map(|f| f.sandbox_id_key)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {

    use super::*;

    use crate::oci::spec_with_annotations as spec;

    #[test]
    fn no_key_is_a_standalone_sandbox() {
        assert_eq!(
            container_type(&spec(&[])).ok(),
            Some(ContainerType::PodSandbox)
        );
        let mut bare = Spec::default();
        bare.set_annotations(None);
        assert_eq!(container_type(&bare).ok(), Some(ContainerType::PodSandbox));
    }

    #[test]
    fn every_flavour() {
        let cases = [
            (
                "io.kubernetes.cri.container-type",
                "sandbox",
                "container",
                "io.kubernetes.cri.sandbox-id",
            ),
            (
                "io.kubernetes.cri-o.ContainerType",
                "sandbox",
                "container",
                "io.kubernetes.cri-o.SandboxID",
            ),
            (
                "io.kubernetes.docker.type",
                "podsandbox",
                "container",
                "io.kubernetes.sandbox.id",
            ),
        ];
        for (key, sandbox, container, id_key) in cases {
            let s = spec(&[(key, sandbox)]);
            assert_eq!(
                container_type(&s).ok(),
                Some(ContainerType::PodSandbox),
                "{key}"
            );
            let c = spec(&[(key, container), (id_key, "pod-1")]);
            assert_eq!(
                container_type(&c).ok(),
                Some(ContainerType::PodContainer),
                "{key}"
            );
            assert_eq!(sandbox_id(&c).ok().as_deref(), Some("pod-1"), "{id_key}");
            let err = container_type(&spec(&[(key, "bogus")]))
                .err()
                .map(|e| e.to_string());
            let err = err.unwrap_or_default();
            assert!(
                err.contains(key) && err.contains("bogus") && err.contains(sandbox),
                "{err}"
            );
        }
    }

    #[test]
    fn dockershim_sandbox_value_is_not_cri_sandbox() {
        let err = container_type(&spec(&[("io.kubernetes.docker.type", "sandbox")]));
        assert!(err.is_err());
    }

    #[test]
    fn first_flavour_wins() {
        let s = spec(&[
            ("io.kubernetes.cri.container-type", "container"),
            ("io.kubernetes.docker.type", "bogus"),
        ]);
        assert_eq!(container_type(&s).ok(), Some(ContainerType::PodContainer));
    }

    #[test]
    fn missing_sandbox_id_names_the_keys() {
        let err = sandbox_id(&spec(&[]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("io.kubernetes.cri.sandbox-id"), "{err}");
        assert!(err.contains("io.kubernetes.sandbox.id"), "{err}");
    }

    #[test]
    fn type_names() {
        assert_eq!(ContainerType::PodSandbox.as_str(), "pod_sandbox");
        assert_eq!(ContainerType::PodContainer.as_str(), "pod_container");
    }
}
