//! The backend against a fake agent that misbehaves: a ttrpc server in the test answering
//! too much or the wrong thing, or a raw socket speaking broken ttrpc or nothing at all. Each
//! test asserts failed calls with clear errors, nothing buffered past the caps, and (where
//! the guest keeps at it) the sandbox's death reported within a bounded time, never a hang.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use async_trait::async_trait;
use protobuf::Message;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
    sync::{mpsc::UnboundedReceiver, oneshot},
    time::timeout,
};
use ttrpc::{proto::MESSAGE_HEADER_LENGTH, r#async::TtrpcContext, MessageHeader};

use super::{
    agent::{self, Agent, CallError, Limits, FRAME_LIMIT, MAX_PROCESSES, STATS_LIMIT},
    lock,
    watchers::{LOST_STATUS, OOM_COALESCE},
    VmSandbox,
};
use crate::{
    protos::{agent as api, agent_ttrpc},
    sandbox::{Error, Event, Sandbox, StdioWanted},
};

/// How long anything a test waits for may take: far over what it needs, so that a slow host
/// does not fail it, and a hang does.
const PATIENCE: Duration = Duration::from_secs(10);

/// Health checks too rare to matter, and three protocol errors make the sandbox dead.
fn calm() -> Limits {
    Limits {
        health_interval: Duration::from_secs(3600),
        health_timeout: Duration::from_secs(3600),
        health_misses: 2,
        strikes: 3,
        strike_window: Duration::from_secs(60),
    }
}

/// Health checks every 50 ms, each allowed 200 ms.
fn watchful() -> Limits {
    Limits {
        health_interval: Duration::from_millis(50),
        health_timeout: Duration::from_millis(200),
        ..calm()
    }
}

/// A backend in a temporary directory.
fn backend() -> (tempfile::TempDir, VmSandbox, UnboundedReceiver<Event>) {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = VmSandbox::new(&dir.path().join("state"), None);
    let events = sandbox.events().unwrap();
    (dir, sandbox, events)
}

/// Gives `sandbox` `agent` as if its VM had booted, with its watchers; the sender stands for
/// QEMU's exit.
fn attach(sandbox: &VmSandbox, agent: Agent) -> (Arc<Agent>, oneshot::Sender<i32>) {
    let agent = Arc::new(agent);
    let (qemu_exit, exited) = oneshot::channel();
    sandbox.watch(agent.clone(), exited);
    *lock(&sandbox.client) = Some(agent.clone());
    (agent, qemu_exit)
}

/// The next event, within [`PATIENCE`].
async fn next_event(events: &mut UnboundedReceiver<Event>) -> Event {
    timeout(PATIENCE, events.recv())
        .await
        .expect("an event in time")
        .expect("the events go on")
}

/// Waits for the sandbox's death, within [`PATIENCE`]; its reason. Events before it must not
/// be OOM events.
async fn died(events: &mut UnboundedReceiver<Event>) -> String {
    loop {
        match next_event(events).await {
            Event::Died { reason } => return reason,
            Event::Oom { container_id } => panic!("an OOM event for {container_id}"),
            Event::Exit(_) => {}
        }
    }
}

/// What the fake ttrpc agent answers.
#[derive(Default)]
struct Behaviour {
    /// ReadStdout answers this many bytes at once (none: it never answers).
    stdout: Option<usize>,
    /// WaitProcess answers this status and time at once (none: never).
    exit: Option<(u32, i64)>,
    /// ListProcesses answers this many processes, the first ones with these exec ids.
    processes: usize,
    exec_ids: Vec<String>,
    /// ContainerStats answers these bytes as cgroup v2 metrics.
    stats: Vec<u8>,
    /// GetOomEvent answers this container at once, every time (none: never).
    oom: Option<String>,
}

/// A ttrpc agent answering as its [`Behaviour`] says.
#[derive(Default)]
struct Fake {
    behaviour: Mutex<Behaviour>,
    oom_events: AtomicUsize,
}

impl Fake {
    fn with(change: impl FnOnce(&mut Behaviour)) -> Arc<Self> {
        let fake = Arc::new(Fake::default());
        change(&mut lock(&fake.behaviour));
        fake
    }
}

#[async_trait]
impl agent_ttrpc::Agent for Fake {
    async fn check(
        &self,
        _: &TtrpcContext,
        _: api::Empty,
    ) -> ttrpc::Result<api::HealthCheckResponse> {
        Ok(api::HealthCheckResponse {
            serving: true,
            ..Default::default()
        })
    }

    async fn exec_process(
        &self,
        _: &TtrpcContext,
        _: api::ExecProcessRequest,
    ) -> ttrpc::Result<api::ProcessStarted> {
        Ok(api::ProcessStarted {
            pid: 4242,
            ..Default::default()
        })
    }

    async fn read_stdout(
        &self,
        _: &TtrpcContext,
        _: api::ReadStreamRequest,
    ) -> ttrpc::Result<api::ReadStreamResponse> {
        let Some(size) = lock(&self.behaviour).stdout else {
            return std::future::pending().await;
        };
        Ok(api::ReadStreamResponse {
            data: vec![b'x'; size],
            ..Default::default()
        })
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        _: api::ProcessRequest,
    ) -> ttrpc::Result<api::WaitProcessResponse> {
        let Some((status, exited_at_ns)) = lock(&self.behaviour).exit else {
            return std::future::pending().await;
        };
        Ok(api::WaitProcessResponse {
            status,
            exited_at_ns,
            ..Default::default()
        })
    }

    async fn list_processes(
        &self,
        _: &TtrpcContext,
        _: api::ContainerRequest,
    ) -> ttrpc::Result<api::ListProcessesResponse> {
        let behaviour = lock(&self.behaviour);
        let processes = (0..behaviour.processes)
            .map(|i| api::ProcessInfo {
                pid: i as u32 + 1,
                exec_id: behaviour.exec_ids.get(i).cloned().unwrap_or_default(),
                ..Default::default()
            })
            .collect();
        Ok(api::ListProcessesResponse {
            processes,
            ..Default::default()
        })
    }

    async fn container_stats(
        &self,
        _: &TtrpcContext,
        _: api::ContainerRequest,
    ) -> ttrpc::Result<api::ContainerStatsResponse> {
        let stats = lock(&self.behaviour).stats.clone();
        Ok(api::ContainerStatsResponse {
            metrics: Some(api::container_stats_response::Metrics::CgroupV2(stats)),
            ..Default::default()
        })
    }

    async fn get_oom_event(&self, _: &TtrpcContext, _: api::Empty) -> ttrpc::Result<api::OomEvent> {
        let Some(container_id) = lock(&self.behaviour).oom.clone() else {
            return std::future::pending().await;
        };
        self.oom_events.fetch_add(1, Ordering::SeqCst);
        Ok(api::OomEvent {
            container_id,
            ..Default::default()
        })
    }
}

/// Serves `fake` on a socket in `dir`; the server and the socket.
async fn serve(fake: Arc<Fake>, dir: &Path) -> (ttrpc::r#async::Server, PathBuf) {
    let socket = dir.join("agent.sock");
    let mut server = ttrpc::r#async::Server::new()
        .bind(&format!("unix://{}", socket.display()))
        .unwrap()
        .register_service(agent_ttrpc::create_agent(fake));
    server.start().await.unwrap();
    (server, socket)
}

/// The backend's agent connected to the fake on `socket`.
async fn connect(socket: &Path, limits: Limits) -> Agent {
    Agent::new(UnixStream::connect(socket).await.unwrap(), limits)
}

/// Reads one frame the shim sent: its header and body.
async fn read_frame(stream: &mut UnixStream) -> Option<(MessageHeader, Vec<u8>)> {
    let mut header = [0; MESSAGE_HEADER_LENGTH];
    stream.read_exact(&mut header).await.ok()?;
    let header = MessageHeader::from(&header);
    let mut body = vec![0; header.length as usize];
    stream.read_exact(&mut body).await.ok()?;
    Some((header, body))
}

/// Writes a frame.
async fn write_frame(stream: &mut UnixStream, header: MessageHeader, body: &[u8]) {
    let header: Vec<u8> = header.into();
    let _ = stream.write_all(&header).await;
    let _ = stream.write_all(body).await;
}

/// A well-formed answer carrying `reply`, on `stream`.
fn answer(reply: &impl Message) -> Vec<u8> {
    ttrpc::Response {
        payload: reply.write_to_bytes().unwrap(),
        ..Default::default()
    }
    .write_to_bytes()
    .unwrap()
}

/// Reads whatever the shim sends and never answers.
fn silent(mut guest: UnixStream) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut sink = [0; 4096];
        while matches!(guest.read(&mut sink).await, Ok(n) if n > 0) {}
        // Held open: the shim must not wait for this end to close.
        std::future::pending::<()>().await;
    })
}

