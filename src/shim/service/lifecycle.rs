//! A process's lifecycle: Start, Delete, Pause and Resume; the sandbox's stop; Shutdown.

use containerd_shim_protos::{
    api,
    events::task::{TaskDelete, TaskExecStarted, TaskPaused, TaskResumed, TaskStart},
    protobuf::well_known_types::empty::Empty,
    topics, ttrpc,
};
use slog::{debug, error, info};

use super::{
    errors::{self, container_not_found, invalid_argument, not_found, precondition},
    wanted, TaskService,
};
use crate::{
    oci::State,
    sandbox::Sandbox,
    shim::{
        io::Streams,
        process::{ExitInfo, Process, StdioPaths},
    },
};

impl TaskService {
    pub(super) async fn start_process(
        &self,
        req: api::StartRequest,
    ) -> ttrpc::Result<api::StartResponse> {
        debug!(self.state.logger, "start"; "container" => &req.id, "exec" => &req.exec_id);
        let sandbox = self.sandbox().await?;
        // Held until the start event is out, so that no exit of this process overtakes it.
        let _op = self.state.hold_op(&req.id).await?;
        let (spec, stdio) = self
            .state
            .with_container(&req.id, |container| {
                let process = container.process(&req.exec_id)?;
                if process.status != State::Ready {
                    return Err(precondition(format!(
                        "cannot start {} {}: it is {}, not created",
                        req.id,
                        req.exec_id,
                        process.status.oci_state()
                    )));
                }
                Ok((process.spec.clone(), process.stdio.clone()))
            })
            .await?;
        let started = match spec {
            None => {
                sandbox
                    .start_container(&req.id)
                    .await
                    .map_err(errors::backend)?;
                None
            }
            Some(spec) => Some(start_exec(&*sandbox, &req, &spec, &stdio).await?),
        };
        let pid = self
            .state
            .with_container_mut(&req.id, |container| {
                let process = container.process_mut(&req.exec_id)?;
                process.status = State::Running;
                if let Some((pid, streams)) = started {
                    process.pid = pid;
                    process.streams = streams;
                }
                Ok(process.pid)
            })
            .await?;
        self.publish_started(&req, pid);
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    /// TaskStart, or TaskExecStarted.
    fn publish_started(&self, req: &api::StartRequest, pid: u32) {
        if req.exec_id.is_empty() {
            release_free_memory();
            let event = TaskStart {
                container_id: req.id.clone(),
                pid,
                ..Default::default()
            };
            self.state
                .publish(topics::TASK_START_EVENT_TOPIC, Box::new(event));
        } else {
            let event = TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid,
                ..Default::default()
            };
            self.state
                .publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(event));
        }
    }

    pub(super) async fn delete_process(
        &self,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        info!(self.state.logger, "delete"; "container" => &req.id, "exec" => &req.exec_id);
        let sandbox = self.sandbox().await?;
        let _op = self.state.hold_op(&req.id).await?;
        if !req.exec_id.is_empty() {
            let mut process = self
                .state
                .with_container_mut(&req.id, |container| {
                    if container.process(&req.exec_id)?.status == State::Running {
                        return Err(precondition(format!(
                            "exec {} of {} is still running",
                            req.exec_id, req.id
                        )));
                    }
                    container
                        .execs
                        .remove(&req.exec_id)
                        .ok_or_else(|| not_found(format!("exec {} not found", req.exec_id)))
                })
                .await?;
            process.streams.abort().await;
            sandbox.delete_exec(&req.id, &req.exec_id).await;
            return Ok(deleted(&process));
        }
        self.state
            .with_container(&req.id, |container| {
                if matches!(container.init.status, State::Running | State::Paused) {
                    return Err(precondition(format!(
                        "container {} is still running: kill it first",
                        req.id
                    )));
                }
                Ok(())
            })
            .await?;
        // The backend call runs without the containers lock; the operation lock keeps every
        // other change to this container out meanwhile.
        sandbox.delete(&req.id).await.map_err(errors::backend)?;
        let mut container = self
            .state
            .containers
            .lock()
            .await
            .remove(&req.id)
            .ok_or_else(|| container_not_found(&req.id))?;
        for process in container.execs.values_mut() {
            process.streams.abort().await;
        }
        container.init.streams.abort().await;
        let response = deleted(&container.init);
        let event = TaskDelete {
            container_id: req.id.clone(),
            pid: response.pid,
            exit_status: response.exit_status,
            exited_at: response.exited_at.clone(),
            ..Default::default()
        };
        self.state
            .publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(event));
        self.stop_sandbox_if_empty("").await;
        Ok(response)
    }

    /// Stops the sandbox once no container is left in it nor being created (but `creating`,
    /// the one whose failed Create asks).
    pub(super) async fn stop_sandbox_if_empty(&self, creating: &str) {
        let mut slot = self.sandbox.lock().await;
        if !self.state.containers.lock().await.is_empty()
            || self.state.lock_creating().keys().any(|id| id != creating)
        {
            return;
        }
        if let Some(sandbox) = slot.take() {
            match sandbox.stop().await {
                Ok(()) => info!(self.state.logger, "sandbox stopped"),
                Err(e) => error!(self.state.logger, "stop the sandbox"; "error" => %e),
            }
        }
    }

    pub(super) async fn set_paused(&self, id: &str, pause: bool) -> ttrpc::Result<Empty> {
        let sandbox = self.sandbox().await?;
        let _op = self.state.hold_op(id).await?;
        let (from, to) = if pause {
            (State::Running, State::Paused)
        } else {
            (State::Paused, State::Running)
        };
        let status = self
            .state
            .with_container(id, |container| Ok(container.init.status))
            .await?;
        if status != from {
            return Err(precondition(format!(
                "container {id} is {}, not {}",
                status.oci_state(),
                from.oci_state()
            )));
        }
        let (changed, topic, event): (_, _, Box<dyn containerd_shim_protos::protobuf::MessageDyn>) =
            if pause {
                let event = TaskPaused {
                    container_id: id.to_string(),
                    ..Default::default()
                };
                (
                    sandbox.pause(id).await,
                    topics::TASK_PAUSED_EVENT_TOPIC,
                    Box::new(event),
                )
            } else {
                let event = TaskResumed {
                    container_id: id.to_string(),
                    ..Default::default()
                };
                (
                    sandbox.resume(id).await,
                    topics::TASK_RESUMED_EVENT_TOPIC,
                    Box::new(event),
                )
            };
        changed.map_err(errors::backend)?;
        self.state
            .with_container_mut(id, |container| {
                container.init.status = to;
                Ok(())
            })
            .await?;
        self.state.publish(topic, event);
        Ok(Empty::new())
    }

    pub(super) async fn shut_down(&self) -> ttrpc::Result<Empty> {
        if !self.state.containers.lock().await.is_empty() || !self.state.lock_creating().is_empty()
        {
            return Ok(Empty::new());
        }
        self.stop_sandbox_if_empty("").await;
        info!(self.state.logger, "shutdown: no container left");
        self.exit.signal();
        Ok(Empty::new())
    }
}

/// Starts an exec process and wires its streams; a process whose streams cannot be wired is
/// killed again.
async fn start_exec(
    sandbox: &dyn Sandbox,
    req: &api::StartRequest,
    spec: &oci_spec::runtime::Process,
    stdio: &StdioPaths,
) -> ttrpc::Result<(u32, Streams)> {
    let started = sandbox
        .exec(&req.id, &req.exec_id, spec, wanted(stdio))
        .await
        .map_err(errors::backend)?;
    match Streams::connect(started.io, stdio).await {
        Ok(streams) => Ok((started.pid, streams)),
        Err(e) => {
            let _ = sandbox.kill(&req.id, &req.exec_id, 9, false).await;
            Err(invalid_argument(e.to_string()))
        }
    }
}

/// The Delete response of a process: its pid and how it ended.
fn deleted(process: &Process) -> api::DeleteResponse {
    let exit = process.exit().unwrap_or(ExitInfo {
        status: 0,
        at: std::time::SystemTime::now(),
    });
    api::DeleteResponse {
        pid: process.pid,
        exit_status: exit.status,
        exited_at: Some(exit.timestamp()).into(),
        ..Default::default()
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
