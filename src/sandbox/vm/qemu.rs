//! QEMU from the conversion core's `HypervisorConfig`: its command line, the accelerator that
//! really boots a guest here, and the process (its exit learnt from the shim's reaper).

use std::{
    fs::File,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::{
            fs::MetadataExt,
            net::{UnixListener, UnixStream},
            process::CommandExt,
        },
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use containerd_shim::{
    asynchronous::monitor::{monitor_subscribe, monitor_unsubscribe},
    monitor::{Subject, Topic},
};
use tokio::io::AsyncReadExt;

use super::{
    super::{Error, Result},
    jail::{self, Capability, Jail},
    memory,
};
use crate::oci::HypervisorConfig;

/// kata's kernel parameters for a fast boot, and the console on the first serial port (which
/// goes nowhere unless the configuration asks for debug output); the clock's come from
/// [`Accelerator::clock_params`].
const KERNEL_PARAMS: &str = "console=ttyS0 no_timer_check rcupdate.rcu_expedited=1 \
    i8042.direct=1 i8042.dumbkbd=1 i8042.nopnp=1 i8042.noaux=1 noreplace-smp \
    cryptomgr.notests pci=lastbus=0 quiet panic=-1";

/// The 9p mount tag of the shared directory (the agent mounts it by this tag).
const SHARED_TAG: &str = "vessel";
/// The name of the agent's virtio-serial port.
const AGENT_PORT: &str = "agent.0";
/// QEMU's seccomp filter: no obsolete system calls, no set*uid/set*gid, no fork or exec, no
/// scheduler or resource limit changes.
pub const SECCOMP: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// How QEMU runs guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl Accelerator {
    /// The guest's clock. Under KVM the TSC is reliable (kata's setting). Under TCG the
    /// kernel calibrates the TSC while its vCPU thread competes for the host's cores, and with
    /// ten guests booting at once their clocks were seen running 15 times too fast (deadlines
    /// of the agent firing at once): the emulated HPET keeps the host's time.
    fn clock_params(self) -> &'static str {
        match self {
            Self::Kvm => "tsc=reliable",
            Self::Tcg => "clocksource=hpet tsc=unstable",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }

    /// The value of QEMU's `-accel`: under TCG, with its translation cache capped at
    /// `tb_size` MiB unless that is 0.
    fn option(self, tb_size: u32) -> String {
        match self {
            Self::Tcg if tb_size > 0 => format!("tcg,tb-size={tb_size}"),
            _ => self.name().to_string(),
        }
    }
}

/// Where the file recording whether KVM boots a guest on this host lives (it lasts until the
/// host reboots, /run being a tmpfs).
const KVM_PROBE_FILE: &str = "/run/vessel/kvm-probe";

/// The accelerators to try, best first: KVM when /dev/kvm opens and no earlier boot found it
/// unusable, then TCG.
pub fn accelerators() -> Vec<Accelerator> {
    let kvm_opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let known_unusable = recorded_kvm().is_some_and(|s| s.starts_with("unusable"));
    if kvm_opens && !known_unusable {
        vec![Accelerator::Kvm, Accelerator::Tcg]
    } else {
        vec![Accelerator::Tcg]
    }
}

/// What the last boot with KVM on this host showed (`usable`, or `unusable: <why>`), if a
/// VM booted since the host did.
pub fn recorded_kvm() -> Option<String> {
    std::fs::read_to_string(KVM_PROBE_FILE)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Records what a boot with KVM showed, for the sandboxes that come after.
pub fn record_kvm(usable: bool, reason: &str) {
    let text = if usable {
        "usable\n".to_string()
    } else {
        format!("unusable: {reason}\n")
    };
    if let Some(dir) = Path::new(KVM_PROBE_FILE).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(KVM_PROBE_FILE, text);
}

/// What a VM is started with, besides the hypervisor settings.
#[derive(Debug, Clone)]
pub struct Vm {
    /// The host side of the agent's port (a unix socket the shim binds and QEMU listens on,
    /// given as a descriptor). Its directory is the sandbox's state directory.
    pub agent_socket: PathBuf,
    /// The directory shared with the guest.
    pub shared_dir: PathBuf,
    /// Where QEMU's own messages go.
    pub qemu_log: PathBuf,
    /// Guest kernel parameters of the agent (`vessel.*`).
    pub agent_params: String,
    /// The MAC address of the guest's interface to the pod network, if it has one (its tap
    /// is QEMU's descriptor 3).
    pub nic_mac: Option<String>,
    /// virtiofsd's socket when the shared directory is virtio-fs (else 9p).
    pub virtio_fs_socket: Option<PathBuf>,
    /// The guest's memory: its size at boot and how it can grow.
    pub memory: memory::Layout,
    /// The vCPUs at boot (the configured default, or the pod's size when it is static).
    pub vcpus: u32,
    /// QEMU's machine protocol socket (QMP), for hotplug (bound by the shim, like the
    /// agent's).
    pub qmp_socket: PathBuf,
    /// The VM's part in a template: saved as one, or cloned from one.
    pub template: Option<TemplateRole>,
}

/// A VM's part in a template; each names the template's image directory (its guest memory
/// and its saved device state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateRole {
    /// Booted to be saved: its memory a shared file in the image directory.
    Save(PathBuf),
    /// Started from the saved state, its memory the template's file mapped copy-on-write.
    Clone(PathBuf),
}

