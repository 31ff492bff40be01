//! QEMU confined, with Firecracker's jailer as the model. The shim starts QEMU through a helper
//! mode of its own binary (`containerd-shim-vessel-v2 jail ... -- QEMU ARGS`), which confines
//! itself and then execs QEMU, so that nothing but descriptor moves runs between fork and exec:
//!
//! - New mount, network, IPC and UTS namespaces. The mount namespace's root is a tmpfs,
//!   read-only once built, that holds only what QEMU opens, each at its host path: `/usr`
//!   read-only (the binary, its libraries, ROMs and modules; `/lib`, `/bin`, ... as the host
//!   has them, links into `/usr` on a merged-/usr host), the guest's kernel, initrd and
//!   firmware read-only, `/proc/sys/vm/overcommit_memory` read-only (QEMU reads it for memory
//!   it does not reserve), its own `/proc/PID` read-only as `/proc/self` (the 9p server
//!   changes modes through `/proc/self/fd`), the device nodes it opens, a memory backend's
//!   directory, and the exported shared directory with the mounts the shim makes in it later
//!   (on the host it is a slave of `mounts/`, a shared mount: `shared::export`; its copy here
//!   is a slave too).
//!   No `/etc`, `/sys`, other processes or state directory: QEMU's sockets and tap come as
//!   descriptors, and the network namespace is empty.
//! - Capabilities: the bounding set holds only those the jail keeps (what the shared file
//!   system needs, never CAP_SYS_ADMIN).
//! - An unprivileged uid and gid of the sandbox's own ([`unused_id`]), the kept capabilities
//!   ambient so that they survive the exec.
//! - no_new_privs, SIGKILL when the shim dies, and every descriptor past those passed closed.

use std::{
    collections::HashSet,
    ffi::{CString, OsStr, OsString},
    io,
    os::unix::{
        ffi::OsStrExt,
        fs::{MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    process::ExitCode,
};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// The shim binary's action that runs a program in a jail.
pub const ACTION: &str = "jail";

/// The uids (and gids) QEMU processes run as, one per sandbox: 65536 ids from 0x7E000000,
/// above login users, systemd's container and dynamic ranges and sssd's default ranges.
pub const IDS_BASE: u32 = 0x7E00_0000;
/// How many ids [`IDS_BASE`] starts.
pub const IDS: u32 = 0x1_0000;

/// A capability a jail may keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// CAP_CHOWN: give a file the owner the guest asked for.
    Chown,
    /// CAP_DAC_OVERRIDE: read and write files whatever their mode and owner.
    DacOverride,
    /// CAP_FOWNER: change the mode and times of files it does not own.
    Fowner,
    /// CAP_FSETID: keep set-user-ID and set-group-ID bits.
    Fsetid,
}

impl Capability {
    const ALL: [Capability; 4] = [
        Capability::Chown,
        Capability::DacOverride,
        Capability::Fowner,
        Capability::Fsetid,
    ];

    /// Its number (linux/capability.h).
    fn number(self) -> u32 {
        match self {
            Capability::Chown => 0,
            Capability::DacOverride => 1,
            Capability::Fowner => 3,
            Capability::Fsetid => 4,
        }
    }

    /// Its name, as capabilities(7) spells it without `CAP_`, lower case.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Chown => "chown",
            Capability::DacOverride => "dac_override",
            Capability::Fowner => "fowner",
            Capability::Fsetid => "fsetid",
        }
    }

    fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// The credentials the program runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Its uid.
    pub uid: u32,
    /// Its gid.
    pub gid: u32,
    /// Its supplementary groups.
    pub groups: Vec<u32>,
}

/// What a program sees and may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Jail {
    /// An empty directory the jail's root is built on (in the jail's own mount namespace).
    pub root: PathBuf,
    /// Files and directories visible read-only.
    pub read_only: Vec<PathBuf>,
    /// Device nodes it opens.
    pub devices: Vec<PathBuf>,
    /// Directories it writes in (a memory backend's).
    pub writable: Vec<PathBuf>,
    /// The directory shared with the guest, with the mounts made in it later.
    pub shared: Option<PathBuf>,
    /// The capabilities it keeps.
    pub capabilities: Vec<Capability>,
    /// Its uid and gids (None: root's).
    pub user: Option<User>,
    /// The descriptors it gets, 0 to `fds - 1`; the others are closed.
    pub fds: i32,
}

