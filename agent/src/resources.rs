//! The VM sized to its pod: the CPUs and memory the host plugs in are onlined in the guest
//! (OnlineResources). A hot-plugged vCPU appears as `/sys/devices/system/cpu/cpuN`, offline,
//! sometimes a moment after the host's plug returned: every present-but-offline CPU is
//! onlined, again and again, until enough are online. Memory a virtio-mem device adds onlines
//! itself (`memhp_default_state=online_movable`); a block still offline is onlined movable, so
//! that it can be unplugged again.
//!
//! The agent as a host process (not PID 1) touches neither the host's CPUs nor its memory: it
//! only reports them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use vessel::{protos::agent as api, sandbox::linux::CLONE_GATE};

/// Where the kernel lists CPUs and memory blocks.
const SYSFS: &str = "/sys/devices/system";
/// Where the guest's memory is.
const MEMINFO: &str = "/proc/meminfo";

/// How the onlining of CPUs is retried: kata's 100 tries, 50 ms apart, within a deadline.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Rounds of onlining at most.
    pub tries: u32,
    /// The pause between two rounds.
    pub pause: Duration,
    /// No round starts after this long.
    pub deadline: Duration,
}

/// The retries of the guest.
pub const RETRY: Retry = Retry {
    tries: 100,
    pause: Duration::from_millis(50),
    deadline: Duration::from_secs(10),
};

/// How long the call waits for the sysfs work (a CPU's onlining can block in the kernel)
/// beyond the retries' own deadline.
const SLACK: Duration = Duration::from_secs(5);

/// Time, for the retries: the real one, or a test's.
pub trait Clock {
    /// Now.
    fn now(&self) -> Instant;
    /// Waits `pause`.
    fn sleep(&mut self, pause: Duration);
}

/// The real clock.
struct RealClock;

impl Clock for RealClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&mut self, pause: Duration) {
        std::thread::sleep(pause);
    }
}

/// Why OnlineResources fails, and its ttrpc code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The ttrpc code.
    pub code: ttrpc::Code,
    /// What went wrong.
    pub message: String,
}

impl Failure {
    fn new(code: ttrpc::Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn io(what: impl std::fmt::Display, e: std::io::Error) -> Self {
        Self::new(ttrpc::Code::UNKNOWN, format!("{what}: {e}"))
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<Failure> for ttrpc::Error {
    fn from(failure: Failure) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(failure.code, failure.message))
    }
}

/// The number of CPUs of a kernel CPU list (`0-1,3`; empty: none).
pub fn count_cpu_list(list: &str) -> Result<u32, String> {
    let list = list.trim();
    if list.is_empty() {
        return Ok(0);
    }
    let mut count: u32 = 0;
    for part in list.split(',') {
        let number = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| format!("{list:?}: {s:?} is not a CPU number"))
        };
        let (first, last) = match part.split_once('-') {
            Some((first, last)) => (number(first)?, number(last)?),
            None => (number(part)?, number(part)?),
        };
        if first > last {
            return Err(format!("{list:?}: {part:?} is not a range"));
        }
        count = count
            .checked_add(last - first)
            .and_then(|c| c.checked_add(1))
            .ok_or_else(|| format!("{list:?}: too many CPUs"))?;
    }
    Ok(count)
}

/// How a sysfs attribute is written.
type Write = fn(&Path, &str) -> std::io::Result<()>;

/// The CPU and memory directories of a sysfs (`/sys/devices/system`, or a test's).
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
    write: Write,
}

