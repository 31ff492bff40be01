//! The `vm` backend: each sandbox is a QEMU virtual machine whose guest agent (`vessel-agent`,
//! `protos/agent.proto`) runs the containers; their root file systems and volumes reach the
//! guest through a shared directory (9p).
//!
//! - [`qemu`]: the command line from the `HypervisorConfig`, the accelerator probe, the process.
//! - [`agent`]: the connection to the guest agent, every call checked, and its errors.
//! - [`cgroup`]: the VM's processes in the sandbox's cgroup (`sandbox_cgroup_only`).
//! - [`isolation`]: what a VM cannot share with the host, refused up front.
//! - [`jail`]: QEMU confined (namespaces, capabilities, an unprivileged user).
//! - [`network`]: the pod's network namespace mirrored into the VM (tcfilter).
//! - [`portforward`]: connections to the pod namespace's loopback relayed to the guest's.
//! - [`qmp`]: QEMU's machine protocol.
//! - [`sizing`]: the VM sized to its pod (vCPU and memory hotplug).
//! - [`shared`]: the shared directory.
//! - [`streams`]: process streams relayed through the agent.
//! - [`template`]: VM templates, and clones of them.
//! - [`virtiofs`]: virtiofsd, when the shared directory is virtio-fs.
//! - [`watchers`]: QEMU's exit, the agent's health, OOM events and exits, checked.

mod agent;
mod cgroup;
mod isolation;
pub mod jail;
mod memory;
mod network;
mod portforward;
mod qemu;
mod qmp;
mod shared;
mod sizing;
mod streams;
pub mod template;
mod virtiofs;
mod watchers;

#[cfg(test)]
mod hostile;

use std::{
    collections::{BTreeMap, HashMap},
    os::fd::{AsRawFd, RawFd},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use oci_spec::runtime::{LinuxResources, Process};
use protobuf::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::{
    ContainerRequest, Error, Event, ProcessPid, Record as SandboxRecord, Result, Sandbox, Started,
    Stats, StdioWanted,
};
use crate::{
    oci::{InterworkingModel, SandboxConfig, SharedFs},
    protos::agent::{self as api, container_stats_response::Metrics},
};

pub use memory::{meminfo_value, HUGEPAGES_DIR};
pub use qemu::recorded_kvm;
pub use shared::MODULES_DIR;

/// How long a guest may take to answer under KVM before the host's KVM counts as unusable.
const KVM_BOOT_LIMIT: Duration = Duration::from_secs(10);
/// How long a guest may take to answer under TCG.
const TCG_BOOT_LIMIT: Duration = Duration::from_secs(90);
/// How long DestroySandbox and QEMU's own exit may take before QEMU is killed.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// What the `vm` backend created for a sandbox, for the `delete` action after a shim died.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// QEMU's pid, once started.
    pub qemu_pid: Option<u32>,
    /// Each container, with the mount points made for it in the shared directory.
    pub containers: BTreeMap<String, Vec<PathBuf>>,
    /// The pod's network namespace and the interface redirected to the VM's tap.
    pub network: Option<(PathBuf, String)>,
    /// virtiofsd's pid, when the shared directory is virtio-fs.
    pub virtiofsd_pid: Option<u32>,
}

/// Where the host mounts what the guest gets (the guest never sees it).
fn shared_root(dir: &Path) -> PathBuf {
    dir.join("mounts")
}

/// What the guest gets: a read-only view of [`shared_root`] (`shared::export`).
fn export_dir(dir: &Path) -> PathBuf {
    dir.join("shared")
}

/// Removes what is left of container `id` after its shim died: its mounts in the shared
/// directory; with the last container, QEMU (killed) and the whole state.
pub async fn cleanup(dir: &Path, mut record: Record, id: &str) -> Result<()> {
    if let Some(mounts) = record.containers.remove(id) {
        shared::remove(&shared_root(dir).join(id), &mounts);
    }
    if !record.containers.is_empty() {
        return SandboxRecord::Vm(record).save(dir);
    }
    for pid in [record.qemu_pid, record.virtiofsd_pid]
        .into_iter()
        .flatten()
    {
        if qemu::is_ours(pid, dir) {
            kill(pid);
        }
    }
    if let Some((netns, interface)) = &record.network {
        portforward::remove(netns);
        network::detach(netns, interface);
    }
    remove_state(dir)
}

