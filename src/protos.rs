//! The guest agent's API, generated from `protos/agent.proto` at build time: the messages
//! ([`agent`]) and the ttrpc client and server ([`agent_ttrpc`]).

/// Messages of the agent API.
#[allow(missing_docs, unused, nonstandard_style, clippy::all)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent/agent.rs"));
}

/// The agent API's ttrpc service: `AgentClient` and the `Agent` trait a server implements.
#[allow(missing_docs, unused, nonstandard_style, clippy::all)]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent/agent_ttrpc.rs"));
}

/// The protocol's version, which `Version` reports; it changes with incompatible changes.
pub const PROTOCOL_VERSION: u32 = 1;
