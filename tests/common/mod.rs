//! Helpers shared by the integration tests (`mod common;` in `tests/*.rs`).
//!
//! The tests drive a *private* containerd started by `make test` through
//! `scripts/containerd.sh start DIR`; `DIR` reaches the tests in the
//! environment variable `VESSEL_TEST_CONTAINERD`. Inside `DIR`:
//! `containerd.sock` (API socket), `containerd.log`, `state/`, `root/`.
//! The images `docker.io/library/busybox:latest` and
//! `registry.k8s.io/pause:3.6` are imported into the `default` and `k8s.io`
//! namespaces; containerd finds `containerd-shim-vessel-v2` on its PATH.
//! The containerd may be 1.6 or 2.x: `DIR/containerd.version` says which
//! ([`containerd_version`]), and `DIR/bin/ctr` is the `ctr` of the same release
//! ([`ctr_binary`]).
//!
//! `ctr` helpers are in [`ctr`], CRI client helpers in [`cri`], the guest agent's protocol in
//! [`agent`].
#![allow(dead_code)]

pub mod agent;
pub mod cri;
pub mod ctr;
pub mod guest;

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Runtime name of the shim under test, for `ctr run --runtime`.
pub const RUNTIME: &str = "io.containerd.vessel.v2";
/// The reference runtime, for comparisons.
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
/// CRI runtime handler name of the shim under test.
pub const RUNTIME_HANDLER: &str = "vessel";
/// Binary name of the shim under test.
pub const SHIM_BINARY: &str = "containerd-shim-vessel-v2";
/// Test images, built offline by `scripts/build-images.sh`.
pub const BUSYBOX: &str = "docker.io/library/busybox:latest";
pub const PAUSE: &str = "registry.k8s.io/pause:3.6";
/// Namespace `ctr` uses unless told otherwise, and the one CRI uses.
pub const NAMESPACE: &str = "default";
pub const CRI_NAMESPACE: &str = "k8s.io";
/// Default time limit of one `ctr` invocation (override: `VESSEL_TEST_TIMEOUT`, seconds).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// The private containerd's directory (`VESSEL_TEST_CONTAINERD`).
/// Panics with instructions when it is not set.
pub fn containerd_dir() -> PathBuf {
    match std::env::var_os("VESSEL_TEST_CONTAINERD") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => panic!(
            "VESSEL_TEST_CONTAINERD is not set: integration tests need a private containerd: run `make test`"
        ),
    }
}

/// The private containerd's API socket.
pub fn socket() -> PathBuf {
    containerd_dir().join("containerd.sock")
}

/// The `ctr` of the private containerd's release: `DIR/bin/ctr` (written by
/// `scripts/containerd.sh`), else `$VESSEL_TEST_CTR`, else `ctr` from PATH.
pub fn ctr_binary() -> PathBuf {
    let own = containerd_dir().join("bin/ctr");
    if own.exists() {
        return own;
    }
    match std::env::var_os("VESSEL_TEST_CTR") {
        Some(c) if !c.is_empty() => PathBuf::from(c),
        _ => PathBuf::from("ctr"),
    }
}

/// The private containerd's version, (major, minor, patch): `DIR/containerd.version`
/// (written by `scripts/containerd.sh`), else `$VESSEL_TEST_CONTAINERD_VERSION`, else 1.6.0.
pub fn containerd_version() -> (u32, u32, u32) {
    let text = fs::read_to_string(containerd_dir().join("containerd.version"))
        .ok()
        .or_else(|| std::env::var("VESSEL_TEST_CONTAINERD_VERSION").ok())
        .unwrap_or_default();
    let mut parts = text
        .trim()
        .trim_start_matches('v')
        .split(['.', '~', '+', '-'])
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor, parts.next().flatten().unwrap_or(0)),
        _ => (1, 6, 0),
    }
}

/// Whether the private containerd is 2.x or newer.
pub fn containerd_2() -> bool {
    containerd_version().0 >= 2
}

