//! Requests that read a process: State, Pids, Stats, Wait, Connect.

use containerd_shim::util::convert_to_any;
use containerd_shim_protos::{api, shim::oci::ProcessDetails, ttrpc};

use super::{
    errors::{self, not_found},
    TaskService, VERSION,
};
use crate::{sandbox::Stats, shim::process::task_status};

impl TaskService {
    pub(super) async fn process_state(
        &self,
        req: api::StateRequest,
    ) -> ttrpc::Result<api::StateResponse> {
        self.state
            .with_container(&req.id, |container| {
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
                    status: task_status(process.status).into(),
                    stdin: process.stdio.stdin.clone(),
                    stdout: process.stdio.stdout.clone(),
                    stderr: process.stdio.stderr.clone(),
                    terminal: process.stdio.terminal,
                    exit_status: exit.map(|e| e.status).unwrap_or_default(),
                    exited_at: exit.map(|e| e.timestamp()).into(),
                    exec_id: req.exec_id.clone(),
                    ..Default::default()
                })
            })
            .await
    }

    pub(super) async fn list_pids(
        &self,
        req: api::PidsRequest,
    ) -> ttrpc::Result<api::PidsResponse> {
        let sandbox = self.sandbox().await?;
        self.state.with_container(&req.id, |_| Ok(())).await?;
        let pids = sandbox.pids(&req.id).await.map_err(errors::backend)?;
        let processes = pids
            .into_iter()
            .map(|process| {
                let info = process.exec_id.and_then(|exec_id| {
                    let details = ProcessDetails {
                        exec_id,
                        ..Default::default()
                    };
                    convert_to_any(Box::new(details)).ok()
                });
                api::ProcessInfo {
                    pid: process.pid,
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

    pub(super) async fn container_stats(
        &self,
        req: api::StatsRequest,
    ) -> ttrpc::Result<api::StatsResponse> {
        let sandbox = self.sandbox().await?;
        self.require_running(&req.id).await?;
        let stats = sandbox.stats(&req.id).await.map_err(errors::backend)?;
        // containerd's cgroup metrics types, as an Any.
        let any = match stats {
            Stats::V1(metrics) => convert_to_any(metrics),
            Stats::V2(metrics) => convert_to_any(metrics),
        }
        .map_err(|e| errors::status(ttrpc::Code::INTERNAL, e.to_string()))?;
        Ok(api::StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    pub(super) async fn wait_exit(
        &self,
        req: api::WaitRequest,
    ) -> ttrpc::Result<api::WaitResponse> {
        let mut exited = self
            .state
            .with_container(&req.id, |container| {
                Ok(container.process(&req.exec_id)?.watch_exit())
            })
            .await?;
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

    pub(super) async fn connect_info(
        &self,
        req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        let containers = self.state.containers.lock().await;
        let task_pid = containers.get(&req.id).map(|c| c.init.pid).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: VERSION.to_string(),
            ..Default::default()
        })
    }
}
