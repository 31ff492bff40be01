//! Receives a terminal's master side from an OCI runtime through `--console-socket`.

use std::{
    fs::File,
    io::{self, IoSliceMut},
    os::fd::{AsRawFd, FromRawFd, RawFd},
    path::{Path, PathBuf},
};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::net::UnixListener;

/// A unix socket the OCI runtime connects to, to hand over the pty master.
pub struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    /// Listens at `path`, replacing a stale socket left there.
    pub fn bind(path: &Path) -> io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            listener,
        })
    }

    /// Where the runtime must connect.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts the runtime's connection and takes the file descriptor it sends.
    pub async fn receive(&self) -> io::Result<File> {
        let (stream, _) = self.listener.accept().await?;
        loop {
            stream.readable().await?;
            match receive_fd(stream.as_raw_fd()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads one message from `socket` and returns the descriptor it carries.
fn receive_fd(socket: RawFd) -> io::Result<File> {
    let mut name = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        socket,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed `fd` in this process for us alone.
                return Ok(unsafe { File::from_raw_fd(fd) });
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "console socket message carried no file descriptor",
    ))
}

/// Sets the window size of the terminal whose master is `master`.
pub fn resize(master: &File, width: u32, height: u32) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: u16::try_from(height).unwrap_or(u16::MAX),
        ws_col: u16::try_from(width).unwrap_or(u16::MAX),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
