//! A process's streams on the host: pipes, or a terminal the OCI runtime hands over through a
//! console socket.

use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use runc::io::{IoOption, PipedIo};

use super::{
    super::{console::ConsoleSocket, Error, ProcessIo, Result, StdioWanted},
    engine::EngineIo,
    runtime::ProcessPipes,
};

/// How long the runtime may take to hand over a terminal after it succeeded.
const CONSOLE_WAIT: Duration = Duration::from_secs(10);

/// Numbers the console sockets of this shim.
static CONSOLES: AtomicU64 = AtomicU64::new(0);

/// Streams prepared for a process before the runtime creates it.
pub(super) enum PreparedIo {
    Pipes(Arc<ProcessPipes>),
    Console(ConsoleSocket),
}

impl PreparedIo {
    /// Pipes, or a console socket in `dir` (the sandbox's state directory).
    pub(super) fn new(stdio: StdioWanted, uid: u32, gid: u32, dir: &Path) -> Result<Self> {
        if stdio.terminal {
            // Short: a unix socket path has at most 107 bytes, and the directory holds a
            // 64-character CRI id.
            let serial = CONSOLES.fetch_add(1, Ordering::Relaxed);
            let path: PathBuf = dir.join(format!("tty{serial}.sock"));
            let socket = ConsoleSocket::bind(&path)
                .map_err(|e| Error::io(format!("console socket {}", path.display()), e))?;
            return Ok(Self::Console(socket));
        }
        let option = IoOption {
            open_stdin: stdio.stdin,
            open_stdout: stdio.stdout,
            open_stderr: stdio.stderr,
        };
        let pipes = PipedIo::new(uid, gid, &option).map_err(|e| Error::io("stdio pipes", e))?;
        Ok(Self::Pipes(Arc::new(ProcessPipes(pipes))))
    }

    /// The streams as the engine gives them to the process.
    pub(super) fn engine_io(&self) -> EngineIo {
        match self {
            Self::Pipes(p) => EngineIo::Pipes(p.clone()),
            Self::Console(c) => EngineIo::Console(c.path().to_path_buf()),
        }
    }

    /// Runs `launch` (the engine creating the process) and returns what it returned (the
    /// process's pid), the shim's ends of the process's streams, and the terminal's master
    /// when there is one (for resizes).
    pub(super) async fn launch<F, T>(
        self,
        stdio: StdioWanted,
        launch: F,
    ) -> Result<(T, ProcessIo, Option<File>)>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        let socket = match self {
            Self::Pipes(pipes) => {
                let launched = launch.await?;
                use runc::Io;
                let io = ProcessIo {
                    stdin: pipes.stdin().map(|w| w as _),
                    stdout: pipes.stdout().map(|r| r as _),
                    stderr: pipes.stderr().map(|r| r as _),
                };
                return Ok((launched, io, None));
            }
            Self::Console(socket) => socket,
        };
        let receive = socket.receive();
        tokio::pin!(launch, receive);
        // The runtime hands the terminal over before it returns, so once it succeeded the
        // connection is already queued; if it failed, nothing will ever connect.
        let (launched, master) = tokio::select! {
            ran = &mut launch => {
                let launched = ran?;
                let master = tokio::time::timeout(CONSOLE_WAIT, receive).await.unwrap_or_else(|_| {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the runtime did not hand over the terminal",
                    ))
                });
                (launched, master)
            }
            master = &mut receive => (launch.await?, master),
        };
        let master = master.map_err(|e| Error::io("receive the terminal from the runtime", e))?;
        let handle = master
            .try_clone()
            .map_err(|e| Error::io("duplicate the terminal", e))?;
        let pty = containerd_shim::asynchronous::io::Pty::new(master).map_err(|e| {
            Error::io(
                "register the terminal",
                std::io::Error::other(e.to_string()),
            )
        })?;
        let io = ProcessIo {
            stdin: stdio.stdin.then(|| Box::new(pty.clone()) as _),
            stdout: Some(Box::new(pty)),
            stderr: None,
        };
        Ok((launched, io, Some(handle)))
    }
}
