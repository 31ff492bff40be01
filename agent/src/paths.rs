//! The shared directory: where the host puts each container's root file system and volumes.
//! Every path a request names is relative to it and must stay inside it.

use std::path::{Component, Path, PathBuf};

use crate::error::Refused;

/// The shared directory, canonical.
#[derive(Debug, Clone)]
pub struct SharedDir {
    root: PathBuf,
}

impl SharedDir {
    /// The shared directory at `root`, which must exist.
    pub fn new(root: &Path) -> std::io::Result<Self> {
        Ok(Self {
            root: root.canonicalize()?,
        })
    }

    /// Resolves `relative` (the request's `field`) inside the shared directory: an absolute
    /// path, a `..` component, or a symbolic link that leads outside is refused, and so is a
    /// path that does not exist.
    pub fn resolve(&self, field: &str, relative: &str) -> Result<PathBuf, Refused> {
        let path = Path::new(relative);
        let escapes = |reason: &str| Refused::Escapes {
            field: field.to_string(),
            path: relative.to_string(),
            reason: reason.to_string(),
        };
        if relative.is_empty() {
            return Err(escapes("it is empty"));
        }
        if path.is_absolute() {
            return Err(escapes("it is absolute"));
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(escapes("it has a `..` component"));
        }
        let resolved = self
            .root
            .join(path)
            .canonicalize()
            .map_err(|e| Refused::Missing {
                field: field.to_string(),
                path: relative.to_string(),
                reason: e.to_string(),
            })?;
        if !resolved.starts_with(&self.root) {
            return Err(escapes(
                "a symbolic link leads outside the shared directory",
            ));
        }
        Ok(resolved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> (tempfile::TempDir, SharedDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("shared/c1/rootfs")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        let shared = SharedDir::new(&dir.path().join("shared")).unwrap();
        (dir, shared)
    }

    fn refusal(result: Result<PathBuf, Refused>) -> String {
        result.unwrap_err().to_string()
    }

    #[test]
    fn a_path_inside_resolves() {
        let (dir, shared) = shared();
        let resolved = shared.resolve("rootfs", "c1/rootfs").unwrap();
        assert_eq!(
            resolved,
            dir.path().join("shared/c1/rootfs").canonicalize().unwrap()
        );
        // `.` components are harmless.
        assert_eq!(shared.resolve("rootfs", "./c1/./rootfs").unwrap(), resolved);
    }

    #[test]
    fn parent_components_are_refused_even_when_they_stay_inside() {
        let (_dir, shared) = shared();
        for path in ["../outside", "c1/../../outside", "c1/rootfs/.."] {
            let message = refusal(shared.resolve("rootfs", path));
            assert!(message.contains("`..`"), "{path}: {message}");
            assert!(message.contains("rootfs"), "{message}");
        }
    }

    #[test]
    fn absolute_and_empty_paths_are_refused() {
        let (_dir, shared) = shared();
        assert!(refusal(shared.resolve("rootfs", "/etc")).contains("absolute"));
        assert!(refusal(shared.resolve("rootfs", "")).contains("empty"));
    }

    #[test]
    fn a_symlink_out_of_the_shared_directory_is_refused() {
        let (dir, shared) = shared();
        let link = dir.path().join("shared/c1/escape");
        std::os::unix::fs::symlink(dir.path().join("outside"), &link).unwrap();
        let message = refusal(shared.resolve("mounts[0].source", "c1/escape"));
        assert!(message.contains("symbolic link"), "{message}");
        assert!(message.contains("mounts[0].source"), "{message}");
        // A link that stays inside is fine.
        std::os::unix::fs::symlink("rootfs", dir.path().join("shared/c1/inner")).unwrap();
        assert!(shared.resolve("rootfs", "c1/inner").is_ok());
    }

    #[test]
    fn a_missing_path_is_refused() {
        let (_dir, shared) = shared();
        assert!(refusal(shared.resolve("rootfs", "c2/rootfs")).contains("c2/rootfs"));
    }
}
