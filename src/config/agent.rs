//! `[agent.vessel]`: the in-guest agent.

use serde::Deserialize;

use crate::oci::AgentConfig;

/// The `[agent]` table: one agent, `vessel`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentTable {
    /// `[agent.vessel]`.
    pub vessel: AgentSection,
}

/// `[agent.vessel]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSection {
    /// Kernel modules to load in the guest, each `"name [param=value ...]"`.
    pub kernel_modules: Vec<String>,
    /// Agent tracing.
    pub enable_tracing: bool,
    /// Agent trace mode.
    pub trace_mode: String,
    /// Agent trace type.
    pub trace_type: String,
    /// Container stdio pipe size, bytes (0: the guest default).
    pub container_pipe_size: u32,
    /// Seconds to wait for the agent to answer.
    pub dial_timeout: u32,
}

impl Default for AgentSection {
    fn default() -> Self {
        Self {
            kernel_modules: Vec::new(),
            enable_tracing: false,
            trace_mode: String::new(),
            trace_type: String::new(),
            container_pipe_size: 0,
            dial_timeout: 30,
        }
    }
}

impl AgentSection {
    /// The agent settings of a conversion.
    pub fn agent_config(&self) -> AgentConfig {
        AgentConfig {
            kernel_modules: self.kernel_modules.clone(),
            trace: self.enable_tracing,
            trace_mode: self.trace_mode.clone(),
            trace_type: self.trace_type.clone(),
            container_pipe_size: self.container_pipe_size,
            dial_timeout: self.dial_timeout,
        }
    }
}
