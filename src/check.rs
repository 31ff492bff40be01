//! The `check` command: what this host can do for each backend, a line of advice each, in the
//! manner of `kata-runtime check`.

use std::{fmt, path::Path, process::Command};

use crate::{
    config::{Config, SandboxBackend},
    oci::SharedFs,
    sandbox::vm::{meminfo_value, recorded_kvm, HUGEPAGES_DIR},
};

/// How a finding bears on running sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Works.
    Ok,
    /// Works, less well (slower, or a feature missing).
    Warn,
    /// The configured backend cannot run.
    Fail,
}

/// One thing checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The verdict.
    pub verdict: Verdict,
    /// What was checked.
    pub what: String,
    /// What was found, and what to do about it.
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match self.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        write!(f, "{verdict}  {}: {}", self.what, self.detail)
    }
}

fn finding(verdict: Verdict, what: &str, detail: impl Into<String>) -> Finding {
    Finding {
        verdict,
        what: what.to_string(),
        detail: detail.into(),
    }
}

/// The first line `program --version` prints, if it runs.
fn version(program: &str) -> Option<String> {
    let out = Command::new(program).arg("--version").output().ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    })
}

fn check_kvm(findings: &mut Vec<Finding>) {
    let opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    let finding = match (opens, recorded_kvm()) {
        (Err(e), _) => finding(
            Verdict::Warn,
            "KVM",
            format!("/dev/kvm: {e}; VMs run under TCG (software emulation, several times slower): enable virtualization in the firmware or load kvm_intel/kvm_amd"),
        ),
        (Ok(_), Some(probe)) if probe.starts_with("unusable") => finding(
            Verdict::Warn,
            "KVM",
            format!("/dev/kvm opens, but a guest did not boot with it ({probe}); VMs run under TCG. A nested or PVM host often cannot run a standard guest kernel"),
        ),
        (Ok(_), Some(_)) => finding(Verdict::Ok, "KVM", "a guest booted with /dev/kvm"),
        (Ok(_), None) => finding(
            Verdict::Ok,
            "KVM",
            "/dev/kvm opens; the first VM probes whether it really boots a guest (and falls back to TCG if not)",
        ),
    };
    findings.push(finding);
}

fn check_file(findings: &mut Vec<Finding>, what: &str, path: &str, missing: Verdict, advice: &str) {
    if path.is_empty() {
        findings.push(finding(missing, what, format!("not configured; {advice}")));
    } else if Path::new(path).exists() {
        findings.push(finding(Verdict::Ok, what, path));
    } else {
        findings.push(finding(
            missing,
            what,
            format!("{path} is missing; {advice}"),
        ));
    }
}

/// Whether a guest of `memory_mib` fits in the free huge pages of a host whose `/proc/mounts`
/// and `/proc/meminfo` read `mounts` and `meminfo`; `missing` when it does not.
fn huge_pages(mounts: &str, meminfo: &str, memory_mib: u32, missing: Verdict) -> Finding {
    let what = "huge pages";
    let mounted = mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&HUGEPAGES_DIR) && fields.get(2) == Some(&"hugetlbfs")
    });
    if !mounted {
        return finding(
            missing,
            what,
            format!(
                "enable_hugepages needs hugetlbfs at {HUGEPAGES_DIR} \
                 (mount -t hugetlbfs hugetlbfs {HUGEPAGES_DIR})"
            ),
        );
    }
    let value = |key: &str| meminfo_value(meminfo, key).unwrap_or(0);
    let (free, page_kib) = (value("HugePages_Free"), value("Hugepagesize").max(1));
    let needed = (u64::from(memory_mib) * 1024).div_ceil(page_kib);
    if free < needed {
        return finding(
            missing,
            what,
            format!(
                "{free} huge pages of {page_kib} KiB free; a {memory_mib} MiB guest needs \
                 {needed} (sysctl vm.nr_hugepages)"
            ),
        );
    }
    finding(
        Verdict::Ok,
        what,
        format!("{free} huge pages of {page_kib} KiB free in {HUGEPAGES_DIR}: enough for a {memory_mib} MiB guest"),
    )
}

