//! The Task service driven on its own: a fake [`Sandbox`] behind it, a fake containerd
//! receiving its events, real bundles and a real configuration file.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use containerd_shim_protos::{
    api,
    events::task::TaskExit,
    protobuf::{well_known_types::any::Any, CodedOutputStream, Message},
    topics,
    ttrpc::{self, Code},
};
use oci_spec::runtime::{LinuxResources, Process as ProcessSpec, Spec};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::*;
use crate::{
    oci::SandboxConfig,
    sandbox::{
        ContainerRequest, Error, Event, Exit, ProcessIo, ProcessPid, Result, Started, Stats,
    },
    shim::test_support::Containerd,
};

/// What the fake sandbox was asked to do.
#[derive(Default)]
struct Calls {
    started_with: Vec<SandboxConfig>,
    created: Vec<ContainerRequest>,
    deleted: Vec<String>,
    killed: Vec<(String, String, u32)>,
    stopped: usize,
}

/// A sandbox that runs nothing: every process "runs" until the test makes it exit.
struct FakeSandbox {
    calls: Mutex<Calls>,
    events: Mutex<Option<UnboundedReceiver<Event>>>,
    sender: UnboundedSender<Event>,
    /// Create fails for these ids.
    fail_create: Mutex<Vec<String>>,
    /// The init process exits as soon as it starts (before Start returns).
    exit_on_start: Mutex<Option<u32>>,
    /// Create takes this long.
    create_delay: Duration,
}

impl FakeSandbox {
    fn new() -> Arc<Self> {
        Self::with_create_delay(Duration::ZERO)
    }

    fn with_create_delay(create_delay: Duration) -> Arc<Self> {
        let (sender, receiver) = unbounded_channel();
        Arc::new(Self {
            calls: Mutex::default(),
            events: Mutex::new(Some(receiver)),
            sender,
            fail_create: Mutex::default(),
            exit_on_start: Mutex::default(),
            create_delay,
        })
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.calls.lock().unwrap()
    }

    /// Makes a process exit with `status`.
    fn exit(&self, container_id: &str, exec_id: &str, status: u32) {
        let exit = Exit {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            pid: 0,
            status,
            at: std::time::SystemTime::now(),
        };
        self.sender.send(Event::Exit(exit)).unwrap();
    }
}

#[async_trait]
impl Sandbox for FakeSandbox {
    async fn start(&self, config: &SandboxConfig) -> Result<()> {
        self.calls().started_with.push(config.clone());
        Ok(())
    }

    async fn create(&self, req: &ContainerRequest) -> Result<Started> {
        tokio::time::sleep(self.create_delay).await;
        if self.fail_create.lock().unwrap().contains(&req.id) {
            return Err(Error::Runtime {
                op: "create",
                id: req.id.clone(),
                message: "the fake backend fails".into(),
            });
        }
        self.calls().created.push(req.clone());
        Ok(Started {
            pid: 100 + self.calls().created.len() as u32,
            io: ProcessIo::default(),
        })
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        let exit_on_start = *self.exit_on_start.lock().unwrap();
        if let Some(status) = exit_on_start {
            self.exit(id, "", status);
            // The exit is on its way before Start returns.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    async fn exec(&self, _: &str, _: &str, _: &ProcessSpec, _: StdioWanted) -> Result<Started> {
        Ok(Started {
            pid: 500,
            io: ProcessIo::default(),
        })
    }

    async fn kill(&self, id: &str, exec_id: &str, signal: u32, _all: bool) -> Result<()> {
        let call = (id.to_string(), exec_id.to_string(), signal);
        self.calls().killed.push(call);
        Ok(())
    }

    async fn close_stdin(&self, _: &str, _: &str) -> Result<()> {
        Ok(())
    }

    async fn delete(&self, id: &str) -> Result<()> {
        self.calls().deleted.push(id.to_string());
        Ok(())
    }

    async fn delete_exec(&self, _: &str, _: &str) {}

    async fn pause(&self, _: &str) -> Result<()> {
        Ok(())
    }

    async fn resume(&self, _: &str) -> Result<()> {
        Ok(())
    }

    async fn pids(&self, _: &str) -> Result<Vec<ProcessPid>> {
        Ok(vec![
            ProcessPid {
                pid: 101,
                exec_id: None,
            },
            ProcessPid {
                pid: 500,
                exec_id: Some("e1".into()),
            },
        ])
    }

    async fn update(&self, _: &str, _: &LinuxResources) -> Result<()> {
        Ok(())
    }

    async fn stats(&self, _: &str) -> Result<Stats> {
        Ok(Stats::V1(Box::default()))
    }

    async fn resize_pty(&self, _: &str, _: &str, _: u32, _: u32) -> Result<()> {
        Ok(())
    }

    fn events(&self) -> Option<UnboundedReceiver<Event>> {
        self.events.lock().unwrap().take()
    }

    async fn stop(&self) -> Result<()> {
        self.calls().stopped += 1;
        Ok(())
    }
}

/// A service over a fake sandbox, with a fake containerd and a directory for bundles.
struct Harness {
    service: TaskService,
    sandbox: Arc<FakeSandbox>,
    containerd: Containerd,
    exit: Arc<ExitSignal>,
    dir: tempfile::TempDir,
    _server: containerd_shim_protos::ttrpc::r#async::Server,
}

impl Harness {
    async fn new(sandbox: Arc<FakeSandbox>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock.ttrpc");
        let containerd = Containerd::default();
        let server = containerd.serve(&socket).await;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let publisher = Publisher::start(socket.to_str().unwrap(), "test", logger.clone());
        let fake = sandbox.clone();
        let build: BuildSandbox = Box::new(move |_, _, _| {
            let fake = fake.clone();
            Box::pin(async move { Ok(fake as Arc<dyn Sandbox>) })
        });
        let exit = Arc::new(ExitSignal::default());
        let service = TaskService::new(
            "test",
            publisher,
            build,
            exit.clone(),
            Arc::default(),
            logger,
        );
        std::fs::write(dir.path().join("configuration.toml"), "").unwrap();
        Self {
            service,
            sandbox,
            containerd,
            exit,
            dir,
            _server: server,
        }
    }

