//! The shim's side of `protos/agent.proto`: the connection to the guest's agent through QEMU's
//! socket, every call made on it, and the agent's errors as typed backend errors.
//!
//! The guest is not trusted: a container that escaped to the guest kernel can answer for the
//! agent. So whatever comes back is checked before the shim keeps or believes any of it:
//!
//! - **The wire** ([`Guarded`]): each frame the agent sends is checked from its header, as it
//!   arrives and before ttrpc allocates its body: only answers (ttrpc responses), only to
//!   streams the shim opened, never more answers than requests, at most [`FRAME_LIMIT`] bytes
//!   (ttrpc's own cap is 4 MiB). A frame that breaks one of these ends the connection, and with
//!   it the sandbox (below).
//! - **Each reply** is held to its method's cap before it is decoded ([`SMALL_LIMIT`] for most,
//!   the `max_bytes` a read asked, [`STATS_LIMIT`], [`PROCESSES_LIMIT`] and at most
//!   [`MAX_PROCESSES`] entries, counted without decoding them), and what it says is checked
//!   after: a read returns data (at most what was asked) or the end, an exit status is 0 to 255.
//!   A reply that breaks them fails its call as a protocol error ([`CallError::Protocol`]);
//!   [`Limits::strikes`] of those within [`Limits::strike_window`] and the sandbox is dead. The
//!   agent's error messages are cut at [`MESSAGE_LIMIT`] bytes.
//! - **Deadlines**: a call has its context's deadline ([`ctx`], 60 s); the calls that wait as
//!   long as a process runs ([`no_deadline`]: waits, reads, OOM events) have none of their own,
//!   and end when the sandbox is declared dead, which the backend's health checks do when the
//!   guest goes silent ([`Limits::health_interval`], [`Limits::health_timeout`],
//!   [`Limits::health_misses`]).
//! - **Death** ([`Agent::declare_dead`]): the connection closed or failed, a frame refused, too
//!   many protocol errors, health checks missed, or QEMU gone. Every pending call fails at once,
//!   every later one too, and the connection is closed; the backend's watcher reports the
//!   sandbox dead and kills QEMU (`watchers.rs`).

use std::{
    collections::VecDeque,
    fmt, io,
    path::Path,
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    task::{Context as TaskContext, Poll},
    time::{Duration, Instant},
};

use protobuf::{CodedInputStream, Message};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::watch,
};
use ttrpc::{
    context::Context,
    proto::{MESSAGE_HEADER_LENGTH, MESSAGE_TYPE_REQUEST, MESSAGE_TYPE_RESPONSE},
    MessageHeader,
};

use super::super::{Error, Result};
use crate::protos::agent as api;

/// The ttrpc service the agent serves.
const SERVICE: &str = "vessel.agent.v1.Agent";
/// How long one health check may take while connecting, before the next try.
const CONNECT_CHECK_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a call may take: creating a container in a guest under TCG is slow.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest frame the agent may send: the largest reply (a process list) and room for its
/// envelope (an error's message). Checked from the frame's header.
pub const FRAME_LIMIT: usize = PROCESSES_LIMIT + (64 << 10);
/// The cap of a reply of a few fixed fields (an exit, an id, a health check).
pub const SMALL_LIMIT: usize = 4 << 10;
/// The cap of a container's metrics (containerd's cgroup metrics, a few KiB in practice).
pub const STATS_LIMIT: usize = 64 << 10;
/// The cap of a process list.
pub const PROCESSES_LIMIT: usize = 1 << 20;
/// The most processes a list may name: far more than a container runs, and a few MiB decoded.
pub const MAX_PROCESSES: usize = 16 << 10;
/// How much of the agent's error message the shim keeps.
pub const MESSAGE_LIMIT: usize = 4 << 10;
/// What a read's reply may add to the bytes asked: its field tags, lengths and `eof`.
const READ_OVERHEAD: usize = 16;
/// The largest request the shim sends (ttrpc refuses a frame over 4 MiB).
const REQUEST_LIMIT: usize = ttrpc::proto::MESSAGE_LENGTH_MAX - (64 << 10);
/// The error ttrpc gives a call whose deadline elapsed.
const DEADLINE_ELAPSED: &str = "deadline elapsed";
/// The error ttrpc gives a frame that is no ttrpc response.
const NOT_A_RESPONSE: &str = "Unpack response error";

