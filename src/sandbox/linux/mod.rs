//! The `linux` backend: containers as host processes in namespaces, created by an [`Engine`]:
//! an OCI runtime binary (runc by default, crun selectable) through the `runc` crate, or a
//! runtime built into the process running the backend (the guest agent's).
//!
//! Container processes are reparented to the shim (a subreaper); the containerd-shim crate's
//! reaper collects them and [`tracker`] turns their pids into [`Exit`](super::Exit)s; each
//! container's memory cgroup is watched for OOM kills. The OCI runtime's state, console
//! sockets and pid files live in the sandbox's own state directory.

mod binary;
mod engine;
mod runtime;
mod stdio;
mod tracker;

pub use binary::RuncEngine;
pub use engine::{engine_root, Engine, EngineIo, CLONE_GATE};
pub use runtime::{reaped_output, ProcessPipes, ReapedError};

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::SystemTime,
};

use async_trait::async_trait;
use containerd_shim::cgroup;
use oci_spec::runtime::{LinuxResources, Process};
use runc::options::DeleteOpts;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::{
    console, oom, rootfs, ContainerRequest, Error, Event, ProcessPid, Record as SandboxRecord,
    Result, Sandbox, Started, Stats, StdioWanted,
};
use crate::oci::SandboxConfig;
use runtime::{runtime_error, unreaped_runtime};
use stdio::PreparedIo;
use tracker::{watch_exits, Tracker};

/// What the linux backend created for a sandbox: which runtime, and which containers with
/// which root file system mounted (for the `delete` action after a shim died).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The OCI runtime binary (the engine's name).
    pub runtime: String,
    /// Each container, with the root file system the backend mounted for it.
    pub containers: BTreeMap<String, Option<PathBuf>>,
}

impl Record {
    /// A record of no container yet.
    pub fn new(runtime: &str) -> Self {
        Self {
            runtime: runtime.to_string(),
            containers: BTreeMap::new(),
        }
    }

    /// Records container `id` and its mounted root file system.
    pub fn add(&mut self, id: &str, rootfs: Option<PathBuf>) {
        self.containers.insert(id.to_string(), rootfs);
    }
}

/// Removes what is left of container `id` after its shim died: the runtime's container
/// (killed), its root file system mount, its entry; the whole state once none is left.
pub async fn cleanup(dir: &Path, mut record: Record, id: &str) -> Result<()> {
    let root = engine_root(dir);
    if root.join(id).exists() {
        let runc = unreaped_runtime(&record.runtime, &root)?;
        runc.delete(id, Some(&DeleteOpts::new().force(true)))
            .await
            .map_err(|e| runtime_error("delete", id, e))?;
    }
    if let Some(Some(target)) = record.containers.remove(id) {
        rootfs::unmount(&target);
    }
    if record.containers.is_empty() {
        remove_state(dir)
    } else {
        SandboxRecord::Linux(record).save(dir)
    }
}

fn remove_state(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io(format!("remove {}", dir.display()), e))
        }
        _ => Ok(()),
    }
}

/// The linux sandbox backend.
pub struct LinuxSandbox {
    engine: Arc<dyn Engine>,
    dir: PathBuf,
    record: Mutex<Record>,
    tracked: Arc<Mutex<Tracker>>,
    events: Mutex<Option<UnboundedReceiver<Event>>>,
    processes: Mutex<HashMap<(String, String), u32>>,
    consoles: Mutex<HashMap<(String, String), File>>,
    oom_watchers: Mutex<HashMap<String, tokio::task::AbortHandle>>,
}

