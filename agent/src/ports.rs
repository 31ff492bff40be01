//! The guest's side of a pod's port forwarding: TCP connections to the guest's loopback that
//! the host opens (OpenPort) and then reads, writes and closes through the agent, each named
//! by an id the agent gives it. At most [`MAX_OPEN`] are open at once; a closed id is never
//! given again.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream,
    },
    sync::watch,
};

/// How many port connections may be open at once.
pub const MAX_OPEN: usize = 64;
/// The most a single read returns.
pub const READ_LIMIT: usize = 64 * 1024;
/// The most a single write may carry.
pub const WRITE_LIMIT: usize = 4 * READ_LIMIT;
/// How long connecting to a port of the loopback may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// Why a port call failed.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// A port outside 1..=65535.
    #[error("port {0}: a port is 1 to 65535")]
    BadPort(u32),
    /// An id that names no open connection.
    #[error("port stream {0} not found")]
    NotFound(u64),
    /// [`MAX_OPEN`] connections are open.
    #[error("{MAX_OPEN} port connections are open already: one must be closed first")]
    TooMany,
    /// A write of more than [`WRITE_LIMIT`] bytes.
    #[error("a write of {0} bytes: at most {WRITE_LIMIT} at once")]
    TooBig(usize),
    /// A write after the sending side was closed.
    #[error("port stream {0}: its sending side is closed")]
    WriteClosed(u64),
    /// The connection failed (refused, reset, ...).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// What the kernel said.
        source: std::io::Error,
    },
}

impl PortError {
    /// Its ttrpc code.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            Self::BadPort(_) | Self::TooBig(_) => ttrpc::Code::INVALID_ARGUMENT,
            Self::NotFound(_) => ttrpc::Code::NOT_FOUND,
            Self::TooMany => ttrpc::Code::RESOURCE_EXHAUSTED,
            Self::WriteClosed(_) => ttrpc::Code::FAILED_PRECONDITION,
            Self::Io { .. } => ttrpc::Code::UNAVAILABLE,
        }
    }
}

impl From<PortError> for ttrpc::Error {
    fn from(e: PortError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

/// What a read gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// Bytes the guest's server sent.
    Data(Vec<u8>),
    /// Its side ended (or the connection was closed).
    End,
}

/// One open connection.
struct Connection {
    reader: tokio::sync::Mutex<OwnedReadHalf>,
    writer: tokio::sync::Mutex<Option<OwnedWriteHalf>>,
    /// Set when the connection is closed: pending reads and writes end.
    closed: watch::Sender<bool>,
}

impl Connection {
    /// Resolves once the connection is closed.
    async fn closed(&self) {
        let mut closed = self.closed.subscribe();
        let _ = closed.wait_for(|c| *c).await;
    }
}

#[derive(Default)]
struct Table {
    open: HashMap<u64, Arc<Connection>>,
    /// Connections being opened, counted against [`MAX_OPEN`].
    opening: usize,
    /// The last id given.
    last: u64,
}

/// The open port connections.
#[derive(Default)]
pub struct Ports {
    table: Mutex<Table>,
}

/// Gives an opening slot back however the open ends.
struct Opening<'a>(&'a Ports);

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.0.lock().opening -= 1;
    }
}