fn remove_state(dir: &Path) -> Result<()> {
    let shared = shared_root(dir);
    shared::remove_modules(&shared);
    shared::unexport(&shared, &export_dir(dir));
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io(format!("remove {}", dir.display()), e))
        }
        _ => Ok(()),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `vm` sandbox backend.
pub struct VmSandbox {
    dir: PathBuf,
    record: Mutex<Record>,
    /// The agent of the running VM.
    client: Mutex<Option<Arc<agent::Agent>>>,
    /// The processes started in it, which the guest's ids are checked against.
    known: Arc<Mutex<watchers::Known>>,
    /// Set once the sandbox is being stopped: QEMU's exit is then no death.
    stopping: Arc<AtomicBool>,
    sender: UnboundedSender<Event>,
    events: Mutex<Option<UnboundedReceiver<Event>>>,
    stdin_relays: Mutex<HashMap<(String, String), tokio::task::JoinHandle<()>>>,
    /// Port forwarding from the pod's network namespace, when it has one.
    ports: Mutex<Option<portforward::Forwarding>>,
    /// The VM's hotplug, when it is sized with its containers (not static).
    hotplug: tokio::sync::Mutex<Option<sizing::Hotplug>>,
    /// The sandbox's cgroup, with `sandbox_cgroup_only`.
    cgroup: Mutex<Option<cgroup::SandboxCgroup>>,
    /// Where VM templates are, when its VM is cloned from one (`[factory] enable_template`).
    templates: Option<template::Store>,
}

impl VmSandbox {
    /// A backend keeping its state (sockets, shared directory, record) in `dir`, its VM
    /// cloned from a template of `templates` when there are.
    pub fn new(dir: &Path, templates: Option<template::Store>) -> Self {
        let (sender, receiver) = unbounded_channel();
        Self {
            dir: dir.to_path_buf(),
            record: Mutex::new(Record::default()),
            client: Mutex::new(None),
            known: Arc::default(),
            stopping: Arc::new(AtomicBool::new(false)),
            sender,
            events: Mutex::new(Some(receiver)),
            stdin_relays: Mutex::new(HashMap::new()),
            ports: Mutex::new(None),
            hotplug: tokio::sync::Mutex::new(None),
            cgroup: Mutex::new(None),
            templates,
        }
    }

    /// Records container `id`'s demand (None: it went) and resizes the VM to its pod: vCPUs
    /// plugged or unplugged and brought online by the agent, memory plugged (or unplugged).
    /// A VM of static size stays as it is.
    async fn resize(&self, id: &str, demand: Option<sizing::Demand>) -> Result<()> {
        let mut hotplug = self.hotplug.lock().await;
        let Some(hotplug) = hotplug.as_mut() else {
            return Ok(());
        };
        let Some(size) = hotplug.set_demand(id, demand) else {
            return Ok(());
        };
        let since = Instant::now();
        hotplug.set_vcpus(size.vcpus).await?;
        hotplug.set_memory(size.memory_mib).await?;
        // The guest brings the vCPUs online (and any memory block its kernel left offline).
        let online = api::OnlineResourcesRequest {
            vcpus: size.vcpus,
            ..Default::default()
        };
        let guest = self
            .client()?
            .online_resources(agent::ctx(), &online)
            .await
            .map_err(|e| agent::error("online the vCPUs and memory of", id, e))?;
        log::info!(
            "sandbox resized for {id}: {} vCPUs, {} MiB (the guest has {} vCPUs online and \
             {} MiB) in {} ms",
            size.vcpus,
            size.memory_mib,
            guest.vcpus,
            guest.memory_mib,
            since.elapsed().as_millis()
        );
        Ok(())
    }

    fn save(&self, change: impl FnOnce(&mut Record)) -> Result<()> {
        let mut record = lock(&self.record);
        change(&mut record);
        SandboxRecord::Vm(record.clone()).save(&self.dir)
    }

    fn client(&self) -> Result<Arc<agent::Agent>> {
        lock(&self.client)
            .clone()
            .ok_or_else(|| Error::Unavailable("the sandbox's VM is not running".into()))
    }

    /// Starts QEMU under `accelerator` (recorded first) and connects to its agent.
    async fn boot(
        &self,
        config: &SandboxConfig,
        vm: &qemu::Vm,
        accelerator: qemu::Accelerator,
        tap: Option<RawFd>,
    ) -> Result<Launched> {
        launch_and_connect(&config.hypervisor_config, vm, accelerator, tap, |pid| {
            self.save(|r| r.qemu_pid = Some(pid))
        })
        .await
    }