/// A call's deadline.
pub fn ctx() -> Context {
    ttrpc::context::with_timeout(CALL_TIMEOUT.as_nanos() as i64)
}

/// A call that waits as long as the process it is about runs (a wait, a read): no deadline of
/// its own; it ends when the sandbox is declared dead (a silent guest misses its health checks).
pub fn no_deadline() -> Context {
    Context::default()
}

/// When the agent counts as dead.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How often the backend checks the agent's health once the sandbox runs.
    pub health_interval: Duration,
    /// How long one health check may take.
    pub health_timeout: Duration,
    /// Health checks failed in a row that make the sandbox dead.
    pub health_misses: u32,
    /// Protocol errors within [`Limits::strike_window`] that make the sandbox dead.
    pub strikes: usize,
    /// See [`Limits::strikes`].
    pub strike_window: Duration,
}

impl Default for Limits {
    /// A check every 5 s, each allowed 20 s (a guest under TCG on a loaded host answers in
    /// milliseconds; 20 s is a guest that stopped), two missed in a row: a guest silent for
    /// about a minute is dead. Ten protocol errors within a minute: a real agent makes none (an
    /// OOM event racing a container's removal is the one that may happen).
    fn default() -> Self {
        Self {
            health_interval: Duration::from_secs(5),
            health_timeout: Duration::from_secs(20),
            health_misses: 2,
            strikes: 10,
            strike_window: Duration::from_secs(60),
        }
    }
}

/// How a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The agent answered with an error.
    Status {
        /// Its code.
        code: ttrpc::Code,
        /// Its message, cut at [`MESSAGE_LIMIT`].
        message: String,
    },
    /// The agent did not answer method `.0` within the call's deadline.
    Timeout(&'static str),
    /// The agent's answer broke the protocol: what was wrong.
    Protocol(String),
    /// The agent is dead (or the sandbox stopped): why.
    Dead(String),
    /// The shim could not make the request.
    Request(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status { code, message } => write!(f, "the agent answered {code:?}: {message}"),
            Self::Timeout(method) => write!(f, "the agent did not answer {method} in time"),
            Self::Protocol(what) => write!(f, "the agent broke the protocol: {what}"),
            Self::Dead(reason) => write!(f, "the sandbox's agent is dead: {reason}"),
            Self::Request(what) => write!(f, "{what}"),
        }
    }
}

/// The result of a call.
pub type CallResult<T> = std::result::Result<T, CallError>;

/// `text` cut at [`MESSAGE_LIMIT`] bytes.
pub fn bounded(text: &str) -> String {
    if text.len() <= MESSAGE_LIMIT {
        return text.to_string();
    }
    let mut end = MESSAGE_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} more bytes)", &text[..end], text.len() - end)
}

