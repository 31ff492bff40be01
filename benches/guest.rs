//! Guest boot figures under QEMU (TCG here, one vCPU), the same kernel, initramfs and devices
//! each time:
//! - bare boot to init: `rdinit=/bin/busybox` echoing a marker, the floor;
//! - boot to the agent answering its first health check over its virtio-serial port.
//!
//! Then the sizes of the agent binary and the initramfs.
//!
//! `cargo bench --bench guest` (env: `VESSEL_GUEST_DIR`, default build/guest; `VESSEL_AGENT`,
//! the agent binary whose size to print; `N`, default 5).

#[path = "../tests/common/guest.rs"]
#[allow(dead_code)]
mod guest;

use std::time::{Duration, Instant};

use guest::{guest_dir, Guest};

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

const MARKER: &str = "vessel-bench-init-reached";

/// Boots with busybox as init, which prints the marker: the time to it.
async fn bare_boot() -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let init = format!("rdinit=/bin/busybox -- echo {MARKER}");
    let started = Instant::now();
    let guest = Guest::boot_with(dir.path(), dir.path(), &init);
    loop {
        if guest.console_text().contains(MARKER) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{}",
            guest.console_text()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Boots the agent: the time to its first health check answered.
async fn agent_boot() -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut guest = Guest::boot_with(dir.path(), dir.path(), "");
    guest.connect(Duration::from_secs(120)).await;
    started.elapsed()
}

fn kib(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len() / 1024).unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    let image = guest_dir();
    let mut bare = Vec::new();
    let mut agent = Vec::new();
    for _ in 0..n {
        bare.push(bare_boot().await);
        agent.push(agent_boot().await);
    }
    // `make bench` says where the release agent is.
    let agent_kib = std::env::var_os("VESSEL_AGENT")
        .map(|path| kib(std::path::Path::new(&path)).to_string())
        .unwrap_or_else(|| "n/a (set VESSEL_AGENT)".into());
    println!("\n== guest boot (QEMU TCG, 1 vCPU, median of N={n})");
    println!(
        "{:<40} {:>10}",
        "bare boot to init (ms)",
        median(bare).as_millis()
    );
    println!(
        "{:<40} {:>10}",
        "boot to agent health check (ms)",
        median(agent).as_millis()
    );
    println!("{:<40} {:>10}", "vessel-agent binary (KiB)", agent_kib);
    println!(
        "{:<40} {:>10}",
        "initramfs (KiB)",
        kib(&image.join("initramfs.cpio"))
    );
    println!(
        "{:<40} {:>10}",
        "vmlinux (KiB)",
        kib(&image.join("vmlinux"))
    );
}
