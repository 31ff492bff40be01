//! The containerd Task service: the shim v2 API over ttrpc, driving one [`Sandbox`].
//!
//! Each operation has its own file: [`create`] (configuration, conversion, the sandbox's
//! start), [`lifecycle`] (start, delete, pause, resume, shutdown), [`exec`], [`control`]
//! (kill, close_io, resize, update), [`inspect`] (state, pids, stats, wait, connect), and
//! [`exits`] (what the sandbox reports, published as events).

mod control;
mod create;
mod errors;
mod exec;
mod exits;
mod inspect;
mod lifecycle;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim_protos::{
    api,
    protobuf::{well_known_types::empty::Empty, MessageDyn},
    shim_async::Task,
    ttrpc::{self, r#async::TtrpcContext},
};
use slog::Logger;
use tokio::sync::{Mutex, Notify, OnceCell};

use super::{
    events::Publisher,
    process::{Process, StdioPaths},
};
use crate::{
    config::Config,
    oci::RuntimeConfig,
    sandbox::{Sandbox, StdioWanted},
};
use errors::{container_not_found, not_found};

/// A sandbox backend being built.
pub type SandboxFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = crate::sandbox::Result<Arc<dyn Sandbox>>> + Send>,
>;

/// Builds the sandbox backend for a configuration, a namespace and a sandbox id.
pub type BuildSandbox = Box<dyn Fn(Config, String, String) -> SandboxFuture + Send + Sync>;

/// The backend the configuration selects ([`crate::sandbox::build`]).
pub fn configured_backend() -> BuildSandbox {
    Box::new(|config, namespace, sandbox_id| {
        Box::pin(async move { crate::sandbox::build(&config, &namespace, &sandbox_id).await })
    })
}

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

    /// Runs `read` on container `id`.
    async fn with_container<T>(
        &self,
        id: &str,
        read: impl FnOnce(&Container) -> ttrpc::Result<T>,
    ) -> ttrpc::Result<T> {
        let containers = self.containers.lock().await;
        read(containers.get(id).ok_or_else(|| container_not_found(id))?)
    }

    /// Runs `change` on container `id`.
    async fn with_container_mut<T>(
        &self,
        id: &str,
        change: impl FnOnce(&mut Container) -> ttrpc::Result<T>,
    ) -> ttrpc::Result<T> {
        let mut containers = self.containers.lock().await;
        change(
            containers
                .get_mut(id)
                .ok_or_else(|| container_not_found(id))?,
        )
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
    build: BuildSandbox,
    /// The pod's sandbox, from its first Create until its last container is gone.
    sandbox: Mutex<Option<Arc<dyn Sandbox>>>,
    exit: Arc<ExitSignal>,
}

impl TaskService {
    /// A service publishing through `publisher`, running containers in the sandboxes `build`
    /// makes, signalling `exit` when it should stop and counting its requests in `in_flight`.
    pub fn new(
        namespace: &str,
        publisher: Publisher,
        build: BuildSandbox,
        exit: Arc<ExitSignal>,
        in_flight: Arc<InFlight>,
        logger: Logger,
    ) -> Self {
        Self {
            state: Arc::new(Shared {
                namespace: namespace.to_string(),
                containers: Mutex::new(HashMap::new()),
                creating: Default::default(),
                publisher,
                logger,
            }),
            in_flight,
            config: OnceCell::new(),
            build,
            sandbox: Mutex::new(None),
            exit,
        }
    }

    /// The running sandbox.
    async fn sandbox(&self) -> ttrpc::Result<Arc<dyn Sandbox>> {
        self.sandbox
            .lock()
            .await
            .clone()
            .ok_or_else(|| not_found("no sandbox: no container was created".to_string()))
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

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        let _serving = self.in_flight.enter();
        self.create_task(req).await
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> ttrpc::Result<api::StartResponse> {
        let _serving = self.in_flight.enter();
        self.start_process(req).await
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> ttrpc::Result<api::StateResponse> {
        let _serving = self.in_flight.enter();
        self.process_state(req).await
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        let _serving = self.in_flight.enter();
        self.delete_process(req).await
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> ttrpc::Result<api::PidsResponse> {
        let _serving = self.in_flight.enter();
        self.list_pids(req).await
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
        Err(errors::status(
            ttrpc::Code::UNIMPLEMENTED,
            format!(
                "checkpoint of {}: vessel does not support checkpoints",
                req.id
            ),
        ))
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<Empty> {
        let _serving = self.in_flight.enter();
        self.kill_process(req).await
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> ttrpc::Result<Empty> {
        let _serving = self.in_flight.enter();
        self.add_exec(req).await
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> ttrpc::Result<Empty> {
        let _serving = self.in_flight.enter();
        self.resize(req).await
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> ttrpc::Result<Empty> {
        let _serving = self.in_flight.enter();
        self.close_input(req).await
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> ttrpc::Result<Empty> {
        let _serving = self.in_flight.enter();
        self.update_resources(req).await
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> ttrpc::Result<api::WaitResponse> {
        let _serving = self.in_flight.enter();
        self.wait_exit(req).await
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> ttrpc::Result<api::StatsResponse> {
        let _serving = self.in_flight.enter();
        self.container_stats(req).await
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        let _serving = self.in_flight.enter();
        self.connect_info(req).await
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> ttrpc::Result<Empty> {
        let _serving = self.in_flight.enter();
        self.shut_down().await
    }
}