    /// A bundle for container `id` with `annotations`.
    fn bundle(&self, id: &str, annotations: &[(&str, &str)]) -> String {
        let bundle = self.dir.path().join(id);
        std::fs::create_dir_all(&bundle).unwrap();
        let mut spec = Spec::default();
        let annotations: HashMap<String, String> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        spec.set_annotations(Some(annotations));
        spec.save(bundle.join("config.json")).unwrap();
        bundle.display().to_string()
    }

    /// The runtime options naming the test's configuration file (`ConfigPath`).
    fn options(&self) -> Any {
        let path = self.dir.path().join("configuration.toml");
        let mut value = Vec::new();
        {
            let mut out = CodedOutputStream::vec(&mut value);
            out.write_string(2, path.to_str().unwrap()).unwrap();
            out.flush().unwrap();
        }
        Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        }
    }

    async fn create(&self, id: &str, annotations: &[(&str, &str)]) -> ttrpc::Result<u32> {
        let req = api::CreateTaskRequest {
            id: id.to_string(),
            bundle: self.bundle(id, annotations),
            options: Some(self.options()).into(),
            ..Default::default()
        };
        self.service.create_task(req).await.map(|r| r.pid)
    }

    async fn start(&self, id: &str, exec_id: &str) -> ttrpc::Result<u32> {
        let req = api::StartRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.service.start_process(req).await.map(|r| r.pid)
    }