impl TemplateRole {
    /// The image directory.
    pub fn image(&self) -> &Path {
        match self {
            Self::Save(image) | Self::Clone(image) => image,
        }
    }

    /// The guest memory's file.
    pub fn memory(&self) -> PathBuf {
        self.image().join("memory")
    }

    /// The saved device state's file.
    pub fn state(&self) -> PathBuf {
        self.image().join("state")
    }
}

impl Vm {
    /// The sandbox's state directory.
    fn dir(&self) -> &Path {
        self.agent_socket.parent().unwrap_or(Path::new("/"))
    }
}

/// The descriptors QEMU gets, numbered from 3 in this order: the tap (with a pod network), the
/// agent's listening socket, QMP's, and the connection to virtiofsd (with virtio-fs). QEMU
/// opens no socket by path, so its jail needs no state directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Descriptors {
    tap: Option<i32>,
    agent: i32,
    qmp: i32,
    virtio_fs: Option<i32>,
    /// One past the last.
    end: i32,
}

impl Descriptors {
    fn of(vm: &Vm) -> Self {
        let mut next = 3;
        let mut take = || {
            next += 1;
            next - 1
        };
        let tap = vm.nic_mac.as_ref().map(|_| take());
        let agent = take();
        let qmp = take();
        let virtio_fs = vm.virtio_fs_socket.as_ref().map(|_| take());
        Self {
            tap,
            agent,
            qmp,
            virtio_fs,
            end: next,
        }
    }
}

/// QEMU's arguments for `vm` with `config`, under `accelerator`.
pub fn arguments(config: &HypervisorConfig, vm: &Vm, accelerator: Accelerator) -> Vec<String> {
    let machine = if config.hypervisor_machine_type.is_empty() {
        "q35"
    } else {
        &config.hypervisor_machine_type
    };
    let mut machine = machine.to_string();
    if !config.machine_accelerators.is_empty() {
        machine.push(',');
        machine.push_str(&config.machine_accelerators);
    }
    let cpu = match accelerator {
        Accelerator::Kvm => "host",
        Accelerator::Tcg => "max",
    };
    let vcpus = vm.vcpus.max(1);
    let max_vcpus = config.default_max_vcpus.max(vcpus);
    let mut params = vec![
        KERNEL_PARAMS.to_string(),
        accelerator.clock_params().to_string(),
        vm.agent_params.clone(),
    ];
    params.extend(
        memory::kernel_params(&vm.memory)
            .into_iter()
            .map(String::from),
    );
    params.extend(config.kernel_params.iter().map(|p| {
        if p.value.is_empty() {
            p.key.clone()
        } else {
            format!("{}={}", p.key, p.value)
        }
    }));
    let fds = Descriptors::of(vm);
    let mut args: Vec<String> = vec![
        // The state directory names the process (see `is_ours`).
        "-name".into(),
        option_value(&vm.dir().to_string_lossy()),
        "-machine".into(),
        machine,
        "-accel".into(),
        accelerator.option(config.tcg_tb_size),
        "-cpu".into(),
        cpu.into(),
        "-smp".into(),
        format!("{vcpus},maxcpus={max_vcpus}"),
        "-nodefaults".into(),
        "-nographic".into(),
        "-no-reboot".into(),
        // The guest's console: read by the shim, bounded, only for debug output.
        "-serial".into(),
        if config.debug { "stdio" } else { "null" }.into(),
        "-kernel".into(),
        config.kernel_path.clone(),
        "-append".into(),
        params.join(" "),
    ];
    if !config.initrd_path.is_empty() {
        args.extend(["-initrd".into(), config.initrd_path.clone()]);
    }
    args.extend(memory::arguments(
        config,
        vm.virtio_fs_socket.is_some(),
        &vm.memory,
        vm.template.as_ref(),
    ));
    args.extend([
        "-chardev".into(),
        format!("socket,id=qmp,fd={},server=on,wait=off", fds.qmp),
        "-mon".into(),
        "chardev=qmp,mode=control".into(),
    ]);
    if !config.firmware_path.is_empty() {
        // qboot, say: under TCG it starts the kernel about 0.5 s sooner than SeaBIOS.
        args.extend(["-bios".into(), config.firmware_path.clone()]);
    }
    args.extend([
        "-device".into(),
        "virtio-serial-pci,id=serial0".into(),
        "-chardev".into(),
        format!("socket,id=agent,fd={},server=on,wait=off", fds.agent),
        "-device".into(),
        format!("virtserialport,chardev=agent,name={AGENT_PORT}"),
    ]);
    match fds.virtio_fs {
        // vhost-user needs the guest's memory shared with virtiofsd (memory::arguments).
        Some(fd) => args.extend([
            "-chardev".into(),
            format!("socket,id=vfs,fd={fd}"),
            "-device".into(),
            format!("vhost-user-fs-pci,chardev=vfs,tag={SHARED_TAG}"),
        ]),
        None => args.extend([
            "-fsdev".into(),
            format!(
                "local,id=shared,path={},security_model=none",
                option_value(&vm.shared_dir.to_string_lossy())
            ),
            "-device".into(),
            format!("virtio-9p-pci,fsdev=shared,mount_tag={SHARED_TAG}"),
        ]),
    }
    if let (Some(mac), Some(fd)) = (&vm.nic_mac, fds.tap) {
        args.extend([
            "-netdev".into(),
            format!("tap,id=net0,fd={fd},vhost=off"),
            "-device".into(),
            format!("virtio-net-pci,netdev=net0,mac={mac}"),
        ]);
    }
    if !config.entropy_source.is_empty() {
        args.extend([
            "-object".into(),
            format!(
                "rng-random,id=rng0,filename={}",
                option_value(&config.entropy_source)
            ),
            "-device".into(),
            "virtio-rng-pci,rng=rng0".into(),
        ]);
    }
    if let Some(role) = &vm.template {
        // A new generation id for each clone: the guest's kernel reseeds its CRNG on it.
        args.extend(["-device".into(), "vmgenid,guid=auto".into()]);
        if let TemplateRole::Clone(_) = role {
            // Paused, waiting for the saved state (QMP `migrate-incoming`).
            args.extend(["-S".into(), "-incoming".into(), "defer".into()]);
        }
    }
    if !config.disable_seccomp {
        args.extend(["-sandbox".into(), SECCOMP.into()]);
    }
    args
}

