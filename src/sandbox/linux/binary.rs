//! The [`Engine`] of an OCI runtime binary (runc, crun): one runtime command per operation,
//! pid files and logs in the sandbox's state directory.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use oci_spec::runtime::{LinuxResources, Process};
use runc::{
    options::{CreateOpts, DeleteOpts, ExecOpts, KillOpts},
    Runc,
};

use super::{
    super::Result,
    engine::{Engine, EngineIo},
    runtime::{logged_error, read_pid_file, runtime, runtime_error},
};

/// An OCI runtime binary, its state under `root`, its pid files and logs in `dir`.
pub struct RuncEngine {
    runc: Runc,
    binary: String,
    root: PathBuf,
    dir: PathBuf,
}

impl RuncEngine {
    /// Drives `binary` (resolved in PATH unless absolute) with `--root root`; `dir` holds the
    /// pid files and logs of its commands.
    pub fn new(binary: &str, root: &Path, dir: &Path) -> Result<Self> {
        Ok(Self {
            runc: runtime(binary, root, None)?,
            binary: binary.to_string(),
            root: root.to_path_buf(),
            dir: dir.to_path_buf(),
        })
    }

    /// A client of the runtime that logs (JSON) to `log`.
    fn logging(&self, log: &Path) -> Result<Runc> {
        runtime(&self.binary, &self.root, Some(log))
    }
}

#[async_trait]
impl Engine for RuncEngine {
    fn name(&self) -> &str {
        &self.binary
    }

    async fn create(&self, id: &str, bundle: &Path, io: EngineIo) -> Result<u32> {
        let pid_file = self.dir.join(format!("{id}.pid"));
        let mut opts = CreateOpts::new().pid_file(&pid_file);
        opts = match io {
            EngineIo::Pipes(pipes) => opts.io(pipes),
            EngineIo::Console(path) => opts.console_socket(path),
        };
        let log = self.dir.join(format!("{id}.log.json"));
        let created = self.logging(&log)?.create(id, bundle, Some(&opts)).await;
        let created = created.map_err(|e| logged_error(runtime_error("create", id, e), &log));
        let _ = std::fs::remove_file(&log);
        created?;
        read_pid_file(&pid_file).await
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.runc
            .start(id)
            .await
            .map(|_| ())
            .map_err(|e| runtime_error("start", id, e))
    }

    async fn exec(&self, id: &str, exec_id: &str, spec: &Process, io: EngineIo) -> Result<u32> {
        let name = format!("{id}.{exec_id}");
        let pid_file = self.dir.join(format!("{name}.pid"));
        let mut opts = ExecOpts::new().pid_file(&pid_file).detach(true);
        opts = match io {
            EngineIo::Pipes(pipes) => opts.io(pipes),
            EngineIo::Console(path) => opts.console_socket(path),
        };
        let log = self.dir.join(format!("{name}.log.json"));
        let ran = self.logging(&log)?.exec(id, spec, Some(&opts)).await;
        let ran = ran.map_err(|e| logged_error(runtime_error("exec", id, e), &log));
        let _ = std::fs::remove_file(&log);
        ran?;
        read_pid_file(&pid_file).await
    }

    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let opts = KillOpts::new().all(all);
        self.runc
            .kill(id, signal, Some(&opts))
            .await
            .map_err(|e| runtime_error("kill", id, e))
    }

    async fn delete(&self, id: &str) -> Result<()> {
        let _ = std::fs::remove_file(self.dir.join(format!("{id}.pid")));
        if !self.root.join(id).exists() {
            return Ok(());
        }
        let opts = DeleteOpts::new().force(true);
        self.runc
            .delete(id, Some(&opts))
            .await
            .map_err(|e| runtime_error("delete", id, e))
    }

    async fn pause(&self, id: &str) -> Result<()> {
        self.runc
            .pause(id)
            .await
            .map_err(|e| runtime_error("pause", id, e))
    }

    async fn resume(&self, id: &str) -> Result<()> {
        self.runc
            .resume(id)
            .await
            .map_err(|e| runtime_error("resume", id, e))
    }

    async fn ps(&self, id: &str) -> Result<Vec<u32>> {
        let pids = self
            .runc
            .ps(id)
            .await
            .map_err(|e| runtime_error("ps", id, e))?;
        Ok(pids.into_iter().map(|pid| pid as u32).collect())
    }

    async fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        self.runc
            .update(id, resources)
            .await
            .map_err(|e| runtime_error("update", id, e))
    }
}
