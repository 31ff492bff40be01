//! Delivers the shim's events to containerd in order, across containerd restarts.
//!
//! Publishing never blocks the Task API: an event is queued (up to [`QUEUE_LIMIT`]) and one
//! task forwards the queue to containerd's ttrpc address, oldest first. When the connection
//! breaks (containerd restarted, upgraded, or is still starting), that task reconnects with a
//! bounded backoff and sends the same event again, so every event arrives, in order, with the
//! time it happened. An outage is logged when it starts, once more if it lasts, and when it
//! ends: never once per retry.

use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use containerd_shim::util::{convert_to_any, timestamp};
use containerd_shim_protos::{
    protobuf::MessageDyn,
    shim::{event::Envelope, events::ForwardRequest},
    shim_async::{Client, EventsClient},
    ttrpc::{self, context},
};
use slog::{error, info, warn, Logger};
use tokio::sync::{mpsc, Notify};

/// Events queued while containerd cannot take them; more are dropped (and counted).
/// An event is a few hundred bytes: the queue stays well under a megabyte.
pub const QUEUE_LIMIT: usize = 4096;

/// First wait before reconnecting; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(50);

/// Longest wait between two attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// How long one Forward may take before the connection counts as broken.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// An outage this long is logged a second time, as an error.
const LONG_OUTAGE: Duration = Duration::from_secs(30);

/// Queues events for containerd; cheap to call from every Task method, cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    namespace: String,
    queue: mpsc::Sender<Envelope>,
    undelivered: Arc<Undelivered>,
    dropped: Arc<AtomicU64>,
    logger: Logger,
}

/// Events queued or being delivered.
#[derive(Default)]
struct Undelivered {
    count: AtomicUsize,
    none: Notify,
}

impl Undelivered {
    fn done(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.none.notify_waiters();
        }
    }
}

impl Publisher {
    /// A publisher for containerd's ttrpc `address` (a path or `unix://` address), with its
    /// delivery task spawned. The connection is made on the first event.
    pub fn start(address: &str, namespace: &str, logger: Logger) -> Self {
        let (queue, pending) = mpsc::channel(QUEUE_LIMIT);
        let undelivered = Arc::new(Undelivered::default());
        tokio::spawn(deliver(
            Link::new(address),
            pending,
            undelivered.clone(),
            logger.new(slog::o!("events_to" => address.to_string())),
        ));
        Self {
            namespace: namespace.to_string(),
            queue,
            undelivered,
            dropped: Arc::default(),
            logger,
        }
    }

    /// Waits until every queued event is delivered, at most `limit` (the shim is exiting).
    pub async fn flush(&self, limit: Duration) {
        let flushed = tokio::time::timeout(limit, async {
            loop {
                let none = self.undelivered.none.notified();
                if self.undelivered.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                none.await;
            }
        })
        .await;
        if flushed.is_err() {
            error!(self.logger, "exiting with events containerd did not take";
                "undelivered" => self.undelivered.count.load(Ordering::Acquire));
        }
    }

    /// Queues `event` under `topic`, stamped with the current time; never waits.
    pub fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let envelope = match envelope(topic, &self.namespace, event) {
            Ok(envelope) => envelope,
            Err(e) => {
                error!(self.logger, "cannot encode event"; "topic" => topic, "error" => %e);
                return;
            }
        };
        self.undelivered.count.fetch_add(1, Ordering::AcqRel);
        if self.queue.try_send(envelope).is_err() {
            self.undelivered.done();
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // The first, then every thousandth: a log line per lost event would flood the log.
            if dropped == 1 || dropped.is_multiple_of(1000) {
                error!(self.logger, "event queue full: containerd takes no events, dropping";
                    "topic" => topic, "queued" => QUEUE_LIMIT, "dropped" => dropped);
            }
        }
    }
}

fn envelope(
    topic: &str,
    namespace: &str,
    event: Box<dyn MessageDyn>,
) -> containerd_shim::Result<Envelope> {
    let mut envelope = Envelope::new();
    envelope.set_topic(topic.to_string());
    envelope.set_namespace(namespace.to_string());
    envelope.set_timestamp(timestamp()?);
    envelope.set_event(convert_to_any(event)?);
    Ok(envelope)
}

/// Why an event did not get through.
enum Failure {
    /// containerd answered with an error: sending it again would get the same answer.
    Refused(ttrpc::Error),
    /// No answer: containerd is away, or the connection broke. Try again.
    Unreachable(ttrpc::Error),
}

/// The connection to containerd's event service, made again whenever it breaks.
struct Link {
    address: String,
    client: Option<EventsClient>,
}

impl Link {
    fn new(address: &str) -> Self {
        let address = if address.contains("://") {
            address.to_string()
        } else {
            format!("unix://{address}")
        };
        Self {
            address,
            client: None,
        }
    }

    async fn forward(&mut self, envelope: &Envelope) -> Result<(), Failure> {
        let client = match &self.client {
            Some(client) => client,
            None => {
                let client = Client::connect(&self.address)
                    .await
                    .map_err(Failure::Unreachable)?;
                self.client.insert(EventsClient::new(client))
            }
        };
        let mut request = ForwardRequest::new();
        request.set_envelope(envelope.clone());
        match client
            .forward(context::with_duration(FORWARD_TIMEOUT), &request)
            .await
        {
            Ok(_) => Ok(()),
            Err(e @ ttrpc::Error::RpcStatus(_)) => Err(Failure::Refused(e)),
            Err(e) => {
                self.client = None;
                Err(Failure::Unreachable(e))
            }
        }
    }
}

