//! Which annotations a pod may use: `enable_annotations` and the path allow-lists.

use std::path::{Component, Path};

use glob::{MatchOptions, Pattern};

use super::{CONFIG_PREFIX, HYPERVISOR_PREFIX};

/// The allow-list a path-valued annotation is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathList {
    /// `valid_hypervisor_paths` (hypervisor and jailer binaries).
    Hypervisor,
    /// `valid_kernel_paths`.
    Kernel,
    /// `valid_image_paths`.
    Image,
    /// `valid_initrd_paths`.
    Initrd,
    /// `valid_firmware_paths`.
    Firmware,
    /// `valid_virtio_fs_daemon_paths`.
    VirtioFsDaemon,
    /// `valid_file_mem_backends`.
    FileMemBackend,
    /// `valid_entropy_sources`.
    EntropySource,
}

impl PathList {
    /// The configuration key of the list.
    pub fn config_key(self) -> &'static str {
        match self {
            Self::Hypervisor => "valid_hypervisor_paths",
            Self::Kernel => "valid_kernel_paths",
            Self::Image => "valid_image_paths",
            Self::Initrd => "valid_initrd_paths",
            Self::Firmware => "valid_firmware_paths",
            Self::VirtioFsDaemon => "valid_virtio_fs_daemon_paths",
            Self::FileMemBackend => "valid_file_mem_backends",
            Self::EntropySource => "valid_entropy_sources",
        }
    }
}

/// The annotation policy of the configuration file (`[hypervisor.qemu]`).
///
/// `enable_annotations` entries are annotation keys relative to
/// `io.katacontainers.config.hypervisor.` (`kernel_params`), relative to
/// `io.katacontainers.config.` (`runtime.disable_guest_seccomp`), or full keys. When the list is
/// empty every non-path annotation is honoured (as kata 1.x did); when it is not, every
/// `io.katacontainers.config.*` annotation must be listed. Path-valued annotations are always
/// denied unless listed and matching a glob of their allow-list.
#[derive(Debug, Clone, Default)]
pub struct AnnotationPolicy {
    /// Annotations a pod may use.
    pub enable_annotations: Vec<String>,
    /// Globs for `path` and `jailer_path`.
    pub valid_hypervisor_paths: Vec<Pattern>,
    /// Globs for `kernel`.
    pub valid_kernel_paths: Vec<Pattern>,
    /// Globs for `image`.
    pub valid_image_paths: Vec<Pattern>,
    /// Globs for `initrd`.
    pub valid_initrd_paths: Vec<Pattern>,
    /// Globs for `firmware`.
    pub valid_firmware_paths: Vec<Pattern>,
    /// Globs for `virtio_fs_daemon`.
    pub valid_virtio_fs_daemon_paths: Vec<Pattern>,
    /// Globs for `file_mem_backend`.
    pub valid_file_mem_backends: Vec<Pattern>,
    /// Globs for `entropy_source`.
    pub valid_entropy_sources: Vec<Pattern>,
}

/// `*` and `?` do not match `/`; dot files are matched like any other.
const MATCH: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

/// The `enable_annotations` entry `entry` stands for the annotation `key`.
pub(crate) fn entry_matches(entry: &str, key: &str) -> bool {
    if entry == key {
        return true;
    }
    let relative = |prefix: &str| key.strip_prefix(prefix) == Some(entry);
    relative(HYPERVISOR_PREFIX) || relative(CONFIG_PREFIX)
}

impl AnnotationPolicy {
    /// The globs of `list`.
    pub fn globs(&self, list: PathList) -> &[Pattern] {
        match list {
            PathList::Hypervisor => &self.valid_hypervisor_paths,
            PathList::Kernel => &self.valid_kernel_paths,
            PathList::Image => &self.valid_image_paths,
            PathList::Initrd => &self.valid_initrd_paths,
            PathList::Firmware => &self.valid_firmware_paths,
            PathList::VirtioFsDaemon => &self.valid_virtio_fs_daemon_paths,
            PathList::FileMemBackend => &self.valid_file_mem_backends,
            PathList::EntropySource => &self.valid_entropy_sources,
        }
    }

    /// `key` is listed in `enable_annotations`.
    pub fn is_listed(&self, key: &str) -> bool {
        self.enable_annotations
            .iter()
            .any(|e| entry_matches(e, key))
    }

    /// `path` is absolute, has no `.` or `..` component, and matches a glob of `list`.
    pub fn path_allowed(&self, list: PathList, path: &str) -> bool {
        let p = Path::new(path);
        let normal = p.is_absolute()
            && p.components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        normal && self.globs(list).iter().any(|g| g.matches_with(path, MATCH))
    }
}

/// How to enable `key` in the configuration file.
pub(crate) fn enable_hint(key: &str, list: Option<PathList>) -> String {
    let entry = key.strip_prefix(HYPERVISOR_PREFIX).unwrap_or(key);
    match list {
        Some(list) => format!(
            "add {entry:?} to enable_annotations and a glob matching the path to {} in \
             [hypervisor.qemu]",
            list.config_key()
        ),
        None => format!("add {entry:?} to enable_annotations in [hypervisor.qemu]"),
    }
}
