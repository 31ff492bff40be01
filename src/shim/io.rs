//! Wires a process's streams to containerd's fifos.
//!
//! stdin is copied by the containerd-shim crate's [`IoTasks`]. Each output stream has an
//! [`OutputRelay`] of its own, which knows how much containerd has taken: when the process
//! exits, its exit waits until containerd has read everything (no output is lost while a
//! reader is attached), but never longer than [`STALL_LIMIT`] without the reader taking
//! anything: output nobody reads is dropped and counted, and the exit is published.

use std::{
    fs::{File, OpenOptions},
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use containerd_shim::asynchronous::io::IoTasks;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::unix::pipe,
    sync::oneshot,
    task::JoinHandle,
    time::Instant,
};

use super::process::StdioPaths;
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

/// After the process exited, how long its output may wait with nobody taking any of it
/// before the rest is dropped and the exit published.
pub const STALL_LIMIT: Duration = Duration::from_secs(1);

/// After the process exited, how long its output may keep flowing at all (a background
/// process that inherited the stream can write forever).
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// How often the fifo is looked at while the output drains.
const DRAIN_POLL: Duration = Duration::from_millis(2);

/// Bytes a copy moves at a time (as much as tokio's own copy: an idle shim stays small).
const COPY_BUFFER: usize = 8 * 1024;

/// How long the count of what is left unread in the process's stream may take.
const COUNT_LIMIT: Duration = Duration::from_millis(100);

/// A process's streams, copied to and from containerd's fifos.
#[derive(Default)]
pub struct Streams {
    input: IoTasks,
    outputs: Vec<OutputRelay>,
}

/// What became of a process's output once it exited.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Bytes containerd read.
    pub delivered: u64,
    /// Bytes nobody read, dropped so that the exit could be published.
    pub dropped: u64,
}

impl Streams {
    /// Starts copying between the process's streams and the fifos containerd gave.
    pub async fn connect(io: ProcessIo, paths: &StdioPaths) -> Result<Self, Error> {
        let streams = Self::default();
        if let (Some(writer), false) = (io.stdin, paths.stdin.is_empty()) {
            streams
                .input
                .copy_from_fifo(&paths.stdin, writer)
                .map_err(|e| open_error(&paths.stdin, e))?;
        }
        let mut outputs = Vec::new();
        for (reader, target) in [(io.stdout, &paths.stdout), (io.stderr, &paths.stderr)] {
            let (Some(reader), false) = (reader, target.is_empty()) else {
                continue;
            };
            match OutputRelay::start(reader, target).await {
                Ok(relay) => outputs.push(relay),
                Err(e) => {
                    streams.input.abort().await;
                    return Err(e);
                }
            }
        }
        Ok(Self { outputs, ..streams })
    }

    /// Ends the process's input (CloseIO).
    pub fn close_input(&self) {
        self.input.close_input();
    }

    /// After the process exited: waits until containerd has read its output, or until
    /// nobody took any of it for [`STALL_LIMIT`], then stops every copy.
    pub async fn finish(self) -> Delivery {
        let mut total = Delivery::default();
        for relay in self.outputs {
            let delivery = relay.finish().await;
            total.delivered += delivery.delivered;
            total.dropped += delivery.dropped;
        }
        self.input.abort().await;
        total
    }

    /// Stops every copy at once.
    pub async fn abort(&mut self) {
        self.input.abort().await;
        for relay in self.outputs.drain(..) {
            relay.task.abort();
        }
    }
}

/// What a relay's copy has done so far.
#[derive(Default)]
struct Progress {
    /// Bytes written into the fifo.
    copied: AtomicU64,
    /// The process's stream ended (every writer closed it).
    ended: AtomicBool,
}

/// One output stream of a process, copied into containerd's fifo.
struct OutputRelay {
    /// The shim's own read end of the fifo: the fifo keeps working while containerd's reader
    /// is away (a containerd restart), and tells how much is still unread.
    hold: File,
    progress: Arc<Progress>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<u64>,
}

