//! The guest's side of the pod network: the interface QEMU gives the guest carries the MAC of
//! the pod's interface on the host, and gets its addresses, MTU and routes (busybox `ip`).

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use vessel::protos::agent as api;

use crate::error::Refused;

/// The `ip` the guest image has.
const IP: &str = "/bin/busybox";
/// How long the interface may take to appear (virtio_net loads once the agent serves).
const APPEAR_LIMIT: Duration = Duration::from_secs(10);

fn malformed(field: &'static str, value: &str, accepted: &str) -> Refused {
    Refused::Malformed {
        field,
        message: format!("{value:?}: accepted: {accepted}"),
    }
}

/// Checks `a.b.c.d/n` (or IPv6): an address and a prefix length that fits it.
fn check_cidr(field: &'static str, value: &str) -> Result<(), Refused> {
    let bad = || {
        malformed(
            field,
            value,
            "an address with a prefix length, e.g. 10.88.0.5/16",
        )
    };
    let (address, prefix) = value.split_once('/').ok_or_else(bad)?;
    let address: IpAddr = address.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(bad());
    }
    Ok(())
}

fn check_mac(field: &'static str, mac: &str) -> Result<(), Refused> {
    let parts: Vec<&str> = mac.split(':').collect();
    let fits = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if fits {
        Ok(())
    } else {
        Err(malformed(
            field,
            mac,
            "six hex pairs, e.g. 02:42:ac:11:00:02",
        ))
    }
}

/// The `ip` commands that configure interface `name` as `req` says, after checking every
/// value (none can pass for an option).
pub fn commands(
    req: &api::UpdateInterfaceRequest,
    name: &str,
) -> Result<Vec<Vec<String>>, Refused> {
    check_mac("mac", &req.mac)?;
    let mut commands = Vec::new();
    let ip = |args: &[&str]| -> Vec<String> {
        std::iter::once("ip")
            .chain(args.iter().copied())
            .map(String::from)
            .collect()
    };
    if req.mtu > 0 {
        if !(68..=65535).contains(&req.mtu) {
            return Err(malformed("mtu", &req.mtu.to_string(), "68 to 65535"));
        }
        commands.push(ip(&[
            "link",
            "set",
            "dev",
            name,
            "mtu",
            &req.mtu.to_string(),
        ]));
    }
    if !req.current_mac.is_empty() && !req.current_mac.eq_ignore_ascii_case(&req.mac) {
        check_mac("current_mac", &req.current_mac)?;
        commands.push(ip(&["link", "set", "dev", name, "address", &req.mac]));
    }
    commands.push(ip(&["link", "set", "dev", name, "up"]));
    for address in &req.addresses {
        check_cidr("addresses", address)?;
        commands.push(ip(&["addr", "add", address, "dev", name]));
    }
    for route in &req.routes {
        let destination = route.destination.as_str();
        if destination != "default" {
            check_cidr("routes.destination", destination)?;
        }
        let mut args = vec!["route", "add", destination];
        if !route.gateway.is_empty() {
            route
                .gateway
                .parse::<IpAddr>()
                .map_err(|_| malformed("routes.gateway", &route.gateway, "an address"))?;
            args.extend(["via", route.gateway.as_str()]);
        }
        args.extend(["dev", name]);
        commands.push(ip(&args));
    }
    Ok(commands)
}

