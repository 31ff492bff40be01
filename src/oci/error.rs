//! Errors of the conversion core.

use std::path::PathBuf;

/// Why an OCI spec or its annotations cannot be converted.
///
/// Every message is one line that names the spec field or annotation key and, where there is a
/// fixed set, the accepted values. Untrusted values and keys are quoted with escapes, so a value
/// holding a newline still yields one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A section the conversion needs is absent from the spec.
    #[error("config.json: missing `{0}` section (required)")]
    MissingSection(&'static str),
    /// A spec field holds a value we cannot convert.
    #[error("config.json: {field}: {reason}")]
    InvalidField {
        /// The field, as a JSON path (`linux.devices[2].type`).
        field: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// A CRI container-type annotation holds an unknown value.
    #[error("annotation {key}: unknown container type {value:?} (accepted: {accepted})")]
    UnknownContainerType {
        /// The CRI container-type key.
        key: &'static str,
        /// The value found.
        value: String,
        /// The values this CRI flavour uses.
        accepted: String,
    },
    /// A pod container names no sandbox.
    #[error("no sandbox id annotation (accepted keys: {accepted})")]
    MissingSandboxId {
        /// The CRI sandbox-id keys looked for.
        accepted: String,
    },
    /// An annotation value fails its key's parser or rule.
    #[error("annotation {key}: invalid value {value:?}: {reason}")]
    InvalidAnnotation {
        /// The annotation key.
        key: String,
        /// The value found.
        value: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// An annotation is not allowed by `enable_annotations`.
    #[error("annotation {key:?} is not enabled: {hint}")]
    AnnotationNotEnabled {
        /// The annotation key.
        key: String,
        /// How to enable it in the configuration file.
        hint: String,
    },
    /// A path-valued annotation names a path outside its allow-list.
    #[error(
        "annotation {key}: path {value:?} is not allowed: it must be an absolute, normalized path \
         matching a glob in {list} of [hypervisor.qemu]"
    )]
    PathNotAllowed {
        /// The annotation key.
        key: &'static str,
        /// The path found.
        value: String,
        /// The allow-list in the configuration file.
        list: &'static str,
    },
    /// virtio-fs is selected without a daemon.
    #[error(
        "shared_fs: virtio-fs needs a daemon path: set virtio_fs_daemon (annotation \
         io.katacontainers.config.hypervisor.virtio_fs_daemon or [hypervisor.qemu] virtio_fs_daemon)"
    )]
    VirtioFsWithoutDaemon,
    /// A kernel parameter has no name.
    #[error("kernel parameter {0:?} has an empty name (accepted: name or name=value)")]
    EmptyKernelParam(String),
    /// The size of a bind-mounted /dev/shm source cannot be read.
    #[error("mounts: /dev/shm source {path:?}: statfs: {source}")]
    ShmSize {
        /// The mount source.
        path: PathBuf,
        /// The statfs error.
        source: nix::Error,
    },
}
