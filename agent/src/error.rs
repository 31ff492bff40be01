//! Why the agent refuses a request, and the ttrpc status each reason becomes.

use vessel::sandbox;

/// A request the agent does not carry out.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// An id that is empty, too long, or has characters other than `[A-Za-z0-9_.-]`.
    #[error("{field} {value:?}: an id is 1 to 128 of [A-Za-z0-9_.-], not starting with `.`")]
    BadId {
        /// Which id (`container_id`, `exec_id`).
        field: &'static str,
        /// What the request said.
        value: String,
    },
    /// A path that would leave the shared directory.
    #[error("{field} {path:?} is refused: {reason}")]
    Escapes {
        /// The request field.
        field: String,
        /// The path it named.
        path: String,
        /// Why it is refused.
        reason: String,
    },
    /// A path inside the shared directory that is not there.
    #[error("{field} {path:?} is not in the shared directory: {reason}")]
    Missing {
        /// The request field.
        field: String,
        /// The path it named.
        path: String,
        /// What the file system said.
        reason: String,
    },
    /// A JSON document of the request that does not parse.
    #[error("{field}: {message}")]
    Malformed {
        /// The request field.
        field: &'static str,
        /// What is wrong, naming the document's own field.
        message: String,
    },
    /// The backend refused or failed.
    #[error(transparent)]
    Backend(#[from] sandbox::Error),
}

impl From<Refused> for ttrpc::Error {
    fn from(refused: Refused) -> Self {
        let code = match &refused {
            Refused::Backend(e) => e.code(),
            Refused::Missing { .. } => ttrpc::Code::NOT_FOUND,
            _ => ttrpc::Code::INVALID_ARGUMENT,
        };
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, refused.to_string()))
    }
}

/// Checks an id of a request: 1 to 128 characters of `[A-Za-z0-9_.-]`, not starting with a
/// dot (it names files and cgroups in the guest).
pub fn check_id(field: &'static str, value: &str) -> Result<(), Refused> {
    let fits = (1..=128).contains(&value.len())
        && !value.starts_with('.')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if fits {
        Ok(())
    } else {
        Err(Refused::BadId {
            field,
            value: value.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_name_files_safely_pass() {
        for id in ["c1", "pod-1.app_2", &"a".repeat(128)] {
            check_id("container_id", id).unwrap();
        }
    }

    #[test]
    fn ids_that_could_name_other_files_are_refused() {
        for id in ["", ".", "..", "../x", "a/b", "a b", &"a".repeat(129), "é"] {
            let message = check_id("container_id", id).unwrap_err().to_string();
            assert!(message.starts_with("container_id"), "{message}");
        }
    }

    #[test]
    fn each_refusal_has_its_code() {
        let code = |r: Refused| match ttrpc::Error::from(r) {
            ttrpc::Error::RpcStatus(s) => s.code(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            code(check_id("exec_id", "").unwrap_err()),
            ttrpc::Code::INVALID_ARGUMENT
        );
        assert_eq!(
            code(Refused::Backend(sandbox::Error::NotFound("c".into()))),
            ttrpc::Code::NOT_FOUND
        );
        assert_eq!(
            code(Refused::Backend(sandbox::Error::AlreadyExists("c".into()))),
            ttrpc::Code::ALREADY_EXISTS
        );
    }
}
