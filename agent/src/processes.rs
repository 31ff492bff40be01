//! The processes the agent started: their streams, and their exits, kept until the host asks
//! (an exit that comes before its WaitProcess, or before the process is even registered, is
//! not lost).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::SystemTime,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::watch,
};
use vessel::sandbox::{self, Exit, ProcessIo};

/// A container id and an exec id (empty for the init process).
pub type Key = (String, String);

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exited {
    /// Exit status (128 + signal).
    pub status: u32,
    /// When.
    pub at: SystemTime,
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// One process: its streams, its exit once it came.
pub struct Process {
    stdin: tokio::sync::Mutex<Option<Writer>>,
    stdout: tokio::sync::Mutex<Option<Reader>>,
    stderr: tokio::sync::Mutex<Option<Reader>>,
    exit: watch::Sender<Option<Exited>>,
}

/// Which output stream.
#[derive(Debug, Clone, Copy)]
pub enum Output {
    /// stdout, or the terminal.
    Stdout,
    /// stderr.
    Stderr,
}

/// What a read of an output stream gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Bytes the process wrote.
    Data(Vec<u8>),
    /// The stream ended (or the process has none).
    End,
}

/// The most a single read returns.
pub const READ_LIMIT: usize = 64 * 1024;

impl Process {
    fn new(io: ProcessIo) -> Self {
        Self {
            stdin: tokio::sync::Mutex::new(io.stdin),
            stdout: tokio::sync::Mutex::new(io.stdout),
            stderr: tokio::sync::Mutex::new(io.stderr),
            exit: watch::channel(None).0,
        }
    }

    /// Reads at most `max` bytes (capped at [`READ_LIMIT`]) of an output stream, waiting for
    /// some. A read error (a terminal whose other side closed) ends the stream.
    pub async fn read(&self, which: Output, max: usize) -> Chunk {
        let stream = match which {
            Output::Stdout => &self.stdout,
            Output::Stderr => &self.stderr,
        };
        let mut stream = stream.lock().await;
        let Some(reader) = stream.as_mut() else {
            return Chunk::End;
        };
        let mut buf = vec![0; max.clamp(1, READ_LIMIT)];
        match reader.read(&mut buf).await {
            Ok(n) if n > 0 => {
                buf.truncate(n);
                Chunk::Data(buf)
            }
            _ => {
                *stream = None;
                Chunk::End
            }
        }
    }

    /// Writes all of `data` to the process's input.
    pub async fn write(&self, data: &[u8]) -> sandbox::Result<()> {
        let mut stdin = self.stdin.lock().await;
        let writer = stdin
            .as_mut()
            .ok_or_else(|| sandbox::Error::NotRunning("stdin (closed, or none)".into()))?;
        writer
            .write_all(data)
            .await
            .map_err(|e| sandbox::Error::io("write stdin", e))?;
        writer
            .flush()
            .await
            .map_err(|e| sandbox::Error::io("write stdin", e))
    }

    /// Closes the process's input: it reads end of file once it has read what was written.
    pub async fn close_stdin(&self) {
        if let Some(mut writer) = self.stdin.lock().await.take() {
            let _ = writer.shutdown().await;
        }
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> Exited {
        let mut exit = self.exit.subscribe();
        loop {
            if let Some(exited) = *exit.borrow_and_update() {
                return exited;
            }
            if exit.changed().await.is_err() {
                // The sender lives as long as `self`; unreachable while borrowed.
                return Exited {
                    status: 255,
                    at: SystemTime::now(),
                };
            }
        }
    }

    /// Its exit, if it came.
    #[cfg(test)]
    fn exited(&self) -> Option<Exited> {
        *self.exit.borrow()
    }
}

#[derive(Default)]
struct Table {
    live: HashMap<Key, Arc<Process>>,
    /// Processes being started, with their exit if it came before [`Processes::add`].
    starting: HashMap<Key, Option<Exited>>,
}

/// Every process the agent started.
#[derive(Default)]
pub struct Processes {
    table: Mutex<Table>,
}

impl Processes {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Announces that process `key` is being started, so that an exit the backend reports
    /// before [`Processes::add`] is kept.
    pub fn expect(&self, key: Key) {
        self.lock().starting.insert(key, None);
    }

    /// Registers a started process; an exit that came first is applied.
    pub fn add(&self, key: Key, io: ProcessIo) -> Arc<Process> {
        let process = Arc::new(Process::new(io));
        let mut table = self.lock();
        if let Some(Some(exited)) = table.starting.remove(&key) {
            process.exit.send_replace(Some(exited));
        }
        table.live.insert(key, process.clone());
        process
    }