/// The last `lines` lines of the private containerd's log, for failure messages.
pub fn containerd_log_tail(lines: usize) -> String {
    let log = fs::read_to_string(containerd_dir().join("containerd.log")).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn default_timeout() -> Duration {
    std::env::var("VESSEL_TEST_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT)
}

/// Runs `ctr --address DIR/containerd.sock -n default ARGS...` with no
/// stdin and the default time limit. See [`Ctr`] for more control.
pub fn ctr(args: &[&str]) -> Output {
    Ctr::new(args).run()
}

/// Like [`ctr`] but panics unless it succeeded; returns stdout.
pub fn ctr_ok(args: &[&str]) -> String {
    Ctr::new(args).run_ok()
}

/// Builder for one `ctr` invocation against the private containerd.
///
/// ```ignore
/// let out = Ctr::new(&["run", "--rm", "--runtime", RUNTIME, BUSYBOX, &id, "cat"])
///     .stdin("hello")
///     .timeout(Duration::from_secs(30))
///     .run();
/// ```
#[derive(Debug, Clone)]
pub struct Ctr {
    args: Vec<String>,
    namespace: String,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
    env: Vec<(String, String)>,
}

impl Ctr {
    pub fn new(args: &[&str]) -> Self {
        Ctr {
            args: args.iter().map(|s| s.to_string()).collect(),
            namespace: NAMESPACE.to_string(),
            stdin: None,
            timeout: default_timeout(),
            env: Vec::new(),
        }
    }

    /// containerd namespace (`-n`), default `default`.
    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = ns.to_string();
        self
    }

    /// Bytes fed to ctr's stdin. Without this, stdin is /dev/null.
    /// Stdin is closed (EOF) only once a task whose id is one of the
    /// arguments exists (plus 300 ms), because ctr loses an EOF that comes
    /// before its task is created; for commands naming no task it stays
    /// open until the time limit.
    pub fn stdin(mut self, input: impl AsRef<[u8]>) -> Self {
        self.stdin = Some(input.as_ref().to_vec());
        self
    }

    /// Time limit; on expiry ctr is killed (see [`Ctr::try_run`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Extra environment variable for ctr.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The command line, for messages.
    pub fn describe(&self) -> String {
        format!("ctr -n {} {}", self.namespace, self.args.join(" "))
    }

    /// Runs ctr; `Err` (with whatever it printed) when it hit the time limit.
    pub fn try_run(&self) -> Result<Output, String> {
        let mut cmd = Command::new(ctr_binary());
        cmd.arg("--address")
            .arg(socket())
            .arg("-n")
            .arg(&self.namespace)
            .args(&self.args)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run `{}`: {e} (is containerd installed? make deps)",
                self.describe()
            )
        });

        let writer = self.stdin.clone().map(|input| {
            let mut pipe = child.stdin.take().unwrap();
            let ids = self.args.clone();
            let ns = self.namespace.clone();
            let limit = self.timeout;
            thread::spawn(move || {
                // an early exit of ctr makes this fail with EPIPE: fine
                let _ = pipe.write_all(&input);
                // ctr drops an EOF that arrives before its task exists
                // (`ctr run ... cat` would then never end): keep stdin open
                // until a task named by one of the arguments exists.
                wait_until(limit, || task_exists_among(&ns, &ids));
                thread::sleep(Duration::from_millis(300));
                drop(pipe);
            })
        });
        let mut out_pipe = child.stdout.take().unwrap();
        let mut err_pipe = child.stderr.take().unwrap();
        let out_reader = thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = out_pipe.read_to_end(&mut buf);
            buf
        });
        let err_reader = thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = err_pipe.read_to_end(&mut buf);
            buf
        });

        let deadline = Instant::now() + self.timeout;
        let mut timed_out = false;
        let status: ExitStatus = loop {
            match child.try_wait().expect("waiting for ctr") {
                Some(status) => break status,
                None if Instant::now() >= deadline => {
                    timed_out = true;
                    let _ = child.kill();
                    break child.wait().unwrap_or_else(|_| ExitStatus::from_raw(9));
                }
                None => thread::sleep(Duration::from_millis(20)),
            }
        };
        if let Some(w) = writer {
            let _ = w.join();
        }
        let output = Output {
            status,
            stdout: out_reader.join().unwrap_or_default(),
            stderr: err_reader.join().unwrap_or_default(),
        };
        if timed_out {
            Err(format!(
                "`{}` timed out after {:?}\nstdout: {}\nstderr: {}",
                self.describe(),
                self.timeout,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        } else {
            Ok(output)
        }
    }

    /// Runs ctr; panics when it hits the time limit.
    pub fn run(&self) -> Output {
        self.try_run()
            .unwrap_or_else(|e| panic!("{e}\ncontainerd log:\n{}", containerd_log_tail(20)))
    }

    /// Runs ctr; panics unless it exited 0. Returns stdout.
    pub fn run_ok(&self) -> String {
        let out = self.run();
        assert_success(&self.describe(), &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Whether `tasks ls` in `ns` lists a task whose id is one of `args`.
fn task_exists_among(ns: &str, args: &[String]) -> bool {
    let Ok(out) = Ctr::new(&["tasks", "ls", "-q"])
        .namespace(ns)
        .timeout(Duration::from_secs(10))
        .try_run()
    else {
        return false;
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|id| args.iter().any(|a| a == id))
}

/// Panics with both streams and the containerd log tail unless `out` succeeded.
pub fn assert_success(what: &str, out: &Output) {
    if !out.status.success() {
        panic!(
            "`{what}` failed ({})\nstdout: {}\nstderr: {}\ncontainerd log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            containerd_log_tail(20)
        );
    }
}

/// A container id that no other test (or earlier run) uses:
/// `PREFIX-PID-TIME-N`, valid for containerd (`[A-Za-z0-9]+([._-][A-Za-z0-9]+)*`).
pub fn unique_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() % 1_000_000)
        .unwrap_or(0);
    let clean: String = prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let clean = clean.trim_matches('-');
    let clean = if clean.is_empty() { "t" } else { clean };
    format!("{clean}-{}-{t}-{n}", std::process::id())
}

/// A tmpfs mounted on a directory of the test's, unmounted (lazily) when dropped, also when
/// the test fails halfway.
pub struct TmpfsMount(pub PathBuf);

impl TmpfsMount {
    /// Mounts a tmpfs on `dir`, a shared mount (propagation) when `shared`.
    pub fn new(dir: &Path, shared: bool) -> Self {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(dir)
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "mount a tmpfs on {}",
            dir.display()
        );
        let mounted = Self(dir.to_path_buf());
        if shared {
            let status = Command::new("mount").arg("--make-shared").arg(dir).status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "make {} shared",
                dir.display()
            );
        }
        mounted
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Removes container `id` (task, then container) when dropped, so that a
/// failing assertion does not leave it to the next test. Best effort.
pub struct ContainerGuard {
    pub id: String,
    pub namespace: String,
}

impl ContainerGuard {
    pub fn new(id: &str) -> Self {
        ContainerGuard {
            id: id.to_string(),
            namespace: NAMESPACE.to_string(),
        }
    }
    pub fn in_namespace(id: &str, ns: &str) -> Self {
        ContainerGuard {
            id: id.to_string(),
            namespace: ns.to_string(),
        }
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        // never panic here (a panic while unwinding aborts the test binary)
        if std::env::var_os("VESSEL_TEST_CONTAINERD").is_none() {
            return;
        }
        let t = Duration::from_secs(30);
        let id = self.id.as_str();
        for args in [
            vec!["tasks", "kill", "-a", "-s", "SIGKILL", id],
            vec!["tasks", "delete", "-f", id],
            vec!["containers", "delete", id],
        ] {
            let _ = Ctr::new(&args)
                .namespace(&self.namespace)
                .timeout(t)
                .try_run();
        }
    }
}

/// Polls `cond` every 50 ms until it returns true (→ true) or `timeout`
/// passes (→ false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

// ---- /proc ------------------------------------------------------------------

/// A live (non-zombie) process: pid and argv.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: u32,
    pub argv: Vec<String>,
}