/// Locks a mutex, also one a panicking thread left poisoned.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl LinuxSandbox {
    /// A backend driving the OCI runtime `binary`, its state in `dir` (the sandbox's own).
    pub async fn new(binary: &str, dir: &Path) -> Result<Self> {
        let engine = RuncEngine::new(binary, &engine_root(dir), dir)?;
        Self::with_engine(Arc::new(engine), dir).await
    }

    /// A backend whose containers `engine` creates, its state in `dir` (the sandbox's own;
    /// the engine's under [`engine_root`]).
    pub async fn with_engine(engine: Arc<dyn Engine>, dir: &Path) -> Result<Self> {
        let (sender, receiver) = unbounded_channel();
        let tracked = Arc::new(Mutex::new(Tracker::new(sender)));
        watch_exits(tracked.clone()).await?;
        Ok(Self {
            record: Mutex::new(Record::new(engine.name())),
            engine,
            dir: dir.to_path_buf(),
            tracked,
            events: Mutex::new(Some(receiver)),
            processes: Mutex::new(HashMap::new()),
            consoles: Mutex::new(HashMap::new()),
            oom_watchers: Mutex::new(HashMap::new()),
        })
    }

    /// Changes the record and writes it, before the change it records happens.
    fn record(&self, change: impl FnOnce(&mut Record)) -> Result<()> {
        let mut record = lock(&self.record);
        change(&mut record);
        SandboxRecord::Linux(record.clone()).save(&self.dir)
    }

    /// Remembers the pid of a process the runtime started at `since` and watches its exit.
    fn track(&self, pid: u32, container_id: &str, exec_id: &str, since: SystemTime) {
        let key = (container_id.to_string(), exec_id.to_string());
        lock(&self.processes).insert(key, pid);
        lock(&self.tracked).track(pid, container_id, exec_id, since);
    }

    /// Reports the container's OOM kills until its cgroup is removed.
    fn watch_oom(&self, pid: u32, container_id: &str) {
        let sender = lock(&self.tracked).sender.clone();
        let id = container_id.to_string();
        let watcher = tokio::spawn(async move {
            let report = || {
                let _ = sender.send(Event::Oom {
                    container_id: id.clone(),
                });
            };
            if let Err(e) = oom::watch(pid, report).await {
                log::debug!("no OOM events for {id}: {e}");
            }
        });
        lock(&self.oom_watchers).insert(container_id.to_string(), watcher.abort_handle());
    }

    fn pid_of(&self, id: &str, exec_id: &str) -> Result<u32> {
        lock(&self.processes)
            .get(&(id.to_string(), exec_id.to_string()))
            .copied()
            .ok_or_else(|| Error::NotFound(format!("process {id} {exec_id}")))
    }

    /// Whether the process `pid` of the sandbox still runs (its exit was not reaped).
    fn running(&self, pid: u32) -> bool {
        lock(&self.tracked).processes.contains_key(&pid)
    }

    /// Creates the container with the runtime, its root file system mounted; returns its
    /// init process.
    async fn create_with_runtime(&self, req: &ContainerRequest, target: &Path) -> Result<Started> {
        if !req.rootfs.is_empty() {
            rootfs::mount(&req.rootfs, target).await?;
        }
        let user = req.config.custom_spec.process().as_ref().map(|p| p.user());
        let (uid, gid) = user.map(|u| (u.uid(), u.gid())).unwrap_or((0, 0));
        let prepared = PreparedIo::new(req.stdio, uid, gid, &self.dir)?;
        let launch = self
            .engine
            .create(&req.id, &req.bundle, prepared.engine_io());
        let since = SystemTime::now();
        let (pid, io, master) = prepared.launch(req.stdio, launch).await?;
        log::debug!(
            "{} created {} in {} ms",
            self.engine.name(),
            req.id,
            since.elapsed().unwrap_or_default().as_millis()
        );
        if let Some(master) = master {
            lock(&self.consoles).insert((req.id.clone(), String::new()), master);
        }
        self.track(pid, &req.id, "", since);
        self.watch_oom(pid, &req.id);
        Ok(Started { pid, io })
    }
}

#[async_trait]
impl Sandbox for LinuxSandbox {
    async fn start(&self, config: &SandboxConfig) -> Result<()> {
        std::fs::create_dir_all(engine_root(&self.dir))
            .map_err(|e| Error::io(format!("create {}", self.dir.display()), e))?;
        self.record(|_| ())?;
        let hypervisor = &config.hypervisor_config;
        log::debug!(
            "linux backend: sandbox {} runs on the host; its VM settings do not apply \
             (memory_size {} MiB, num_vcpus {}, shared_fs {:?})",
            config.id,
            hypervisor.memory_size,
            hypervisor.num_vcpus,
            hypervisor.shared_fs
        );
        Ok(())
    }

    async fn create(&self, req: &ContainerRequest) -> Result<Started> {
        if lock(&self.record).containers.contains_key(&req.id) {
            return Err(Error::AlreadyExists(format!("container {}", req.id)));
        }
        let target = rootfs::target(&req.bundle, &req.config);
        let mounted = (!req.rootfs.is_empty()).then(|| target.clone());
        // Recorded before anything is created, so that a crash at any step is cleaned up.
        self.record(|r| r.add(&req.id, mounted))?;
        match self.create_with_runtime(req, &target).await {
            Ok(started) => Ok(started),
            Err(e) => {
                // The runtime may have created the container before the step that failed.
                let _ = self.delete(&req.id).await;
                Err(e)
            }
        }
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        self.engine.start(id).await
    }

