//! The directory a VM shares with its guest (over 9p or virtio-fs): each container's root file
//! system and the sources of its bind mounts (volumes, `/etc/hosts`, `resolv.conf`, ...) are
//! mounted in it, and the container's spec names them by their place in it.
//!
//! The host writes in `mounts/`, which the guest never sees, and exports `shared/`, a
//! read-only bind of it that receives every mount made in `mounts/` later (kata's
//! `mounts`/`shared` split): the guest can write only inside what is mounted there read-write
//! (containers' root file systems, read-write volumes), never create a file or a link where
//! the host works. Mount points are made without following a link ([`mount_point`]) all the
//! same, so a link planted in the tree (kata's CVE-2020-2026) makes the host refuse, not
//! create or truncate a file elsewhere.

use std::{
    os::{
        fd::{AsFd, OwnedFd},
        unix::ffi::OsStringExt,
    },
    path::{Component, Path, PathBuf},
};

use nix::{
    fcntl::{openat2, OFlag, OpenHow, ResolveFlag},
    mount::{mount, umount2, MntFlags, MsFlags},
    sys::stat::{mkdirat, Mode},
};
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

/// Binds `source` at `target`, with the mounts under it when `recursive`.
fn bind(source: &Path, target: &Path, readonly: bool, recursive: bool) -> Result<()> {
    let failed = |e: nix::Error| {
        Error::io(
            format!("bind {} to {}", source.display(), target.display()),
            e.into(),
        )
    };
    let flags = if recursive {
        MsFlags::MS_BIND | MsFlags::MS_REC
    } else {
        MsFlags::MS_BIND
    };
    mount(Some(source), target, None::<&str>, flags, None::<&str>).map_err(failed)?;
    if readonly {
        // The guest gets no way to write what the spec made read-only.
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(None::<&str>, target, None::<&str>, flags, None::<&str>).map_err(failed)?;
    }
    Ok(())
}

/// A mount point of `/proc/self/mountinfo` (field 5), its octal escapes (`\040`) undone.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The mounts below `source` in a `mountinfo` text, as paths relative to it, each once,
/// shallowest first (a mount before those inside it).
fn submounts(mountinfo: &str, source: &Path) -> Vec<PathBuf> {
    let mut below: Vec<PathBuf> = Vec::new();
    for point in mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
    {
        if let Ok(relative) = point.strip_prefix(source) {
            if !relative.as_os_str().is_empty() && !below.iter().any(|b| b == relative) {
                below.push(relative.to_path_buf());
            }
        }
    }
    below.sort_by_key(|p| p.components().count());
    below
}

/// Makes `mounts` the host's side of the shared directory and `export` the guest's: `mounts`
/// a shared mount of its own, `export` a recursive bind of it, read-only at its root and its
/// slave (mounts made in `mounts` appear in `export`, none go back).
pub fn export(mounts: &Path, export: &Path) -> Result<()> {
    let failed = |what: &str, path: &Path, e: nix::Error| {
        Error::io(format!("{what} {}", path.display()), e.into())
    };
    for dir in [mounts, export] {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    }
    let none = None::<&str>;
    mount(Some(mounts), mounts, none, MsFlags::MS_BIND, none)
        .map_err(|e| failed("bind", mounts, e))?;
    mount(none, mounts, none, MsFlags::MS_SHARED, none)
        .map_err(|e| failed("make shared", mounts, e))?;
    mount(
        Some(mounts),
        export,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )
    .map_err(|e| failed("bind", export, e))?;
    let read_only = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    mount(none, export, none, read_only, none).map_err(|e| failed("read-only", export, e))?;
    mount(none, export, none, MsFlags::MS_SLAVE, none).map_err(|e| failed("make slave", export, e))
}

/// Undoes [`export`]: both mounts and whatever is still mounted under them.
pub fn unexport(mounts: &Path, export: &Path) {
    for dir in [export, mounts] {
        while umount2(dir, MntFlags::MNT_DETACH).is_ok() {}
    }
}

