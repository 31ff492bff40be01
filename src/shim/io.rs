//! Wires a process's streams to containerd's fifos.

use std::{
    fs::{File, OpenOptions},
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    time::Duration,
};

use containerd_shim::asynchronous::io::IoTasks;
use tokio::io::AsyncRead;
use tokio::time::Instant;

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

/// How long to wait for containerd's reader on an output fifo before copying anyway.
const READER_WAIT: Duration = Duration::from_secs(5);

/// How long an exit may wait for containerd to read what is left in an output fifo.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// Starts copying between the process's streams and the paths containerd gave; returns the
/// shim's watch on each output fifo.
pub async fn connect(
    tasks: &IoTasks,
    io: ProcessIo,
    stdin: &str,
    stdout: &str,
    stderr: &str,
) -> Result<Vec<OutputFifo>, Error> {
    if let (Some(writer), false) = (io.stdin, stdin.is_empty()) {
        tasks
            .copy_from_fifo(stdin, writer)
            .map_err(|e| open_error(stdin, e))?;
    }
    let mut watches = Vec::new();
    for (reader, target) in [(io.stdout, stdout), (io.stderr, stderr)] {
        if let Some(reader) = reader {
            watches.extend(output(tasks, reader, target).await?);
        }
    }
    Ok(watches)
}

/// Copies one output stream to a fifo, once containerd reads it.
async fn output(
    tasks: &IoTasks,
    reader: Box<dyn AsyncRead + Send + Unpin>,
    target: &str,
) -> Result<Option<OutputFifo>, Error> {
    if target.is_empty() {
        return Ok(None);
    }
    if target.contains("://") {
        return Err(Error::Unsupported(target.to_string()));
    }
    let watch = OutputFifo::open(target).await;
    tasks
        .copy_to_fifo(reader, target)
        .map_err(|e| open_error(target, e))?;
    Ok(watch)
}

/// The shim's own writer on an output fifo, opened once containerd reads it and kept until
/// the process's exit is published.
///
/// The copy holds the fifo open for reading itself, so that a containerd restart cannot cost
/// output. Without this writer, a short-lived process's output could be written and the fifo
/// closed again before a slow reader ever opened it; and a client that stops reading when it
/// hears of the exit (as `ctr` 1.6 does) could lose what it had not read yet.
pub struct OutputFifo(File);

impl OutputFifo {
    /// Opens the fifo for writing as soon as a reader has it open (ENXIO until then).
    async fn open(path: &str) -> Option<Self> {
        let deadline = Instant::now() + READER_WAIT;
        while Instant::now() < deadline {
            match OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
            {
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                opened => return opened.ok().map(Self),
            }
        }
        None
    }

    /// Waits (a bounded time) until the reader has taken everything left in the fifo.
    pub async fn drained(&self) {
        let deadline = Instant::now() + DRAIN_WAIT;
        while unread(&self.0) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Bytes waiting in a pipe or fifo (FIONREAD).
fn unread(fifo: &File) -> usize {
    let mut bytes: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which outlives the call.
    let rc = unsafe { libc::ioctl(fifo.as_raw_fd(), libc::FIONREAD, &mut bytes) };
    if rc < 0 {
        0
    } else {
        bytes as usize
    }
}

fn open_error(path: &str, e: impl std::fmt::Display) -> Error {
    Error::Open {
        path: path.to_string(),
        message: e.to_string(),
    }
}
