//! The guest agent's protocol, driven from a test: a busybox root file system in a shared
//! directory, OCI specs for it, and one scenario that runs the same against the agent as a
//! host process (`tests/agent.rs`) and inside a VM (`tests/guest.rs`).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use protobuf::Message;
use vessel::protos::{
    agent::{self as api, container_stats_response::Metrics},
    agent_ttrpc::AgentClient,
};

/// The agent binary cargo built beside the test (target/<profile>/vessel-agent).
pub fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let agent = profile_dir.join("vessel-agent");
    assert!(
        agent.exists(),
        "{} is missing: build it with `cargo build -p vessel-agent` (make test does)",
        agent.display()
    );
    agent
}

/// Makes `<shared>/<name>/rootfs`, a busybox root file system, and returns `<name>/rootfs`.
pub fn busybox_rootfs(shared: &Path, name: &str) -> String {
    let root = shared.join(name).join("rootfs");
    for dir in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static (make deps)");
    for applet in [
        "sh", "echo", "cat", "sleep", "tty", "true", "dd", "hostname",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    format!("{name}/rootfs")
}

/// An OCI process running `args`.
pub fn process(args: &[&str], terminal: bool) -> serde_json::Value {
    serde_json::json!({
        "terminal": terminal,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/bin", "TERM=xterm"],
        "cwd": "/",
        "noNewPrivileges": true,
        "capabilities": {
            "bounding": ["CAP_KILL", "CAP_CHOWN"],
            "effective": ["CAP_KILL", "CAP_CHOWN"],
            "permitted": ["CAP_KILL", "CAP_CHOWN"]
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    })
}

/// An OCI spec of a container running `args`; the host's own paths in it (root, network
/// namespace, cgroup) are the kind the agent must replace.
pub fn spec(args: &[&str], terminal: bool) -> Vec<u8> {
    serde_json::to_vec(&spec_value(args, terminal)).unwrap()
}

/// [`spec`] with a memory limit of `bytes`.
pub fn spec_with_memory_limit(args: &[&str], bytes: u64) -> Vec<u8> {
    let mut spec = spec_value(args, false);
    spec["linux"]["resources"] = serde_json::json!({"memory": {"limit": bytes}});
    serde_json::to_vec(&spec).unwrap()
}

fn spec_value(args: &[&str], terminal: bool) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": process(args, terminal),
        "root": {"path": "/host/does/not/exist/rootfs"},
        "hostname": "vessel-guest",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "cgroupsPath": "/host/kubepods/pod-1",
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": "network", "path": "/var/run/netns/host-only"}
            ],
            "maskedPaths": ["/proc/kcore"],
            "readonlyPaths": ["/proc/sys"]
        }
    })
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(60).as_nanos() as i64)
}

fn stdio(stdin: bool, terminal: bool) -> api::Stdio {
    api::Stdio {
        stdin,
        stdout: true,
        stderr: !terminal,
        terminal,
        ..Default::default()
    }
}

/// The ttrpc code of a failed call.
pub fn code<T: std::fmt::Debug>(result: ttrpc::Result<T>) -> (ttrpc::Code, String) {
    match result {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected an RPC status, got {other:?}"),
    }
}

/// Creates container `id` from `spec_json` with `rootfs`.
pub async fn create(
    client: &AgentClient,
    id: &str,
    spec_json: Vec<u8>,
    rootfs: &str,
    stdio: api::Stdio,
) -> ttrpc::Result<api::ProcessStarted> {
    let req = api::CreateContainerRequest {
        container_id: id.into(),
        spec_json,
        rootfs: rootfs.into(),
        stdio: Some(stdio).into(),
        ..Default::default()
    };
    client.create_container(ctx(), &req).await
}

fn container(id: &str) -> api::ContainerRequest {
    api::ContainerRequest {
        container_id: id.into(),
        ..Default::default()
    }
}

fn process_req(id: &str, exec_id: &str) -> api::ProcessRequest {
    api::ProcessRequest {
        container_id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    }
}

