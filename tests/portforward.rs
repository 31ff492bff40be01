//! Port forwarding into a pod on the `vessel-vm` handler: containerd's CRI PortForward enters
//! the pod's network namespace and dials `localhost:PORT`, where the vm backend's listener
//! relays the connection to the same port of the guest's loopback.
//!
//! A pod whose container serves HTTP on the guest's 127.0.0.1:8081 (busybox `httpd`, bound to
//! the loopback only) and echoes on port 8080 (busybox `nc -ll -e cat`). The test enters the
//! pod's network namespace as containerd does and: gets the page; sends 100 KiB and reads
//! them back, then eight connections' worth at once; finds a port nothing listens on in the
//! guest closed at once, not hung. Then the same page through containerd's own PortForward
//! (its streaming server's WebSocket protocol). After the pod is removed, the namespace (kept
//! open by the test) holds neither the redirect nor a listener, and nothing else of the pod
//! is left.

mod common;

use std::{
    fs::File,
    io::{ErrorKind, Read, Write},
    net::{Shutdown, TcpStream},
    os::fd::AsRawFd,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{cri::*, *};
use k8s_cri::v1::{NamespaceMode, PodSandboxStatusRequest, PortForwardRequest};

const HTTP_PORT: u16 = 8081;
const ECHO_PORT: u16 = 8080;
/// A port nothing listens on in the guest.
const CLOSED_PORT: u16 = 9;
const PAGE: &str = "hello from the guest's loopback";
/// How long one exchange may take under TCG.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(30);

/// Runs `f` on a thread that joined the network namespace `netns`, as containerd's
/// PortForward does.
fn in_netns<T: Send + 'static>(netns: &File, f: impl FnOnce() -> T + Send + 'static) -> T {
    let netns = netns.try_clone().expect("dup the namespace");
    std::thread::spawn(move || {
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("the namespace's thread")
}

/// Connects to 127.0.0.1:`port`, sends `request` (then ends its side), and reads until the
/// other side ends.
fn exchange(port: u16, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(EXCHANGE_LIMIT))?;
    stream.set_write_timeout(Some(EXCHANGE_LIMIT))?;
    // Written from a thread of its own, so that a server echoing before it read everything
    // cannot block both sides.
    let mut writer = stream.try_clone()?;
    let request = request.to_vec();
    let writing = std::thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(&request)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut reply = Vec::new();
    let read = stream.read_to_end(&mut reply);
    writing.join().expect("writer")?;
    read.map(|_| reply)
}

/// The pod's network namespace, from the sandbox's runtime spec in its verbose status.
async fn netns_of(cri: &mut Cri, pod: &str) -> String {
    let status = cri
        .runtime
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.to_string(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner();
    let info: serde_json::Value =
        serde_json::from_str(status.info.get("info").expect("verbose info")).expect("info JSON");
    info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["type"] == "network")
        .and_then(|n| n["path"].as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| panic!("no network namespace path in {info}"))
        .to_string()
}

/// `args` run in the network namespace at `path`: their stdout.
fn run_in(path: &str, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={path}"))
        .args(args)
        .output()
        .expect("nsenter");
    assert!(
        out.status.success(),
        "nsenter --net={path} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sends `request` to port `port` through a CRI streaming URL of PortForward, over the
/// `v4.channel.k8s.io` WebSocket protocol (channel 0 data, 1 errors; each starts with the
/// port, two bytes), and collects what comes back on both until the stream ends or the data
/// holds `until`.
fn forward_through_containerd(url: &str, port: u16, request: &[u8], until: &str) -> String {
    use tungstenite::client::IntoClientRequest;
    let url = format!("{}?port={port}", url.replacen("http://", "ws://", 1));
    let mut ws_request = url.into_client_request().expect("streaming url");
    ws_request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v4.channel.k8s.io".parse().expect("header"),
    );
    let (mut socket, _) = tungstenite::connect(ws_request).expect("open streaming websocket");
    if let tungstenite::stream::MaybeTlsStream::Plain(tcp) = socket.get_ref() {
        tcp.set_read_timeout(Some(EXCHANGE_LIMIT))
            .expect("read timeout");
    }
    let mut message = vec![0];
    message.extend_from_slice(request);
    socket
        .send(tungstenite::Message::binary(message))
        .expect("send data");
    let (mut data, mut errors) = (Vec::new(), Vec::new());
    while let Ok(message) = socket.read() {
        let bytes = message.into_data();
        match bytes.first() {
            Some(0) => data.extend_from_slice(&bytes[1..]),
            Some(1) => errors.extend_from_slice(&bytes[1..]),
            _ => {}
        }
        if data.len() > 2 && String::from_utf8_lossy(&data[2..]).contains(until) {
            break;
        }
    }
    let _ = socket.close(None);
    let skip = |b: &[u8]| String::from_utf8_lossy(b.get(2..).unwrap_or_default()).into_owned();
    format!("{}{}", skip(&data), skip(&errors))
}

#[tokio::test]
async fn a_port_of_the_guests_loopback_is_forwarded_from_the_pods_namespace() {
    let started = Instant::now();
    let logs = LogDir::new("vm-portfwd");
    let config = pod_config("vm-portfwd", &logs.0, NamespaceMode::Pod);
    let mut cri = Cri::connect().await;
    let pod = cri
        .run_pod_with(&config, VM_HANDLER)
        .await
        .expect("RunPodSandbox (vessel-vm)");
    let guard = PodGuard(pod.clone());
    let script = format!(
        "mkdir -p /tmp/www && echo \"{PAGE}\" > /tmp/www/index.html && \
         httpd -p 127.0.0.1:{HTTP_PORT} -h /tmp/www && echo serving && \
         exec nc -ll -p {ECHO_PORT} -e cat"
    );
    let server = cri.start_container(&pod, &config, "server", &script).await;
    let log = logs.0.join("server.log");
    assert!(
        wait_until(Duration::from_secs(60), || std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("serving"))),
        "the guest's servers did not start: {:?}",
        std::fs::read_to_string(&log)
    );
    let netns_path = netns_of(&mut cri, &pod).await;
    // Held open, so that the namespace can be looked into after the pod is gone.
    let netns = File::open(&netns_path).expect("open the pod's network namespace");
    let booted = started.elapsed();

    let rules = run_in(
        &netns_path,
        &["nft", "list", "table", "ip", "vessel_portforward"],
    );
    assert!(
        rules.contains("ip daddr 127.0.0.1") && rules.contains("redirect to"),
        "the redirect in the pod's namespace:\n{rules}"
    );

    // The page of a server that listens on the guest's loopback only.
    let since = Instant::now();
    let page = in_netns(&netns, || {
        exchange(HTTP_PORT, b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
    })
    .expect("GET through the pod's namespace");
    let page = String::from_utf8_lossy(&page).into_owned();
    assert!(page.starts_with("HTTP/1."), "{page}");
    assert!(page.contains(PAGE), "the guest's page: {page}");
    let get_time = since.elapsed();

    // 100 KiB there and back again.
    let data: Vec<u8> = (0..100 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let since = Instant::now();
    let sent = data.clone();
    let echoed =
        in_netns(&netns, move || exchange(ECHO_PORT, &sent)).expect("echo through the namespace");
    let echo_time = since.elapsed();
    assert_eq!(echoed.len(), data.len(), "bytes echoed");
    assert!(echoed == data, "the echo differs from what was sent");

    // Eight connections at once, each its own bytes.
    let since = Instant::now();
    let all_echoed = in_netns(&netns, || {
        let each: Vec<_> = (0..8u8)
            .map(|n| {
                std::thread::spawn(move || {
                    let sent = vec![b'a' + n; 32 * 1024];
                    let echoed = exchange(ECHO_PORT, &sent).expect("echo at once");
                    echoed == sent
                })
            })
            .collect();
        each.into_iter().all(|t| t.join().expect("echo thread"))
    });
    let parallel_time = since.elapsed();
    assert!(all_echoed, "eight echoes at once came back unchanged");

    // A port nothing listens on in the guest: the connection ends at once, not hung.
    let since = Instant::now();
    let closed = in_netns(&netns, || exchange(CLOSED_PORT, b"anyone?"));
    let closed_time = since.elapsed();
    match &closed {
        Ok(reply) => assert!(reply.is_empty(), "an answer from a closed port: {reply:?}"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused | ErrorKind::BrokenPipe
            ),
            "a closed port: {e}"
        ),
    }
    assert!(
        closed_time < Duration::from_secs(15),
        "a closed port took {closed_time:?}"
    );

    // containerd's own PortForward, through its streaming server.
    let url = cri
        .runtime
        .port_forward(PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![HTTP_PORT.into()],
        })
        .await
        .expect("PortForward")
        .into_inner()
        .url;
    let since = Instant::now();
    let forwarded = tokio::task::spawn_blocking(move || {
        forward_through_containerd(
            &url,
            HTTP_PORT,
            b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n",
            PAGE,
        )
    })
    .await
    .expect("port-forward stream");
    let cri_time = since.elapsed();
    assert!(
        forwarded.contains(PAGE),
        "the guest's page through containerd's PortForward: {forwarded}"
    );
    eprintln!(
        "pod and servers up in {booted:?}; GET {get_time:?}; 100 KiB echoed in {echo_time:?}; \
         8 x 32 KiB at once in {parallel_time:?}; closed port ended in {closed_time:?}; GET through containerd {cri_time:?} ({server})"
    );

    cri.remove_pod(&pod, 2).await;
    drop(guard);
    // The namespace outlived the pod (the test holds it; CNI's teardown set its loopback
    // down): neither the redirect nor a listener is left in it.
    let held = format!("/proc/{}/fd/{}", std::process::id(), netns.as_raw_fd());
    let tables = run_in(&held, &["nft", "list", "tables"]);
    assert!(
        !tables.contains("vessel_portforward"),
        "the redirect outlived the pod: {tables}"
    );
    let sockets = run_in(&held, &["cat", "/proc/net/tcp"]);
    assert!(
        !sockets
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(3) == Some("0A")),
        "a listener outlived the pod:\n{sockets}"
    );
    assert!(leftovers(&pod).is_empty(), "{:?}", leftovers(&pod));
    assert!(
        !Path::new("/run/vessel/k8s.io").join(&pod).exists(),
        "the sandbox's state is removed"
    );
}
