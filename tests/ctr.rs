//! End-to-end tests of the vessel shim through `ctr`, against the private
//! containerd of `make test` (see `tests/common/mod.rs`).
//!
//! Every test removes what it created and then checks that nothing of its
//! container is left: no shim, no container process, no mount, no state
//! directory ([`assert_no_leftovers`]). A [`ContainerGuard`] cleans up
//! when an assertion fails half-way.

mod common;

use common::{ctr::*, *};
use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

/// Upper bound for a request that must fail: an error, never a hang.
const FAIL_FAST: Duration = Duration::from_secs(10);

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
    let runtime = runtime_args();
    let mut args = vec!["run", "-t", "--rm"];
    args.extend(runtime.iter().map(String::as_str));
    args.extend_from_slice(&[BUSYBOX, &id, "sh", "-c", TTY_SCRIPT]);
    let ctr = ctr_shell_command(&args);
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
    let pid = run_detached(&id, &["sleep", "1000"]);
    // On the vm backend the task's pid is the shim's (guest pids mean nothing on the host).
    if !on_vm() {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert_eq!(cmdline, b"sleep\x001000\x00", "/proc/{pid} is not the task");
    }
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

    // On the vm backend `task ps` lists guest pids: only that it lists one.
    let ps = ctr_ok(&["task", "ps", &id]);
    assert!(
        ps.lines()
            .skip(1)
            .any(|l| on_vm() || l.split_whitespace().next() == Some(&pid.to_string())),
        "task ps lacks {pid}: {ps}"
    );

    ctr_ok(&["task", "pause", &id]);
    wait_status(&id, "PAUSED");
    if let Some(f) = frozen(pid).filter(|_| !on_vm()) {
        assert!(f, "task PAUSED but its cgroup is not frozen");
    }
    ctr_ok(&["task", "resume", &id]);
    wait_status(&id, "RUNNING");
    if let Some(f) = frozen(pid).filter(|_| !on_vm()) {
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
        on_vm()
            || wait_until(Duration::from_secs(10), || fs::metadata(format!(
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
    let runtime = runtime_args();
    let mut args = vec!["run", "-d"];
    args.extend(runtime.iter().map(String::as_str));
    args.extend_from_slice(&[BUSYBOX, &id, "true"]);
    ctr_ok(&args);
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
    // Under load the OOM killer may take a while: cgroup v1 reports each OOM it meets until
    // the victim is gone, and the exit and delete come after.
    wait_until(Duration::from_secs(30), || {
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
            // The vm backend, with a kernel QEMU cannot find: QEMU's words reach the user.
            "vm.toml",
            "[runtime]\nsandbox_backend = \"vm\"\n[hypervisor.qemu]\nkernel = \"/nonexistent/vmlinux\"\nshared_fs = \"virtio-9p\"\n",
            "/nonexistent/vmlinux",
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
    let pid = run_detached(&id, &["sleep", "1000"]);
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

/// A container whose output nobody reads (`ctr run -d` leaves it so) still becomes STOPPED
/// soon after it is killed: the exit does not wait for a reader that never comes, and the
/// shim logs what it dropped.
#[test]
fn unread_output_does_not_hold_up_the_exit() {
    let id = unique_id("unread");
    let _guard = ContainerGuard::new(&id);
    let script = "while true; do echo tick tick tick; done";
    run_detached(&id, &["sh", "-c", script]);
    // Let the output fill the fifo and the pipe behind it.
    thread::sleep(Duration::from_millis(500));
    ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
    let killed = Instant::now();
    let stopped = wait_until(Duration::from_secs(10), || {
        task_status(&id).is_some_and(|(_, status)| status == "STOPPED")
    });
    let took = killed.elapsed();
    assert!(stopped, "STOPPED after the kill");
    assert!(
        took < Duration::from_secs(3),
        "STOPPED {took:?} after the kill"
    );
    let log = fs::read_to_string(containerd_dir().join("containerd.log")).unwrap_or_default();
    let dropped = log
        .lines()
        .find(|l| l.contains("output nobody read was dropped") && l.contains(&id));
    assert!(
        dropped.is_some_and(|l| !l.contains("\"dropped_bytes\":0")),
        "the shim counts what it dropped: {dropped:?}"
    );
    ctr_ok(&["task", "rm", &id]);
    ctr_ok(&["containers", "rm", &id]);
    assert_no_leftovers(&id);
}
