//! The agent's built-in container runtime: the linux backend's [`Engine`] on the
//! `libcontainer` crate, creating, starting and driving containers from the agent's own
//! process instead of one OCI runtime command per operation. Under emulation an exec of the
//! (dynamically linked) runtime binary is most of a container's start; here the container's
//! init is cloned from the agent, which is already in memory.
//!
//! Its state is libcontainer's, under the backend's engine root; cgroups are managed directly
//! (cgroup v2, no systemd). Each operation blocks (clone, waiting for the init), so it runs on
//! the blocking pool, never on the agent's one async thread.

use std::{
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use async_trait::async_trait;
use libcgroups::common::{AnyCgroupManager, CgroupConfig, CgroupManager, ControllerOpt};
use libcontainer::{
    container::{builder::ContainerBuilder, Container},
    error::LibcontainerError,
    signal::Signal,
    syscall::syscall::SyscallType,
};
use oci_spec::runtime::{LinuxResources, Process};
use vessel::sandbox::{
    linux::{Engine, EngineIo},
    Error, Result,
};

/// The name the agent's settings and the sandbox's record give the built-in runtime.
pub const NAME: &str = "builtin";

/// The built-in runtime, its containers' state under `root`.
#[derive(Clone)]
pub struct Builtin {
    root: PathBuf,
}

impl Builtin {
    /// A runtime keeping its state under `root` (created when missing).
    pub fn new(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root)
            .map_err(|e| Error::io(format!("create {}", root.display()), e))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// A builder of container `id`, its streams wired to `io`.
    fn builder(&self, id: &str, io: &EngineIo) -> std::result::Result<ContainerBuilder, Failure> {
        let mut builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
            .with_root_path(&self.root)?;
        match io {
            EngineIo::Console(path) => builder = builder.with_console_socket(Some(path)),
            EngineIo::Pipes(pipes) => {
                let pipes = &pipes.0;
                // The container's ends, duplicated: the backend's ends stay where they are.
                if let Some(stdin) = &pipes.stdin {
                    builder = builder.with_stdin(stdin.rd.try_clone()?);
                }
                if let Some(write) = pipes.stdout.as_ref().and_then(|p| p.try_clone_wr()) {
                    builder = builder.with_stdout(write);
                }
                if let Some(write) = pipes.stderr.as_ref().and_then(|p| p.try_clone_wr()) {
                    builder = builder.with_stderr(write);
                }
                // Null for the streams the process does not get, as the runtime command's
                // callers give it: never the agent's own (the console).
                if pipes.stdin.is_none() {
                    builder = builder.with_stdin(null()?);
                }
                if pipes.stdout.is_none() {
                    builder = builder.with_stdout(null()?);
                }
                if pipes.stderr.is_none() {
                    builder = builder.with_stderr(null()?);
                }
            }
        }
        Ok(builder)
    }

    /// Container `id` as libcontainer last saved it.
    fn load(&self, id: &str) -> std::result::Result<Container, Failure> {
        Ok(Container::load(self.root.join(id))?)
    }
}

/// Why an operation of the built-in runtime failed, before it becomes the backend's
/// [`Error::Runtime`].
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// libcontainer refused or failed.
    #[error(transparent)]
    Container(#[from] LibcontainerError),
    /// The signal number names no signal.
    #[error("no signal {0}")]
    Signal(u32),
    /// The container's cgroup could not be read or changed.
    #[error("cgroup: {0}")]
    Cgroup(String),
    /// A file of the operation (a stream, the exec's process) could not be made.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The blocking task did not finish.
    #[error("the runtime's task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// /dev/null, for a stream the process does not get.
fn null() -> std::io::Result<OwnedFd> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
}

/// Runs `op` of container `id` on the blocking pool, its failure a [`Error::Runtime`].
async fn blocking<T: Send + 'static>(
    op: &'static str,
    id: &str,
    work: impl FnOnce() -> std::result::Result<T, Failure> + Send + 'static,
) -> Result<T> {
    let done = tokio::task::spawn_blocking(work)
        .await
        .map_err(Failure::from)
        .and_then(|result| result);
    done.map_err(|e| Error::Runtime {
        op,
        id: id.to_string(),
        message: e.to_string(),
    })
}

