//! End-to-end tests of the vessel shim through `ctr`, against the private
//! containerd of `make test` (see `tests/common/mod.rs`).
//!
//! Every test removes what it created and then checks that nothing of its
//! container is left: no shim, no container process, no mount, no state
//! directory ([`assert_no_leftovers`]). A [`ContainerGuard`] cleans up
//! when an assertion fails half-way.

mod common;

use common::*;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long a removed container may take to disappear completely (the
/// shim exits asynchronously after its last task is deleted).
const CLEANUP_GRACE: Duration = Duration::from_secs(10);
/// Upper bound for a request that must fail: an error, never a hang.
const FAIL_FAST: Duration = Duration::from_secs(10);

// ---- helpers ----------------------------------------------------------------

/// `ctr run --rm --runtime vessel [EXTRA...] BUSYBOX ID CMD...`.
fn run_rm(id: &str, extra: &[&str], cmd: &[&str]) -> Ctr {
    let mut args = vec!["run", "--rm", "--runtime", RUNTIME];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[BUSYBOX, id]);
    args.extend_from_slice(cmd);
    Ctr::new(&args)
}

/// stdout of `out`, lossily decoded.
fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr of `out`, lossily decoded.
fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit code of `out`; panics (with both streams) when killed by a signal.
fn code(out: &Output) -> i32 {
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
fn assert_no_leftovers(id: &str) {
    wait_until(CLEANUP_GRACE, || leftovers(id).is_empty());
    let left = leftovers(id);
    assert!(
        left.is_empty(),
        "leftovers of {id}: {left:#?}\ncontainerd log:\n{}",
        containerd_log_tail(30)
    );
}

/// (pid, status) of task `id` as `ctr task ls` shows it, if listed.
fn task_status(id: &str) -> Option<(u32, String)> {
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
fn wait_status(id: &str, status: &str) -> u32 {
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
fn shims_of(id: &str) -> Vec<u32> {
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
fn frozen(pid: u32) -> Option<bool> {
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
fn run_with_limit(program: &str, args: &[&str], limit: Duration) -> Output {
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
fn ctr_shell_command(args: &[&str]) -> String {
    let sock = socket();
    let mut words = vec!["ctr", "--address", sock.to_str().unwrap(), "-n", NAMESPACE];
    words.extend_from_slice(args);
    words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A background `ctr events`, collecting its lines until dropped (which
/// kills it).
struct EventWatcher {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    probe: String,
    _probe_guard: ContainerGuard,
}

impl EventWatcher {
    /// Starts `ctr events` and returns once it demonstrably receives events:
    /// it creates a probe container and relabels it until the matching
    /// `/containers/update` shows up. The probe is removed on drop.
    fn start() -> Self {
        let probe = unique_id("events-probe");
        let probe_guard = ContainerGuard::new(&probe);
        ctr_ok(&["containers", "create", BUSYBOX, &probe, "true"]);
        let mut child = Command::new("ctr")
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
    fn topics_matching(&self, needle: &str) -> Vec<String> {
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
    fn lines_of(&self, topic: &str, needle: &str) -> Vec<String> {
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

// ---- tests --------------------------------------------------------------------

/// Output arrives exactly, stdout and stderr apart, the last lines included.
#[test]
fn run_prints_output() {
    let id = unique_id("out");
    let _guard = ContainerGuard::new(&id);
    let out = run_rm(&id, &[], &["echo", "hello"]).run();
    assert_success("ctr run echo hello", &out);
    assert_eq!(stdout(&out), "hello\n");
    assert_no_leftovers(&id);

    let id = unique_id("out-streams");
    let _guard = ContainerGuard::new(&id);
    let out = run_rm(&id, &[], &["sh", "-c", "echo to-out; echo to-err >&2"]).run();
    assert_success("ctr run (stdout and stderr)", &out);
    assert_eq!(stdout(&out), "to-out\n");
    assert!(stderr(&out).contains("to-err"), "stderr: {}", stderr(&out));
    assert!(!stdout(&out).contains("to-err"));
    assert_no_leftovers(&id);

    for n in [2000, 100_000] {
        let id = unique_id("out-seq");
        let _guard = ContainerGuard::new(&id);
        let out = run_rm(&id, &[], &["seq", "1", &n.to_string()]).run();
        assert_success("ctr run seq", &out);
        let got = stdout(&out);
        let expected: String = (1..=n).map(|i| format!("{i}\n")).collect();
        if got != expected {
            let lines: Vec<&str> = got.lines().collect();
            panic!(
                "seq 1 {n}: {} bytes / {} lines instead of {} bytes / {n} lines; last lines: {:?}",
                got.len(),
                lines.len(),
                expected.len(),
                &lines[lines.len().saturating_sub(3)..]
            );
        }
        assert_no_leftovers(&id);
    }
}

/// The exit code of the container's process is ctr's; death by a signal
/// shows as 128 + signal.
#[test]
fn exit_codes_propagate() {
    let id = unique_id("exit7");
    let _guard = ContainerGuard::new(&id);
    let out = run_rm(&id, &[], &["sh", "-c", "exit 7"]).run();
    assert_eq!(code(&out), 7, "stderr: {}", stderr(&out));
    assert_no_leftovers(&id);

    // `sh -c 'kill -9 $$'` cannot test this: the container's init is pid 1
    // of its pid namespace, which ignores signals from inside it (runc: 0
    // as well). So kill it from outside, while `ctr run` waits for it.
    let id = unique_id("exit137");
    let _guard = ContainerGuard::new(&id);
    let run = {
        let ctr = run_rm(&id, &[], &["sleep", "1000"]);
        thread::spawn(move || ctr.run())
    };
    wait_status(&id, "RUNNING");
    ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
    let out = run.join().expect("ctr run thread");
    assert_eq!(code(&out), 137, "stderr: {}", stderr(&out));
    assert_no_leftovers(&id);
}

/// Piped stdin reaches the process whole, EOF included.
#[test]
fn stdin_is_forwarded() {
    let input = "first line\nsecond  line with  spaces\n\nthird\tline\nlast line, no newline";
    let id = unique_id("stdin");
    let _guard = ContainerGuard::new(&id);
    let out = run_rm(&id, &[], &["cat"])
        .stdin(input)
        .timeout(Duration::from_secs(60))
        .run();
    assert_success("ctr run cat", &out);
    assert_eq!(stdout(&out), input);
    assert_no_leftovers(&id);
}

/// Shell of [`tty_is_a_terminal`]: prints the terminal and its size once
/// ctr has sized it. ctr resizes the pty only after starting the task
/// (runc races the same way), so wait (5 s at most) for a size: until
/// then busybox `stty -a` fails without printing "rows".
const TTY_SCRIPT: &str = "tty; \
    for i in $(seq 50); do stty -a 2>/dev/null | grep -q rows && break; sleep 0.1; done; \
    stty size; exit 5";

/// `ctr run -t` gives the process a pseudo-terminal of ctr's size.
#[test]
fn tty_is_a_terminal() {
    assert!(
        Command::new("script").arg("--version").output().is_ok(),
        "`script` (util-linux, package bsdutils) is needed for this test"
    );
    let id = unique_id("tty");
    let _guard = ContainerGuard::new(&id);
    let ctr = ctr_shell_command(&[
        "run",
        "-t",
        "--rm",
        "--runtime",
        RUNTIME,
        BUSYBOX,
        &id,
        "sh",
        "-c",
        TTY_SCRIPT,
    ]);
    // script gives ctr a terminal; its size is what ctr passes on
    let script = format!("stty cols 123 rows 45; {ctr}");
    let out = run_with_limit(
        "script",
        &["-qec", &script, "/dev/null"],
        Duration::from_secs(60),
    );
    let text = stdout(&out).replace('\r', "");
    assert!(
        text.contains("/dev/pts/") && !text.contains("not a tty"),
        "no pseudo-terminal: {text:?}\nstderr: {}",
        stderr(&out)
    );
    assert!(
        text.lines().any(|l| l.trim() == "45 123"),
        "terminal size not passed on: {text:?}"
    );
    assert_eq!(code(&out), 5, "exit code through the tty: {text:?}");
    assert_no_leftovers(&id);
}

/// A detached task through its whole life: exec, ps, pause/resume,
/// metrics, kill, delete.
#[test]
fn detached_lifecycle() {
    let id = unique_id("life");
    let _guard = ContainerGuard::new(&id);
    ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        BUSYBOX,
        &id,
        "sleep",
        "1000",
    ]);

    let pid = wait_status(&id, "RUNNING");
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert_eq!(cmdline, b"sleep\x001000\x00", "/proc/{pid} is not the task");
    assert_eq!(shims_of(&id).len(), 1, "shims: {:?}", shim_processes());

    // exec: output and exit code, also of an exec killed by a signal
    // (an exec is not pid 1, so it can kill itself)
    let out = ctr(&[
        "task",
        "exec",
        "--exec-id",
        "x1",
        &id,
        "sh",
        "-c",
        "echo exec-out; exit 3",
    ]);
    assert_eq!(stdout(&out), "exec-out\n");
    assert_eq!(code(&out), 3, "stderr: {}", stderr(&out));
    let out = ctr(&[
        "task",
        "exec",
        "--exec-id",
        "x2",
        &id,
        "sh",
        "-c",
        "kill -9 $$",
    ]);
    assert_eq!(code(&out), 137, "stderr: {}", stderr(&out));

    let ps = ctr_ok(&["task", "ps", &id]);
    assert!(
        ps.lines()
            .skip(1)
            .any(|l| l.split_whitespace().next() == Some(&pid.to_string())),
        "task ps lacks {pid}: {ps}"
    );

    ctr_ok(&["task", "pause", &id]);
    wait_status(&id, "PAUSED");
    if let Some(f) = frozen(pid) {
        assert!(f, "task PAUSED but its cgroup is not frozen");
    }
    ctr_ok(&["task", "resume", &id]);
    wait_status(&id, "RUNNING");
    if let Some(f) = frozen(pid) {
        assert!(!f, "task RUNNING but its cgroup is still frozen");
    }

    let metrics = ctr_ok(&["task", "metrics", &id]);
    let usage = metrics.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let name = f.next()?;
        let value: u64 = f.next()?.parse().ok()?;
        (name == "memory.usage_in_bytes" || name == "memory.usage").then_some(value)
    });
    assert!(
        usage.is_some_and(|u| u > 0),
        "no memory usage in metrics:\n{metrics}"
    );

    ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
    wait_status(&id, "STOPPED");
    assert!(
        wait_until(Duration::from_secs(10), || fs::metadata(format!(
            "/proc/{pid}"
        ))
        .is_err()),
        "task STOPPED but pid {pid} still exists"
    );
    let out = ctr(&["task", "rm", &id]);
    assert_success("ctr task rm", &out);
    assert!(
        stderr(&out).contains("137"),
        "task rm should report exit code 137: {}",
        stderr(&out)
    );
    ctr_ok(&["containers", "rm", &id]);

    assert!(
        wait_until(CLEANUP_GRACE, || shims_of(&id).is_empty()),
        "shim of {id} still running: {:?}",
        shim_processes()
    );
    assert_no_leftovers(&id);
}

/// Ten containers at once each get their own output and exit code.
#[test]
fn ten_containers_in_parallel() {
    let prefix = unique_id("par");
    let ids: Vec<String> = (0..10).map(|n| format!("{prefix}-n{n}")).collect();
    let _guards: Vec<ContainerGuard> = ids.iter().map(|id| ContainerGuard::new(id)).collect();
    let runs: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| {
            let ctr = run_rm(
                id,
                &[],
                &["sh", "-c", &format!("echo container-{n}; exit {n}")],
            );
            thread::spawn(move || ctr.run())
        })
        .collect();
    for (n, run) in runs.into_iter().enumerate() {
        let out = run.join().expect("ctr run thread");
        assert_eq!(
            (code(&out), stdout(&out)),
            (n as i32, format!("container-{n}\n")),
            "container {n}: stderr: {}",
            stderr(&out)
        );
    }
    for id in &ids {
        assert!(
            wait_until(CLEANUP_GRACE, || shims_of(id).is_empty()),
            "shim of {id} still running: {:?}",
            shim_processes()
        );
        assert_no_leftovers(id);
    }
}

/// Requests that cannot succeed fail promptly with a useful message.
#[test]
fn errors_fail_fast() {
    let fail_fast = |args: &[&str]| -> Output {
        let started = Instant::now();
        let out = Ctr::new(args).timeout(Duration::from_secs(60)).run();
        let took = started.elapsed();
        assert!(!out.status.success(), "`ctr {}` succeeded", args.join(" "));
        assert!(took < FAIL_FAST, "`ctr {}` took {took:?}", args.join(" "));
        out
    };

    let missing = unique_id("missing");
    fail_fast(&["task", "exec", "--exec-id", "x", &missing, "true"]);
    fail_fast(&["task", "pause", &missing]);

    // a task that has exited
    let id = unique_id("stopped");
    let _guard = ContainerGuard::new(&id);
    ctr_ok(&["run", "-d", "--runtime", RUNTIME, BUSYBOX, &id, "true"]);
    wait_status(&id, "STOPPED");
    fail_fast(&["task", "exec", "--exec-id", "x", &id, "true"]);
    fail_fast(&["task", "pause", &id]);
    ctr_ok(&["task", "rm", &id]);
    ctr_ok(&["containers", "rm", &id]);
    assert_no_leftovers(&id);

    // annotations the conversion core refuses
    for (annotation, name) in [
        (
            "io.katacontainers.config.hypervisor.kernel=/tmp/evil",
            "io.katacontainers.config.hypervisor.kernel",
        ),
        (
            "io.katacontainers.config.hypervisor.default_memory=12",
            "default_memory",
        ),
    ] {
        let id = unique_id("bad-annotation");
        let _guard = ContainerGuard::new(&id);
        let out = {
            let started = Instant::now();
            let out = run_rm(&id, &["--annotation", annotation], &["true"]).run();
            assert!(started.elapsed() < FAIL_FAST, "{annotation}: took too long");
            out
        };
        assert!(!out.status.success(), "{annotation} accepted");
        assert!(
            stderr(&out).contains(name),
            "{annotation}: error does not name {name}: {}",
            stderr(&out)
        );
        assert_no_leftovers(&id);
    }
}

/// A task's events arrive in order: create, start, exit (with its code), delete.
#[test]
fn task_events_in_order() {
    let events = EventWatcher::start();

    let id = unique_id("events");
    let _guard = ContainerGuard::new(&id);
    let out = run_rm(&id, &[], &["sh", "-c", "exit 3"]).run();
    assert_eq!(code(&out), 3, "stderr: {}", stderr(&out));

    let needle = format!("\"container_id\":\"{id}\"");
    let expected = [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
    ];
    let mut topics = Vec::new();
    wait_until(Duration::from_secs(10), || {
        topics = events.topics_matching(&needle);
        topics.len() >= expected.len()
    });
    assert_eq!(topics, expected, "events of {id}");
    let exit = events.lines_of("/tasks/exit", &needle);
    assert!(
        exit.iter().all(|l| l.contains("\"exit_status\":3")),
        "exit event without the exit code: {exit:?}"
    );

    drop(events);
    assert_no_leftovers(&id);
}

/// A container killed for lack of memory publishes /tasks/oom before its exit (137).
#[test]
fn oom_kill_is_published() {
    let events = EventWatcher::start();

    let id = unique_id("oom");
    let _guard = ContainerGuard::new(&id);
    let hog = "x=$(head -c 200000000 /dev/zero | tr '\\0' x); echo survived";
    let out = run_rm(&id, &["--memory-limit", "33554432"], &["sh", "-c", hog]).run();
    assert_eq!(code(&out), 137, "stdout: {}", stdout(&out));

    let needle = format!("\"container_id\":\"{id}\"");
    let mut topics = Vec::new();
    wait_until(Duration::from_secs(10), || {
        topics = events.topics_matching(&needle);
        topics.iter().any(|t| t == "/tasks/delete")
    });
    let oom = topics.iter().position(|t| t == "/tasks/oom");
    let exit = topics.iter().position(|t| t == "/tasks/exit");
    assert!(
        oom.is_some() && oom < exit,
        "an OOM event before the exit: {topics:?}"
    );

    drop(events);
    assert_no_leftovers(&id);
}

/// A configuration file given through the runtime options is used, and a bad one fails the
/// container with an error naming the key, leaving nothing behind.
#[test]
fn runtime_config_path_is_honoured() {
    let dir = std::env::temp_dir().join(unique_id("config"));
    fs::create_dir_all(&dir).expect("config dir");
    let cases = [
        (
            "typo.toml",
            "[runtime]\nsandbox_backnd = \"vm\"\n",
            "runtime.sandbox_backnd",
        ),
        (
            "missing.toml",
            "[runtime]\noci_runtime = \"no-such-runtime\"\n",
            "runtime.oci_runtime",
        ),
        (
            "vm.toml",
            "[runtime]\nsandbox_backend = \"vm\"\n",
            "sandbox_backend",
        ),
    ];
    for (name, text, key) in cases {
        let path = dir.join(name);
        fs::write(&path, text).expect("write config");
        let id = unique_id("config");
        let _guard = ContainerGuard::new(&id);
        let path = path.display().to_string();
        let out = run_rm(&id, &["--runtime-config-path", &path], &["true"]).run();
        assert_ne!(code(&out), 0, "{name} must fail");
        assert!(stderr(&out).contains(key), "{name}: {}", stderr(&out));
        assert_no_leftovers(&id);
    }
    let good = dir.join("good.toml");
    fs::write(&good, "[runtime]\noci_runtime = \"/usr/sbin/runc\"\n").expect("write config");
    let id = unique_id("config");
    let _guard = ContainerGuard::new(&id);
    let good = good.display().to_string();
    let out = run_rm(
        &id,
        &["--runtime-config-path", &good],
        &["echo", "configured"],
    )
    .run();
    assert_eq!(stdout(&out), "configured\n", "stderr: {}", stderr(&out));
    assert_no_leftovers(&id);
    let _ = fs::remove_dir_all(&dir);
}

/// A shim that dies is cleaned up after: containerd runs the shim's `delete`, which kills the
/// container and removes its runtime state and mounts.
#[test]
fn dead_shim_is_cleaned_up() {
    let id = unique_id("dead");
    let _guard = ContainerGuard::new(&id);
    let out = Ctr::new(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        BUSYBOX,
        &id,
        "sleep",
        "1000",
    ])
    .run();
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let pid = wait_status(&id, "RUNNING");
    let shims = shims_of(&id);
    assert_eq!(shims.len(), 1, "one shim for {id}: {shims:?}");
    kill_9(shims[0]);
    assert!(
        wait_until(CLEANUP_GRACE, || !Path::new(&format!("/proc/{pid}"))
            .exists()),
        "the container process {pid} outlived its shim"
    );
    assert!(
        wait_until(CLEANUP_GRACE, || task_status(&id).is_none()),
        "task {id} still listed"
    );
    ctr_ok(&["containers", "rm", &id]);
    assert_no_leftovers(&id);
}

/// SIGKILLs `pid`.
fn kill_9(pid: u32) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -9 {pid}");
}