/// `target`, below `root`, opened or created as a directory (`create`) or an empty file
/// (`create` false: the file itself), every component resolved beneath `root` without
/// following a link (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, `O_NOFOLLOW`).
fn open_beneath(root: &Path, target: &Path, directory: bool) -> std::io::Result<OwnedFd> {
    let relative = target.strip_prefix(root).map_err(|_| {
        std::io::Error::other(format!(
            "{} is not below {}",
            target.display(),
            root.display()
        ))
    })?;
    let how = |flags: OFlag| {
        // openat2 takes a mode only with O_CREAT.
        let mode = if flags.contains(OFlag::O_CREAT) {
            0o644
        } else {
            0
        };
        OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .mode(Mode::from_bits_truncate(mode))
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS)
    };
    let refused = |e: nix::Error, part: &Path| -> std::io::Error {
        match e {
            nix::Error::ELOOP | nix::Error::EXDEV | nix::Error::ENOTDIR => {
                std::io::Error::other(format!(
                    "{} is a link or leaves the directory: refused",
                    part.display()
                ))
            }
            other => other.into(),
        }
    };
    let mut dir = nix::fcntl::open(root, OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
    let parts: Vec<_> = relative.components().collect();
    for (i, part) in parts.iter().enumerate() {
        let Component::Normal(name) = part else {
            return Err(std::io::Error::other(format!(
                "{}: only plain names below {}",
                target.display(),
                root.display()
            )));
        };
        let last = i + 1 == parts.len();
        if !last || directory {
            match mkdirat(dir.as_fd(), *name, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(nix::Error::EEXIST) => {}
                Err(e) => return Err(refused(e, Path::new(name))),
            }
            dir = openat2(
                dir.as_fd(),
                *name,
                how(OFlag::O_DIRECTORY | OFlag::O_RDONLY),
            )
            .map_err(|e| refused(e, Path::new(name)))?;
        } else {
            return openat2(dir.as_fd(), *name, how(OFlag::O_CREAT | OFlag::O_WRONLY))
                .map_err(|e| refused(e, Path::new(name)));
        }
    }
    Ok(dir)
}

