//! `ctr` helpers of the integration tests: runs, statuses, events, leftovers.

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::*;

/// How long a removed container may take to disappear completely (the
/// shim exits asynchronously after its last task is deleted).
pub const CLEANUP_GRACE: Duration = Duration::from_secs(10);

/// Whether the tests run on the vm backend (`VESSEL_TEST_BACKEND=vm`, or `vm-template` for
/// VMs cloned from a template: `make test`'s second passes): every container the helpers
/// start gets the vm configuration.
pub fn on_vm() -> bool {
    std::env::var("VESSEL_TEST_BACKEND").is_ok_and(|b| b == "vm" || b == "vm-template")
}

/// Whether the VMs are cloned from a template (`VESSEL_TEST_BACKEND=vm-template`).
pub fn on_vm_template() -> bool {
    std::env::var("VESSEL_TEST_BACKEND").is_ok_and(|b| b == "vm-template")
}

/// The name of the vm backend's configuration (and CRI handler) the tests use.
pub fn vm_flavour() -> &'static str {
    if on_vm_template() {
        "vessel-vm-template"
    } else {
        "vessel-vm"
    }
}

/// `--runtime vessel`, and on the vm backend its configuration (`$DIR/vessel-vm.toml`, or
/// `vessel-vm-template.toml`).
pub fn runtime_args() -> Vec<String> {
    let mut args = vec!["--runtime".to_string(), RUNTIME.to_string()];
    if on_vm() {
        let config = containerd_dir().join(format!("{}.toml", vm_flavour()));
        args.extend([
            "--runtime-config-path".to_string(),
            config.display().to_string(),
        ]);
    }
    args
}

/// `ctr run --rm --runtime vessel [EXTRA...] BUSYBOX ID CMD...`.
pub fn run_rm(id: &str, extra: &[&str], cmd: &[&str]) -> Ctr {
    let runtime = runtime_args();
    let mut args = vec!["run", "--rm"];
    args.extend(runtime.iter().map(String::as_str));
    args.extend_from_slice(extra);
    args.extend_from_slice(&[BUSYBOX, id]);
    args.extend_from_slice(cmd);
    Ctr::new(&args)
}

/// `ctr run -d --runtime vessel BUSYBOX ID CMD...`, asserting that it succeeded; returns the
/// task's pid once it runs.
pub fn run_detached(id: &str, cmd: &[&str]) -> u32 {
    let runtime = runtime_args();
    let mut args = vec!["run", "-d"];
    args.extend(runtime.iter().map(String::as_str));
    args.extend_from_slice(&[BUSYBOX, id]);
    args.extend_from_slice(cmd);
    let out = Ctr::new(&args).run();
    assert_success("ctr run -d", &out);
    wait_status(id, "RUNNING")
}

/// `ctr run -d --runtime vessel --runtime-config-path CONFIG [EXTRA...] BUSYBOX ID CMD...`
/// within `limit`, asserting that it succeeded; returns once the task runs.
pub fn run_detached_with(config: &str, extra: &[&str], id: &str, cmd: &[&str], limit: Duration) {
    let mut args = vec!["run", "-d"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        config,
        BUSYBOX,
        id,
    ]);
    args.extend_from_slice(cmd);
    let out = Ctr::new(&args).timeout(limit).run();
    assert_success(&format!("ctr run -d {}", extra.join(" ")), &out);
    wait_status(id, "RUNNING");
}

/// stdout of `out`, lossily decoded.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr of `out`, lossily decoded.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit code of `out`; panics (with both streams) when killed by a signal.
pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or_else(|| {
        panic!(
            "ctr died of a signal ({})\nstdout: {}\nstderr: {}",
            out.status,
            stdout(out),
            stderr(out)
        )
    })
}

/// Waits (up to [`CLEANUP_GRACE`]) until nothing of `id` is left, then
/// asserts it, listing what remains.
pub fn assert_no_leftovers(id: &str) {
    wait_until(CLEANUP_GRACE, || leftovers(id).is_empty());
    let left = leftovers(id);
    assert!(
        left.is_empty(),
        "leftovers of {id}: {left:#?}\ncontainerd log:\n{}",
        containerd_log_tail(30)
    );
}

/// (pid, status) of task `id` as `ctr task ls` shows it, if listed.
pub fn task_status(id: &str) -> Option<(u32, String)> {
    ctr_ok(&["task", "ls"]).lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f[..] {
            [task, pid, status] if task == id => Some((pid.parse().ok()?, status.to_string())),
            _ => None,
        }
    })
}