impl Proc {
    pub fn cmdline(&self) -> String {
        self.argv.join(" ")
    }
}

/// All live processes other than this test process, zombies and kernel threads excluded.
pub fn processes() -> Vec<Proc> {
    let me = std::process::id();
    let mut procs = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return procs;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me || is_zombie(pid) {
            continue;
        }
        let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if raw.is_empty() {
            continue; // kernel thread, or exited meanwhile
        }
        let argv = raw
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        procs.push(Proc { pid, argv });
    }
    procs.sort_by_key(|p| p.pid);
    procs
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| s[i + 1..].trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Live `containerd-shim-vessel-v2` processes (by argv[0]) serving the
/// private containerd of these tests (their argv holds its socket path; the
/// shims of other containerds on the machine are left out): (pid, cmdline).
pub fn shim_processes() -> Vec<(u32, String)> {
    let sock = socket().to_string_lossy().into_owned();
    all_shim_processes()
        .into_iter()
        .filter(|(_, cmd)| {
            cmd.split(' ')
                .any(|a| a == sock || a.starts_with(&format!("{sock}/")))
        })
        .collect()
}

/// Every live `containerd-shim-vessel-v2` process on the machine: (pid, cmdline).
pub fn all_shim_processes() -> Vec<(u32, String)> {
    processes()
        .into_iter()
        .filter(|p| {
            p.argv
                .first()
                .is_some_and(|a0| Path::new(a0).file_name().is_some_and(|n| n == SHIM_BINARY))
        })
        .map(|p| (p.pid, p.cmdline()))
        .collect()
}

