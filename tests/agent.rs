//! The guest agent's protocol without a VM: `vessel-agent` as a host process serving a unix
//! socket, containers run by runc on the host (which may mount cgroup v1, which crun refuses),
//! or by the agent's built-in runtime, from a shared directory the test made.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use common::agent::{self, agent_binary};
use vessel::protos::agent_ttrpc::AgentClient;

/// The agent process, killed if the test fails before it stopped, with the containers it left
/// (runc's state is in `runc_root`).
struct AgentProcess {
    child: Child,
    runc_root: PathBuf,
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let runc = |args: &[&str]| {
            Command::new("runc")
                .arg("--root")
                .arg(&self.runc_root)
                .args(args)
                .output()
        };
        if let Ok(list) = runc(&["list", "-q"]) {
            for id in String::from_utf8_lossy(&list.stdout).lines() {
                let _ = runc(&["delete", "--force", id]);
            }
        }
    }
}

async fn connect(socket: &Path) -> AgentClient {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ttrpc::r#async::Client::connect(&format!("unix://{}", socket.display())).await {
            Ok(client) => return AgentClient::new(client),
            Err(e) if Instant::now() > deadline => panic!("agent socket {}: {e}", socket.display()),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[tokio::test]
async fn the_protocol_runs_containers_and_refuses_bad_requests() {
    run_scenario("runc").await;
}

#[tokio::test]
async fn the_builtin_runtime_runs_the_same_protocol() {
    run_scenario("builtin").await;
}

/// One scenario at a time: both agents would use the same host cgroups (`/vessel/<id>`).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The protocol's scenario against an agent whose containers `runtime` runs.
async fn run_scenario(runtime: &str) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&shared).unwrap();
    let socket = dir.path().join("agent.sock");
    let mut agent = AgentProcess {
        runc_root: state.join("sandbox/runc"),
        child: Command::new(agent_binary())
            .arg("--listen")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(&shared)
            .arg("--state-dir")
            .arg(&state)
            .args(["--runtime", runtime, "--debug"])
            .spawn()
            .expect("start vessel-agent"),
    };

    let client = connect(&socket).await;
    agent::scenario(&client, &shared).await;

    // A second connection is served too (a shim that reconnects).
    drop(client);
    let client = connect(&socket).await;
    assert!(agent::healthy(&client).await);
    agent::destroy(&client).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not stop after DestroySandbox"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "socket left behind");
    assert!(!state.join("sandbox").exists(), "runtime state left behind");
    for id in ["echo", "tty", "long", "oom"] {
        assert!(
            !state.join("bundles").join(id).exists(),
            "bundle of {id} left behind"
        );
        assert!(
            !Path::new("/sys/fs/cgroup/pids/vessel").join(id).exists()
                && !Path::new("/sys/fs/cgroup/vessel").join(id).exists(),
            "cgroup of {id} left behind"
        );
    }
}
