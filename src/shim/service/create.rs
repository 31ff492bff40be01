//! Create: the configuration, the conversion of the bundle, the sandbox's start at the pod's
//! first Create, and the container in it.

use std::{collections::HashMap, path::Path, path::PathBuf, sync::Arc};

use containerd_shim_protos::{
    api,
    events::task::{TaskCreate, TaskIO},
    topics,
    ttrpc::{self, Code},
};
use slog::info;

use super::{
    errors::{self, invalid_argument},
    exits, wanted, Container, OpLock, Shared, TaskService,
};
use crate::{
    config::Config,
    oci::{ContainerConfig, RuntimeConfig},
    sandbox::{ContainerRequest, RootfsMount, Sandbox},
    shim::{
        bundle::{self, Converted},
        io::Streams,
        process::{Process, StdioPaths},
    },
};

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
            return Err(errors::status(
                Code::ALREADY_EXISTS,
                format!("container {id} already exists"),
            ));
        }
        let op = OpLock::default();
        let held = op
            .clone()
            .try_lock_owned()
            .map_err(|e| errors::status(Code::INTERNAL, e.to_string()))?;
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

impl TaskService {
    pub(super) async fn create_task(
        &self,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        info!(self.state.logger, "create"; "container" => &req.id, "bundle" => &req.bundle);
        let creating = Creating::claim(&self.state, &req.id).await?;
        let bundle = PathBuf::from(&req.bundle);
        let spec = bundle::load_spec(&bundle).map_err(invalid_argument)?;
        let (config, runtime) = self.config_for(&req).await?;
        let converted =
            bundle::convert(&spec, runtime, &bundle, &req.id).map_err(invalid_argument)?;
        // The converted config carries the spec from here on.
        drop(spec);
        let (sandbox, container) = self.sandbox_for(config, converted).await?;
        let stdio = StdioPaths::of_create(&req);
        let request = ContainerRequest {
            id: req.id.clone(),
            bundle: bundle.clone(),
            config: container,
            rootfs: req.rootfs.iter().map(rootfs_mount).collect(),
            stdio: wanted(&stdio),
        };
        let started = match sandbox.create(&request).await {
            Ok(started) => started,
            Err(e) => {
                self.stop_sandbox_if_empty(&req.id).await;
                return Err(errors::backend(e));
            }
        };
        let mut init = Process::new(stdio, None);
        init.pid = started.pid;
        match Streams::connect(started.io, &init.stdio).await {
            Ok(streams) => init.streams = streams,
            Err(e) => {
                let _ = sandbox.delete(&req.id).await;
                self.stop_sandbox_if_empty(&req.id).await;
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
            Box::new(create_event(&req, pid)),
        );
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
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

    /// The sandbox a converted bundle goes into: started with the pod's configuration when
    /// the bundle is the pod's sandbox (or a standalone container), the running one when it
    /// is a container of the pod.
    async fn sandbox_for(
        &self,
        config: &Config,
        converted: Converted,
    ) -> ttrpc::Result<(Arc<dyn Sandbox>, ContainerConfig)> {
        let mut slot = self.sandbox.lock().await;
        let sandbox_config = match converted {
            Converted::Container { sandbox_id, config } => {
                let sandbox = slot.clone().ok_or_else(|| {
                    errors::not_found(format!("sandbox {sandbox_id} is not running in this shim"))
                })?;
                return Ok((sandbox, *config));
            }
            Converted::Sandbox(sandbox_config) => sandbox_config,
        };
        if slot.is_some() {
            return Err(errors::status(
                Code::ALREADY_EXISTS,
                format!(
                    "sandbox {}: this shim runs a sandbox already",
                    sandbox_config.id
                ),
            ));
        }
        let sandbox = (self.build)(
            config.clone(),
            self.state.namespace.clone(),
            sandbox_config.id.clone(),
        )
        .await
        .map_err(errors::backend)?;
        if let Err(e) = sandbox.start(&sandbox_config).await {
            let _ = sandbox.stop().await;
            return Err(errors::backend(e));
        }
        info!(self.state.logger, "sandbox started"; "sandbox" => &sandbox_config.id);
        if let Some(events) = sandbox.events() {
            tokio::spawn(exits::handle_events(self.state.clone(), events));
        }
        *slot = Some(sandbox.clone());
        let container = sandbox_config
            .containers
            .into_iter()
            .next()
            .ok_or_else(|| {
                errors::status(
                    Code::INTERNAL,
                    "sandbox config without its container".into(),
                )
            })?;
        Ok((sandbox, container))
    }
}

/// containerd's rootfs mount, in the backend's terms.
fn rootfs_mount(mount: &api::Mount) -> RootfsMount {
    RootfsMount {
        kind: mount.type_.clone(),
        source: mount.source.clone(),
        options: mount.options.clone(),
    }
}

fn create_event(req: &api::CreateTaskRequest, pid: u32) -> TaskCreate {
    TaskCreate {
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
    }
}