    /// Starts virtiofsd when the shared directory is virtio-fs (recorded first); its socket.
    async fn start_virtiofsd(
        &self,
        config: &SandboxConfig,
        shared: &Path,
    ) -> Result<Option<PathBuf>> {
        let hypervisor = &config.hypervisor_config;
        if hypervisor.shared_fs != SharedFs::VirtioFs {
            return Ok(None);
        }
        let binary = &hypervisor.virtio_fs_daemon;
        if binary.is_empty() || !Path::new(binary).exists() {
            return Err(Error::Unsupported(format!(
                "shared_fs \"virtio-fs\" needs virtiofsd: virtio_fs_daemon {binary:?} does not \
                 exist (install it, or set shared_fs = \"virtio-9p\")"
            )));
        }
        let socket = virtiofs::socket(&self.dir);
        let log = self.dir.join("virtiofsd.log");
        let daemon =
            virtiofs::start(binary, shared, &socket, hypervisor.virtio_fs_cache, &log).await?;
        self.save(|r| r.virtiofsd_pid = Some(daemon.pid))?;
        Ok(Some(socket))
    }

    /// Mirrors the pod's network namespace into the VM (kata's `tcfilter`), recorded first.
    async fn attach_network(&self, config: &SandboxConfig) -> Result<Option<network::Attached>> {
        let wanted = &config.network_config;
        let Some(netns) = network::namespace(&wanted.net_ns_path) else {
            return Ok(None);
        };
        match wanted.interworking_model {
            InterworkingModel::TcFilter | InterworkingModel::Default => {}
            InterworkingModel::None => return Ok(None),
            other => {
                return Err(Error::Unsupported(format!(
                    "internetworking_model {:?}: the vm backend connects pods with \"tcfilter\" \
                     (accepted: \"tcfilter\", \"default\", \"none\")",
                    other.as_str()
                )))
            }
        }
        // On the shim's thread on purpose: the shim's reaper, on that thread too, would
        // otherwise collect `ip` and `tc` before `Command::output` waits for them.
        let attached = network::attach(&netns)?;
        if let Some(attached) = &attached {
            let name = attached.interface.name.clone();
            self.save(|r| r.network = Some((netns.clone(), name)))?;
        }
        Ok(attached)
    }

    /// Waits up to `grace` for this sandbox's process `pid` to exit, then SIGKILLs it;
    /// whether it had to.
    async fn end(&self, pid: u32, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        while qemu::is_ours(pid, &self.dir) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let running = qemu::is_ours(pid, &self.dir);
        if running {
            kill(pid);
        }
        running
    }

    /// Runs the per-sandbox watchers: its death (QEMU's exit, its agent's), health checks,
    /// OOM events.
    fn watch(&self, client: Arc<agent::Agent>, exited: tokio::sync::oneshot::Receiver<i32>) {
        let sandbox = watchers::Sandbox {
            events: self.sender.clone(),
            stopping: self.stopping.clone(),
            dir: self.dir.clone(),
            qemu_pid: lock(&self.record).qemu_pid,
            known: self.known.clone(),
        };
        watchers::start(client, exited, sandbox);
    }

    /// The streams and exit watch of a process the agent started.
    fn started(
        &self,
        client: &Arc<agent::Agent>,
        id: &str,
        exec_id: &str,
        stdio: StdioWanted,
    ) -> Started {
        lock(&self.known).add(id, exec_id);
        let (io, relays) = streams::start(client, id, exec_id, stdio);
        if let Some(stdin) = relays.stdin {
            lock(&self.stdin_relays).insert((id.to_string(), exec_id.to_string()), stdin);
        }
        watchers::exit(
            client.clone(),
            self.sender.clone(),
            self.known.clone(),
            id,
            exec_id,
        );
        // Guest pids mean nothing on the host: containerd is told the shim's own, as kata does.
        Started {
            pid: std::process::id(),
            io,
        }
    }
}

