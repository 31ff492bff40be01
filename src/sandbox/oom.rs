//! Out-of-memory kills in a container's memory cgroup, watched without a thread:
//! cgroup v1 through an eventfd registered on `memory.oom_control`, cgroup v2 through
//! inotify on `memory.events` (its `oom_kill` counter).

use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use nix::sys::{
    eventfd::{EfdFlags, EventFd},
    inotify::{AddWatchFlags, InitFlags, Inotify},
};
use tokio::io::unix::AsyncFd;

/// The memory cgroup directory of `pid`: v1's `memory` hierarchy, or the v2 unified one.
fn memory_cgroup(pid: u32) -> io::Result<(PathBuf, bool)> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let relative = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            return Ok((Path::new("/sys/fs/cgroup/memory").join(relative), false));
        }
        if controllers.is_empty() && Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            return Ok((Path::new("/sys/fs/cgroup").join(relative), true));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no memory cgroup for pid {pid}"),
    ))
}

/// Calls `on_oom` for each OOM kill in `pid`'s memory cgroup until the cgroup is removed.
pub async fn watch(pid: u32, mut on_oom: impl FnMut()) -> io::Result<()> {
    let (dir, v2) = memory_cgroup(pid)?;
    if v2 {
        watch_v2(&dir, &mut on_oom).await
    } else {
        watch_v1(&dir, &mut on_oom).await
    }
}

/// OOM signals closer together than this are one burst (cgroup v1).
const OOM_BURST: std::time::Duration = std::time::Duration::from_secs(1);

/// cgroup v1: the eventfd fires on every OOM, and once more when the cgroup goes away.
async fn watch_v1(dir: &Path, on_oom: &mut impl FnMut()) -> io::Result<()> {
    let control = File::open(dir.join("memory.oom_control"))?;
    let events = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
    std::fs::write(
        dir.join("cgroup.event_control"),
        format!("{} {}", events.as_fd().as_raw_fd(), control.as_raw_fd()),
    )?;
    // SAFETY: the AsyncFd owns the eventfd, which stays open for as long as it is registered.
    let events = unsafe { AsyncFd::register(events) }?;
    let mut last: Option<std::time::Instant> = None;
    loop {
        let mut ready = events.readable().await?;
        match ready.get_inner().read() {
            Ok(_) => {}
            Err(nix::errno::Errno::EAGAIN) => {
                ready.clear_ready();
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        if !dir.exists() {
            return Ok(());
        }
        // v1 signals every OOM the cgroup meets until its victim is gone: thousands in a
        // burst under load. One event a burst tells containerd all it needs.
        if last.is_none_or(|at| at.elapsed() >= OOM_BURST) {
            on_oom();
        }
        last = Some(std::time::Instant::now());
    }
}

/// cgroup v2: `memory.events` changes; an `oom_kill` count that grew is an OOM kill.
async fn watch_v2(dir: &Path, on_oom: &mut impl FnMut()) -> io::Result<()> {
    let file = dir.join("memory.events");
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
    inotify.add_watch(&file, AddWatchFlags::IN_MODIFY)?;
    let inotify = Watch(inotify);
    // SAFETY: the AsyncFd owns the inotify fd, which stays open while it is registered.
    let inotify = unsafe { AsyncFd::register(inotify) }?;
    let mut kills = oom_kills(&file).unwrap_or(0);
    loop {
        let mut ready = inotify.readable().await?;
        match ready.get_inner().0.read_events() {
            Ok(_) => {}
            Err(nix::errno::Errno::EAGAIN) => {
                ready.clear_ready();
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        let Some(now) = oom_kills(&file) else {
            return Ok(());
        };
        if now > kills {
            on_oom();
        }
        kills = now;
    }
}

/// An inotify instance, registrable with the reactor.
struct Watch(Inotify);

impl AsRawFd for Watch {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// The `oom_kill` counter of a v2 `memory.events` file; None once the cgroup is gone.
fn oom_kills(file: &Path) -> Option<u64> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            atomic::{AtomicUsize, Ordering},
            Arc,
        },
        time::Duration,
    };

    use super::*;

    fn write_events(dir: &Path, kills: u64) {
        std::fs::write(
            dir.join("memory.events"),
            format!("low 0\nhigh 0\nmax 3\noom 2\noom_kill {kills}\n"),
        )
        .unwrap();
    }

    /// cgroup v2: each growth of `oom_kill` is one report; other changes are not; the watch
    /// ends when the cgroup's file goes away.
    #[tokio::test]
    async fn v2_reports_growing_oom_kill_counts_until_the_cgroup_goes() {
        let dir = tempfile::tempdir().unwrap();
        write_events(dir.path(), 0);
        let reports = Arc::new(AtomicUsize::new(0));
        let counted = reports.clone();
        let path = dir.path().to_path_buf();
        let watch = tokio::spawn(async move {
            watch_v2(&path, &mut || {
                counted.fetch_add(1, Ordering::SeqCst);
            })
            .await
        });
        let settle = || tokio::time::sleep(Duration::from_millis(100));
        settle().await;
        write_events(dir.path(), 1);
        settle().await;
        write_events(dir.path(), 1);
        settle().await;
        write_events(dir.path(), 3);
        settle().await;
        assert_eq!(reports.load(Ordering::SeqCst), 2);
        std::fs::remove_file(dir.path().join("memory.events")).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), watch).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "the watch ends: {ended:?}");
    }

    #[test]
    fn oom_kill_counter_is_parsed() {
        let dir = tempfile::tempdir().unwrap();
        write_events(dir.path(), 7);
        assert_eq!(oom_kills(&dir.path().join("memory.events")), Some(7));
        assert_eq!(oom_kills(&dir.path().join("missing")), None);
    }
}
