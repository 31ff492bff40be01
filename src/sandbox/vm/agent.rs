//! The shim's side of `protos/agent.proto`: connecting to the guest's agent through QEMU's
//! socket, and the agent's errors as typed backend errors.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use super::super::{Error, Result};
use crate::protos::{agent::Empty, agent_ttrpc::AgentClient};

/// How long one health check may take before the next try.
const CHECK_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a call may take: creating a container in a guest under TCG is slow.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A call's deadline.
pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(CALL_TIMEOUT.as_nanos() as i64)
}

/// A call that waits as long as the process it is about runs (a wait, a read).
pub fn no_deadline() -> ttrpc::context::Context {
    ttrpc::context::Context::default()
}

/// Connects to the agent behind `socket` once it answers its health check, giving up at
/// `deadline` or when `gone` says the VM went away.
pub async fn connect(
    socket: &Path,
    deadline: Instant,
    mut gone: impl FnMut() -> Option<String>,
) -> Result<AgentClient> {
    let address = format!("unix://{}", socket.display());
    loop {
        // Bounded as a whole: a QEMU that dies between accepting and answering must not
        // leave an attempt waiting on a connection nobody serves.
        let attempt = async {
            let client = AgentClient::new(ttrpc::r#async::Client::connect(&address).await.ok()?);
            let check = ttrpc::context::with_timeout(CHECK_TIMEOUT.as_nanos() as i64);
            match client.check(check, &Empty::default()).await {
                Ok(reply) if reply.serving => Some(client),
                _ => None,
            }
        };
        if let Ok(Some(client)) = tokio::time::timeout(CHECK_TIMEOUT * 2, attempt).await {
            return Ok(client);
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
pub fn error(op: &'static str, id: &str, e: ttrpc::Error) -> Error {
    let ttrpc::Error::RpcStatus(status) = e else {
        return Error::Unavailable(format!("{op} {id}: the agent connection failed: {e}"));
    };
    let message = status.message().to_string();
    match status.code() {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_codes_come_back_as_the_same_backend_errors() {
        let status = |code| ttrpc::Error::RpcStatus(ttrpc::get_status(code, "container c1"));
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
        let broken = error("start", "c1", ttrpc::Error::LocalClosed);
        assert!(matches!(broken, Error::Unavailable(_)), "{broken}");
    }
}
