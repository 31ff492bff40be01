//! The guest's kernel modules. Those of the image load for the devices the VM has, as udev
//! would at boot: the image's `modules.alias` maps each device's `modalias` to its driver.
//! Those the agent needs to serve (the PCI transport, its port, the shared directory) load
//! before it serves, the others (network, entropy) after, so that the host's first request
//! does not wait for them.
//!
//! The agent is also the guest's `modprobe`: the kernel runs `/bin/modprobe -q -- NAME` for a
//! module it needs (a privileged container adding a bridge, a veth pair, an nftables table, an
//! overlay mount...), and the agent loads it, by name or alias, from the image or from the
//! modules the host shares read-only ([`vessel::sandbox::vm::MODULES_DIR`]).

use std::{
    collections::{BTreeMap, HashSet},
    ffi::CString,
    fs::File,
    path::{Path, PathBuf},
    process::ExitCode,
};

/// Each module's file and the modules it needs, by name.
type Graph = BTreeMap<String, (PathBuf, Vec<String>)>;

/// Where the kernel finds its module loader, once the agent serves.
const MODPROBE: &str = "/bin/modprobe";

/// Kernel modules (of the image, and of other trees added) and which are loaded.
pub struct Modules {
    graph: Graph,
    aliases: Vec<(glob::Pattern, String)>,
    loaded: HashSet<String>,
}

/// A module's name from its path: `kernel/net/9p/9pnet_virtio.ko` -> `9pnet_virtio`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// The patterns of a `modules.alias` text (`alias PATTERN MODULE`).
fn parse_aliases(modules_alias: &str) -> Vec<(glob::Pattern, String)> {
    modules_alias
        .lines()
        .filter_map(
            |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["alias", pattern, module] => {
                    let pattern = glob::Pattern::new(pattern).ok()?;
                    Some((pattern, module.replace('-', "_")))
                }
                _ => None,
            },
        )
        .collect()
}

/// Whether an alias names devices (`bus:...`), rather than a name the kernel asks for.
fn is_device_alias(pattern: &glob::Pattern) -> bool {
    pattern.as_str().contains(':')
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

/// The graph of a `modules.dep` text (`path: dependency paths...`), paths under `dir`.
fn parse(dir: &Path, modules_dep: &str) -> Graph {
    modules_dep
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(path, deps)| {
            let deps = deps.split_whitespace().map(module_name).collect();
            (module_name(path), (dir.join(path), deps))
        })
        .collect()
}

