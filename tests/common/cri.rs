//! CRI helpers of the integration tests: a CRI client on the private containerd's socket,
//! pods and containers of the `vessel` handler, the streaming protocol.

use std::{path::PathBuf, time::Duration};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ExecRequest, ExecSyncRequest, ExecSyncResponse, ImageSpec,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

use super::{leftovers, wait_until, BUSYBOX};

/// The CRI runtime handler registered for vessel in the test containerd.
pub const HANDLER: &str = "vessel";
/// The handler of the same shim with the vm backend's configuration.
pub const VM_HANDLER: &str = "vessel-vm";

/// A CRI client on the private containerd's socket.
pub struct Cri {
    /// The runtime service.
    pub runtime: RuntimeServiceClient<Channel>,
    _images: ImageServiceClient<Channel>,
}

impl Cri {
    pub async fn connect() -> Self {
        let socket = super::socket();
        let channel = Endpoint::from_static("http://[::]:50051")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .expect("connect to containerd's CRI socket");
        Self {
            runtime: RuntimeServiceClient::new(channel.clone()),
            _images: ImageServiceClient::new(channel),
        }
    }

    /// RunPodSandbox with the vessel handler (`vessel-vm` on the vm backend).
    pub async fn run_pod(&mut self, config: &PodSandboxConfig) -> Result<String, tonic::Status> {
        let handler = if super::ctr::on_vm() {
            super::ctr::vm_flavour()
        } else {
            HANDLER
        };
        self.run_pod_with(config, handler).await
    }

    /// RunPodSandbox with runtime handler `handler` (`vessel-vm`: the vm backend).
    pub async fn run_pod_with(
        &mut self,
        config: &PodSandboxConfig,
        handler: &str,
    ) -> Result<String, tonic::Status> {
        let request = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_string(),
        };
        let response = self.runtime.run_pod_sandbox(request).await?;
        Ok(response.into_inner().pod_sandbox_id)
    }

    /// Creates and starts a busybox container running `script` in the pod.
    pub async fn start_container(
        &mut self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        name: &str,
        script: &str,
    ) -> String {
        self.create_and_start(pod, pod_config, container_config(name, script))
            .await
    }

    /// Creates and starts `container` in the pod; its id.
    pub async fn create_and_start(
        &mut self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        container: ContainerConfig,
    ) -> String {
        let request = CreateContainerRequest {
            pod_sandbox_id: pod.to_string(),
            config: Some(container),
            sandbox_config: Some(pod_config.clone()),
        };
        let id = self
            .runtime
            .create_container(request)
            .await
            .expect("CreateContainer")
            .into_inner()
            .container_id;
        let request = StartContainerRequest {
            container_id: id.clone(),
        };
        self.runtime
            .start_container(request)
            .await
            .expect("StartContainer");
        id
    }

    /// Stops and removes container `id`.
    pub async fn remove_container(&mut self, id: &str) {
        self.runtime
            .stop_container(StopContainerRequest {
                container_id: id.to_string(),
                timeout: 10,
            })
            .await
            .expect("StopContainer");
        self.runtime
            .remove_container(RemoveContainerRequest {
                container_id: id.to_string(),
            })
            .await
            .expect("RemoveContainer");
    }

    /// ContainerStatus of container `id`.
    pub async fn status(&mut self, id: &str) -> ContainerStatus {
        self.runtime
            .container_status(ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .expect("a status")
    }

    /// Waits (up to two minutes) until container `id` exited; its status.
    pub async fn wait_exited(&mut self, id: &str) -> ContainerStatus {
        for _ in 0..1200 {
            let status = self.status(id).await;
            if status.state == ContainerState::ContainerExited as i32 {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{id} did not exit within two minutes");
    }

    /// The address CNI gave pod `pod` (empty without one).
    pub async fn pod_ip(&mut self, pod: &str) -> String {
        let status = self
            .runtime
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.to_string(),
                verbose: false,
            })
            .await
            .expect("PodSandboxStatus")
            .into_inner()
            .status
            .expect("status");
        status.network.map(|n| n.ip).unwrap_or_default()
    }

    /// ExecSync of `sh -c script` in container `id`.
    pub async fn exec_sh(&mut self, id: &str, script: &str) -> ExecSyncResponse {
        self.runtime
            .exec_sync(ExecSyncRequest {
                container_id: id.to_string(),
                cmd: vec!["sh".into(), "-c".into(), script.into()],
                timeout: 120,
            })
            .await
            .expect("ExecSync")
            .into_inner()
    }

    /// Exec through the streaming server: the process's stdout (sent no stdin).
    pub async fn exec_stdout(&mut self, request: ExecRequest) -> String {
        let url = self
            .runtime
            .exec(request)
            .await
            .expect("Exec")
            .into_inner()
            .url;
        tokio::task::spawn_blocking(move || stream_stdout(&url, b"", ""))
            .await
            .expect("exec stream")
    }

    /// The memory a container uses (working set, or usage), as ContainerStats reports it.
    pub async fn memory_usage(&mut self, id: &str) -> u64 {
        let stats = self
            .runtime
            .container_stats(k8s_cri::v1::ContainerStatsRequest {
                container_id: id.to_string(),
            })
            .await
            .expect("ContainerStats")
            .into_inner()
            .stats
            .expect("stats");
        stats
            .memory
            .and_then(|m| m.working_set_bytes.or(m.usage_bytes))
            .map(|v| v.value)
            .unwrap_or_default()
    }

    /// Stops and removes the pod `times` times each (again is not an error), then checks
    /// that its shim exits and nothing of it is left.
    pub async fn remove_pod(&mut self, pod: &str, times: usize) {
        for _ in 0..times {
            let request = StopPodSandboxRequest {
                pod_sandbox_id: pod.to_string(),
            };
            self.runtime
                .stop_pod_sandbox(request)
                .await
                .expect("StopPodSandbox");
        }
        for _ in 0..times {
            let request = RemovePodSandboxRequest {
                pod_sandbox_id: pod.to_string(),
            };
            self.runtime
                .remove_pod_sandbox(request)
                .await
                .expect("RemovePodSandbox");
        }
        assert!(
            wait_until(Duration::from_secs(10), || pod_shims(pod) == 0),
            "the pod's shim exits"
        );
        assert!(leftovers(pod).is_empty(), "{:?}", leftovers(pod));
    }
}