impl OutputRelay {
    /// Starts copying `source` into the fifo `target`, once containerd reads it (or after
    /// [`READER_WAIT`]): a short-lived process's output is not written into a fifo nobody
    /// opened yet.
    async fn start(
        source: Box<dyn AsyncRead + Send + Unpin>,
        target: &str,
    ) -> Result<OutputRelay, Error> {
        if target.contains("://") {
            return Err(Error::Unsupported(target.to_string()));
        }
        let writer = wait_for_reader(target).await;
        let hold = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(target)
            .map_err(|e| open_error(target, e))?;
        let sink = match writer {
            Some(writer) => pipe::Sender::from_file(writer),
            None => pipe::OpenOptions::new().open_sender(target),
        }
        .map_err(|e| open_error(target, e))?;
        let progress = Arc::new(Progress::default());
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(copy(source, sink, progress.clone(), stopped));
        Ok(OutputRelay {
            hold,
            progress,
            stop: Some(stop),
            task,
        })
    }

    /// Bytes containerd has read so far.
    fn taken(&self) -> u64 {
        self.progress
            .copied
            .load(Ordering::Acquire)
            .saturating_sub(unread(&self.hold))
    }

    /// Waits until containerd has read everything, or has taken nothing for
    /// [`STALL_LIMIT`] (or [`DRAIN_LIMIT`] passed); then stops the copy and counts what
    /// was not delivered.
    async fn finish(mut self) -> Delivery {
        let started = Instant::now();
        let mut taken = self.taken();
        let mut moved = started;
        while !(self.progress.ended.load(Ordering::Acquire) && unread(&self.hold) == 0) {
            let now = Instant::now();
            if now - moved >= STALL_LIMIT || now - started >= DRAIN_LIMIT {
                break;
            }
            tokio::time::sleep(DRAIN_POLL).await;
            let now_taken = self.taken();
            if now_taken != taken {
                taken = now_taken;
                moved = Instant::now();
            }
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let not_copied = (&mut self.task).await.unwrap_or_default();
        Delivery {
            delivered: self.taken(),
            dropped: unread(&self.hold) + not_copied,
        }
    }
}

/// Copies `source` into `sink` until the source ends, or until told to stop; then returns
/// the bytes it did not copy (read but not written, and what was left in the source).
async fn copy(
    mut source: Box<dyn AsyncRead + Send + Unpin>,
    mut sink: pipe::Sender,
    progress: Arc<Progress>,
    mut stop: oneshot::Receiver<()>,
) -> u64 {
    let mut buffer = vec![0u8; COPY_BUFFER];
    loop {
        let read = tokio::select! {
            biased;
            _ = &mut stop => return count_rest(&mut source).await,
            read = source.read(&mut buffer) => read,
        };
        // EOF, or EIO from a terminal whose last holder closed it.
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut written = 0;
        while written < n {
            tokio::select! {
                biased;
                _ = &mut stop => {
                    return (n - written) as u64 + count_rest(&mut source).await;
                }
                result = sink.write(&buffer[written..n]) => match result {
                    Ok(0) | Err(_) => return (n - written) as u64,
                    Ok(count) => {
                        written += count;
                        progress.copied.fetch_add(count as u64, Ordering::AcqRel);
                    }
                },
            }
        }
    }
    progress.ended.store(true, Ordering::Release);
    // The sink stays open until the relay finishes, so that containerd's reader does not see
    // the end of the output before the exit.
    let _ = stop.await;
    drop(sink);
    0
}

/// Reads what is left in a stream (for a bounded time) to count it.
async fn count_rest(source: &mut (dyn AsyncRead + Send + Unpin)) -> u64 {
    let deadline = Instant::now() + COUNT_LIMIT;
    let mut buffer = vec![0u8; COPY_BUFFER];
    let mut count = 0;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, source.read(&mut buffer)).await {
        if n == 0 {
            break;
        }
        count += n as u64;
    }
    count
}

/// Opens the fifo for writing as soon as a reader has it open (ENXIO until then).
async fn wait_for_reader(path: &str) -> Option<File> {
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
            opened => return opened.ok(),
        }
    }
    None
}

/// Bytes waiting in a pipe or fifo (FIONREAD).
fn unread(fifo: &File) -> u64 {
    let mut bytes: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which outlives the call.
    let rc = unsafe { libc::ioctl(fifo.as_raw_fd(), libc::FIONREAD, &mut bytes) };
    if rc < 0 {
        0
    } else {
        bytes as u64
    }
}

