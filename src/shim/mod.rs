//! The shim v2 process: `start`, `delete` and the daemon serving the Task API over ttrpc.
//!
//! containerd 1.6/1.7 read the `start` reply as a plain address and call
//! `containerd.task.v2.Task`; containerd 2.x calls `containerd.task.v3.Task`. The daemon
//! serves the same service under both names.

mod bundle;
mod events;
mod info;
mod io;
mod process;
mod service;
#[cfg(test)]
mod test_support;

use std::{
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    sync::Arc,
    time::Duration,
};

use containerd_shim::{
    asynchronous::{monitor::monitor_notify_by_pid, ExitSignal},
    Flags,
};
use containerd_shim_protos::{
    protobuf::Message,
    shim_async::{create_task, Task},
    ttrpc::r#async::{transport::Listener, Server},
};
use nix::{
    sys::wait::{waitpid, WaitPidFlag, WaitStatus},
    unistd::Pid,
};
use slog::{error, info, warn, Logger};
use tokio::{io::AsyncReadExt, signal::unix::SignalKind};

use crate::{logging, sandbox};

/// The runtime type containerd knows vessel by.
pub const RUNTIME_ID: &str = "io.containerd.vessel.v2";

/// The ttrpc service names of the Task API: containerd 1.x, then 2.x.
const TASK_SERVICES: [&str; 2] = ["containerd.task.v2.Task", "containerd.task.v3.Task"];