impl Sysfs {
    /// The tree under `root` (its `cpu/` and `memory/`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            write: |path, value| std::fs::write(path, value),
        }
    }

    fn cpu(&self) -> PathBuf {
        self.root.join("cpu")
    }

    fn count(&self, list: &str) -> Result<u32, Failure> {
        let path = self.cpu().join(list);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Failure::io(format_args!("read {}", path.display()), e))?;
        count_cpu_list(&text)
            .map_err(|e| Failure::new(ttrpc::Code::UNKNOWN, format!("{}: {e}", path.display())))
    }

    /// How many CPUs are online (`cpu/online`).
    pub fn online_count(&self) -> Result<u32, Failure> {
        self.count("online")
    }

    /// How many CPUs this machine can ever have (`cpu/possible`).
    pub fn possible_count(&self) -> Result<u32, Failure> {
        self.count("possible")
    }

    /// The CPUs present but offline (`cpuN/online` is 0), N >= 1, in order. (cpu0 has no
    /// `online` file: it cannot go offline.)
    pub fn offline_cpus(&self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir(self.cpu()) else {
            return Vec::new();
        };
        let mut offline: Vec<u32> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let digits = name.strip_prefix("cpu")?;
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let n: u32 = digits.parse().ok().filter(|&n| n >= 1)?;
                let state = std::fs::read_to_string(entry.path().join("online")).ok()?;
                (state.trim() == "0").then_some(n)
            })
            .collect();
        offline.sort_unstable();
        offline
    }

    /// Onlines CPU `n`.
    fn online_cpu(&self, n: u32) -> std::io::Result<()> {
        (self.write)(&self.cpu().join(format!("cpu{n}")).join("online"), "1")
    }

    /// Onlines, movable, every memory block that is offline; the blocks that refuse, with
    /// why. A block that came online meanwhile (by itself) is no refusal.
    pub fn online_memory(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.root.join("memory")) else {
            return Vec::new();
        };
        let mut blocks: Vec<(u64, PathBuf)> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let n = name.strip_prefix("memory")?.parse().ok()?;
                Some((n, entry.path().join("state")))
            })
            .collect();
        blocks.sort();
        let state = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        let mut refused = Vec::new();
        for (n, path) in blocks {
            if state(&path).trim() != "offline" {
                continue;
            }
            if let Err(e) = (self.write)(&path, "online_movable") {
                if state(&path).trim() == "offline" {
                    refused.push(format!("memory{n}: {e}"));
                }
            }
        }
        refused
    }
}

/// Onlines present CPUs until at least `wanted` are online, `retry.tries` rounds at most and
/// none started after `retry.deadline`; the number online.
pub fn online_cpus(
    sysfs: &Sysfs,
    wanted: u32,
    retry: Retry,
    clock: &mut dyn Clock,
) -> Result<u32, Failure> {
    let start = clock.now();
    let mut errors: BTreeMap<u32, String> = BTreeMap::new();
    let mut online = 0;
    for round in 0..retry.tries.max(1) {
        if round > 0 {
            if clock.now().saturating_duration_since(start) + retry.pause > retry.deadline {
                break;
            }
            clock.sleep(retry.pause);
        }
        for n in sysfs.offline_cpus() {
            match sysfs.online_cpu(n) {
                Ok(()) => {
                    errors.remove(&n);
                }
                Err(e) => {
                    errors.insert(n, e.to_string());
                }
            }
        }
        online = sysfs.online_count()?;
        if online >= wanted {
            return Ok(online);
        }
    }
    let waited = clock.now().saturating_duration_since(start);
    let mut message = format!(
        "{online} of {wanted} vCPUs asked for are online after {:.1} s",
        waited.as_secs_f64()
    );
    let why: Vec<String> = errors.iter().map(|(n, e)| format!("cpu{n}: {e}")).collect();
    if !why.is_empty() {
        message.push_str(&format!(" ({})", why.join("; ")));
    }
    Err(Failure::new(ttrpc::Code::DEADLINE_EXCEEDED, message))
}

/// What the guest has: CPUs online, MemTotal in MiB (of a `/proc/meminfo` text).
fn report(meminfo: &Path, vcpus: u32) -> Result<api::GuestResources, Failure> {
    let text = std::fs::read_to_string(meminfo)
        .map_err(|e| Failure::io(format_args!("read {}", meminfo.display()), e))?;
    let kib = vessel::sandbox::vm::meminfo_value(&text, "MemTotal").ok_or_else(|| {
        Failure::new(
            ttrpc::Code::UNKNOWN,
            format!("{}: no MemTotal", meminfo.display()),
        )
    })?;
    Ok(api::GuestResources {
        vcpus,
        memory_mib: kib / 1024,
        ..Default::default()
    })
}

/// OnlineResources over `sysfs` and `meminfo`: with `touch`, the offline memory blocks and
/// CPUs onlined until `wanted` CPUs are; without, only the report. A `wanted` beyond the
/// CPUs this machine can ever have is refused at once.
pub fn online(
    sysfs: &Sysfs,
    meminfo: &Path,
    wanted: u32,
    touch: bool,
    retry: Retry,
    clock: &mut dyn Clock,
) -> Result<api::GuestResources, Failure> {
    let possible = sysfs.possible_count()?;
    if wanted > possible {
        return Err(Failure::new(
            ttrpc::Code::INVALID_ARGUMENT,
            format!("vcpus {wanted}: this VM can have at most {possible} vCPUs"),
        ));
    }
    if !touch {
        return report(meminfo, sysfs.online_count()?);
    }
    let refused = sysfs.online_memory();
    let vcpus = online_cpus(sysfs, wanted, retry, clock)?;
    if !refused.is_empty() {
        return Err(Failure::new(
            ttrpc::Code::UNKNOWN,
            format!(
                "memory blocks stay offline ({vcpus} vCPUs online): {}",
                refused.join("; ")
            ),
        ));
    }
    report(meminfo, vcpus)
}

