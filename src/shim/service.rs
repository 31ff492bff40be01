//! The containerd Task service: the shim v2 API over ttrpc, driving one [`Sandbox`].

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use async_trait::async_trait;
use containerd_shim::{asynchronous::ExitSignal, util::convert_to_any};
use containerd_shim_protos::{
    api,
    events::task::{
        TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM,
        TaskPaused, TaskResumed, TaskStart,
    },
    protobuf::{well_known_types::empty::Empty, MessageDyn},
    shim_async::Task,
    topics,
    ttrpc::{self, r#async::TtrpcContext, Code},
};
use slog::{debug, info, warn, Logger};
use tokio::sync::{Mutex, Notify, OnceCell};

use super::{
    bundle,
    events::Publisher,
    process::{ExitInfo, Process, StdioPaths},
};
use crate::{
    config::Config,
    oci::{RuntimeConfig, State},
    sandbox::{ContainerRequest, Event, Exit, Sandbox, StdioWanted},
};

/// Version reported by Connect.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Serializes the operations that change a container's processes (Create, Start, Delete)
/// with the handling of their exits, without stalling the pod's other containers.
type OpLock = Arc<Mutex<()>>;

/// A container the shim serves.
struct Container {
    bundle: PathBuf,
    init: Process,
    execs: HashMap<String, Process>,
    op: OpLock,
}

impl Container {
    fn process(&self, exec_id: &str) -> ttrpc::Result<&Process> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .ok_or_else(|| not_found(format!("exec {exec_id} not found")))
    }

    fn process_mut(&mut self, exec_id: &str) -> ttrpc::Result<&mut Process> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| not_found(format!("exec {exec_id} not found")))
    }
}

/// Shared state of the service and its exit handler.
struct Shared {
    namespace: String,
    containers: Mutex<HashMap<String, Container>>,
    /// Containers whose Create is under way, with the lock their Create holds.
    creating: std::sync::Mutex<HashMap<String, OpLock>>,
    publisher: Publisher,
    logger: Logger,
}

impl Shared {
    fn lock_creating(&self) -> std::sync::MutexGuard<'_, HashMap<String, OpLock>> {
        self.creating.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for, then holds, the operation lock of container `id`.
    async fn hold_op(&self, id: &str) -> ttrpc::Result<tokio::sync::OwnedMutexGuard<()>> {
        let op = self
            .op_lock(id)
            .await
            .ok_or_else(|| container_not_found(id))?;
        Ok(op.lock_owned().await)
    }

    /// The operation lock of container `id`, also while it is being created.
    async fn op_lock(&self, id: &str) -> Option<OpLock> {
        let containers = self.containers.lock().await;
        containers
            .get(id)
            .map(|c| c.op.clone())
            .or_else(|| self.lock_creating().get(id).cloned())
    }

    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        self.publisher.publish(topic, event);
    }
}

/// A container id reserved for the Create under way, released when it ends.
struct Creating<'a> {
    state: &'a Shared,
    id: String,
    op: OpLock,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl<'a> Creating<'a> {
    /// Reserves `id`, unless a container of that id exists or is being created, and holds
    /// its operation lock until the Create ends.
    async fn claim(state: &'a Shared, id: &str) -> ttrpc::Result<Creating<'a>> {
        let containers = state.containers.lock().await;
        let mut creating = state.lock_creating();
        if containers.contains_key(id) || creating.contains_key(id) {
            return Err(status_error(
                Code::ALREADY_EXISTS,
                format!("container {id} already exists"),
            ));
        }
        let op = OpLock::default();
        let held = op
            .clone()
            .try_lock_owned()
            .map_err(|e| status_error(Code::INTERNAL, e.to_string()))?;
        creating.insert(id.to_string(), op.clone());
        Ok(Creating {
            state,
            id: id.to_string(),
            op,
            _held: held,
        })
    }
}

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        self.state.lock_creating().remove(&self.id);
    }
}

