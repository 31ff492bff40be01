//! The `linux` backend: containers as host processes in namespaces, created by an OCI runtime
//! binary (runc by default, crun selectable) through the `runc` crate.
//!
//! Container processes are reparented to the shim (a subreaper); the containerd-shim crate's
//! reaper collects them and this backend turns their pids into [`Exit`]s; each container's
//! memory cgroup is watched for OOM kills.

use std::{
    collections::HashMap,
    fs::File,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::ExitStatus,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use async_trait::async_trait;
use containerd_shim::{
    asynchronous::monitor::{monitor_subscribe, monitor_unsubscribe},
    cgroup,
    monitor::{Subject, Topic},
    util::convert_to_any,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use oci_spec::runtime::{LinuxResources, Process};
use runc::{
    io::{IoOption, PipedIo},
    options::{CreateOpts, DeleteOpts, ExecOpts, GlobalOpts, KillOpts},
    Command, Runc, Spawner,
};
use tokio::{
    io::AsyncReadExt,
    sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender},
};

use super::{
    console::{self, ConsoleSocket},
    oom, ContainerRequest, Error, Event, Exit, ProcessIo, Result, Sandbox, Started, StdioWanted,
};

/// How many exits of not (yet) known pids are remembered, for a process that exits before
/// the runtime has told us its pid.
const UNCLAIMED_EXITS: usize = 1024;

/// How long such an exit is remembered.
const UNCLAIMED_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// How long the runtime may take to hand over a terminal after it succeeded.
const CONSOLE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Numbers the console sockets of this shim.
static CONSOLES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The linux sandbox backend.
pub struct LinuxSandbox {
    runc: Runc,
    binary: String,
    state: PathBuf,
    tracked: Arc<Mutex<Tracker>>,
    events: Mutex<Option<UnboundedReceiver<Event>>>,
    processes: Mutex<HashMap<(String, String), u32>>,
    consoles: Mutex<HashMap<(String, String), File>>,
    oom_watchers: Mutex<HashMap<String, tokio::task::AbortHandle>>,
}

/// Maps reaped pids to the processes they belong to.
struct Tracker {
    processes: HashMap<u32, (String, String)>,
    unclaimed: Vec<(u32, u32, SystemTime)>,
    sender: UnboundedSender<Event>,
}

impl Tracker {
    /// Records that `pid` is `(container, exec)`, launched at `since`; emits its exit at once
    /// if it already died (an exit of the same pid from before `since` was another process).
    fn track(&mut self, pid: u32, container_id: &str, exec_id: &str, since: SystemTime) {
        if let Some(index) = self
            .unclaimed
            .iter()
            .position(|(p, _, at)| *p == pid && *at >= since)
        {
            let (_, status, at) = self.unclaimed.swap_remove(index);
            self.emit(pid, container_id.into(), exec_id.into(), status, at);
        } else {
            self.processes
                .insert(pid, (container_id.into(), exec_id.into()));
        }
    }

    /// Handles the reaper's news that `pid` exited with `status`.
    fn reaped(&mut self, pid: u32, status: u32) {
        let at = SystemTime::now();
        match self.processes.remove(&pid) {
            Some((container_id, exec_id)) => self.emit(pid, container_id, exec_id, status, at),
            None => {
                let horizon = at
                    .checked_sub(UNCLAIMED_FOR)
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                self.unclaimed.retain(|(_, _, seen)| *seen >= horizon);
                if self.unclaimed.len() >= UNCLAIMED_EXITS {
                    self.unclaimed.remove(0);
                }
                self.unclaimed.push((pid, status, at));
            }
        }
    }

    fn emit(&self, pid: u32, container_id: String, exec_id: String, status: u32, at: SystemTime) {
        let _ = self.sender.send(Event::Exit(Exit {
            container_id,
            exec_id,
            pid,
            status,
            at,
        }));
    }
}

impl LinuxSandbox {
    /// A backend driving the OCI runtime `binary` with its state under `state`
    /// (one directory per containerd namespace).
    pub async fn new(binary: &str, state: &Path) -> Result<Self> {
        std::fs::create_dir_all(state).map_err(|source| Error::Io {
            context: format!("create runtime state dir {}", state.display()),
            source,
        })?;
        let runc = runtime(binary, state, None)?;
        let (sender, receiver) = unbounded_channel();
        let tracked = Arc::new(Mutex::new(Tracker {
            processes: HashMap::new(),
            unclaimed: Vec::new(),
            sender,
        }));
        watch_exits(tracked.clone()).await?;
        Ok(Self {
            runc,
            binary: binary.to_string(),
            state: state.to_path_buf(),
            tracked,
            events: Mutex::new(Some(receiver)),
            processes: Mutex::new(HashMap::new()),
            consoles: Mutex::new(HashMap::new()),
            oom_watchers: Mutex::new(HashMap::new()),
        })
    }

    /// Prepares the streams of a process about to be created: pipes, or a console socket.
    fn prepare_io(&self, stdio: StdioWanted, uid: u32, gid: u32) -> Result<PreparedIo> {
        if stdio.terminal {
            // Short: CRI ids are 64 characters, a unix socket path at most 107 bytes.
            let serial = CONSOLES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = self
                .state
                .join(format!("pty-{}-{serial}.sock", std::process::id()));
            let socket = ConsoleSocket::bind(&path).map_err(|source| Error::Io {
                context: format!("console socket {}", path.display()),
                source,
            })?;
            return Ok(PreparedIo::Console(socket));
        }
        let option = IoOption {
            open_stdin: stdio.stdin,
            open_stdout: stdio.stdout,
            open_stderr: stdio.stderr,
        };
        let pipes = PipedIo::new(uid, gid, &option).map_err(|source| Error::Io {
            context: "create stdio pipes".into(),
            source,
        })?;
        Ok(PreparedIo::Pipes(Arc::new(ProcessPipes(pipes))))
    }

    /// Runs `launch` (the runtime command creating the process) and returns the shim's ends
    /// of the process's streams; a terminal is received while the runtime runs.
    async fn launch_with_io<F>(
        &self,
        prepared: PreparedIo,
        stdio: StdioWanted,
        key: (String, String),
        launch: F,
    ) -> Result<ProcessIo>
    where
        F: std::future::Future<Output = Result<()>>,
    {
        match prepared {
            PreparedIo::Pipes(pipes) => {
                launch.await?;
                use runc::Io;
                Ok(ProcessIo {
                    stdin: pipes.stdin().map(|w| w as _),
                    stdout: pipes.stdout().map(|r| r as _),
                    stderr: pipes.stderr().map(|r| r as _),
                })
            }
            PreparedIo::Console(socket) => {
                let receive = socket.receive();
                tokio::pin!(launch, receive);
                // The runtime hands the terminal over before it returns, so once it succeeded
                // the connection is already queued; if it failed, nothing will ever connect.
                let master = tokio::select! {
                    ran = &mut launch => {
                        ran?;
                        tokio::time::timeout(CONSOLE_WAIT, receive)
                            .await
                            .unwrap_or_else(|_| Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "the runtime did not hand over the terminal",
                            )))
                    }
                    master = &mut receive => { let master = master; launch.await?; master }
                }
                .map_err(|source| Error::Io {
                    context: "receive the terminal from the runtime".into(),
                    source,
                })?;
                let handle = master.try_clone().map_err(|source| Error::Io {
                    context: "duplicate the terminal".into(),
                    source,
                })?;
                let pty =
                    containerd_shim::asynchronous::io::Pty::new(master).map_err(|e| Error::Io {
                        context: "register the terminal".into(),
                        source: std::io::Error::other(e.to_string()),
                    })?;
                self.lock_consoles().insert(key, handle);
                Ok(ProcessIo {
                    stdin: stdio.stdin.then(|| Box::new(pty.clone()) as _),
                    stdout: Some(Box::new(pty)),
                    stderr: None,
                })
            }
        }
    }

    fn lock_consoles(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), File>> {
        self.consoles.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_processes(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), u32>> {
        self.processes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers the pid of a process the runtime started at `since` and watches for its exit.
    fn track(&self, pid: u32, container_id: &str, exec_id: &str, since: SystemTime) {
        self.lock_processes()
            .insert((container_id.to_string(), exec_id.to_string()), pid);
        self.lock_tracker().track(pid, container_id, exec_id, since);
    }

    fn lock_tracker(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reports the container's OOM kills until its cgroup is removed.
    fn watch_oom(&self, pid: u32, container_id: &str) {
        let sender = self.lock_tracker().sender.clone();
        let id = container_id.to_string();
        let watcher = tokio::spawn(async move {
            let report = || {
                let _ = sender.send(Event::Oom {
                    container_id: id.clone(),
                });
            };
            if let Err(e) = oom::watch(pid, report).await {
                log::debug!("no OOM events for {id}: {e}");
            }
        });
        self.lock_oom_watchers()
            .insert(container_id.to_string(), watcher.abort_handle());
    }

    fn lock_oom_watchers(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, tokio::task::AbortHandle>> {
        self.oom_watchers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pid_of(&self, id: &str, exec_id: &str) -> Result<u32> {
        self.lock_processes()
            .get(&(id.to_string(), exec_id.to_string()))
            .copied()
            .ok_or_else(|| Error::NotFound(format!("process {id} {exec_id}")))
    }
}

/// A process's pipes, with /dev/null for every stream it does not get: a stream left to the
/// runtime command's defaults would be the capture pipe of the runtime's own output, which
/// the container would inherit and hold open.
#[derive(Debug)]
struct ProcessPipes(PipedIo);

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

/// Streams prepared for a process before the runtime creates it.
enum PreparedIo {
    Pipes(Arc<ProcessPipes>),
    Console(ConsoleSocket),
}

impl PreparedIo {
    fn pipes(&self) -> Option<Arc<ProcessPipes>> {
        match self {
            PreparedIo::Pipes(p) => Some(p.clone()),
            PreparedIo::Console(_) => None,
        }
    }

    fn console(&self) -> Option<&Path> {
        match self {
            PreparedIo::Console(c) => Some(c.path()),
            PreparedIo::Pipes(_) => None,
        }
    }
}

/// Removes what is left of container `id` after its shim died: the `delete` action.
pub async fn force_delete(binary: &str, state: &Path, id: &str) -> Result<()> {
    let runc = GlobalOpts::new()
        .command(binary)
        .root(state)
        .build()
        .map_err(|e| runtime_error("find", binary, e))?;
    let opts = DeleteOpts::new().force(true);
    match runc.delete(id, Some(&opts)).await {
        Ok(()) => Ok(()),
        Err(e) => match runtime_error("delete", id, e) {
            error if error.to_string().contains("does not exist") => Ok(()),
            error => Err(error),
        },
    }
}

/// Builds the runtime client for `binary`, resolved in PATH unless absolute.
fn runtime(binary: &str, state: &Path, log: Option<&Path>) -> Result<Runc> {
    let mut opts = GlobalOpts::new().command(binary).root(state);
    if let Some(log) = log {
        opts = opts.log(log).log_json();
    }
    opts.custom_spawner(Arc::new(ReapedSpawner));
    opts.build().map_err(|e| runtime_error("find", binary, e))
}

fn runtime_error(op: &'static str, id: &str, e: runc::error::Error) -> Error {
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
fn logged_error(error: Error, log: &Path) -> Error {
    let Error::Runtime { op, id, message } = error else {
        return error;
    };
    let logged: Vec<String> = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
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
async fn read_pid_file(path: &Path) -> Result<u32> {
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

/// Forwards the reaper's exits to the tracker for as long as the shim lives.
async fn watch_exits(tracked: Arc<Mutex<Tracker>>) -> Result<()> {
    let mut subscription = monitor_subscribe(Topic::Pid).await.map_err(|e| Error::Io {
        context: "subscribe to process exits".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    tokio::spawn(async move {
        while let Some(event) = subscription.rx.recv().await {
            if let Subject::Pid(pid) = event.subject {
                tracked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .reaped(pid as u32, event.exit_code as u32);
            }
        }
    });
    Ok(())
}

/// Runs runtime commands and learns their exit from the reaper, which owns `waitpid`.
#[derive(Debug)]
struct ReapedSpawner;

#[async_trait]
impl Spawner for ReapedSpawner {
    async fn execute(&self, mut cmd: Command) -> runc::Result<(ExitStatus, u32, String, String)> {
        let mut subscription = monitor_subscribe(Topic::Pid)
            .await
            .map_err(|e| runc::error::Error::Other(Box::new(e)))?;
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = monitor_unsubscribe(subscription.id).await;
                return Err(runc::error::Error::ProcessSpawnFailed(e));
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
}

#[async_trait]
impl Sandbox for LinuxSandbox {
    async fn create(&self, req: &ContainerRequest) -> Result<Started> {
        let (uid, gid) = req
            .spec
            .process()
            .as_ref()
            .map(|p| (p.user().uid(), p.user().gid()))
            .unwrap_or((0, 0));
        let prepared = self.prepare_io(req.stdio, uid, gid)?;
        // `delete` after a shim crash must know which runtime to ask.
        let runtime_file = req.bundle.join(crate::shim::RUNTIME_FILE);
        std::fs::write(&runtime_file, self.binary.as_bytes()).map_err(|source| Error::Io {
            context: format!("write {}", runtime_file.display()),
            source,
        })?;
        let pid_file = req.bundle.join("init.pid");
        let mut opts = CreateOpts::new().pid_file(&pid_file);
        if let Some(pipes) = prepared.pipes() {
            opts = opts.io(pipes);
        }
        if let Some(path) = prepared.console() {
            opts = opts.console_socket(path);
        }
        let log = req.bundle.join("runtime.log.json");
        let runc = runtime(&self.binary, &self.state, Some(&log))?;
        let launch = async {
            let created = runc.create(&req.id, &req.bundle, Some(&opts)).await;
            created
                .map(|_| ())
                .map_err(|e| logged_error(runtime_error("create", &req.id, e), &log))
        };
        let key = (req.id.clone(), String::new());
        let since = SystemTime::now();
        let launched = self.launch_with_io(prepared, req.stdio, key, launch).await;
        let started = match launched {
            Ok(io) => read_pid_file(&pid_file)
                .await
                .map(|pid| Started { pid, io }),
            Err(e) => Err(e),
        };
        match started {
            Ok(started) => {
                self.track(started.pid, &req.id, "", since);
                self.watch_oom(started.pid, &req.id);
                Ok(started)
            }
            Err(e) => {
                // The runtime may have created the container before the step that failed.
                let _ = self.delete(&req.id).await;
                Err(e)
            }
        }
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.runc
            .start(id)
            .await
            .map(|_| ())
            .map_err(|e| runtime_error("start", id, e))
    }

    async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        spec: &Process,
        stdio: StdioWanted,
    ) -> Result<Started> {
        let name = format!("{id}.{exec_id}");
        let pid_file = self.state.join(format!("{name}.pid"));
        let prepared = self.prepare_io(stdio, spec.user().uid(), spec.user().gid())?;
        let mut opts = ExecOpts::new().pid_file(&pid_file).detach(true);
        if let Some(pipes) = prepared.pipes() {
            opts = opts.io(pipes);
        }
        if let Some(path) = prepared.console() {
            opts = opts.console_socket(path);
        }
        let log = self.state.join(format!("{name}.log.json"));
        let runc = runtime(&self.binary, &self.state, Some(&log))?;
        let launch = async {
            let ran = runc.exec(id, spec, Some(&opts)).await;
            ran.map_err(|e| logged_error(runtime_error("exec", id, e), &log))
        };
        let key = (id.to_string(), exec_id.to_string());
        let since = SystemTime::now();
        let io = self.launch_with_io(prepared, stdio, key, launch).await;
        let _ = std::fs::remove_file(&log);
        let io = io?;
        let pid = read_pid_file(&pid_file).await?;
        self.track(pid, id, exec_id, since);
        Ok(Started { pid, io })
    }

    async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        if exec_id.is_empty() {
            let opts = KillOpts::new().all(all);
            return self
                .runc
                .kill(id, signal, Some(&opts))
                .await
                .map_err(|e| match runtime_error("kill", id, e) {
                    error if error.to_string().contains("not running") => {
                        Error::NotFound(format!("process of {id}: already finished"))
                    }
                    error => error,
                });
        }
        let pid = self.pid_of(id, exec_id)?;
        // A reaped pid may already belong to another process.
        if !self.lock_tracker().processes.contains_key(&pid) {
            return Err(Error::NotFound(format!(
                "exec {exec_id} of {id}: already finished"
            )));
        }
        let signal = nix::sys::signal::Signal::try_from(signal as i32).map_err(|e| Error::Io {
            context: format!("signal {signal}"),
            source: e.into(),
        })?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).map_err(|e| {
            Error::Io {
                context: format!("kill exec {exec_id} of {id}"),
                source: e.into(),
            }
        })
    }

    async fn delete(&self, id: &str) -> Result<()> {
        let opts = DeleteOpts::new().force(true);
        let result = self.runc.delete(id, Some(&opts)).await;
        if let Some(watcher) = self.lock_oom_watchers().remove(id) {
            watcher.abort();
        }
        self.lock_processes().retain(|(c, _), _| c != id);
        self.lock_consoles().retain(|(c, _), _| c != id);
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                let error = runtime_error("delete", id, e);
                if error.to_string().contains("does not exist") {
                    Ok(())
                } else {
                    Err(error)
                }
            }
        }
    }

    async fn delete_exec(&self, id: &str, exec_id: &str) {
        let key = (id.to_string(), exec_id.to_string());
        self.lock_consoles().remove(&key);
        self.lock_processes().remove(&key);
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

    async fn pids(&self, id: &str) -> Result<Vec<u32>> {
        let pids = self
            .runc
            .ps(id)
            .await
            .map_err(|e| runtime_error("ps", id, e))?;
        Ok(pids.into_iter().map(|p| p as u32).collect())
    }

    async fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        self.runc
            .update(id, resources)
            .await
            .map_err(|e| runtime_error("update", id, e))
    }

    async fn stats(&self, id: &str) -> Result<Any> {
        let pid = self.pid_of(id, "")?;
        let metrics = tokio::task::spawn_blocking(move || cgroup_metrics(pid))
            .await
            .map_err(|e| Error::Io {
                context: "collect metrics".into(),
                source: std::io::Error::other(e.to_string()),
            })?;
        metrics.map_err(|e| Error::Io {
            context: format!("collect cgroup metrics of {id}"),
            source: std::io::Error::other(e.to_string()),
        })
    }

    async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let consoles = self.lock_consoles();
        let master = consoles
            .get(&(id.to_string(), exec_id.to_string()))
            .ok_or_else(|| Error::NotFound(format!("terminal of {id} {exec_id}")))?;
        console::resize(master, width, height).map_err(|source| Error::Io {
            context: "resize terminal".into(),
            source,
        })
    }

    fn events(&self) -> Option<UnboundedReceiver<Event>> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    async fn shutdown(&self) {
        let _ = std::fs::remove_dir(&self.state);
    }
}

/// The cgroup metrics of `pid`'s cgroup, v1 or v2 as the host mounts them.
fn cgroup_metrics(pid: u32) -> containerd_shim::Result<Any> {
    let group = cgroup::get_cgroup(pid)?;
    if group.v2() {
        convert_to_any(Box::new(cgroup::collect_metrics_v2(&group)?))
    } else {
        convert_to_any(Box::new(cgroup::collect_metrics(&group)?))
    }
}