impl Jail {
    /// The shim binary's arguments that run `program` with `args` in this jail, `parent`
    /// being the shim (the program dies with it).
    pub fn arguments(&self, parent: u32, program: &str, args: &[String]) -> Vec<OsString> {
        let mut out: Vec<OsString> = vec![ACTION.into()];
        let mut add = |flag: &str, value: &OsStr| {
            out.push(flag.into());
            out.push(value.to_os_string());
        };
        add("--root", self.root.as_os_str());
        add("--parent", OsStr::new(&parent.to_string()));
        add("--fds", OsStr::new(&self.fds.to_string()));
        for path in &self.read_only {
            add("--ro", path.as_os_str());
        }
        for path in &self.devices {
            add("--dev", path.as_os_str());
        }
        for path in &self.writable {
            add("--rw", path.as_os_str());
        }
        if let Some(shared) = &self.shared {
            add("--shared", shared.as_os_str());
        }
        for cap in &self.capabilities {
            add("--cap", OsStr::new(cap.name()));
        }
        if let Some(user) = &self.user {
            let groups: Vec<String> = user.groups.iter().map(u32::to_string).collect();
            let value = format!("{}:{}:{}", user.uid, user.gid, groups.join(","));
            add("--user", OsStr::new(&value));
        }
        out.push("--".into());
        out.push(program.into());
        out.extend(args.iter().map(OsString::from));
        out
    }

    /// The jail, the shim's pid and the program's command line from the arguments after
    /// [`ACTION`].
    fn parse(args: Vec<OsString>) -> std::result::Result<(Jail, u32, Vec<OsString>), String> {
        let mut jail = Jail::default();
        let mut parent = 0;
        let mut args = args.into_iter();
        let number = |flag: &str, value: &OsStr| {
            value
                .to_str()
                .and_then(|v| v.parse::<u32>().ok())
                .ok_or_else(|| format!("{flag}: not a number: {value:?}"))
        };
        while let Some(flag) = args.next() {
            if flag == "--" {
                let program: Vec<OsString> = args.collect();
                if program.is_empty() {
                    return Err("no program after --".into());
                }
                if jail.root.as_os_str().is_empty() {
                    return Err("--root is missing".into());
                }
                return Ok((jail, parent, program));
            }
            let flag = flag.to_string_lossy().into_owned();
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            // Absolute, without `.` or `..`: its place in the jail is under the jail's root.
            let path = || {
                let path = PathBuf::from(&value);
                let plain = path
                    .components()
                    .skip(1)
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
                if path.is_absolute() && plain {
                    Ok(path)
                } else {
                    Err(format!("{flag}: not a plain absolute path: {value:?}"))
                }
            };
            match flag.as_str() {
                "--root" => jail.root = path()?,
                "--parent" => parent = number(&flag, &value)?,
                "--fds" => jail.fds = number(&flag, &value)? as i32,
                "--ro" => jail.read_only.push(path()?),
                "--dev" => jail.devices.push(path()?),
                "--rw" => jail.writable.push(path()?),
                "--shared" => jail.shared = Some(path()?),
                "--cap" => jail.capabilities.push(
                    value
                        .to_str()
                        .and_then(Capability::named)
                        .ok_or_else(|| format!("--cap: unknown capability {value:?}"))?,
                ),
                "--user" => {
                    let text = value.to_string_lossy();
                    let mut parts = text.splitn(3, ':');
                    let mut id = || {
                        parts
                            .next()
                            .and_then(|p| p.parse::<u32>().ok())
                            .ok_or_else(|| format!("--user: UID:GID[:GROUPS], not {text:?}"))
                    };
                    let (uid, gid) = (id()?, id()?);
                    let groups = parts
                        .next()
                        .unwrap_or("")
                        .split(',')
                        .filter(|g| !g.is_empty())
                        .map(|g| g.parse::<u32>().map_err(|_| format!("--user: group {g:?}")))
                        .collect::<std::result::Result<_, _>>()?;
                    jail.user = Some(User { uid, gid, groups });
                }
                other => return Err(format!("unknown option {other}")),
            }
        }
        Err("no -- before the program".into())
    }
}

