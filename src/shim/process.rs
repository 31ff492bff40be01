//! A process the shim tracks: a container's init process or an exec'd one.

use std::time::SystemTime;

use containerd_shim::protos::api::Status;

use crate::oci::State;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::watch;

/// How a process ended.
#[derive(Debug, Clone, Copy)]
pub struct ExitInfo {
    /// Exit status (128 + signal when killed).
    pub status: u32,
    /// When it exited.
    pub at: SystemTime,
}

impl ExitInfo {
    /// The exit time as a protobuf timestamp.
    pub fn timestamp(&self) -> Timestamp {
        to_timestamp(self.at)
    }
}

/// The containerd task status of a state, through its OCI state name.
pub fn task_status(state: State) -> Status {
    match state.oci_state() {
        "created" => Status::CREATED,
        "running" => Status::RUNNING,
        "stopped" => Status::STOPPED,
        "paused" => Status::PAUSED,
        _ => Status::UNKNOWN,
    }
}

/// Converts a system time into a protobuf timestamp.
pub fn to_timestamp(at: SystemTime) -> Timestamp {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
        ..Default::default()
    }
}

/// The stdio containerd asked for: fifo paths (empty when unused) and the terminal flag.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    /// stdin fifo.
    pub stdin: String,
    /// stdout fifo.
    pub stdout: String,
    /// stderr fifo.
    pub stderr: String,
    /// Whether the process has a terminal.
    pub terminal: bool,
}

impl StdioPaths {
    /// The streams of a container's init process.
    pub fn of_create(req: &containerd_shim_protos::api::CreateTaskRequest) -> Self {
        Self {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        }
    }

    /// The streams of an exec process.
    pub fn of_exec(req: &containerd_shim_protos::api::ExecProcessRequest) -> Self {
        Self {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        }
    }
}

/// A tracked process.
pub struct Process {
    /// The pid the backend reports for it (0 before an exec process started).
    pub pid: u32,
    /// Lifecycle state.
    pub status: State,
    /// The streams requested.
    pub stdio: StdioPaths,
    /// The copies between the process and containerd's fifos, until its exit.
    pub streams: super::io::Streams,
    /// The exec'd process's OCI spec (None for init).
    pub spec: Option<oci_spec::runtime::Process>,
    exit: watch::Sender<Option<ExitInfo>>,
}

impl Process {
    /// A process not started yet.
    pub fn new(stdio: StdioPaths, spec: Option<oci_spec::runtime::Process>) -> Self {
        Self {
            pid: 0,
            status: State::Ready,
            stdio,
            streams: Default::default(),
            spec,
            exit: watch::channel(None).0,
        }
    }

    /// Its exit, once it happened.
    pub fn exit(&self) -> Option<ExitInfo> {
        *self.exit.borrow()
    }

    /// Records the exit and wakes every waiter.
    pub fn set_exited(&mut self, exit: ExitInfo) {
        self.status = State::Stopped;
        self.exit.send_replace(Some(exit));
    }

    /// A handle that resolves when the process exits.
    pub fn watch_exit(&self) -> watch::Receiver<Option<ExitInfo>> {
        self.exit.subscribe()
    }
}
