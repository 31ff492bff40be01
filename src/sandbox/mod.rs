//! Sandbox backends behind one trait: the shim drives a [`Sandbox`] and never knows which.
//!
//! - [`linux`]: containers as host processes in namespaces, through an OCI runtime binary.
//! - [`vm`]: each sandbox a QEMU virtual machine; its guest agent runs the containers.
//!
//! A sandbox is one pod (a standalone `ctr run` is a pod of one). The shim starts it with the
//! pod's converted [`SandboxConfig`] at the pod's first Create, creates each container from
//! its converted [`ContainerConfig`], and stops it when the last container is gone. Each
//! sandbox keeps its state in a directory of its own ([`state_dir`]) and a [`Record`] of what
//! it created there, from which [`cleanup`] removes it after its shim died.

pub mod console;
pub mod linux;
mod oom;
mod record;
mod rootfs;
pub mod vm;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use async_trait::async_trait;
use containerd_shim_protos::{
    cgroups::metrics::Metrics as MetricsV1, cgroups_v2::metrics::Metrics,
};
use oci_spec::runtime::{LinuxResources, Process};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::oci::{ContainerConfig, SandboxConfig};

pub use record::{cleanup, Record};

/// Errors of a sandbox backend: what went wrong, typed so that the shim maps each kind to its
/// ttrpc code once, whichever backend said it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The container or process is unknown to the backend.
    #[error("{0} not found")]
    NotFound(String),
    /// The process is not running (any more, or yet).
    #[error("{0} is not running")]
    NotRunning(String),
    /// A container of that id exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The backend went away (a VM that died, an agent that does not answer).
    #[error("sandbox unavailable: {0}")]
    Unavailable(String),
    /// The backend did not answer in time.
    #[error("timed out: {0}")]
    Timeout(String),
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

impl Error {
    /// The ttrpc code of this error: the one mapping every ttrpc server of a backend uses (the
    /// shim's Task service, the guest agent).
    pub fn code(&self) -> ttrpc::Code {
        match self {
            Self::NotFound(_) => ttrpc::Code::NOT_FOUND,
            Self::NotRunning(_) => ttrpc::Code::FAILED_PRECONDITION,
            Self::AlreadyExists(_) => ttrpc::Code::ALREADY_EXISTS,
            Self::Unavailable(_) => ttrpc::Code::UNAVAILABLE,
            Self::Timeout(_) => ttrpc::Code::DEADLINE_EXCEEDED,
            Self::Unsupported(_) => ttrpc::Code::INVALID_ARGUMENT,
            Self::Runtime { .. } | Self::Io { .. } => ttrpc::Code::UNKNOWN,
        }
    }

    /// An [`Error::Io`] saying what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result of a backend operation.
pub type Result<T> = std::result::Result<T, Error>;

/// Where backends keep their runtime state.
pub const STATE_ROOT: &str = "/run/vessel";

/// The state directory of one sandbox: `/run/vessel/<namespace>/<sandbox id>`. Two pods
/// never share a file.
pub fn state_dir(namespace: &str, sandbox_id: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(namespace).join(sandbox_id)
}

/// Builds the backend the configuration selects for sandbox `sandbox_id`; it starts with
/// [`Sandbox::start`].
pub async fn build(
    config: &crate::config::Config,
    namespace: &str,
    sandbox_id: &str,
) -> Result<Arc<dyn Sandbox>> {
    match config.runtime.sandbox_backend {
        crate::config::SandboxBackend::Linux => {
            let binary = config
                .runtime
                .oci_runtime_binary()
                .map_err(|e| Error::Unsupported(e.to_string()))?;
            let state = state_dir(namespace, sandbox_id);
            Ok(Arc::new(
                linux::LinuxSandbox::new(&binary.to_string_lossy(), &state).await?,
            ))
        }
        crate::config::SandboxBackend::Vm => {
            let factory = &config.factory;
            let templates = factory
                .enable_template
                .then(|| vm::template::Store::new(Path::new(&factory.template_path)));
            Ok(Arc::new(vm::VmSandbox::new(
                &state_dir(namespace, sandbox_id),
                templates,
            )))
        }
    }
}

/// Which standard streams a process gets, and whether through a terminal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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

/// One mount of a container's root file system, as containerd's snapshotter prepared it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsMount {
    /// File system type (`overlay`, `bind`, ...).
    pub kind: String,
    /// What is mounted.
    pub source: String,
    /// Mount options (`lowerdir=...`, `ro`, ...).
    pub options: Vec<String>,
}

