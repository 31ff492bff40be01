//! What a running sandbox learns from its VM, each checked against the shim's own records:
//!
//! - **Its death**: QEMU's exit, or its agent declared dead ([`super::agent`]: the connection
//!   closed or broke the protocol, or the health checks here went unanswered). Reported once as
//!   [`Event::Died`] (the shim then ends every process with status 255), every pending call
//!   fails, and a QEMU still running is killed.
//! - **Health checks** every [`Limits::health_interval`]; [`Limits::health_misses`] in a row
//!   that fail or take over [`Limits::health_timeout`] make the agent dead. They are what ends
//!   the calls without a deadline of their own (waits, reads) when the guest goes silent.
//! - **OOM events**: one for a container this sandbox does not have is a protocol error (and
//!   logged, and dropped); one container's are reported at most once per [`OOM_COALESCE`], and
//!   the events are taken at most one per [`OOM_PACE`], so that a guest repeating them costs
//!   the shim nothing.
//! - **Exits**: an exit is reported for the process the shim asked about, never one the guest
//!   names; at a time between the process's start and now (the guest's clock is its own); an
//!   answer that breaks the protocol reports the process lost ([`LOST_STATUS`]).
//!
//! [`Limits::health_interval`]: super::agent::Limits::health_interval
//! [`Limits::health_misses`]: super::agent::Limits::health_misses
//! [`Limits::health_timeout`]: super::agent::Limits::health_timeout

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::sync::{mpsc::UnboundedSender, oneshot};

use super::{
    agent::{self, Agent, CallError},
    lock, qemu,
};
use crate::{
    protos::agent as api,
    sandbox::{Event, Exit},
};

/// How long after the agent's death QEMU's own exit is awaited, as the better reason.
const QEMU_GRACE: Duration = Duration::from_secs(1);
/// One container's OOM events are reported at most once in this long.
pub const OOM_COALESCE: Duration = Duration::from_secs(1);
/// OOM events are taken at most one in this long.
pub const OOM_PACE: Duration = Duration::from_millis(10);
/// How long after a failed GetOomEvent the next is made.
const OOM_RETRY: Duration = Duration::from_secs(1);
/// The exit status of a process whose exit the agent could not tell (as when the sandbox dies).
pub const LOST_STATUS: u32 = 255;

/// The processes the shim started in the sandbox: what the guest's ids are checked against.
#[derive(Debug, Default)]
pub struct Known {
    containers: HashMap<String, Container>,
}

#[derive(Debug, Default)]
struct Container {
    /// Its exec processes.
    execs: HashSet<String>,
    /// When its last OOM event was reported.
    last_oom: Option<Instant>,
}

/// What to do with an OOM event.
#[derive(Debug, PartialEq, Eq)]
pub enum Oom {
    /// Report it.
    Report,
    /// One was reported for the container less than [`OOM_COALESCE`] ago.
    Coalesced,
    /// The sandbox has no such container.
    Unknown,
}

impl Known {
    /// Process `exec_id` (empty: the init process) of container `id` started.
    pub fn add(&mut self, id: &str, exec_id: &str) {
        let container = self.containers.entry(id.to_string()).or_default();
        if !exec_id.is_empty() {
            container.execs.insert(exec_id.to_string());
        }
    }

    /// Whether the shim started process `exec_id` (empty: the init process) of container `id`.
    pub fn has(&self, id: &str, exec_id: &str) -> bool {
        self.containers
            .get(id)
            .is_some_and(|c| exec_id.is_empty() || c.execs.contains(exec_id))
    }

    /// Container `id` is gone.
    pub fn forget(&mut self, id: &str) {
        self.containers.remove(id);
    }

    /// Exec process `exec_id` of container `id` is gone.
    pub fn forget_exec(&mut self, id: &str, exec_id: &str) {
        if let Some(container) = self.containers.get_mut(id) {
            container.execs.remove(exec_id);
        }
    }