    /// The process `key`.
    pub fn get(&self, key: &Key) -> Option<Arc<Process>> {
        self.lock().live.get(key).cloned()
    }

    /// Records an exit the backend reported; one of a process nobody expects is dropped.
    pub fn exited(&self, exit: &Exit) {
        let key = (exit.container_id.clone(), exit.exec_id.clone());
        let exited = Exited {
            status: exit.status,
            at: exit.at,
        };
        let mut table = self.lock();
        if let Some(process) = table.live.get(&key) {
            process.exit.send_replace(Some(exited));
        } else if let Some(early) = table.starting.get_mut(&key) {
            *early = Some(exited);
        }
    }

    /// Forgets process `key` (also one being started).
    pub fn remove(&self, key: &Key) -> Option<Arc<Process>> {
        let mut table = self.lock();
        table.starting.remove(key);
        table.live.remove(key)
    }

    /// The processes of container `id`.
    pub fn of_container(&self, id: &str) -> Vec<Arc<Process>> {
        let table = self.lock();
        table
            .live
            .iter()
            .filter(|((c, _), _)| c == id)
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Forgets every process of container `id`.
    pub fn remove_container(&self, id: &str) {
        let mut table = self.lock();
        table.live.retain(|(c, _), _| c != id);
        table.starting.retain(|(c, _), _| c != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(container: &str, exec: &str, status: u32) -> Exit {
        Exit {
            container_id: container.into(),
            exec_id: exec.into(),
            pid: 7,
            status,
            at: SystemTime::UNIX_EPOCH,
        }
    }

    fn key(c: &str, e: &str) -> Key {
        (c.into(), e.into())
    }

    #[tokio::test]
    async fn an_exit_before_the_process_is_registered_is_kept() {
        let processes = Processes::default();
        processes.expect(key("c1", "e1"));
        processes.exited(&exit("c1", "e1", 3));
        let process = processes.add(key("c1", "e1"), ProcessIo::default());
        assert_eq!(process.wait().await.status, 3);
    }

    #[tokio::test]
    async fn a_wait_before_the_exit_gets_it() {
        let processes = Arc::new(Processes::default());
        let process = processes.add(key("c1", ""), ProcessIo::default());
        let waiting = tokio::spawn(async move { process.wait().await });
        tokio::task::yield_now().await;
        processes.exited(&exit("c1", "", 137));
        assert_eq!(waiting.await.unwrap().status, 137);
    }

    #[tokio::test]
    async fn output_is_read_to_its_end_and_input_closes() {
        let (mut process_out, shim_out) = tokio::io::duplex(64);
        let (shim_in, mut process_in) = tokio::io::duplex(64);
        let io = ProcessIo {
            stdin: Some(Box::new(shim_in)),
            stdout: Some(Box::new(shim_out)),
            stderr: None,
        };
        let processes = Processes::default();
        let process = processes.add(key("c1", ""), io);
        process_out.write_all(b"hello").await.unwrap();
        drop(process_out);
        assert_eq!(
            process.read(Output::Stdout, 100).await,
            Chunk::Data(b"hello".to_vec())
        );
        assert_eq!(process.read(Output::Stdout, 100).await, Chunk::End);
        assert_eq!(process.read(Output::Stderr, 100).await, Chunk::End);

        process.write(b"in").await.unwrap();
        process.close_stdin().await;
        let mut got = Vec::new();
        process_in.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"in");
        assert!(process.write(b"more").await.is_err());
    }

    #[test]
    fn removing_a_container_forgets_its_processes_only() {
        let processes = Processes::default();
        processes.add(key("c1", ""), ProcessIo::default());
        processes.add(key("c1", "e1"), ProcessIo::default());
        processes.add(key("c2", ""), ProcessIo::default());
        processes.expect(key("c1", "e2"));
        processes.exited(&exit("c1", "e2", 0));
        assert_eq!(processes.of_container("c1").len(), 2);
        processes.remove_container("c1");
        assert!(processes.get(&key("c1", "")).is_none());
        assert!(processes.get(&key("c1", "e1")).is_none());
        assert!(processes.get(&key("c2", "")).is_some());
        let late = processes.add(key("c1", "e2"), ProcessIo::default());
        assert_eq!(
            late.exited(),
            None,
            "an early exit of a removed container is forgotten"
        );
    }

    #[test]
    fn an_exit_nobody_expects_is_dropped() {
        let processes = Processes::default();
        processes.exited(&exit("c9", "", 0));
        let process = processes.add(key("c9", ""), ProcessIo::default());
        assert_eq!(process.exited(), None);
    }
}
