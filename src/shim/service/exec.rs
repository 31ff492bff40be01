//! Exec: a process added to a running container (started by Start with its exec id).

use containerd_shim_protos::{
    api,
    events::task::TaskExecAdded,
    protobuf::well_known_types::empty::Empty,
    topics,
    ttrpc::{self, Code},
};
use slog::info;

use super::{
    errors::{self, invalid_argument, precondition},
    TaskService,
};
use crate::{
    oci::State,
    shim::process::{Process, StdioPaths},
};

impl TaskService {
    pub(super) async fn add_exec(&self, req: api::ExecProcessRequest) -> ttrpc::Result<Empty> {
        info!(self.state.logger, "exec"; "container" => &req.id, "exec" => &req.exec_id);
        let spec: oci_spec::runtime::Process = serde_json::from_slice(&req.spec.value)
            .map_err(|e| invalid_argument(format!("exec {}: process spec: {e}", req.exec_id)))?;
        self.state
            .with_container_mut(&req.id, |container| {
                if container.init.status != State::Running {
                    return Err(precondition(format!("container {} is not running", req.id)));
                }
                if req.exec_id.is_empty() || container.execs.contains_key(&req.exec_id) {
                    return Err(errors::status(
                        Code::ALREADY_EXISTS,
                        format!("exec id {:?} is empty or already in use", req.exec_id),
                    ));
                }
                let process = Process::new(StdioPaths::of_exec(&req), Some(spec));
                container.execs.insert(req.exec_id.clone(), process);
                Ok(())
            })
            .await?;
        let event = TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        self.state
            .publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(event));
        Ok(Empty::new())
    }
}