    /// An OOM event for container `id` came at `now`.
    pub fn oom(&mut self, id: &str, now: Instant) -> Oom {
        let Some(container) = self.containers.get_mut(id) else {
            return Oom::Unknown;
        };
        if container
            .last_oom
            .is_some_and(|last| now.duration_since(last) < OOM_COALESCE)
        {
            return Oom::Coalesced;
        }
        container.last_oom = Some(now);
        Oom::Report
    }
}

/// What the watchers of one sandbox report to and read.
#[derive(Clone)]
pub struct Sandbox {
    /// Where events go.
    pub events: UnboundedSender<Event>,
    /// Set once the sandbox is being stopped: its death is then no event.
    pub stopping: Arc<AtomicBool>,
    /// Its state directory (QEMU's log, and the proof that a pid is its QEMU).
    pub dir: PathBuf,
    /// Its QEMU.
    pub qemu_pid: Option<u32>,
    /// The processes the shim started in it.
    pub known: Arc<Mutex<Known>>,
}

/// Starts the watchers of a sandbox whose agent is `agent` and whose QEMU's exit `exited`
/// tells: its death, health checks and OOM events.
pub fn start(agent: Arc<Agent>, exited: oneshot::Receiver<i32>, sandbox: Sandbox) {
    tokio::spawn(death(agent.clone(), exited, sandbox.clone()));
    tokio::spawn(health(agent.clone()));
    tokio::spawn(oom_events(agent, sandbox));
}

fn qemu_exit(code: i32, sandbox: &Sandbox) -> String {
    format!(
        "QEMU exited ({code}): {}",
        qemu::last_words(&sandbox.dir.join("qemu.log"))
    )
}

/// Reports the sandbox's death once: QEMU exited, or its agent died (then QEMU is killed).
async fn death(agent: Arc<Agent>, mut exited: oneshot::Receiver<i32>, sandbox: Sandbox) {
    let reason = tokio::select! {
        code = &mut exited => match code {
            Ok(code) => qemu_exit(code, &sandbox),
            // Nobody watches QEMU any more: only its agent tells.
            Err(_) => format!("the guest agent failed: {}", agent.died().await),
        },
        reason = agent.died() => match tokio::time::timeout(QEMU_GRACE, &mut exited).await {
            Ok(Ok(code)) => qemu_exit(code, &sandbox),
            _ => format!("the guest agent failed: {reason}"),
        },
    };
    // Every call still waiting on the agent fails now.
    agent.declare_dead(reason.clone());
    if sandbox.stopping.load(Ordering::SeqCst) {
        return;
    }
    if let Some(pid) = sandbox.qemu_pid {
        if qemu::is_ours(pid, &sandbox.dir) {
            log::warn!("killing QEMU {pid}: {reason}");
            super::kill(pid);
        }
    }
    let _ = sandbox.events.send(Event::Died { reason });
}

/// Checks the agent's health until it is dead; declares it dead after too many misses.
async fn health(agent: Arc<Agent>) {
    let limits = agent.limits();
    let mut missed = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep(limits.health_interval) => {}
            _ = agent.died() => return,
        }
        let ctx = ttrpc::context::with_timeout(limits.health_timeout.as_nanos() as i64);
        // ttrpc keeps the deadline; this bounds a write that would not end either.
        let limit = limits.health_timeout + Duration::from_secs(1);
        let checked = tokio::time::timeout(limit, agent.check(ctx, &api::Empty::default())).await;
        let failure = match checked {
            Ok(Ok(reply)) if reply.serving => {
                missed = 0;
                continue;
            }
            Ok(Ok(_)) => "it answered that it does not serve".to_string(),
            Ok(Err(CallError::Dead(_))) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {limit:?}"),
        };
        missed += 1;
        log::warn!(
            "the guest agent's health check failed ({missed} of {} in a row): {failure}",
            limits.health_misses
        );
        if missed >= limits.health_misses {
            agent.declare_dead(format!(
                "{missed} health checks in a row failed (each allowed {:?}), the last: {failure}",
                limits.health_timeout
            ));
            return;
        }
    }
}