/// Forwards queued events one at a time, each until containerd has it.
async fn deliver(
    mut link: Link,
    mut pending: mpsc::Receiver<Envelope>,
    undelivered: Arc<Undelivered>,
    logger: Logger,
) {
    while let Some(envelope) = pending.recv().await {
        let mut outage: Option<Outage> = None;
        let mut backoff = BACKOFF_MIN;
        loop {
            match link.forward(&envelope).await {
                Ok(()) => break,
                Err(Failure::Refused(e)) => {
                    error!(logger, "containerd refused an event"; "topic" => envelope.topic(),
                        "error" => %e);
                    break;
                }
                Err(Failure::Unreachable(e)) => {
                    outage
                        .get_or_insert_with(|| Outage::begin(&logger, &envelope, &e))
                        .persist(&logger, pending.len() + 1);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        undelivered.done();
        if let Some(outage) = outage {
            outage.end(&logger, pending.len());
        }
    }
}

/// A time during which containerd could not be reached.
struct Outage {
    since: Instant,
    attempts: u64,
    reported_long: bool,
}

impl Outage {
    fn begin(logger: &Logger, envelope: &Envelope, e: &ttrpc::Error) -> Self {
        warn!(logger, "cannot deliver events to containerd: queueing them and reconnecting";
            "topic" => envelope.topic(), "error" => %e);
        Self {
            since: Instant::now(),
            attempts: 0,
            reported_long: false,
        }
    }

    fn persist(&mut self, logger: &Logger, queued: usize) {
        self.attempts += 1;
        if !self.reported_long && self.since.elapsed() >= LONG_OUTAGE {
            self.reported_long = true;
            error!(logger, "containerd has taken no events for a long time; still retrying";
                "seconds" => self.since.elapsed().as_secs(), "queued" => queued);
        }
    }

    fn end(self, logger: &Logger, queued: usize) {
        info!(logger, "events reach containerd again";
            "outage_ms" => self.since.elapsed().as_millis() as u64,
            "attempts" => self.attempts, "still_queued" => queued);
    }
}

#[cfg(test)]
mod tests {
    use containerd_shim_protos::{events::task::TaskExit, protobuf::Message};

    use super::*;
    use crate::shim::test_support::Containerd;

    /// The exit statuses of the events `containerd` received.
    fn statuses(containerd: &Containerd) -> Vec<u32> {
        containerd
            .received()
            .iter()
            .map(|e| {
                TaskExit::parse_from_bytes(&e.event().value)
                    .unwrap()
                    .exit_status
            })
            .collect()
    }

    async fn statuses_after(containerd: &Containerd, count: usize) -> Vec<u32> {
        containerd.wait_for(count).await;
        statuses(containerd)
    }

    fn exit(status: u32) -> Box<dyn MessageDyn> {
        Box::new(TaskExit {
            exit_status: status,
            ..Default::default()
        })
    }

    fn logger() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    #[tokio::test]
    async fn events_survive_a_containerd_restart_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock.ttrpc");
        let containerd = Containerd::default();
        let mut server = containerd.serve(&socket).await;
        let publisher = Publisher::start(socket.to_str().unwrap(), "default", logger());
        publisher.publish("/tasks/exit", exit(1));
        assert_eq!(statuses_after(&containerd, 1).await, vec![1]);

        // containerd goes away: events published meanwhile wait, and the Task API does not.
        server.shutdown().await.unwrap();
        drop(server);
        let _ = std::fs::remove_file(&socket);
        let started = Instant::now();
        for status in 2..=20 {
            publisher.publish("/tasks/exit", exit(status));
        }
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "publish waited"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;

        // containerd is back at the same address (a new process): everything arrives there,
        // in order, once.
        let restarted = Containerd::default();
        let _server = restarted.serve(&socket).await;
        assert_eq!(
            statuses_after(&restarted, 19).await,
            (2..=20).collect::<Vec<_>>()
        );
        assert_eq!(statuses(&containerd), vec![1]);
    }

    #[tokio::test]
    async fn flush_waits_for_delivery_and_gives_up_at_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock.ttrpc");
        let containerd = Containerd::default();
        let _server = containerd.serve(&socket).await;
        let publisher = Publisher::start(socket.to_str().unwrap(), "default", logger());
        for status in 0..50 {
            publisher.publish("/tasks/exit", exit(status));
        }
        publisher.flush(Duration::from_secs(5)).await;
        assert_eq!(containerd.received().len(), 50, "flushed before delivery");

        let away = Publisher::start(dir.path().join("gone").to_str().unwrap(), "ns", logger());
        away.publish("/tasks/exit", exit(1));
        let started = Instant::now();
        away.flush(Duration::from_millis(200)).await;
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn events_wait_for_a_containerd_that_is_not_up_yet() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock.ttrpc");
        let publisher = Publisher::start(socket.to_str().unwrap(), "default", logger());
        publisher.publish("/tasks/exit", exit(7));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let containerd = Containerd::default();
        let _server = containerd.serve(&socket).await;
        assert_eq!(statuses_after(&containerd, 1).await, vec![7]);
    }

    #[tokio::test]
    async fn a_full_queue_drops_events_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nobody-listens");
        let publisher = Publisher::start(socket.to_str().unwrap(), "default", logger());
        let started = Instant::now();
        for status in 0..(QUEUE_LIMIT as u32 + 10) {
            publisher.publish("/tasks/exit", exit(status));
        }
        assert!(started.elapsed() < Duration::from_secs(1), "publish waited");
        // The delivery task holds one event while it retries; the rest fill the queue.
        assert!(publisher.dropped.load(Ordering::Relaxed) >= 9);
    }
}