/// Everything the process writes to stdout (or stderr), to its end.
pub async fn read_all(client: &AgentClient, id: &str, exec_id: &str, stderr: bool) -> String {
    let mut out = Vec::new();
    loop {
        let req = api::ReadStreamRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            max_bytes: 4096,
            ..Default::default()
        };
        let chunk = if stderr {
            client.read_stderr(ctx(), &req).await
        } else {
            client.read_stdout(ctx(), &req).await
        }
        .expect("read output");
        if chunk.eof {
            return String::from_utf8_lossy(&out).into_owned();
        }
        out.extend_from_slice(&chunk.data);
    }
}

/// Waits for a process's exit status.
pub async fn wait(client: &AgentClient, id: &str, exec_id: &str) -> u32 {
    let exited = client
        .wait_process(ctx(), &process_req(id, exec_id))
        .await
        .expect("wait");
    assert!(exited.exited_at_ns > 0, "an exit has its time");
    exited.status
}

/// Execs `args` in container `id` as `exec_id`.
pub async fn exec(
    client: &AgentClient,
    id: &str,
    exec_id: &str,
    args: &[&str],
    stdin: bool,
    terminal: bool,
) -> ttrpc::Result<api::ProcessStarted> {
    let req = api::ExecProcessRequest {
        container_id: id.into(),
        exec_id: exec_id.into(),
        process_json: serde_json::to_vec(&process(args, terminal)).unwrap(),
        stdio: Some(stdio(stdin, terminal)).into(),
        ..Default::default()
    };
    client.exec_process(ctx(), &req).await
}

/// The agent answers its health check.
pub async fn healthy(client: &AgentClient) -> bool {
    client
        .check(ctx(), &api::Empty::default())
        .await
        .map(|r| r.serving)
        .unwrap_or(false)
}