fn read_request(max_bytes: u32) -> api::ReadStreamRequest {
    api::ReadStreamRequest {
        container_id: "c1".into(),
        max_bytes,
        ..Default::default()
    }
}

/// A stdout read that fails in time; its error.
async fn failed_read(agent: &Agent) -> CallError {
    let req = read_request(64 << 10);
    timeout(PATIENCE, agent.read_stdout(agent::no_deadline(), &req))
        .await
        .expect("the read ends")
        .expect_err("the read fails")
}

#[tokio::test]
async fn garbage_fails_the_call_and_the_sandbox_dies() {
    let (_dir, sandbox, mut events) = backend();
    let (host, mut guest) = UnixStream::pair().unwrap();
    attach(&sandbox, Agent::new(host, calm()));
    tokio::spawn(async move {
        let _ = read_frame(&mut guest).await;
        // A fixed pseudo-random sequence: whatever it makes of a frame header is refused.
        let mut x: u32 = 0x9e37_79b9;
        let garbage: Vec<u8> = (0..64 << 10)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let _ = guest.write_all(&garbage).await;
        std::future::pending::<()>().await;
    });
    let killed = timeout(PATIENCE, sandbox.kill("c1", "", 9, false))
        .await
        .expect("the call ends");
    let error = killed.expect_err("the call fails");
    assert!(matches!(error, Error::Unavailable(_)), "{error}");
    let text = error.to_string();
    assert!(
        text.starts_with("sandbox unavailable: kill c1: the sandbox's agent is dead: "),
        "{text}"
    );
    let reason = died(&mut events).await;
    assert!(reason.starts_with("the guest agent failed: "), "{reason}");
    // Once dead, a call fails at once.
    let since = Instant::now();
    let error = sandbox
        .pause("c1")
        .await
        .expect_err("a call to a dead agent fails");
    assert!(matches!(error, Error::Unavailable(_)), "{error}");
    assert!(since.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn an_answer_over_the_frame_cap_is_refused_from_its_header() {
    let (_dir, sandbox, mut events) = backend();
    let (host, mut guest) = UnixStream::pair().unwrap();
    let (agent, _qemu) = attach(&sandbox, Agent::new(host, calm()));
    tokio::spawn(async move {
        let (request, _) = read_frame(&mut guest).await.unwrap();
        // Under ttrpc's own 4 MiB: without the shim's cap ttrpc would allocate it all and
        // wait for the rest, which never comes, and the read has no deadline.
        let huge = MessageHeader::new_response(request.stream_id, 3 << 20);
        write_frame(&mut guest, huge, &[0; 100]).await;
        std::future::pending::<()>().await;
    });
    let error = failed_read(&agent).await;
    let CallError::Dead(reason) = &error else {
        panic!("{error:?}")
    };
    assert_eq!(
        reason,
        &format!(
            "an answer of {} bytes, over the cap of {FRAME_LIMIT}",
            3 << 20
        )
    );
    assert!(died(&mut events).await.contains("over the cap"));
}

#[tokio::test]
async fn a_flood_of_answers_nobody_asked_for_kills_the_agent() {
    // No watchers: the check is the one request.
    let (host, mut guest) = UnixStream::pair().unwrap();
    let agent = Agent::new(host, calm());
    tokio::spawn(async move {
        let (request, _) = read_frame(&mut guest).await.unwrap();
        let healthy = answer(&api::HealthCheckResponse {
            serving: true,
            ..Default::default()
        });
        for _ in 0..10_000 {
            let header = MessageHeader::new_response(request.stream_id, healthy.len() as u32);
            write_frame(&mut guest, header, &healthy).await;
        }
        std::future::pending::<()>().await;
    });
    let checked = timeout(PATIENCE, agent.check(agent::ctx(), &api::Empty::default()))
        .await
        .expect("the check ends");
    assert!(checked.expect("the first answer is the check's").serving);
    let reason = timeout(PATIENCE, agent.died())
        .await
        .expect("the agent dies");
    assert_eq!(reason, "more answers (2) than requests (1)");
    let later = agent.check(agent::ctx(), &api::Empty::default()).await;
    assert_eq!(later.unwrap_err(), CallError::Dead(reason));
}

#[tokio::test]
async fn a_read_longer_than_asked_is_refused_and_none_of_it_delivered() {
    let (dir, sandbox, mut events) = backend();
    let fake = Fake::with(|b| b.stdout = Some(128 << 10));
    let (_server, socket) = serve(fake, dir.path()).await;
    let (agent, _qemu) = attach(&sandbox, connect(&socket, calm()).await);
    let stdio = StdioWanted {
        stdout: true,
        ..Default::default()
    };
    let started = sandbox
        .exec("c1", "e1", &Default::default(), stdio)
        .await
        .unwrap();
    assert_eq!(
        started.pid,
        std::process::id(),
        "guest pids are never host pids"
    );
    // The relay asked for 64 KiB, got 128: the stream ends with nothing of it.
    let mut stdout = started.io.stdout.unwrap();
    let mut relayed = Vec::new();
    timeout(PATIENCE, stdout.read_to_end(&mut relayed))
        .await
        .expect("the output ends")
        .unwrap();
    assert!(relayed.is_empty(), "{} bytes relayed", relayed.len());
    let error = failed_read(&agent).await;
    assert_eq!(
        error,
        CallError::Protocol(format!(
            "ReadStdout: an answer of {} bytes, over its cap of {}",
            (128 << 10) + 4,
            (64 << 10) + 16
        ))
    );
    // The third protocol error (calm() allows three) is the end of it.
    assert!(matches!(failed_read(&agent).await, CallError::Protocol(_)));
    assert!(died(&mut events).await.contains("3 protocol errors within"));
    assert!(matches!(failed_read(&agent).await, CallError::Dead(_)));
}

#[tokio::test]
async fn reads_that_say_nothing_or_too_much_are_refused() {
    let (dir, _sandbox, _events) = backend();
    let fake = Fake::with(|b| b.stdout = Some(10));
    let (_server, socket) = serve(fake.clone(), dir.path()).await;
    let agent = connect(&socket, calm()).await;
    let read = |max| {
        let agent = &agent;
        async move {
            let req = read_request(max);
            agent.read_stdout(agent::ctx(), &req).await
        }
    };
    assert_eq!(read(10).await.unwrap().data.len(), 10);
    assert_eq!(
        read(4).await.unwrap_err(),
        CallError::Protocol("ReadStdout: 10 bytes for a read of at most 4".into())
    );
    lock(&fake.behaviour).stdout = Some(0);
    assert_eq!(
        read(4).await.unwrap_err(),
        CallError::Protocol("ReadStdout: no data, and not the end of the stream".into())
    );
}

#[tokio::test]
async fn a_process_list_over_the_cap_is_refused_before_it_is_decoded() {
    let (dir, sandbox, _events) = backend();
    let fake = Fake::with(|b| b.processes = MAX_PROCESSES + 1);
    let (_server, socket) = serve(fake.clone(), dir.path()).await;
    attach(&sandbox, connect(&socket, calm()).await);
    let error = sandbox.pids("c1").await.unwrap_err();
    assert!(matches!(error, Error::Unavailable(_)), "{error}");
    assert!(
        error.to_string().ends_with(&format!(
            "ps c1: the agent broke the protocol: ListProcesses: more than {MAX_PROCESSES} entries"
        )),
        "{error}"
    );
    // An exec id is the guest's word only for an exec the shim started.
    lock(&sandbox.known).add("c1", "e1");
    {
        let mut behaviour = lock(&fake.behaviour);
        behaviour.processes = 3;
        behaviour.exec_ids = vec![String::new(), "e1".into(), "e2".into()];
    }
    let pids = sandbox.pids("c1").await.unwrap();
    let exec_ids: Vec<Option<&str>> = pids.iter().map(|p| p.exec_id.as_deref()).collect();
    assert_eq!(exec_ids, [None, Some("e1"), None]);
}

#[tokio::test]
async fn stats_over_their_cap_or_that_do_not_decode_are_refused() {
    let (dir, sandbox, _events) = backend();
    let fake = Fake::with(|b| b.stats = vec![0xff; 10]);
    let (_server, socket) = serve(fake.clone(), dir.path()).await;
    attach(&sandbox, connect(&socket, calm()).await);
    let error = sandbox.stats("c1").await.unwrap_err().to_string();
    assert!(
        error.contains("ContainerStats: metrics that do not decode"),
        "{error}"
    );
    lock(&fake.behaviour).stats = vec![0; STATS_LIMIT];
    let error = sandbox.stats("c1").await.unwrap_err().to_string();
    assert!(
        error.contains(&format!("over its cap of {STATS_LIMIT}")),
        "{error}"
    );
}

#[tokio::test]
async fn oom_events_for_unknown_containers_are_dropped_and_a_flood_kills_the_sandbox() {
    let (dir, sandbox, mut events) = backend();
    let fake = Fake::with(|b| b.oom = Some("ghost".into()));
    let (_server, socket) = serve(fake.clone(), dir.path()).await;
    lock(&sandbox.known).add("c1", "");
    attach(&sandbox, connect(&socket, calm()).await);
    let reason = died(&mut events).await;
    assert!(
        reason.contains(
            "an OOM event for container \"ghost\", which this sandbox does not have: dropped"
        ),
        "{reason}"
    );
    // The watcher stopped asking once the sandbox was dead.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = fake.oom_events.load(Ordering::SeqCst);
    assert!(asked <= 4, "{asked} OOM events taken");
}

#[tokio::test]
async fn a_flood_of_oom_events_is_reported_once_a_second() {
    let (dir, sandbox, mut events) = backend();
    let fake = Fake::with(|b| b.oom = Some("c1".into()));
    let (_server, socket) = serve(fake.clone(), dir.path()).await;
    lock(&sandbox.known).add("c1", "");
    attach(&sandbox, connect(&socket, calm()).await);
    let watched = OOM_COALESCE * 3 / 2;
    let until = Instant::now() + watched;
    let mut reported = 0;
    while let Ok(event) = tokio::time::timeout_at(until.into(), events.recv()).await {
        match event.unwrap() {
            Event::Oom { container_id } => {
                assert_eq!(container_id, "c1");
                reported += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!((1..=2).contains(&reported), "{reported} reported");
    // Paced: at most one taken every 10 ms, whatever the guest answers.
    let taken = fake.oom_events.load(Ordering::SeqCst);
    assert!(taken <= 160, "{taken} taken in {watched:?}");
}

#[tokio::test]
async fn a_silent_agent_is_declared_dead_by_its_health_checks() {
    let (_dir, sandbox, mut events) = backend();
    let (host, guest) = UnixStream::pair().unwrap();
    let _guest = silent(guest);
    let (agent, _qemu) = attach(&sandbox, Agent::new(host, watchful()));
    let since = Instant::now();
    // A call with the usual 60 s deadline, and a read with none: both end with the sandbox.
    let (killed, read) = tokio::join!(sandbox.kill("c1", "", 9, false), failed_read(&agent));
    let error = killed.unwrap_err().to_string();
    assert!(error.contains("health checks in a row failed"), "{error}");
    assert!(matches!(read, CallError::Dead(_)), "{read:?}");
    let reason = died(&mut events).await;
    assert!(
        reason.starts_with("the guest agent failed: 2 health checks in a row failed"),
        "{reason}"
    );
    assert!(since.elapsed() < PATIENCE, "{:?}", since.elapsed());
}

#[tokio::test]
async fn qemus_exit_fails_what_waits_and_is_the_reason_given() {
    let (_dir, sandbox, mut events) = backend();
    let (host, guest) = UnixStream::pair().unwrap();
    let _guest = silent(guest);
    let (agent, qemu) = attach(&sandbox, Agent::new(host, calm()));
    let read = tokio::spawn(async move { failed_read(&agent).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    qemu.send(9).unwrap();
    assert!(died(&mut events).await.starts_with("QEMU exited (9)"));
    let read = timeout(PATIENCE, read).await.unwrap().unwrap();
    assert!(
        matches!(&read, CallError::Dead(reason) if reason.starts_with("QEMU exited (9)")),
        "{read:?}"
    );
}

#[tokio::test]
async fn a_stopping_sandbox_reports_no_death() {
    let (_dir, sandbox, mut events) = backend();
    let (host, guest) = UnixStream::pair().unwrap();
    drop(guest);
    sandbox
        .stopping
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (agent, _qemu) = attach(&sandbox, Agent::new(host, calm()));
    timeout(PATIENCE, agent.died()).await.unwrap();
    let quiet = timeout(Duration::from_millis(1500), events.recv()).await;
    assert!(quiet.is_err(), "{quiet:?}");
}

#[tokio::test]
async fn exits_are_the_process_asked_in_range_and_in_time() {
    let (dir, sandbox, mut events) = backend();
    let fake = Fake::with(|b| b.exit = Some((4242, 0)));
    let (_server, socket) = serve(fake.clone(), dir.path()).await;
    attach(&sandbox, connect(&socket, calm()).await);
    let before = SystemTime::now();
    sandbox
        .exec("c1", "e1", &Default::default(), StdioWanted::default())
        .await
        .unwrap();
    let Event::Exit(exit) = next_event(&mut events).await else {
        panic!("not an exit")
    };
    assert_eq!(
        (
            exit.container_id.as_str(),
            exit.exec_id.as_str(),
            exit.status
        ),
        ("c1", "e1", LOST_STATUS),
        "an exit status out of range is a lost process"
    );
    assert_eq!(exit.pid, std::process::id());
    // In range, at a time the guest cannot move out of the process's life.
    lock(&fake.behaviour).exit = Some((137, i64::MAX));
    sandbox
        .exec("c1", "e2", &Default::default(), StdioWanted::default())
        .await
        .unwrap();
    let Event::Exit(exit) = next_event(&mut events).await else {
        panic!("not an exit")
    };
    assert_eq!((exit.exec_id.as_str(), exit.status), ("e2", 137));
    assert!(exit.at >= before && exit.at <= SystemTime::now());
}

#[tokio::test]
async fn connecting_to_a_guest_that_accepts_and_stays_silent_gives_up() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let since = Instant::now();
    let connected = timeout(
        PATIENCE,
        agent::connect(&socket, Instant::now() + Duration::from_secs(1), || None),
    )
    .await
    .expect("connect gives up");
    assert!(matches!(connected, Err(Error::Timeout(_))));
    assert!(
        since.elapsed() < Duration::from_secs(4),
        "{:?}",
        since.elapsed()
    );
}
