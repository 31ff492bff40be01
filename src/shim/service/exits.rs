//! What the sandbox reports, published as events: exits (once their output is delivered),
//! OOM kills, and the sandbox's own death (every process in it exits).

use std::{sync::Arc, time::SystemTime};

use containerd_shim_protos::{
    events::task::{TaskExit, TaskOOM},
    topics,
};
use slog::{error, info, warn};
use tokio::sync::mpsc::UnboundedReceiver;

use super::Shared;
use crate::{
    oci::State,
    sandbox::{Event, Exit},
    shim::{
        io::STALL_LIMIT,
        process::{ExitInfo, Process},
    },
};

/// The exit status of a process whose sandbox died under it.
pub(super) const SANDBOX_DIED_STATUS: u32 = 255;

/// Publishes what the sandbox reports: TaskOOM at once; each exit once its output is
/// delivered and it is recorded (TaskExit).
pub(super) async fn handle_events(state: Arc<Shared>, mut events: UnboundedReceiver<Event>) {
    while let Some(event) = events.recv().await {
        match event {
            Event::Exit(exit) => {
                let state = state.clone();
                // Each exit drains on its own, so a process whose output is held open
                // elsewhere cannot delay the others.
                tokio::spawn(async move { apply_exit(&state, exit).await });
            }
            Event::Oom { container_id } => {
                info!(state.logger, "out of memory"; "container" => &container_id);
                let event = TaskOOM {
                    container_id,
                    ..Default::default()
                };
                state.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(event));
            }
            Event::Died { reason } => {
                error!(state.logger, "the sandbox died: every process in it exits";
                    "reason" => &reason);
                for exit in running_processes(&state).await {
                    let state = state.clone();
                    tokio::spawn(async move { apply_exit(&state, exit).await });
                }
            }
        }
    }
}

/// Exits for every process that has not exited, with [`SANDBOX_DIED_STATUS`].
async fn running_processes(state: &Shared) -> Vec<Exit> {
    let containers = state.containers.lock().await;
    let at = SystemTime::now();
    let mut exits = Vec::new();
    for (id, container) in containers.iter() {
        let processes = std::iter::once((String::new(), &container.init))
            .chain(container.execs.iter().map(|(e, p)| (e.clone(), p)));
        for (exec_id, process) in processes {
            // An exec process that never started has nothing to exit.
            let never_started = !exec_id.is_empty() && process.status == State::Ready;
            if process.exit().is_some() || never_started {
                continue;
            }
            exits.push(Exit {
                container_id: id.clone(),
                exec_id,
                pid: process.pid,
                status: SANDBOX_DIED_STATUS,
                at,
            });
        }
    }
    exits
}

/// Runs `change` on the process `exit` is of, unless it is gone or has exited already.
async fn unexited<T>(
    state: &Shared,
    exit: &Exit,
    change: impl FnOnce(&mut Process) -> T,
) -> Option<T> {
    let mut containers = state.containers.lock().await;
    let process = containers
        .get_mut(&exit.container_id)?
        .process_mut(&exit.exec_id)
        .ok()?;
    process.exit().is_none().then(|| change(process))
}

/// Records an exit and publishes it, once the process's output reached containerd.
async fn apply_exit(state: &Shared, exit: Exit) {
    // A Create or Start still under way publishes its event before this exit's.
    let Some(op) = state.op_lock(&exit.container_id).await else {
        return;
    };
    drop(op.lock().await);
    let taken = unexited(state, &exit, |process| std::mem::take(&mut process.streams)).await;
    let Some(streams) = taken else {
        return;
    };
    // Every line the process wrote reaches containerd, and is read, before it hears of the
    // exit; unless nobody reads it: then the exit does not wait for long.
    let delivery = streams.finish().await;
    if delivery.dropped > 0 {
        warn!(state.logger, "output nobody read was dropped";
            "container" => &exit.container_id, "exec" => &exit.exec_id,
            "dropped_bytes" => delivery.dropped, "delivered_bytes" => delivery.delivered,
            "stalled_ms" => STALL_LIMIT.as_millis() as u64);
    }
    let info = ExitInfo {
        status: exit.status,
        at: exit.at,
    };
    if unexited(state, &exit, |process| process.set_exited(info))
        .await
        .is_none()
    {
        return;
    }
    info!(state.logger, "process exited";
        "container" => &exit.container_id, "exec" => &exit.exec_id,
        "pid" => exit.pid, "status" => exit.status);
    let event = TaskExit {
        container_id: exit.container_id.clone(),
        id: if exit.exec_id.is_empty() {
            exit.container_id.clone()
        } else {
            exit.exec_id.clone()
        },
        pid: exit.pid,
        exit_status: exit.status,
        exited_at: Some(info.timestamp()).into(),
        ..Default::default()
    };
    state.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(event));
}
