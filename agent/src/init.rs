//! The agent as PID 1 of the guest: the file systems every container needs, the shared
//! directory, and powering off at the end.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

/// Settings the host gives the agent on the kernel command line (`vessel.<key>=<value>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    /// `vessel.debug=1`: debug logging.
    pub debug: bool,
    /// `vessel.shared_fs=virtio-9p|virtio-fs`: how the shared directory is mounted.
    pub shared_fs: String,
    /// `vessel.port=<name>`: the agent's virtio-serial port.
    pub port: String,
    /// `vessel.msize_9p=<bytes>`: the largest 9p message, for a 9p shared directory.
    pub msize_9p: u32,
    /// `vessel.runtime=<path>|builtin`: the OCI runtime binary (crun), or the agent's own.
    pub runtime: String,
    /// `vessel.template=1`: the VM is saved as a template once the agent serves, so every
    /// driver is loaded before it does.
    pub template: bool,
}

impl BootParams {
    /// Reads the `vessel.*` parameters of a kernel command line; others are ignored.
    pub fn parse(cmdline: &str) -> Self {
        let mut params = Self {
            debug: false,
            shared_fs: "virtio-9p".into(),
            port: "agent.0".into(),
            msize_9p: DEFAULT_MSIZE_9P,
            runtime: DEFAULT_RUNTIME.into(),
            template: false,
        };
        for word in cmdline.split_whitespace() {
            match word.split_once('=') {
                Some(("vessel.debug", v)) => params.debug = v == "1" || v == "true",
                Some(("vessel.shared_fs", v)) => params.shared_fs = v.into(),
                Some(("vessel.port", v)) => params.port = v.into(),
                Some(("vessel.runtime", v)) => params.runtime = v.into(),
                Some(("vessel.template", v)) => params.template = v == "1",
                Some(("vessel.msize_9p", v)) => match v.parse() {
                    Ok(msize) if msize > 0 => params.msize_9p = msize,
                    _ => log::warn!(
                        "vessel.msize_9p={v}: not a size in bytes; using {}",
                        params.msize_9p
                    ),
                },
                _ => {}
            }
        }
        params
    }
}

/// The guest's OCI runtime when the host names none.
const DEFAULT_RUNTIME: &str = "/usr/bin/crun";

/// The 9p message size when the host names none.
const DEFAULT_MSIZE_9P: u32 = 262144;

/// Where the guest mounts the shared directory (tag [`SHARED_TAG`]).
pub const SHARED_MOUNT: &str = "/run/vessel/shared";
/// The mount tag of the shared directory, for 9p and virtio-fs alike.
pub const SHARED_TAG: &str = "vessel";

fn mount_fs(kind: &str, target: &str, flags: MsFlags, data: Option<&str>) -> std::io::Result<()> {
    std::fs::create_dir_all(target)?;
    mount(Some(kind), target, Some(kind), flags, data)
        .map_err(|e| std::io::Error::other(format!("mount {kind} on {target}: {e}")))
}

/// The directories of the initramfs the agent keeps using (binaries, libraries, modules).
const IMAGE_DIRS: &[&str] = &["bin", "etc", "lib", "lib64", "usr"];

/// Moves the agent's root off the initramfs onto a tmpfs that binds the image's directories:
/// the kernel refuses `pivot_root` away from the initial ramfs, and the OCI runtime
/// pivot_roots into every container.
pub fn leave_initramfs() -> std::io::Result<()> {
    let new_root = "/vessel-root";
    mount_fs("tmpfs", new_root, MsFlags::MS_NOSUID, Some("mode=0755"))?;
    for dir in IMAGE_DIRS {
        let source = Path::new("/").join(dir);
        if !source.exists() {
            continue;
        }
        let target = Path::new(new_root).join(dir);
        std::fs::create_dir_all(&target)?;
        mount(
            Some(&source),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| {
            std::io::Error::other(format!("bind {} into the new root: {e}", source.display()))
        })?;
    }
    std::env::set_current_dir(new_root)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| std::io::Error::other(format!("move the new root to /: {e}")))?;
    nix::unistd::chroot(".").map_err(|e| std::io::Error::other(format!("chroot: {e}")))?;
    std::env::set_current_dir("/")
}

/// Mounts the guest's own file systems.
pub fn mount_system() -> std::io::Result<()> {
    let quiet = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", "/proc", quiet, None)?;
    mount_fs("sysfs", "/sys", quiet, None)?;
    mount_fs("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755"))?;
    mount_fs(
        "devpts",
        "/dev/pts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    mount_fs(
        "tmpfs",
        "/dev/shm",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    mount_fs(
        "tmpfs",
        "/run",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    mount_fs(
        "tmpfs",
        "/tmp",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    mount_fs("cgroup2", "/sys/fs/cgroup", quiet, None)?;
    // Containers get limits only from controllers their parent enables.
    let controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")?;
    let enable: Vec<String> = controllers
        .split_whitespace()
        .map(|c| format!("+{c}"))
        .collect();
    std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", enable.join(" "))?;
    Ok(())
}

/// The modules the agent needs before it serves: the PCI transport, its serial port, and the
/// shared directory's transport and file system.
pub fn serving_modules(shared_fs: &str) -> &'static [&'static str] {
    match shared_fs {
        "virtio-fs" => &["virtio_pci", "virtio_console", "virtiofs"],
        _ => &["virtio_pci", "virtio_console", "9pnet_virtio", "9p"],
    }
}

/// Mounts the host's shared directory at [`SHARED_MOUNT`].
pub fn mount_shared(params: &BootParams) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(SHARED_MOUNT)?;
    let (kind, data) = match params.shared_fs.as_str() {
        "virtio-fs" => ("virtiofs", None),
        _ => (
            "9p",
            Some(format!(
                "trans=virtio,version=9p2000.L,msize={},cache=mmap",
                params.msize_9p
            )),
        ),
    };
    mount(
        Some(SHARED_TAG),
        SHARED_MOUNT,
        Some(kind),
        MsFlags::empty(),
        data.as_deref(),
    )
    .map_err(|e| {
        std::io::Error::other(format!("mount {kind} {SHARED_TAG} on {SHARED_MOUNT}: {e}"))
    })?;
    Ok(PathBuf::from(SHARED_MOUNT))
}

/// Ends the VM: file systems synced, the shared directory unmounted, power off (PID 1 must
/// never exit: that is a kernel panic).
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::mount::umount2(SHARED_MOUNT, nix::mount::MntFlags::MNT_DETACH);
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // Without ACPI power off, a reboot ends QEMU run with -no-reboot.
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_params_come_from_the_kernel_command_line() {
        let params = BootParams::parse(
            "quiet console=ttyS0 vessel.debug=1 vessel.port=agent.1 vessel.shared_fs=virtio-fs \
             vessel.msize_9p=65536 vessel.runtime=builtin vessel.template=1",
        );
        assert_eq!(
            params,
            BootParams {
                debug: true,
                shared_fs: "virtio-fs".into(),
                port: "agent.1".into(),
                msize_9p: 65536,
                runtime: "builtin".into(),
                template: true,
            }
        );
        let defaults = BootParams::parse("quiet vessel.msize_9p=0 vessel.msize_9p=big");
        assert_eq!(defaults.port, "agent.0");
        assert_eq!(defaults.runtime, DEFAULT_RUNTIME);
        assert_eq!(defaults.msize_9p, DEFAULT_MSIZE_9P);
        assert!(!defaults.template);
    }
}