/// Counts the Task requests being served, so that the shim exits only once each has had its
/// answer (a Kill whose process exits meanwhile lets containerd delete the last container and
/// shut the shim down before the Kill returns).
#[derive(Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    fn enter(self: &Arc<Self>) -> Serving {
        self.count.fetch_add(1, Ordering::AcqRel);
        Serving(self.clone())
    }

    /// Waits until no request is being served, at most `limit`.
    pub async fn settled(&self, limit: std::time::Duration) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                let idle = self.idle.notified();
                if self.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        })
        .await;
    }
}

/// One request being served.
struct Serving(Arc<InFlight>);

impl Drop for Serving {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The Task service.
pub struct TaskService {
    state: Arc<Shared>,
    in_flight: Arc<InFlight>,
    config: OnceCell<(Config, RuntimeConfig)>,
    sandbox: OnceCell<Arc<dyn Sandbox>>,
    exit: Arc<ExitSignal>,
}

impl TaskService {
    /// A service publishing through `publisher`, signalling `exit` when it should stop and
    /// counting its requests in `in_flight`.
    pub fn new(
        namespace: &str,
        publisher: Publisher,
        exit: Arc<ExitSignal>,
        in_flight: Arc<InFlight>,
        logger: Logger,
    ) -> Self {
        Self {
            in_flight,
            state: Arc::new(Shared {
                namespace: namespace.to_string(),
                containers: Mutex::new(HashMap::new()),
                creating: Default::default(),
                publisher,
                logger,
            }),
            config: OnceCell::new(),
            sandbox: OnceCell::new(),
            exit,
        }
    }

    /// The configuration, loaded on the first Create from its runtime options' ConfigPath or
    /// the usual lookup order.
    async fn config_for(
        &self,
        req: &api::CreateTaskRequest,
    ) -> ttrpc::Result<&(Config, RuntimeConfig)> {
        self.config
            .get_or_try_init(|| async {
                let explicit = bundle::config_path(req.options.as_ref());
                let config = Config::load(explicit.as_deref().map(Path::new))
                    .map_err(|e| invalid_argument(e.to_string()))?;
                let runtime = config
                    .runtime_config()
                    .map_err(|e| invalid_argument(e.to_string()))?;
                info!(self.state.logger, "configuration loaded";
                    "config_path" => explicit.unwrap_or_default(),
                    "backend" => ?config.runtime.sandbox_backend);
                Ok((config, runtime))
            })
            .await
    }

    /// The sandbox, built on the first Create.
    async fn sandbox_for(&self, config: &Config) -> ttrpc::Result<Arc<dyn Sandbox>> {
        let sandbox = self
            .sandbox
            .get_or_try_init(|| async {
                let sandbox = crate::sandbox::build(config, &self.state.namespace)
                    .await
                    .map_err(|e| status_error(Code::UNKNOWN, e.to_string()))?;
                if let Some(events) = sandbox.events() {
                    tokio::spawn(handle_events(self.state.clone(), events));
                }
                Ok::<_, ttrpc::Error>(sandbox)
            })
            .await?;
        Ok(sandbox.clone())
    }

