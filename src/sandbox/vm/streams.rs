//! A guest process's streams for the shim: its output read from the agent into a pipe the
//! shim reads, its input written by the shim into a pipe whose bytes go to the agent.

use std::sync::Arc;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    task::JoinHandle,
};

use super::{
    super::{ProcessIo, StdioWanted},
    agent::{self, Agent, CallError},
};
use crate::protos::agent as api;

/// How many bytes one read asks the agent for, and the pipes' buffer: an answer may hold no
/// more (the agent's checked reads refuse one that does), and the shim buffers at most this
/// much of a stream while nobody reads it.
const CHUNK: usize = 64 * 1024;

/// Which output stream.
#[derive(Clone, Copy)]
enum Output {
    Stdout,
    Stderr,
}

/// The relays of one process.
pub struct Relays {
    /// Ends once all of the shim's input reached the agent and the agent closed stdin.
    pub stdin: Option<JoinHandle<()>>,
}

/// Starts relays for the streams `stdio` names of process `exec_id` of container `id`;
/// returns the shim's ends.
pub fn start(
    client: &Arc<Agent>,
    id: &str,
    exec_id: &str,
    stdio: StdioWanted,
) -> (ProcessIo, Relays) {
    let mut io = ProcessIo::default();
    if stdio.stdout || stdio.terminal {
        io.stdout = Some(Box::new(output(
            client.clone(),
            id,
            exec_id,
            Output::Stdout,
        )));
    }
    if stdio.stderr && !stdio.terminal {
        io.stderr = Some(Box::new(output(
            client.clone(),
            id,
            exec_id,
            Output::Stderr,
        )));
    }
    let mut relays = Relays { stdin: None };
    if stdio.stdin {
        // A duplex end, unlike a simplex half, tells the other end when it is dropped.
        let (reader, writer) = tokio::io::duplex(CHUNK);
        io.stdin = Some(Box::new(writer));
        relays.stdin = Some(tokio::spawn(input(
            client.clone(),
            id.to_string(),
            exec_id.to_string(),
            reader,
        )));
    }
    (io, relays)
}

fn output(
    client: Arc<Agent>,
    id: &str,
    exec_id: &str,
    which: Output,
) -> impl tokio::io::AsyncRead + Send + Unpin {
    let (reader, mut writer) = tokio::io::duplex(CHUNK);
    let req = api::ReadStreamRequest {
        container_id: id.to_string(),
        exec_id: exec_id.to_string(),
        max_bytes: CHUNK as u32,
        ..Default::default()
    };
    tokio::spawn(async move {
        loop {
            // No deadline: a read waits for the process to write. A silent guest fails its
            // health checks, and its death ends the read.
            let read = match which {
                Output::Stdout => client.read_stdout(agent::no_deadline(), &req).await,
                Output::Stderr => client.read_stderr(agent::no_deadline(), &req).await,
            };
            match read {
                Ok(chunk) if !chunk.eof => {
                    if writer.write_all(&chunk.data).await.is_err() {
                        return;
                    }
                }
                Ok(_) => break,
                Err(CallError::Dead(reason)) => {
                    log::debug!("output of {} {:?}: {reason}", req.container_id, req.exec_id);
                    break;
                }
                Err(e) => {
                    log::warn!("output of {} {:?}: {e}", req.container_id, req.exec_id);
                    break;
                }
            }
        }
        let _ = writer.shutdown().await;
    });
    reader
}

async fn input(
    client: Arc<Agent>,
    id: String,
    exec_id: String,
    mut reader: tokio::io::DuplexStream,
) {
    let mut buf = vec![0; CHUNK];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let req = api::WriteStreamRequest {
                    container_id: id.clone(),
                    exec_id: exec_id.clone(),
                    data: buf[..n].to_vec(),
                    ..Default::default()
                };
                if let Err(e) = client.write_stdin(agent::ctx(), &req).await {
                    log::warn!("input of {id} {exec_id:?}: {e}");
                    break;
                }
            }
        }
    }
    let req = api::ProcessRequest {
        container_id: id.clone(),
        exec_id: exec_id.clone(),
        ..Default::default()
    };
    if let Err(e) = client.close_stdin(agent::ctx(), &req).await {
        log::debug!("close stdin of {id} {exec_id:?}: {e}");
    }
}
