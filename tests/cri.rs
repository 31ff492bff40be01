//! CRI pods through containerd's CRI plugin and the `vessel` runtime handler, driven by a
//! real CRI client (the CRI protos over gRPC) against the private test containerd.

mod common;

use std::{collections::HashMap, path::PathBuf, time::Duration};

use common::{cri::*, leftovers, wait_until};
use k8s_cri::v1::{
    AttachRequest, ContainerStatusRequest, ExecRequest, ExecSyncRequest, LinuxContainerResources,
    ListPodSandboxRequest, NamespaceMode, RemoveContainerRequest, StopContainerRequest,
    UpdateContainerResourcesRequest,
};

/// The memory limit the host's cgroup (v1 or v2) applies to `pid`.
fn memory_limit_of(pid: u32) -> Option<u64> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let file = if controllers.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
        } else if controllers.is_empty() {
            format!("/sys/fs/cgroup{path}/memory.max")
        } else {
            continue;
        };
        if let Ok(text) = std::fs::read_to_string(file) {
            return text.trim().parse().ok();
        }
    }
    None
}

/// The whole pod lifecycle with two app containers in one vessel shim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_lifecycle_with_two_containers() {
    if common::ctr::on_vm() {
        // It checks host namespaces and cgroups; tests/vm.rs has the pod in a VM.
        eprintln!("pod_lifecycle_with_two_containers: host namespaces; see tests/vm.rs");
        return;
    }
    let mut cri = Cri::connect().await;
    let logs = LogDir::new("cri-logs");
    let mut config = pod_config("pod-life", &logs.0, NamespaceMode::Pod);
    config.annotations = HashMap::from([(
        "io.katacontainers.config.hypervisor.default_memory".to_string(),
        "512".to_string(),
    )]);
    let pod = cri
        .run_pod(&config)
        .await
        .expect("RunPodSandbox through vessel");
    let _pod_guard = PodGuard(pod.clone());
    assert_eq!(pod_shims(&pod), 1, "one shim for the pod sandbox");

    let mut ids = Vec::new();
    for n in 1..=2 {
        let name = format!("app{n}");
        let script = format!("echo hello-from-{name}; while true; do echo tick; sleep 1; done");
        ids.push(cri.start_container(&pod, &config, &name, &script).await);
    }
    assert_eq!(pod_shims(&pod), 1, "app containers join the pod's shim");

    // The pod's annotation reached the conversion core through containerd and shaped the
    // sandbox config; an app container converts as a member of the pod.
    let sandbox = convert(&pod);
    assert_eq!(sandbox["kind"], "sandbox", "{sandbox}");
    assert_eq!(
        sandbox["sandbox"]["hypervisor_config"]["memory_size"], 512,
        "{sandbox}"
    );
    // App containers share the pod's network, IPC and UTS namespaces (not its mount one).
    let sandbox_pid = container_pid(&pod);
    for id in &ids {
        let pid = container_pid(id);
        for ns in ["net", "ipc", "uts"] {
            assert_eq!(
                namespace_of(pid, ns),
                namespace_of(sandbox_pid, ns),
                "{ns} namespace of {id}"
            );
        }
        assert_ne!(namespace_of(pid, "mnt"), namespace_of(sandbox_pid, "mnt"));
    }
    let member = convert(&ids[0]);
    assert_eq!(member["kind"], "container", "{member}");
    assert_eq!(member["sandbox_id"], pod.as_str(), "{member}");
    for id in &ids {
        assert!(
            common::shim_processes()
                .iter()
                .all(|(_, cmdline)| !cmdline.contains(id.as_str())),
            "no shim daemon of its own for container {id}"
        );
        let status = cri
            .runtime
            .container_status(ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .expect("status");
        assert_eq!(status.state, 1, "container {id} is RUNNING: {status:?}");
    }

    // ExecSync sees the pod's shared UTS namespace (the pod hostname).
    let exec = cri.exec_sh(&ids[0], "echo exec-ok; hostname; exit 4").await;
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "exec-ok\npod-life\n");
    assert_eq!(exec.exit_code, 4);

    // ExecSync with a timeout comes back, and leaves no process behind.
    let started = std::time::Instant::now();
    let timed_out = cri
        .runtime
        .exec_sync(ExecSyncRequest {
            container_id: ids[0].clone(),
            cmd: vec!["sleep".into(), "60".into()],
            timeout: 1,
        })
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "ExecSync honours its timeout"
    );
    match timed_out {
        Err(status) => assert!(status.message().contains("timeout"), "{status:?}"),
        Ok(response) => assert_ne!(response.into_inner().exit_code, 0),
    }

    // Exec and Attach through the streaming server.
    let out = cri
        .exec_stdout(ExecRequest {
            container_id: ids[1].clone(),
            cmd: vec!["echo".into(), "streamed-exec".into()],
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .await;
    assert_eq!(out, "streamed-exec\n");
    // A terminal exec with input, as `kubectl exec -it` makes (its console socket must fit a
    // unix socket path despite 64-character CRI ids).
    let url = cri
        .runtime
        .exec(ExecRequest {
            container_id: ids[1].clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "read line; echo got-$line; tty".into(),
            ],
            tty: true,
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .await
        .expect("Exec with a terminal")
        .into_inner()
        .url;
    let out = tokio::task::spawn_blocking(move || stream_stdout(&url, b"hello\n", "/dev/pts/"))
        .await
        .expect("tty exec stream");
    assert!(
        out.contains("got-hello") && out.contains("/dev/pts/"),
        "input reached a terminal: {out:?}"
    );
    let url = cri
        .runtime
        .attach(AttachRequest {
            container_id: ids[1].clone(),
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .await
        .expect("Attach")
        .into_inner()
        .url;
    let out = tokio::task::spawn_blocking(move || stream_stdout(&url, b"", "tick"))
        .await
        .expect("attach stream");
    assert!(
        out.contains("tick"),
        "attached to the running output: {out:?}"
    );

    // Logs reach the CRI log path.
    for (n, id) in ids.iter().enumerate() {
        let path = logs.0.join(format!("app{}.log", n + 1));
        let expected = format!("hello-from-app{}", n + 1);
        assert!(
            wait_until(Duration::from_secs(10), || std::fs::read_to_string(&path)
                .is_ok_and(|log| log.contains(&expected))),
            "log of {id} at {} has {expected}",
            path.display()
        );
    }

    // Stats and resources.
    let usage = cri.memory_usage(&ids[0]).await;
    assert!(usage > 0, "memory usage reported");
    let limit = 96 * 1024 * 1024;
    cri.runtime
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: ids[0].clone(),
            linux: Some(LinuxContainerResources {
                memory_limit_in_bytes: limit,
                cpu_shares: 512,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("UpdateContainerResources");
    let pid = container_pid(&ids[0]);
    assert_eq!(memory_limit_of(pid), Some(limit as u64), "limit applied");

    // Stop and remove, each twice: the second time is not an error.
    for id in &ids {
        for _ in 0..2 {
            cri.runtime
                .stop_container(StopContainerRequest {
                    container_id: id.clone(),
                    timeout: 2,
                })
                .await
                .expect("StopContainer");
        }
        for _ in 0..2 {
            cri.runtime
                .remove_container(RemoveContainerRequest {
                    container_id: id.clone(),
                })
                .await
                .expect("RemoveContainer");
        }
        assert!(leftovers(id).is_empty(), "{:?}", leftovers(id));
    }
    assert_eq!(
        pod_shims(&pod),
        1,
        "the pod's shim outlives its app containers"
    );
    cri.remove_pod(&pod, 2).await;
}

/// `containerd-shim-vessel-v2 convert` of a CRI task's bundle in the test containerd.
fn convert(id: &str) -> serde_json::Value {
    let bundle = common::containerd_dir()
        .join("state/io.containerd.runtime.v2.task")
        .join(common::CRI_NAMESPACE)
        .join(id);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_containerd-shim-vessel-v2"))
        .arg("convert")
        .arg("--bundle")
        .arg(&bundle)
        .output()
        .expect("run convert");
    assert!(
        out.status.success(),
        "convert {}: {}",
        bundle.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("convert prints JSON")
}

/// The namespace `kind` (net, ipc, ...) of process `pid`.
fn namespace_of(pid: u32, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap_or_else(|e| panic!("{kind} namespace of {pid}: {e}"))
}

/// The host pid of a CRI container, from the pod's shim via `ctr` in the k8s.io namespace.
fn container_pid(id: &str) -> u32 {
    let out = common::Ctr::new(&["task", "ls"])
        .namespace(common::CRI_NAMESPACE)
        .run_ok();
    out.lines()
        .find(|line| line.starts_with(id))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no task {id} in:\n{out}"))
}

/// A forbidden annotation fails RunPodSandbox with the conversion core's message, and
/// leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_annotation_fails_the_pod() {
    let mut cri = Cri::connect().await;
    let logs = LogDir::new("cri-bad");
    let mut config = pod_config("pod-bad", &logs.0, NamespaceMode::Pod);
    let key = "io.katacontainers.config.hypervisor.kernel";
    config.annotations = HashMap::from([(key.to_string(), "/tmp/evil-kernel".to_string())]);
    let status = cri
        .run_pod(&config)
        .await
        .expect_err("a path-valued annotation not enabled in the config is refused");
    assert!(status.message().contains(key), "{status:?}");
    assert!(
        status.message().contains("enable_annotations"),
        "{status:?}"
    );
    assert_no_pod_named(&mut cri, "pod-bad").await;
}

/// A host-network pod's containers see the host's network namespace; a VM, which has a
/// network of its own, refuses such a pod, saying why, and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_pod_shares_the_host_network() {
    let mut cri = Cri::connect().await;
    let logs = LogDir::new("cri-host");
    let mut config = pod_config("pod-host", &logs.0, NamespaceMode::Node);
    // A host-network pod has the host's UTS namespace: kubelet sends no hostname.
    config.hostname.clear();
    if common::ctr::on_vm() {
        let refused = cri
            .run_pod(&config)
            .await
            .expect_err("a VM refuses hostNetwork");
        let message = refused.message();
        assert!(
            message.contains("no network namespace") && message.contains("hostNetwork"),
            "{refused:?}"
        );
        assert_no_pod_named(&mut cri, "pod-host").await;
        return;
    }
    let pod = cri.run_pod(&config).await.expect("RunPodSandbox");
    let _pod_guard = PodGuard(pod.clone());
    let id = cri
        .start_container(&pod, &config, "hostnet", "sleep 1000")
        .await;
    let pid = container_pid(&id);
    let ours = namespace_of(std::process::id(), "net");
    assert_eq!(namespace_of(pid, "net"), ours);
    cri.remove_pod(&pod, 1).await;
    assert!(leftovers(&id).is_empty(), "{:?}", leftovers(&id));
}

/// A short exec's output arrives through the streaming server every time, with a terminal or
/// without, with stdin or without, as `kubectl exec [-i] [-it] ... echo` asks for it: the
/// process exits before the shim has its terminal or pipes.
///
/// A terminal without stdin (`tty: true, stdin: false`) is left out: kubectl never asks for
/// it (`-t` without `-i` drops the terminal), and containerd 1.6's CRI streaming loses its
/// output about half the time with its own runc shim too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_exec_output_arrives_every_time() {
    const RUNS: usize = 20;
    let mut cri = Cri::connect().await;
    let logs = LogDir::new("cri-exec-loop");
    let config = pod_config("exec-loop", &logs.0, NamespaceMode::Pod);
    let pod = cri.run_pod(&config).await.expect("RunPodSandbox");
    let _pod_guard = PodGuard(pod.clone());
    let app = cri
        .start_container(&pod, &config, "app", "sleep 3600")
        .await;
    let mut failures = Vec::new();
    let kinds = [(true, true), (false, true), (false, false)];
    for (tty, stdin) in kinds {
        for run in 0..RUNS {
            let word = format!("hello-{run}");
            let out = cri
                .exec_stdout(ExecRequest {
                    container_id: app.clone(),
                    cmd: vec!["echo".into(), word.clone()],
                    tty,
                    stdin,
                    stdout: true,
                    stderr: !tty,
                })
                .await;
            if out.trim_end() != word {
                failures.push(format!("tty={tty} stdin={stdin} run {run}: {out:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} execs lost their output: {failures:#?}",
        failures.len(),
        kinds.len() * RUNS
    );
    cri.remove_pod(&pod, 1).await;
}

/// Neither CRI nor containerd knows a pod named `name` (nor a container of it) any more.
async fn assert_no_pod_named(cri: &mut Cri, name: &str) {
    let pods = cri
        .runtime
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
    assert!(
        pods.iter()
            .all(|p| p.metadata.as_ref().is_none_or(|m| m.name != name)),
        "no pod left: {pods:?}"
    );
    let label = format!("labels.\"io.kubernetes.pod.name\"=={name}");
    let containers = common::Ctr::new(&["containers", "ls", "-q", &label])
        .namespace(common::CRI_NAMESPACE)
        .run_ok();
    assert!(
        containers.trim().is_empty(),
        "no container left: {containers}"
    );
}

/// A VM cannot share the host's PID or IPC namespace with a pod, nor propagate a container's
/// mounts to the host (Bidirectional): RunPodSandbox or StartContainer fails naming the field,
/// and nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_refuses_host_namespaces_and_propagation_to_the_host() {
    if !common::ctr::on_vm() {
        eprintln!(
            "a_vm_refuses_host_namespaces_and_propagation_to_the_host: skipped, the linux \
             backend shares host namespaces (host_network_pod_shares_the_host_network)"
        );
        return;
    }
    let mut cri = Cri::connect().await;
    let logs = LogDir::new("cri-hostns");
    for (namespace, field) in [("pid", "hostPID"), ("ipc", "hostIPC")] {
        let mut config = pod_config("pod-hostns", &logs.0, NamespaceMode::Pod);
        let options = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|c| c.namespace_options.as_mut())
            .expect("namespace options");
        if namespace == "pid" {
            options.pid = NamespaceMode::Node as i32;
        } else {
            options.ipc = NamespaceMode::Node as i32;
        }
        let refused = cri.run_pod(&config).await.expect_err(field);
        let message = refused.message();
        assert!(
            message.contains(&format!("no {namespace} namespace")) && message.contains(field),
            "{refused:?}"
        );
        assert_no_pod_named(&mut cri, "pod-hostns").await;
    }

    let config = pod_config("pod-propagation", &logs.0, NamespaceMode::Pod);
    let pod = cri.run_pod(&config).await.expect("RunPodSandbox");
    let _pod_guard = PodGuard(pod.clone());
    // CRI requires a Bidirectional mount's source to be on a shared mount: a shared tmpfs.
    let source = tempfile::Builder::new()
        .prefix("vessel-bidirectional")
        .tempdir()
        .expect("temp dir");
    let path = source.path().to_str().expect("utf-8 path");
    let shared = common::TmpfsMount::new(source.path(), true);
    let mut container = container_config("bidirectional", "sleep 100");
    container.mounts = vec![k8s_cri::v1::Mount {
        container_path: "/data".into(),
        host_path: path.into(),
        propagation: k8s_cri::v1::MountPropagation::PropagationBidirectional as i32,
        ..Default::default()
    }];
    // CreateContainer is containerd's metadata only: the shim sees the spec at StartContainer.
    let id = cri
        .runtime
        .create_container(k8s_cri::v1::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container),
            sandbox_config: Some(config.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    let refused = cri
        .runtime
        .start_container(k8s_cri::v1::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect_err("a VM refuses Bidirectional propagation");
    cri.runtime
        .remove_container(RemoveContainerRequest { container_id: id })
        .await
        .expect("RemoveContainer");
    drop(shared);
    let message = refused.message();
    assert!(
        message.contains("(/data)") && message.contains("Bidirectional"),
        "{refused:?}"
    );
    cri.remove_pod(&pod, 1).await;
}

/// StopContainer of a container that exited a moment ago succeeds (the shim answers NotFound
/// for a process gone before its exit was recorded, which containerd ignores), and the pod
/// then goes away with its shim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_of_a_container_that_just_exited_succeeds() {
    let mut cri = Cri::connect().await;
    let logs = LogDir::new("cri-stop-exited");
    let config = pod_config("stop-exited", &logs.0, NamespaceMode::Pod);
    let pod = cri.run_pod(&config).await.expect("RunPodSandbox");
    let _pod_guard = PodGuard(pod.clone());
    for run in 0..5 {
        let id = cri
            .start_container(&pod, &config, &format!("brief{run}"), "exit 0")
            .await;
        cri.runtime
            .stop_container(StopContainerRequest {
                container_id: id.clone(),
                timeout: 10,
            })
            .await
            .unwrap_or_else(|e| panic!("StopContainer of {id}, exited: {e:?}"));
        // containerd 1.6 may answer StopContainer between deleting the exited task and
        // recording the exit; kubelet removes the container once it is seen exited.
        cri.wait_exited(&id).await;
        cri.runtime
            .remove_container(RemoveContainerRequest { container_id: id })
            .await
            .expect("RemoveContainer");
    }
    cri.remove_pod(&pod, 1).await;
}

/// A read-only volume that is not recursively read-only leaves the mounts under its source
/// writable (a tmpfs here), as runc does, and the host's own mount points stay the host's:
/// while the container runs, the host unmounts that tmpfs and removes the volume's directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_volume_keeps_the_mounts_under_it_writable_and_the_hosts() {
    let mut cri = Cri::connect().await;
    let logs = LogDir::new("cri-ro-volume");
    let config = pod_config("ro-volume", &logs.0, NamespaceMode::Pod);
    let pod = cri.run_pod(&config).await.expect("RunPodSandbox");
    let _pod_guard = PodGuard(pod.clone());
    let source = tempfile::Builder::new()
        .prefix("vessel-ro-volume")
        .tempdir()
        .expect("temp dir");
    let tmpfs = source.path().join("tmpfs");
    std::fs::create_dir(&tmpfs).unwrap();
    let mounted = common::TmpfsMount::new(&tmpfs, false);
    let mut container = container_config("ro-volume", "sleep 1000");
    container.mounts = vec![k8s_cri::v1::Mount {
        container_path: "/mnt".into(),
        host_path: source.path().display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    let id = cri.create_and_start(&pod, &config, container).await;
    let written = cri
        .exec_sh(&id, "touch /mnt/tmpfs/file && echo written")
        .await;
    assert_eq!(
        String::from_utf8_lossy(&written.stdout).trim(),
        "written",
        "the tmpfs under the read-only volume is writable: {written:?}"
    );
    let refused = cri.exec_sh(&id, "touch /mnt/file 2>&1").await;
    assert_ne!(refused.exit_code, 0, "the volume itself is read-only");
    assert!(
        String::from_utf8_lossy(&refused.stdout).contains("Read-only file system"),
        "{refused:?}"
    );
    assert!(tmpfs.join("file").exists(), "written to the host's tmpfs");

    drop(mounted);
    let removed = std::fs::remove_dir_all(source.path());
    assert!(
        removed.is_ok(),
        "the volume's directory is removed while the pod runs: {removed:?}"
    );
    cri.remove_pod(&pod, 1).await;
}