/// The running kernel's release.
fn release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Modules {
    /// The running kernel's modules of the image; none when it has no `modules.dep`.
    pub fn of_image() -> Self {
        let mut modules = Self::new(Path::new("/nowhere"), "", "");
        modules.add_tree(&Path::new("/lib/modules").join(release()));
        modules
    }

    fn new(dir: &Path, modules_dep: &str, modules_alias: &str) -> Self {
        Self {
            graph: parse(dir, modules_dep),
            aliases: parse_aliases(modules_alias),
            loaded: HashSet::new(),
        }
    }

    /// Adds the modules of tree `dir` (its `modules.dep` and `modules.alias`); a module
    /// known already keeps its first file.
    fn add_tree(&mut self, dir: &Path) {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| {
                log::warn!("{}/{name}: {e}: no modules from it", dir.display());
                String::new()
            })
        };
        self.merge(dir, &read("modules.dep"), &read("modules.alias"));
    }

    /// Adds the modules of a tree at `dir` with this `modules.dep` and `modules.alias`.
    fn merge(&mut self, dir: &Path, modules_dep: &str, modules_alias: &str) {
        for (name, entry) in parse(dir, modules_dep) {
            self.graph.entry(name).or_insert(entry);
        }
        self.aliases.extend(parse_aliases(modules_alias));
    }

    /// The drivers of devices with these `modalias` values, each once, in alias order.
    fn drivers(&self, devices: &[String]) -> Vec<String> {
        let mut drivers: Vec<String> = Vec::new();
        for (pattern, module) in self.aliases.iter().filter(|(p, _)| is_device_alias(p)) {
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

    /// The modules a name the kernel asks for means: a module's own name, else every module
    /// with an alias matching it (`rtnl-link-veth`, `fs-overlay`, `char-major-10-200`).
    fn resolve(&self, name: &str) -> Vec<String> {
        let own = name.replace('-', "_");
        if self.graph.contains_key(&own) {
            return vec![own];
        }
        let mut modules: Vec<String> = Vec::new();
        for (pattern, module) in &self.aliases {
            if !modules.contains(module) && pattern.matches(name) {
                modules.push(module.clone());
            }
        }
        modules
    }

    /// The files to load for `names`, each after the modules it needs, leaving out loaded
    /// ones; names the image lacks are built in.
    fn order<S: AsRef<str>>(&mut self, names: &[S]) -> Vec<PathBuf> {
        fn visit(
            name: &str,
            graph: &Graph,
            loaded: &mut HashSet<String>,
            order: &mut Vec<PathBuf>,
        ) {
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

    /// Loads `names` and what they need; whether all loaded. One that fails is logged.
    pub fn load<S: AsRef<str>>(&mut self, names: &[S]) -> bool {
        let params = CString::default();
        let mut all = true;
        for path in self.order(names) {
            let loaded = File::open(&path)
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
                Ok(()) => log::debug!("module {} loaded", path.display()),
                Err(e) => {
                    log::warn!("module {}: {e}", path.display());
                    all = false;
                }
            }
        }
        all
    }
}

/// The tree of modules the host shares, in the guest.
fn shared_tree() -> PathBuf {
    Path::new(crate::init::SHARED_MOUNT)
        .join(vessel::sandbox::vm::MODULES_DIR)
        .join(release())
}

/// The device nodes of a `modules.devname` text (`tun net/tun c10:200`): path under /dev,
/// character device or not, major, minor.
fn parse_devnames(modules_devname: &str) -> Vec<(String, bool, u64, u64)> {
    modules_devname
        .lines()
        .filter_map(|line| {
            let [_, name, numbers] = line.split_whitespace().collect::<Vec<_>>()[..] else {
                return None;
            };
            let (kind, numbers) = numbers.split_at_checked(1)?;
            let (major, minor) = numbers.split_once(':')?;
            let safe = !name.split('/').any(|part| part.is_empty() || part == "..");
            (safe && (kind == "c" || kind == "b")).then_some((
                name.to_string(),
                kind == "c",
                major.parse().ok()?,
                minor.parse().ok()?,
            ))
        })
        .collect()
}

/// Makes the kernel run the agent as its module loader from now on (until then a module
/// request fails at once: no `/sbin/modprobe` in the image, nothing exec'd during the boot),
/// and makes the device nodes of the shared modules (`/dev/net/tun`, `/dev/fuse`), whose
/// opening loads their module, as kmod's static nodes do.
pub fn serve_requests() {
    if let Err(e) = std::fs::write("/proc/sys/kernel/modprobe", MODPROBE) {
        log::warn!("/proc/sys/kernel/modprobe: {e}: modules are not loaded on demand");
    }
    let devnames =
        std::fs::read_to_string(shared_tree().join("modules.devname")).unwrap_or_default();
    for (name, char_device, major, minor) in parse_devnames(&devnames) {
        let path = Path::new("/dev").join(&name);
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let kind = if char_device {
            nix::sys::stat::SFlag::S_IFCHR
        } else {
            nix::sys::stat::SFlag::S_IFBLK
        };
        let mode = nix::sys::stat::Mode::from_bits_truncate(0o600);
        let device = nix::sys::stat::makedev(major, minor);
        match nix::sys::stat::mknod(&path, kind, mode, device) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => log::warn!("device node {}: {e}", path.display()),
        }
    }
}

/// Whether the agent was started as `modprobe` (the kernel's module loader).
pub fn is_modprobe(argv0: &str) -> bool {
    Path::new(argv0)
        .file_name()
        .is_some_and(|name| name == "modprobe")
}

/// `modprobe [-q] [-b] [--] NAME`, as the kernel runs it: loads the module NAME means from
/// the image or the host's shared modules. Exits 0 when loaded (or built in), 1 otherwise.
pub fn modprobe(args: &[String]) -> ExitCode {
    let Some(name) = args.iter().find(|a| !a.starts_with('-')) else {
        eprintln!("modprobe: no module named (usage: modprobe [-q] [--] NAME)");
        return ExitCode::FAILURE;
    };
    let mut modules = Modules::of_image();
    let shared = shared_tree();
    if shared.is_dir() {
        modules.add_tree(&shared);
    }
    let wanted = modules.resolve(name);
    if wanted.is_empty() {
        return ExitCode::FAILURE;
    }
    if modules.load(&wanted) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
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
        let mut modules = Modules::new(Path::new("/m"), DEP, ALIAS);
        assert_eq!(
            modules.order(&["9p", "9pnet_virtio", "virtio_pci"]),
            [
                "/m/kernel/fs/netfs/netfs.ko",
                "/m/kernel/net/9p/9pnet.ko",
                "/m/kernel/fs/9p/9p.ko",
                "/m/kernel/net/9p/9pnet_virtio.ko"
            ]
            .map(PathBuf::from)
        );
        // `-` and `_` name the same module; a loaded one is not loaded again.
        assert_eq!(
            modules.order(&["virtio-rng", "9p"]),
            [PathBuf::from(
                "/m/kernel/drivers/char/hw_random/virtio-rng.ko"
            )]
        );
        assert!(modules.order(&["virtio_rng"]).is_empty());
    }

    #[test]
    fn devices_get_the_drivers_their_modalias_matches() {
        let modules = Modules::new(Path::new("/m"), DEP, ALIAS);
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

    #[test]
    fn a_name_the_kernel_asks_for_loads_by_name_or_alias_from_either_tree() {
        let mut modules = Modules::new(Path::new("/m"), DEP, ALIAS);
        modules.merge(
            Path::new("/shared"),
            "kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko\n\
             kernel/net/802/stp.ko: kernel/net/llc/llc.ko\n\
             kernel/net/llc/llc.ko:\n\
             kernel/fs/netfs/netfs.ko:\n\
             kernel/net/netfilter/nf_tables.ko: kernel/net/netfilter/nfnetlink.ko\n\
             kernel/net/netfilter/nfnetlink.ko:\n",
            "alias rtnl-link-bridge bridge\n\
             alias nfnetlink-subsys-10 nf_tables\n\
             alias devname:net/tun tun\n",
        );
        assert_eq!(modules.resolve("bridge"), ["bridge"]);
        assert_eq!(modules.resolve("rtnl-link-bridge"), ["bridge"]);
        assert_eq!(modules.resolve("nfnetlink-subsys-10"), ["nf_tables"]);
        assert_eq!(modules.resolve("fs-9p"), ["9p"]);
        assert!(modules.resolve("rtnl-link-wireguard").is_empty());
        assert_eq!(
            modules.order(&["nf_tables", "bridge"]),
            [
                "/shared/kernel/net/netfilter/nfnetlink.ko",
                "/shared/kernel/net/netfilter/nf_tables.ko",
                "/shared/kernel/net/llc/llc.ko",
                "/shared/kernel/net/802/stp.ko",
                "/shared/kernel/net/bridge/bridge.ko",
            ]
            .map(PathBuf::from)
        );
        // The image's own file stays first; device aliases of either tree find drivers only.
        assert_eq!(
            modules.order(&["9p"]),
            [
                "/m/kernel/fs/netfs/netfs.ko",
                "/m/kernel/net/9p/9pnet.ko",
                "/m/kernel/fs/9p/9p.ko"
            ]
            .map(PathBuf::from)
        );
        assert!(modules.drivers(&["net/tun".to_string()]).is_empty());
    }

    #[test]
    fn the_agent_is_modprobe_by_its_name() {
        assert!(is_modprobe("/bin/modprobe"));
        assert!(is_modprobe("modprobe"));
        assert!(!is_modprobe("/init"));
        assert!(!is_modprobe("/bin/vessel-agent"));
    }

    #[test]
    fn device_nodes_of_modules_are_read_safely() {
        let text = "# Device nodes\nfuse fuse c10:229\ntun net/tun c10:200\n\
                    bad ../etc/passwd c1:1\nodd odd x1:1\nshort c1\n";
        assert_eq!(
            parse_devnames(text),
            [
                ("fuse".to_string(), true, 10, 229),
                ("net/tun".to_string(), true, 10, 200)
            ]
        );
    }
}
