//! The guest image in a real VM: QEMU (TCG here) boots `make guest`'s kernel and initramfs,
//! the agent serves its virtio-serial port, and a busybox root file system comes from the
//! host over 9p. The same protocol scenario as `tests/agent.rs`, then the sandbox's end.

mod common;

use std::time::Duration;

use common::{agent, guest::Guest};

/// Boot to a serving agent takes 2-4 s under TCG; a loaded CI machine gets slack.
const BOOT_LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn the_guest_boots_serves_the_protocol_and_powers_off() {
    boot_and_serve("vessel.debug=1").await;
}

/// The opt-in built-in runtime (libcontainer inside the agent), the same protocol.
#[tokio::test]
async fn the_agents_builtin_runtime_serves_the_protocol_in_the_guest() {
    boot_and_serve("vessel.debug=1 vessel.runtime=builtin").await;
}

/// Boots the guest with `params`, runs the protocol's scenario, and powers it off.
async fn boot_and_serve(params: &str) {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let mut guest = Guest::boot_with(dir.path(), &shared, params);

    let client = guest.connect(BOOT_LIMIT).await;
    agent::scenario(&client, &shared).await;

    // The host's side goes away and comes back (a shim that restarted): served again.
    drop(client);
    let client = guest.connect(Duration::from_secs(10)).await;
    assert!(agent::healthy(&client).await);

    agent::destroy(&client).await;
    let status = guest.exited(Duration::from_secs(30)).await;
    assert!(status.success(), "QEMU: {status}\n{}", guest.console_text());
    let console = guest.console_text();
    assert!(console.contains("sandbox destroyed"), "{console}");
    assert!(!console.contains("panic"), "{console}");
    assert!(!guest.socket.exists(), "QEMU left its socket");
    drop(guest);

    // The guest wrote nothing into the shared directory but what the test put there.
    let mut left: Vec<_> = std::fs::read_dir(&shared)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["pod"]);
    let path = dir.path().to_path_buf();
    dir.close().expect("remove the test's directory");
    assert!(!path.exists());
}
