//! The directory a VM shares with its guest (over 9p): each container's root file system and
//! the sources of its bind mounts (volumes, `/etc/hosts`, `resolv.conf`, ...) are mounted in
//! it, and the container's spec names them by their place in it.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::Spec;

use super::super::{rootfs, ContainerRequest, Error, Result};
use crate::oci::is_bind;

/// A container in the shared directory: its spec for the guest, its rootfs's place, and the
/// mount points made for it (to undo, last first).
pub struct Shared {
    /// The spec, bind mount sources relative to the shared directory.
    pub spec: Spec,
    /// The root file system, relative to the shared directory.
    pub rootfs: String,
    /// What was mounted, in order.
    pub mounts: Vec<PathBuf>,
}

fn bind(source: &Path, target: &Path, readonly: bool) -> Result<()> {
    let failed = |e: nix::Error| {
        Error::io(
            format!("bind {} to {}", source.display(), target.display()),
            e.into(),
        )
    };
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(failed)?;
    if readonly {
        // The guest gets no way to write what the spec made read-only.
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(None::<&str>, target, None::<&str>, flags, None::<&str>).map_err(failed)?;
    }
    Ok(())
}

/// An empty file or directory at `target`, as `source` is one.
fn mount_point(source: &Path, target: &Path) -> Result<()> {
    let io = |e| Error::io(format!("mount point {}", target.display()), e);
    let meta = std::fs::metadata(source)
        .map_err(|e| Error::io(format!("bind mount source {}", source.display()), e))?;
    if meta.is_dir() {
        std::fs::create_dir_all(target).map_err(io)
    } else {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::File::create(target).map(drop).map_err(io)
    }
}

/// Where in the shared directory the guest finds the kernel modules it loads on demand.
pub const MODULES_DIR: &str = ".modules";

/// Shares the modules that go with the guest image `initrd` (the `modules` directory beside
/// it, where `make guest` and `make install` put them) read-only at [`MODULES_DIR`] in the
/// shared directory `root`; nothing when the image has none.
pub fn add_modules(root: &Path, initrd: &str) -> Result<()> {
    let Some(source) = Path::new(initrd)
        .parent()
        .map(|dir| dir.join("modules"))
        .filter(|dir| dir.is_dir())
    else {
        return Ok(());
    };
    let target = root.join(MODULES_DIR);
    std::fs::create_dir_all(&target)
        .map_err(|e| Error::io(format!("mount point {}", target.display()), e))?;
    bind(&source, &target, true)
}

/// Unmounts the modules [`add_modules`] shared into `root`.
pub fn remove_modules(root: &Path) {
    while umount2(&root.join(MODULES_DIR), MntFlags::MNT_DETACH).is_ok() {}
}

/// Unmounts `mounts`, last first, then removes the container's directory `dir`.
pub fn remove(dir: &Path, mounts: &[PathBuf]) {
    for target in mounts.iter().rev() {
        while umount2(target, MntFlags::MNT_DETACH).is_ok() {}
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Mounts container `req`'s root file system and bind mount sources under `root/<id>`.
/// On failure nothing stays mounted.
pub async fn add(root: &Path, req: &ContainerRequest) -> Result<Shared> {
    let dir = root.join(&req.id);
    let mut mounts = Vec::new();
    match place(&dir, req, &mut mounts).await {
        Ok((spec, rootfs)) => Ok(Shared {
            spec,
            rootfs,
            mounts,
        }),
        Err(e) => {
            remove(&dir, &mounts);
            Err(e)
        }
    }
}

async fn place(
    dir: &Path,
    req: &ContainerRequest,
    mounts: &mut Vec<PathBuf>,
) -> Result<(Spec, String)> {
    let id = &req.id;
    let target = dir.join("rootfs");
    let readonly = req.config.readonly_rootfs;
    if req.rootfs.is_empty() {
        let source = rootfs::target(&req.bundle, &req.config);
        std::fs::create_dir_all(&target)
            .map_err(|e| Error::io(format!("create {}", target.display()), e))?;
        mounts.push(target.clone());
        bind(&source, &target, readonly)?;
    } else {
        mounts.push(target.clone());
        rootfs::mount(&req.rootfs, &target).await?;
    }
    let mut spec = req.config.custom_spec.clone();
    if let Some(spec_mounts) = spec.mounts_mut() {
        for (i, m) in spec_mounts.iter_mut().enumerate() {
            if !is_bind(m) {
                continue;
            }
            let Some(source) = m.source().clone() else {
                continue;
            };
            let relative = format!("{id}/mounts/{i}");
            let target = dir.join("mounts").join(i.to_string());
            mount_point(&source, &target)?;
            mounts.push(target.clone());
            let ro = m.options().iter().flatten().any(|o| o == "ro");
            bind(&source, &target, ro)?;
            m.set_source(Some(PathBuf::from(relative)));
        }
    }
    Ok((spec, format!("{id}/rootfs")))
}