/// The `jail` action: confines itself as its arguments say and execs the program; returns
/// only when it could not (the reason on stderr, which is QEMU's log).
pub fn main(args: Vec<OsString>) -> ExitCode {
    let result = Jail::parse(args).and_then(|(jail, parent, program)| {
        enter(&jail, parent)?;
        exec(&program)
    });
    if let Err(e) = result {
        eprintln!("vessel jail: {e}");
    }
    ExitCode::from(126)
}

fn failed(what: impl std::fmt::Display) -> impl FnOnce(nix::Error) -> String {
    move |e| format!("{what}: {e}")
}

fn check(rc: libc::c_long, what: &str) -> std::result::Result<(), String> {
    if rc < 0 {
        Err(format!("{what}: {}", io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

/// How a path is made visible in the jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ReadOnly,
    Device,
    Writable,
    Shared,
}

/// The jail's root while it is built.
struct Root<'a> {
    dir: &'a Path,
    /// The tmpfs's device: a path that exists on another is already visible through a bind.
    dev: u64,
}

impl Root<'_> {
    /// `path`'s place under the root.
    fn target(&self, path: &Path) -> PathBuf {
        self.dir
            .join(path.strip_prefix("/").unwrap_or(path.as_os_str().as_ref()))
    }

    /// The host's `/usr`, and `/lib`, `/lib64`, `/bin`, `/sbin` as it has them.
    fn system(&self) -> std::result::Result<(), String> {
        self.bind(Path::new("/usr"), Kind::ReadOnly)?;
        for top in ["lib", "lib32", "lib64", "libx32", "bin", "sbin"] {
            let host = Path::new("/").join(top);
            match std::fs::symlink_metadata(&host) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    let to = std::fs::read_link(&host)
                        .map_err(|e| format!("read link {}: {e}", host.display()))?;
                    std::os::unix::fs::symlink(&to, self.target(&host))
                        .map_err(|e| format!("link {} in the jail: {e}", host.display()))?;
                }
                Ok(meta) if meta.is_dir() => self.bind(&host, Kind::ReadOnly)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// This process's own `/proc/PID`, read-only, and `/proc/self` a link to it: the 9p server
    /// changes a file's mode through `/proc/self/fd` (`chmod` does not take
    /// `AT_SYMLINK_NOFOLLOW`). The pid stays QEMU's after the exec; no other process, and
    /// nothing else of procfs (`/proc/sys`, `/proc/sysrq-trigger`), is visible.
    fn own_proc(&self) -> std::result::Result<(), String> {
        let pid = std::process::id().to_string();
        self.bind(&Path::new("/proc").join(&pid), Kind::ReadOnly)?;
        std::os::unix::fs::symlink(&pid, self.target(Path::new("/proc/self")))
            .map_err(|e| format!("link /proc/self in the jail: {e}"))
    }

    /// Makes `path` visible at the same place in the jail.
    fn bind(&self, path: &Path, kind: Kind) -> std::result::Result<(), String> {
        let target = self.target(path);
        if kind == Kind::ReadOnly {
            // Already there through an earlier bind (a ROM under /usr, say).
            if std::fs::metadata(&target).is_ok_and(|m| m.dev() != self.dev) {
                return Ok(());
            }
        }
        let source = std::fs::metadata(path)
            .map_err(|e| format!("{} (for QEMU's jail): {e}", path.display()))?;
        let parent = target.parent().unwrap_or(self.dir);
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("create {} in the jail: {e}", parent.display()))?;
        let made = if source.is_dir() {
            std::fs::create_dir(&target).or_else(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })
        } else {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o444)
                .open(&target)
                .map(drop)
        };
        made.map_err(|e| format!("mount point for {} in the jail: {e}", path.display()))?;
        let recursive = if matches!(kind, Kind::Device) {
            MsFlags::empty()
        } else {
            MsFlags::MS_REC
        };
        mount(
            Some(path),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | recursive,
            None::<&str>,
        )
        .map_err(failed(format!("bind {}", path.display())))?;
        let flags = match kind {
            Kind::ReadOnly => MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Kind::Device => MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Kind::Writable | Kind::Shared => {
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
            }
        };
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
            None::<&str>,
        )
        .map_err(failed(format!("remount {}", path.display())))?;
        if kind != Kind::Shared {
            // Nothing the host mounts later appears here; the shared directory stays a slave.
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_PRIVATE | recursive,
                None::<&str>,
            )
            .map_err(failed(format!("make {} private", path.display())))?;
        }
        Ok(())
    }
}