/// Runs the action containerd asked for and returns the process exit code.
pub async fn run() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flags = match containerd_shim::parse(&args) {
        Ok(flags) => flags,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if flags.version {
        println!("{RUNTIME_ID} {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if flags.info {
        return print_info();
    }
    let result = match flags.action.as_str() {
        "start" => start(&flags).await,
        "delete" => delete(&flags).await,
        "" => serve(&flags).await,
        other => Err(format!(
            "unknown action {other:?} (accepted: start, delete, convert, or none to serve)"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{RUNTIME_ID}: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `-info`: the runtime options on stdin, the `RuntimeInfo` on stdout.
fn print_info() -> ExitCode {
    use std::io::{Read, Write};
    let mut options = Vec::new();
    // containerd sends a small protobuf; more than this is not runtime options.
    let info = std::io::stdin()
        .take(1 << 20)
        .read_to_end(&mut options)
        .map_err(|e| format!("read the runtime options: {e}"))
        .and_then(|_| info::runtime_info(&options));
    match info.and_then(|info| {
        let mut stdout = std::io::stdout();
        stdout
            .write_all(&info)
            .and_then(|()| stdout.flush())
            .map_err(|e| e.to_string())
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{RUNTIME_ID}: -info: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The bundle directory: `-bundle`, or the working directory containerd starts us in.
fn bundle_dir(flags: &Flags) -> PathBuf {
    if flags.bundle.is_empty() {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
    } else {
        PathBuf::from(&flags.bundle)
    }
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// `start`: prints the address of the shim serving this container's sandbox, spawning the
/// daemon unless the pod's shim already runs.
async fn start(flags: &Flags) -> Result<(), String> {
    let bundle = bundle_dir(flags);
    let spec = bundle::load_spec(&bundle)?;
    let grouping = bundle::grouping(&spec, &flags.id)?;
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &grouping);
    // A pod's containers share the shim its sandbox started.
    if !answers(&address).await {
        spawn_daemon(flags, &bundle, &address).await?;
    }
    std::fs::write(bundle.join("address"), &address)
        .map_err(|e| format!("write {}/address: {e}", bundle.display()))?;
    print!("{address}");
    Ok(())
}

/// Whether a shim serves at `address`.
async fn answers(address: &str) -> bool {
    tokio::net::UnixStream::connect(socket_path(address))
        .await
        .is_ok()
}

/// Starts the daemon for `address` and waits until it serves.
async fn spawn_daemon(flags: &Flags, bundle: &Path, address: &str) -> Result<(), String> {
    let binary = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut command = tokio::process::Command::new(binary);
    command
        .current_dir(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .args(["-namespace", &flags.namespace, "-id", &flags.id])
        .args(["-address", &flags.address, "-socket", address]);
    if !flags.publish_binary.is_empty() {
        command.args(["-publish-binary", &flags.publish_binary]);
    }
    if flags.debug {
        command.arg("-debug");
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("spawn the shim daemon: {e}"))?;
    // The daemon closes its stdout once it serves (or dies): read to the end.
    if let Some(mut ready) = child.stdout.take() {
        let mut ignored = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(30), ready.read_to_end(&mut ignored)).await;
    }
    if !answers(address).await {
        let _ = child.start_kill();
        return Err(format!("the shim daemon did not come up at {address}"));
    }
    if let Some(pid) = child.id() {
        let _ = std::fs::write(bundle.join("shim.pid"), pid.to_string());
    }
    Ok(())
}

/// `delete`: cleans up after a shim that died: the container's sandbox backend removes what
/// its record says it created for the container; the reply reports it killed.
async fn delete(flags: &Flags) -> Result<(), String> {
    let bundle = bundle_dir(flags);
    // Without a spec the sandbox is the container's own (standalone).
    let sandbox_id = bundle::load_spec(&bundle)
        .ok()
        .and_then(|spec| bundle::grouping(&spec, &flags.id).ok())
        .unwrap_or_else(|| flags.id.clone());
    let own_sandbox = sandbox_id == flags.id;
    // Read before the cleanup: containerd may remove the bundle meanwhile.
    let address = std::fs::read_to_string(bundle.join("address"))
        .ok()
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .or_else(|| {
            own_sandbox.then(|| {
                containerd_shim::socket_address(&flags.address, &flags.namespace, &sandbox_id)
            })
        });
    let daemon = own_sandbox.then(|| own_daemon(&bundle)).flatten();
    // containerd's output for `delete` is the response alone: leftovers that cannot be
    // removed are reported on the next try.
    let leftover = sandbox::cleanup(&flags.namespace, &sandbox_id, &flags.id).await;
    if let Some(pid) = daemon {
        stop_daemon(pid, address.as_deref()).await;
    }
    if let Some(address) = &address {
        remove_dead_socket(address).await;
    }
    let response = containerd_shim::DeleteResponse {
        pid: 0,
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: Some(process::to_timestamp(std::time::SystemTime::now())).into(),
        ..Default::default()
    };
    let bytes = response
        .write_to_bytes()
        .map_err(|e| format!("encode delete response: {e}"))?;
    use std::io::Write;
    std::io::stdout()
        .write_all(&bytes)
        .map_err(|e| format!("write delete response: {e}"))?;
    leftover.map_err(|e| e.to_string())
}

/// The daemon `start` spawned for this bundle (`shim.pid`), while it runs as our executable.
fn own_daemon(bundle: &Path) -> Option<i32> {
    let pid = std::fs::read_to_string(bundle.join("shim.pid"))
        .ok()?
        .trim()
        .parse::<i32>()
        .ok()?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    (Some(exe) == std::env::current_exe().ok() && pid != std::process::id() as i32).then_some(pid)
}

/// Stops the sandbox's daemon: one already shutting down (its socket no longer answers) is
/// given a moment to finish (its last events go out), anything else is killed.
async fn stop_daemon(pid: i32, address: Option<&str>) {
    let shutting_down = match address {
        Some(address) => !answers(address).await,
        None => false,
    };
    if shutting_down && wait_dead(pid, Duration::from_secs(3)).await {
        return;
    }
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    // Until it is dead its socket still answers, and the socket would be left behind.
    wait_dead(pid, Duration::from_secs(5)).await;
}

/// Waits until process `pid` is dead; whether it is.
async fn wait_dead(pid: i32, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while alive(pid) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Whether process `pid` still runs (a zombie holds no socket open: it does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_string();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// Removes the shim socket at `address` unless a shim still answers there (a pod's shim
/// outlives a container whose own cleanup this is).
async fn remove_dead_socket(address: &str) {
    if !answers(address).await {
        let _ = std::fs::remove_file(socket_path(address));
    }
}

/// The daemon: serves the Task API until the last container is gone.
async fn serve(flags: &Flags) -> Result<(), String> {
    // One malloc arena: the shim's few threads do not need their own, and each costs memory.
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let logger = logging::init(flags.debug, (&flags.namespace, &flags.id));
    if flags.socket.is_empty() {
        return Err("-socket is required to serve".into());
    }
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        warn!(logger, "cannot become a subreaper"; "error" => %e);
    }
    let listener = match bind(&flags.socket).await? {
        Some(listener) => listener,
        None => {
            info!(logger, "another shim already serves"; "address" => &flags.socket);
            signal_ready();
            return Ok(());
        }
    };
    tokio::spawn(reap_children(logger.clone()));
    let ttrpc_address =
        std::env::var("TTRPC_ADDRESS").map_err(|_| "TTRPC_ADDRESS is not set".to_string())?;
    let publisher = events::Publisher::start(&ttrpc_address, &flags.namespace, logger.clone());
    let exit = Arc::new(ExitSignal::default());
    let in_flight = Arc::new(service::InFlight::default());
    let service: Arc<dyn Task + Send + Sync> = Arc::new(service::TaskService::new(
        &flags.namespace,
        publisher.clone(),
        service::configured_backend(),
        exit.clone(),
        in_flight.clone(),
        logger.clone(),
    ));
    let listener = Listener::try_from(listener).map_err(|e| format!("ttrpc listener: {e}"))?;
    let mut server = Server::new().add_listener(listener);
    for name in TASK_SERVICES {
        let mut services = create_task(service.clone());
        if let Some(task) = services.remove(TASK_SERVICES[1]) {
            server = server.register_service([(name.to_string(), task)].into());
        }
    }
    server
        .start()
        .await
        .map_err(|e| format!("start ttrpc server: {e}"))?;
    signal_ready();
    info!(logger, "serving"; "address" => &flags.socket, "pid" => std::process::id());
    exit.wait().await;
    info!(logger, "shutting down");
    // No new client finds the shim (a `delete` action that kills it meanwhile leaves no
    // socket behind); every request under way gets its answer before the connections close.
    let _ = std::fs::remove_file(socket_path(&flags.socket));
    server.stop_listen().await;
    in_flight.settled(Duration::from_secs(5)).await;
    publisher.flush(Duration::from_secs(5)).await;
    let _ = server.shutdown().await;
    Ok(())
}

/// Binds the shim socket; `None` when a live shim already serves there.
async fn bind(address: &str) -> Result<Option<UnixListener>, String> {
    let path = socket_path(address);
    if let Some(dir) = Path::new(path).parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("socket dir {}: {e}", dir.display()))?;
    }
    match UnixListener::bind(path) {
        Ok(listener) => Ok(Some(listener)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if answers(address).await {
                return Ok(None);
            }
            let _ = std::fs::remove_file(path);
            UnixListener::bind(path)
                .map(Some)
                .map_err(|e| format!("bind {path}: {e}"))
        }
        Err(e) => Err(format!("bind {path}: {e}")),
    }
}

/// Tells `start` the daemon is up by closing stdout (pointing it at stderr, /dev/null).
fn signal_ready() {
    // SAFETY: dup2 on the process's own standard descriptors.
    unsafe {
        libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO);
    }
}

/// Reaps every child (the shim is a subreaper) and reports each exit to the monitor.
pub async fn reap_children(logger: Logger) {
    let mut signals = match tokio::signal::unix::signal(SignalKind::child()) {
        Ok(signals) => signals,
        Err(e) => {
            error!(logger, "cannot watch SIGCHLD"; "error" => %e);
            return;
        }
    };
    while signals.recv().await.is_some() {
        loop {
            let (pid, code) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, 128 + signal as i32),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            };
            if let Err(e) = monitor_notify_by_pid(pid.as_raw(), code).await {
                warn!(logger, "report exit"; "pid" => pid.as_raw(), "error" => %e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::alive;

    #[test]
    fn a_running_process_is_alive_and_a_reaped_one_is_not() {
        assert!(alive(std::process::id() as i32));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        // Exited, not reaped yet: a zombie, which holds no socket open.
        let gone = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            !alive(pid)
        });
        assert!(gone, "a zombie counts as dead");
        child.wait().unwrap();
        assert!(!alive(pid));
    }
}
