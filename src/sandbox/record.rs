//! What a sandbox created, written into its state directory so that the `delete` action can
//! remove it after the sandbox's shim died.

use std::{fs, io, path::Path};

use serde::{Deserialize, Serialize};

use super::{linux, state_dir, vm, Error, Result};

/// The file in a sandbox's state directory holding its [`Record`].
const RECORD_FILE: &str = "sandbox.json";

/// What one sandbox's backend created, in the backend's own terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum Record {
    /// The `linux` backend's record.
    Linux(linux::Record),
    /// The `vm` backend's record.
    Vm(vm::Record),
}

impl Record {
    /// The record in state directory `dir`, if the sandbox wrote one.
    pub fn load(dir: &Path) -> Result<Option<Record>> {
        let path = dir.join(RECORD_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::io(
                    format!("read {}", path.display()),
                    io::Error::new(io::ErrorKind::InvalidData, e),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
        }
    }

    /// Writes the record into state directory `dir`, replacing the previous one at once.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(RECORD_FILE);
        let partial = dir.join(format!("{RECORD_FILE}.new"));
        let bytes = serde_json::to_vec(self).map_err(|e| Error::io("encode record", e.into()))?;
        fs::write(&partial, bytes)
            .and_then(|()| fs::rename(&partial, &path))
            .map_err(|e| Error::io(format!("write {}", path.display()), e))
    }
}

/// Removes what is left of container `container_id` of sandbox `sandbox_id` after their shim
/// died, as the sandbox's record says, and the sandbox's state once its last container is
/// gone. Nothing recorded is nothing to do; running it twice is not an error.
pub async fn cleanup(namespace: &str, sandbox_id: &str, container_id: &str) -> Result<()> {
    let dir = state_dir(namespace, sandbox_id);
    match Record::load(&dir)? {
        None => Ok(()),
        Some(Record::Linux(record)) => linux::cleanup(&dir, record, container_id).await,
        Some(Record::Vm(record)) => vm::cleanup(&dir, record, container_id).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_names_its_backend() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Record::load(dir.path()).unwrap(), None);
        let mut linux = linux::Record::new("/usr/sbin/runc");
        linux.add("c1", Some(dir.path().join("rootfs")));
        let record = Record::Linux(linux);
        record.save(dir.path()).unwrap();
        let text = fs::read_to_string(dir.path().join(RECORD_FILE)).unwrap();
        assert!(text.contains("\"backend\":\"linux\""), "{text}");
        assert_eq!(Record::load(dir.path()).unwrap(), Some(record));
    }

    #[test]
    fn a_broken_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(RECORD_FILE), b"{").unwrap();
        let error = Record::load(dir.path()).unwrap_err().to_string();
        assert!(error.contains(RECORD_FILE), "{error}");
    }
}