/// The VM for `hypervisor` (sized already) with its state in `dir`, its memory `memory`:
/// what a booted sandbox, a template and its clones have in common. A templated VM always
/// has a NIC (a clone cannot add one), and the agent's debug output is the configuration's
/// (not the shim's log level, which would make another template).
fn plan_vm(
    hypervisor: &crate::oci::HypervisorConfig,
    dir: &Path,
    memory: memory::Layout,
    templated: bool,
) -> qemu::Vm {
    let mut agent_params = vec![format!(
        "vessel.shared_fs={}",
        hypervisor.shared_fs.as_str()
    )];
    if hypervisor.shared_fs == SharedFs::Virtio9p {
        agent_params.push(format!("vessel.msize_9p={}", hypervisor.msize_9p));
    }
    let debug = if templated {
        hypervisor.debug
    } else {
        log::log_enabled!(log::Level::Debug)
    };
    if debug {
        agent_params.push("vessel.debug=1".into());
    }
    if templated {
        agent_params.push("vessel.template=1".into());
    }
    qemu::Vm {
        agent_socket: dir.join("agent.sock"),
        shared_dir: export_dir(dir),
        qemu_log: dir.join("qemu.log"),
        agent_params: agent_params.join(" "),
        virtio_fs_socket: None,
        nic_mac: templated.then(|| template::TEMPLATE_MAC.to_string()),
        memory,
        vcpus: hypervisor.num_vcpus.max(1),
        qmp_socket: dir.join("qmp.sock"),
        template: None,
    }
}

/// Makes the template for sandboxes of `config` ahead of time (`factory init`); its key.
pub async fn make_template(
    config: &crate::oci::RuntimeConfig,
    store: &template::Store,
) -> Result<String> {
    let mut hypervisor = config.hypervisor_config.clone();
    template::check_templatable(&hypervisor)?;
    template::firmware_for_templates(&mut hypervisor);
    let hypervisor = &hypervisor;
    let memory = memory::layout(
        hypervisor,
        memory::host_memory_mib(),
        memory::guest_phys_bits(),
        !config.static_sandbox_resource_mgmt,
    );
    let vm = plan_vm(hypervisor, &store.root().join("init"), memory, true);
    let mut last_error = None;
    for accelerator in qemu::accelerators() {
        match store.obtain(hypervisor, &vm, accelerator).await {
            Ok(_) => return template::Shape::of(hypervisor, &vm, accelerator).map(|s| s.key()),
            Err(e) if accelerator == qemu::Accelerator::Kvm => {
                qemu::record_kvm(false, &e.to_string());
                last_error = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| Error::Unsupported("no accelerator".into())))
}

/// A QEMU whose agent answers.
pub(crate) struct Launched {
    /// The connection to its agent.
    agent: agent::Agent,
    /// Resolves with QEMU's exit status.
    exited: tokio::sync::oneshot::Receiver<i32>,
    /// QEMU's pid.
    pid: u32,
}

/// Starts QEMU for `vm` under `accelerator`, tells `started` its pid, and connects to its
/// agent (a clone's once [`template::restore`] ran it); a QEMU that did not get there is
/// killed.
async fn launch_and_connect(
    config: &crate::oci::HypervisorConfig,
    vm: &qemu::Vm,
    accelerator: qemu::Accelerator,
    tap: Option<RawFd>,
    started: impl FnOnce(u32) -> Result<()>,
) -> Result<Launched> {
    let mut launched = qemu::launch(config, vm, accelerator, tap).await?;
    let pid = launched.pid;
    if let Err(e) = started(pid) {
        kill(pid);
        return Err(e);
    }
    if let Some(role @ qemu::TemplateRole::Clone(_)) = &vm.template {
        if let Err(e) = template::restore(&vm.qmp_socket, &role.state()).await {
            kill(pid);
            return Err(Error::Unavailable(format!(
                "{e} (QEMU: {})",
                qemu::last_words(&vm.qemu_log)
            )));
        }
    }
    let limit = match accelerator {
        qemu::Accelerator::Kvm => KVM_BOOT_LIMIT,
        qemu::Accelerator::Tcg => TCG_BOOT_LIMIT,
    };
    let log_file = vm.qemu_log.clone();
    let mut exit_code = None;
    let exited = &mut launched.exited;
    let connected = agent::connect(&vm.agent_socket, Instant::now() + limit, || {
        let code = match exited.try_recv() {
            Ok(code) => code,
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => return None,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => -1,
        };
        exit_code = Some(code);
        Some(format!(
            "QEMU exited ({code}) before its agent answered: {}",
            qemu::last_words(&log_file)
        ))
    })
    .await;
    match connected {
        Ok(agent) => Ok(Launched {
            agent,
            exited: launched.exited,
            pid,
        }),
        Err(e) => {
            if exit_code.is_none() {
                kill(pid);
                let _ = tokio::time::timeout(STOP_LIMIT, &mut launched.exited).await;
            }
            Err(e)
        }
    }
}

/// How many random bytes of the host's each guest gets at its start (kata's ReseedRNG sends
/// as many).
const RANDOM_SEED: usize = 512;

/// Makes the guest the sandbox's (`StartSandbox`): the shared directory mounted, the host's
/// random bytes in its CRNG, the host's wall clock, the pod's hostname.
async fn start_sandbox(client: &agent::Agent, hostname: &str) -> Result<()> {
    let mut random_seed = vec![0; RANDOM_SEED];
    getrandom(&mut random_seed)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let req = api::StartSandboxRequest {
        random_seed,
        time_sec: now.as_secs() as i64,
        time_nsec: now.subsec_nanos(),
        hostname: hostname.to_string(),
        ..Default::default()
    };
    client
        .start_sandbox(agent::ctx(), &req)
        .await
        .map(drop)
        .map_err(|e| agent::error("start the sandbox in", "the guest", e))
}

/// Fills `buffer` from the host kernel's CRNG.
fn getrandom(buffer: &mut [u8]) -> Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(buffer))
        .map_err(|e| Error::io("read /dev/urandom", e))
}

