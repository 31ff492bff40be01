//! The pod's network into its VM, kata's `tcfilter` model: in the pod's network namespace a
//! tap device for QEMU, and tc filters that redirect every frame between the CNI's interface
//! and the tap; the guest's interface gets the CNI interface's MAC, addresses and routes.
//! iproute2's `ip` and `tc` run inside the namespace through `nsenter`.

use std::{
    fs::File,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
};

use serde::Deserialize;

use super::super::{Error, Result};

/// The tap device's name in the pod's network namespace.
const TAP: &str = "tap0_vessel";

/// The pod's interface, as the guest must mirror it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Its name in the pod's namespace (`eth0`).
    pub name: String,
    /// Its MAC address.
    pub mac: String,
    /// Its MTU.
    pub mtu: u32,
    /// Its addresses, CIDR.
    pub addresses: Vec<String>,
    /// Its routes: destination (`default` or CIDR) and gateway (or empty).
    pub routes: Vec<(String, String)>,
}

/// A pod network attached: the interface, and the tap's descriptor for QEMU.
pub struct Attached {
    /// The pod's interface.
    pub interface: Interface,
    /// The tap device, open; QEMU gets it as its `-netdev tap,fd=`.
    pub tap: OwnedFd,
}

#[derive(Deserialize)]
struct LinkJson {
    ifname: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    link_type: String,
    #[serde(default)]
    addr_info: Vec<AddrJson>,
}

#[derive(Deserialize)]
struct AddrJson {
    #[serde(default)]
    family: String,
    local: String,
    prefixlen: u8,
    #[serde(default)]
    scope: String,
}

#[derive(Deserialize)]
struct RouteJson {
    dst: String,
    #[serde(default)]
    gateway: String,
    #[serde(default)]
    protocol: String,
}

