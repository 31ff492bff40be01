//! QEMU's machine protocol (QMP) on the unix socket QEMU listens on: JSON objects, one a line.
//! A command is answered by `{"return": ...}` or `{"error": {...}}`; events come in between and
//! are skipped. QEMU runs the guest's devices, so every read is bounded: a line is at most
//! [`MAX_LINE`] bytes and every command has a deadline.

use std::{path::Path, time::Duration};

use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{
        unix::{OwnedReadHalf, OwnedWriteHalf},
        UnixStream,
    },
};

use super::super::{Error, Result};

/// The longest line QMP may send.
const MAX_LINE: u64 = 1 << 20;
/// How long a command may take.
const DEADLINE: Duration = Duration::from_secs(10);

/// A QMP connection, past capability negotiation.
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connects to QEMU's QMP socket and leaves negotiation mode.
    pub async fn connect(socket: &Path) -> Result<Self> {
        let stream = tokio::time::timeout(DEADLINE, UnixStream::connect(socket))
            .await
            .map_err(|_| Error::Timeout(format!("QMP {}", socket.display())))?
            .map_err(|e| Error::io(format!("QMP {}", socket.display()), e))?;
        let (reader, writer) = stream.into_split();
        let mut qmp = Self {
            reader: BufReader::new(reader),
            writer,
        };
        let greeting = qmp.line().await?;
        if greeting.get("QMP").is_none() {
            return Err(Error::Unavailable(format!("QMP: no greeting: {greeting}")));
        }
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    /// Runs `command` with `arguments`; its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        tokio::time::timeout(DEADLINE, self.exchange(command, arguments))
            .await
            .map_err(|_| Error::Timeout(format!("QMP {command}: no answer within {DEADLINE:?}")))?
    }

    async fn exchange(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let mut request = json!({ "execute": command, "arguments": arguments }).to_string();
        request.push('\n');
        self.writer
            .write_all(request.as_bytes())
            .await
            .map_err(|e| Error::io(format!("QMP {command}"), e))?;
        loop {
            let mut answer = self.line().await?;
            if let Some(value) = answer.get_mut("return") {
                return Ok(value.take());
            }
            if let Some(error) = answer.get("error") {
                let text = error["desc"].as_str().unwrap_or("no description");
                return Err(Error::Runtime {
                    op: "qmp",
                    id: command.to_string(),
                    message: text.to_string(),
                });
            }
            // An event ({"event": ...}): not the answer.
        }
    }

    /// The next JSON object QEMU sends.
    async fn line(&mut self) -> Result<Value> {
        let mut line = String::new();
        let read = tokio::io::AsyncReadExt::take(&mut self.reader, MAX_LINE)
            .read_line(&mut line)
            .await
            .map_err(|e| Error::io("QMP read", e))?;
        if read == 0 {
            return Err(Error::Unavailable("QMP: QEMU closed the connection".into()));
        }
        if !line.ends_with('\n') {
            return Err(Error::Unavailable(format!(
                "QMP: a line longer than {MAX_LINE} bytes"
            )));
        }
        serde_json::from_str(&line)
            .map_err(|e| Error::Unavailable(format!("QMP: not JSON ({e}): {:.200}", line.trim())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A fake QEMU on `socket` that greets, then answers each request line with the next of
    /// `answers` (several lines each: events first).
    async fn fake_qemu(socket: &Path, answers: Vec<&'static str>) -> tokio::task::JoinHandle<()> {
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream
                .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            let mut buf = [0u8; 4096];
            for answer in std::iter::once("{\"return\": {}}\n").chain(answers) {
                let _ = stream.read(&mut buf).await.unwrap();
                stream.write_all(answer.as_bytes()).await.unwrap();
            }
        })
    }

    #[tokio::test]
    async fn answers_come_back_past_events_and_errors_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qmp.sock");
        let qemu = fake_qemu(
            &socket,
            vec![
                "{\"event\": \"ACPI_DEVICE_OST\"}\n{\"return\": [1, 2]}\n",
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no slot\"}}\n",
                "{\"return\": 1\n",
            ],
        )
        .await;
        let mut qmp = Qmp::connect(&socket).await.unwrap();
        assert_eq!(
            qmp.execute("query-hotpluggable-cpus", json!({}))
                .await
                .unwrap(),
            json!([1, 2])
        );
        let error = qmp.execute("device_add", json!({})).await.unwrap_err();
        assert!(error.to_string().contains("no slot"), "{error}");
        let garbage = qmp.execute("qom-get", json!({})).await.unwrap_err();
        assert!(garbage.to_string().contains("not JSON"), "{garbage}");
        qemu.await.unwrap();
    }
}
