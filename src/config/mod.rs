//! PLACEHOLDER (lead's compile stub; the config owner replaces this file entirely).
use std::path::Path;
#[derive(Debug, thiserror::Error)]
#[error("config")]
pub struct Error;
#[derive(Debug, Clone, Copy)]
pub enum SandboxBackend { Linux, Vm }
pub struct RuntimeSection { pub sandbox_backend: SandboxBackend, pub oci_runtime: String }
pub struct Config { pub runtime: RuntimeSection }
impl Config {
    pub fn load(_p: Option<&Path>) -> Result<Config, Error> { Ok(Config { runtime: RuntimeSection { sandbox_backend: SandboxBackend::Linux, oci_runtime: "runc".into() } }) }
    pub fn runtime_config(&self) -> Result<crate::oci::RuntimeConfig, Error> { Err(Error) }
}
