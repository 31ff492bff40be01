//! Port forwarding into the pod's VM. containerd's CRI PortForward (`kubectl port-forward`,
//! `crictl port-forward`) enters the pod's network namespace and dials `localhost:PORT`; with
//! the pod in a VM nothing listens there. So the backend listens on `127.0.0.1:P` inside that
//! namespace (a socket made by a thread that joined it), and an nftables rule there redirects
//! every TCP connection to 127.0.0.1 to it:
//!
//! ```text
//! table ip vessel_portforward {
//!     chain output {
//!         type nat hook output priority -100; policy accept;
//!         ip daddr 127.0.0.1 tcp dport != P redirect to :P
//!     }
//! }
//! ```
//!
//! Each accepted connection's original port (`SO_ORIGINAL_DST`) is dialled on the guest's
//! loopback through the agent (OpenPort), and the bytes are relayed both ways in bounded
//! chunks (WritePort, ReadPort) until either side ends; then the agent's connection is closed
//! (ClosePort). The listener, its relays and the table go with the sandbox. A host without
//! `nft` runs its pods without port forwarding (one warning).

use std::{
    fs::File,
    io::Write,
    net::Ipv4Addr,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
};

use super::agent::{self, Agent};
use crate::protos::agent as api;

/// The nftables table the backend adds to the pod's network namespace.
const TABLE: &str = "vessel_portforward";
/// The most one read asks of either side.
const CHUNK: usize = 64 * 1024;
/// How many connections are relayed at once (the agent holds as many).
const MAX_RELAYS: usize = 64;
/// How long opening the guest's side of a connection may take.
const OPEN_LIMIT: Duration = Duration::from_secs(10);
/// Where `nft` is looked for beside `$PATH`.
const NFT_DIRS: [&str; 2] = ["/usr/sbin", "/sbin"];

/// Whether the missing `nft` was reported already.
static NO_NFT_REPORTED: AtomicBool = AtomicBool::new(false);

/// Port forwarding into one pod's VM; stopped with [`Forwarding::stop`] (or dropped).
pub struct Forwarding {
    netns: PathBuf,
    nft: PathBuf,
    task: JoinHandle<()>,
}

