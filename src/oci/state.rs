//! Container states and their OCI names.

use serde::Serialize;

/// The state of a container, as the sandbox tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Created, not started.
    Ready,
    /// Its process runs.
    Running,
    /// Its process exited.
    Stopped,
    /// Frozen.
    Paused,
    /// Not known yet (nothing created).
    Unknown,
}

impl State {
    /// The OCI state name: ready -> `created`, running -> `running`, stopped -> `stopped`,
    /// paused -> `paused`, unknown -> empty.
    pub fn oci_state(&self) -> &'static str {
        match self {
            Self::Ready => "created",
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Paused => "paused",
            Self::Unknown => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_names() {
        assert_eq!(State::Ready.oci_state(), "created");
        assert_eq!(State::Running.oci_state(), "running");
        assert_eq!(State::Stopped.oci_state(), "stopped");
        assert_eq!(State::Paused.oci_state(), "paused");
        assert_eq!(State::Unknown.oci_state(), "");
    }
}
