//! Requests that act on a running process: Kill, CloseIO, ResizePty, Update.

use containerd_shim_protos::{api, protobuf::well_known_types::empty::Empty, ttrpc};
use slog::info;

use super::{
    errors::{self, invalid_argument, not_found, precondition},
    TaskService,
};
use crate::oci::State;

impl TaskService {
    pub(super) async fn kill_process(&self, req: api::KillRequest) -> ttrpc::Result<Empty> {
        info!(self.state.logger, "kill"; "container" => &req.id, "exec" => &req.exec_id,
            "signal" => req.signal, "all" => req.all);
        let sandbox = self.sandbox().await?;
        self.state
            .with_container(&req.id, |container| {
                let process = container.process(&req.exec_id)?;
                if process.exit().is_some() && !req.all {
                    return Err(not_found(format!(
                        "process {} {} already finished",
                        req.id, req.exec_id
                    )));
                }
                // A created container's init process exists (waiting to start); an exec
                // process exists only once started.
                if !req.exec_id.is_empty() && process.status == State::Ready {
                    return Err(precondition(format!(
                        "process {} {} has not started",
                        req.id, req.exec_id
                    )));
                }
                Ok(())
            })
            .await?;
        sandbox
            .kill(&req.id, &req.exec_id, req.signal, req.all)
            .await
            .map_err(errors::backend)?;
        Ok(Empty::new())
    }

    pub(super) async fn close_input(&self, req: api::CloseIORequest) -> ttrpc::Result<Empty> {
        if !req.stdin {
            return Ok(Empty::new());
        }
        let sandbox = self.sandbox().await?;
        self.state
            .with_container(&req.id, |container| {
                container.process(&req.exec_id)?.streams.close_input();
                Ok(())
            })
            .await?;
        sandbox
            .close_stdin(&req.id, &req.exec_id)
            .await
            .map_err(errors::backend)?;
        Ok(Empty::new())
    }

    pub(super) async fn resize(&self, req: api::ResizePtyRequest) -> ttrpc::Result<Empty> {
        let sandbox = self.sandbox().await?;
        sandbox
            .resize_pty(&req.id, &req.exec_id, req.width, req.height)
            .await
            .map_err(errors::backend)?;
        Ok(Empty::new())
    }

    pub(super) async fn update_resources(
        &self,
        req: api::UpdateTaskRequest,
    ) -> ttrpc::Result<Empty> {
        let sandbox = self.sandbox().await?;
        let resources: oci_spec::runtime::LinuxResources =
            serde_json::from_slice(&req.resources.value)
                .map_err(|e| invalid_argument(format!("update {}: resources: {e}", req.id)))?;
        self.require_running(&req.id).await?;
        sandbox
            .update(&req.id, &resources)
            .await
            .map_err(errors::backend)?;
        Ok(Empty::new())
    }

    /// Fails unless container `id` runs (or is paused).
    pub(super) async fn require_running(&self, id: &str) -> ttrpc::Result<()> {
        self.state
            .with_container(id, |container| {
                if !matches!(container.init.status, State::Running | State::Paused) {
                    return Err(precondition(format!("container {id} is not running")));
                }
                Ok(())
            })
            .await
    }
}