/// A container to create.
#[derive(Debug, Clone)]
pub struct ContainerRequest {
    /// Container id.
    pub id: String,
    /// Bundle directory (config.json, rootfs).
    pub bundle: PathBuf,
    /// The container as the conversion core made it (its OCI spec included).
    pub config: ContainerConfig,
    /// Its root file system, for the backend to mount (on the host, or into its guest);
    /// empty when the bundle's rootfs is ready already.
    pub rootfs: Vec<RootfsMount>,
    /// Streams of the container's init process.
    pub stdio: StdioWanted,
}

/// A process the backend started: the pid to report for it, and its streams.
pub struct Started {
    /// The pid containerd is told (a host pid for `linux`; whatever the backend reports).
    pub pid: u32,
    /// The shim's ends of the process's streams.
    pub io: ProcessIo,
}

/// A process of a container, as listed by [`Sandbox::pids`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessPid {
    /// Its pid.
    pub pid: u32,
    /// The exec id when the process is an exec'd one the shim started.
    pub exec_id: Option<String>,
}

/// A container's resource figures, in containerd's cgroup metrics types.
#[derive(Debug, Clone)]
pub enum Stats {
    /// cgroup v1 figures.
    V1(Box<MetricsV1>),
    /// cgroup v2 figures.
    V2(Box<Metrics>),
}

/// A process of the sandbox exited.
#[derive(Debug, Clone)]
pub struct Exit {
    /// Container id.
    pub container_id: String,
    /// Exec id; empty for the container's init process.
    pub exec_id: String,
    /// Its pid, as [`Started::pid`] gave it.
    pub pid: u32,
    /// Exit status (128 + signal for a killed process).
    pub status: u32,
    /// When it exited.
    pub at: SystemTime,
}

/// What the sandbox reports about itself and its containers.
#[derive(Debug, Clone)]
pub enum Event {
    /// A process exited.
    Exit(Exit),
    /// The kernel killed a process of the container for lack of memory.
    Oom {
        /// Container id.
        container_id: String,
    },
    /// The sandbox itself died (its VM, say): every process in it is gone.
    Died {
        /// Why, for the log.
        reason: String,
    },
}

/// A sandbox: the place a pod's containers run in.
#[async_trait]
pub trait Sandbox: Send + Sync {
    /// Starts the sandbox with the pod's converted configuration, before its first container.
    /// What a backend cannot honour (a VM's memory size, for `linux`) it ignores.
    async fn start(&self, config: &SandboxConfig) -> Result<()>;
    /// Creates a container (not yet started) and returns its init process.
    async fn create(&self, req: &ContainerRequest) -> Result<Started>;
    /// Starts a created container's init process.
    async fn start_container(&self, id: &str) -> Result<()>;
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
    /// Tells the process its input ended, once the shim has written all of it.
    async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()>;
    /// Removes a container and everything the backend holds for it (its root file system
    /// mounts too); removing one that is gone already is not an error.
    async fn delete(&self, id: &str) -> Result<()>;
    /// Forgets an exec process after it was deleted.
    async fn delete_exec(&self, id: &str, exec_id: &str);
    /// Freezes every process of the container.
    async fn pause(&self, id: &str) -> Result<()>;
    /// Thaws a paused container.
    async fn resume(&self, id: &str) -> Result<()>;
    /// The container's processes.
    async fn pids(&self, id: &str) -> Result<Vec<ProcessPid>>;
    /// Applies new resource limits.
    async fn update(&self, id: &str, resources: &LinuxResources) -> Result<()>;
    /// The container's resource figures.
    async fn stats(&self, id: &str) -> Result<Stats>;
    /// Resizes a process's terminal.
    async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()>;
    /// Takes the stream of exits, OOM kills and the sandbox's death; called once by the shim.
    fn events(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Event>>;
    /// Stops the sandbox once its last container is gone and removes its state; stopping
    /// again is not an error.
    async fn stop(&self) -> Result<()>;
}
