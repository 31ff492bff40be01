//! The OCI runtime binary (runc, crun) through the `runc` crate: the client, its errors, and
//! the spawner that learns each runtime command's exit from the shim's reaper.

use std::{os::unix::process::ExitStatusExt, path::Path, process::ExitStatus, sync::Arc};

use async_trait::async_trait;
use containerd_shim::{
    asynchronous::monitor::{monitor_subscribe, monitor_unsubscribe},
    monitor::{Subject, Topic},
};
use runc::{io::PipedIo, options::GlobalOpts, Command, Runc, Spawner};
use tokio::io::AsyncReadExt;

use super::super::{Error, Result};

/// A process's pipes, with /dev/null for every stream it does not get: a stream left to the
/// runtime command's defaults would be the capture pipe of the runtime's own output, which
/// the container would inherit and hold open.
#[derive(Debug)]
pub struct ProcessPipes(pub PipedIo);

#[async_trait]
impl runc::Io for ProcessPipes {
    fn stdin(&self) -> Option<Box<dyn tokio::io::AsyncWrite + Send + Sync + Unpin>> {
        self.0.stdin()
    }

    fn stdout(&self) -> Option<Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>> {
        self.0.stdout()
    }

    fn stderr(&self) -> Option<Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>> {
        self.0.stderr()
    }

    async fn set(&self, cmd: &mut Command) -> std::io::Result<()> {
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        self.0.set(cmd).await
    }

    async fn close_after_start(&self) {
        self.0.close_after_start().await
    }
}

/// Builds the runtime client for `binary`, resolved in PATH unless absolute.
pub(super) fn runtime(binary: &str, state: &Path, log: Option<&Path>) -> Result<Runc> {
    let mut opts = GlobalOpts::new().command(binary).root(state);
    if let Some(log) = log {
        opts = opts.log(log).log_json();
    }
    opts.custom_spawner(Arc::new(ReapedSpawner));
    opts.build().map_err(|e| runtime_error("find", binary, e))
}

/// A runtime client for a process without the shim's reaper (the `delete` action): it waits
/// for its commands itself.
pub(super) fn unreaped_runtime(binary: &str, state: &Path) -> Result<Runc> {
    GlobalOpts::new()
        .command(binary)
        .root(state)
        .build()
        .map_err(|e| runtime_error("find", binary, e))
}

pub(super) fn runtime_error(op: &'static str, id: &str, e: runc::error::Error) -> Error {
    let message = match e {
        runc::error::Error::CommandFailed {
            stdout,
            stderr,
            status,
        } => {
            let text = format!("{} {}", stderr.trim(), stdout.trim());
            format!("{} ({status})", text.trim())
        }
        other => other.to_string(),
    };
    Error::Runtime {
        op,
        id: id.to_string(),
        message,
    }
}

/// Replaces a runtime error's text with the errors the runtime logged, which say why
/// (its stderr belongs to the container and is not captured).
pub(super) fn logged_error(error: Error, log: &Path) -> Error {
    let Error::Runtime { op, id, message } = error else {
        return error;
    };
    // One JSON object per entry: on a line each (runc), or pretty-printed over several (crun).
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let logged: Vec<String> = serde_json::Deserializer::from_str(&text)
        .into_iter::<serde_json::Value>()
        .map_while(|entry| entry.ok())
        .filter(|entry| entry["level"] == "error")
        .filter_map(|entry| entry["msg"].as_str().map(str::to_string))
        .collect();
    let message = if logged.is_empty() {
        message
    } else {
        logged.join("; ")
    };
    Error::Runtime { op, id, message }
}

/// Reads a pid file the runtime wrote, then removes it.
pub(super) async fn read_pid_file(path: &Path) -> Result<u32> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| Error::Io {
            context: format!("read pid file {}", path.display()),
            source,
        })?;
    let _ = tokio::fs::remove_file(path).await;
    text.trim().parse().map_err(|_| Error::Io {
        context: format!("pid file {}", path.display()),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, text.clone()),
    })
}

/// Runs runtime commands and learns their exit from the reaper, which owns `waitpid`.
#[derive(Debug)]
struct ReapedSpawner;

#[async_trait]
impl Spawner for ReapedSpawner {
    async fn execute(&self, cmd: Command) -> runc::Result<(ExitStatus, u32, String, String)> {
        reaped_output(cmd).await.map_err(|e| match e {
            ReapedError::Spawn(e) => runc::error::Error::ProcessSpawnFailed(e),
            ReapedError::Monitor(e) => runc::error::Error::Other(Box::new(e)),
        })
    }
}

/// Why [`reaped_output`] could not run its command.
#[derive(Debug, thiserror::Error)]
pub enum ReapedError {
    /// The command did not start.
    #[error("start: {0}")]
    Spawn(std::io::Error),
    /// The exit monitor could not be joined.
    #[error("the exit monitor: {0}")]
    Monitor(containerd_shim::Error),
}

/// Runs `cmd` to its end in a process whose reaper collects every child (the shim, the
/// guest's PID 1): its exit comes from the reaper's notification, as waiting for it would
/// race the reaper (ECHILD). Its status, pid, stdout and stderr.
pub async fn reaped_output(
    mut cmd: Command,
) -> std::result::Result<(ExitStatus, u32, String, String), ReapedError> {
    let mut subscription = monitor_subscribe(Topic::Pid)
        .await
        .map_err(ReapedError::Monitor)?;
    let child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = monitor_unsubscribe(subscription.id).await;
            return Err(ReapedError::Spawn(e));
        }
    };
    let pid = child.id().unwrap_or_default();
    let read = |stream: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>| async move {
        let mut text = String::new();
        if let Some(mut stream) = stream {
            let mut bytes = Vec::new();
            let _ = stream.read_to_end(&mut bytes).await;
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    };
    let mut child = child;
    let stdout = child.stdout.take().map(|s| Box::new(s) as _);
    let stderr = child.stderr.take().map(|s| Box::new(s) as _);
    let wait = async {
        while let Some(event) = subscription.rx.recv().await {
            if matches!(event.subject, Subject::Pid(p) if p as u32 == pid) {
                return event.exit_code;
            }
        }
        -1
    };
    let (stdout, stderr, code) = tokio::join!(read(stdout), read(stderr), wait);
    let _ = monitor_unsubscribe(subscription.id).await;
    Ok((
        ExitStatus::from_raw((code & 0xff) << 8),
        pid,
        stdout,
        stderr,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtimes_logged_errors_explain_its_failure_in_either_format() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log.json");
        let failed = || Error::Runtime {
            op: "create",
            id: "c1".into(),
            message: "(exit status: 1)".into(),
        };
        let message = |error: Error| error.to_string();
        // runc: an entry a line.
        std::fs::write(
            &log,
            "{\"level\":\"info\",\"msg\":\"starting\"}\n{\"level\":\"error\",\"msg\":\"no such file\"}\n",
        )
        .unwrap();
        assert_eq!(
            message(logged_error(failed(), &log)),
            "create c1: no such file"
        );
        // crun: pretty-printed entries.
        std::fs::write(
            &log,
            "{\n  \"msg\": \"sysctl `net.ipv4.ping_group_range` requires a new network namespace\",\n  \"level\": \"error\"\n}",
        )
        .unwrap();
        assert!(message(logged_error(failed(), &log)).contains("requires a new network namespace"));
        // Nothing logged: the runtime's own words stay.
        std::fs::write(&log, "").unwrap();
        assert_eq!(
            message(logged_error(failed(), &log)),
            "create c1: (exit status: 1)"
        );
    }
}
