//! `factory`: the VM templates pods start from, made ahead of time, listed and removed by
//! hand (as `kata-runtime factory`), with the shim's own configuration.

use std::{
    fmt::Write,
    path::Path,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use crate::{
    config::Config,
    sandbox::vm::{make_template, template::Store},
};

/// What `factory` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Make the template of this configuration's pods, unless it exists.
    Init,
    /// List the templates.
    Status,
    /// Remove every template.
    Destroy,
}

/// Runs `action` with the configuration at `config` (else `VESSEL_CONFIG`, else the usual
/// lookup), logging to stderr (at debug level with `debug`); what to print.
pub async fn run(action: Action, config: Option<&Path>, debug: bool) -> Result<String, String> {
    let logger = crate::logging::init(debug, ("factory", ""));
    let config = Config::load(config).map_err(|e| e.to_string())?;
    let runtime = config.runtime_config().map_err(|e| e.to_string())?;
    let store = Store::new(Path::new(&config.factory.template_path));
    match action {
        Action::Init => {
            if !config.factory.enable_template {
                return Err("factory init: [factory] enable_template is false in this \
                            configuration, so no pod would start from a template (set it to \
                            true)"
                    .into());
            }
            // The template's QEMU is a child to reap, as in the shim.
            tokio::spawn(crate::shim::reap_children(logger));
            let since = Instant::now();
            let key = make_template(&runtime, &store)
                .await
                .map_err(|e| format!("factory init: {e}"))?;
            Ok(format!(
                "template {key} ready in {} ({} ms)\n",
                store.root().display(),
                since.elapsed().as_millis()
            ))
        }
        Action::Status => Ok(status(&store)),
        Action::Destroy => {
            let count = store
                .destroy()
                .map_err(|e| format!("factory destroy: {e}"))?;
            Ok(format!(
                "{count} template(s) removed, {} removed\n",
                store.root().display()
            ))
        }
    }
}

/// One line per template: its key, shape, size, age and clones.
fn status(store: &Store) -> String {
    let found = store.list();
    if found.is_empty() {
        return format!("no VM template in {}\n", store.root().display());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut out = String::new();
    for template in found {
        let args = &template.record.shape.arguments;
        let after = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1))
                .map(String::as_str)
                .unwrap_or("-")
        };
        let _ = writeln!(
            out,
            "{}  machine {}  smp {}  memory {}  kernel {}  initrd {}  size {} MiB  age {} s  \
             clones {}  {}",
            template.key,
            after("-machine"),
            after("-smp"),
            after("-m"),
            after("-kernel"),
            after("-initrd"),
            template.bytes >> 20,
            now.saturating_sub(template.record.created),
            template.clones,
            if template.current {
                "current"
            } else {
                "outdated (its files changed: no pod uses it)"
            }
        );
    }
    out
}
