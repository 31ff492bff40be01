//! Errors of the configuration file.

use std::path::PathBuf;

/// Why a configuration cannot be used. Every message is one line naming the file (when there is
/// one) and the key, with the accepted values where there is a fixed set.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type or name.
    #[error("{}:{line}: {key}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending text (0: unknown).
        line: usize,
        /// The dotted key (`runtime.sandbox_backend`), as far as it can be told.
        key: String,
        /// What is wrong, with the accepted values.
        message: String,
    },
    /// A value parses but breaks a rule.
    #[error("{key}: {message}")]
    Invalid {
        /// The dotted key (`hypervisor.qemu.default_memory`).
        key: String,
        /// What is wrong, with the accepted values.
        message: String,
    },
    /// A value of a file breaks a rule.
    #[error("{}: {key}: {message}", path.display())]
    InvalidInFile {
        /// The file.
        path: PathBuf,
        /// The dotted key.
        key: String,
        /// What is wrong, with the accepted values.
        message: String,
    },
}

impl Error {
    /// An [`Error::Invalid`].
    pub(crate) fn invalid(key: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// Attaches the file to an [`Error::Invalid`]; other errors already name it.
    pub(crate) fn in_file(self, path: PathBuf) -> Self {
        match self {
            Self::Invalid { key, message } => Self::InvalidInFile { path, key, message },
            other => other,
        }
    }
}
