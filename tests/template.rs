//! VM templates (`[factory] enable_template`) end to end: `factory init`, `status` and
//! `destroy`; pods whose VMs are clones (each with its own randomness and the host's clock,
//! the pod's network on its interface); a changed kernel making a new template; ten pods at
//! once making one. Each test has a template directory of its own, removed with `factory
//! destroy`; `make test`'s second pass runs the ctr and CRI tests on clones as well.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::{cri::*, ctr::*, *};
use k8s_cri::v1::NamespaceMode;

/// The CRI handler whose pods' VMs are cloned from `$DIR/templates`.
const TEMPLATE_HANDLER: &str = "vessel-vm-template";

/// A configuration of the vm backend with templates in a directory of its own, its kernel
/// `kernel` when given; `factory destroy` on drop, and the directory removed.
struct Factory {
    dir: PathBuf,
    config: PathBuf,
    store: PathBuf,
}

impl Factory {
    fn new(name: &str, kernel: Option<&Path>) -> Self {
        let dir = containerd_dir().join(unique_id(name));
        std::fs::create_dir_all(&dir).unwrap();
        let store = dir.join("templates");
        let base = std::fs::read_to_string(containerd_dir().join("vessel-vm.toml"))
            .expect("vessel-vm.toml, written by scripts/containerd.sh");
        let mut text: String = base
            .lines()
            .map(|line| match kernel {
                Some(kernel) if line.starts_with("kernel = ") => {
                    format!("kernel = \"{}\"\n", kernel.display())
                }
                _ => format!("{line}\n"),
            })
            .collect();
        text.push_str(&format!(
            "\n[factory]\nenable_template = true\ntemplate_path = \"{}\"\n",
            store.display()
        ));
        let config = dir.join("vessel.toml");
        std::fs::write(&config, text).unwrap();
        Self { dir, config, store }
    }