/// Runs the whole protocol against an agent whose shared directory is `shared`: the VM's
/// resources, containers with output and exit codes, a long container with execs (with and
/// without a terminal, with stdin), signals, stats, pause and resume, update, bad requests;
/// then removes everything and destroys the sandbox.
pub async fn scenario(client: &AgentClient, shared: &Path) {
    assert!(healthy(client).await);
    let version = client.version(ctx(), &api::Empty::default()).await.unwrap();
    assert_eq!(version.protocol_version, vessel::protos::PROTOCOL_VERSION);
    // The sandbox made the guest's (in a VM: the shared directory mounted, the host's clock
    // and randomness); bounds first, then again is no error.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let start = api::StartSandboxRequest {
        random_seed: vec![0x5a; 512],
        time_sec: now.as_secs() as i64,
        time_nsec: now.subsec_nanos(),
        hostname: "scenario".into(),
        ..Default::default()
    };
    let flood = api::StartSandboxRequest {
        random_seed: vec![0; 4097],
        ..start.clone()
    };
    let (refused, message) = code(client.start_sandbox(ctx(), &flood).await);
    assert_eq!(refused, ttrpc::Code::INVALID_ARGUMENT, "{message}");
    assert!(message.starts_with("random_seed"), "{message}");
    for _ in 0..2 {
        client
            .start_sandbox(ctx(), &start)
            .await
            .expect("StartSandbox");
    }
    let rootfs = busybox_rootfs(shared, "pod");

    // The VM's CPUs and memory: at least the one vCPU online, and its MemTotal (the agent as a
    // host process reports the host's and onlines nothing); more vCPUs than the machine can
    // ever have are refused at once.
    let online = |vcpus| api::OnlineResourcesRequest {
        vcpus,
        ..Default::default()
    };
    let resources = client
        .online_resources(ctx(), &online(1))
        .await
        .expect("online resources");
    assert!(resources.vcpus >= 1, "{resources:?}");
    assert!(resources.memory_mib > 0, "{resources:?}");
    let (c, message) = code(client.online_resources(ctx(), &online(u32::MAX)).await);
    assert_eq!(c, ttrpc::Code::INVALID_ARGUMENT, "{message}");
    assert!(message.contains("vcpus 4294967295"), "{message}");

    // A container's output, both streams, and its exit code.
    let script = "echo hello from the guest; echo oops >&2; exit 3";
    let started = create(
        client,
        "echo",
        spec(&["sh", "-c", script], false),
        &rootfs,
        stdio(false, false),
    )
    .await
    .expect("create echo");
    assert!(started.pid > 0);
    client
        .start_container(ctx(), &container("echo"))
        .await
        .expect("start echo");
    assert_eq!(
        read_all(client, "echo", "", false).await,
        "hello from the guest\n"
    );
    assert_eq!(read_all(client, "echo", "", true).await, "oops\n");
    assert_eq!(wait(client, "echo", "").await, 3);
    client
        .remove_container(ctx(), &container("echo"))
        .await
        .expect("remove echo");

    // A container whose own process has a terminal (`ctr run -t`).
    create(
        client,
        "tty",
        spec(&["sh", "-c", "tty; echo in its terminal"], true),
        &rootfs,
        stdio(false, true),
    )
    .await
    .expect("create tty");
    client
        .start_container(ctx(), &container("tty"))
        .await
        .expect("start tty");
    let out = read_all(client, "tty", "", false).await;
    assert!(out.contains("in its terminal"), "{out:?}");
    assert!(!out.contains("not a tty"), "{out:?}");
    assert_eq!(wait(client, "tty", "").await, 0);
    client
        .remove_container(ctx(), &container("tty"))
        .await
        .expect("remove tty");

    // A long container, and execs into it.
    create(
        client,
        "long",
        spec(&["sleep", "1000"], false),
        &rootfs,
        stdio(false, false),
    )
    .await
    .expect("create long");
    client
        .start_container(ctx(), &container("long"))
        .await
        .expect("start long");

    exec(
        client,
        "long",
        "plain",
        &["sh", "-c", "echo exec says hi; hostname"],
        false,
        false,
    )
    .await
    .expect("exec plain");
    assert_eq!(
        read_all(client, "long", "plain", false).await,
        "exec says hi\nvessel-guest\n"
    );
    assert_eq!(wait(client, "long", "plain").await, 0);

    exec(
        client,
        "long",
        "tty",
        &["sh", "-c", "tty; echo in a terminal"],
        false,
        true,
    )
    .await
    .expect("exec tty");
    let resize = api::ResizeTerminalRequest {
        container_id: "long".into(),
        exec_id: "tty".into(),
        width: 120,
        height: 40,
        ..Default::default()
    };
    // The process may be gone already; a terminal that is gone is NOT_FOUND, not a failure.
    if let Err(e) = client.resize_terminal(ctx(), &resize).await {
        assert_eq!(code::<()>(Err(e)).0, ttrpc::Code::NOT_FOUND);
    }
    let out = read_all(client, "long", "tty", false).await;
    assert!(out.contains("/dev/pts/"), "{out:?}");
    assert!(out.contains("in a terminal"), "{out:?}");
    assert_eq!(wait(client, "long", "tty").await, 0);

    exec(client, "long", "stdin", &["cat"], true, false)
        .await
        .expect("exec cat");
    let write = api::WriteStreamRequest {
        container_id: "long".into(),
        exec_id: "stdin".into(),
        data: b"ping through stdin\n".to_vec(),
        ..Default::default()
    };
    assert_eq!(client.write_stdin(ctx(), &write).await.unwrap().written, 19);
    client
        .close_stdin(ctx(), &process_req("long", "stdin"))
        .await
        .expect("close stdin");
    assert_eq!(
        read_all(client, "long", "stdin", false).await,
        "ping through stdin\n"
    );
    assert_eq!(wait(client, "long", "stdin").await, 0);
    for exec_id in ["plain", "tty", "stdin"] {
        client
            .remove_process(ctx(), &process_req("long", exec_id))
            .await
            .expect("remove exec");
    }

    // Processes, stats, limits, freezing.
    exec(client, "long", "sleeper", &["sleep", "1000"], false, false)
        .await
        .expect("exec sleeper");
    let listed = client
        .list_processes(ctx(), &container("long"))
        .await
        .unwrap()
        .processes;
    assert!(listed.len() >= 2, "{listed:?}");
    assert!(listed.iter().any(|p| p.exec_id == "sleeper"), "{listed:?}");
    let update = api::UpdateContainerRequest {
        container_id: "long".into(),
        resources_json: br#"{"pids": {"limit": 50}}"#.to_vec(),
        ..Default::default()
    };
    client
        .update_container(ctx(), &update)
        .await
        .expect("update");
    let stats = client
        .container_stats(ctx(), &container("long"))
        .await
        .expect("stats");
    // cgroup v2 in the guest; v1 or v2 as the host mounts them for an agent on the host.
    let (limit, current) = match stats.metrics {
        Some(Metrics::CgroupV2(bytes)) => {
            let m = containerd_shim_protos::cgroups_v2::metrics::Metrics::parse_from_bytes(&bytes)
                .unwrap();
            (m.pids.limit, m.pids.current)
        }
        Some(Metrics::CgroupV1(bytes)) => {
            let m = containerd_shim_protos::cgroups::metrics::Metrics::parse_from_bytes(&bytes)
                .unwrap();
            (m.pids.limit, m.pids.current)
        }
        other => panic!("no cgroup figures: {other:?}"),
    };
    assert_eq!(limit, 50, "the update applied");
    assert!(current >= 2, "sleep and its exec: {current}");
    client
        .pause_container(ctx(), &container("long"))
        .await
        .expect("pause");
    client
        .resume_container(ctx(), &container("long"))
        .await
        .expect("resume");

    // Signals: the exec, then the container.
    let kill = |exec_id: &str, signal| api::SignalProcessRequest {
        container_id: "long".into(),
        exec_id: exec_id.into(),
        signal,
        ..Default::default()
    };
    client
        .signal_process(ctx(), &kill("sleeper", 15))
        .await
        .expect("signal exec");
    assert_eq!(wait(client, "long", "sleeper").await, 128 + 15);
    client
        .signal_process(ctx(), &kill("", 9))
        .await
        .expect("signal init");
    assert_eq!(wait(client, "long", "").await, 128 + 9);

    // An OOM kill: dd's 64 MiB buffer in a 16 MiB cgroup.
    let dd = ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"];
    create(
        client,
        "oom",
        spec_with_memory_limit(&dd, 16 << 20),
        &rootfs,
        stdio(false, false),
    )
    .await
    .expect("create oom");
    client
        .start_container(ctx(), &container("oom"))
        .await
        .expect("start oom");
    assert_eq!(
        wait(client, "oom", "").await,
        128 + 9,
        "the kernel kills it"
    );
    let oom = client
        .get_oom_event(ctx(), &api::Empty::default())
        .await
        .expect("OOM event");
    assert_eq!(oom.container_id, "oom");
    client
        .remove_container(ctx(), &container("oom"))
        .await
        .expect("remove oom");

    // Bad requests get errors, and the agent keeps serving.
    let (c, message) = code(client.start_container(ctx(), &container("nope")).await);
    assert_eq!(c, ttrpc::Code::NOT_FOUND, "{message}");
    let (c, message) = code(
        create(
            client,
            "bad",
            b"{\"process\": 3".to_vec(),
            &rootfs,
            stdio(false, false),
        )
        .await,
    );
    assert_eq!(c, ttrpc::Code::INVALID_ARGUMENT, "{message}");
    assert!(message.contains("spec_json"), "{message}");
    let (c, message) = code(
        create(
            client,
            "bad",
            spec(&["true"], false),
            "../pod/rootfs",
            stdio(false, false),
        )
        .await,
    );
    assert_eq!(c, ttrpc::Code::INVALID_ARGUMENT, "{message}");
    assert!(message.contains("`..`"), "{message}");
    let (c, message) = code(
        create(
            client,
            "../evil",
            spec(&["true"], false),
            &rootfs,
            stdio(false, false),
        )
        .await,
    );
    assert_eq!(c, ttrpc::Code::INVALID_ARGUMENT, "{message}");
    let (c, message) = code(
        create(
            client,
            "long",
            spec(&["true"], false),
            &rootfs,
            stdio(false, false),
        )
        .await,
    );
    assert_eq!(c, ttrpc::Code::ALREADY_EXISTS, "{message}");
    let (c, message) = code(exec(client, "nope", "x", &["true"], false, false).await);
    assert_eq!(c, ttrpc::Code::NOT_FOUND, "{message}");
    assert!(healthy(client).await, "the agent serves after bad requests");

    client
        .remove_container(ctx(), &container("long"))
        .await
        .expect("remove long");
    let (c, _) = code(client.remove_container(ctx(), &container("long")).await);
    assert_eq!(c, ttrpc::Code::NOT_FOUND);
}

/// Ends the sandbox.
pub async fn destroy(client: &AgentClient) {
    client
        .destroy_sandbox(ctx(), &api::Empty::default())
        .await
        .expect("destroy sandbox");
}