/// Whether `hay` contains `id` as a whole token: not glued to other id
/// characters (`[A-Za-z0-9_-]`, and `.` before it), so that `t-1` does not
/// match `t-10` or `xt-1`. With `prefix`, anything may follow.
fn contains_id(hay: &str, id: &str, prefix: bool) -> bool {
    if id.is_empty() {
        return false;
    }
    let glue = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let mut from = 0;
    while let Some(i) = hay[from..].find(id) {
        let start = from + i;
        let end = start + id.len();
        let before_ok = hay[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !(glue(c) || c == '.'));
        let after_ok = prefix || hay[end..].chars().next().is_none_or(|c| !glue(c));
        if before_ok && after_ok {
            return true;
        }
        from = start + id.len().max(1);
        while !hay.is_char_boundary(from) {
            from += 1;
        }
    }
    false
}

/// Everything left behind for container/sandbox `id`; empty when it is
/// gone without a trace. Checks:
/// - processes whose argv mentions `id` (shims run with `-id ID`, VMMs with
///   paths holding it), whose cgroup path holds it (processes inside a runc
///   container), or whose root or cwd is under a path holding it;
/// - mounts (this mount namespace) whose mount point or source holds `id`;
/// - containerd's task bundle `DIR/state/io.containerd.runtime.v2.task/NS/ID`
///   and `DIR/root/io.containerd.runtime.v2.task/NS/ID`, any namespace;
/// - `/run/vessel/NS/ID` and `/run/vessel/NS/ID.*`, runc's `/run/containerd/runc/NS/ID`, the shim socket
///   `/run/containerd/s/sha256(SOCK/NS/ID)`, cgroups `/sys/fs/cgroup/[*/]NS/ID`;
/// - a container or task `ID` still known to containerd (default and k8s.io).
///
/// Use `assert!(leftovers(&id).is_empty(), "{:?}", leftovers(&id))` after
/// removing the container.
pub fn leftovers(id: &str) -> Vec<String> {
    find_leftovers(id, false)
}

/// [`leftovers`] for every id starting with `prefix` (as made by
/// [`unique_id`]`(prefix)`). Only meaningful when no test using that prefix
/// is still running.
pub fn leftovers_prefix(prefix: &str) -> Vec<String> {
    find_leftovers(prefix, true)
}

