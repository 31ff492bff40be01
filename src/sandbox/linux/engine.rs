//! What creates and drives the linux backend's containers: an OCI runtime binary through the
//! `runc` crate ([`RuncEngine`](super::runtime::RuncEngine)), or an engine built into the
//! process that runs the backend (the guest agent's in-process runtime).
//!
//! The backend keeps everything around the engine: the root file system mounts, the
//! processes' streams, exit tracking, OOM watching, terminals and the sandbox's record.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use async_trait::async_trait;
use oci_spec::runtime::{LinuxResources, Process};

use super::{super::Result, runtime::ProcessPipes};

/// A process's streams as the engine hands them to the container.
#[derive(Debug, Clone)]
pub enum EngineIo {
    /// Pipes: the container gets their far ends, the backend keeps the near ones.
    Pipes(Arc<ProcessPipes>),
    /// A terminal: the engine connects to this console socket and sends the pty's master.
    Console(PathBuf),
}

/// Creates and drives containers for the linux backend. Each method runs to the end of the
/// operation; the pids it returns are the processes' in the backend's pid namespace, which
/// the backend's reaper collects.
#[async_trait]
pub trait Engine: Send + Sync {
    /// The engine's name, as the sandbox's record keeps it.
    fn name(&self) -> &str;

    /// Creates container `id` from the bundle's `config.json`, its init process stopped
    /// before the user's program; returns the init's pid.
    async fn create(&self, id: &str, bundle: &Path, io: EngineIo) -> Result<u32>;

    /// Lets the created container's init run the user's program.
    async fn start(&self, id: &str) -> Result<()>;

    /// Runs `spec` in container `id` as `exec_id`; returns its pid.
    async fn exec(&self, id: &str, exec_id: &str, spec: &Process, io: EngineIo) -> Result<u32>;

    /// Sends `signal` to the container's init, or to all of its processes.
    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()>;

    /// Removes the container, killing what is left of it; nothing to do for one the engine
    /// does not know.
    async fn delete(&self, id: &str) -> Result<()>;

    /// Freezes the container's processes.
    async fn pause(&self, id: &str) -> Result<()>;

    /// Thaws them.
    async fn resume(&self, id: &str) -> Result<()>;

    /// The pids of the container's processes.
    async fn ps(&self, id: &str) -> Result<Vec<u32>>;

    /// Applies new resource limits to the container's cgroup.
    async fn update(&self, id: &str, resources: &LinuxResources) -> Result<()>;
}

/// Held for writing by an engine that clones the process it runs in (the guest agent's
/// built-in runtime) for the whole of each operation, and for reading by that process's work
/// on threads of its own: a child cloned while another thread is at work inherits the locks
/// that thread held and can hang on one before its exec.
pub static CLONE_GATE: RwLock<()> = RwLock::new(());

/// Where an engine keeps its containers' state: `runc` in the sandbox's state directory.
pub fn engine_root(dir: &Path) -> PathBuf {
    dir.join("runc")
}