/// Gives the guest's interface (its MAC `current` when it is not the pod's: a clone's) the
/// pod interface's MAC, addresses, MTU and routes.
async fn configure_interface(
    client: &agent::Agent,
    interface: &network::Interface,
    current: Option<&str>,
) -> Result<()> {
    let req = api::UpdateInterfaceRequest {
        current_mac: current.unwrap_or_default().to_string(),
        mac: interface.mac.clone(),
        addresses: interface.addresses.clone(),
        mtu: interface.mtu,
        routes: interface
            .routes
            .iter()
            .map(|(destination, gateway)| api::Route {
                destination: destination.clone(),
                gateway: gateway.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    client
        .update_interface(agent::ctx(), &req)
        .await
        .map(drop)
        .map_err(|e| agent::error("network", &interface.name, e))
}

/// SIGKILLs `pid`.
fn kill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

fn container(id: &str) -> api::ContainerRequest {
    api::ContainerRequest {
        container_id: id.to_string(),
        ..Default::default()
    }
}

fn stdio(s: StdioWanted) -> api::Stdio {
    api::Stdio {
        stdin: s.stdin,
        stdout: s.stdout,
        stderr: s.stderr,
        terminal: s.terminal,
        ..Default::default()
    }
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::io("encode for the agent", e.into()))
}

#[async_trait]
impl Sandbox for VmSandbox {
    async fn start(&self, config: &SandboxConfig) -> Result<()> {
        for container in &config.containers {
            isolation::refuse_host_sharing(&container.id, &container.custom_spec)?;
        }
        // The size it boots at: the configured default, plus the pod's own resources when
        // the size is static; what it can grow to.
        let resizable = !config.static_sandbox_resource_mgmt;
        let mut sized = config.hypervisor_config.clone();
        let base = sizing::Size {
            vcpus: sized.num_vcpus.max(1),
            memory_mib: u64::from(sized.memory_size),
        };
        let ceiling = sizing::Size {
            vcpus: sized.default_max_vcpus.max(base.vcpus),
            memory_mib: u64::from(memory::host_memory_mib()).max(base.memory_mib),
        };
        if !resizable {
            let spec = &config.containers[0].custom_spec;
            let pod = sizing::pod_demand(spec.annotations().as_ref());
            let boot = sizing::target(base, ceiling, [pod]);
            sized.num_vcpus = boot.vcpus;
            sized.memory_size = u32::try_from(boot.memory_mib).unwrap_or(u32::MAX);
        }
        if self.templates.is_some() {
            template::firmware_for_templates(&mut sized);
        }
        let memory = memory::layout(
            &sized,
            memory::host_memory_mib(),
            memory::guest_phys_bits(),
            resizable,
        );
        let hypervisor = &sized;
        let shared = shared_root(&self.dir);
        let export = export_dir(&self.dir);
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| Error::io(format!("create {}", self.dir.display()), e))?;
        // Recorded before QEMU exists, so that a crash at any step is cleaned up.
        self.save(|_| ())?;
        shared::export(&shared, &export)?;
        shared::add_modules(&shared, &hypervisor.initrd_path)?;
        let attached = self.attach_network(config).await?;
        let virtio_fs_socket = self.start_virtiofsd(config, &export).await?;
        if self.templates.is_some() {
            template::check_templatable(hypervisor)?;
        }
        if hypervisor.use_vsock {
            log::debug!("use_vsock: the agent channel is virtio-serial (vsock is not implemented)");
        }
        let mut vm = plan_vm(hypervisor, &self.dir, memory, self.templates.is_some());
        vm.virtio_fs_socket = virtio_fs_socket;
        // A clone has its template's NIC, whose tap leads nowhere without a pod network.
        let private_tap = match (&self.templates, &attached) {
            (Some(_), None) => Some(network::private_tap()?),
            _ => None,
        };
        if self.templates.is_none() {
            vm.nic_mac = attached.as_ref().map(|a| a.interface.mac.clone());
        }
        let config = &SandboxConfig {
            hypervisor_config: sized.clone(),
            ..config.clone()
        };
        let tap = attached
            .as_ref()
            .map(|a| a.tap.as_raw_fd())
            .or(private_tap.as_ref().map(|t| t.as_raw_fd()));
        let mut last_error = None;
        for accelerator in qemu::accelerators() {
            let since = Instant::now();
            let launched = match &self.templates {
                Some(store) => match store.obtain(hypervisor, &vm, accelerator).await {
                    Ok(image) => {
                        let clone = qemu::Vm {
                            template: Some(qemu::TemplateRole::Clone(image)),
                            ..vm.clone()
                        };
                        self.boot(config, &clone, accelerator, tap).await
                    }
                    Err(e) => Err(e),
                },
                None => self.boot(config, &vm, accelerator, tap).await,
            };
            match launched {
                Ok(Launched { agent, exited, .. }) => {
                    if accelerator == qemu::Accelerator::Kvm {
                        qemu::record_kvm(true, "");
                    }
                    log::info!(
                        "sandbox {} {} ({accelerator:?}): its agent answered {} ms after \
                         QEMU started",
                        config.id,
                        if self.templates.is_some() {
                            "cloned from its template"
                        } else {
                            "booted"
                        },
                        since.elapsed().as_millis()
                    );
                    start_sandbox(&agent, &config.hostname).await?;
                    if let Some(attached) = &attached {
                        let current = self.templates.as_ref().map(|_| template::TEMPLATE_MAC);
                        configure_interface(&agent, &attached.interface, current).await?;
                    }
                    let client = Arc::new(agent);
                    self.watch(client.clone(), exited);
                    if config.sandbox_cgroup_only {
                        let record = lock(&self.record).clone();
                        let pids: Vec<u32> = [record.qemu_pid, record.virtiofsd_pid]
                            .into_iter()
                            .flatten()
                            .chain([std::process::id()])
                            .collect();
                        let spec = &config.containers[0].custom_spec;
                        *lock(&self.cgroup) = cgroup::SandboxCgroup::join(spec, &pids)?;
                    }
                    if resizable {
                        let qmp = qmp::Qmp::connect(&vm.qmp_socket).await?;
                        let max = sizing::Size {
                            vcpus: ceiling.vcpus,
                            memory_mib: u64::from(memory.max.unwrap_or(memory.size)),
                        };
                        let base = sizing::Size {
                            vcpus: sized.num_vcpus.max(1),
                            memory_mib: u64::from(memory.size),
                        };
                        *self.hotplug.lock().await =
                            Some(sizing::Hotplug::new(qmp, base, max, memory.virtio_mem));
                    }
                    // On the shim's thread, as the network's commands: `nft` runs here.
                    if let Some(netns) = network::namespace(&config.network_config.net_ns_path) {
                        *lock(&self.ports) = portforward::start(&netns, client.clone());
                    }
                    *lock(&self.client) = Some(client);
                    return Ok(());
                }
                Err(e) if accelerator == qemu::Accelerator::Kvm => {
                    log::warn!(
                        "KVM did not boot the guest ({e}): /dev/kvm cannot run a standard guest \
                         kernel on this host; using TCG (software emulation, slower) from now on"
                    );
                    qemu::record_kvm(false, &e.to_string());
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Unsupported("no accelerator".into())))
    }

    async fn create(&self, req: &ContainerRequest) -> Result<Started> {
        if lock(&self.record).containers.contains_key(&req.id) {
            return Err(Error::AlreadyExists(format!("container {}", req.id)));
        }
        isolation::refuse_host_sharing(&req.id, &req.config.custom_spec)?;
        let client = self.client()?;
        let root = shared_root(&self.dir);
        self.save(|r| {
            r.containers.insert(req.id.clone(), Vec::new());
        })?;
        let placed = match shared::add(&root, req).await {
            Ok(placed) => placed,
            Err(e) => {
                self.save(|r| {
                    r.containers.remove(&req.id);
                })?;
                return Err(e);
            }
        };
        self.save(|r| {
            r.containers.insert(req.id.clone(), placed.mounts.clone());
        })?;
        // The VM grows to what the container asks before the guest limits it to that.
        let demand = sizing::demand(&req.config.resources);
        if let Err(e) = self.resize(&req.id, Some(demand)).await {
            let _ = self.delete(&req.id).await;
            return Err(e);
        }
        let create = api::CreateContainerRequest {
            container_id: req.id.clone(),
            spec_json: json(&placed.spec)?,
            rootfs: placed.rootfs.clone(),
            stdio: Some(stdio(req.stdio)).into(),
            ..Default::default()
        };
        if let Err(e) = client.create_container(agent::ctx(), &create).await {
            let _ = self.delete(&req.id).await;
            return Err(agent::error("create", &req.id, e));
        }
        Ok(self.started(&client, &req.id, "", req.stdio))
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        self.client()?
            .start_container(agent::ctx(), &container(id))
            .await
            .map(drop)
            .map_err(|e| agent::error("start", id, e))
    }

    async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        spec: &Process,
        stdio_wanted: StdioWanted,
    ) -> Result<Started> {
        let client = self.client()?;
        let req = api::ExecProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            process_json: json(spec)?,
            stdio: Some(stdio(stdio_wanted)).into(),
            ..Default::default()
        };
        client
            .exec_process(agent::ctx(), &req)
            .await
            .map_err(|e| agent::error("exec", id, e))?;
        Ok(self.started(&client, id, exec_id, stdio_wanted))
    }

    async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let req = api::SignalProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            signal,
            all,
            ..Default::default()
        };
        self.client()?
            .signal_process(agent::ctx(), &req)
            .await
            .map(drop)
            .map_err(|e| agent::error("kill", id, e))
    }

    /// The input relay closes the agent's stdin once it forwarded everything the shim wrote.
    async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        let relay = lock(&self.stdin_relays).remove(&(id.to_string(), exec_id.to_string()));
        if let Some(relay) = relay {
            let _ = tokio::time::timeout(STOP_LIMIT, relay).await;
        }
        Ok(())
    }

    async fn delete(&self, id: &str) -> Result<()> {
        lock(&self.stdin_relays).retain(|(c, _), _| c != id);
        if let Ok(client) = self.client() {
            match client.remove_container(agent::ctx(), &container(id)).await {
                Ok(_) => {}
                Err(e) => match agent::error("delete", id, e) {
                    Error::NotFound(_) | Error::Unavailable(_) => {}
                    other => return Err(other),
                },
            }
        }
        let mounts = lock(&self.record).containers.get(id).cloned();
        if let Some(mounts) = mounts {
            shared::remove(&shared_root(&self.dir).join(id), &mounts);
        }
        self.save(|r| {
            r.containers.remove(id);
        })?;
        lock(&self.known).forget(id);
        // What it asked goes back; a guest that cannot give it all back keeps the rest.
        if let Err(e) = self.resize(id, None).await {
            log::warn!("shrinking the sandbox after {id}: {e}");
        }
        Ok(())
    }

    async fn delete_exec(&self, id: &str, exec_id: &str) {
        lock(&self.stdin_relays).remove(&(id.to_string(), exec_id.to_string()));
        lock(&self.known).forget_exec(id, exec_id);
        if let Ok(client) = self.client() {
            let req = api::ProcessRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                ..Default::default()
            };
            let _ = client.remove_process(agent::ctx(), &req).await;
        }
    }

    async fn pause(&self, id: &str) -> Result<()> {
        self.client()?
            .pause_container(agent::ctx(), &container(id))
            .await
            .map(drop)
            .map_err(|e| agent::error("pause", id, e))
    }

    async fn resume(&self, id: &str) -> Result<()> {
        self.client()?
            .resume_container(agent::ctx(), &container(id))
            .await
            .map(drop)
            .map_err(|e| agent::error("resume", id, e))
    }

    async fn pids(&self, id: &str) -> Result<Vec<ProcessPid>> {
        let listed = self
            .client()?
            .list_processes(agent::ctx(), &container(id))
            .await
            .map_err(|e| agent::error("ps", id, e))?;
        // Guest pids, for display only; an exec id only when the shim started it.
        let known = lock(&self.known);
        Ok(listed
            .processes
            .into_iter()
            .map(|p| ProcessPid {
                pid: p.pid,
                exec_id: (!p.exec_id.is_empty() && known.has(id, &p.exec_id)).then_some(p.exec_id),
            })
            .collect())
    }

    async fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        self.resize(id, Some(sizing::demand(resources))).await?;
        let req = api::UpdateContainerRequest {
            container_id: id.to_string(),
            resources_json: json(resources)?,
            ..Default::default()
        };
        self.client()?
            .update_container(agent::ctx(), &req)
            .await
            .map(drop)
            .map_err(|e| agent::error("update", id, e))
    }

    async fn stats(&self, id: &str) -> Result<Stats> {
        let client = self.client()?;
        let reply = client
            .container_stats(agent::ctx(), &container(id))
            .await
            .map_err(|e| agent::error("stats", id, e))?;
        // At most agent::STATS_LIMIT bytes: decoded, a few MiB at worst.
        let decode = |e: protobuf::Error| {
            let what = format!("ContainerStats: metrics that do not decode: {e}");
            agent::error("stats", id, client.protocol_error(what))
        };
        match reply.metrics {
            Some(Metrics::CgroupV2(bytes)) => Ok(Stats::V2(Box::new(
                Message::parse_from_bytes(&bytes).map_err(decode)?,
            ))),
            Some(Metrics::CgroupV1(bytes)) => Ok(Stats::V1(Box::new(
                Message::parse_from_bytes(&bytes).map_err(decode)?,
            ))),
            _ => Err(Error::NotFound(format!("metrics of {id}"))),
        }
    }

    async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let req = api::ResizeTerminalRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            width,
            height,
            ..Default::default()
        };
        self.client()?
            .resize_terminal(agent::ctx(), &req)
            .await
            .map(drop)
            .map_err(|e| agent::error("resize", id, e))
    }

    fn events(&self) -> Option<UnboundedReceiver<Event>> {
        lock(&self.events).take()
    }

    async fn stop(&self) -> Result<()> {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(ports) = lock(&self.ports).take() {
            ports.stop();
        }
        let client = lock(&self.client).take();
        let pid = lock(&self.record).qemu_pid;
        if let Some(client) = &client {
            let empty = api::Empty::default();
            match tokio::time::timeout(STOP_LIMIT, client.destroy_sandbox(agent::ctx(), &empty))
                .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => log::warn!("destroy sandbox: {e}"),
                Err(_) => log::warn!("destroy sandbox: no answer within {STOP_LIMIT:?}"),
            }
        }
        if let Some(pid) = pid {
            // Without an agent to power the guest off (a boot that failed) nothing is awaited.
            let grace = if client.is_some() {
                STOP_LIMIT
            } else {
                Duration::ZERO
            };
            if self.end(pid, grace).await && client.is_some() {
                log::warn!("QEMU {pid} did not power off: killed");
            }
        }
        // Whatever still waits on the agent (relays, watchers) ends.
        if let Some(client) = &client {
            client.declare_dead("the sandbox stopped");
        }
        // virtiofsd ends with QEMU's connection; one that did not is killed.
        let virtiofsd = lock(&self.record).virtiofsd_pid;
        if let Some(pid) = virtiofsd {
            self.end(pid, Duration::from_secs(1)).await;
        }
        if let Some(cgroup) = lock(&self.cgroup).take() {
            cgroup.remove();
        }
        if let Some((netns, interface)) = lock(&self.record).network.clone() {
            network::detach(&netns, &interface);
        }
        let containers: Vec<(String, Vec<PathBuf>)> =
            lock(&self.record).containers.clone().into_iter().collect();
        for (id, mounts) in containers {
            shared::remove(&shared_root(&self.dir).join(&id), &mounts);
        }
        remove_state(&self.dir)
    }
}