    fn sandbox(&self) -> ttrpc::Result<Arc<dyn Sandbox>> {
        self.sandbox
            .get()
            .cloned()
            .ok_or_else(|| not_found("no container created yet".to_string()))
    }
}

/// Publishes what the sandbox reports: TaskOOM at once; each exit once its output is
/// drained and it is recorded (TaskExit).
async fn handle_events(
    state: Arc<Shared>,
    mut events: tokio::sync::mpsc::UnboundedReceiver<Event>,
) {
    while let Some(event) = events.recv().await {
        match event {
            Event::Exit(exit) => {
                let state = state.clone();
                // Each exit drains on its own, so a process whose output is held open
                // elsewhere cannot delay the others.
                tokio::spawn(async move { apply_exit(&state, exit).await });
            }
            Event::Oom { container_id } => {
                info!(state.logger, "out of memory"; "container" => &container_id);
                state.publish(
                    topics::TASK_OOM_EVENT_TOPIC,
                    Box::new(TaskOOM {
                        container_id,
                        ..Default::default()
                    }),
                );
            }
        }
    }
}

async fn apply_exit(state: &Shared, exit: Exit) {
    // A Create or Start still under way publishes its event before this exit's.
    let Some(op) = state.op_lock(&exit.container_id).await else {
        return;
    };
    drop(op.lock().await);
    let streams = {
        let mut containers = state.containers.lock().await;
        let Some(container) = containers.get_mut(&exit.container_id) else {
            return;
        };
        match container.process_mut(&exit.exec_id) {
            Ok(process) => std::mem::take(&mut process.streams),
            Err(_) => return,
        }
    };
    // Every line the process wrote reaches containerd, and is read, before it hears of the
    // exit; unless nobody reads it: then the exit does not wait for long.
    let delivery = streams.finish().await;
    if delivery.dropped > 0 {
        warn!(state.logger, "output nobody read was dropped";
            "container" => &exit.container_id, "exec" => &exit.exec_id,
            "dropped_bytes" => delivery.dropped, "delivered_bytes" => delivery.delivered,
            "stalled_ms" => super::io::STALL_LIMIT.as_millis() as u64);
    }
    let info = ExitInfo {
        status: exit.status,
        at: exit.at,
    };
    {
        let mut containers = state.containers.lock().await;
        let Some(container) = containers.get_mut(&exit.container_id) else {
            return;
        };
        let Ok(process) = container.process_mut(&exit.exec_id) else {
            return;
        };
        process.set_exited(info);
    }
    info!(state.logger, "process exited";
        "container" => &exit.container_id, "exec" => &exit.exec_id,
        "pid" => exit.pid, "status" => exit.status);
    state.publish(
        topics::TASK_EXIT_EVENT_TOPIC,
        Box::new(TaskExit {
            container_id: exit.container_id.clone(),
            id: if exit.exec_id.is_empty() {
                exit.container_id.clone()
            } else {
                exit.exec_id.clone()
            },
            pid: exit.pid,
            exit_status: exit.status,
            exited_at: Some(info.timestamp()).into(),
            ..Default::default()
        }),
    );
}

fn status_error(code: Code, message: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

fn not_found(message: String) -> ttrpc::Error {
    status_error(Code::NOT_FOUND, message)
}

fn invalid_argument(message: String) -> ttrpc::Error {
    status_error(Code::INVALID_ARGUMENT, message)
}

fn precondition(message: String) -> ttrpc::Error {
    status_error(Code::FAILED_PRECONDITION, message)
}

/// Maps a backend error to the ttrpc code containerd understands.
fn backend_error(e: crate::sandbox::Error) -> ttrpc::Error {
    match e {
        crate::sandbox::Error::NotFound(what) => not_found(what),
        other => status_error(Code::UNKNOWN, other.to_string()),
    }
}

fn container_not_found(id: &str) -> ttrpc::Error {
    not_found(format!("container {id} not found"))
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        let _serving = self.in_flight.enter();
        let logger = &self.state.logger;
        info!(logger, "create"; "container" => &req.id, "bundle" => &req.bundle);
        let creating = Creating::claim(&self.state, &req.id).await?;
        let bundle = PathBuf::from(&req.bundle);
        let spec = bundle::load_spec(&bundle).map_err(invalid_argument)?;
        let (config, runtime) = self.config_for(&req).await?;
        bundle::check(&spec, runtime, &bundle, &req.id).map_err(invalid_argument)?;
        let sandbox = self.sandbox_for(config).await?;
        if let Err(e) = bundle::mount_rootfs(&req.rootfs, &bundle).await {
            bundle::unmount_rootfs(&bundle);
            return Err(status_error(Code::UNKNOWN, e));
        }
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let request = ContainerRequest {
            id: req.id.clone(),
            bundle: bundle.clone(),
            spec,
            stdio: wanted(&stdio),
        };
        let started = match sandbox.create(&request).await {
            Ok(started) => started,
            Err(e) => {
                bundle::unmount_rootfs(&bundle);
                return Err(backend_error(e));
            }
        };
        let mut init = Process::new(stdio, None);
        init.pid = started.pid;
        match super::io::Streams::connect(started.io, &init.stdio).await {
            Ok(streams) => init.streams = streams,
            Err(e) => {
                let _ = sandbox.delete(&req.id).await;
                bundle::unmount_rootfs(&bundle);
                return Err(invalid_argument(e.to_string()));
            }
        }
        let pid = init.pid;
        self.state.containers.lock().await.insert(
            req.id.clone(),
            Container {
                bundle,
                init,
                execs: HashMap::new(),
                op: creating.op.clone(),
            },
        );
        self.state.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: Some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                })
                .into(),
                pid,
                ..Default::default()
            }),
        );
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> ttrpc::Result<api::StartResponse> {
        let _serving = self.in_flight.enter();
        debug!(self.state.logger, "start"; "container" => &req.id, "exec" => &req.exec_id);
        let sandbox = self.sandbox()?;
        // Held until the start event is out, so that no exit of this process overtakes it.
        let _op = self.state.hold_op(&req.id).await?;
        let (spec, stdio) = {
            let containers = self.state.containers.lock().await;
            let container = containers
                .get(&req.id)
                .ok_or_else(|| container_not_found(&req.id))?;
            let process = container.process(&req.exec_id)?;
            if process.status != State::Ready {
                return Err(precondition(format!(
                    "cannot start {} {}: it is {}, not created",
                    req.id,
                    req.exec_id,
                    process.status.oci_state()
                )));
            }
            (process.spec.clone(), process.stdio.clone())
        };
        let (pid, streams) = match (req.exec_id.is_empty(), spec) {
            (true, _) => {
                sandbox.start(&req.id).await.map_err(backend_error)?;
                (None, Default::default())
            }
            (false, None) => {
                return Err(precondition(format!(
                    "exec {} has no process spec",
                    req.exec_id
                )))
            }
            (false, Some(spec)) => {
                let started = sandbox
                    .exec(&req.id, &req.exec_id, &spec, wanted(&stdio))
                    .await
                    .map_err(backend_error)?;
                let streams = match super::io::Streams::connect(started.io, &stdio).await {
                    Ok(streams) => streams,
                    Err(e) => {
                        let _ = sandbox.kill(&req.id, &req.exec_id, 9, false).await;
                        return Err(invalid_argument(e.to_string()));
                    }
                };
                (Some(started.pid), streams)
            }
        };
        let pid = {
            let mut containers = self.state.containers.lock().await;
            let container = containers
                .get_mut(&req.id)
                .ok_or_else(|| container_not_found(&req.id))?;
            let process = container.process_mut(&req.exec_id)?;
            process.status = State::Running;
            if let Some(pid) = pid {
                process.pid = pid;
                process.streams = streams;
            }
            process.pid
        };
        if req.exec_id.is_empty() {
            release_free_memory();
            self.state.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: req.id.clone(),
                    pid,
                    ..Default::default()
                }),
            );
        } else {
            self.state.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid,
                    ..Default::default()
                }),
            );
        }
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> ttrpc::Result<api::StateResponse> {
        let _serving = self.in_flight.enter();
        let containers = self.state.containers.lock().await;
        let container = containers
            .get(&req.id)
            .ok_or_else(|| container_not_found(&req.id))?;
        let process = container.process(&req.exec_id)?;
        let exit = process.exit();
        Ok(api::StateResponse {
            id: if req.exec_id.is_empty() {
                req.id.clone()
            } else {
                req.exec_id.clone()
            },
            bundle: container.bundle.display().to_string(),
            pid: process.pid,
            status: super::process::task_status(process.status).into(),
            stdin: process.stdio.stdin.clone(),
            stdout: process.stdio.stdout.clone(),
            stderr: process.stdio.stderr.clone(),
            terminal: process.stdio.terminal,
            exit_status: exit.map(|e| e.status).unwrap_or_default(),
            exited_at: exit.map(|e| e.timestamp()).into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        let _serving = self.in_flight.enter();
        info!(self.state.logger, "delete"; "container" => &req.id, "exec" => &req.exec_id);
        let sandbox = self.sandbox()?;
        let _op = self.state.hold_op(&req.id).await?;
        let mut containers = self.state.containers.lock().await;
        let container = containers
            .get_mut(&req.id)
            .ok_or_else(|| container_not_found(&req.id))?;
        if !req.exec_id.is_empty() {
            let process = container.process(&req.exec_id)?;
            if process.status == State::Running {
                return Err(precondition(format!(
                    "exec {} of {} is still running",
                    req.exec_id, req.id
                )));
            }
            let mut process = container
                .execs
                .remove(&req.exec_id)
                .ok_or_else(|| not_found(format!("exec {} not found", req.exec_id)))?;
            drop(containers);
            process.streams.abort().await;
            sandbox.delete_exec(&req.id, &req.exec_id).await;
            let exit = process.exit();
            return Ok(api::DeleteResponse {
                pid: process.pid,
                exit_status: exit.map(|e| e.status).unwrap_or_default(),
                exited_at: exit.map(|e| e.timestamp()).into(),
                ..Default::default()
            });
        }
        if matches!(container.init.status, State::Running | State::Paused) {
            return Err(precondition(format!(
                "container {} is still running: kill it first",
                req.id
            )));
        }
        // The runtime call runs without the containers lock; the operation lock keeps
        // every other change to this container out meanwhile.
        drop(containers);
        sandbox.delete(&req.id).await.map_err(backend_error)?;
        let (container, remaining) = {
            let mut containers = self.state.containers.lock().await;
            let container = containers
                .remove(&req.id)
                .ok_or_else(|| container_not_found(&req.id))?;
            (container, containers.len())
        };
        let mut container = container;
        for process in container.execs.values_mut() {
            process.streams.abort().await;
        }
        container.init.streams.abort().await;
        bundle::unmount_rootfs(&container.bundle);
        let exit = container.init.exit().unwrap_or(ExitInfo {
            status: 0,
            at: std::time::SystemTime::now(),
        });
        self.state.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: req.id.clone(),
                pid: container.init.pid,
                exit_status: exit.status,
                exited_at: Some(exit.timestamp()).into(),
                ..Default::default()
            }),
        );
        if remaining == 0 {
            sandbox.shutdown().await;
        }
        Ok(api::DeleteResponse {
            pid: container.init.pid,
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> ttrpc::Result<api::PidsResponse> {
        let _serving = self.in_flight.enter();
        let sandbox = self.sandbox()?;
        let exec_pids: HashMap<u32, String> = {
            let containers = self.state.containers.lock().await;
            let container = containers
                .get(&req.id)
                .ok_or_else(|| container_not_found(&req.id))?;
            container
                .execs
                .iter()
                .map(|(id, p)| (p.pid, id.clone()))
                .collect()
        };
        let pids = sandbox.pids(&req.id).await.map_err(backend_error)?;
        let processes = pids
            .into_iter()
            .map(|pid| {
                let info = exec_pids.get(&pid).and_then(|exec_id| {
                    let details = containerd_shim_protos::shim::oci::ProcessDetails {
                        exec_id: exec_id.clone(),
                        ..Default::default()
                    };
                    convert_to_any(Box::new(details)).ok()
                });
                api::ProcessInfo {
                    pid,
                    info: info.into(),
                    ..Default::default()
                }
            })
            .collect();
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> ttrpc::Result<Empty> {
        let _serving = self.in_flight.enter();
        self.set_paused(&req.id, true).await
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> ttrpc::Result<Empty> {
        let _serving = self.in_flight.enter();
        self.set_paused(&req.id, false).await
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        req: api::CheckpointTaskRequest,
    ) -> ttrpc::Result<Empty> {
        let _serving = self.in_flight.enter();
        Err(status_error(
            Code::UNIMPLEMENTED,
            format!(
                "checkpoint of {}: vessel does not support checkpoints",
                req.id
            ),
        ))
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<Empty> {
        let _serving = self.in_flight.enter();
        info!(self.state.logger, "kill"; "container" => &req.id, "exec" => &req.exec_id,
            "signal" => req.signal, "all" => req.all);
        let sandbox = self.sandbox()?;
        {
            let containers = self.state.containers.lock().await;
            let container = containers
                .get(&req.id)
                .ok_or_else(|| container_not_found(&req.id))?;
            let process = container.process(&req.exec_id)?;
            if process.exit().is_some() && !req.all {
                return Err(not_found(format!(
                    "process {} {} already finished",
                    req.id, req.exec_id
                )));
            }
            if process.pid == 0 {
                return Err(precondition(format!(
                    "process {} {} has not started",
                    req.id, req.exec_id
                )));
            }
        }
        sandbox
            .kill(&req.id, &req.exec_id, req.signal, req.all)
            .await
            .map_err(backend_error)?;
        Ok(Empty::new())
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> ttrpc::Result<Empty> {
        let _serving = self.in_flight.enter();
        info!(self.state.logger, "exec"; "container" => &req.id, "exec" => &req.exec_id);
        let spec: oci_spec::runtime::Process = serde_json::from_slice(&req.spec.value)
            .map_err(|e| invalid_argument(format!("exec {}: process spec: {e}", req.exec_id)))?;
        let mut containers = self.state.containers.lock().await;
        let container = containers
            .get_mut(&req.id)
            .ok_or_else(|| container_not_found(&req.id))?;
        if container.init.status != State::Running {
            return Err(precondition(format!("container {} is not running", req.id)));
        }
        if req.exec_id.is_empty() || container.execs.contains_key(&req.exec_id) {
            return Err(status_error(
                Code::ALREADY_EXISTS,
                format!("exec id {:?} is empty or already in use", req.exec_id),
            ));
        }
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        container
            .execs
            .insert(req.exec_id.clone(), Process::new(stdio, Some(spec)));
        drop(containers);
        self.state.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> ttrpc::Result<Empty> {
        let _serving = self.in_flight.enter();
        let sandbox = self.sandbox()?;
        sandbox
            .resize_pty(&req.id, &req.exec_id, req.width, req.height)
            .await
            .map_err(backend_error)?;
        Ok(Empty::new())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> ttrpc::Result<Empty> {
        let _serving = self.in_flight.enter();
        let containers = self.state.containers.lock().await;
        let container = containers
            .get(&req.id)
            .ok_or_else(|| container_not_found(&req.id))?;
        let process = container.process(&req.exec_id)?;
        if req.stdin {
            process.streams.close_input();
        }
        Ok(Empty::new())
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> ttrpc::Result<Empty> {
        let _serving = self.in_flight.enter();
        let sandbox = self.sandbox()?;
        let resources: oci_spec::runtime::LinuxResources =
            serde_json::from_slice(&req.resources.value)
                .map_err(|e| invalid_argument(format!("update {}: resources: {e}", req.id)))?;
        self.require_running(&req.id).await?;
        sandbox
            .update(&req.id, &resources)
            .await
            .map_err(backend_error)?;
        Ok(Empty::new())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> ttrpc::Result<api::WaitResponse> {
        let _serving = self.in_flight.enter();
        let mut exited = {
            let containers = self.state.containers.lock().await;
            let container = containers
                .get(&req.id)
                .ok_or_else(|| container_not_found(&req.id))?;
            container.process(&req.exec_id)?.watch_exit()
        };
        let exit = exited
            .wait_for(|e| e.is_some())
            .await
            .map_err(|_| not_found(format!("process {} {} was deleted", req.id, req.exec_id)))?
            .ok_or_else(|| not_found(format!("process {} {}", req.id, req.exec_id)))?;
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> ttrpc::Result<api::StatsResponse> {
        let _serving = self.in_flight.enter();
        let sandbox = self.sandbox()?;
        self.require_running(&req.id).await?;
        let stats = sandbox.stats(&req.id).await.map_err(backend_error)?;
        Ok(api::StatsResponse {
            stats: Some(stats).into(),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        let _serving = self.in_flight.enter();
        let containers = self.state.containers.lock().await;
        let task_pid = containers.get(&req.id).map(|c| c.init.pid).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: VERSION.to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> ttrpc::Result<Empty> {
        let _serving = self.in_flight.enter();
        if !self.state.containers.lock().await.is_empty() || !self.state.lock_creating().is_empty()
        {
            return Ok(Empty::new());
        }
        if let Some(sandbox) = self.sandbox.get() {
            sandbox.shutdown().await;
        }
        info!(self.state.logger, "shutdown: no container left");
        self.exit.signal();
        Ok(Empty::new())
    }
}

impl TaskService {
    async fn require_running(&self, id: &str) -> ttrpc::Result<()> {
        let containers = self.state.containers.lock().await;
        let container = containers.get(id).ok_or_else(|| container_not_found(id))?;
        if !matches!(container.init.status, State::Running | State::Paused) {
            return Err(precondition(format!("container {id} is not running")));
        }
        Ok(())
    }

    async fn set_paused(&self, id: &str, pause: bool) -> ttrpc::Result<Empty> {
        let sandbox = self.sandbox()?;
        let _op = self.state.hold_op(id).await?;
        let (from, to) = if pause {
            (State::Running, State::Paused)
        } else {
            (State::Paused, State::Running)
        };
        let status = {
            let containers = self.state.containers.lock().await;
            let container = containers.get(id).ok_or_else(|| container_not_found(id))?;
            container.init.status
        };
        if status != from {
            return Err(precondition(format!(
                "container {id} is {}, not {}",
                status.oci_state(),
                from.oci_state()
            )));
        }
        if pause {
            sandbox.pause(id).await.map_err(backend_error)?;
        } else {
            sandbox.resume(id).await.map_err(backend_error)?;
        }
        {
            let mut containers = self.state.containers.lock().await;
            let container = containers
                .get_mut(id)
                .ok_or_else(|| container_not_found(id))?;
            container.init.status = to;
        }
        if pause {
            self.state.publish(
                topics::TASK_PAUSED_EVENT_TOPIC,
                Box::new(TaskPaused {
                    container_id: id.to_string(),
                    ..Default::default()
                }),
            );
        } else {
            self.state.publish(
                topics::TASK_RESUMED_EVENT_TOPIC,
                Box::new(TaskResumed {
                    container_id: id.to_string(),
                    ..Default::default()
                }),
            );
        }
        Ok(Empty::new())
    }
}

/// Hands the heap the shim no longer uses back to the kernel: a container's start leaves
/// the parsed bundle and the runtime's output behind, and an idle shim should not keep them.
fn release_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The streams a process gets, from the paths containerd gave.
fn wanted(stdio: &StdioPaths) -> StdioWanted {
    StdioWanted {
        stdin: !stdio.stdin.is_empty(),
        stdout: !stdio.stdout.is_empty(),
        stderr: !stdio.stderr.is_empty() && !stdio.terminal,
        terminal: stdio.terminal,
    }
}