/// QEMU's jail (see [`jail`]): what it opens, the capabilities the shared file system needs,
/// and an unprivileged user of the sandbox's own.
///
/// The 9p server runs in QEMU and, with `security_model=none`, creates the guest's files with
/// QEMU's credentials and then gives them the owner and mode the guest asked for: it keeps
/// CAP_CHOWN (the owner), CAP_DAC_OVERRIDE (files and directories of any owner and mode, as
/// root in the guest expects), CAP_FOWNER (the mode and times of files it does not own) and
/// CAP_FSETID (set-user-ID and set-group-ID bits). With virtio-fs, virtiofsd does that and
/// QEMU keeps nothing, CAP_DAC_OVERRIDE only to create a memory backend's file in a
/// directory of root's. Never CAP_MKNOD: a device node it made in the shared directory, which
/// is on the host, would open the host's devices.
fn jail_of(config: &HypervisorConfig, vm: &Vm, accelerator: Accelerator) -> Jail {
    let mut read_only: Vec<PathBuf> = [
        config.hypervisor_path.as_str(),
        config.kernel_path.as_str(),
        config.initrd_path.as_str(),
        config.firmware_path.as_str(),
        // Read for memory QEMU does not reserve (virtio-mem's `reserve=off`).
        "/proc/sys/vm/overcommit_memory",
    ]
    .into_iter()
    .filter(|p| !p.is_empty())
    .map(PathBuf::from)
    .collect();
    read_only.dedup();
    let mut devices: Vec<PathBuf> = ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"]
        .into_iter()
        .map(PathBuf::from)
        .collect();
    let entropy = PathBuf::from(&config.entropy_source);
    if !config.entropy_source.is_empty() && !devices.contains(&entropy) {
        devices.push(entropy);
    }
    let mut groups = Vec::new();
    if accelerator == Accelerator::Kvm {
        devices.push("/dev/kvm".into());
        if let Ok(meta) = std::fs::metadata("/dev/kvm") {
            groups.push(meta.gid());
        }
    }
    match &vm.template {
        Some(TemplateRole::Clone(image)) => read_only.push(image.clone()),
        Some(TemplateRole::Save(_)) | None => {}
    }
    let writable: Vec<PathBuf> = if let Some(TemplateRole::Save(image)) = &vm.template {
        vec![image.clone()]
    } else if config.huge_pages {
        vec![memory::HUGEPAGES_DIR.into()]
    } else if !config.file_backed_mem_root_dir.is_empty() {
        vec![config.file_backed_mem_root_dir.clone().into()]
    } else {
        Vec::new()
    };
    let nine_p = vm.virtio_fs_socket.is_none();
    let capabilities = if nine_p {
        vec![
            Capability::Chown,
            Capability::DacOverride,
            Capability::Fowner,
            Capability::Fsetid,
        ]
    } else if !writable.is_empty() {
        vec![Capability::DacOverride]
    } else {
        Vec::new()
    };
    let id = jail::unused_id(vm.dir());
    Jail {
        root: vm.dir().join("jail"),
        read_only,
        devices,
        writable,
        shared: nine_p.then(|| vm.shared_dir.clone()),
        capabilities,
        user: Some(jail::User {
            uid: id,
            gid: id,
            groups,
        }),
        fds: Descriptors::of(vm).end,
    }
}

