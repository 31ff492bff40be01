//! The agent's ttrpc service: `protos/agent.proto` served in front of a [`Sandbox`] (the
//! `linux` backend, driving an OCI runtime in the guest).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::UNIX_EPOCH,
};

use async_trait::async_trait;
use tokio::sync::{mpsc, Notify};
use ttrpc::r#async::TtrpcContext;
use vessel::{
    oci::{self, RuntimeConfig, SharedFs},
    protos::{
        agent::{self as api, container_stats_response::Metrics},
        agent_ttrpc, PROTOCOL_VERSION,
    },
    sandbox::{self, ContainerRequest, Event, Sandbox, Stats, StdioWanted},
};

use crate::{
    error::{check_id, Refused},
    paths::SharedDir,
    ports::{self, Ports},
    processes::{Chunk, Key, Output, Process, Processes},
    spec, start,
};

type Reply<T> = ttrpc::Result<T>;

/// How long RemoveContainer waits for the exits of the processes its delete killed.
const EXIT_AFTER_REMOVE: std::time::Duration = std::time::Duration::from_secs(2);

/// What the agent keeps of each container.
struct Container {
    /// Its init process's pid.
    pid: u32,
}

/// The agent's state.
pub struct AgentService {
    sandbox: Arc<dyn Sandbox>,
    shared: SharedDir,
    bundles: PathBuf,
    processes: Arc<Processes>,
    containers: Mutex<HashMap<String, Container>>,
    /// Serializes container creation and removal (the pod's first container starts the
    /// sandbox; ids are unique).
    lifecycle: tokio::sync::Mutex<Started>,
    ooms: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
    destroyed: Arc<Notify>,
    /// The connections of the pod's port forwarding.
    ports: Ports,
    /// The guest StartSandbox sets up: none for an agent that is a host process.
    guest: Option<start::Guest>,
}

/// Whether the sandbox was started (at the pod's first container).
#[derive(Default)]
struct Started(bool);

fn stdio(s: &api::Stdio) -> StdioWanted {
    StdioWanted {
        stdin: s.stdin,
        stdout: s.stdout,
        stderr: s.stderr,
        terminal: s.terminal,
    }
}

fn process_key(container_id: &str, exec_id: &str) -> Result<Key, Refused> {
    check_id("container_id", container_id)?;
    if !exec_id.is_empty() {
        check_id("exec_id", exec_id)?;
    }
    Ok((container_id.to_string(), exec_id.to_string()))
}

/// The key of an exec process: both ids checked, the exec id not empty.
fn exec_key(container_id: &str, exec_id: &str) -> Result<Key, Refused> {
    check_id("container_id", container_id)?;
    check_id("exec_id", exec_id)?;
    Ok((container_id.to_string(), exec_id.to_string()))
}

impl AgentService {
    /// The service over `sandbox` (not started yet), containers' files in `shared`, bundles
    /// written under `bundles`, StartSandbox setting up `guest` (as PID 1); `destroyed` is
    /// notified once DestroySandbox was answered.
    pub fn new(
        sandbox: Arc<dyn Sandbox>,
        shared: SharedDir,
        bundles: PathBuf,
        guest: Option<start::Guest>,
        destroyed: Arc<Notify>,
    ) -> Arc<Self> {
        let (oom_sender, oom_receiver) = mpsc::unbounded_channel();
        let processes = Arc::new(Processes::default());
        if let Some(events) = sandbox.events() {
            tokio::spawn(relay_events(events, processes.clone(), oom_sender));
        }
        Arc::new(Self {
            sandbox,
            shared,
            bundles,
            processes,
            containers: Mutex::new(HashMap::new()),
            lifecycle: tokio::sync::Mutex::new(Started::default()),
            ooms: tokio::sync::Mutex::new(oom_receiver),
            destroyed,
            ports: Ports::default(),
            guest,
        })
    }

    fn containers(&self) -> MutexGuard<'_, HashMap<String, Container>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks `id` and that the container exists.
    fn known(&self, id: &str) -> Result<(), Refused> {
        check_id("container_id", id)?;
        if self.containers().contains_key(id) {
            Ok(())
        } else {
            Err(sandbox::Error::NotFound(format!("container {id}")).into())
        }
    }

