//! `vessel-agent`: PID 1 of a vessel sandbox VM. It sets the guest up, then serves
//! `protos/agent.proto` over ttrpc on its virtio-serial port, in front of the `linux` sandbox
//! backend driving an OCI runtime (crun) inside the guest, or the agent's built-in runtime
//! ([`builtin`]). Started by hand (`--listen`), it is a plain host process serving a unix
//! socket: the same service, tested without a VM.

mod builtin;
mod error;
mod init;
mod modules;
mod network;
mod paths;
mod ports;
mod processes;
mod reaper;
mod resources;
mod service;
mod spec;
mod start;
mod transport;

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use clap::Parser;
use tokio::sync::Notify;
use vessel::{
    protos::agent_ttrpc,
    sandbox::linux::{engine_root, LinuxSandbox, CLONE_GATE},
};

/// The agent as a host process.
#[derive(Parser, Debug)]
#[command(
    name = "vessel-agent",
    about = "vessel's guest agent (PID 1 of a sandbox VM)"
)]
struct Args {
    /// Serve on this unix socket (the agent as a host process).
    #[arg(long)]
    listen: PathBuf,
    /// The shared directory: containers' root file systems and volumes.
    #[arg(long)]
    shared_dir: PathBuf,
    /// The agent's own state: bundles and the OCI runtime's state.
    #[arg(long)]
    state_dir: PathBuf,
    /// The OCI runtime binary, or `builtin`: the agent's own runtime.
    #[arg(long, default_value = "crun")]
    runtime: String,
    /// Log at debug level.
    #[arg(long)]
    debug: bool,
}

/// Where the agent serves, and what it works with.
struct Settings {
    channel: Channel,
    shared_dir: PathBuf,
    state_dir: PathBuf,
    runtime: String,
    /// The guest's modules: the drivers of its other devices load once the agent serves.
    later_modules: Option<modules::Modules>,
    /// The guest StartSandbox sets up (PID 1 only).
    guest: Option<start::Guest>,
}

enum Channel {
    Unix(PathBuf),
    Serial(String),
}

/// How long the agent lets its last replies (DestroySandbox's) go out before it stops; calls
/// that wait for processes (reads, waits) are not waited for.
const LAST_REPLIES: Duration = Duration::from_millis(200);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args
        .first()
        .is_some_and(|argv0| modules::is_modprobe(argv0))
    {
        return modules::modprobe(&args[1..]);
    }
    let pid1 = std::process::id() == 1;
    let settings = if pid1 {
        guest_settings()
    } else {
        host_settings()
    };
    let served = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("async runtime: {e}"))
        .and_then(|runtime| runtime.block_on(serve(settings, pid1)));
    if let Err(e) = &served {
        log::error!("vessel-agent: {e}");
        eprintln!("vessel-agent: {e}");
    }
    if pid1 {
        init::power_off();
    }
    if served.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// PID 1: the guest's file systems and modules, the settings from the kernel command line.