/// A vm pod's interface in its network namespace, as the sandbox's record names it.
pub struct PodInterface {
    /// The pod's network namespace.
    pub netns: String,
    /// The interface's name there.
    pub name: String,
    /// Its MAC address.
    pub mac: String,
}

impl PodInterface {
    /// The interface of vm pod `pod` (CRI namespace), from its sandbox's record.
    pub fn of(pod: &str) -> Self {
        let record: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                std::path::Path::new("/run/vessel/k8s.io")
                    .join(pod)
                    .join("sandbox.json"),
            )
            .expect("the sandbox's record"),
        )
        .unwrap();
        let netns = record["network"][0]
            .as_str()
            .expect("netns recorded")
            .to_string();
        let name = record["network"][1].as_str().unwrap().to_string();
        let mut interface = Self {
            netns,
            name,
            mac: String::new(),
        };
        let link = interface.in_netns(&["ip", "-o", "link", "show", "dev", &interface.name]);
        interface.mac = link
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .expect("the pod interface's MAC")
            .to_string();
        interface
    }

    /// stdout of `args` run in the pod's network namespace.
    pub fn in_netns(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", self.netns))
            .args(args)
            .output()
            .expect("nsenter");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A pod config: its own log directory, the given network namespace mode and annotations.
pub fn pod_config(name: &str, logs: &std::path::Path, network: NamespaceMode) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_string(),
            uid: super::unique_id("uid"),
            namespace: "vessel-test".to_string(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        log_directory: logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: network as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A busybox container running `script` with `sh -c`, logging to `NAME.log`.
pub fn container_config(name: &str, script: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX.to_string(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

/// vessel shim daemons serving the pod: their `-id` is the pod's sandbox id.
pub fn pod_shims(pod: &str) -> usize {
    super::shim_processes()
        .iter()
        .filter(|(_, cmdline)| cmdline.contains(pod))
        .count()
}

/// Stops and removes a pod on drop, so that a failing test leaves no pod behind.
pub struct PodGuard(pub String);

impl Drop for PodGuard {
    fn drop(&mut self) {
        let pod = self.0.clone();
        // Drop cannot await: a runtime of its own on a thread of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("runtime for cleanup");
            runtime.block_on(async {
                let mut cri = Cri::connect().await;
                let stop = StopPodSandboxRequest {
                    pod_sandbox_id: pod.clone(),
                };
                let _ = cri.runtime.stop_pod_sandbox(stop).await;
                let remove = RemovePodSandboxRequest {
                    pod_sandbox_id: pod,
                };
                let _ = cri.runtime.remove_pod_sandbox(remove).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// A temporary directory for a pod's logs, removed on drop.
pub struct LogDir(pub PathBuf);

impl LogDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(super::unique_id(name));
        std::fs::create_dir_all(&dir).expect("create log dir");
        Self(dir)
    }
}

impl Drop for LogDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends `input` as stdin to a CRI streaming URL (exec or attach) and reads what it sends on
/// stdout until `until` shows up (or the stream ends), over the `channel.k8s.io` WebSocket
/// protocol (first byte of each message: 0 stdin, 1 stdout, 2 stderr).
pub fn stream_stdout(url: &str, input: &[u8], until: &str) -> String {
    use tungstenite::client::IntoClientRequest;
    let url = url.replacen("http://", "ws://", 1);
    let mut request = url.into_client_request().expect("streaming url");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v4.channel.k8s.io".parse().expect("header"),
    );
    let (mut socket, _) = tungstenite::connect(request).expect("open streaming websocket");
    if let tungstenite::stream::MaybeTlsStream::Plain(tcp) = socket.get_ref() {
        tcp.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
    }
    if !input.is_empty() {
        let mut message = vec![0];
        message.extend_from_slice(input);
        socket
            .send(tungstenite::Message::binary(message))
            .expect("send stdin");
    }
    let mut stdout = String::new();
    while let Ok(message) = socket.read() {
        let data = message.into_data();
        if data.first() == Some(&1) {
            stdout.push_str(&String::from_utf8_lossy(&data[1..]));
        }
        if !until.is_empty() && stdout.contains(until) {
            break;
        }
    }
    let _ = socket.close(None);
    stdout
}