    fn process(&self, container_id: &str, exec_id: &str) -> Result<Arc<Process>, Refused> {
        let key = process_key(container_id, exec_id)?;
        self.processes.get(&key).ok_or_else(|| {
            sandbox::Error::NotFound(format!("process {container_id} {exec_id:?}")).into()
        })
    }

    async fn create(
        &self,
        req: api::CreateContainerRequest,
    ) -> Result<api::ProcessStarted, Refused> {
        let id = req.container_id.as_str();
        check_id("container_id", id)?;
        let since = std::time::Instant::now();
        let mut started = self.lifecycle.lock().await;
        if self.containers().contains_key(id) {
            return Err(sandbox::Error::AlreadyExists(format!("container {id}")).into());
        }
        let host_spec = spec::parse_spec(&req.spec_json)?;
        set_sysctls(&spec::net_sysctls(&host_spec)?)?;
        let pod_pid = self.containers().values().map(|c| c.pid).min();
        let guest_spec = spec::for_guest(host_spec, id, &self.shared, &req.rootfs, pod_pid)?;
        let bundle = self.bundles.join(id);
        let config =
            oci::container_config(&guest_spec, &bundle, id).map_err(|e| Refused::Malformed {
                field: "spec_json",
                message: e.to_string(),
            })?;
        if !started.0 {
            let mut pod_spec = guest_spec.clone();
            // The host applied the pod's annotations; the guest has no policy for them.
            pod_spec.set_annotations(None);
            let pod =
                oci::sandbox_config(&pod_spec, &guest_runtime(), &bundle, id).map_err(|e| {
                    Refused::Malformed {
                        field: "spec_json",
                        message: e.to_string(),
                    }
                })?;
            self.sandbox.start(&pod).await?;
            started.0 = true;
        }
        write_bundle(&bundle, &guest_spec)?;
        let request = ContainerRequest {
            id: id.to_string(),
            bundle: bundle.clone(),
            config,
            rootfs: Vec::new(),
            stdio: stdio(req.stdio.get_or_default()),
        };
        let key = (id.to_string(), String::new());
        self.processes.expect(key.clone());
        let created = match self.sandbox.create(&request).await {
            Ok(created) => created,
            Err(e) => {
                self.processes.remove(&key);
                let _ = std::fs::remove_dir_all(&bundle);
                return Err(e.into());
            }
        };
        self.processes.add(key, created.io);
        self.containers()
            .insert(id.to_string(), Container { pid: created.pid });
        log::info!(
            "container {id} created, pid {} ({} ms)",
            created.pid,
            since.elapsed().as_millis()
        );
        Ok(api::ProcessStarted {
            pid: created.pid,
            ..Default::default()
        })
    }

    async fn remove(&self, id: &str) -> Result<(), Refused> {
        self.known(id)?;
        let _guard = self.lifecycle.lock().await;
        self.sandbox.delete(id).await?;
        // The delete killed them: their waiters get the real exits before they go.
        let waits = self
            .processes
            .of_container(id)
            .into_iter()
            .map(|p| async move {
                let _ = tokio::time::timeout(EXIT_AFTER_REMOVE, p.wait()).await;
            });
        futures::future::join_all(waits).await;
        self.processes.remove_container(id);
        self.containers().remove(id);
        let _ = std::fs::remove_dir_all(self.bundles.join(id));
        log::info!("container {id} removed");
        Ok(())
    }

    async fn exec(&self, req: api::ExecProcessRequest) -> Result<api::ProcessStarted, Refused> {
        let key = exec_key(&req.container_id, &req.exec_id)?;
        self.known(&req.container_id)?;
        if self.processes.get(&key).is_some() {
            return Err(sandbox::Error::AlreadyExists(format!("exec {}", req.exec_id)).into());
        }
        let process = spec::parse_process(&req.process_json)?;
        self.processes.expect(key.clone());
        let started = self
            .sandbox
            .exec(&key.0, &key.1, &process, stdio(req.stdio.get_or_default()))
            .await
            .inspect_err(|_| {
                self.processes.remove(&key);
            })?;
        let pid = started.pid;
        self.processes.add(key, started.io);
        Ok(api::ProcessStarted {
            pid,
            ..Default::default()
        })
    }

