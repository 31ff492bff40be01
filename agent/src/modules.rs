//! The guest image's kernel modules: those the agent needs to serve (its port, the shared
//! directory) are loaded before it serves, the others (network, overlay, vsock, entropy)
//! after, so that the host's first request does not wait for them.

use std::{
    collections::{BTreeMap, HashSet},
    ffi::CString,
    fs::File,
    path::PathBuf,
};

/// Each module's file and the modules it needs, by name.
type Graph = BTreeMap<String, (String, Vec<String>)>;

/// The modules of the guest image (its own `modules.dep`) and which are loaded.
pub struct Modules {
    dir: PathBuf,
    graph: Graph,
    loaded: HashSet<String>,
}

/// A module's name from its path: `kernel/net/9p/9pnet_virtio.ko` -> `9pnet_virtio`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
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
        let modules_dep = std::fs::read_to_string(dir.join("modules.dep")).unwrap_or_else(|e| {
            log::warn!("{}/modules.dep: {e}: loading no modules", dir.display());
            String::new()
        });
        Self::new(dir, &modules_dep)
    }

    fn new(dir: PathBuf, modules_dep: &str) -> Self {
        Self {
            dir,
            graph: parse(modules_dep),
            loaded: HashSet::new(),
        }
    }

    /// The files to load for `names` (every module when `None`), each after the modules it
    /// needs, leaving out loaded ones; names the image lacks are built in.
    fn order(&mut self, names: Option<&[&str]>) -> Vec<String> {
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
        let names: Vec<String> = match names {
            Some(names) => names.iter().map(|n| n.replace('-', "_")).collect(),
            None => self.graph.keys().cloned().collect(),
        };
        let mut order = Vec::new();
        for name in names {
            visit(&name, &self.graph, &mut self.loaded, &mut order);
        }
        order
    }

    /// Loads `names` and what they need; every module of the image when `None`. One that
    /// fails is logged, not fatal.
    pub fn load(&mut self, names: Option<&[&str]>) {
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
                       kernel/fs/overlayfs/overlay.ko:\n\
                       kernel/drivers/char/hw_random/virtio-rng.ko:\n";

    #[test]
    fn modules_load_after_what_they_need_once() {
        let mut modules = Modules::new(PathBuf::from("/nowhere"), DEP);
        assert_eq!(
            modules.order(Some(&["9p", "9pnet_virtio", "virtio_pci"])),
            [
                "kernel/fs/netfs/netfs.ko",
                "kernel/net/9p/9pnet.ko",
                "kernel/fs/9p/9p.ko",
                "kernel/net/9p/9pnet_virtio.ko"
            ]
        );
        // The rest: what is not loaded yet; `-` and `_` name the same module.
        assert_eq!(
            modules.order(None),
            [
                "kernel/fs/overlayfs/overlay.ko",
                "kernel/drivers/char/hw_random/virtio-rng.ko"
            ]
        );
        assert!(modules.order(Some(&["virtio-rng"])).is_empty());
    }
}