/// Reports the OOM kills the agent tells of, for the sandbox's own containers.
async fn oom_events(agent: Arc<Agent>, sandbox: Sandbox) {
    loop {
        let asked = Instant::now();
        match agent
            .get_oom_event(agent::no_deadline(), &api::Empty::default())
            .await
        {
            Ok(oom) => {
                let id = oom.container_id;
                let verdict = lock(&sandbox.known).oom(&id, Instant::now());
                match verdict {
                    Oom::Report => {
                        let _ = sandbox.events.send(Event::Oom { container_id: id });
                    }
                    Oom::Coalesced => {
                        log::debug!("OOM event for {id}: reported less than {OOM_COALESCE:?} ago");
                    }
                    Oom::Unknown => {
                        agent.protocol_error(format!(
                            "an OOM event for container {}, which this sandbox does not have: \
                             dropped",
                            agent::shown(&id)
                        ));
                    }
                }
            }
            Err(CallError::Dead(_)) => return,
            Err(e) => {
                log::warn!("OOM events of the sandbox: {e}");
                tokio::select! {
                    () = tokio::time::sleep(OOM_RETRY) => {}
                    _ = agent.died() => return,
                }
            }
        }
        tokio::time::sleep_until((asked + OOM_PACE).into()).await;
    }
}

/// Reports the exit of process `exec_id` of container `id` once the agent tells it.
pub fn exit(
    agent: Arc<Agent>,
    events: UnboundedSender<Event>,
    known: Arc<Mutex<Known>>,
    id: &str,
    exec_id: &str,
) {
    let req = api::ProcessRequest {
        container_id: id.to_string(),
        exec_id: exec_id.to_string(),
        ..Default::default()
    };
    let since = SystemTime::now();
    tokio::spawn(async move {
        let (status, at) = match agent.wait_process(agent::no_deadline(), &req).await {
            Ok(exited) => {
                let at = UNIX_EPOCH + Duration::from_nanos(exited.exited_at_ns.max(0) as u64);
                (exited.status, at.max(since).min(SystemTime::now()))
            }
            Err(CallError::Protocol(what)) => {
                log::warn!(
                    "the exit of {} {:?} is unknown ({what}): reported as {LOST_STATUS}",
                    req.container_id,
                    req.exec_id
                );
                (LOST_STATUS, SystemTime::now())
            }
            // The sandbox's death ends every process.
            Err(CallError::Dead(_)) => return,
            Err(e) => {
                log::warn!("wait for {} {:?}: {e}", req.container_id, req.exec_id);
                return;
            }
        };
        if !lock(&known).has(&req.container_id, &req.exec_id) {
            log::debug!(
                "exit of {} {:?}, which the shim forgot: dropped",
                req.container_id,
                req.exec_id
            );
            return;
        }
        let _ = events.send(Event::Exit(Exit {
            container_id: req.container_id,
            exec_id: req.exec_id,
            // Guest pids mean nothing on the host: the shim's own, as for its start.
            pid: std::process::id(),
            status,
            at,
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guests_ids_are_checked_against_what_the_shim_started() {
        let mut known = Known::default();
        known.add("c1", "");
        known.add("c1", "e1");
        assert!(known.has("c1", ""));
        assert!(known.has("c1", "e1"));
        assert!(!known.has("c1", "e2"));
        assert!(!known.has("c2", ""));
        known.forget_exec("c1", "e1");
        assert!(!known.has("c1", "e1"));
        assert!(known.has("c1", ""));
        known.forget("c1");
        assert!(!known.has("c1", ""));
    }

    #[test]
    fn oom_events_are_coalesced_per_container_and_unknown_ones_refused() {
        let mut known = Known::default();
        known.add("c1", "");
        known.add("c2", "");
        let t0 = Instant::now();
        assert_eq!(known.oom("c1", t0), Oom::Report);
        assert_eq!(known.oom("c1", t0 + OOM_COALESCE / 2), Oom::Coalesced);
        assert_eq!(known.oom("c2", t0 + OOM_COALESCE / 2), Oom::Report);
        assert_eq!(known.oom("c1", t0 + OOM_COALESCE), Oom::Report);
        assert_eq!(known.oom("ghost", t0), Oom::Unknown);
    }
}
