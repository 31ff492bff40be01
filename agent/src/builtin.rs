//! The agent's built-in container runtime: the linux backend's [`Engine`] on the
//! `libcontainer` crate, creating, starting and driving containers from the agent's own
//! process instead of one OCI runtime command per operation. Under emulation an exec of the
//! (dynamically linked) runtime binary is most of a container's start; here the container's
//! init is cloned from the agent, which is already in memory.
//!
//! Its state is libcontainer's, under the backend's engine root; cgroups are managed directly
//! (cgroup v2, no systemd).
//!
//! libcontainer makes a container's processes by cloning the agent (`clone3`, so no fork
//! handlers run), and a child of a process with other threads at work inherits whatever locks
//! they held at that moment (the logger's, the allocator's): it hung on one now and then
//! before its exec, and the operation with it. So every operation runs on the calling thread,
//! the agent's one async thread, holding [`CLONE_GATE`] for writing, which keeps the agent's
//! other threads out: the cloning thread is the only one at work. The agent waits for each
//! operation (a clone, the wait for the container's init) as a whole.

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
    linux::{Engine, EngineIo, CLONE_GATE},
    Error, Result,
};

/// The name the agent's settings and the sandbox's record give the built-in runtime.
pub const NAME: &str = "builtin";

/// The built-in runtime, its containers' state under `root`.
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
}

/// /dev/null, for a stream the process does not get.
fn null() -> std::io::Result<OwnedFd> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
}

/// Runs `op` of container `id` on this thread with the agent's other threads kept out (see
/// the module's documentation); its failure is an [`Error::Runtime`].
fn alone<T>(
    op: &'static str,
    id: &str,
    work: impl FnOnce() -> std::result::Result<T, Failure>,
) -> Result<T> {
    let _alone = CLONE_GATE.write().unwrap_or_else(|e| e.into_inner());
    work().map_err(|e| Error::Runtime {
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
        let pid = alone("create", id, || {
            let container = self
                .builder(id, &io)?
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()?;
            let pid = container.pid().ok_or_else(|| {
                LibcontainerError::Other("the container has no init process".into())
            })?;
            Ok(pid.as_raw() as u32)
        })?;
        close_after_start(&io).await;
        Ok(pid)
    }

    async fn start(&self, id: &str) -> Result<()> {
        alone("start", id, || Ok(self.load(id)?.start()?))
    }

    async fn exec(&self, id: &str, exec_id: &str, spec: &Process, io: EngineIo) -> Result<u32> {
        // libcontainer reads the process of an exec from a file.
        let file = self.root.join(format!("{id}.{exec_id}.process.json"));
        let json = serde_json::to_vec(spec).map_err(|e| Error::Runtime {
            op: "exec",
            id: id.to_string(),
            message: format!("encode the process: {e}"),
        })?;
        std::fs::write(&file, json)
            .map_err(|e| Error::io(format!("write {}", file.display()), e))?;
        let ran = alone("exec", id, || {
            let pid = self
                .builder(id, &io)?
                .as_tenant()
                .with_process(Some(file.clone()))
                .with_detach(true)
                .build()?;
            Ok(pid.as_raw() as u32)
        });
        let _ = std::fs::remove_file(&file);
        let pid = ran?;
        close_after_start(&io).await;
        Ok(pid)
    }

    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        alone("kill", id, || {
            let signal = Signal::try_from(signal as i32).map_err(|_| Failure::Signal(signal))?;
            Ok(self.load(id)?.kill(signal, all)?)
        })
    }

    async fn delete(&self, id: &str) -> Result<()> {
        if !self.root.join(id).exists() {
            return Ok(());
        }
        alone("delete", id, || Ok(self.load(id)?.delete(true)?))
    }

    async fn pause(&self, id: &str) -> Result<()> {
        alone("pause", id, || Ok(self.load(id)?.pause()?))
    }

    async fn resume(&self, id: &str) -> Result<()> {
        alone("resume", id, || Ok(self.load(id)?.resume()?))
    }

    async fn ps(&self, id: &str) -> Result<Vec<u32>> {
        alone("ps", id, || {
            let pids = cgroup(&self.load(id)?)?
                .get_all_pids()
                .map_err(|e| Failure::Cgroup(e.to_string()))?;
            Ok(pids.into_iter().map(|pid| pid.as_raw() as u32).collect())
        })
    }

    async fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        alone("update", id, || {
            let opts = ControllerOpt {
                resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            };
            cgroup(&self.load(id)?)?
                .apply(&opts)
                .map_err(|e| Failure::Cgroup(e.to_string()))
        })
    }
}

/// Closes the backend's copies of the container's output ends once the container holds its
/// own, so that the output ends when the process's does.
async fn close_after_start(io: &EngineIo) {
    if let EngineIo::Pipes(pipes) = io {
        runc::Io::close_after_start(pipes.as_ref()).await;
    }
}