impl Ports {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, id: u64) -> Result<Arc<Connection>, PortError> {
        self.lock()
            .open
            .get(&id)
            .cloned()
            .ok_or(PortError::NotFound(id))
    }

    /// How many connections are open.
    #[cfg(test)]
    fn open_count(&self) -> usize {
        self.lock().open.len()
    }

    /// Connects to 127.0.0.1:`port`; the new connection's id.
    pub async fn open(&self, port: u32) -> Result<u64, PortError> {
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or(PortError::BadPort(port))?;
        let opening = {
            let mut table = self.lock();
            if table.open.len() + table.opening >= MAX_OPEN {
                return Err(PortError::TooMany);
            }
            table.opening += 1;
            Opening(self)
        };
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let io = |source| PortError::Io {
            context: format!("connect to {address}"),
            source,
        };
        let stream = tokio::time::timeout(CONNECT_LIMIT, TcpStream::connect(address))
            .await
            .map_err(|_| io(std::io::ErrorKind::TimedOut.into()))?
            .map_err(io)?;
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        let connection = Arc::new(Connection {
            reader: tokio::sync::Mutex::new(reader),
            writer: tokio::sync::Mutex::new(Some(writer)),
            closed: watch::channel(false).0,
        });
        let mut table = self.lock();
        table.last += 1;
        let id = table.last;
        table.open.insert(id, connection);
        drop(table);
        drop(opening);
        log::debug!("port stream {id}: {address}");
        Ok(id)
    }

    /// Reads at most `max` bytes (capped at [`READ_LIMIT`]) of connection `id`, waiting for
    /// some.
    pub async fn read(&self, id: u64, max: u32) -> Result<Read, PortError> {
        let connection = self.get(id)?;
        let read = async {
            let mut reader = connection.reader.lock().await;
            let mut buf = vec![0; (max as usize).clamp(1, READ_LIMIT)];
            match reader.read(&mut buf).await {
                Ok(0) => Ok(Read::End),
                Ok(n) => {
                    buf.truncate(n);
                    Ok(Read::Data(buf))
                }
                Err(source) => Err(PortError::Io {
                    context: format!("read port stream {id}"),
                    source,
                }),
            }
        };
        tokio::select! {
            read = read => read,
            () = connection.closed() => Ok(Read::End),
        }
    }

    /// Writes all of `data` to connection `id`; with `close_write` then ends its sending side.
    pub async fn write(&self, id: u64, data: &[u8], close_write: bool) -> Result<(), PortError> {
        if data.len() > WRITE_LIMIT {
            return Err(PortError::TooBig(data.len()));
        }
        let connection = self.get(id)?;
        let write = async {
            let mut writer = connection.writer.lock().await;
            let stream = writer.as_mut().ok_or(PortError::WriteClosed(id))?;
            let io = |source| PortError::Io {
                context: format!("write port stream {id}"),
                source,
            };
            stream.write_all(data).await.map_err(io)?;
            if close_write {
                stream.shutdown().await.map_err(io)?;
                *writer = None;
            }
            Ok(())
        };
        tokio::select! {
            written = write => written,
            () = connection.closed() => Err(PortError::NotFound(id)),
        }
    }

    /// Closes connection `id`: its pending reads end, its pending writes fail.
    pub fn close(&self, id: u64) -> Result<(), PortError> {
        let connection = self
            .lock()
            .open
            .remove(&id)
            .ok_or(PortError::NotFound(id))?;
        connection.closed.send_replace(true);
        log::debug!("port stream {id} closed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server on the loopback that echoes what it reads after a greeting.
    async fn echo_server() -> (u16, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let _ = stream.write_all(b"hello\n").await;
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        (port, task)
    }

    async fn read_all(ports: &Ports, id: u64, want: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < want {
            match ports.read(id, u32::MAX).await.unwrap() {
                Read::Data(data) => {
                    assert!(data.len() <= READ_LIMIT, "a read is capped");
                    got.extend(data);
                }
                Read::End => break,
            }
        }
        got
    }

    #[tokio::test]
    async fn a_connection_carries_both_ways_and_ends_with_its_sending_side() {
        let (port, _server) = echo_server().await;
        let ports = Ports::default();
        let id = ports.open(port as u32).await.unwrap();
        assert_eq!(read_all(&ports, id, 6).await, b"hello\n");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let writing = async {
            for chunk in data.chunks(READ_LIMIT) {
                ports.write(id, chunk, false).await.unwrap();
            }
            ports.write(id, b"", true).await.unwrap();
        };
        let (_, echoed) = tokio::join!(writing, read_all(&ports, id, usize::MAX));
        assert_eq!(echoed.len(), data.len());
        assert!(echoed == data, "the bytes came back unchanged");
        assert!(matches!(
            ports.write(id, b"late", false).await,
            Err(PortError::WriteClosed(_))
        ));
        ports.close(id).unwrap();
        assert_eq!(ports.open_count(), 0);
    }

    #[tokio::test]
    async fn unknown_ids_bad_ports_and_big_writes_are_refused() {
        let ports = Ports::default();
        for call in [
            ports.read(7, 10).await.map(drop),
            ports.write(7, b"x", false).await,
            ports.close(7),
        ] {
            let e = call.unwrap_err();
            assert_eq!(e.code(), ttrpc::Code::NOT_FOUND, "{e}");
        }
        for port in [0, 65536, u32::MAX] {
            let e = ports.open(port).await.unwrap_err();
            assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT, "{e}");
        }
        let e = ports
            .write(1, &vec![0; WRITE_LIMIT + 1], false)
            .await
            .unwrap_err();
        assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT, "{e}");

        // Closed ids are not given again, and are unknown afterwards.
        let (port, _server) = echo_server().await;
        let first = ports.open(port as u32).await.unwrap();
        ports.close(first).unwrap();
        let second = ports.open(port as u32).await.unwrap();
        assert_ne!(first, second);
        assert!(matches!(
            ports.read(first, 10).await,
            Err(PortError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_error_and_takes_no_slot() {
        // A port nobody listens on: bound, then closed again.
        let port = {
            let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            listener.local_addr().unwrap().port()
        };
        let ports = Ports::default();
        let e = ports.open(port as u32).await.unwrap_err();
        assert_eq!(e.code(), ttrpc::Code::UNAVAILABLE, "{e}");
        assert_eq!(ports.open_count(), 0);
        assert_eq!(ports.lock().opening, 0);
    }

    #[tokio::test]
    async fn at_most_max_open_connections_and_close_frees_one() {
        let (port, _server) = echo_server().await;
        let ports = Ports::default();
        let mut ids = Vec::new();
        for _ in 0..MAX_OPEN {
            ids.push(ports.open(port as u32).await.unwrap());
        }
        let e = ports.open(port as u32).await.unwrap_err();
        assert_eq!(e.code(), ttrpc::Code::RESOURCE_EXHAUSTED, "{e}");
        assert!(e.to_string().contains("64"), "{e}");
        ports.close(ids[0]).unwrap();
        ports.open(port as u32).await.unwrap();
        assert_eq!(ports.open_count(), MAX_OPEN);
    }

    #[tokio::test]
    async fn close_ends_a_pending_read() {
        let (port, _server) = echo_server().await;
        let ports = Arc::new(Ports::default());
        let id = ports.open(port as u32).await.unwrap();
        assert_eq!(read_all(&ports, id, 6).await, b"hello\n");
        let reading = {
            let ports = ports.clone();
            tokio::spawn(async move { ports.read(id, 100).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        ports.close(id).unwrap();
        let read = tokio::time::timeout(Duration::from_secs(5), reading)
            .await
            .expect("the read ended")
            .unwrap();
        assert_eq!(read.unwrap(), Read::End);
    }
}