    /// `containerd-shim-vessel-v2 factory ACTION --config CONFIG`.
    fn run(&self, action: &str) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_containerd-shim-vessel-v2"))
            .args(["factory", action, "--config"])
            .arg(&self.config)
            .output()
            .expect("run factory");
        assert!(
            out.status.success(),
            "factory {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `factory status`, a line per template.
    fn status(&self) -> Vec<String> {
        let out = String::from_utf8_lossy(&self.run("status").stdout).into_owned();
        if out.starts_with("no VM template") {
            return Vec::new();
        }
        out.lines().map(String::from).collect()
    }

    /// `ctr run -d` of `cmd` in a VM cloned from this factory's template.
    fn run_detached(&self, id: &str, cmd: &[&str]) {
        let config = self.config.display().to_string();
        run_detached_with(&config, &[], id, cmd, Duration::from_secs(300));
    }

    /// `ctr run --rm` of `cmd` in a VM cloned from this factory's template; its stdout.
    fn run_rm(&self, id: &str, cmd: &[&str]) -> String {
        let config = self.config.display().to_string();
        let out = run_rm(id, &["--runtime-config-path", &config], cmd)
            .timeout(Duration::from_secs(300))
            .run();
        assert_success("ctr run --rm (template)", &out);
        stdout(&out)
    }
}

impl Drop for Factory {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_containerd-shim-vessel-v2"))
            .args(["factory", "destroy", "--config"])
            .arg(&self.config)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The key a status line starts with.
fn key(line: &str) -> String {
    line.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// What of `path` is left: mounts, processes naming it, the directory.
fn left_of(path: &Path) -> Vec<String> {
    let needle = path.display().to_string();
    let mut left: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(|l| format!("mount {l}"))
        .collect();
    left.extend(
        processes()
            .into_iter()
            .filter(|p| p.cmdline().contains(&needle))
            .map(|p| format!("process {}: {}", p.pid, p.cmdline())),
    );
    if path.exists() {
        left.push(format!("{needle} exists"));
    }
    left
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn factory_init_makes_the_template_pods_use_and_destroy_leaves_nothing() {
    let factory = Factory::new("tpl-cli", None);
    assert!(factory.status().is_empty(), "no template yet");
    let made = String::from_utf8_lossy(&factory.run("init").stdout).into_owned();
    assert!(made.starts_with("template "), "{made}");
    let status = factory.status();
    assert_eq!(status.len(), 1, "{status:?}");
    let line = &status[0];
    assert!(
        line.contains("clones 0") && line.ends_with("current"),
        "{line}"
    );
    assert!(made.contains(&key(line)), "{made} / {line}");
    let again = String::from_utf8_lossy(&factory.run("init").stdout).into_owned();
    assert!(again.contains(&key(line)), "init again keeps it: {again}");

    // A pod of this configuration starts from it: no other template is made.
    let id = unique_id("tpl-cli-pod");
    let _guard = ContainerGuard::new(&id);
    assert_eq!(
        factory.run_rm(&id, &["echo", "from-a-clone"]),
        "from-a-clone\n"
    );
    let after = factory.status();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(key(&after[0]), key(line));
    assert_no_leftovers(&id);

    let destroyed = String::from_utf8_lossy(&factory.run("destroy").stdout).into_owned();
    assert!(
        destroyed.starts_with("1 template(s) removed"),
        "{destroyed}"
    );
    assert_eq!(left_of(&factory.store), Vec::<String>::new());
}

#[test]
fn a_changed_kernel_makes_a_new_template_and_the_old_one_is_never_used() {
    let guest = common::guest::guest_dir();
    // Removed however the test ends.
    let kernels = tempfile::tempdir().unwrap();
    let dir = kernels.path();
    let kernel = dir.join("vmlinux");
    std::fs::copy(guest.join("vmlinux"), &kernel).unwrap();
    let factory = Factory::new("tpl-kernel", Some(&kernel));
    factory.run("init");
    let first = factory.status();
    assert_eq!(first.len(), 1, "{first:?}");

    // The same kernel, written again: another file as far as the template knows.
    let replacement = dir.join("vmlinux.new");
    std::fs::copy(guest.join("vmlinux"), &replacement).unwrap();
    std::fs::rename(&replacement, &kernel).unwrap();
    let outdated = factory.status();
    assert!(outdated[0].contains("outdated"), "{outdated:?}");

    let id = unique_id("tpl-kernel-pod");
    let _guard = ContainerGuard::new(&id);
    assert_eq!(factory.run_rm(&id, &["echo", "new-kernel"]), "new-kernel\n");
    let second = factory.status();
    assert_eq!(
        second.len(),
        1,
        "the outdated template is removed: {second:?}"
    );
    assert_ne!(key(&second[0]), key(&first[0]), "a new template");
    assert!(second[0].ends_with("current"), "{second:?}");
    assert_no_leftovers(&id);
}

#[test]
fn clones_have_their_own_randomness_and_the_hosts_clock() {
    let factory = Factory::new("tpl-clock", None);
    factory.run("init");
    // Long enough after the save that a clone still on the template's clock is seen late.
    std::thread::sleep(Duration::from_secs(6));
    let script = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s";
    let mut randoms = Vec::new();
    for n in 0..2 {
        let id = unique_id(&format!("tpl-clock-{n}"));
        let _guard = ContainerGuard::new(&id);
        let before = now();
        let out = factory.run_rm(&id, &["sh", "-c", script]);
        let after = now();
        let mut lines = out.lines();
        let random = lines.next().unwrap_or_default().to_string();
        assert_eq!(random.len(), 64, "{out:?}");
        let guest: u64 = lines
            .next()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or_else(|| panic!("the guest's clock: {out:?}"));
        assert!(
            guest + 2 >= before && guest <= after + 2,
            "the clone's clock {guest} within 2 s of the host's ({before}..{after})"
        );
        randoms.push(random);
        assert_no_leftovers(&id);
    }
    assert_ne!(
        randoms[0], randoms[1],
        "two clones read different random bytes"
    );
}

#[tokio::test]
async fn a_cri_pod_from_a_template_has_its_pod_ip_and_mac_on_its_guest_interface() {
    let logs = LogDir::new("tpl-pod");
    let config = pod_config("tpl-pod", &logs.0, NamespaceMode::Pod);
    let mut cri = Cri::connect().await;
    let pod = cri
        .run_pod_with(&config, TEMPLATE_HANDLER)
        .await
        .expect("RunPodSandbox (vessel-vm-template)");
    let _guard = PodGuard(pod.clone());
    let app = cri
        .start_container(&pod, &config, "app", "sleep 1000")
        .await;
    let pod_ip = cri.pod_ip(&pod).await;
    assert!(!pod_ip.is_empty(), "CNI gave the pod an address");
    let mac = PodInterface::of(&pod).mac;
    let guest = cri.exec_sh(&app, "ip addr; hostname").await;
    let guest = String::from_utf8_lossy(&guest.stdout).into_owned();
    assert!(
        guest.contains(&format!("inet {pod_ip}/")),
        "the pod's address in the clone:\n{guest}"
    );
    assert!(
        guest.contains(&mac) && !guest.contains("02:76:73:00:00:01"),
        "the pod interface's MAC in the clone, not the template's:\n{guest}"
    );
    assert!(
        processes()
            .iter()
            .any(|p| p.cmdline().contains(&pod) && p.cmdline().contains("share=off")),
        "the pod's QEMU maps a template's memory"
    );
    cri.remove_pod(&pod, 1).await;
}

#[test]
fn ten_pods_at_once_make_one_template_and_all_run() {
    let factory = Factory::new("tpl-ten", None);
    let ids: Vec<String> = (0..10)
        .map(|n| unique_id(&format!("tpl-ten-{n}")))
        .collect();
    let _guards: Vec<ContainerGuard> = ids.iter().map(|id| ContainerGuard::new(id)).collect();
    std::thread::scope(|scope| {
        for id in &ids {
            let factory = &factory;
            scope.spawn(move || factory.run_detached(id, &["sleep", "1000"]));
        }
    });
    for id in &ids {
        assert_eq!(
            task_status(id).map(|(_, s)| s).as_deref(),
            Some("RUNNING"),
            "{id}"
        );
    }
    let status = factory.status();
    assert_eq!(status.len(), 1, "one template: {status:?}");
    assert!(status[0].contains("clones 10"), "{status:?}");
    for id in &ids {
        ctr_ok(&["task", "kill", "-s", "SIGKILL", id]);
    }
    for id in &ids {
        wait_status(id, "STOPPED");
        ctr_ok(&["task", "rm", id]);
        ctr_ok(&["containers", "rm", id]);
    }
    for id in &ids {
        assert_no_leftovers(id);
    }
}