/// An empty file or directory at `target` below `root`, as `source` is one; a link on the way
/// is refused.
fn mount_point(root: &Path, source: &Path, target: &Path) -> Result<()> {
    let meta = std::fs::metadata(source)
        .map_err(|e| Error::io(format!("bind mount source {}", source.display()), e))?;
    open_beneath(root, target, meta.is_dir())
        .map(drop)
        .map_err(|e| Error::io(format!("mount point {}", target.display()), e))
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
    mount_point(root, &source, &target)?;
    bind(&source, &target, true, false)
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
    match place(root, &dir, req, &mut mounts).await {
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
    root: &Path,
    dir: &Path,
    req: &ContainerRequest,
    mounts: &mut Vec<PathBuf>,
) -> Result<(Spec, String)> {
    let id = &req.id;
    let target = dir.join("rootfs");
    let readonly = req.config.readonly_rootfs;
    if req.rootfs.is_empty() {
        let source = rootfs::target(&req.bundle, &req.config);
        mount_point(root, &source, &target)?;
        mounts.push(target.clone());
        bind(&source, &target, readonly, true)?;
    } else {
        open_beneath(root, &target, true)
            .map_err(|e| Error::io(format!("mount point {}", target.display()), e))?;
        mounts.push(target.clone());
        rootfs::mount(&req.rootfs, &target).await?;
    }
    let mut spec = req.config.custom_spec.clone();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read /proc/self/mountinfo", e))?;
    let mut guest_mounts = Vec::new();
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let source = match m.source() {
            Some(source) if is_bind(m) => source.clone(),
            _ => {
                guest_mounts.push(m.clone());
                continue;
            }
        };
        let options = m.options().clone().unwrap_or_default();
        let ro = options.iter().any(|o| o == "ro");
        let rro = options.iter().any(|o| o == "rro");
        // Each mount under the source is bound on its own, on a mount point of ours, and
        // mounted by the guest where it sits in the source: the host's own mount points stay
        // free (a volume's source can be unmounted and removed while the pod runs), and a
        // read-only bind that is not recursive leaves them writable, as runc does.
        let canonical = std::fs::canonicalize(&source).unwrap_or_else(|_| source.clone());
        let places = std::iter::once(PathBuf::new()).chain(submounts(&mountinfo, &canonical));
        for (k, below) in places.enumerate() {
            let name = if k == 0 {
                i.to_string()
            } else {
                format!("{i}.{k}")
            };
            let target = dir.join("mounts").join(&name);
            let from = if k == 0 {
                source.clone()
            } else {
                source.join(&below)
            };
            mount_point(root, &from, &target)?;
            mounts.push(target.clone());
            bind(&from, &target, rro || (k == 0 && ro), false)?;
            let mut guest = m.clone();
            guest.set_source(Some(PathBuf::from(format!("{id}/mounts/{name}"))));
            if k > 0 {
                guest.set_destination(m.destination().join(&below));
                guest.set_options(Some(
                    options
                        .iter()
                        .filter(|o| rro || *o != "ro")
                        .cloned()
                        .collect(),
                ));
            }
            guest_mounts.push(guest);
        }
    }
    spec.set_mounts(Some(guest_mounts));
    Ok((spec, format!("{id}/rootfs")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime - ext4 /dev/vda rw
40 22 0:40 / /srv/vol rw - tmpfs none rw
41 40 0:41 / /srv/vol/a\\040b rw - tmpfs none rw
42 41 0:42 / /srv/vol/a\\040b/deep rw - tmpfs none rw
43 40 0:43 / /srv/vol/a\\040b rw - tmpfs none rw
44 22 0:44 / /srv/volume-other rw - tmpfs none rw
";

    #[test]
    fn the_mounts_below_a_source_are_found_once_shallowest_first() {
        assert_eq!(
            submounts(MOUNTINFO, Path::new("/srv/vol")),
            [PathBuf::from("a b"), PathBuf::from("a b/deep")]
        );
        assert_eq!(
            submounts(MOUNTINFO, Path::new("/srv/vol/a b")),
            [PathBuf::from("deep")]
        );
        assert!(submounts(MOUNTINFO, Path::new("/srv/volume-other")).is_empty());
        assert!(submounts(MOUNTINFO, Path::new("/nowhere")).is_empty());
    }

    #[test]
    fn mount_points_are_made_beneath_the_root_and_links_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("mounts");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("precious"), "keep me").unwrap();

        open_beneath(&root, &root.join("c1/mounts/0"), true).unwrap();
        assert!(root.join("c1/mounts/0").is_dir());
        open_beneath(&root, &root.join("c1/mounts/1"), false).unwrap();
        assert!(root.join("c1/mounts/1").is_file());

        // A link where a file mount point goes: refused, its target untouched.
        std::os::unix::fs::symlink(outside.join("precious"), root.join("c1/mounts/2")).unwrap();
        let refused = open_beneath(&root, &root.join("c1/mounts/2"), false).unwrap_err();
        assert!(refused.to_string().contains("refused"), "{refused}");
        assert_eq!(
            std::fs::read_to_string(outside.join("precious")).unwrap(),
            "keep me"
        );
        // A link on the way (a directory of the path): refused, nothing made outside.
        std::os::unix::fs::symlink(&outside, root.join("c2")).unwrap();
        let refused = open_beneath(&root, &root.join("c2/mounts/0"), true).unwrap_err();
        assert!(refused.to_string().contains("refused"), "{refused}");
        assert!(!outside.join("mounts").exists());
        // `..` and paths outside the root are not names below it.
        assert!(open_beneath(&root, &root.join("../outside/x"), true).is_err());
        assert!(open_beneath(&root, &outside.join("x"), true).is_err());
        assert!(!outside.join("x").exists());
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(
            unescape("/a\\040b\\011c\\134d"),
            PathBuf::from("/a b\tc\\d")
        );
        assert_eq!(unescape("/trailing\\04"), PathBuf::from("/trailing\\04"));
    }
}
