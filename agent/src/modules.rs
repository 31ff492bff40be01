//! The guest image's kernel modules, loaded for the devices the VM has, as udev would at
//! boot: the image's `modules.alias` maps each device's `modalias` to its driver. Those the
//! agent needs to serve (the PCI transport, its port, the shared directory) load before it
//! serves, the others (network, entropy) after, so that the host's first request does not
//! wait for them.

use std::{
    collections::{BTreeMap, HashSet},
    ffi::CString,
    fs::File,
    path::{Path, PathBuf},
};

/// Each module's file and the modules it needs, by name.
type Graph = BTreeMap<String, (String, Vec<String>)>;

/// The modules of the guest image (its own `modules.dep` and `modules.alias`) and which are
/// loaded.
pub struct Modules {
    dir: PathBuf,
    graph: Graph,
    aliases: Vec<(glob::Pattern, String)>,
    loaded: HashSet<String>,
}

/// A module's name from its path: `kernel/net/9p/9pnet_virtio.ko` -> `9pnet_virtio`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// The device patterns of a `modules.alias` text (`alias PATTERN MODULE`); only device
/// aliases (`bus:...`) are kept.
fn parse_aliases(modules_alias: &str) -> Vec<(glob::Pattern, String)> {
    modules_alias
        .lines()
        .filter_map(
            |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["alias", pattern, module] if pattern.contains(':') => {
                    let pattern = glob::Pattern::new(pattern).ok()?;
                    Some((pattern, module.replace('-', "_")))
                }
                _ => None,
            },
        )
        .collect()
}

/// The `modalias` of every device on `bus` (`pci`, `virtio`).
fn device_aliases(bus: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(Path::new("/sys/bus").join(bus).join("devices")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("modalias")).ok())
        .map(|alias| alias.trim().to_string())
        .collect()
}

/// The graph of a `modules.dep` text (`path: dependency paths...`).
fn parse(modules_dep: &str) -> Graph {
    modules_dep
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(path, deps)| {
            let deps = deps.split_whitespace().map(module_name).collect();
            (module_name(path), (path.to_string(), deps))
        })
        .collect()
}

impl Modules {
    /// The running kernel's modules of the image; none when it has no `modules.dep`.
    pub fn of_image() -> Self {
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = PathBuf::from("/lib/modules").join(release);
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| {
                log::warn!("{}/{name}: {e}: loading no modules for it", dir.display());
                String::new()
            })
        };
        let (modules_dep, modules_alias) = (read("modules.dep"), read("modules.alias"));
        Self::new(dir, &modules_dep, &modules_alias)
    }

    fn new(dir: PathBuf, modules_dep: &str, modules_alias: &str) -> Self {
        Self {
            dir,
            graph: parse(modules_dep),
            aliases: parse_aliases(modules_alias),
            loaded: HashSet::new(),
        }
    }

    /// The drivers of devices with these `modalias` values, each once, in alias order.
    fn drivers(&self, devices: &[String]) -> Vec<String> {
        let mut drivers: Vec<String> = Vec::new();
        for (pattern, module) in &self.aliases {
            if !drivers.contains(module) && devices.iter().any(|d| pattern.matches(d)) {
                drivers.push(module.clone());
            }
        }
        drivers
    }

    /// The drivers of the devices now on `buses` (virtio devices appear once their
    /// transport, `virtio_pci`, is loaded).
    pub fn drivers_present(&self, buses: &[&str]) -> Vec<String> {
        let devices: Vec<String> = buses.iter().flat_map(|bus| device_aliases(bus)).collect();
        self.drivers(&devices)
    }

    /// The files to load for `names`, each after the modules it needs, leaving out loaded
    /// ones; names the image lacks are built in.
    fn order<S: AsRef<str>>(&mut self, names: &[S]) -> Vec<String> {
        fn visit(name: &str, graph: &Graph, loaded: &mut HashSet<String>, order: &mut Vec<String>) {
            let Some((path, needs)) = graph.get(name) else {
                return;
            };
            if !loaded.insert(name.to_string()) {
                return;
            }
            for need in needs {
                visit(need, graph, loaded, order);
            }
            order.push(path.clone());
        }
        let mut order = Vec::new();
        for name in names {
            let name = name.as_ref().replace('-', "_");
            visit(&name, &self.graph, &mut self.loaded, &mut order);
        }
        order
    }

    /// Loads `names` and what they need. One that fails is logged, not fatal.
    pub fn load<S: AsRef<str>>(&mut self, names: &[S]) {
        let params = CString::default();
        for path in self.order(names) {
            let loaded = File::open(self.dir.join(&path))
                .map_err(|e| e.to_string())
                .and_then(|file| {
                    match nix::kmod::finit_module(
                        &file,
                        &params,
                        nix::kmod::ModuleInitFlags::empty(),
                    ) {
                        Ok(()) | Err(nix::Error::EEXIST) => Ok(()),
                        Err(e) => Err(e.to_string()),
                    }
                });
            match loaded {
                Ok(()) => log::debug!("module {path} loaded"),
                Err(e) => log::warn!("module {path}: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // virtio_ring has no line of its own: built in, nothing to load.
    const DEP: &str = "kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko\n\
                       kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko\n\
                       kernel/net/9p/9pnet.ko: kernel/fs/netfs/netfs.ko\n\
                       kernel/fs/netfs/netfs.ko:\n\
                       kernel/drivers/net/virtio_net.ko:\n\
                       kernel/drivers/char/hw_random/virtio-rng.ko:\n";

    const ALIAS: &str = "# Aliases extracted from modules themselves.\n\
                         alias fs-9p 9p\n\
                         alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n\
                         alias virtio:d00000004v* virtio_rng\n\
                         alias virtio:d00000001v* virtio_net\n\
                         alias virtio:d00000009v* 9pnet_virtio\n";

    #[test]
    fn modules_load_after_what_they_need_once() {
        let mut modules = Modules::new(PathBuf::from("/nowhere"), DEP, ALIAS);
        assert_eq!(
            modules.order(&["9p", "9pnet_virtio", "virtio_pci"]),
            [
                "kernel/fs/netfs/netfs.ko",
                "kernel/net/9p/9pnet.ko",
                "kernel/fs/9p/9p.ko",
                "kernel/net/9p/9pnet_virtio.ko"
            ]
        );
        // `-` and `_` name the same module; a loaded one is not loaded again.
        assert_eq!(
            modules.order(&["virtio-rng", "9p"]),
            ["kernel/drivers/char/hw_random/virtio-rng.ko"]
        );
        assert!(modules.order(&["virtio_rng"]).is_empty());
    }

    #[test]
    fn devices_get_the_drivers_their_modalias_matches() {
        let modules = Modules::new(PathBuf::from("/nowhere"), DEP, ALIAS);
        // A 9p share and an entropy device; no network card, so no virtio_net.
        let devices = [
            "pci:v00001AF4d00001049sv00001AF4sd00001100bc00sc00i00".to_string(),
            "virtio:d00000009v00001AF4".to_string(),
            "virtio:d00000004v00001AF4".to_string(),
            "pci:v00008086d000029C0sv00001AF4sd00001100bc06sc00i00".to_string(),
        ];
        assert_eq!(
            modules.drivers(&devices),
            ["virtio_pci", "virtio_rng", "9pnet_virtio"]
        );
        assert!(modules.drivers(&[]).is_empty());
    }
}