    async fn read(
        &self,
        req: api::ReadStreamRequest,
        which: Output,
    ) -> Result<api::ReadStreamResponse, Refused> {
        let process = self.process(&req.container_id, &req.exec_id)?;
        let mut reply = api::ReadStreamResponse::default();
        match process.read(which, req.max_bytes as usize).await {
            Chunk::Data(data) => reply.data = data,
            Chunk::End => reply.eof = true,
        }
        Ok(reply)
    }

    async fn stats(&self, id: &str) -> Result<api::ContainerStatsResponse, Refused> {
        self.known(id)?;
        let encode = |m: &dyn protobuf::MessageDyn| {
            m.write_to_bytes_dyn()
                .map_err(|e| sandbox::Error::io("encode metrics", std::io::Error::other(e)))
        };
        let metrics = match self.sandbox.stats(id).await? {
            Stats::V1(m) => Metrics::CgroupV1(encode(m.as_ref())?),
            Stats::V2(m) => Metrics::CgroupV2(encode(m.as_ref())?),
        };
        Ok(api::ContainerStatsResponse {
            metrics: Some(metrics),
            ..Default::default()
        })
    }

    /// Removes every container and stops the sandbox.
    async fn destroy(&self) -> Result<(), Refused> {
        let ids: Vec<String> = self.containers().keys().cloned().collect();
        for id in ids {
            if let Err(e) = self.remove(&id).await {
                log::warn!("destroy: remove {id}: {e}");
            }
        }
        self.sandbox.stop().await?;
        nix::unistd::sync();
        Ok(())
    }
}

/// Sets the pod's network sysctls in the VM's network namespace, which is the pod's; the
/// agent as a host process (not PID 1) leaves the host's alone.
fn set_sysctls(sysctls: &[(String, String)]) -> Result<(), Refused> {
    if std::process::id() != 1 {
        return Ok(());
    }
    for (key, value) in sysctls {
        let path = std::path::Path::new("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value).map_err(|e| {
            Refused::Backend(sandbox::Error::io(
                format!("linux.sysctl {key}={value:?} in the VM"),
                e,
            ))
        })?;
    }
    Ok(())
}

/// The runtime settings of the guest side: the host chose the VM's, so only the shared file
/// system (which the guest mounted already) must be one the conversion accepts as it is.
fn guest_runtime() -> RuntimeConfig {
    let mut runtime = RuntimeConfig::default();
    runtime.hypervisor_config.shared_fs = SharedFs::Virtio9p;
    runtime
}

/// Writes the guest's bundle: its config.json.
fn write_bundle(bundle: &std::path::Path, spec: &oci_spec::runtime::Spec) -> Result<(), Refused> {
    let io = |e| {
        Refused::Backend(sandbox::Error::io(
            format!("write bundle {}", bundle.display()),
            e,
        ))
    };
    std::fs::create_dir_all(bundle).map_err(io)?;
    let json = serde_json::to_vec(spec).map_err(|e| io(e.into()))?;
    std::fs::write(bundle.join("config.json"), json).map_err(io)
}

/// Hands the backend's exits to the process table and its OOM kills to GetOomEvent.
async fn relay_events(
    mut events: mpsc::UnboundedReceiver<Event>,
    processes: Arc<Processes>,
    ooms: mpsc::UnboundedSender<String>,
) {
    while let Some(event) = events.recv().await {
        match event {
            Event::Exit(exit) => {
                log::debug!(
                    "exit of {} {:?}: {}",
                    exit.container_id,
                    exit.exec_id,
                    exit.status
                );
                processes.exited(&exit);
            }
            Event::Oom { container_id } => {
                let _ = ooms.send(container_id);
            }
            Event::Died { reason } => log::error!("sandbox died: {reason}"),
        }
    }
}

fn empty() -> api::Empty {
    api::Empty::default()
}

#[async_trait]
impl agent_ttrpc::Agent for AgentService {
    async fn create_container(
        &self,
        _: &TtrpcContext,
        req: api::CreateContainerRequest,
    ) -> Reply<api::ProcessStarted> {
        Ok(self.create(req).await?)
    }

    async fn start_container(
        &self,
        _: &TtrpcContext,
        req: api::ContainerRequest,
    ) -> Reply<api::Empty> {
        self.known(&req.container_id)?;
        self.sandbox
            .start_container(&req.container_id)
            .await
            .map_err(Refused::from)?;
        Ok(empty())
    }