fn find_leftovers(id: &str, prefix: bool) -> Vec<String> {
    assert!(!id.is_empty(), "leftovers: empty id");
    let dir = containerd_dir();
    let mut found = Vec::new();

    // processes
    for p in processes() {
        let cmd = p.cmdline();
        if contains_id(&cmd, id, prefix) {
            found.push(format!("process {}: {}", p.pid, cmd));
            continue;
        }
        // processes inside the container: runc puts them in cgroup .../NS/ID
        // (root and cwd links are relative to their own mount namespace, so
        // only useful for processes sharing ours)
        let cgroups = fs::read_to_string(format!("/proc/{}/cgroup", p.pid)).unwrap_or_default();
        if let Some(line) = cgroups.lines().find(|l| contains_id(l, id, prefix)) {
            found.push(format!("process {} (cgroup {line}): {cmd}", p.pid));
            continue;
        }
        for what in ["root", "cwd"] {
            if let Ok(target) = fs::read_link(format!("/proc/{}/{what}", p.pid)) {
                let t = target.to_string_lossy();
                if contains_id(&t, id, prefix) {
                    found.push(format!("process {} ({what} {t}): {cmd}", p.pid));
                    break;
                }
            }
        }
    }

    // mounts: mountinfo fields: 5 = mount point, after " - ": fstype, source
    if let Ok(info) = fs::read_to_string("/proc/self/mountinfo") {
        for line in info.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let mount_point = fields
                .get(4)
                .map(|s| unescape_mountinfo(s))
                .unwrap_or_default();
            let source = line
                .split(" - ")
                .nth(1)
                .and_then(|rest| rest.split(' ').nth(1))
                .map(unescape_mountinfo)
                .unwrap_or_default();
            if contains_id(&mount_point, id, prefix) || contains_id(&source, id, prefix) {
                found.push(format!("mount {mount_point} (source {source})"));
            }
        }
    }

    // directories and files named after the id
    let mut paths: BTreeSet<PathBuf> = BTreeSet::new();
    let mut namespaces: BTreeSet<String> = [NAMESPACE, CRI_NAMESPACE]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for base in [
        dir.join("state/io.containerd.runtime.v2.task"),
        dir.join("root/io.containerd.runtime.v2.task"),
        PathBuf::from("/run/containerd/runc"),
    ] {
        for ns_dir in read_dir_paths(&base) {
            if let Some(ns) = ns_dir.file_name().and_then(|n| n.to_str()) {
                namespaces.insert(ns.to_string());
            }
            paths.extend(matching_children(&ns_dir, id, prefix));
        }
    }
    // vessel's runtime state: /run/vessel/NS/ID (the OCI runtime's), and files of the
    // container's processes named ID.* (console sockets, exec pid files and logs)
    for ns_dir in read_dir_paths(Path::new("/run/vessel")) {
        paths.extend(matching_children(&ns_dir, id, prefix));
        paths.extend(matching_children(&ns_dir, &format!("{id}."), true));
    }
    // cgroups: v2 (/sys/fs/cgroup/NS/ID) and v1 (/sys/fs/cgroup/CTRL/NS/ID)
    let cg = Path::new("/sys/fs/cgroup");
    for ns in &namespaces {
        paths.extend(matching_children(&cg.join(ns), id, prefix));
        for ctrl in read_dir_paths(cg) {
            paths.extend(matching_children(&ctrl.join(ns), id, prefix));
        }
    }
    if !prefix {
        for ns in &namespaces {
            let sock = shim_socket_path(&socket(), ns, id);
            if sock.exists() {
                paths.insert(sock);
            }
        }
    }
    found.extend(paths.into_iter().map(|p| format!("path {}", p.display())));

    // containerd metadata
    for ns in &namespaces {
        for (kind, args) in [
            ("container", ["containers", "ls", "-q"]),
            ("task", ["tasks", "ls", "-q"]),
        ] {
            let Ok(out) = Ctr::new(&args)
                .namespace(ns)
                .timeout(Duration::from_secs(30))
                .try_run()
            else {
                found.push(format!("`ctr -n {ns} {} ls` timed out", args[0]));
                continue;
            };
            let stdout = String::from_utf8_lossy(&out.stdout);
            for line in stdout.lines() {
                // `tasks ls -q` prints the id first
                let listed = line.split_whitespace().next().unwrap_or("");
                let hit = if prefix {
                    listed.starts_with(id)
                } else {
                    listed == id
                };
                if hit {
                    found.push(format!("containerd {kind} {listed} in namespace {ns}"));
                }
            }
        }
    }
    found
}

fn read_dir_paths(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn matching_children(dir: &Path, id: &str, prefix: bool) -> Vec<PathBuf> {
    read_dir_paths(dir)
        .into_iter()
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                if prefix {
                    n.starts_with(id)
                } else {
                    n == id
                }
            })
        })
        .collect()
}

/// Undo mountinfo's octal escapes (`\040` for space, ...).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a shim v2 for (`address`, `ns`, `id`) listens: containerd 1.6 and 2.x
/// (`pkg/shim.SocketAddress`) and the Rust `containerd-shim` crate all use
/// `/run/containerd/s/hex(sha256("ADDRESS/NS/ID"))`.
pub fn shim_socket_path(address: &Path, ns: &str, id: &str) -> PathBuf {
    let key = format!("{}/{ns}/{id}", address.display());
    PathBuf::from("/run/containerd/s").join(sha256_hex(key.as_bytes()))
}

/// Small SHA-256 (std only), for [`shim_socket_path`].
pub fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for chunk in msg.chunks(64) {
        let mut w = [0u32; 64];
        for (i, word) in chunk.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
            let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
            let t1 = v[7]
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
            let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
            let t2 = s0.wrapping_add(maj);
            v = [
                t1.wrapping_add(t2),
                v[0],
                v[1],
                v[2],
                v[3].wrapping_add(t1),
                v[4],
                v[5],
                v[6],
            ];
        }
        for (a, b) in h.iter_mut().zip(v) {
            *a = a.wrapping_add(b);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

/// Restarts the private containerd as a node upgrade does (`scripts/containerd.sh restart`):
/// SIGTERM, then the same config and state again; shims and containers keep running.
pub fn restart_containerd() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/containerd.sh");
    let out = Command::new(script)
        .arg("restart")
        .arg(containerd_dir())
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/containerd.sh restart");
    assert!(
        out.status.success(),
        "containerd restart failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
