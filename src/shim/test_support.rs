//! containerd's event service for unit tests: a ttrpc server on a unix socket that records
//! the events it is sent.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use containerd_shim_protos::{
    api::Empty,
    shim::{event::Envelope, events::ForwardRequest},
    shim_async::{create_events, Events},
    ttrpc::{
        self,
        r#async::{transport::Listener, Server, TtrpcContext},
    },
};

/// A fake containerd recording every event envelope, in arrival order.
#[derive(Clone, Default)]
pub struct Containerd(Arc<Mutex<Vec<Envelope>>>);

#[async_trait]
impl Events for Containerd {
    async fn forward(&self, _ctx: &TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
        self.0.lock().unwrap().push(req.envelope().clone());
        Ok(Empty::new())
    }
}

impl Containerd {
    /// Serves at `path` until the returned server is shut down or dropped.
    pub async fn serve(&self, path: &Path) -> Server {
        let _ = std::fs::remove_file(path);
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        let mut server = Server::new()
            .add_listener(Listener::try_from(listener).unwrap())
            .register_service(create_events(Arc::new(self.clone())));
        server.start().await.unwrap();
        server
    }

    /// The events received so far.
    pub fn received(&self) -> Vec<Envelope> {
        self.0.lock().unwrap().clone()
    }

    /// The topics received so far.
    pub fn topics(&self) -> Vec<String> {
        self.received()
            .iter()
            .map(|e| e.topic().to_string())
            .collect()
    }

    /// Waits (up to 5 s) until `count` events arrived; returns what arrived.
    pub async fn wait_for(&self, count: usize) -> Vec<Envelope> {
        for _ in 0..500 {
            if self.received().len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.received()
    }
}
