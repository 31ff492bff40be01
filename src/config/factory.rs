//! `[factory]`: VM templating and caching.

use serde::Deserialize;

use super::Error;
use crate::oci::FactoryConfig;

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
    /// Refuses what this build cannot do rather than ignore it: VMs are booted, not cloned
    /// from a template nor taken from a cache.
    pub fn check(&self) -> Result<(), Error> {
        if self.enable_template {
            return Err(Error::invalid(
                "factory.enable_template",
                "VM templates are not available in this build (accepted: false)",
            ));
        }
        if self.vm_cache_number > 0 {
            return Err(Error::invalid(
                "factory.vm_cache_number",
                format!(
                    "{}: a VM cache is not supported (accepted: 0); each pod boots its VM",
                    self.vm_cache_number
                ),
            ));
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