/// The cgroup manager of `container`.
fn cgroup(container: &Container) -> std::result::Result<AnyCgroupManager, Failure> {
    let config = container.spec()?;
    libcgroups::common::create_cgroup_manager(CgroupConfig {
        cgroup_path: config.cgroup_path,
        systemd_cgroup: false,
        container_name: container.id().to_string(),
    })
    .map_err(|e| Failure::Cgroup(e.to_string()))
}

#[async_trait]
impl Engine for Builtin {
    fn name(&self) -> &str {
        NAME
    }

    async fn create(&self, id: &str, bundle: &Path, io: EngineIo) -> Result<u32> {
        let (runtime, name, bundle) = (self.clone(), id.to_string(), bundle.to_path_buf());
        let created = blocking("create", id, move || {
            let container = runtime
                .builder(&name, &io)?
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()?;
            let pid = container.pid().ok_or_else(|| {
                LibcontainerError::Other("the container has no init process".into())
            })?;
            Ok((pid.as_raw() as u32, io))
        })
        .await;
        let (pid, io) = created?;
        close_after_start(&io).await;
        Ok(pid)
    }

    async fn start(&self, id: &str) -> Result<()> {
        let (runtime, name) = (self.clone(), id.to_string());
        blocking("start", id, move || Ok(runtime.load(&name)?.start()?)).await
    }

    async fn exec(&self, id: &str, exec_id: &str, spec: &Process, io: EngineIo) -> Result<u32> {
        let (runtime, name) = (self.clone(), id.to_string());
        // libcontainer reads the process of an exec from a file.
        let file = self.root.join(format!("{id}.{exec_id}.process.json"));
        let json = serde_json::to_vec(spec).map_err(|e| Error::Runtime {
            op: "exec",
            id: id.to_string(),
            message: format!("encode the process: {e}"),
        })?;
        std::fs::write(&file, json)
            .map_err(|e| Error::io(format!("write {}", file.display()), e))?;
        let process = file.clone();
        let ran = blocking("exec", id, move || {
            let pid = runtime
                .builder(&name, &io)?
                .as_tenant()
                .with_process(Some(process))
                .with_detach(true)
                .build()?;
            Ok((pid.as_raw() as u32, io))
        })
        .await;
        let _ = std::fs::remove_file(&file);
        let (pid, io) = ran?;
        close_after_start(&io).await;
        Ok(pid)
    }

    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let (runtime, name) = (self.clone(), id.to_string());
        blocking("kill", id, move || {
            let signal = Signal::try_from(signal as i32).map_err(|_| Failure::Signal(signal))?;
            Ok(runtime.load(&name)?.kill(signal, all)?)
        })
        .await
    }

    async fn delete(&self, id: &str) -> Result<()> {
        if !self.root.join(id).exists() {
            return Ok(());
        }
        let (runtime, name) = (self.clone(), id.to_string());
        blocking("delete", id, move || {
            Ok(runtime.load(&name)?.delete(true)?)
        })
        .await
    }

    async fn pause(&self, id: &str) -> Result<()> {
        let (runtime, name) = (self.clone(), id.to_string());
        blocking("pause", id, move || Ok(runtime.load(&name)?.pause()?)).await
    }

    async fn resume(&self, id: &str) -> Result<()> {
        let (runtime, name) = (self.clone(), id.to_string());
        blocking("resume", id, move || Ok(runtime.load(&name)?.resume()?)).await
    }

    async fn ps(&self, id: &str) -> Result<Vec<u32>> {
        let (runtime, name) = (self.clone(), id.to_string());
        blocking("ps", id, move || {
            let pids = cgroup(&runtime.load(&name)?)?
                .get_all_pids()
                .map_err(|e| Failure::Cgroup(e.to_string()))?;
            Ok(pids.into_iter().map(|pid| pid.as_raw() as u32).collect())
        })
        .await
    }

    async fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        let (runtime, name, resources) = (self.clone(), id.to_string(), resources.clone());
        blocking("update", id, move || {
            let opts = ControllerOpt {
                resources: &resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            };
            cgroup(&runtime.load(&name)?)?
                .apply(&opts)
                .map_err(|e| Failure::Cgroup(e.to_string()))
        })
        .await
    }
}

/// Closes the backend's copies of the container's output ends once the container holds its
/// own, so that the output ends when the process's does.
async fn close_after_start(io: &EngineIo) {
    if let EngineIo::Pipes(pipes) = io {
        runc::Io::close_after_start(pipes.as_ref()).await;
    }
}