fn open_error(path: &str, e: impl std::fmt::Display) -> Error {
    Error::Open {
        path: path.to_string(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use nix::{sys::stat::Mode, unistd::mkfifo};

    use super::*;

    fn fifo(dir: &tempfile::TempDir, name: &str) -> String {
        let path = dir.path().join(name);
        mkfifo(&path, Mode::S_IRWXU).unwrap();
        path.display().to_string()
    }

    /// The read end of a fifo, as containerd opens it.
    fn reader(path: &str) -> File {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .unwrap()
    }

    /// A process's output: the shim's read end, and the process's write end.
    fn output() -> (Box<dyn AsyncRead + Send + Unpin>, std::io::PipeWriter) {
        let (read, write) = std::io::pipe().unwrap();
        let read = pipe::Receiver::from_owned_fd(read.into()).unwrap();
        (Box::new(read), write)
    }

    fn paths(stdout: &str) -> StdioPaths {
        StdioPaths {
            stdout: stdout.to_string(),
            ..Default::default()
        }
    }

    fn streams(source: Box<dyn AsyncRead + Send + Unpin>) -> ProcessIo {
        ProcessIo {
            stdout: Some(source),
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn everything_is_delivered_to_a_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(&dir, "stdout");
        let mut containerd = reader(&path);
        let (source, mut process) = output();
        let streams = Streams::connect(streams(source), &paths(&path))
            .await
            .unwrap();
        // More than a pipe and a fifo hold together: the copy waits for the reader.
        let written = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            process.write_all(&vec![b'x'; 300_000]).unwrap();
        });
        let read = tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            let mut buffer = [0u8; 4096];
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while all.len() < 300_000 && std::time::Instant::now() < deadline {
                match containerd.read(&mut buffer) {
                    Ok(n) => all.extend_from_slice(&buffer[..n]),
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
            all.len()
        });
        // A copy that stalls fails the test instead of hanging it.
        let (delivery, read) = tokio::time::timeout(Duration::from_secs(30), async {
            written.await.unwrap();
            let delivery = streams.finish().await;
            (delivery, read.await.unwrap())
        })
        .await
        .expect("the output is copied");
        assert_eq!(read, 300_000);
        assert_eq!(
            delivery,
            Delivery {
                delivered: 300_000,
                dropped: 0
            }
        );
    }

    /// A terminal ends with EIO, not EOF: what the process wrote just before it exited must
    /// still be copied (a copy that reads ahead of its writes loses that last chunk).
    #[tokio::test]
    async fn the_last_output_of_a_terminal_that_hung_up_is_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(&dir, "stdout");
        let mut containerd = reader(&path);
        let pty = nix::pty::openpty(None, None).unwrap();
        let mut slave = File::from(pty.slave);
        std::io::Write::write_all(&mut slave, b"hello\n").unwrap();
        // The process exits before the shim reads its terminal.
        drop(slave);
        let master = containerd_shim::asynchronous::io::Pty::new(File::from(pty.master)).unwrap();
        let streams = Streams::connect(streams(Box::new(master)), &paths(&path))
            .await
            .unwrap();
        let mut out = Vec::new();
        for _ in 0..200 {
            let mut buffer = [0u8; 64];
            if let Ok(n) = containerd.read(&mut buffer) {
                out.extend_from_slice(&buffer[..n]);
            }
            if out.ends_with(b"\r\n") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(out, b"hello\r\n");
        assert_eq!(streams.finish().await.dropped, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn output_nobody_reads_is_dropped_and_counted_within_the_stall_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(&dir, "stdout");
        // containerd opened the fifo, read a little, and went away (`ctr run -d`).
        let containerd = reader(&path);
        let (source, mut process) = output();
        let streams = Streams::connect(streams(source), &paths(&path))
            .await
            .unwrap();
        drop(containerd);
        let writer = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut written = 0u64;
            let line = b"tick tick tick\n";
            // Fill the fifo and the pipe until the writer blocks, then "die".
            let fd = std::os::fd::AsRawFd::as_raw_fd(&process);
            nix::fcntl::fcntl(
                unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            )
            .unwrap();
            let blocked = std::time::Instant::now() + Duration::from_millis(300);
            while std::time::Instant::now() < blocked {
                match process.write(line) {
                    Ok(n) => written += n as u64,
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
            written
        });
        let written = writer.await.unwrap();
        let started = Instant::now();
        let delivery = streams.finish().await;
        let took = started.elapsed();
        assert!(
            took >= STALL_LIMIT && took < STALL_LIMIT + Duration::from_millis(500),
            "{took:?}"
        );
        assert_eq!(delivery.delivered + delivery.dropped, written);
        assert!(delivery.dropped > 64 * 1024, "{delivery:?}");
    }
}