/// Waits up to 30 s for task `id` to reach `status`; panics otherwise.
/// Returns its pid.
pub fn wait_status(id: &str, status: &str) -> u32 {
    let mut last = None;
    let reached = wait_until(Duration::from_secs(30), || {
        last = task_status(id);
        last.as_ref().is_some_and(|(_, s)| s == status)
    });
    assert!(
        reached,
        "task {id} did not become {status}: last seen {last:?}"
    );
    last.unwrap().0
}

/// Pids of the vessel shims serving container `id` (`-id ID` in argv).
pub fn shims_of(id: &str) -> Vec<u32> {
    shim_processes()
        .into_iter()
        .filter(|(_, cmd)| {
            cmd.split(' ')
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| w == ["-id", id])
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// Whether the cgroup freezer holds `pid` frozen: cgroup v1
/// `freezer.state` = FROZEN, or cgroup v2 `cgroup.events` "frozen 1".
/// `None` when neither can be read.
pub fn frozen(pid: u32) -> Option<bool> {
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path_of = |controller: &str| {
        cgroups.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            ctrls
                .split(',')
                .any(|c| c == controller)
                .then(|| path.to_string())
        })
    };
    if let Some(p) = path_of("freezer") {
        let state = fs::read_to_string(format!("/sys/fs/cgroup/freezer{p}/freezer.state")).ok()?;
        return Some(state.trim() == "FROZEN");
    }
    let p = path_of("")?;
    let events = fs::read_to_string(format!("/sys/fs/cgroup{p}/cgroup.events")).ok()?;
    Some(events.lines().any(|l| l == "frozen 1"))
}

/// Runs `PROGRAM ARGS...` under `timeout -s KILL LIMIT` with stdin
/// /dev/null; panics when the limit killed it.
pub fn run_with_limit(program: &str, args: &[&str], limit: Duration) -> Output {
    let out = Command::new("timeout")
        .args(["-s", "KILL", &limit.as_secs().to_string(), program])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.code().is_some_and(|c| c != 137),
        "{program} {args:?} timed out after {limit:?} ({})\nstdout: {}\nstderr: {}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    out
}

/// `ctr` command line (against the private containerd) quoted for `sh -c`.
pub fn ctr_shell_command(args: &[&str]) -> String {
    let sock = socket();
    let ctr = ctr_binary();
    let mut words = vec![
        ctr.to_str().unwrap(),
        "--address",
        sock.to_str().unwrap(),
        "-n",
        NAMESPACE,
    ];
    words.extend_from_slice(args);
    words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A background `ctr events`, collecting its lines until dropped (which
/// kills it).
pub struct EventWatcher {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    probe: String,
    _probe_guard: ContainerGuard,
}

impl EventWatcher {
    /// Starts `ctr events` and returns once it demonstrably receives events:
    /// it creates a probe container and relabels it until the matching
    /// `/containers/update` shows up. The probe is removed on drop.
    pub fn start() -> Self {
        let probe = unique_id("events-probe");
        let probe_guard = ContainerGuard::new(&probe);
        ctr_ok(&["containers", "create", BUSYBOX, &probe, "true"]);
        let mut child = Command::new(ctr_binary())
            .arg("--address")
            .arg(socket())
            .args(["-n", NAMESPACE, "events"])
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run ctr events");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let pipe = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let needle = format!("\"id\":\"{probe}\"");
        let watcher = EventWatcher {
            child,
            lines,
            probe,
            _probe_guard: probe_guard,
        };
        let mut n = 0;
        let subscribed = wait_until(Duration::from_secs(30), || {
            n += 1;
            ctr_ok(&["containers", "label", &watcher.probe, &format!("probe={n}")]);
            wait_until(Duration::from_millis(500), || {
                watcher
                    .topics_matching(&needle)
                    .iter()
                    .any(|t| t == "/containers/update")
            })
        });
        assert!(subscribed, "ctr events never reported the probe's update");
        watcher
    }

    /// Topics, in arrival order, of the events whose line contains `needle`.
    pub fn topics_matching(&self, needle: &str) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
            .map(str::to_string)
            .collect()
    }

    /// The event lines of topic `topic` containing `needle`.
    pub fn lines_of(&self, topic: &str, needle: &str) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle) && l.split_whitespace().any(|w| w == topic))
            .cloned()
            .collect()
    }
}

impl Drop for EventWatcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = ctr(&["containers", "rm", &self.probe]);
        if !thread::panicking() {
            assert_no_leftovers(&self.probe);
        }
    }
}