fn guest_settings() -> Settings {
    // The kernel starts init without a PATH; the OCI runtime client looks binaries up in it.
    std::env::set_var("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    let mounted = init::leave_initramfs().and_then(|()| init::mount_system());
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let params = init::BootParams::parse(&cmdline);
    let _ = vessel::logging::init(params.debug, ("guest", "agent"));
    if let Err(e) = mounted {
        log::error!("guest file systems: {e}");
    }
    let mut modules = modules::Modules::of_image();
    modules.load(init::serving_modules(&params.shared_fs));
    if let Err(e) = network::loopback_up() {
        log::warn!("loopback: {e}");
    }
    // Mounted by StartSandbox: a VM saved as a template must not have it mounted.
    let shared_dir = PathBuf::from(init::SHARED_MOUNT);
    if let Err(e) = std::fs::create_dir_all(&shared_dir) {
        log::error!("shared directory {}: {e}", shared_dir.display());
    }
    if params.template {
        // Every driver before the host saves the VM: its clones have them.
        let drivers = modules.drivers_present(&["pci", "virtio"]);
        modules.load(&drivers);
    }
    Settings {
        channel: Channel::Serial(params.port.clone()),
        shared_dir,
        state_dir: PathBuf::from("/run/vessel/agent"),
        runtime: params.runtime.clone(),
        later_modules: Some(modules),
        guest: Some(start::Guest::new(params)),
    }
}

fn host_settings() -> Settings {
    let args = Args::parse();
    let _ = vessel::logging::init(args.debug, ("host", "agent"));
    Settings {
        channel: Channel::Unix(args.listen),
        shared_dir: args.shared_dir,
        state_dir: args.state_dir,
        runtime: args.runtime,
        later_modules: None,
        guest: None,
    }
}

/// The linux backend with `runtime`: [`builtin::NAME`], or an OCI runtime binary; its state
/// in `dir`.
async fn backend(runtime: &str, dir: &std::path::Path) -> vessel::sandbox::Result<LinuxSandbox> {
    if runtime == builtin::NAME {
        let engine = builtin::Builtin::new(&engine_root(dir))?;
        LinuxSandbox::with_engine(Arc::new(engine), dir).await
    } else {
        LinuxSandbox::new(runtime, dir).await
    }
}

async fn serve(mut settings: Settings, pid1: bool) -> Result<(), String> {
    reaper::start().map_err(|e| format!("reaper: {e}"))?;
    if !pid1 {
        // Container processes are reparented to the agent, as they are to PID 1 in a guest.
        nix::sys::prctl::set_child_subreaper(true).map_err(|e| format!("subreaper: {e}"))?;
    }
    let shared = paths::SharedDir::new(&settings.shared_dir)
        .map_err(|e| format!("shared directory {}: {e}", settings.shared_dir.display()))?;
    let sandbox = backend(&settings.runtime, &settings.state_dir.join("sandbox"))
        .await
        .map_err(|e| e.to_string())?;
    let destroyed = Arc::new(Notify::new());
    let service = service::AgentService::new(
        Arc::new(sandbox),
        shared,
        settings.state_dir.join("bundles"),
        settings.guest.take(),
        destroyed.clone(),
    );
    let listener = match &settings.channel {
        Channel::Unix(path) => {
            let _ = std::fs::remove_file(path);
            ttrpc::r#async::transport::Listener::bind(format!("unix://{}", path.display()))
                .map_err(|e| format!("listen on {}: {e}", path.display()))?
        }
        Channel::Serial(name) => {
            let port = transport::find_port(name).map_err(|e| e.to_string())?;
            transport::serial_listener(port)
        }
    };
    let mut server = ttrpc::r#async::Server::new()
        .add_listener(listener)
        .register_service(agent_ttrpc::create_agent(service));
    server.start().await.map_err(|e| format!("serve: {e}"))?;
    log::info!("vessel-agent {} serving", env!("CARGO_PKG_VERSION"));
    if let Some(mut modules) = settings.later_modules.take() {
        // The drivers of the VM's other devices (network, entropy), on a thread of its own,
        // behind the host's first requests on the one vCPU: the first container's create was
        // measured 200 ms later while modules loaded at the same priority.
        let drivers = modules.drivers_present(&["pci", "virtio"]);
        let loading = std::thread::Builder::new()
            .name("modules".into())
            .spawn(move || {
                let _gate = CLONE_GATE.read().unwrap_or_else(|e| e.into_inner());
                // SAFETY: on Linux, setpriority of pid 0 changes the calling thread only.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
                modules.load(&drivers);
                modules::serve_requests();
            });
        if let Err(e) = loading {
            log::warn!("no thread to load the other modules: {e}");
        }
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("SIGTERM: {e}"))?;
    tokio::select! {
        _ = destroyed.notified() => {}
        _ = terminate.recv(), if !pid1 => log::info!("terminated"),
    }
    let _ = tokio::time::timeout(LAST_REPLIES, server.shutdown()).await;
    if let Channel::Unix(path) = &settings.channel {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}
