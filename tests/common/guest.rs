//! The guest image (`make guest`) booted under QEMU for a test: the agent's virtio-serial port
//! as a unix socket, a shared directory over 9p, the console in a file.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use vessel::protos::{agent::Empty, agent_ttrpc::AgentClient};

/// kata's kernel parameters for a fast boot, the console on the first serial port, and the
/// vm backend's clock under TCG (the HPET: see `Accelerator::clock_params`).
pub const KERNEL_PARAMS: &str = "console=ttyS0 clocksource=hpet tsc=unstable no_timer_check \
    rcupdate.rcu_expedited=1 i8042.direct=1 i8042.dumbkbd=1 i8042.nopnp=1 i8042.noaux=1 \
    noreplace-smp cryptomgr.notests pci=lastbus=0 quiet panic=-1";

/// The firmware vessel's VM configuration uses: qboot starts the kernel sooner than SeaBIOS.
pub const QBOOT: &str = "/usr/share/qemu/qboot.rom";

/// The guest image's directory: `VESSEL_GUEST_DIR`, or `build/guest` of the checkout.
pub fn guest_dir() -> PathBuf {
    let dir = std::env::var_os("VESSEL_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("build/guest"));
    for file in ["vmlinux", "initramfs.cpio"] {
        assert!(
            dir.join(file).exists(),
            "{} is missing: run `make guest`",
            dir.join(file).display()
        );
    }
    dir
}

/// A QEMU running the guest; killed when dropped.
pub struct Guest {
    qemu: Child,
    /// The host side of the agent's port.
    pub socket: PathBuf,
    /// The guest's console output.
    pub console: PathBuf,
}

impl Guest {
    /// Boots the guest (TCG, one vCPU) with `shared` as its shared directory; its files
    /// (socket, console) go in `dir`.
    pub fn boot(dir: &Path, shared: &Path) -> Self {
        Self::boot_with(dir, shared, "vessel.debug=1")
    }

    /// Boots the guest as [`Guest::boot`] with `params` after the usual kernel parameters.
    pub fn boot_with(dir: &Path, shared: &Path, params: &str) -> Self {
        let image = guest_dir();
        let socket = dir.join("agent.sock");
        let console = dir.join("console.log");
        let qemu = Command::new("qemu-system-x86_64")
            .args([
                "-machine",
                "q35,accel=tcg",
                "-cpu",
                "max",
                "-smp",
                "1",
                "-m",
                "512M",
            ])
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .args(["-bios", QBOOT])
            .arg("-kernel")
            .arg(image.join("vmlinux"))
            .arg("-initrd")
            .arg(image.join("initramfs.cpio"))
            .args(["-append", &format!("{KERNEL_PARAMS} {params}")])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .args(["-device", "virtio-serial-pci,id=serial0"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=agent,path={},server=on,wait=off",
                socket.display()
            ))
            .args(["-device", "virtserialport,chardev=agent,name=agent.0"])
            .arg("-fsdev")
            .arg(format!(
                "local,id=shared,path={},security_model=none",
                shared.display()
            ))
            .args(["-device", "virtio-9p-pci,fsdev=shared,mount_tag=vessel"])
            .stdin(Stdio::null())
            .spawn()
            .expect("start qemu-system-x86_64 (make deps-vm)");
        Self {
            qemu,
            socket,
            console,
        }
    }

    /// The console so far, for failure messages.
    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Connects to the agent once it answers its health check.
    pub async fn connect(&mut self, limit: Duration) -> AgentClient {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(client) = try_check(&self.socket).await {
                return client;
            }
            if let Ok(Some(status)) = self.qemu.try_wait() {
                panic!(
                    "QEMU exited ({status}) before the agent answered:\n{}",
                    self.console_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not answer within {limit:?}:\n{}",
                self.console_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for QEMU to exit.
    pub async fn exited(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.qemu.try_wait().expect("wait for QEMU") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "QEMU still runs after {limit:?}:\n{}",
                self.console_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

/// A client whose health check the agent answered, or none yet.
async fn try_check(socket: &Path) -> Option<AgentClient> {
    let client = ttrpc::r#async::Client::connect(&format!("unix://{}", socket.display()))
        .await
        .ok()?;
    let client = AgentClient::new(client);
    let ctx = ttrpc::context::with_timeout(Duration::from_millis(500).as_nanos() as i64);
    match client.check(ctx, &Empty::default()).await {
        Ok(reply) if reply.serving => Some(client),
        _ => None,
    }
}