/// A string from the guest, quoted and cut short for a log line.
pub fn shown(text: &str) -> String {
    const SHOWN: usize = 80;
    let mut end = text.len().min(SHOWN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let more = if end < text.len() { "..." } else { "" };
    format!("{:?}{more}", &text[..end])
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the connection and its calls share: the client, and whether (and why) it is dead.
struct State {
    /// The ttrpc client; taken (which closes the connection) once dead.
    client: Mutex<Option<ttrpc::r#async::Client>>,
    /// Why the agent is dead, once it is.
    dead: watch::Sender<Option<String>>,
    /// When the recent protocol errors happened.
    strikes: Mutex<VecDeque<Instant>>,
    limits: Limits,
}

impl State {
    /// Marks the agent dead (the first reason stays): every pending call fails, the
    /// connection closes once they did. Whether this was the first.
    fn declare_dead(&self, reason: String) -> bool {
        let first = self.dead.send_if_modified(|dead| {
            if dead.is_some() {
                return false;
            }
            *dead = Some(reason);
            true
        });
        if first {
            // The last handle on the connection but the ones of calls about to fail.
            drop(lock(&self.client).take());
        }
        first
    }

    fn reason(&self) -> Option<String> {
        self.dead.borrow().clone()
    }

    async fn died(&self) -> String {
        let mut dead = self.dead.subscribe();
        let reason = match dead.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        reason.unwrap_or_else(|| "the connection was dropped".into())
    }

    /// Counts a protocol error; too many in the window and the agent is dead.
    fn strike(&self, what: String) -> CallError {
        let limits = self.limits;
        let now = Instant::now();
        let count = {
            let mut strikes = lock(&self.strikes);
            while strikes
                .front()
                .is_some_and(|t| now.duration_since(*t) > limits.strike_window)
                || strikes.len() >= limits.strikes.max(1)
            {
                strikes.pop_front();
            }
            strikes.push_back(now);
            strikes.len()
        };
        log::warn!(
            "the guest agent broke the protocol ({count} of {} allowed within {:?}): {what}",
            limits.strikes,
            limits.strike_window
        );
        if count >= limits.strikes {
            self.declare_dead(format!(
                "{count} protocol errors within {:?}, the last: {what}",
                limits.strike_window
            ));
        }
        CallError::Protocol(what)
    }

    /// The call error of a ttrpc error.
    fn failed(&self, method: &'static str, e: ttrpc::Error) -> CallError {
        match e {
            ttrpc::Error::RpcStatus(status) => CallError::Status {
                code: status.code(),
                message: bounded(status.message()),
            },
            ttrpc::Error::Others(message) if message.contains(DEADLINE_ELAPSED) => {
                CallError::Timeout(method)
            }
            ttrpc::Error::Others(message) if message.starts_with(NOT_A_RESPONSE) => {
                self.strike(format!(
                    "{method}: an answer that is no ttrpc response: {}",
                    bounded(&message)
                ))
            }
            other => {
                self.declare_dead(format!(
                    "the connection failed: {}",
                    bounded(&other.to_string())
                ));
                CallError::Dead(self.reason().unwrap_or_default())
            }
        }
    }
}

/// The bytes of one direction of a ttrpc connection, cut into frames as they pass.
#[derive(Default)]
struct Frames {
    header: [u8; MESSAGE_HEADER_LENGTH],
    /// Bytes of the current header seen.
    have: usize,
    /// Bytes of the current frame's body still to come.
    body: usize,
}

impl Frames {
    /// Passes `bytes`, calling `header` on each frame header completed.
    fn feed(
        &mut self,
        mut bytes: &[u8],
        mut header: impl FnMut(MessageHeader) -> std::result::Result<(), String>,
    ) -> std::result::Result<(), String> {
        while !bytes.is_empty() {
            if self.body > 0 {
                let n = self.body.min(bytes.len());
                self.body -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (MESSAGE_HEADER_LENGTH - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == MESSAGE_HEADER_LENGTH {
                self.have = 0;
                let complete = MessageHeader::from(&self.header);
                header(complete)?;
                self.body = complete.length as usize;
            }
        }
        Ok(())
    }

    /// Whether a frame is under way.
    fn partial(&self) -> bool {
        self.have > 0 || self.body > 0
    }
}

/// The agent's connection, checked frame by frame (see the module's documentation): a frame
/// that breaks the protocol is an error to ttrpc, which then drops the connection, and the
/// agent is dead.
struct Guarded<S> {
    inner: S,
    state: Weak<State>,
    incoming: Frames,
    outgoing: Frames,
    /// Requests written.
    requests: u64,
    /// Answers read.
    answers: u64,
    /// The highest stream the shim opened.
    last_stream: u32,
}

impl<S> Guarded<S> {
    fn broken(&self, kind: io::ErrorKind, reason: String) -> io::Error {
        if let Some(state) = self.state.upgrade() {
            state.declare_dead(reason.clone());
        }
        io::Error::new(kind, reason)
    }
}

/// Whether a frame header the agent sent may be let through.
fn check_answer(
    header: MessageHeader,
    requests: u64,
    answers: &mut u64,
    last_stream: u32,
) -> std::result::Result<(), String> {
    if header.type_ != MESSAGE_TYPE_RESPONSE {
        return Err(format!(
            "a frame of type {:#x} on stream {} (the agent sends only answers)",
            header.type_, header.stream_id
        ));
    }
    if header.length as usize > FRAME_LIMIT {
        return Err(format!(
            "an answer of {} bytes, over the cap of {FRAME_LIMIT}",
            header.length
        ));
    }
    if header.stream_id.is_multiple_of(2) || header.stream_id > last_stream {
        return Err(format!(
            "an answer on stream {}, which the shim never opened",
            header.stream_id
        ));
    }
    *answers += 1;
    if *answers > requests {
        return Err(format!(
            "more answers ({answers}) than requests ({requests})"
        ));
    }
    Ok(())
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            // Nothing asked, nothing to check (and no end of file to see).
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(
                this.broken(e.kind(), format!("reading from the agent failed: {e}"))
            )),
            Poll::Ready(Ok(())) => {
                let got = &buf.filled()[before..];
                if got.is_empty() {
                    let reason = if this.incoming.partial() {
                        "the agent closed its connection within a frame"
                    } else {
                        "the agent closed its connection"
                    };
                    return Poll::Ready(Err(
                        this.broken(io::ErrorKind::UnexpectedEof, reason.into())
                    ));
                }
                let Guarded {
                    incoming,
                    requests,
                    answers,
                    last_stream,
                    ..
                } = this;
                let checked = incoming.feed(got, |header| {
                    check_answer(header, *requests, answers, *last_stream)
                });
                match checked {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(what) => Poll::Ready(Err(this.broken(io::ErrorKind::InvalidData, what))),
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                let Guarded {
                    outgoing,
                    requests,
                    last_stream,
                    ..
                } = this;
                // The shim's own frames: counted, never refused.
                let _ = outgoing.feed(&buf[..n], |header| {
                    if header.type_ == MESSAGE_TYPE_REQUEST {
                        *requests += 1;
                        *last_stream = (*last_stream).max(header.stream_id);
                    }
                    Ok(())
                });
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(
                this.broken(e.kind(), format!("writing to the agent failed: {e}"))
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// How many times field `number` occurs at the top level of the encoded message `payload`,
/// counted without decoding it; an error past `most`, or when it does not parse.
fn count_field(payload: &[u8], number: u32, most: usize) -> std::result::Result<usize, String> {
    let mut input = CodedInputStream::from_bytes(payload);
    let mut count = 0;
    loop {
        let tag = match input.read_raw_tag_or_eof() {
            Ok(Some(tag)) => tag,
            Ok(None) => return Ok(count),
            Err(e) => return Err(format!("it does not decode: {e}")),
        };
        if tag >> 3 == number {
            count += 1;
            if count > most {
                return Err(format!("more than {most} entries"));
            }
        }
        let wire = protobuf::rt::WireType::new(tag & 7)
            .ok_or_else(|| format!("it does not decode: wire type {}", tag & 7))?;
        input
            .skip_field(wire)
            .map_err(|e| format!("it does not decode: {e}"))?;
    }
}

/// The guest agent of one sandbox: its calls, each checked, and its death.
pub struct Agent {
    state: Arc<State>,
}

impl Agent {
    /// The agent behind `stream` (QEMU's socket), judged by `limits`.
    pub fn new<S>(stream: S, limits: Limits) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static,
    {
        let (dead, _) = watch::channel(None);
        let state = Arc::new(State {
            client: Mutex::new(None),
            dead,
            strikes: Mutex::new(VecDeque::new()),
            limits,
        });
        let guarded = Guarded {
            inner: stream,
            state: Arc::downgrade(&state),
            incoming: Frames::default(),
            outgoing: Frames::default(),
            requests: 0,
            answers: 0,
            last_stream: 0,
        };
        let socket = ttrpc::r#async::transport::Socket::new(guarded);
        *lock(&state.client) = Some(ttrpc::r#async::Client::new(socket));
        Self { state }
    }

    /// What it is judged by.
    pub fn limits(&self) -> Limits {
        self.state.limits
    }

    /// Declares the agent dead: every pending call and every later one fails with `reason`,
    /// and the connection is closed. The first reason stays; whether this was it.
    pub fn declare_dead(&self, reason: impl Into<String>) -> bool {
        self.state.declare_dead(reason.into())
    }

    /// Resolves once it is dead, with why.
    pub async fn died(&self) -> String {
        self.state.died().await
    }

    /// Counts a protocol error found in an answer (`what`) and returns it as the call's error.
    pub fn protocol_error(&self, what: String) -> CallError {
        self.state.strike(what)
    }

    /// Calls `method` with `req`; an answer over `limit` bytes or refused by `check` (before it
    /// is decoded) is a protocol error.
    async fn call_checked<Q: Message, R: Message>(
        &self,
        method: &'static str,
        ctx: Context,
        req: &Q,
        limit: usize,
        check: impl FnOnce(&[u8]) -> std::result::Result<(), String>,
    ) -> CallResult<R> {
        let state = &self.state;
        let client = lock(&state.client).clone();
        let Some(client) = client else {
            return Err(CallError::Dead(state.reason().unwrap_or_default()));
        };
        let payload = req
            .write_to_bytes()
            .map_err(|e| CallError::Request(format!("encode {method}: {e}")))?;
        if payload.len() > REQUEST_LIMIT {
            return Err(CallError::Request(format!(
                "{method}: a request of {} bytes, over the cap of {REQUEST_LIMIT}",
                payload.len()
            )));
        }
        let request = ttrpc::Request {
            service: SERVICE.into(),
            method: method.into(),
            payload,
            timeout_nano: ctx.timeout_nano,
            ..Default::default()
        };
        // An answer that came before the agent's death is still the answer.
        let reply = tokio::select! {
            biased;
            reply = client.request(request) => reply,
            reason = state.died() => return Err(CallError::Dead(reason)),
        };
        drop(client);
        let reply = reply.map_err(|e| state.failed(method, e))?;
        let payload = reply.payload;
        if payload.len() > limit {
            return Err(state.strike(format!(
                "{method}: an answer of {} bytes, over its cap of {limit}",
                payload.len()
            )));
        }
        check(&payload).map_err(|what| state.strike(format!("{method}: {what}")))?;
        R::parse_from_bytes(&payload)
            .map_err(|e| state.strike(format!("{method}: an answer that does not decode: {e}")))
    }

    async fn call<Q: Message, R: Message>(
        &self,
        method: &'static str,
        ctx: Context,
        req: &Q,
        limit: usize,
    ) -> CallResult<R> {
        self.call_checked(method, ctx, req, limit, |_| Ok(())).await
    }

    /// A read's answer, checked: data of at most `max` bytes, or the end (and nothing else).
    async fn read<Q: Message>(
        &self,
        method: &'static str,
        ctx: Context,
        req: &Q,
        max: u32,
    ) -> CallResult<api::ReadStreamResponse> {
        let limit = max as usize + READ_OVERHEAD;
        let reply: api::ReadStreamResponse = self.call(method, ctx, req, limit).await?;
        let n = reply.data.len();
        let wrong = if n > max as usize {
            format!("{n} bytes for a read of at most {max}")
        } else if reply.eof && n > 0 {
            format!("{n} bytes with the end of the stream")
        } else if !reply.eof && n == 0 {
            "no data, and not the end of the stream".into()
        } else {
            return Ok(reply);
        };
        Err(self.protocol_error(format!("{method}: {wrong}")))
    }

    /// ReadStdout, checked as [`Agent::read`].
    pub async fn read_stdout(
        &self,
        ctx: Context,
        req: &api::ReadStreamRequest,
    ) -> CallResult<api::ReadStreamResponse> {
        self.read("ReadStdout", ctx, req, req.max_bytes).await
    }

    /// ReadStderr, checked as [`Agent::read`].
    pub async fn read_stderr(
        &self,
        ctx: Context,
        req: &api::ReadStreamRequest,
    ) -> CallResult<api::ReadStreamResponse> {
        self.read("ReadStderr", ctx, req, req.max_bytes).await
    }

    /// ReadPort, checked as [`Agent::read`].
    pub async fn read_port(
        &self,
        ctx: Context,
        req: &api::ReadPortRequest,
    ) -> CallResult<api::ReadStreamResponse> {
        self.read("ReadPort", ctx, req, req.max_bytes).await
    }

    /// WaitProcess: an exit status is 0 to 255.
    pub async fn wait_process(
        &self,
        ctx: Context,
        req: &api::ProcessRequest,
    ) -> CallResult<api::WaitProcessResponse> {
        let reply: api::WaitProcessResponse =
            self.call("WaitProcess", ctx, req, SMALL_LIMIT).await?;
        if reply.status > 255 {
            return Err(self.protocol_error(format!(
                "WaitProcess: exit status {}, out of 0 to 255",
                reply.status
            )));
        }
        Ok(reply)
    }

    /// ListProcesses: at most [`MAX_PROCESSES`] entries, counted before they are decoded.
    pub async fn list_processes(
        &self,
        ctx: Context,
        req: &api::ContainerRequest,
    ) -> CallResult<api::ListProcessesResponse> {
        self.call_checked("ListProcesses", ctx, req, PROCESSES_LIMIT, |payload| {
            count_field(payload, 1, MAX_PROCESSES).map(drop)
        })
        .await
    }
}

/// Calls whose answers have only a cap.
macro_rules! capped_calls {
    ($($name:ident: $method:literal ($req:ty) -> $reply:ty, $limit:expr;)*) => {
        impl Agent {
            $(
                #[doc = concat!("The agent's ", $method, ", its answer capped.")]
                pub async fn $name(&self, ctx: Context, req: &$req) -> CallResult<$reply> {
                    self.call($method, ctx, req, $limit).await
                }
            )*
        }
    };
}

capped_calls! {
    create_container: "CreateContainer" (api::CreateContainerRequest) -> api::ProcessStarted, SMALL_LIMIT;
    start_container: "StartContainer" (api::ContainerRequest) -> api::Empty, SMALL_LIMIT;
    remove_container: "RemoveContainer" (api::ContainerRequest) -> api::Empty, SMALL_LIMIT;
    exec_process: "ExecProcess" (api::ExecProcessRequest) -> api::ProcessStarted, SMALL_LIMIT;
    signal_process: "SignalProcess" (api::SignalProcessRequest) -> api::Empty, SMALL_LIMIT;
    remove_process: "RemoveProcess" (api::ProcessRequest) -> api::Empty, SMALL_LIMIT;
    write_stdin: "WriteStdin" (api::WriteStreamRequest) -> api::WriteStreamResponse, SMALL_LIMIT;
    close_stdin: "CloseStdin" (api::ProcessRequest) -> api::Empty, SMALL_LIMIT;
    resize_terminal: "ResizeTerminal" (api::ResizeTerminalRequest) -> api::Empty, SMALL_LIMIT;
    pause_container: "PauseContainer" (api::ContainerRequest) -> api::Empty, SMALL_LIMIT;
    resume_container: "ResumeContainer" (api::ContainerRequest) -> api::Empty, SMALL_LIMIT;
    container_stats: "ContainerStats" (api::ContainerRequest) -> api::ContainerStatsResponse, STATS_LIMIT;
    update_container: "UpdateContainer" (api::UpdateContainerRequest) -> api::Empty, SMALL_LIMIT;
    get_oom_event: "GetOomEvent" (api::Empty) -> api::OomEvent, SMALL_LIMIT;
    update_interface: "UpdateInterface" (api::UpdateInterfaceRequest) -> api::Empty, SMALL_LIMIT;
    check: "Check" (api::Empty) -> api::HealthCheckResponse, SMALL_LIMIT;
    destroy_sandbox: "DestroySandbox" (api::Empty) -> api::Empty, SMALL_LIMIT;
    open_port: "OpenPort" (api::OpenPortRequest) -> api::PortStream, SMALL_LIMIT;
    write_port: "WritePort" (api::WritePortRequest) -> api::WriteStreamResponse, SMALL_LIMIT;
    close_port: "ClosePort" (api::PortStream) -> api::Empty, SMALL_LIMIT;
    online_resources: "OnlineResources" (api::OnlineResourcesRequest) -> api::GuestResources, SMALL_LIMIT;
    start_sandbox: "StartSandbox" (api::StartSandboxRequest) -> api::Empty, SMALL_LIMIT;
}

/// Connects to the agent behind `socket` once it answers its health check, giving up at
/// `deadline` or when `gone` says the VM went away.
pub async fn connect(
    socket: &Path,
    deadline: Instant,
    mut gone: impl FnMut() -> Option<String>,
) -> Result<Agent> {
    // One connection, asked again until the agent answers: a request QEMU already passed to
    // the guest is answered on the connection it came from. (A new connection for each
    // attempt got the answer to an earlier attempt's request, an answer to nothing.)
    let mut agent: Option<Agent> = None;
    loop {
        if agent.is_none() {
            agent = tokio::net::UnixStream::connect(socket)
                .await
                .ok()
                .map(|stream| Agent::new(stream, Limits::default()));
        }
        if let Some(connected) = &agent {
            let check = ttrpc::context::with_timeout(CONNECT_CHECK_TIMEOUT.as_nanos() as i64);
            // Bounded as a whole: a QEMU that dies between accepting and answering must not
            // leave an attempt waiting on a connection nobody serves.
            let empty = api::Empty::default();
            let asked = connected.check(check, &empty);
            match tokio::time::timeout(CONNECT_CHECK_TIMEOUT * 2, asked).await {
                Ok(Ok(reply)) if reply.serving => {
                    return Ok(agent.take().expect("the connection just asked"))
                }
                // Not answered yet: ask again on the same connection.
                Ok(Err(CallError::Timeout(_))) | Err(_) => {}
                // A connection that failed or broke the protocol: a new one.
                Ok(_) => agent = None,
            }
        }
        if let Some(reason) = gone() {
            return Err(Error::Unavailable(reason));
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout(format!(
                "the guest agent did not answer on {}",
                socket.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The backend error of a failed agent call `op` about `id`.
pub fn error(op: &'static str, id: &str, e: CallError) -> Error {
    match e {
        CallError::Status { code, message } => match code {
            ttrpc::Code::NOT_FOUND => Error::NotFound(message),
            ttrpc::Code::ALREADY_EXISTS => Error::AlreadyExists(message),
            ttrpc::Code::FAILED_PRECONDITION => Error::NotRunning(message),
            ttrpc::Code::UNAVAILABLE => Error::Unavailable(message),
            ttrpc::Code::DEADLINE_EXCEEDED => Error::Timeout(format!("{op} {id}: {message}")),
            ttrpc::Code::INVALID_ARGUMENT => Error::Unsupported(format!("{op} {id}: {message}")),
            _ => Error::Runtime {
                op,
                id: id.to_string(),
                message,
            },
        },
        CallError::Timeout(_) => Error::Timeout(format!("{op} {id}: {e}")),
        CallError::Protocol(_) | CallError::Dead(_) => {
            Error::Unavailable(format!("{op} {id}: {e}"))
        }
        CallError::Request(message) => Error::Runtime {
            op,
            id: id.to_string(),
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_codes_come_back_as_the_same_backend_errors() {
        let status = |code| CallError::Status {
            code,
            message: "container c1".into(),
        };
        for code in [
            ttrpc::Code::NOT_FOUND,
            ttrpc::Code::ALREADY_EXISTS,
            ttrpc::Code::FAILED_PRECONDITION,
            ttrpc::Code::UNAVAILABLE,
            ttrpc::Code::DEADLINE_EXCEEDED,
            ttrpc::Code::INVALID_ARGUMENT,
            ttrpc::Code::UNKNOWN,
        ] {
            assert_eq!(error("start", "c1", status(code)).code(), code);
        }
        let dead = error("start", "c1", CallError::Dead("QEMU exited (1)".into()));
        assert!(matches!(dead, Error::Unavailable(_)), "{dead}");
        assert!(dead.to_string().contains("QEMU exited (1)"), "{dead}");
        let broken = error("start", "c1", CallError::Protocol("garbage".into()));
        assert!(matches!(broken, Error::Unavailable(_)), "{broken}");
        let late = error("start", "c1", CallError::Timeout("StartContainer"));
        assert!(matches!(late, Error::Timeout(_)), "{late}");
    }

    #[test]
    fn long_messages_from_the_guest_are_cut() {
        let long = "é".repeat(MESSAGE_LIMIT);
        let cut = bounded(&long);
        assert!(cut.len() < MESSAGE_LIMIT + 64, "{}", cut.len());
        assert!(cut.ends_with(&format!("... ({} more bytes)", long.len() - MESSAGE_LIMIT)));
        assert_eq!(bounded("short"), "short");
        let id = "x".repeat(1000);
        assert_eq!(shown(&id), format!("{:?}...", "x".repeat(80)));
        assert_eq!(shown("c1\n"), "\"c1\\n\"");
    }

    #[test]
    fn frames_are_cut_from_their_headers_however_the_bytes_come() {
        let mut wire = Vec::new();
        for (stream, body) in [(1u32, 3usize), (3, 0), (5, 20)] {
            let header: Vec<u8> = MessageHeader::new_response(stream, body as u32).into();
            wire.extend(header);
            wire.extend(vec![0xaa; body]);
        }
        for step in [1, 2, 7, 10, 64] {
            let mut frames = Frames::default();
            let mut seen = Vec::new();
            for chunk in wire.chunks(step) {
                frames
                    .feed(chunk, |h| {
                        seen.push((h.stream_id, h.length));
                        Ok(())
                    })
                    .unwrap();
            }
            assert_eq!(seen, [(1, 3), (3, 0), (5, 20)], "in chunks of {step}");
            assert!(!frames.partial());
        }
    }

    #[test]
    fn only_answers_to_open_streams_within_the_cap_pass() {
        let ok = MessageHeader::new_response(3, 100);
        let mut answers = 0;
        assert_eq!(check_answer(ok, 2, &mut answers, 3), Ok(()));
        let cases = [
            (
                MessageHeader::new_request(3, 1),
                2,
                3,
                "a frame of type 0x1",
            ),
            (MessageHeader::new_data(3, 1), 2, 3, "a frame of type 0x3"),
            (
                MessageHeader::new_response(3, FRAME_LIMIT as u32 + 1),
                2,
                3,
                "over the cap",
            ),
            (MessageHeader::new_response(5, 1), 2, 3, "never opened"),
            (MessageHeader::new_response(2, 1), 2, 3, "never opened"),
            (
                MessageHeader::new_response(1, 1),
                0,
                3,
                "more answers (1) than requests (0)",
            ),
        ];
        for (header, requests, last, expected) in cases {
            let mut answers = 0;
            let refused = check_answer(header, requests, &mut answers, last).unwrap_err();
            assert!(refused.contains(expected), "{refused}");
        }
    }

    #[test]
    fn a_process_list_is_counted_without_decoding_it() {
        let list = |n: usize| {
            api::ListProcessesResponse {
                processes: (0..n)
                    .map(|pid| api::ProcessInfo {
                        pid: pid as u32,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }
            .write_to_bytes()
            .unwrap()
        };
        assert_eq!(count_field(&list(3), 1, 10), Ok(3));
        assert_eq!(count_field(&list(0), 1, 10), Ok(0));
        assert_eq!(
            count_field(&list(11), 1, 10),
            Err("more than 10 entries".into())
        );
        let truncated = &list(3)[..5];
        assert!(count_field(truncated, 1, 10)
            .unwrap_err()
            .contains("does not decode"));
    }
}
