//! Wires a process's streams to containerd's fifos.

use containerd_shim::asynchronous::io::IoTasks;
use tokio::io::AsyncRead;

use crate::sandbox::ProcessIo;

/// Errors wiring a process's streams.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A fifo or file could not be opened.
    #[error("stdio {path}: {message}")]
    Open {
        /// The path containerd gave.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// containerd asked for a log driver vessel does not support.
    #[error("stdio {0}: unsupported URI scheme (accepted: a fifo path)")]
    Unsupported(String),
}

/// Starts copying between the process's streams and the paths containerd gave.
pub fn connect(
    tasks: &IoTasks,
    io: ProcessIo,
    stdin: &str,
    stdout: &str,
    stderr: &str,
) -> Result<(), Error> {
    if let (Some(writer), false) = (io.stdin, stdin.is_empty()) {
        tasks
            .copy_from_fifo(stdin, writer)
            .map_err(|e| open_error(stdin, e))?;
    }
    if let Some(reader) = io.stdout {
        output(tasks, reader, stdout)?;
    }
    if let Some(reader) = io.stderr {
        output(tasks, reader, stderr)?;
    }
    Ok(())
}

/// Copies one output stream to a fifo.
fn output(
    tasks: &IoTasks,
    reader: Box<dyn AsyncRead + Send + Unpin>,
    target: &str,
) -> Result<(), Error> {
    if target.is_empty() {
        return Ok(());
    }
    if target.contains("://") {
        return Err(Error::Unsupported(target.to_string()));
    }
    tasks
        .copy_to_fifo(reader, target)
        .map_err(|e| open_error(target, e))
}

fn open_error(path: &str, e: impl std::fmt::Display) -> Error {
    Error::Open {
        path: path.to_string(),
        message: e.to_string(),
    }
}