/// The name of the interface with MAC address `mac`, once it appears.
async fn interface_with(mac: &str) -> Result<String, Refused> {
    let deadline = Instant::now() + APPEAR_LIMIT;
    loop {
        if let Ok(entries) = std::fs::read_dir("/sys/class/net") {
            for entry in entries.flatten() {
                let address =
                    std::fs::read_to_string(entry.path().join("address")).unwrap_or_default();
                if address.trim().eq_ignore_ascii_case(mac) {
                    return Ok(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(Refused::Backend(vessel::sandbox::Error::NotFound(format!(
                "no guest interface with MAC {mac}"
            ))));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs one `ip` command; its exit comes from the agent's reaper, which collects every child.
async fn run(args: &[String]) -> Result<(), Refused> {
    let mut command = tokio::process::Command::new(IP);
    command
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let (status, _, _, stderr) = vessel::sandbox::linux::reaped_output(command)
        .await
        .map_err(|e| {
            Refused::Backend(vessel::sandbox::Error::io(
                format!("run {IP} ip"),
                std::io::Error::other(e.to_string()),
            ))
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(Refused::Backend(vessel::sandbox::Error::Runtime {
            op: "configure the network",
            id: args.join(" "),
            message: stderr.trim().to_string(),
        }))
    }
}

/// Configures the guest's interface with the request's MAC address.
pub async fn update_interface(req: &api::UpdateInterfaceRequest) -> Result<(), Refused> {
    // Every value is checked before the wait for the interface.
    commands(req, "probe")?;
    let current = if req.current_mac.is_empty() {
        &req.mac
    } else {
        &req.current_mac
    };
    let name = interface_with(current).await?;
    for command in commands(req, &name)? {
        run(&command).await?;
    }
    log::info!(
        "interface {name} ({}) configured: {:?}",
        req.mac,
        req.addresses
    );
    Ok(())
}

/// Brings the loopback interface up, in this process (no `ip` to start: it runs before the
/// agent serves, and a process started under emulation costs tens of milliseconds).
pub fn loopback_up() -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: a plain socket call; the descriptor is owned right away.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `socket` is a descriptor we just opened and nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(socket) };
    // SAFETY: an all-zero ifreq is valid; "lo" fits its name with the NUL.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write the ifreq we own.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> api::UpdateInterfaceRequest {
        api::UpdateInterfaceRequest {
            mac: "02:42:0a:58:1e:05".into(),
            addresses: vec!["10.88.30.5/24".into()],
            mtu: 1500,
            routes: vec![api::Route {
                destination: "default".into(),
                gateway: "10.88.30.1".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn the_host_interface_becomes_ip_commands() {
        let commands = commands(&request(), "eth0").unwrap();
        let lines: Vec<String> = commands.iter().map(|c| c.join(" ")).collect();
        assert_eq!(
            lines,
            [
                "ip link set dev eth0 mtu 1500",
                "ip link set dev eth0 up",
                "ip addr add 10.88.30.5/24 dev eth0",
                "ip route add default via 10.88.30.1 dev eth0"
            ]
        );
    }

    #[test]
    fn a_cloned_vms_interface_is_given_the_pods_mac_first() {
        let mut cloned = request();
        cloned.current_mac = "02:76:73:00:00:01".into();
        let lines: Vec<String> = commands(&cloned, "eth0")
            .unwrap()
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert_eq!(lines[1], "ip link set dev eth0 address 02:42:0a:58:1e:05");
        assert_eq!(lines[2], "ip link set dev eth0 up");
        cloned.current_mac = "02:76:73".into();
        assert!(commands(&cloned, "eth0")
            .unwrap_err()
            .to_string()
            .starts_with("current_mac"));
    }

    #[test]
    fn values_that_are_no_address_are_refused_naming_the_field() {
        let mut bad = request();
        bad.addresses = vec!["-f inet".into()];
        assert!(commands(&bad, "eth0")
            .unwrap_err()
            .to_string()
            .starts_with("addresses"));
        let mut bad = request();
        bad.addresses = vec!["10.0.0.1/33".into()];
        assert!(commands(&bad, "eth0").is_err());
        let mut bad = request();
        bad.mac = "02:42:0a:58:1e".into();
        assert!(commands(&bad, "eth0")
            .unwrap_err()
            .to_string()
            .starts_with("mac"));
        let mut bad = request();
        bad.routes[0].gateway = "gw".into();
        assert!(commands(&bad, "eth0")
            .unwrap_err()
            .to_string()
            .starts_with("routes.gateway"));
        let mut bad = request();
        bad.mtu = 20;
        assert!(commands(&bad, "eth0")
            .unwrap_err()
            .to_string()
            .starts_with("mtu"));
    }
}