/// One onlining at a time: a call whose deadline passed may leave its work running.
static ONLINING: Mutex<()> = Mutex::new(());

/// OnlineResources of the agent: the guest's sysfs when it is PID 1, only the report of the
/// host's otherwise; the sysfs work on a blocking thread, within a deadline.
pub async fn online_resources(wanted: u32) -> Result<api::GuestResources, Failure> {
    let touch = std::process::id() == 1;
    let work = tokio::task::spawn_blocking(move || {
        let _gate = CLONE_GATE.read().unwrap_or_else(|e| e.into_inner());
        let _one = ONLINING.lock().unwrap_or_else(|e| e.into_inner());
        online(
            &Sysfs::new(SYSFS),
            Path::new(MEMINFO),
            wanted,
            touch,
            RETRY,
            &mut RealClock,
        )
    });
    let limit = RETRY.deadline + SLACK;
    let resources = match tokio::time::timeout(limit, work).await {
        Ok(Ok(done)) => done?,
        Ok(Err(e)) => {
            return Err(Failure::new(
                ttrpc::Code::UNKNOWN,
                format!("onlining CPUs and memory: {e}"),
            ))
        }
        Err(_) => {
            return Err(Failure::new(
                ttrpc::Code::DEADLINE_EXCEEDED,
                format!(
                    "onlining {wanted} vCPUs and the memory did not end within {} s",
                    limit.as_secs()
                ),
            ))
        }
    };
    if touch {
        log::info!(
            "resources online: {} vCPUs, {} MiB",
            resources.vcpus,
            resources.memory_mib
        );
    }
    Ok(resources)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock that only moves when slept, and calls `on_sleep` with the round that ends.
    struct FakeClock<'a> {
        start: Instant,
        elapsed: Duration,
        sleeps: u32,
        on_sleep: Box<dyn FnMut(u32) + 'a>,
    }

    impl<'a> FakeClock<'a> {
        fn new(on_sleep: impl FnMut(u32) + 'a) -> Self {
            Self {
                start: Instant::now(),
                elapsed: Duration::ZERO,
                sleeps: 0,
                on_sleep: Box::new(on_sleep),
            }
        }
    }

    impl Clock for FakeClock<'_> {
        fn now(&self) -> Instant {
            self.start + self.elapsed
        }

        fn sleep(&mut self, pause: Duration) {
            self.elapsed += pause;
            self.sleeps += 1;
            (self.on_sleep)(self.sleeps);
        }
    }

    /// A fake `/sys/devices/system`: `possible` CPUs, cpu0 online, and a `cpu/online` list
    /// the test keeps (the kernel's would follow the `online` files).
    struct Tree {
        dir: tempfile::TempDir,
    }

    impl Tree {
        fn new(possible: &str) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let cpu = dir.path().join("cpu");
            std::fs::create_dir_all(cpu.join("cpu0")).unwrap();
            std::fs::write(cpu.join("possible"), format!("{possible}\n")).unwrap();
            std::fs::write(cpu.join("online"), "0\n").unwrap();
            std::fs::create_dir_all(dir.path().join("memory")).unwrap();
            Self { dir }
        }

        fn sysfs(&self) -> Sysfs {
            Sysfs::new(self.dir.path())
        }

        fn plug_cpu(&self, n: u32, online: bool) {
            let path = self.dir.path().join(format!("cpu/cpu{n}"));
            std::fs::create_dir_all(&path).unwrap();
            std::fs::write(path.join("online"), if online { "1\n" } else { "0\n" }).unwrap();
        }

        fn cpu_state(&self, n: u32) -> String {
            std::fs::read_to_string(self.dir.path().join(format!("cpu/cpu{n}/online"))).unwrap()
        }

        fn set_online_list(&self, list: &str) {
            std::fs::write(self.dir.path().join("cpu/online"), format!("{list}\n")).unwrap();
        }

        fn block(&self, n: u32, state: &str) -> PathBuf {
            let path = self.dir.path().join(format!("memory/memory{n}"));
            std::fs::create_dir_all(&path).unwrap();
            std::fs::write(path.join("state"), format!("{state}\n")).unwrap();
            path.join("state")
        }

        fn meminfo(&self) -> PathBuf {
            let path = self.dir.path().join("meminfo");
            std::fs::write(&path, "MemTotal:        2097152 kB\nMemFree:  1000 kB\n").unwrap();
            path
        }
    }

    const FAST: Retry = Retry {
        tries: 100,
        pause: Duration::from_millis(50),
        deadline: Duration::from_secs(10),
    };

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(count_cpu_list("0\n"), Ok(1));
        assert_eq!(count_cpu_list("0-1,3\n"), Ok(3));
        assert_eq!(count_cpu_list("0-3,8-11,15"), Ok(9));
        assert_eq!(count_cpu_list("\n"), Ok(0));
        for bad in ["3-1", "a", "0-", "0,,1", "-1", "0-4294967295,1"] {
            assert!(count_cpu_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn present_offline_cpus_are_found_and_cpu0_never() {
        let tree = Tree::new("0-15");
        tree.plug_cpu(0, false); // cpu0 has no online file in a real sysfs; never touched.
        tree.plug_cpu(10, false);
        tree.plug_cpu(2, false);
        tree.plug_cpu(1, true);
        std::fs::create_dir_all(tree.dir.path().join("cpu/cpufreq")).unwrap();
        std::fs::create_dir_all(tree.dir.path().join("cpu/cpu3")).unwrap(); // no online file
        assert_eq!(tree.sysfs().offline_cpus(), [2, 10]);
        assert!(Sysfs::new("/nowhere").offline_cpus().is_empty());
    }

    #[test]
    fn offline_cpus_are_onlined_until_enough_are() {
        let tree = Tree::new("0-3");
        tree.plug_cpu(1, false);
        tree.plug_cpu(2, false);
        let mut clock = FakeClock::new(|_| {});
        // The kernel's list once both are online.
        tree.set_online_list("0-2");
        let online = online_cpus(&tree.sysfs(), 3, FAST, &mut clock).unwrap();
        assert_eq!(online, 3);
        assert_eq!(tree.cpu_state(1), "1");
        assert_eq!(tree.cpu_state(2), "1");
        assert_eq!(clock.sleeps, 0, "no waiting when they are there");
    }

    #[test]
    fn a_cpu_that_appears_late_is_waited_for() {
        let tree = Tree::new("0-3");
        let mut clock = FakeClock::new(|round| {
            if round == 5 {
                tree.plug_cpu(1, false);
                tree.set_online_list("0-1");
            }
        });
        let online = online_cpus(&tree.sysfs(), 2, FAST, &mut clock).unwrap();
        assert_eq!(online, 2);
        assert_eq!(clock.sleeps, 5);
        assert_eq!(tree.cpu_state(1), "1");
    }

    #[test]
    fn too_few_cpus_fail_saying_how_many_within_the_limits() {
        let tree = Tree::new("0-3");
        let mut clock = FakeClock::new(|_| {});
        let failure = online_cpus(&tree.sysfs(), 3, FAST, &mut clock).unwrap_err();
        assert_eq!(failure.code, ttrpc::Code::DEADLINE_EXCEEDED);
        assert!(
            failure.message.starts_with("1 of 3 vCPUs"),
            "{}",
            failure.message
        );
        assert_eq!(clock.sleeps, 99, "100 rounds, 99 pauses");

        // The deadline ends the rounds first.
        let short = Retry {
            deadline: Duration::from_millis(120),
            ..FAST
        };
        let mut clock = FakeClock::new(|_| {});
        online_cpus(&tree.sysfs(), 2, short, &mut clock).unwrap_err();
        assert_eq!(clock.sleeps, 2);
    }

    /// Writes that fail as the kernel's do: a CPU that will not come up (EIO), a memory
    /// block that will not online (EINVAL), and one that came online by itself meanwhile
    /// (written by someone else, then EINVAL).
    fn refusing(path: &Path, value: &str) -> std::io::Result<()> {
        let name = path.parent().and_then(Path::file_name).unwrap_or_default();
        match name.to_str().unwrap_or_default() {
            "cpu2" => Err(std::io::Error::from_raw_os_error(libc::EIO)),
            "memory41" => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
            "memory42" => {
                std::fs::write(path, "online\n")?;
                Err(std::io::Error::from_raw_os_error(libc::EINVAL))
            }
            _ => std::fs::write(path, value),
        }
    }

    #[test]
    fn a_cpu_that_refuses_is_named() {
        let tree = Tree::new("0-3");
        tree.plug_cpu(1, false);
        tree.plug_cpu(2, false);
        tree.set_online_list("0-1");
        let sysfs = Sysfs {
            write: refusing,
            ..tree.sysfs()
        };
        let retry = Retry { tries: 3, ..FAST };
        let mut clock = FakeClock::new(|_| {});
        let failure = online_cpus(&sysfs, 3, retry, &mut clock).unwrap_err();
        assert_eq!(
            failure.message,
            "2 of 3 vCPUs asked for are online after 0.1 s (cpu2: Input/output error (os error 5))"
        );
        assert_eq!(tree.cpu_state(1), "1");
        assert_eq!(tree.cpu_state(2), "0\n");
        // Two are enough: the refusing one does not matter.
        online_cpus(&sysfs, 2, retry, &mut clock).unwrap();
    }

    #[test]
    fn offline_memory_is_onlined_movable_and_a_refusal_is_named() {
        let tree = Tree::new("0-1");
        let was_online = tree.block(0, "online");
        let offline = tree.block(32, "offline");
        let going = tree.block(33, "going-offline");
        assert!(tree.sysfs().online_memory().is_empty());
        assert_eq!(std::fs::read_to_string(&was_online).unwrap(), "online\n");
        assert_eq!(std::fs::read_to_string(&offline).unwrap(), "online_movable");
        assert_eq!(std::fs::read_to_string(&going).unwrap(), "going-offline\n");

        let refused = tree.block(41, "offline");
        let raced = tree.block(42, "offline");
        let later = tree.block(100, "offline");
        let sysfs = Sysfs {
            write: refusing,
            ..tree.sysfs()
        };
        assert_eq!(
            sysfs.online_memory(),
            ["memory41: Invalid argument (os error 22)"]
        );
        assert_eq!(std::fs::read_to_string(&refused).unwrap(), "offline\n");
        assert_eq!(std::fs::read_to_string(&raced).unwrap(), "online\n");
        assert_eq!(std::fs::read_to_string(&later).unwrap(), "online_movable");

        // OnlineResources fails naming it, after the CPUs.
        tree.set_online_list("0");
        let mut clock = FakeClock::new(|_| {});
        let failure = online(&sysfs, &tree.meminfo(), 1, true, FAST, &mut clock).unwrap_err();
        assert_eq!(failure.code, ttrpc::Code::UNKNOWN);
        assert_eq!(
            failure.message,
            "memory blocks stay offline (1 vCPUs online): memory41: Invalid argument (os error \
             22)"
        );
    }

    #[test]
    fn the_report_without_touching_anything() {
        let tree = Tree::new("0-3");
        tree.plug_cpu(1, false);
        let offline = tree.block(8, "offline");
        tree.set_online_list("0");
        let meminfo = tree.meminfo();
        let mut clock = FakeClock::new(|_| {});
        let report = online(&tree.sysfs(), &meminfo, 2, false, FAST, &mut clock).unwrap();
        assert_eq!((report.vcpus, report.memory_mib), (1, 2048));
        assert_eq!(tree.cpu_state(1), "0\n", "the CPU was left alone");
        assert_eq!(std::fs::read_to_string(&offline).unwrap(), "offline\n");
        assert_eq!(clock.sleeps, 0);

        tree.set_online_list("0-1");
        let report = online(&tree.sysfs(), &meminfo, 2, true, FAST, &mut clock).unwrap();
        assert_eq!((report.vcpus, report.memory_mib), (2, 2048));
        assert_eq!(tree.cpu_state(1), "1");
        assert_eq!(std::fs::read_to_string(&offline).unwrap(), "online_movable");
    }

    #[test]
    fn silly_vcpus_are_refused_at_once() {
        let tree = Tree::new("0-3");
        let meminfo = tree.meminfo();
        for (wanted, touch) in [(5, true), (u32::MAX, true), (u32::MAX, false)] {
            let mut clock = FakeClock::new(|_| {});
            let failure =
                online(&tree.sysfs(), &meminfo, wanted, touch, FAST, &mut clock).unwrap_err();
            assert_eq!(failure.code, ttrpc::Code::INVALID_ARGUMENT);
            assert!(
                failure.message.contains(&format!("vcpus {wanted}"))
                    && failure.message.contains("at most 4"),
                "{}",
                failure.message
            );
            assert_eq!(clock.sleeps, 0);
        }
        // None asked: what is there is onlined and reported.
        let mut clock = FakeClock::new(|_| {});
        let report = online(&tree.sysfs(), &meminfo, 0, true, FAST, &mut clock).unwrap();
        assert_eq!(report.vcpus, 1);
    }
}
