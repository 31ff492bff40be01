//! Where the agent serves: a virtio-serial port of the guest (one connection at a time, opened
//! again when the host's side goes away), or a unix socket (the agent as a host process).

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use tokio::{
    io::{unix::AsyncFd, AsyncRead, AsyncWrite, ReadBuf},
    sync::oneshot,
};
use ttrpc::r#async::transport::Listener;

/// How long the agent waits before opening the port again after the host's side went away:
/// while nobody is connected a read ends at once.
const REOPEN_PAUSE: Duration = Duration::from_millis(20);

/// The device of the virtio-serial port named `name` (`/sys/class/virtio-ports/*/name`).
pub fn find_port(name: &str) -> io::Result<PathBuf> {
    for entry in std::fs::read_dir("/sys/class/virtio-ports")? {
        let entry = entry?;
        let named = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if named.trim() == name {
            return Ok(Path::new("/dev").join(entry.file_name()));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no virtio-serial port named {name:?}"),
    ))
}

/// One connection over the port: the open device, and a signal to the listener when ttrpc
/// drops it, saying whether anything came over it.
struct PortConnection {
    port: AsyncFd<File>,
    received: bool,
    closed: Option<oneshot::Sender<bool>>,
}

impl Drop for PortConnection {
    fn drop(&mut self) {
        if let Some(closed) = self.closed.take() {
            let _ = closed.send(self.received);
        }
    }
}

impl AsyncRead for PortConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.port.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|port| port.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PortConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.port.poll_write_ready(cx))?;
            match guard.try_io(|port| port.get_ref().write(data)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn open_port(path: &Path) -> io::Result<AsyncFd<File>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    // SAFETY: the AsyncFd owns the File, so the descriptor stays open and the same for as
    // long as it is registered.
    unsafe { AsyncFd::register(file) }.map_err(io::Error::from)
}

/// The connections of the serial port at `path`: the next one opens once ttrpc dropped the
/// last (a broken or closed stream), so a host that connects again is served again. While no
/// host is connected a read ends at once; such empty connections are not logged.
pub fn serial_listener(path: PathBuf) -> Listener {
    let connections =
        futures::stream::unfold(None, move |previous: Option<oneshot::Receiver<bool>>| {
            let path = path.clone();
            async move {
                if let Some(closed) = previous {
                    if closed.await.unwrap_or(false) {
                        log::info!("host connection on {} ended", path.display());
                    }
                    tokio::time::sleep(REOPEN_PAUSE).await;
                }
                let (closed_sender, closed) = oneshot::channel();
                let connection = open_port(&path).map(|port| PortConnection {
                    port,
                    received: false,
                    closed: Some(closed_sender),
                });
                if let Err(e) = &connection {
                    log::error!("open {}: {e}", path.display());
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    return Some((connection, None));
                }
                Some((connection, Some(closed)))
            }
        });
    Listener::new(connections)
}
