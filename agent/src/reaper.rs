//! Reaps every child of the agent (as PID 1, every orphan of the guest too) and tells the
//! `linux` backend's exit tracker through the containerd-shim crate's process monitor.

use nix::{
    sys::wait::{waitpid, WaitPidFlag, WaitStatus},
    unistd::Pid,
};
use tokio::signal::unix::{signal, SignalKind};

/// Starts reaping; runs for the life of the agent.
pub fn start() -> std::io::Result<()> {
    let mut children = signal(SignalKind::child())?;
    tokio::spawn(async move {
        loop {
            reap_all().await;
            if children.recv().await.is_none() {
                return;
            }
        }
    });
    Ok(())
}

/// Collects every child that exited: status 128 + signal for a killed one.
async fn reap_all() {
    loop {
        let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, code),
            Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, 128 + signal as i32),
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        };
        if let Err(e) =
            containerd_shim::asynchronous::monitor::monitor_notify_by_pid(pid.as_raw(), status)
                .await
        {
            log::warn!("exit of pid {pid}: {e}");
        }
    }
}
