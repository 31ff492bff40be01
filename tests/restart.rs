//! containerd restarts (SIGTERM, then the same config again, as a node upgrade does) while
//! vessel containers run: the shim keeps serving, and its events reach the new containerd.
//!
//! The tests restart the shared private containerd, so they run one at a time.

mod common;

use std::{sync::Mutex, time::Duration};

use common::{cri::*, ctr::*, *};
use k8s_cri::v1::{
    ContainerState, ExecSyncRequest, NamespaceMode, RemoveContainerRequest, StopContainerRequest,
};

/// Held by each test: one containerd restart at a time.
static RESTARTS: Mutex<()> = Mutex::new(());

/// After a restart, the Task API still works (State, Exec, Pids, Stats, Kill, Delete), the
/// exit and delete events reach containerd, and the shim exits with its last container.
#[test]
fn a_running_task_keeps_working_across_a_containerd_restart() {
    let _one = RESTARTS.lock().unwrap_or_else(|e| e.into_inner());
    let id = unique_id("restart");
    let _guard = ContainerGuard::new(&id);
    let pid = run_detached(&id, &["sleep", "600"]);

    restart_containerd();
    let events = EventWatcher::start();

    assert_eq!(wait_status(&id, "RUNNING"), pid, "State after the restart");
    let exec = ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "after",
        &id,
        "echo",
        "still-here",
    ]);
    assert_eq!(exec, "still-here\n", "Exec after the restart");
    let ps = ctr_ok(&["task", "ps", &id]);
    assert!(
        ps.contains(&pid.to_string()),
        "Pids after the restart: {ps}"
    );
    let metrics = ctr_ok(&["task", "metrics", &id]);
    assert!(
        metrics.contains("memory"),
        "Stats after the restart: {metrics}"
    );

    ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
    wait_status(&id, "STOPPED");
    ctr_ok(&["task", "rm", &id]);
    ctr_ok(&["containers", "rm", &id]);
    let needle = format!("\"container_id\":\"{id}\"");
    let mut topics = Vec::new();
    wait_until(Duration::from_secs(10), || {
        topics = events.topics_matching(&needle);
        topics.iter().any(|t| t == "/tasks/delete")
    });
    assert_eq!(
        topics,
        [
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/exit",
            "/tasks/delete"
        ],
        "events of {id} after the restart"
    );
    let exits = events.lines_of("/tasks/exit", &needle);
    assert!(
        exits.iter().any(|l| l.contains("\"exit_status\":137")),
        "the kill's exit status: {exits:?}"
    );
    drop(events);
    assert_no_leftovers(&id);
}

/// A CRI pod keeps working across a restart: exec, logs, and a container that stops after
/// the restart is seen as exited (the CRI plugin learns exits from the TaskExit event).
#[test]
fn a_cri_pod_keeps_working_across_a_containerd_restart() {
    let _one = RESTARTS.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(cri_pod_across_a_restart());
}

async fn cri_pod_across_a_restart() {
    let logs = LogDir::new("restart-logs");
    let config = pod_config("restart", &logs.0, NamespaceMode::Pod);
    let mut cri = Cri::connect().await;
    let pod = cri.run_pod(&config).await.expect("RunPodSandbox");
    let _pod_guard = PodGuard(pod.clone());
    let script = "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.2; done";
    let app = cri.start_container(&pod, &config, "app", script).await;
    let log = logs.0.join("app.log");
    let lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(10), || lines() > 0),
        "logs before"
    );

    tokio::task::spawn_blocking(restart_containerd)
        .await
        .unwrap();
    let mut cri = Cri::connect().await;

    let before = lines();
    assert!(
        wait_until(Duration::from_secs(10), || lines() > before + 2),
        "logs keep coming after the restart"
    );
    let exec = cri
        .runtime
        .exec_sync(ExecSyncRequest {
            container_id: app.clone(),
            cmd: vec!["echo".into(), "exec-after-restart".into()],
            timeout: 10,
        })
        .await
        .expect("ExecSync after the restart")
        .into_inner();
    assert_eq!(
        String::from_utf8_lossy(&exec.stdout),
        "exec-after-restart\n"
    );

    // Without the TaskExit, StopContainer waits for an exit it never hears of.
    let stop = cri.runtime.stop_container(StopContainerRequest {
        container_id: app.clone(),
        timeout: 0,
    });
    tokio::time::timeout(Duration::from_secs(30), stop)
        .await
        .expect("StopContainer hears of the exit")
        .expect("StopContainer after the restart");
    let status = cri.status(&app).await;
    assert_eq!(
        status.state,
        ContainerState::ContainerExited as i32,
        "{status:?}"
    );
    assert_eq!(status.exit_code, 137, "{status:?}");
    cri.runtime
        .remove_container(RemoveContainerRequest {
            container_id: app.clone(),
        })
        .await
        .expect("RemoveContainer");
    cri.remove_pod(&pod, 1).await;
}
