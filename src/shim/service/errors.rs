//! ttrpc errors of the Task service, and the one mapping of backend errors to ttrpc codes.

use containerd_shim_protos::ttrpc::{self, Code};

use crate::sandbox;

/// A ttrpc status error.
pub(super) fn status(code: Code, message: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

/// NOT_FOUND.
pub(super) fn not_found(message: String) -> ttrpc::Error {
    status(Code::NOT_FOUND, message)
}

/// INVALID_ARGUMENT.
pub(super) fn invalid_argument(message: String) -> ttrpc::Error {
    status(Code::INVALID_ARGUMENT, message)
}

/// FAILED_PRECONDITION.
pub(super) fn precondition(message: String) -> ttrpc::Error {
    status(Code::FAILED_PRECONDITION, message)
}

/// NOT_FOUND for container `id`.
pub(super) fn container_not_found(id: &str) -> ttrpc::Error {
    not_found(format!("container {id} not found"))
}

/// The ttrpc code containerd understands for a backend error.
pub(super) fn backend(e: sandbox::Error) -> ttrpc::Error {
    status(e.code(), e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_backend_error_kind_has_its_code() {
        let code = |e| match backend(e) {
            ttrpc::Error::RpcStatus(s) => s.code(),
            other => panic!("{other:?}"),
        };
        assert_eq!(code(sandbox::Error::NotFound("x".into())), Code::NOT_FOUND);
        assert_eq!(
            code(sandbox::Error::NotRunning("x".into())),
            Code::FAILED_PRECONDITION
        );
        assert_eq!(
            code(sandbox::Error::AlreadyExists("x".into())),
            Code::ALREADY_EXISTS
        );
        assert_eq!(
            code(sandbox::Error::Unavailable("x".into())),
            Code::UNAVAILABLE
        );
        assert_eq!(
            code(sandbox::Error::Timeout("x".into())),
            Code::DEADLINE_EXCEEDED
        );
    }
}