    async fn exec(&self, id: &str, exec_id: &str) -> ttrpc::Result<()> {
        let spec = serde_json::to_vec(&ProcessSpec::default()).unwrap();
        let req = api::ExecProcessRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            spec: Some(Any {
                value: spec,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        self.service.add_exec(req).await.map(|_| ())
    }

    async fn delete(&self, id: &str, exec_id: &str) -> ttrpc::Result<api::DeleteResponse> {
        let req = api::DeleteRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.service.delete_process(req).await
    }

    async fn kill(&self, id: &str, exec_id: &str) -> ttrpc::Result<()> {
        let req = api::KillRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            signal: 9,
            ..Default::default()
        };
        self.service.kill_process(req).await.map(|_| ())
    }

    async fn wait(&self, id: &str, exec_id: &str) -> u32 {
        let req = api::WaitRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        let wait = self.service.wait_exit(req);
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("the process exits")
            .expect("Wait")
            .exit_status
    }

    /// The exit statuses published, in order.
    fn exit_statuses(&self) -> Vec<u32> {
        self.containerd
            .received()
            .iter()
            .filter(|e| e.topic() == topics::TASK_EXIT_EVENT_TOPIC)
            .map(|e| {
                TaskExit::parse_from_bytes(&e.event().value)
                    .unwrap()
                    .exit_status
            })
            .collect()
    }
}

fn code(result: ttrpc::Result<impl std::fmt::Debug>) -> Code {
    match result {
        Err(ttrpc::Error::RpcStatus(status)) => status.code(),
        other => panic!("expected an error status, got {other:?}"),
    }
}

const CRI_TYPE: &str = "io.kubernetes.cri.container-type";
const CRI_SANDBOX: &str = "io.kubernetes.cri.sandbox-id";

#[tokio::test]
async fn events_come_in_the_order_of_the_task_lifecycle() {
    let h = Harness::new(FakeSandbox::new()).await;
    assert_eq!(h.create("c1", &[]).await.unwrap(), 101, "the backend's pid");
    h.start("c1", "").await.unwrap();
    h.exec("c1", "e1").await.unwrap();
    assert_eq!(h.start("c1", "e1").await.unwrap(), 500);
    h.sandbox.exit("c1", "e1", 3);
    assert_eq!(h.wait("c1", "e1").await, 3);
    h.delete("c1", "e1").await.unwrap();
    h.sandbox.exit("c1", "", 0);
    assert_eq!(h.wait("c1", "").await, 0);
    h.delete("c1", "").await.unwrap();
    h.containerd.wait_for(7).await;
    assert_eq!(
        h.containerd.topics(),
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/exit",
            "/tasks/delete"
        ]
    );
    assert_eq!(h.exit_statuses(), [3, 0]);
    assert_eq!(
        h.sandbox.calls().stopped,
        1,
        "the last container stops the sandbox"
    );
}

#[tokio::test]
async fn an_exit_before_start_returns_follows_the_start_event() {
    let sandbox = FakeSandbox::new();
    *sandbox.exit_on_start.lock().unwrap() = Some(1);
    let h = Harness::new(sandbox).await;
    h.create("c1", &[]).await.unwrap();
    h.start("c1", "").await.unwrap();
    assert_eq!(h.wait("c1", "").await, 1);
    h.containerd.wait_for(3).await;
    assert_eq!(
        h.containerd.topics(),
        ["/tasks/create", "/tasks/start", "/tasks/exit"]
    );
}

#[tokio::test]
async fn delete_needs_a_stopped_process() {
    let h = Harness::new(FakeSandbox::new()).await;
    h.create("c1", &[]).await.unwrap();
    h.start("c1", "").await.unwrap();
    h.exec("c1", "e1").await.unwrap();
    h.start("c1", "e1").await.unwrap();
    assert_eq!(code(h.delete("c1", "").await), Code::FAILED_PRECONDITION);
    assert_eq!(code(h.delete("c1", "e1").await), Code::FAILED_PRECONDITION);
    assert_eq!(code(h.delete("nope", "").await), Code::NOT_FOUND);
    assert!(h.sandbox.calls().deleted.is_empty());
    h.sandbox.exit("c1", "", 137);
    h.wait("c1", "").await;
    let deleted = h.delete("c1", "").await.unwrap();
    assert_eq!((deleted.pid, deleted.exit_status), (101, 137));
    assert_eq!(
        code(h.delete("c1", "").await),
        Code::NOT_FOUND,
        "deleted twice"
    );
}

#[tokio::test]
async fn two_creates_of_one_id_make_one_container() {
    let h = Harness::new(FakeSandbox::with_create_delay(Duration::from_millis(50))).await;
    let (first, second) = tokio::join!(h.create("c1", &[]), h.create("c1", &[]));
    let codes: Vec<_> = [first, second]
        .into_iter()
        .filter_map(|r| r.err())
        .map(|e| code(Err::<(), _>(e)))
        .collect();
    assert_eq!(codes, [Code::ALREADY_EXISTS]);
    assert_eq!(h.sandbox.calls().created.len(), 1);
}

#[tokio::test]
async fn kill_of_a_finished_process_is_not_found() {
    let h = Harness::new(FakeSandbox::new()).await;
    h.create("c1", &[]).await.unwrap();
    h.start("c1", "").await.unwrap();
    h.exec("c1", "e1").await.unwrap();
    assert_eq!(
        code(h.kill("c1", "e1").await),
        Code::FAILED_PRECONDITION,
        "not started"
    );
    h.kill("c1", "").await.unwrap();
    h.sandbox.exit("c1", "", 137);
    h.wait("c1", "").await;
    assert_eq!(code(h.kill("c1", "").await), Code::NOT_FOUND);
    assert_eq!(h.sandbox.calls().killed, [("c1".into(), String::new(), 9)]);
}