/// `value` as the value of a QEMU option (`key=value,...`): a comma is doubled, so a path
/// cannot end the value and add options of its own.
pub fn option_value(value: &str) -> String {
    value.replace(',', ",,")
}

/// A running QEMU.
pub struct Qemu {
    /// Its pid.
    pub pid: u32,
    /// Resolves with its exit status once the reaper collected it.
    pub exited: tokio::sync::oneshot::Receiver<i32>,
}

/// `fd` duplicated above the descriptors QEMU gets (close-on-exec), so that moving them into
/// place in the child never overwrites another.
fn high(fd: RawFd) -> Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor, owned by the OwnedFd.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100) };
    if new < 0 {
        return Err(Error::io(
            "duplicate a descriptor for QEMU",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `new` was just made and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// A unix socket listening at `path` (a stale one there replaced).
fn listen(path: &Path) -> Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path).map_err(|e| Error::io(format!("listen on {}", path.display()), e))
}

/// The descriptors [`Descriptors::of`] numbers, in its order: the shim binds QEMU's sockets and
/// connects to virtiofsd.
fn open_descriptors(vm: &Vm, tap: Option<RawFd>) -> Result<Vec<OwnedFd>> {
    let mut fds = Vec::new();
    if vm.nic_mac.is_some() {
        let tap = tap.ok_or_else(|| Error::Unsupported("a guest NIC without a tap".into()))?;
        fds.push(high(tap)?);
    }
    fds.push(high(listen(&vm.agent_socket)?.as_raw_fd())?);
    fds.push(high(listen(&vm.qmp_socket)?.as_raw_fd())?);
    if let Some(socket) = &vm.virtio_fs_socket {
        let stream = UnixStream::connect(socket)
            .map_err(|e| Error::io(format!("connect to virtiofsd at {}", socket.display()), e))?;
        fds.push(high(stream.as_raw_fd())?);
    }
    Ok(fds)
}

/// Starts QEMU for `vm` with `config` under `accelerator`, in its jail (see [`jail_of`]),
/// through the shim binary's `jail` action: its console (stdout) read into the shim's log
/// when `config.debug` asks for it (bounded, see [`Console`]), else nowhere; its own messages
/// to `vm.qemu_log`; `tap` and its sockets as its descriptors (see [`Descriptors`]). It dies
/// with the shim.
pub async fn launch(
    config: &HypervisorConfig,
    vm: &Vm,
    accelerator: Accelerator,
    tap: Option<RawFd>,
) -> Result<Qemu> {
    let binary = &config.hypervisor_path;
    let args = arguments(config, vm, accelerator);
    let jail = jail_of(config, vm, accelerator);
    log::debug!(
        "starting {binary} {} (as uid {:?}, capabilities {:?})",
        args.join(" "),
        jail.user.as_ref().map(|u| u.uid),
        jail.capabilities
    );
    std::fs::create_dir_all(&jail.root)
        .map_err(|e| Error::io(format!("create {}", jail.root.display()), e))?;
    let log = File::create(&vm.qemu_log)
        .map_err(|e| Error::io(format!("create {}", vm.qemu_log.display()), e))?;
    let fds = open_descriptors(vm, tap)?;
    let sources: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let mut command = Command::new("/proc/self/exe");
    command
        .args(jail.arguments(std::process::id(), binary, &args))
        .stdin(Stdio::null())
        .stdout(if config.debug {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(log);
    // SAFETY: dup2 and prctl are async-signal-safe; nothing else runs between fork and exec
    // (the jail is set up by the helper after its exec).
    unsafe {
        command.pre_exec(move || {
            for (target, source) in (3..).zip(&sources) {
                if libc::dup2(*source, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let mut subscription = monitor_subscribe(Topic::Pid)
        .await
        .map_err(|e| Error::io("subscribe to exits", std::io::Error::other(e.to_string())))?;
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = monitor_unsubscribe(subscription.id).await;
            return Err(Error::io(format!("start {binary}"), e));
        }
    };
    // QEMU's copies only: a QEMU that died refuses the shim's connections, virtiofsd sees
    // QEMU go.
    drop(fds);
    let pid = child.id();
    if let Some(stdout) = child.stdout.take() {
        relay_console(stdout);
    }
    // The reaper collects it; the Child handle is not waited on.
    drop(child);
    let (sender, exited) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut code = -1;
        while let Some(event) = subscription.rx.recv().await {
            if matches!(event.subject, Subject::Pid(p) if p as u32 == pid) {
                code = event.exit_code;
                break;
            }
        }
        let _ = monitor_unsubscribe(subscription.id).await;
        let _ = sender.send(code);
    });
    Ok(Qemu { pid, exited })
}

/// The longest console line logged; the rest of a longer one is dropped.
const CONSOLE_LINE: usize = 4096;
/// The console's log budget, bytes it may log at once (a line costs its length and
/// [`CONSOLE_LINE_COST`]). A guest that writes more has its lines dropped and counted, not
/// buffered.
const CONSOLE_BURST: u64 = 32 * 1024;
/// The console's log budget per second, after [`CONSOLE_BURST`].
const CONSOLE_RATE: u64 = 8 * 1024;
/// What a logged line costs besides its text (the log record around it).
const CONSOLE_LINE_COST: u64 = 128;
/// How often what was dropped is reported.
const CONSOLE_REPORT: Duration = Duration::from_secs(10);

/// The guest's console, as the shim logs it: lines cut at [`CONSOLE_LINE`] bytes, at most
/// [`CONSOLE_RATE`] bytes a second after a burst of [`CONSOLE_BURST`], and a count of what
/// was dropped. It holds one line at most, whatever the guest writes.
struct Console {
    line: Vec<u8>,
    /// Bytes of the current line past [`CONSOLE_LINE`].
    cut: u64,
    tokens: u64,
    refilled: Instant,
    dropped_lines: u64,
    dropped_bytes: u64,
    cut_lines: u64,
    cut_bytes: u64,
}

impl Console {
    fn new(now: Instant) -> Self {
        Self {
            line: Vec::with_capacity(CONSOLE_LINE),
            cut: 0,
            tokens: CONSOLE_BURST,
            refilled: now,
            dropped_lines: 0,
            dropped_bytes: 0,
            cut_lines: 0,
            cut_bytes: 0,
        }
    }

    /// Takes what the guest wrote; `log` gets each line the budget allows.
    fn feed(&mut self, bytes: &[u8], now: Instant, log: &mut impl FnMut(String)) {
        for part in bytes.split_inclusive(|b| *b == b'\n') {
            let (text, ends) = match part.strip_suffix(b"\n") {
                Some(text) => (text, true),
                None => (part, false),
            };
            let room = CONSOLE_LINE - self.line.len();
            let kept = text.len().min(room);
            self.line.extend_from_slice(&text[..kept]);
            self.cut += (text.len() - kept) as u64;
            if ends {
                self.end_line(now, log);
            }
        }
    }

    fn end_line(&mut self, now: Instant, log: &mut impl FnMut(String)) {
        let line = printable(&String::from_utf8_lossy(&self.line));
        let cut = std::mem::take(&mut self.cut);
        self.line.clear();
        if line.is_empty() && cut == 0 {
            return;
        }
        if cut > 0 {
            self.cut_lines += 1;
            self.cut_bytes += cut;
        }
        let earned =
            now.saturating_duration_since(self.refilled).as_millis() as u64 * CONSOLE_RATE / 1000;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(CONSOLE_BURST);
            self.refilled = now;
        }
        let cost = line.len() as u64 + CONSOLE_LINE_COST;
        if cost > self.tokens {
            self.dropped_lines += 1;
            self.dropped_bytes += line.len() as u64 + cut;
            return;
        }
        self.tokens -= cost;
        if cut > 0 {
            log(format!("{line} [{cut} more bytes dropped]"));
        } else {
            log(line);
        }
    }

    /// What was dropped since the last report, if anything.
    fn report(&mut self) -> Option<String> {
        if self.dropped_lines == 0 && self.cut_lines == 0 {
            return None;
        }
        let text = format!(
            "{} lines ({} bytes) dropped over the rate limit of {CONSOLE_RATE} bytes/s, {} \
             lines cut at {CONSOLE_LINE} bytes ({} bytes dropped)",
            self.dropped_lines, self.dropped_bytes, self.cut_lines, self.cut_bytes
        );
        self.dropped_lines = 0;
        self.dropped_bytes = 0;
        self.cut_lines = 0;
        self.cut_bytes = 0;
        Some(text)
    }
}

/// Logs the guest's console through a [`Console`], reading as fast as QEMU writes (the guest
/// never waits on the shim), until QEMU's stdout closes.
fn relay_console(stdout: std::process::ChildStdout) {
    let Ok(mut stdout) = tokio::process::ChildStdout::from_std(stdout) else {
        return;
    };
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 16 * 1024];
        let mut console = Console::new(Instant::now());
        let mut log = |line: String| log::info!("guest console: {line}");
        let mut report = tokio::time::interval(CONSOLE_REPORT);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                read = stdout.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => console.feed(&buffer[..n], Instant::now(), &mut log),
                },
                _ = report.tick() => {
                    if let Some(text) = console.report() {
                        log::warn!("guest console: {text}");
                    }
                }
            }
        }
        console.feed(b"\n", Instant::now(), &mut log);
        if let Some(text) = console.report() {
            log::warn!("guest console: {text}");
        }
    });
}

