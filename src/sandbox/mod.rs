//! Sandbox backends behind one trait: the shim drives a [`Sandbox`] and never knows which.
//!
//! - [`linux`]: containers as host processes in namespaces, through an OCI runtime binary.

pub mod console;
pub mod linux;
mod oom;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use async_trait::async_trait;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use oci_spec::runtime::{LinuxResources, Process};
use tokio::io::{AsyncRead, AsyncWrite};

/// Errors of a sandbox backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The container or process is unknown to the backend.
    #[error("{0} not found")]
    NotFound(String),
    /// The OCI runtime (or agent) refused or failed the operation.
    #[error("{op} {id}: {message}")]
    Runtime {
        /// The operation, e.g. `create`.
        op: &'static str,
        /// The container id.
        id: String,
        /// What the runtime said.
        message: String,
    },
    /// The configuration asks for something this build cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// A host I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Where backends keep their runtime state, one directory per containerd namespace.
pub const STATE_ROOT: &str = "/run/vessel";

/// The state directory of a containerd namespace.
pub fn state_dir(namespace: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(namespace)
}

/// Builds the backend the configuration selects.
pub async fn build(config: &crate::config::Config, namespace: &str) -> Result<Arc<dyn Sandbox>> {
    match config.runtime.sandbox_backend {
        crate::config::SandboxBackend::Linux => {
            let binary = config
                .runtime
                .oci_runtime_binary()
                .map_err(|e| Error::Unsupported(e.to_string()))?;
            let binary = binary.to_string_lossy();
            Ok(Arc::new(
                linux::LinuxSandbox::new(&binary, &state_dir(namespace)).await?,
            ))
        }
        crate::config::SandboxBackend::Vm => Err(Error::Unsupported(
            "[runtime] sandbox_backend = \"vm\": the VM backend is not available in this build \
             (accepted: \"linux\")"
                .into(),
        )),
    }
}

/// Result of a backend operation.
pub type Result<T> = std::result::Result<T, Error>;

/// Which standard streams a process gets, and whether through a terminal.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdioWanted {
    /// The process reads stdin.
    pub stdin: bool,
    /// The process writes stdout.
    pub stdout: bool,
    /// The process writes stderr.
    pub stderr: bool,
    /// stdin and stdout go through one pseudo-terminal.
    pub terminal: bool,
}

/// The shim's ends of a process's streams, to be wired to containerd's fifos.
#[derive(Default)]
pub struct ProcessIo {
    /// Where the shim writes the process's input.
    pub stdin: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Where the shim reads the process's output (the terminal, when there is one).
    pub stdout: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// Where the shim reads the process's errors.
    pub stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
}

/// A container to create.
#[derive(Debug, Clone)]
pub struct ContainerRequest {
    /// Container id.
    pub id: String,
    /// Bundle directory (config.json, rootfs).
    pub bundle: PathBuf,
    /// The bundle's OCI spec.
    pub spec: oci_spec::runtime::Spec,
    /// Streams of the container's init process.
    pub stdio: StdioWanted,
}

/// A process the backend started: its host pid and streams.
pub struct Started {
    /// Host pid (containerd and monitoring read /proc with it).
    pub pid: u32,
    /// The shim's ends of the process's streams.
    pub io: ProcessIo,
}

/// A process of the sandbox exited.
#[derive(Debug, Clone)]
pub struct Exit {
    /// Container id.
    pub container_id: String,
    /// Exec id; empty for the container's init process.
    pub exec_id: String,
    /// Host pid.
    pub pid: u32,
    /// Exit status (128 + signal for a killed process).
    pub status: u32,
    /// When it exited.
    pub at: SystemTime,
}

/// What the sandbox reports about its containers.
#[derive(Debug, Clone)]
pub enum Event {
    /// A process exited.
    Exit(Exit),
    /// The kernel killed a process of the container for lack of memory.
    Oom {
        /// Container id.
        container_id: String,
    },
}

/// A sandbox: the place a pod's containers run in.
#[async_trait]
pub trait Sandbox: Send + Sync {
    /// Creates a container (not yet started) and returns its init process.
    async fn create(&self, req: &ContainerRequest) -> Result<Started>;
    /// Starts a created container's init process.
    async fn start(&self, id: &str) -> Result<()>;
    /// Runs an additional process in a running container.
    async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        spec: &Process,
        stdio: StdioWanted,
    ) -> Result<Started>;
    /// Sends `signal` to a process, or with `all` to every process of the container.
    async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()>;
    /// Removes a container and everything the backend holds for it.
    async fn delete(&self, id: &str) -> Result<()>;
    /// Forgets an exec process after it was deleted.
    async fn delete_exec(&self, id: &str, exec_id: &str);
    /// Freezes every process of the container.
    async fn pause(&self, id: &str) -> Result<()>;
    /// Thaws a paused container.
    async fn resume(&self, id: &str) -> Result<()>;
    /// Host pids of the container's processes.
    async fn pids(&self, id: &str) -> Result<Vec<u32>>;
    /// Applies new resource limits.
    async fn update(&self, id: &str, resources: &LinuxResources) -> Result<()>;
    /// The container's cgroup metrics, in containerd's format.
    async fn stats(&self, id: &str) -> Result<Any>;
    /// Resizes a process's terminal.
    async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()>;
    /// Takes the stream of exits and OOM kills; called once by the shim.
    fn events(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Event>>;
    /// Releases everything the sandbox holds once its last container is gone.
    async fn shutdown(&self);
}
