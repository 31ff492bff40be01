//! StartSandbox: the guest made the sandbox's. A VM cloned from a template has the template's
//! CRNG state, clock and nothing of the pod; a booted one has no shared directory mounted yet.

use std::{fs::File, os::fd::AsRawFd};

use vessel::{protos::agent as api, sandbox};

use crate::{error::Refused, init};

/// The most random bytes the host may send.
pub const MAX_SEED: usize = 4096;
/// linux/random.h: `_IOW('R', 0x03, int[2])`, credits a `rand_pool_info` to the pool.
const RNDADDENTROPY: u32 = 0x4008_5203;
/// linux/random.h: `_IO('R', 0x07)`, reseeds the CRNG from the pool.
const RNDRESEEDCRNG: u32 = 0x5207;
/// The longest hostname Linux accepts (HOST_NAME_MAX).
const MAX_HOSTNAME: usize = 64;

/// Checks every field of `req` before anything changes.
pub fn check(req: &api::StartSandboxRequest) -> Result<(), Refused> {
    let malformed = |field: &'static str, message: String| Refused::Malformed { field, message };
    if req.random_seed.len() > MAX_SEED {
        return Err(malformed(
            "random_seed",
            format!(
                "{} bytes (accepted: at most {MAX_SEED})",
                req.random_seed.len()
            ),
        ));
    }
    if req.time_sec < 0 || req.time_nsec >= 1_000_000_000 {
        return Err(malformed(
            "time_sec",
            format!(
                "{}.{:09}: not a time (accepted: seconds since the epoch, 0 or more, and \
                 nanoseconds below 10^9)",
                req.time_sec, req.time_nsec
            ),
        ));
    }
    let hostname_fits = req.hostname.len() <= MAX_HOSTNAME
        && req
            .hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !hostname_fits {
        return Err(malformed(
            "hostname",
            format!(
                "{:?} (accepted: at most {MAX_HOSTNAME} of [A-Za-z0-9._-])",
                req.hostname
            ),
        ));
    }
    Ok(())
}

/// What StartSandbox does in the guest (the agent as PID 1).
pub struct Guest {
    params: init::BootParams,
    mounted: std::sync::Mutex<bool>,
}

impl Guest {
    /// The guest booted with `params` (how its shared directory is mounted).
    pub fn new(params: init::BootParams) -> Self {
        Self {
            params,
            mounted: std::sync::Mutex::new(false),
        }
    }

    /// Carries out a checked request: entropy first (nothing the clone does after it is
    /// predictable from the template), then the clock, the hostname and the shared directory.
    pub fn start(&self, req: &api::StartSandboxRequest) -> Result<(), Refused> {
        let failed = |what: &str, e: std::io::Error| Refused::Backend(sandbox::Error::io(what, e));
        if !req.random_seed.is_empty() {
            reseed(&req.random_seed).map_err(|e| failed("reseed the guest's CRNG", e))?;
        }
        if req.time_sec > 0 {
            let time = nix::sys::time::TimeSpec::new(req.time_sec, i64::from(req.time_nsec));
            nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, time)
                .map_err(|e| failed("set the guest's clock", e.into()))?;
        }
        if !req.hostname.is_empty() {
            nix::unistd::sethostname(&req.hostname)
                .map_err(|e| failed("set the guest's hostname", e.into()))?;
        }
        let mut mounted = self.mounted.lock().unwrap_or_else(|e| e.into_inner());
        if !*mounted {
            init::mount_shared(&self.params).map_err(|e| failed("shared directory", e))?;
            *mounted = true;
        }
        log::info!(
            "sandbox started: {} random bytes, clock {}, hostname {:?}",
            req.random_seed.len(),
            req.time_sec,
            req.hostname
        );
        Ok(())
    }
}

/// Credits `seed` to the kernel's entropy pool (RNDADDENTROPY) and reseeds the CRNG from it
/// at once (RNDRESEEDCRNG), as kata's agent does for its clones.
fn reseed(seed: &[u8]) -> std::io::Result<()> {
    let random = File::options().write(true).open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + seed.len());
    info.extend_from_slice(&((seed.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(seed.len() as i32).to_ne_bytes());
    info.extend_from_slice(seed);
    // Room for whole u32 words, which the kernel's structure is made of.
    info.resize(8 + seed.len().div_ceil(4) * 4, 0);
    // SAFETY: RNDADDENTROPY reads a rand_pool_info whose buf_size bytes follow its header,
    // all within `info`.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG as _) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> api::StartSandboxRequest {
        api::StartSandboxRequest {
            random_seed: vec![7; 512],
            time_sec: 1_800_000_000,
            time_nsec: 5,
            hostname: "pod-1.example".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_sandboxs_settings_pass() {
        check(&request()).unwrap();
        check(&api::StartSandboxRequest::default()).unwrap();
    }

    #[test]
    fn what_the_guest_cannot_take_is_refused_naming_the_field() {
        let field = |req: api::StartSandboxRequest| check(&req).unwrap_err().to_string();
        let mut big = request();
        big.random_seed = vec![0; MAX_SEED + 1];
        assert!(field(big).starts_with("random_seed"));
        let mut before = request();
        before.time_sec = -1;
        assert!(field(before).starts_with("time_sec"));
        let mut nanos = request();
        nanos.time_nsec = 1_000_000_000;
        assert!(field(nanos).starts_with("time_sec"));
        for hostname in ["a b", "x/y", &"h".repeat(65)] {
            let mut bad = request();
            bad.hostname = hostname.into();
            assert!(field(bad).starts_with("hostname"), "{hostname}");
        }
    }
}