#[tokio::test]
async fn shutdown_waits_for_the_last_container() {
    let h = Harness::new(FakeSandbox::new()).await;
    h.create("c1", &[]).await.unwrap();
    h.service.shut_down().await.unwrap();
    let signalled = tokio::time::timeout(Duration::from_millis(100), h.exit.wait()).await;
    assert!(signalled.is_err(), "no exit while a container is left");
    assert_eq!(h.sandbox.calls().stopped, 0);
    h.delete("c1", "").await.unwrap();
    h.service.shut_down().await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), h.exit.wait())
        .await
        .expect("the shim exits");
    assert_eq!(h.sandbox.calls().stopped, 1, "stopped once, not again");
}

#[tokio::test]
async fn a_backend_that_fails_halfway_leaves_nothing() {
    let sandbox = FakeSandbox::new();
    sandbox.fail_create.lock().unwrap().push("c1".into());
    let h = Harness::new(sandbox).await;
    let error = h.create("c1", &[]).await.unwrap_err();
    assert!(
        error.to_string().contains("the fake backend fails"),
        "{error}"
    );
    assert_eq!(
        h.sandbox.calls().stopped,
        1,
        "the sandbox of no container is stopped"
    );
    assert!(h.service.state.containers.lock().await.is_empty());
    assert_eq!(code(h.start("c1", "").await), Code::NOT_FOUND);
    h.sandbox.fail_create.lock().unwrap().clear();
    h.create("c1", &[]).await.expect("a retry works");
    assert_eq!(h.sandbox.calls().started_with.len(), 2);
}

#[tokio::test]
async fn the_pods_converted_config_starts_the_sandbox() {
    let h = Harness::new(FakeSandbox::new()).await;
    let memory = "io.katacontainers.config.hypervisor.default_memory";
    h.create("pod", &[(CRI_TYPE, "sandbox"), (memory, "512")])
        .await
        .unwrap();
    h.create("app", &[(CRI_TYPE, "container"), (CRI_SANDBOX, "pod")])
        .await
        .unwrap();
    let calls = h.sandbox.calls();
    assert_eq!(calls.started_with.len(), 1, "one sandbox for the pod");
    let started = &calls.started_with[0];
    assert_eq!(started.id, "pod");
    assert_eq!(started.hypervisor_config.memory_size, 512);
    let ids: Vec<_> = calls.created.iter().map(|r| r.config.id.clone()).collect();
    assert_eq!(
        ids,
        ["pod", "app"],
        "each container carries its converted config"
    );
}

#[tokio::test]
async fn a_container_of_no_running_pod_is_refused() {
    let h = Harness::new(FakeSandbox::new()).await;
    let refused = h
        .create("app", &[(CRI_TYPE, "container"), (CRI_SANDBOX, "pod")])
        .await;
    assert_eq!(code(refused), Code::NOT_FOUND);
    assert!(h.sandbox.calls().started_with.is_empty());
}

#[tokio::test]
async fn when_the_sandbox_dies_every_process_exits_non_zero() {
    let h = Harness::new(FakeSandbox::new()).await;
    h.create("pod", &[(CRI_TYPE, "sandbox")]).await.unwrap();
    h.start("pod", "").await.unwrap();
    h.create("app", &[(CRI_TYPE, "container"), (CRI_SANDBOX, "pod")])
        .await
        .unwrap();
    h.start("app", "").await.unwrap();
    let reason = "the VM was killed".to_string();
    h.sandbox.sender.send(Event::Died { reason }).unwrap();
    assert_eq!(h.wait("pod", "").await, exits::SANDBOX_DIED_STATUS);
    assert_eq!(h.wait("app", "").await, exits::SANDBOX_DIED_STATUS);
    h.containerd.wait_for(6).await;
    assert_eq!(h.exit_statuses(), [255, 255]);
}

#[tokio::test]
async fn pids_name_the_exec_processes() {
    let h = Harness::new(FakeSandbox::new()).await;
    h.create("c1", &[]).await.unwrap();
    let req = api::PidsRequest {
        id: "c1".into(),
        ..Default::default()
    };
    let pids = h.service.list_pids(req).await.unwrap().processes;
    assert_eq!(pids.len(), 2);
    assert!(pids[0].info.is_none());
    let details =
        containerd_shim_protos::shim::oci::ProcessDetails::parse_from_bytes(&pids[1].info.value)
            .unwrap();
    assert_eq!((pids[1].pid, details.exec_id.as_str()), (500, "e1"));
}
