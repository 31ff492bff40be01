//! `[factory]`: VM templating and caching.

use serde::Deserialize;

use super::{Error, QemuSection};
use crate::oci::FactoryConfig;
use crate::oci::SharedFs;

/// `[factory]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FactorySection {
    /// Start VMs from a template.
    pub enable_template: bool,
    /// Where the template lives.
    pub template_path: String,
    /// VMs kept ready in the cache (0: no cache).
    pub vm_cache_number: u32,
    /// Endpoint of the VM cache server.
    pub vm_cache_endpoint: String,
}

impl Default for FactorySection {
    fn default() -> Self {
        Self {
            enable_template: false,
            template_path: "/run/vessel/vm/template".to_owned(),
            vm_cache_number: 0,
            vm_cache_endpoint: "/run/vessel/cache.sock".to_owned(),
        }
    }
}

impl FactorySection {
    /// Refuses what a template cannot hold, and a VM cache, rather than ignore them: a
    /// template's guest memory is a file its clones map copy-on-write, so it cannot be shared
    /// with virtiofsd (virtio-fs), preallocated, on huge pages or in a file of its own. (No
    /// vsock CID is shared: the agent's channel is virtio-serial, `use_vsock` is not used.)
    pub fn check(&self, qemu: &QemuSection) -> Result<(), Error> {
        if self.vm_cache_number > 0 {
            return Err(Error::invalid(
                "factory.vm_cache_number",
                format!(
                    "{}: a VM cache is not supported (accepted: 0); use enable_template = true \
                     to start VMs from a template instead of booting them",
                    self.vm_cache_number
                ),
            ));
        }
        if !self.enable_template {
            return Ok(());
        }
        if self.template_path.is_empty() || !self.template_path.starts_with('/') {
            return Err(Error::invalid(
                "factory.template_path",
                format!("{:?}: an absolute path is needed", self.template_path),
            ));
        }
        let incompatible: [(&str, bool, &str); 4] = [
            (
                "hypervisor.qemu.shared_fs",
                qemu.shared_fs == SharedFs::VirtioFs,
                "\"virtio-fs\" needs the guest's memory shared with virtiofsd (accepted with \
                 templates: \"virtio-9p\")",
            ),
            (
                "hypervisor.qemu.enable_mem_prealloc",
                qemu.enable_mem_prealloc,
                "a clone's memory is the template's, mapped copy-on-write (accepted with \
                 templates: false)",
            ),
            (
                "hypervisor.qemu.enable_hugepages",
                qemu.enable_hugepages,
                "the template's memory is a file on a tmpfs (accepted with templates: false)",
            ),
            (
                "hypervisor.qemu.file_mem_backend",
                !qemu.file_mem_backend.is_empty(),
                "the template's memory is its own file (accepted with templates: \"\")",
            ),
        ];
        for (key, set, why) in incompatible {
            if set {
                return Err(Error::invalid(
                    key,
                    format!("cannot be used with factory.enable_template = true: {why}"),
                ));
            }
        }
        Ok(())
    }

    /// The factory settings of a conversion.
    pub fn factory_config(&self) -> FactoryConfig {
        FactoryConfig {
            template: self.enable_template,
            template_path: self.template_path.clone(),
            vm_cache_number: self.vm_cache_number,
            vm_cache_endpoint: self.vm_cache_endpoint.clone(),
        }
    }
}