/// The highest capability number this kernel knows.
fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// Confines this process as `jail` says; `parent` is the shim.
fn enter(jail: &Jail, parent: u32) -> std::result::Result<(), String> {
    let last_cap = last_capability();
    // SAFETY: unshare only changes this single-threaded process's namespaces.
    let rc = unsafe {
        libc::unshare(
            libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS,
        )
    };
    check(rc.into(), "unshare")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(failed("make / a slave"))?;
    mount(
        Some("tmpfs"),
        &jail.root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=1m,nr_inodes=4096"),
    )
    .map_err(failed(format!("mount a tmpfs on {}", jail.root.display())))?;
    let dev = std::fs::metadata(&jail.root)
        .map_err(|e| format!("{}: {e}", jail.root.display()))?
        .dev();
    let root = Root {
        dir: &jail.root,
        dev,
    };
    root.system()?;
    for path in &jail.read_only {
        root.bind(path, Kind::ReadOnly)?;
    }
    for path in &jail.devices {
        root.bind(path, Kind::Device)?;
    }
    for path in &jail.writable {
        root.bind(path, Kind::Writable)?;
    }
    if let Some(shared) = &jail.shared {
        root.bind(shared, Kind::Shared)?;
    }
    root.own_proc()?;
    nix::unistd::chdir(&jail.root).map_err(failed("enter the jail"))?;
    nix::unistd::pivot_root(".", ".").map_err(failed("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(failed("detach the host's root"))?;
    nix::unistd::chdir("/").map_err(failed("chdir /"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(failed("make the jail's root read-only"))?;
    drop_privileges(jail, last_cap)?;
    // SAFETY: prctl and getppid touch only this process.
    unsafe {
        check(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into(),
            "no_new_privs",
        )?;
        // Set after the credentials changed, which clears it.
        check(
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0).into(),
            "parent death signal",
        )?;
        if parent != 0 && libc::getppid() as u32 != parent {
            return Err("the shim is gone".into());
        }
    }
    close_from(jail.fds.max(3));
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Leaves the jail's capabilities only (bounding, permitted, effective, inheritable and, for
/// an unprivileged user, ambient) and switches to its user.
fn drop_privileges(jail: &Jail, last_cap: u32) -> std::result::Result<(), String> {
    let keep: u64 = jail
        .capabilities
        .iter()
        .fold(0, |mask, c| mask | 1 << c.number());
    for cap in 0..=last_cap.min(63) {
        if keep & (1 << cap) == 0 {
            // SAFETY: prctl changes only this process's bounding set.
            let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            check(
                rc.into(),
                &format!("drop capability {cap} from the bounding set"),
            )?;
        }
    }
    if let Some(user) = &jail.user {
        // SAFETY: these calls change only this single-threaded process's credentials.
        unsafe {
            check(
                libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0).into(),
                "keep capabilities",
            )?;
            check(
                libc::setgroups(user.groups.len(), user.groups.as_ptr()).into(),
                "setgroups",
            )?;
            check(
                libc::setresgid(user.gid, user.gid, user.gid).into(),
                "setresgid",
            )?;
            check(
                libc::setresuid(user.uid, user.uid, user.uid).into(),
                "setresuid",
            )?;
        }
    }
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let set = CapData {
        effective: keep as u32,
        permitted: keep as u32,
        inheritable: keep as u32,
    };
    let data = [
        set,
        CapData {
            effective: (keep >> 32) as u32,
            permitted: (keep >> 32) as u32,
            inheritable: (keep >> 32) as u32,
        },
    ];
    // SAFETY: capset reads one header and two data structs, which outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    check(rc, "capset")?;
    if jail.user.is_some() {
        for cap in &jail.capabilities {
            // SAFETY: prctl changes only this process's ambient set.
            let rc = unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE,
                    cap.number() as libc::c_ulong,
                    0,
                    0,
                )
            };
            check(rc.into(), &format!("raise ambient {}", cap.name()))?;
        }
    }
    Ok(())
}

/// Closes every descriptor from `first` on.
fn close_from(first: i32) {
    // SAFETY: close_range closes this process's descriptors only; none is in use by Rust code
    // past this point.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, 0) };
    if rc < 0 {
        for fd in first..4096 {
            // SAFETY: as above.
            unsafe { libc::close(fd) };
        }
    }
}

/// Executes `program` (its path first); returns only its failure.
fn exec(program: &[OsString]) -> std::result::Result<(), String> {
    let args: Vec<CString> = program
        .iter()
        .map(|a| CString::new(a.as_bytes().to_vec()).map_err(|_| format!("NUL in {a:?}")))
        .collect::<std::result::Result<_, _>>()?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: argv is a NULL-terminated array of C strings that outlive the call.
    unsafe { libc::execv(argv[0], argv.as_ptr()) };
    Err(format!(
        "execute {}: {}",
        program[0].to_string_lossy(),
        io::Error::last_os_error()
    ))
}

/// An id in [`IDS_BASE`]..+[`IDS`] that no running process has as its uid or gid, chosen from
/// `seed` (the sandbox's state directory) first: each sandbox's QEMU gets its own, so that
/// one cannot signal or trace another.
pub fn unused_id(seed: &Path) -> u32 {
    let mut in_use = HashSet::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let status = entry.path().join("status");
            let Ok(text) = std::fs::read_to_string(status) else {
                continue;
            };
            for line in text.lines() {
                if let Some(ids) = line
                    .strip_prefix("Uid:")
                    .or_else(|| line.strip_prefix("Gid:"))
                {
                    in_use.extend(ids.split_whitespace().filter_map(|i| i.parse::<u32>().ok()));
                }
            }
        }
    }
    // FNV-1a: the same sandbox asks for the same id first.
    let hash = seed
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
        });
    let start = hash % IDS;
    (0..IDS)
        .map(|i| IDS_BASE + (start + i) % IDS)
        .find(|id| !in_use.contains(id))
        .unwrap_or(IDS_BASE + start)
}