/// Runs `program args` in network namespace `netns`, returning its stdout.
fn in_netns(netns: &Path, program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg(program)
        .args(args)
        .output()
        .map_err(|e| Error::io("run nsenter (util-linux)", e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Runtime {
            op: "network",
            id: format!("{program} {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// The pod's interface from `ip -j addr` and `ip -j route` of its namespace: the first
/// Ethernet interface; the kernel's own routes (of its subnets) are left to the guest's kernel.
fn interface_of(addrs: &str, routes: impl Fn(&str) -> Result<String>) -> Result<Option<Interface>> {
    let decode = |e: serde_json::Error| Error::io("read ip -j output", e.into());
    let links: Vec<LinkJson> = serde_json::from_str(addrs).map_err(decode)?;
    let Some(link) = links
        .into_iter()
        .find(|l| l.ifname != "lo" && l.link_type == "ether" && l.ifname != TAP)
    else {
        return Ok(None);
    };
    let addresses = link
        .addr_info
        .iter()
        .filter(|a| a.scope != "link" && (a.family == "inet" || a.family == "inet6"))
        .map(|a| format!("{}/{}", a.local, a.prefixlen))
        .collect();
    let routes: Vec<RouteJson> = serde_json::from_str(&routes(&link.ifname)?).map_err(decode)?;
    Ok(Some(Interface {
        routes: routes
            .into_iter()
            .filter(|r| r.protocol != "kernel")
            .map(|r| (r.dst, r.gateway))
            .collect(),
        name: link.ifname,
        mac: link.address,
        mtu: link.mtu,
        addresses,
    }))
}

/// Opens a tap device named [`TAP`] in network namespace `netns` (on a thread of its own,
/// since joining a namespace changes the calling thread).
fn open_tap(netns: &Path) -> Result<OwnedFd> {
    let netns = netns.to_path_buf();
    tap_on_thread(move || {
        let namespace =
            File::open(&netns).map_err(|e| Error::io(format!("open {}", netns.display()), e))?;
        nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::io(format!("join {}", netns.display()), e.into()))
    })
}

/// A tap device in a network namespace of its own, which lives as long as the tap: the NIC
/// of a VM without a pod network that must have one (a template's, and its clones').
pub fn private_tap() -> Result<OwnedFd> {
    tap_on_thread(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::io("a network namespace for a tap", e.into()))
    })
}

/// Opens a tap device named [`TAP`] on a thread of its own, in the network namespace `enter`
/// puts that thread in.
fn tap_on_thread(enter: impl FnOnce() -> Result<()> + Send + 'static) -> Result<OwnedFd> {
    std::thread::spawn(move || -> Result<OwnedFd> {
        enter()?;
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(|e| Error::io("open /dev/net/tun", e))?;
        // SAFETY: an all-zero ifreq is valid; the name fits IFNAMSIZ with its NUL.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (slot, byte) in request.ifr_name.iter_mut().zip(TAP.bytes()) {
            *slot = byte as libc::c_char;
        }
        request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes the ifreq we own.
        let set = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut request) };
        if set < 0 {
            return Err(Error::io(
                "create the tap device",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(OwnedFd::from(tun))
    })
    .join()
    .map_err(|_| Error::io("tap device", std::io::Error::other("the thread panicked")))?
}

/// Connects the pod's network namespace `netns` to a tap device for its VM; nothing to do
/// (None) when the namespace has no Ethernet interface. On failure nothing stays.
pub fn attach(netns: &Path) -> Result<Option<Attached>> {
    let addrs = in_netns(netns, "ip", &["-j", "addr", "show"])?;
    let routes = |name: &str| in_netns(netns, "ip", &["-j", "route", "show", "dev", name]);
    let Some(interface) = interface_of(&addrs, routes)? else {
        return Ok(None);
    };
    let tap = open_tap(netns)?;
    let attached = Attached { interface, tap };
    if let Err(e) = redirect(netns, &attached.interface) {
        detach(netns, &attached.interface.name);
        return Err(e);
    }
    Ok(Some(attached))
}

fn redirect(netns: &Path, interface: &Interface) -> Result<()> {
    let mtu = interface.mtu.to_string();
    in_netns(netns, "ip", &["link", "set", "dev", TAP, "mtu", &mtu, "up"])?;
    for (from, to) in [
        (interface.name.as_str(), TAP),
        (TAP, interface.name.as_str()),
    ] {
        in_netns(netns, "tc", &["qdisc", "add", "dev", from, "ingress"])?;
        in_netns(
            netns,
            "tc",
            &[
                "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match",
                "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
            ],
        )?;
    }
    Ok(())
}

/// Removes the redirect from the pod's interface `name` (the tap goes with the last
/// descriptor of it, QEMU's). A namespace that is gone already is nothing to do.
pub fn detach(netns: &Path, name: &str) {
    if netns.exists() {
        let _ = in_netns(netns, "tc", &["qdisc", "del", "dev", name, "ingress"]);
    }
}

/// The network namespace of a pod, if it has one of its own to mirror.
pub fn namespace(path: &str) -> Option<PathBuf> {
    (!path.is_empty()).then(|| PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDRS: &str = r#"[
        {"ifindex":1,"ifname":"lo","mtu":65536,"link_type":"loopback","address":"00:00:00:00:00:00",
         "addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
        {"ifindex":3,"ifname":"eth0","mtu":1500,"link_type":"ether","address":"6e:0a:12:34:56:78",
         "addr_info":[{"family":"inet","local":"10.88.30.5","prefixlen":24,"scope":"global"},
                      {"family":"inet6","local":"fe80::6c0a:12ff:fe34:5678","prefixlen":64,"scope":"link"}]}
    ]"#;
    const ROUTES: &str = r#"[
        {"dst":"default","gateway":"10.88.30.1","flags":[]},
        {"dst":"10.88.30.0/24","protocol":"kernel","scope":"link","prefsrc":"10.88.30.5","flags":[]}
    ]"#;

    #[test]
    fn the_cni_interface_is_read_from_ip_json() {
        let interface = interface_of(ADDRS, |name| {
            assert_eq!(name, "eth0");
            Ok(ROUTES.to_string())
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            interface,
            Interface {
                name: "eth0".into(),
                mac: "6e:0a:12:34:56:78".into(),
                mtu: 1500,
                addresses: vec!["10.88.30.5/24".into()],
                routes: vec![("default".into(), "10.88.30.1".into())],
            }
        );
    }

    #[test]
    fn a_namespace_with_only_loopback_has_nothing_to_mirror() {
        let only_lo = r#"[{"ifname":"lo","link_type":"loopback","address":"00:00:00:00:00:00","addr_info":[]}]"#;
        assert_eq!(interface_of(only_lo, |_| unreachable!()).unwrap(), None);
        assert_eq!(namespace(""), None);
    }
}
