//! Turns the pids the shim's reaper collects into the exits of the processes they belong to.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use containerd_shim::{
    asynchronous::monitor::monitor_subscribe,
    monitor::{Subject, Topic},
};
use tokio::sync::mpsc::UnboundedSender;

use super::super::{Error, Event, Exit, Result};

/// How many exits of not (yet) known pids are remembered, for a process that exits before
/// the runtime has told us its pid.
const UNCLAIMED_EXITS: usize = 1024;

/// How long such an exit is remembered.
const UNCLAIMED_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// Maps reaped pids to the processes they belong to.
pub(super) struct Tracker {
    pub(super) processes: HashMap<u32, (String, String)>,
    unclaimed: Vec<(u32, u32, SystemTime)>,
    pub(super) sender: UnboundedSender<Event>,
}

impl Tracker {
    /// A tracker reporting exits to `sender`.
    pub(super) fn new(sender: UnboundedSender<Event>) -> Self {
        Self {
            processes: HashMap::new(),
            unclaimed: Vec::new(),
            sender,
        }
    }

    /// Records that `pid` is `(container, exec)`, launched at `since`; emits its exit at once
    /// if it already died (an exit of the same pid from before `since` was another process).
    pub(super) fn track(&mut self, pid: u32, container_id: &str, exec_id: &str, since: SystemTime) {
        if let Some(index) = self
            .unclaimed
            .iter()
            .position(|(p, _, at)| *p == pid && *at >= since)
        {
            let (_, status, at) = self.unclaimed.swap_remove(index);
            self.emit(pid, container_id.into(), exec_id.into(), status, at);
        } else {
            self.processes
                .insert(pid, (container_id.into(), exec_id.into()));
        }
    }

    /// Handles the reaper's news that `pid` exited with `status`.
    fn reaped(&mut self, pid: u32, status: u32) {
        let at = SystemTime::now();
        match self.processes.remove(&pid) {
            Some((container_id, exec_id)) => self.emit(pid, container_id, exec_id, status, at),
            None => {
                let horizon = at
                    .checked_sub(UNCLAIMED_FOR)
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                self.unclaimed.retain(|(_, _, seen)| *seen >= horizon);
                if self.unclaimed.len() >= UNCLAIMED_EXITS {
                    self.unclaimed.remove(0);
                }
                self.unclaimed.push((pid, status, at));
            }
        }
    }

    fn emit(&self, pid: u32, container_id: String, exec_id: String, status: u32, at: SystemTime) {
        let _ = self.sender.send(Event::Exit(Exit {
            container_id,
            exec_id,
            pid,
            status,
            at,
        }));
    }
}

/// Forwards the reaper's exits to the tracker for as long as the shim lives.
pub(super) async fn watch_exits(tracked: Arc<Mutex<Tracker>>) -> Result<()> {
    let mut subscription = monitor_subscribe(Topic::Pid).await.map_err(|e| {
        Error::io(
            "subscribe to process exits",
            std::io::Error::other(e.to_string()),
        )
    })?;
    tokio::spawn(async move {
        while let Some(event) = subscription.rx.recv().await {
            if let Subject::Pid(pid) = event.subject {
                tracked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .reaped(pid as u32, event.exit_code as u32);
            }
        }
    });
    Ok(())
}