    async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        spec: &Process,
        stdio: StdioWanted,
    ) -> Result<Started> {
        let prepared = PreparedIo::new(stdio, spec.user().uid(), spec.user().gid(), &self.dir)?;
        let launch = self.engine.exec(id, exec_id, spec, prepared.engine_io());
        let since = SystemTime::now();
        let (pid, io, master) = prepared.launch(stdio, launch).await?;
        if let Some(master) = master {
            lock(&self.consoles).insert((id.to_string(), exec_id.to_string()), master);
        }
        self.track(pid, id, exec_id, since);
        Ok(Started { pid, io })
    }

    async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let pid = self.pid_of(id, exec_id)?;
        // A reaped pid may already belong to another process.
        if !all && !self.running(pid) {
            return Err(Error::NotFound(format!(
                "process {id} {exec_id}: already finished"
            )));
        }
        if exec_id.is_empty() {
            return self
                .engine
                .kill(id, signal, all)
                .await
                .map_err(|e| kill_error(id, e));
        }
        let signal = nix::sys::signal::Signal::try_from(signal as i32)
            .map_err(|e| Error::io(format!("signal {signal}"), e.into()))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).map_err(|e| {
            kill_error(
                id,
                Error::io(format!("kill exec {exec_id} of {id}"), e.into()),
            )
        })
    }

    /// On the host the process's input is a pipe the shim writes: it ends when the shim
    /// closes its end, which the shim does once it has copied all of it.
    async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        self.pid_of(id, exec_id).map(|_| ())
    }

    async fn delete(&self, id: &str) -> Result<()> {
        if let Some(watcher) = lock(&self.oom_watchers).remove(id) {
            watcher.abort();
        }
        lock(&self.processes).retain(|(c, _), _| c != id);
        lock(&self.consoles).retain(|(c, _), _| c != id);
        self.engine.delete(id).await?;
        let mounted = lock(&self.record).containers.get(id).cloned().flatten();
        if let Some(target) = mounted {
            rootfs::unmount(&target);
        }
        self.record(|r| {
            r.containers.remove(id);
        })
    }

    async fn delete_exec(&self, id: &str, exec_id: &str) {
        let key = (id.to_string(), exec_id.to_string());
        lock(&self.consoles).remove(&key);
        lock(&self.processes).remove(&key);
    }

    async fn pause(&self, id: &str) -> Result<()> {
        self.engine.pause(id).await
    }

    async fn resume(&self, id: &str) -> Result<()> {
        self.engine.resume(id).await
    }

    async fn pids(&self, id: &str) -> Result<Vec<ProcessPid>> {
        let pids = self.engine.ps(id).await?;
        let execs: HashMap<u32, String> = lock(&self.processes)
            .iter()
            .filter(|((c, e), _)| c == id && !e.is_empty())
            .map(|((_, e), pid)| (*pid, e.clone()))
            .collect();
        Ok(pids
            .into_iter()
            .map(|pid| ProcessPid {
                pid,
                exec_id: execs.get(&pid).cloned(),
            })
            .collect())
    }

    async fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        self.engine.update(id, resources).await
    }

    async fn stats(&self, id: &str) -> Result<Stats> {
        let pid = self.pid_of(id, "")?;
        let metrics = tokio::task::spawn_blocking(move || {
            let _gate = CLONE_GATE.read().unwrap_or_else(|e| e.into_inner());
            cgroup_stats(pid)
        })
        .await
        .map_err(|e| Error::io("collect metrics", std::io::Error::other(e.to_string())))?;
        metrics.map_err(|e| {
            Error::io(
                format!("collect cgroup metrics of {id}"),
                std::io::Error::other(e.to_string()),
            )
        })
    }

    async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let consoles = lock(&self.consoles);
        let master = consoles
            .get(&(id.to_string(), exec_id.to_string()))
            .ok_or_else(|| Error::NotFound(format!("terminal of {id} {exec_id}")))?;
        console::resize(master, width, height).map_err(|e| Error::io("resize terminal", e))
    }

    fn events(&self) -> Option<UnboundedReceiver<Event>> {
        lock(&self.events).take()
    }

    async fn stop(&self) -> Result<()> {
        for watcher in lock(&self.oom_watchers).drain() {
            watcher.1.abort();
        }
        remove_state(&self.dir)
    }
}

/// The cgroup figures of `pid`'s cgroup, v1 or v2 as the host mounts them.
fn cgroup_stats(pid: u32) -> containerd_shim::Result<Stats> {
    let group = cgroup::get_cgroup(pid)?;
    Ok(if group.v2() {
        Stats::V2(Box::new(cgroup::collect_metrics_v2(&group)?))
    } else {
        Stats::V1(Box::new(cgroup::collect_metrics(&group)?))
    })
}

/// A kill that found its process gone (it exited a moment ago, before its exit was
/// recorded) is NotFound, as containerd's runc shim answers: containerd's StopContainer
/// ignores that, where any other error leaves the pod behind.
fn kill_error(id: &str, e: Error) -> Error {
    let text = e.to_string().to_lowercase();
    let gone = [
        "container not running",
        "process already finished",
        "no such process",
    ]
    .iter()
    .any(|needle| text.contains(needle));
    if gone {
        Error::NotFound(format!("process {id}: already finished ({e})"))
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kill_of_a_process_gone_is_not_found() {
        let runc = Error::Runtime {
            op: "kill",
            id: "c1".into(),
            message: "container not running (exit status 1)".into(),
        };
        assert!(matches!(kill_error("c1", runc), Error::NotFound(_)));
        let exec = Error::io("kill exec e1 of c1", nix::Error::ESRCH.into());
        assert!(matches!(kill_error("c1", exec), Error::NotFound(_)));
        let other = Error::Runtime {
            op: "kill",
            id: "c1".into(),
            message: "permission denied".into(),
        };
        assert!(matches!(kill_error("c1", other), Error::Runtime { .. }));
    }
}