/// Checks the host for `config`: the vm backend's needs (KVM, QEMU, vsock, virtiofsd, the
/// guest image) and the linux backend's (the OCI runtime, cgroups). A need of the configured
/// backend that is missing fails; one of the other backend warns.
pub fn check(config: &Config) -> Vec<Finding> {
    let mut findings = Vec::new();
    let vm = config.runtime.sandbox_backend == SandboxBackend::Vm;
    let needed = |yes: bool| if yes { Verdict::Fail } else { Verdict::Warn };
    let qemu = &config.hypervisor.qemu;

    check_kvm(&mut findings);
    findings.push(match version(&qemu.path) {
        Some(v) => finding(
            Verdict::Ok,
            "QEMU",
            format!("{}: {v} (TCG works wherever QEMU runs)", qemu.path),
        ),
        None => finding(
            needed(vm),
            "QEMU",
            format!(
                "{} does not run; make deps-vm installs QEMU from bookworm-backports",
                qemu.path
            ),
        ),
    });
    // The agent channel is virtio-serial on every host for now: vsock is not implemented.
    let vsock = if Path::new("/dev/vhost-vsock").exists() {
        "/dev/vhost-vsock exists; the agent channel is virtio-serial all the same"
    } else {
        "no /dev/vhost-vsock; none needed: the agent channel is virtio-serial"
    };
    findings.push(finding(Verdict::Ok, "vhost-vsock", vsock));
    check_file(
        &mut findings,
        "guest kernel",
        &qemu.kernel,
        needed(vm),
        "make guest && make install",
    );
    check_file(
        &mut findings,
        "guest initrd",
        &qemu.initrd,
        needed(vm),
        "make guest && make install",
    );
    // The kernel modules a guest loads on demand sit beside its initrd.
    let modules = Path::new(&qemu.initrd)
        .parent()
        .map(|dir| dir.join("modules"))
        .unwrap_or_default();
    check_file(
        &mut findings,
        "guest modules on demand",
        &modules.to_string_lossy(),
        Verdict::Warn,
        "without them a privileged container cannot add a bridge, a veth pair, netfilter rules \
         or an overlay mount in its VM; make guest && make install puts them beside the initrd",
    );
    if qemu.enable_hugepages {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        findings.push(huge_pages(
            &read("/proc/mounts"),
            &read("/proc/meminfo"),
            qemu.default_memory,
            needed(vm),
        ));
    }
    let virtio_fs = qemu.shared_fs == SharedFs::VirtioFs;
    check_file(
        &mut findings,
        "virtiofsd",
        &qemu.virtio_fs_daemon,
        if vm && virtio_fs {
            Verdict::Fail
        } else {
            Verdict::Warn
        },
        "make deps-vm builds it from crates.io (Debian bookworm has none); shared_fs = \"virtio-9p\" needs none",
    );

    findings.push(match config.runtime.oci_runtime_binary() {
        Ok(binary) => finding(
            Verdict::Ok,
            "OCI runtime (linux backend)",
            binary.display().to_string(),
        ),
        Err(e) => finding(
            needed(!vm),
            "OCI runtime (linux backend)",
            format!("{e}; apt-get install runc"),
        ),
    });
    let cgroup2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    findings.push(if cgroup2 {
        finding(Verdict::Ok, "cgroups", "v2 (unified)")
    } else {
        finding(Verdict::Warn, "cgroups", "v1 or hybrid: the linux backend works with runc; crun needs cgroup v2 (systemd.unified_cgroup_hierarchy=1)")
    });
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("configuration.toml");
        std::fs::write(&path, toml).unwrap();
        Config::from_file(&path).unwrap()
    }

    #[test]
    fn a_missing_guest_image_fails_the_vm_backend_and_warns_the_linux_one() {
        let paths = "[hypervisor.qemu]\nkernel = \"/nonexistent/vmlinux\"\ninitrd = \"/nonexistent/initrd\"\n";
        let vm = check(&config(&format!(
            "[runtime]\nsandbox_backend = \"vm\"\n{paths}"
        )));
        let kernel = vm.iter().find(|f| f.what == "guest kernel").unwrap();
        assert_eq!(kernel.verdict, Verdict::Fail, "{kernel}");
        assert!(kernel.to_string().contains("make guest"), "{kernel}");
        let linux = check(&config(paths));
        let kernel = linux.iter().find(|f| f.what == "guest kernel").unwrap();
        assert_eq!(kernel.verdict, Verdict::Warn, "{kernel}");
    }

    #[test]
    fn huge_pages_must_be_mounted_and_enough() {
        let mounts =
            "proc /proc proc rw 0 0\nhugetlbfs /dev/hugepages hugetlbfs rw,pagesize=2M 0 0\n";
        let meminfo =
            "HugePages_Total:     300\nHugePages_Free:      300\nHugepagesize:       2048 kB\n";
        let ok = huge_pages(mounts, meminfo, 512, Verdict::Fail);
        assert_eq!(ok.verdict, Verdict::Ok, "{ok}");
        let short = huge_pages(mounts, meminfo, 1024, Verdict::Fail);
        assert_eq!(short.verdict, Verdict::Fail, "{short}");
        assert!(short.detail.contains("needs 512"), "{short}");
        let unmounted = huge_pages("proc /proc proc rw 0 0\n", meminfo, 512, Verdict::Warn);
        assert_eq!(unmounted.verdict, Verdict::Warn, "{unmounted}");
        assert!(
            unmounted.detail.contains("mount -t hugetlbfs"),
            "{unmounted}"
        );
    }

    #[test]
    fn every_finding_says_what_it_checked() {
        for f in check(&config("")) {
            assert!(!f.what.is_empty() && !f.detail.is_empty(), "{f:?}");
        }
    }
}
