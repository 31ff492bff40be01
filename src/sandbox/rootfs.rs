//! A container's root file system on the host: containerd's snapshot mounts, at the bundle's
//! root path (`linux`) or in the shared directory of a VM (`vm`).

use std::path::{Path, PathBuf};

use containerd_shim_protos::api::Mount;

use super::{Error, Result, RootfsMount};
use crate::oci::ContainerConfig;

/// Where the container's root file system goes: the spec's root path, under the bundle when
/// relative.
pub(crate) fn target(bundle: &Path, config: &ContainerConfig) -> PathBuf {
    let root = config
        .custom_spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_else(|| PathBuf::from("rootfs"));
    if root.is_absolute() {
        root
    } else {
        bundle.join(root)
    }
}

/// Mounts `mounts` at `target`, in order; on failure, unmounts what it mounted.
pub(crate) async fn mount(mounts: &[RootfsMount], target: &Path) -> Result<()> {
    std::fs::create_dir_all(target)
        .map_err(|e| Error::io(format!("rootfs {}", target.display()), e))?;
    for mount in mounts {
        let spec = Mount {
            type_: mount.kind.clone(),
            source: mount.source.clone(),
            options: mount.options.clone(),
            ..Default::default()
        };
        if let Err(e) = containerd_shim::asynchronous::util::mount_rootfs(&spec, target).await {
            unmount(target);
            return Err(Error::io(
                format!("mount rootfs {}", target.display()),
                std::io::Error::other(e.to_string()),
            ));
        }
    }
    Ok(())
}

/// Unmounts whatever is mounted at `target`; nothing mounted is not an error.
pub(crate) fn unmount(target: &Path) {
    while nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
}