impl Forwarding {
    /// Stops listening, ends every relay and removes the table from the namespace.
    pub fn stop(self) {
        self.task.abort();
        if let Err(e) = nft(
            &self.nft,
            &self.netns,
            &format!("delete table ip {TABLE}\n"),
        ) {
            // A namespace that is gone took the table with it.
            if self.netns.exists() {
                log::warn!("port forwarding: {e}");
            }
        }
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `nft`, from `$PATH` or the sbin directories.
fn find_nft() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(NFT_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join("nft"))
        .find(|candidate| candidate.is_file())
}

/// Runs `nft -f -` with `script` in network namespace `netns`.
fn nft(nft: &Path, netns: &Path, script: &str) -> Result<(), String> {
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run nsenter (util-linux): {e}"))?;
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(script.as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("wait for nft: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nft in {}: {}",
            netns.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    match written {
        Some(Err(e)) => Err(format!("write to nft: {e}")),
        _ => Ok(()),
    }
}

/// The table redirecting TCP to 127.0.0.1 in the namespace to the listener's `port`; it
/// replaces one left there before.
fn ruleset(port: u16) -> String {
    format!(
        "table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \x20   chain output {{\n\
         \x20       type nat hook output priority -100; policy accept;\n\
         \x20       ip daddr 127.0.0.1 tcp dport != {port} redirect to :{port}\n\
         \x20   }}\n\
         }}\n"
    )
}

/// Whether `netns` is the shim's own network namespace (the host's): never redirected.
fn is_own_namespace(netns: &Path) -> bool {
    let id = |path: &Path| std::fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
    match (id(netns), id(Path::new("/proc/self/ns/net"))) {
        (Some(theirs), Some(ours)) => theirs == ours,
        _ => false,
    }
}

/// A TCP listener on 127.0.0.1, some free port, inside network namespace `netns` (made on a
/// thread of its own that joins it; the socket stays in the namespace).
fn listen_in(netns: &Path) -> std::io::Result<std::net::TcpListener> {
    let netns = netns.to_path_buf();
    std::thread::spawn(move || {
        let namespace = File::open(&netns)?;
        nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })
    .join()
    .map_err(|_| std::io::Error::other("the thread panicked"))?
}

/// Starts port forwarding into the VM behind `client` for the pod's network namespace
/// `netns`. Never fails the pod: without `nft` (or when the namespace refuses) the pod runs
/// without port forwarding, and the log says why.
pub fn start(netns: &Path, client: Arc<Agent>) -> Option<Forwarding> {
    if is_own_namespace(netns) {
        return None;
    }
    let Some(nft_path) = find_nft() else {
        if !NO_NFT_REPORTED.swap(true, Ordering::SeqCst) {
            log::warn!(
                "port forwarding: no nft on this host (Debian: apt-get install nftables); pods \
                 in VMs run without port forwarding"
            );
        }
        return None;
    };
    let listener = match listen_in(netns).and_then(TcpListener::from_std) {
        Ok(listener) => listener,
        Err(e) => {
            log::warn!(
                "port forwarding: no listener in {}: {e}; the pod runs without port forwarding",
                netns.display()
            );
            return None;
        }
    };
    let port = match listener.local_addr() {
        Ok(address) => address.port(),
        Err(e) => {
            log::warn!("port forwarding: the listener's address: {e}");
            return None;
        }
    };
    if let Err(e) = nft(&nft_path, netns, &ruleset(port)) {
        log::warn!("port forwarding: {e}; the pod runs without port forwarding");
        return None;
    }
    log::debug!(
        "port forwarding: 127.0.0.1 of {} to the guest through port {port}",
        netns.display()
    );
    Some(Forwarding {
        netns: netns.to_path_buf(),
        nft: nft_path,
        task: tokio::spawn(serve(listener, client)),
    })
}

/// Accepts the redirected connections and relays each; the relays end with this task.
async fn serve(listener: TcpListener, client: Arc<Agent>) {
    let mut relays = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if relays.len() < MAX_RELAYS => {
                    relays.spawn(relay(stream, client.clone()));
                }
                Ok((stream, _)) => {
                    log::warn!("port forwarding: {MAX_RELAYS} connections open: one refused");
                    let _ = stream.set_zero_linger();
                }
                Err(e) => {
                    // Out of descriptors, say: the next accept may do.
                    log::warn!("port forwarding: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = relays.join_next(), if !relays.is_empty() => {}
        }
    }
}

/// The port a redirected connection was made to (`SO_ORIGINAL_DST`; a connection made to the
/// listener itself has its own).
fn original_port(stream: &TcpStream) -> std::io::Result<u16> {
    // SAFETY: an all-zero sockaddr_in is valid.
    let mut address: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the sockaddr_in we own.
    let got = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&mut address as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if got != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(u16::from_be(address.sin_port))
}

/// Relays one connection to the same port of the guest's loopback; a connection the guest
/// refuses, or that fails, is reset.
async fn relay(mut stream: TcpStream, client: Arc<Agent>) {
    let port = match original_port(&stream) {
        Ok(port) => port,
        Err(e) => {
            log::warn!("port forwarding: the connection's original port: {e}");
            let _ = stream.set_zero_linger();
            return;
        }
    };
    let open = api::OpenPortRequest {
        port: port.into(),
        ..Default::default()
    };
    let limit = ttrpc::context::with_timeout(OPEN_LIMIT.as_nanos() as i64);
    let id = match client.open_port(limit, &open).await {
        Ok(opened) => opened.stream_id,
        Err(e) => {
            log::debug!("port forwarding: guest port {port}: {e}");
            let _ = stream.set_zero_linger();
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut from_client, mut to_client) = stream.split();
    let upstream = async {
        let mut buf = vec![0; CHUNK];
        loop {
            let n = from_client
                .read(&mut buf)
                .await
                .map_err(|e| format!("read: {e}"))?;
            let req = api::WritePortRequest {
                stream_id: id,
                data: buf[..n].to_vec(),
                close_write: n == 0,
                ..Default::default()
            };
            client
                .write_port(agent::no_deadline(), &req)
                .await
                .map_err(|e| format!("guest write: {e}"))?;
            if n == 0 {
                return Ok::<_, String>(());
            }
        }
    };
    let downstream = async {
        let req = api::ReadPortRequest {
            stream_id: id,
            max_bytes: CHUNK as u32,
            ..Default::default()
        };
        loop {
            let chunk = client
                .read_port(agent::no_deadline(), &req)
                .await
                .map_err(|e| format!("guest read: {e}"))?;
            if chunk.data.len() > CHUNK || (chunk.data.is_empty() && !chunk.eof) {
                return Err(format!(
                    "the agent answered a read of {CHUNK} bytes with {} bytes",
                    chunk.data.len()
                ));
            }
            to_client
                .write_all(&chunk.data)
                .await
                .map_err(|e| format!("write: {e}"))?;
            if chunk.eof {
                let _ = to_client.shutdown().await;
                return Ok(());
            }
        }
    };
    let relayed = tokio::try_join!(upstream, downstream);
    if let Err(e) = &relayed {
        log::debug!("port forwarding: guest port {port}, stream {id}: {e}");
        let _ = stream.set_zero_linger();
    }
    let close = api::PortStream {
        stream_id: id,
        ..Default::default()
    };
    if let Err(e) = client.close_port(agent::ctx(), &close).await {
        log::debug!("port forwarding: close stream {id}: {e}");
    }
}

/// Removes the table from `netns` after a shim died (its listener went with it).
pub fn remove(netns: &Path) {
    if let Some(nft_path) = find_nft() {
        if netns.exists() {
            let _ = nft(&nft_path, netns, &format!("delete table ip {TABLE}\n"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_replaces_its_table_and_spares_the_listener() {
        let rules = ruleset(40123);
        assert!(
            rules.starts_with("table ip vessel_portforward\ndelete table ip vessel_portforward\n")
        );
        assert!(
            rules.contains("ip daddr 127.0.0.1 tcp dport != 40123 redirect to :40123\n"),
            "{rules}"
        );
        assert!(rules.contains("type nat hook output priority -100;"));
    }

    #[test]
    fn the_hosts_own_namespace_is_never_redirected() {
        assert!(is_own_namespace(Path::new("/proc/self/ns/net")));
        assert!(!is_own_namespace(Path::new("/nonexistent/netns")));
    }
}