/// `args` after the shim binary's name, when its action is [`ACTION`].
pub fn action_args(args: impl Iterator<Item = OsString>) -> Option<Vec<OsString>> {
    let mut args = args.skip(1);
    match args.next() {
        Some(action) if action == ACTION => Some(args.collect()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helpers_command_line_carries_the_whole_jail() {
        let jail = Jail {
            root: "/run/vessel/ns/s1/jail".into(),
            read_only: vec!["/k,ernel".into()],
            devices: vec!["/dev/null".into()],
            writable: vec!["/dev/hugepages".into()],
            shared: Some("/run/vessel/ns/s1/shared".into()),
            capabilities: vec![Capability::Chown, Capability::Fsetid],
            user: Some(User {
                uid: IDS_BASE + 7,
                gid: IDS_BASE + 7,
                groups: vec![104],
            }),
            fds: 6,
        };
        let args = jail.arguments(42, "/usr/bin/qemu", &["-name".into(), "x".into()]);
        assert_eq!(args[0], ACTION);
        let (parsed, parent, program) = Jail::parse(args[1..].to_vec()).unwrap();
        assert_eq!(parsed, jail);
        assert_eq!(parent, 42);
        assert_eq!(program, ["/usr/bin/qemu", "-name", "x"]);
        let bare = Jail {
            root: "/j".into(),
            ..Default::default()
        };
        let args = bare.arguments(1, "/p", &[]);
        assert_eq!(Jail::parse(args[1..].to_vec()).unwrap().0, bare);
    }

    #[test]
    fn a_malformed_command_line_is_refused() {
        let parse = |args: &[&str]| Jail::parse(args.iter().map(OsString::from).collect());
        assert!(parse(&["--root", "/j"]).is_err(), "no program");
        assert!(parse(&["--", "/p"]).is_err(), "no root");
        assert!(parse(&["--root", "j", "--", "/p"]).is_err(), "relative");
        assert!(parse(&["--root", "/j", "--ro", "/a/../etc", "--", "/p"]).is_err());
        assert!(parse(&["--root", "/j", "--cap", "sys_admin", "--", "/p"]).is_err());
        assert!(parse(&["--root", "/j", "--user", "1", "--", "/p"]).is_err());
        assert!(parse(&["--root", "/j", "--what", "x", "--", "/p"]).is_err());
    }

    #[test]
    fn ids_come_from_the_range_and_a_sandbox_asks_for_the_same_one() {
        let a = unused_id(Path::new("/run/vessel/default/a"));
        assert!((IDS_BASE..IDS_BASE + IDS).contains(&a));
        assert_eq!(a, unused_id(Path::new("/run/vessel/default/a")));
        assert_ne!(a, unused_id(Path::new("/run/vessel/default/b")));
    }
}