    async fn remove_container(
        &self,
        _: &TtrpcContext,
        req: api::ContainerRequest,
    ) -> Reply<api::Empty> {
        self.remove(&req.container_id).await?;
        Ok(empty())
    }

    async fn exec_process(
        &self,
        _: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> Reply<api::ProcessStarted> {
        Ok(self.exec(req).await?)
    }

    async fn signal_process(
        &self,
        _: &TtrpcContext,
        req: api::SignalProcessRequest,
    ) -> Reply<api::Empty> {
        self.process(&req.container_id, &req.exec_id)?;
        self.sandbox
            .kill(&req.container_id, &req.exec_id, req.signal, req.all)
            .await
            .map_err(Refused::from)?;
        Ok(empty())
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        req: api::ProcessRequest,
    ) -> Reply<api::WaitProcessResponse> {
        let process = self.process(&req.container_id, &req.exec_id)?;
        let exited = process.wait().await;
        let at = exited.at.duration_since(UNIX_EPOCH).unwrap_or_default();
        Ok(api::WaitProcessResponse {
            status: exited.status,
            exited_at_ns: i64::try_from(at.as_nanos()).unwrap_or(i64::MAX),
            ..Default::default()
        })
    }

    async fn remove_process(
        &self,
        _: &TtrpcContext,
        req: api::ProcessRequest,
    ) -> Reply<api::Empty> {
        let key = exec_key(&req.container_id, &req.exec_id)?;
        if self.processes.remove(&key).is_none() {
            return Err(Refused::from(sandbox::Error::NotFound(format!("exec {}", key.1))).into());
        }
        self.sandbox.delete_exec(&key.0, &key.1).await;
        Ok(empty())
    }

    async fn write_stdin(
        &self,
        _: &TtrpcContext,
        req: api::WriteStreamRequest,
    ) -> Reply<api::WriteStreamResponse> {
        let process = self.process(&req.container_id, &req.exec_id)?;
        process.write(&req.data).await.map_err(Refused::from)?;
        Ok(api::WriteStreamResponse {
            written: req.data.len() as u32,
            ..Default::default()
        })
    }

    async fn close_stdin(&self, _: &TtrpcContext, req: api::ProcessRequest) -> Reply<api::Empty> {
        let process = self.process(&req.container_id, &req.exec_id)?;
        process.close_stdin().await;
        self.sandbox
            .close_stdin(&req.container_id, &req.exec_id)
            .await
            .map_err(Refused::from)?;
        Ok(empty())
    }

    async fn read_stdout(
        &self,
        _: &TtrpcContext,
        req: api::ReadStreamRequest,
    ) -> Reply<api::ReadStreamResponse> {
        Ok(self.read(req, Output::Stdout).await?)
    }

    async fn read_stderr(
        &self,
        _: &TtrpcContext,
        req: api::ReadStreamRequest,
    ) -> Reply<api::ReadStreamResponse> {
        Ok(self.read(req, Output::Stderr).await?)
    }

    async fn resize_terminal(
        &self,
        _: &TtrpcContext,
        req: api::ResizeTerminalRequest,
    ) -> Reply<api::Empty> {
        self.process(&req.container_id, &req.exec_id)?;
        self.sandbox
            .resize_pty(&req.container_id, &req.exec_id, req.width, req.height)
            .await
            .map_err(Refused::from)?;
        Ok(empty())
    }

    async fn pause_container(
        &self,
        _: &TtrpcContext,
        req: api::ContainerRequest,
    ) -> Reply<api::Empty> {
        self.known(&req.container_id)?;
        self.sandbox
            .pause(&req.container_id)
            .await
            .map_err(Refused::from)?;
        Ok(empty())
    }

    async fn resume_container(
        &self,
        _: &TtrpcContext,
        req: api::ContainerRequest,
    ) -> Reply<api::Empty> {
        self.known(&req.container_id)?;
        self.sandbox
            .resume(&req.container_id)
            .await
            .map_err(Refused::from)?;
        Ok(empty())
    }

    async fn container_stats(
        &self,
        _: &TtrpcContext,
        req: api::ContainerRequest,
    ) -> Reply<api::ContainerStatsResponse> {
        Ok(self.stats(&req.container_id).await?)
    }

    async fn list_processes(
        &self,
        _: &TtrpcContext,
        req: api::ContainerRequest,
    ) -> Reply<api::ListProcessesResponse> {
        self.known(&req.container_id)?;
        let pids = self
            .sandbox
            .pids(&req.container_id)
            .await
            .map_err(Refused::from)?;
        Ok(api::ListProcessesResponse {
            processes: pids
                .into_iter()
                .map(|p| api::ProcessInfo {
                    pid: p.pid,
                    exec_id: p.exec_id.unwrap_or_default(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn update_container(
        &self,
        _: &TtrpcContext,
        req: api::UpdateContainerRequest,
    ) -> Reply<api::Empty> {
        self.known(&req.container_id)?;
        let resources = spec::parse("resources_json", &req.resources_json)?;
        self.sandbox
            .update(&req.container_id, &resources)
            .await
            .map_err(Refused::from)?;
        Ok(empty())
    }

    async fn get_oom_event(&self, _: &TtrpcContext, _: api::Empty) -> Reply<api::OomEvent> {
        let container_id = self.ooms.lock().await.recv().await.ok_or_else(|| {
            Refused::from(sandbox::Error::Unavailable("the sandbox stopped".into()))
        })?;
        Ok(api::OomEvent {
            container_id,
            ..Default::default()
        })
    }

    async fn update_interface(
        &self,
        _: &TtrpcContext,
        req: api::UpdateInterfaceRequest,
    ) -> Reply<api::Empty> {
        crate::network::update_interface(&req).await?;
        Ok(empty())
    }

    async fn check(&self, _: &TtrpcContext, _: api::Empty) -> Reply<api::HealthCheckResponse> {
        Ok(api::HealthCheckResponse {
            serving: true,
            ..Default::default()
        })
    }

    async fn version(&self, _: &TtrpcContext, _: api::Empty) -> Reply<api::VersionResponse> {
        Ok(api::VersionResponse {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            protocol_version: PROTOCOL_VERSION,
            ..Default::default()
        })
    }

    async fn destroy_sandbox(&self, _: &TtrpcContext, _: api::Empty) -> Reply<api::Empty> {
        self.destroy().await?;
        log::info!("sandbox destroyed");
        self.destroyed.notify_one();
        Ok(empty())
    }

    async fn open_port(
        &self,
        _: &TtrpcContext,
        req: api::OpenPortRequest,
    ) -> Reply<api::PortStream> {
        Ok(api::PortStream {
            stream_id: self.ports.open(req.port).await?,
            ..Default::default()
        })
    }

    async fn write_port(
        &self,
        _: &TtrpcContext,
        req: api::WritePortRequest,
    ) -> Reply<api::WriteStreamResponse> {
        self.ports
            .write(req.stream_id, &req.data, req.close_write)
            .await?;
        Ok(api::WriteStreamResponse {
            written: req.data.len() as u32,
            ..Default::default()
        })
    }

    async fn read_port(
        &self,
        _: &TtrpcContext,
        req: api::ReadPortRequest,
    ) -> Reply<api::ReadStreamResponse> {
        let mut reply = api::ReadStreamResponse::default();
        match self.ports.read(req.stream_id, req.max_bytes).await? {
            ports::Read::Data(data) => reply.data = data,
            ports::Read::End => reply.eof = true,
        }
        Ok(reply)
    }

    async fn close_port(&self, _: &TtrpcContext, req: api::PortStream) -> Reply<api::Empty> {
        self.ports.close(req.stream_id)?;
        Ok(empty())
    }

    async fn online_resources(
        &self,
        _: &TtrpcContext,
        req: api::OnlineResourcesRequest,
    ) -> Reply<api::GuestResources> {
        Ok(crate::resources::online_resources(req.vcpus).await?)
    }

    async fn start_sandbox(
        &self,
        _: &TtrpcContext,
        req: api::StartSandboxRequest,
    ) -> Reply<api::Empty> {
        start::check(&req)?;
        match &self.guest {
            Some(guest) => guest.start(&req)?,
            None => log::info!("StartSandbox: a host process leaves the host as it is"),
        }
        Ok(api::Empty::new())
    }
}