/// A console line without its terminal control sequences (the firmware clears the screen).
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters final-byte, or ESC and one more character.
            if chars.next_if_eq(&'[').is_some() {
                while chars.next().is_some_and(|c| !c.is_ascii_alphabetic()) {}
            } else {
                chars.next();
            }
        } else if !c.is_control() {
            out.push(c);
        }
    }
    out.trim().to_string()
}

/// The last lines QEMU wrote about itself, for an error.
pub fn last_words(qemu_log: &Path) -> String {
    let text = std::fs::read_to_string(qemu_log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(5)..].join("; ")
}

/// Whether `pid` is the QEMU of state directory `dir` (its command line names the directory),
/// so that a recycled pid is never killed.
pub fn is_ours(pid: u32, dir: &Path) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let needle = dir.to_string_lossy();
    String::from_utf8_lossy(&cmdline).contains(needle.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{Param, SharedFs};

    fn vm() -> Vm {
        Vm {
            agent_socket: "/run/vessel/ns/s1/agent.sock".into(),
            shared_dir: "/run/vessel/ns/s1/shared".into(),
            qemu_log: "/run/vessel/ns/s1/qemu.log".into(),
            agent_params: "vessel.port=agent.0".into(),
            nic_mac: None,
            virtio_fs_socket: None,
            memory: memory::Layout {
                size: 512,
                max: None,
                virtio_mem: false,
            },
            vcpus: 1,
            qmp_socket: "/run/vessel/ns/s1/qmp.sock".into(),
            template: None,
        }
    }

    fn value_of<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn the_hypervisor_config_shapes_the_command_line() {
        let config = HypervisorConfig {
            kernel_path: "/usr/share/vessel/vmlinux".into(),
            initrd_path: "/usr/share/vessel/initramfs.img".into(),
            hypervisor_machine_type: "q35".into(),
            num_vcpus: 2,
            default_max_vcpus: 4,
            memory_size: 512,
            entropy_source: "/dev/urandom".into(),
            firmware_path: "/usr/share/qemu/qboot.rom".into(),
            kernel_params: vec![Param {
                key: "agent.log".into(),
                value: "debug".into(),
            }],
            ..Default::default()
        };
        let two = Vm { vcpus: 2, ..vm() };
        let args = arguments(&config, &two, Accelerator::Tcg);
        assert_eq!(value_of(&args, "-machine"), ["q35"]);
        assert_eq!(value_of(&args, "-accel"), ["tcg"], "QEMU's own cache size");
        assert_eq!(value_of(&args, "-smp"), ["2,maxcpus=4"]);
        assert_eq!(value_of(&args, "-name"), ["/run/vessel/ns/s1"]);
        assert_eq!(
            value_of(&args, "-serial"),
            ["null"],
            "no console unless debugging"
        );
        assert_eq!(value_of(&args, "-sandbox"), [SECCOMP]);
        // The sockets are the shim's, given as descriptors.
        assert_eq!(
            value_of(&args, "-chardev"),
            [
                "socket,id=qmp,fd=4,server=on,wait=off",
                "socket,id=agent,fd=3,server=on,wait=off"
            ]
        );
        assert_eq!(value_of(&args, "-mon"), ["chardev=qmp,mode=control"]);
        assert_eq!(value_of(&args, "-m"), ["512M"]);
        assert_eq!(value_of(&args, "-kernel"), ["/usr/share/vessel/vmlinux"]);
        assert_eq!(
            value_of(&args, "-initrd"),
            ["/usr/share/vessel/initramfs.img"]
        );
        let append = value_of(&args, "-append")[0];
        assert!(append.contains("pci=lastbus=0"), "{append}");
        assert!(append.contains("clocksource=hpet"), "{append}");
        assert!(!append.contains("tsc=reliable"), "{append}");
        assert!(
            append.ends_with("vessel.port=agent.0 agent.log=debug"),
            "{append}"
        );
        assert!(value_of(&args, "-fsdev")[0].contains("path=/run/vessel/ns/s1/shared"));
        assert!(value_of(&args, "-object")[0].contains("filename=/dev/urandom"));
        assert_eq!(value_of(&args, "-bios"), ["/usr/share/qemu/qboot.rom"]);
        assert!(value_of(&args, "-netdev").is_empty());
        let with_nic = Vm {
            nic_mac: Some("6e:0a:12:34:56:78".into()),
            ..vm()
        };
        let args = arguments(&config, &with_nic, Accelerator::Tcg);
        assert_eq!(value_of(&args, "-netdev"), ["tap,id=net0,fd=3,vhost=off"]);
        assert_eq!(
            value_of(&args, "-chardev"),
            [
                "socket,id=qmp,fd=5,server=on,wait=off",
                "socket,id=agent,fd=4,server=on,wait=off"
            ]
        );
        assert!(value_of(&args, "-device")
            .contains(&"virtio-net-pci,netdev=net0,mac=6e:0a:12:34:56:78"));
        let virtio_fs = Vm {
            virtio_fs_socket: Some("/run/vessel/ns/s1/virtiofs.sock".into()),
            ..vm()
        };
        let args = arguments(&config, &virtio_fs, Accelerator::Tcg);
        assert!(value_of(&args, "-fsdev").is_empty());
        assert!(value_of(&args, "-chardev").contains(&"socket,id=vfs,fd=5"));
        assert!(value_of(&args, "-device").contains(&"vhost-user-fs-pci,chardev=vfs,tag=vessel"));
        assert!(
            value_of(&args, "-object").contains(&"memory-backend-memfd,id=mem,size=512M,share=on")
        );
        let kvm = arguments(&config, &vm(), Accelerator::Kvm);
        assert_eq!(value_of(&kvm, "-accel"), ["kvm"]);
        let capped = HypervisorConfig {
            tcg_tb_size: 24,
            ..config.clone()
        };
        let args = arguments(&capped, &vm(), Accelerator::Tcg);
        assert_eq!(value_of(&args, "-accel"), ["tcg,tb-size=24"]);
        let kvm = arguments(&capped, &vm(), Accelerator::Kvm);
        assert_eq!(value_of(&kvm, "-accel"), ["kvm"], "no cache under KVM");
        assert_eq!(value_of(&kvm, "-cpu"), ["host"]);
        assert!(value_of(&kvm, "-append")[0].contains("tsc=reliable"));
        let debugging = HypervisorConfig {
            debug: true,
            disable_seccomp: true,
            ..config.clone()
        };
        let args = arguments(&debugging, &vm(), Accelerator::Tcg);
        assert_eq!(value_of(&args, "-serial"), ["stdio"]);
        assert!(value_of(&args, "-sandbox").is_empty());
    }

    #[test]
    fn the_jail_holds_what_qemu_opens_and_the_capabilities_its_shared_fs_needs() {
        let config = HypervisorConfig {
            hypervisor_path: "/usr/bin/qemu-system-x86_64".into(),
            kernel_path: "/srv/guest/vmlinux".into(),
            initrd_path: "/srv/guest/initramfs.img".into(),
            firmware_path: "/usr/share/qemu/qboot.rom".into(),
            entropy_source: "/dev/urandom".into(),
            shared_fs: SharedFs::Virtio9p,
            ..Default::default()
        };
        let jail = jail_of(&config, &vm(), Accelerator::Tcg);
        assert_eq!(jail.root, Path::new("/run/vessel/ns/s1/jail"));
        let paths = |list: &[PathBuf]| -> Vec<String> {
            list.iter().map(|p| p.display().to_string()).collect()
        };
        assert_eq!(
            paths(&jail.read_only),
            [
                "/usr/bin/qemu-system-x86_64",
                "/srv/guest/vmlinux",
                "/srv/guest/initramfs.img",
                "/usr/share/qemu/qboot.rom",
                "/proc/sys/vm/overcommit_memory"
            ]
        );
        assert_eq!(
            paths(&jail.devices),
            ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"]
        );
        assert!(jail.writable.is_empty());
        assert_eq!(jail.shared, Some("/run/vessel/ns/s1/shared".into()));
        assert_eq!(
            jail.capabilities,
            [
                Capability::Chown,
                Capability::DacOverride,
                Capability::Fowner,
                Capability::Fsetid
            ]
        );
        let user = jail.user.expect("an unprivileged user");
        assert!(user.uid >= jail::IDS_BASE && user.gid == user.uid);
        assert_eq!(jail.fds, 5, "0-2, the agent's socket, QMP's");

        // virtio-fs: virtiofsd serves the files, QEMU keeps nothing and sees no shared dir.
        let virtio_fs = HypervisorConfig {
            shared_fs: SharedFs::VirtioFs,
            entropy_source: "/dev/hwrng".into(),
            ..config.clone()
        };
        let with_daemon = Vm {
            virtio_fs_socket: Some("/run/vessel/ns/s1/virtiofs.sock".into()),
            nic_mac: Some("6e:0a:12:34:56:78".into()),
            ..vm()
        };
        let jail = jail_of(&virtio_fs, &with_daemon, Accelerator::Kvm);
        assert!(jail.capabilities.is_empty());
        assert_eq!(jail.shared, None);
        assert!(jail.devices.contains(&"/dev/hwrng".into()));
        assert!(jail.devices.contains(&"/dev/kvm".into()));
        assert_eq!(jail.fds, 7, "0-2, the tap, the sockets, virtiofsd");
        let huge = HypervisorConfig {
            huge_pages: true,
            ..virtio_fs
        };
        let jail = jail_of(&huge, &with_daemon, Accelerator::Tcg);
        assert_eq!(jail.writable, [PathBuf::from(memory::HUGEPAGES_DIR)]);
        assert_eq!(jail.capabilities, [Capability::DacOverride]);
    }

    #[test]
    fn a_template_is_saved_from_a_shared_file_and_cloned_privately_paused() {
        let config = HypervisorConfig {
            kernel_path: "/srv/guest/vmlinux".into(),
            shared_fs: SharedFs::Virtio9p,
            ..Default::default()
        };
        let image = PathBuf::from("/run/vessel/vm/template/k1/image");
        let saved = Vm {
            template: Some(TemplateRole::Save(image.clone())),
            ..vm()
        };
        let args = arguments(&config, &saved, Accelerator::Tcg);
        assert_eq!(
            value_of(&args, "-object"),
            ["memory-backend-file,id=mem,size=512M,mem-path=/run/vessel/vm/template/k1/image/memory,share=on"]
        );
        assert_eq!(value_of(&args, "-numa"), ["node,memdev=mem"]);
        assert!(value_of(&args, "-device").contains(&"vmgenid,guid=auto"));
        assert!(!args.contains(&"-S".to_string()));
        let jail = jail_of(&config, &saved, Accelerator::Tcg);
        assert_eq!(
            jail.writable,
            std::slice::from_ref(&image),
            "QEMU writes the template"
        );
        assert!(!jail.read_only.contains(&image));

        let clone = Vm {
            template: Some(TemplateRole::Clone(image.clone())),
            ..vm()
        };
        let args = arguments(&config, &clone, Accelerator::Tcg);
        assert_eq!(
            value_of(&args, "-object"),
            ["memory-backend-file,id=mem,size=512M,mem-path=/run/vessel/vm/template/k1/image/memory,share=off,readonly=on,rom=off"]
        );
        assert!(value_of(&args, "-device").contains(&"vmgenid,guid=auto"));
        assert_eq!(value_of(&args, "-incoming"), ["defer"]);
        assert!(args.contains(&"-S".to_string()), "paused until restored");
        let jail = jail_of(&config, &clone, Accelerator::Tcg);
        assert!(
            jail.read_only.contains(&image),
            "a clone reads the template"
        );
        assert!(jail.writable.is_empty());
        assert_eq!(
            TemplateRole::Clone(image).state(),
            Path::new("/run/vessel/vm/template/k1/image/state")
        );
    }

    fn fed(console: &mut Console, bytes: &[u8], now: Instant) -> Vec<String> {
        let mut lines = Vec::new();
        console.feed(bytes, now, &mut |l| lines.push(l));
        lines
    }

    #[test]
    fn console_lines_are_cut_and_never_held_longer() {
        let now = Instant::now();
        let mut console = Console::new(now);
        assert_eq!(fed(&mut console, b"hello\r\nwor", now), ["hello"]);
        assert_eq!(fed(&mut console, b"ld\n", now), ["world"]);
        // 1 MiB without a newline: the console holds 4 KiB of it.
        for _ in 0..64 {
            assert!(fed(&mut console, &[b'x'; 16 * 1024], now).is_empty());
            assert!(console.line.len() <= CONSOLE_LINE);
        }
        let lines = fed(&mut console, b"\n", now);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with(&"x".repeat(CONSOLE_LINE)));
        assert!(
            lines[0].ends_with(&format!(
                "[{} more bytes dropped]",
                (1 << 20) - CONSOLE_LINE
            )),
            "{}",
            &lines[0][CONSOLE_LINE..]
        );
        let report = console.report().expect("a report");
        assert!(report.contains("1 lines cut"), "{report}");
        assert_eq!(console.report(), None, "counted once");
    }

    #[test]
    fn console_lines_over_the_rate_are_dropped_and_counted() {
        let start = Instant::now();
        let mut console = Console::new(start);
        let flood: Vec<u8> = (0..20_000)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        let logged = fed(&mut console, &flood, start);
        // Lines of 6 to 10 bytes.
        let most = (CONSOLE_BURST / (CONSOLE_LINE_COST + 6)) as usize;
        let least = (CONSOLE_BURST / (CONSOLE_LINE_COST + 10)) as usize;
        assert!(
            (least..=most).contains(&logged.len()),
            "{} lines logged",
            logged.len()
        );
        let report = console.report().expect("a report");
        assert!(
            report.starts_with(&format!("{} lines", 20_000 - logged.len())),
            "{report}"
        );
        // One second later the budget allows CONSOLE_RATE bytes more.
        let later = start + Duration::from_secs(1);
        let logged = fed(&mut console, &flood, later);
        let most = (CONSOLE_RATE / (CONSOLE_LINE_COST + 6)) as usize;
        let least = (CONSOLE_RATE / (CONSOLE_LINE_COST + 10)) as usize;
        assert!(
            (least..=most).contains(&logged.len()),
            "{} lines logged after a second",
            logged.len()
        );
    }

    #[test]
    fn console_lines_lose_their_control_sequences() {
        assert_eq!(
            printable("\u{1b}c\u{1b}[?7l\u{1b}[2J\u{1b}[0mSeaBIOS (version 1.16.3)\r"),
            "SeaBIOS (version 1.16.3)"
        );
        assert_eq!(printable("[    1.2] Run /init"), "[    1.2] Run /init");
        assert_eq!(printable("\u{1b}[2J"), "");
    }

    #[test]
    fn unset_sizes_get_workable_defaults() {
        let config = HypervisorConfig {
            kernel_path: "/k".into(),
            ..Default::default()
        };
        let unset = Vm {
            memory: memory::layout(&config, 0, 40, false),
            vcpus: config.num_vcpus,
            ..vm()
        };
        let args = arguments(&config, &unset, Accelerator::Tcg);
        assert_eq!(value_of(&args, "-smp"), ["1,maxcpus=1"]);
        assert_eq!(value_of(&args, "-m"), ["128M"]);
        assert!(value_of(&args, "-initrd").is_empty());
        assert!(value_of(&args, "-bios").is_empty());
    }
}
