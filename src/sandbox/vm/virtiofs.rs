//! virtiofsd, for a VM whose shared directory is virtio-fs: one daemon per sandbox serving the
//! shared directory on a vhost-user socket QEMU connects to; it ends when QEMU does.

use std::{
    fs::File,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::super::{Error, Result};
use crate::oci::VirtioFsCache;

/// How long virtiofsd may take to create its socket.
const READY_LIMIT: Duration = Duration::from_secs(10);

/// A running virtiofsd.
pub struct Daemon {
    /// Its pid.
    pub pid: u32,
}

/// virtiofsd's `--cache` for the configured cache mode.
fn cache(mode: VirtioFsCache) -> &'static str {
    match mode {
        VirtioFsCache::None => "never",
        VirtioFsCache::Auto => "auto",
        VirtioFsCache::Always => "always",
    }
}

/// virtiofsd's arguments: the shared directory, the socket, the cache mode; mounts made under
/// the directory later (each container's root file system) are served as they appear.
pub fn arguments(shared: &Path, socket: &Path, mode: VirtioFsCache) -> Vec<String> {
    vec![
        format!("--socket-path={}", socket.display()),
        format!("--shared-dir={}", shared.display()),
        format!("--cache={}", cache(mode)),
        // Its own sandbox: new mount, PID and network namespaces whose root is the shared
        // directory; that is a slave of `mounts/`, a shared mount (`shared::export`), and so
        // is its copy there, which receives the mounts the backend makes after it started.
        // Its seccomp filter and reduced capabilities are its defaults.
        "--sandbox=namespace".into(),
        "--announce-submounts".into(),
    ]
}

/// Starts `binary` for `shared` on `socket`, its messages to `log`; returns once the socket is
/// there. It dies with the shim.
pub async fn start(
    binary: &str,
    shared: &Path,
    socket: &Path,
    mode: VirtioFsCache,
    log: &Path,
) -> Result<Daemon> {
    let log_file =
        File::create(log).map_err(|e| Error::io(format!("create {}", log.display()), e))?;
    let mut command = Command::new(binary);
    command
        .args(arguments(shared, socket, mode))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let child = command
        .spawn()
        .map_err(|e| Error::io(format!("start {binary}"), e))?;
    let pid = child.id();
    // The shim's reaper collects it.
    drop(child);
    let deadline = Instant::now() + READY_LIMIT;
    while !socket.exists() {
        let gone = !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true);
        if gone || Instant::now() > deadline {
            super::kill(pid);
            return Err(Error::Unavailable(format!(
                "virtiofsd did not serve {}: {}",
                socket.display(),
                super::qemu::last_words(log)
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(Daemon { pid })
}

/// The socket of a sandbox's virtiofsd in its state directory `dir`.
pub fn socket(dir: &Path) -> PathBuf {
    dir.join("virtiofs.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_serves_the_shared_directory_with_the_configured_cache() {
        let args = arguments(
            Path::new("/run/vessel/ns/s1/shared"),
            Path::new("/run/vessel/ns/s1/virtiofs.sock"),
            VirtioFsCache::None,
        );
        assert!(args.contains(&"--shared-dir=/run/vessel/ns/s1/shared".to_string()));
        assert!(args.contains(&"--socket-path=/run/vessel/ns/s1/virtiofs.sock".to_string()));
        assert!(args.contains(&"--cache=never".to_string()));
        assert!(args.contains(&"--announce-submounts".to_string()));
        assert!(args.contains(&"--sandbox=namespace".to_string()));
    }
}
