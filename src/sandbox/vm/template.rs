//! VM templates (`[factory] enable_template`, kata's factory): a guest booted once, its agent
//! up and nothing of any pod in it, saved; each pod's VM is then a clone that maps the
//! template's memory copy-on-write and restores its device state instead of booting.
//!
//! A template is made for each distinct shape: QEMU's command line with the per-VM paths left
//! out, and the files it names (QEMU, kernel, initrd, firmware) as they were. A file that
//! changed makes another shape: the old template is never used again, and is removed by the
//! next build. Under the store's root (a tmpfs):
//!
//! - `KEY/template.json`: the [`Record`]; `KEY/image/memory` and `KEY/image/state`: the
//!   guest's memory and the saved device state (read-only).
//! - `KEY.lock`: held while the template is looked for or made, so that pods starting at once
//!   make it once; `KEY.build/`: a template being made (its VM's sockets and log in
//!   `/run/vessel/template-build/PID-KEY/` meanwhile).

use std::{
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{
    super::{Error, Result},
    launch_and_connect, network,
    qemu::{self, Accelerator, TemplateRole, Vm},
    qmp::Qmp,
};
use crate::oci::HypervisorConfig;

/// The MAC address of a template's NIC; a clone's guest gives its interface the pod's.
pub const TEMPLATE_MAC: &str = "02:76:73:00:00:01";
/// The record of a template, in its directory.
const RECORD: &str = "template.json";
/// Where a template's VM keeps its sockets, log and jail while it is made.
const BUILD_DIR: &str = "/run/vessel/template-build";
/// How long a pod waits for another one making the template it needs.
const LOCK_LIMIT: Duration = Duration::from_secs(300);
/// How long saving or restoring a guest may take.
const MIGRATION_LIMIT: Duration = Duration::from_secs(60);
/// How long a template's QEMU may take to exit once saved.
const QUIT_LIMIT: Duration = Duration::from_secs(10);
/// Where the per-VM paths were in a shape's command line.
const VM_PLACEHOLDER: &str = "<vm>";
const IMAGE_PLACEHOLDER: &str = "<image>";

/// Refuses a VM a template cannot hold (set by a pod's annotations; the configuration's
/// own keys are refused at load): its memory must be the template's file, mapped
/// copy-on-write by each clone.
pub fn check_templatable(config: &HypervisorConfig) -> Result<()> {
    let refused = [
        (
            config.shared_fs == crate::oci::SharedFs::VirtioFs,
            "shared_fs \"virtio-fs\" (virtiofsd needs the guest's memory shared)",
        ),
        (config.mem_prealloc, "enable_mem_prealloc"),
        (config.huge_pages, "enable_hugepages"),
        (
            !config.file_backed_mem_root_dir.is_empty(),
            "file_mem_backend",
        ),
    ];
    match refused.into_iter().find(|(set, _)| *set) {
        Some((_, what)) => Err(Error::Unsupported(format!(
            "{what} cannot be used with VM templates ([factory] enable_template = true): \
             leave it unset for this pod, or run it with a handler without templates"
        ))),
        None => Ok(()),
    }
}

/// The firmware a templated VM boots with: qboot cannot set up the generation id device a
/// clone needs (the guest hangs before its kernel starts), so it gives way to QEMU's default
/// (SeaBIOS, a little slower to boot, which only the template does).
pub fn firmware_for_templates(config: &mut HypervisorConfig) {
    let qboot = Path::new(&config.firmware_path)
        .file_name()
        .is_some_and(|name| name.to_string_lossy().contains("qboot"));
    if qboot {
        log::debug!(
            "firmware {}: not with VM templates (no vmgenid); QEMU's default instead",
            config.firmware_path
        );
        config.firmware_path.clear();
    }
}

/// A file a template depends on, as it was when the template was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asset {
    /// Its path.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time, nanoseconds since the epoch.
    pub modified_ns: i128,
    /// Its inode (a file replaced by another has another).
    pub inode: u64,
}

impl Asset {
    /// `path` as it is now.
    pub fn of(path: &str) -> Result<Self> {
        let meta =
            std::fs::metadata(path).map_err(|e| Error::io(format!("template asset {path}"), e))?;
        Ok(Self {
            path: path.to_string(),
            size: meta.size(),
            modified_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            inode: meta.ino(),
        })
    }

    /// Whether the file is still as it was.
    pub fn unchanged(&self) -> bool {
        Self::of(&self.path).is_ok_and(|now| now == *self)
    }
}

/// What a template is: QEMU's command line with the per-VM paths left out, and its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// QEMU's arguments, the VM's state directory and the template's image as placeholders.
    pub arguments: Vec<String>,
    /// The files the command line names.
    pub assets: Vec<Asset>,
}

impl Shape {
    /// The shape of a template for VMs like `vm` with `config` under `accelerator`.
    pub fn of(config: &HypervisorConfig, vm: &Vm, accelerator: Accelerator) -> Result<Self> {
        let placeholder = PathBuf::from(IMAGE_PLACEHOLDER);
        let saved = Vm {
            template: Some(TemplateRole::Save(placeholder)),
            ..vm.clone()
        };
        let dir = vm_dir(vm).to_string_lossy().into_owned();
        let arguments = qemu::arguments(config, &saved, accelerator)
            .into_iter()
            .map(|a| a.replace(&dir, VM_PLACEHOLDER))
            .collect();
        let assets = [
            &config.hypervisor_path,
            &config.kernel_path,
            &config.initrd_path,
            &config.firmware_path,
        ]
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(|p| Asset::of(p))
        .collect::<Result<_>>()?;
        Ok(Self { arguments, assets })
    }

    /// Its key: a digest of all of it.
    pub fn key(&self) -> String {
        let text = serde_json::to_vec(self).unwrap_or_default();
        let digest = Sha256::digest(&text);
        digest[..12].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A template's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// What it is.
    pub shape: Shape,
    /// When it was saved, seconds since the epoch.
    pub created: u64,
    /// How long its guest took to boot and answer, ms.
    pub boot_ms: u64,
    /// How long saving it took, ms.
    pub save_ms: u64,
}

/// A template found in the store, for `factory status`.
#[derive(Debug, Clone)]
pub struct Found {
    /// Its key.
    pub key: String,
    /// Its record.
    pub record: Record,
    /// Bytes its image holds in memory.
    pub bytes: u64,
    /// QEMU processes cloned from it that still run.
    pub clones: usize,
    /// Whether its files are still as they were (else no pod uses it again).
    pub current: bool,
}

/// The templates under a directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The store at `root` (`[factory] template_path`).
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    /// Its directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The image of the template for VMs like `vm`, made first when there is none: by this
    /// call, or by another one that holds its lock meanwhile.
    pub async fn obtain(
        &self,
        config: &HypervisorConfig,
        vm: &Vm,
        accelerator: Accelerator,
    ) -> Result<PathBuf> {
        let shape = Shape::of(config, vm, accelerator)?;
        let key = shape.key();
        self.prepare()?;
        let _lock = self.lock(&key).await?;
        let dir = self.root.join(&key);
        if let Some(record) = read_record(&dir) {
            if record.shape == shape {
                return Ok(dir.join("image"));
            }
        }
        self.build(&key, &shape, config, vm, accelerator).await?;
        self.remove_outdated();
        Ok(dir.join("image"))
    }

    /// Creates the root, on a tmpfs of its own unless it is on one already (guest memory on
    /// a disk would be written to it).
    pub fn prepare(&self) -> Result<()> {
        std::fs::create_dir_all(&self.root)
            .map_err(|e| Error::io(format!("create {}", self.root.display()), e))?;
        let on_tmpfs = nix::sys::statfs::statfs(&self.root)
            .map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
            .unwrap_or(false);
        if !on_tmpfs {
            nix::mount::mount(
                Some("tmpfs"),
                &self.root,
                Some("tmpfs"),
                nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                Some("mode=0700"),
            )
            .map_err(|e| {
                Error::io(
                    format!("mount a tmpfs on {}", self.root.display()),
                    e.into(),
                )
            })?;
        }
        Ok(())
    }

    /// Holds `KEY.lock` (waits while another process does).
    async fn lock(&self, key: &str) -> Result<nix::fcntl::Flock<std::fs::File>> {
        let path = self.root.join(format!("{key}.lock"));
        let deadline = Instant::now() + LOCK_LIMIT;
        loop {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
            match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(lock),
                Err((_, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err((_, e)) => {
                    return Err(Error::io(
                        format!("lock {} (another pod makes the template)", path.display()),
                        e.into(),
                    ))
                }
            }
        }
    }

    /// Boots a VM like `vm` as the template `key` and saves it.
    async fn build(
        &self,
        key: &str,
        shape: &Shape,
        config: &HypervisorConfig,
        vm: &Vm,
        accelerator: Accelerator,
    ) -> Result<()> {
        let building = self.root.join(format!("{key}.build"));
        let _ = std::fs::remove_dir_all(&building);
        // The building VM's sockets, log and jail: a short path (a socket's must fit
        // sun_path), this process's own (another store may make a template of this key).
        let work = Path::new(BUILD_DIR).join(format!("{}-{}", std::process::id(), &key[..12]));
        let _ = std::fs::remove_dir_all(&work);
        let result = self
            .build_in(&building, &work, shape, config, vm, accelerator)
            .await;
        let _ = std::fs::remove_dir_all(&work);
        // Gone with the last build (another one's still there keeps it).
        let _ = std::fs::remove_dir(BUILD_DIR);
        match result {
            Ok(record) => {
                write_record(&building, &record)?;
                let dir = self.root.join(key);
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::rename(&building, &dir)
                    .map_err(|e| Error::io(format!("rename to {}", dir.display()), e))?;
                log::info!(
                    "VM template {key} made: booted in {} ms, saved in {} ms",
                    record.boot_ms,
                    record.save_ms
                );
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&building);
                Err(e)
            }
        }
    }

    async fn build_in(
        &self,
        building: &Path,
        work: &Path,
        shape: &Shape,
        config: &HypervisorConfig,
        vm: &Vm,
        accelerator: Accelerator,
    ) -> Result<Record> {
        let image = building.join("image");
        for dir in [&image, &work.join("shared")] {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        }
        let role = TemplateRole::Save(image.clone());
        let template_vm = Vm {
            agent_socket: work.join("agent.sock"),
            shared_dir: work.join("shared"),
            qemu_log: work.join("qemu.log"),
            qmp_socket: work.join("qmp.sock"),
            template: Some(role.clone()),
            ..vm.clone()
        };
        // The device state must be a clone's: the same NIC, its tap in a namespace of its own.
        let tap = network::private_tap()?;
        let since = Instant::now();
        let mut started = launch_and_connect(
            config,
            &template_vm,
            accelerator,
            Some(tap.as_raw_fd()),
            |_| Ok(()),
        )
        .await?;
        // The agent waits for the next connection, a clone's.
        drop(started.agent);
        let boot_ms = since.elapsed().as_millis() as u64;
        let since = Instant::now();
        let saved = save(&template_vm.qmp_socket, &role.state()).await;
        super::kill(started.pid);
        let _ = tokio::time::timeout(QUIT_LIMIT, &mut started.exited).await;
        saved?;
        let save_ms = since.elapsed().as_millis() as u64;
        for file in [role.memory(), role.state()] {
            seal(&file)?;
        }
        Ok(Record {
            shape: shape.clone(),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            boot_ms,
            save_ms,
        })
    }

    /// Removes the templates whose files changed and every unfinished one (a clone running
    /// from one keeps its memory: the file goes with the last mapping).
    fn remove_outdated(&self) {
        for found in self.list() {
            if !found.current {
                log::info!("VM template {}: its files changed; removed", found.key);
                let _ = std::fs::remove_dir_all(self.root.join(&found.key));
                let _ = std::fs::remove_file(self.root.join(format!("{}.lock", found.key)));
            }
        }
    }

    /// The templates in the store.
    pub fn list(&self) -> Vec<Found> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut found: Vec<Found> = entries
            .flatten()
            .filter_map(|entry| {
                let dir = entry.path();
                let record = read_record(&dir)?;
                let key = entry.file_name().to_string_lossy().into_owned();
                let image = dir.join("image");
                let bytes = ["memory", "state"]
                    .iter()
                    .filter_map(|f| std::fs::metadata(image.join(f)).ok())
                    .map(|m| m.blocks() * 512)
                    .sum();
                let current = record.shape.assets.iter().all(Asset::unchanged);
                Some(Found {
                    clones: clones_of(&image),
                    key,
                    record,
                    bytes,
                    current,
                })
            })
            .collect();
        found.sort_by(|a, b| a.key.cmp(&b.key));
        found
    }

    /// Removes every template, and the tmpfs when it is one of its own.
    pub fn destroy(&self) -> Result<usize> {
        let count = self.list().len();
        if !self.root.exists() {
            return Ok(0);
        }
        let entries = std::fs::read_dir(&self.root)
            .map_err(|e| Error::io(format!("read {}", self.root.display()), e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(|e| Error::io(format!("remove {}", path.display()), e))?;
        }
        let _ = nix::mount::umount2(&self.root, nix::mount::MntFlags::MNT_DETACH);
        std::fs::remove_dir(&self.root)
            .map_err(|e| Error::io(format!("remove {}", self.root.display()), e))?;
        Ok(count)
    }
}

/// The VM's state directory.
fn vm_dir(vm: &Vm) -> &Path {
    vm.agent_socket.parent().unwrap_or(Path::new("/"))
}

fn read_record(dir: &Path) -> Option<Record> {
    let text = std::fs::read(dir.join(RECORD)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn write_record(dir: &Path, record: &Record) -> Result<()> {
    let text = serde_json::to_vec_pretty(record)
        .map_err(|e| Error::io("encode the template's record", e.into()))?;
    let path = dir.join(RECORD);
    std::fs::write(&path, text).map_err(|e| Error::io(format!("write {}", path.display()), e))
}

/// Makes a file of the template root's and read-only for everyone (each clone's QEMU runs as
/// a user of its own).
fn seal(file: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(file, Some(0), Some(0))
        .and_then(|()| std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o444)))
        .map_err(|e| Error::io(format!("seal {}", file.display()), e))
}

/// QEMU processes whose memory is the template's at `image`.
fn clones_of(image: &Path) -> usize {
    let needle = format!("mem-path={}", image.join("memory").display());
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return 0;
    };
    processes
        .flatten()
        .filter(|p| {
            p.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|p| {
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains(&needle) && cmdline.contains("share=off")
        })
        .count()
}

/// Saves the paused guest's device state to `state`, its memory left out (the template's
/// file holds it).
async fn save(qmp_socket: &Path, state: &Path) -> Result<()> {
    let mut qmp = Qmp::connect(qmp_socket).await?;
    qmp.execute("stop", json!({})).await?;
    ignore_shared(&mut qmp).await?;
    let uri = format!("file:{}", state.display());
    qmp.execute("migrate", json!({ "uri": uri })).await?;
    migrated(&mut qmp).await
}

/// Loads the template's device state at `state` into the clone QEMU paused for it, then
/// runs the guest.
pub async fn restore(qmp_socket: &Path, state: &Path) -> Result<()> {
    let mut qmp = Qmp::connect(qmp_socket).await?;
    ignore_shared(&mut qmp).await?;
    let uri = format!("file:{}", state.display());
    qmp.execute("migrate-incoming", json!({ "uri": uri }))
        .await?;
    migrated(&mut qmp).await?;
    qmp.execute("cont", json!({})).await.map(drop)
}

async fn ignore_shared(qmp: &mut Qmp) -> Result<()> {
    let capabilities = json!({
        "capabilities": [{ "capability": "x-ignore-shared", "state": true }]
    });
    qmp.execute("migrate-set-capabilities", capabilities)
        .await
        .map(drop)
}

/// Waits until the migration under way completed; its error when it failed.
async fn migrated(qmp: &mut Qmp) -> Result<()> {
    let deadline = Instant::now() + MIGRATION_LIMIT;
    loop {
        let status = qmp.execute("query-migrate", json!({})).await?;
        match status["status"].as_str().unwrap_or("") {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                return Err(Error::Runtime {
                    op: "template",
                    id: "migrate".into(),
                    message: status["error-desc"]
                        .as_str()
                        .unwrap_or("the migration failed")
                        .to_string(),
                })
            }
            _ if Instant::now() > deadline => {
                return Err(Error::Timeout(format!(
                    "the VM's state was not saved or restored within {MIGRATION_LIMIT:?}"
                )))
            }
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_asset_that_changed_is_no_longer_current() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, "one").unwrap();
        let asset = Asset::of(kernel.to_str().unwrap()).unwrap();
        assert!(asset.unchanged());
        std::fs::remove_file(&kernel).unwrap();
        std::fs::write(&kernel, "two!").unwrap();
        assert!(!asset.unchanged());
    }

    #[test]
    fn a_shape_key_changes_with_any_of_it() {
        let shape = Shape {
            arguments: vec!["-m".into(), "512M".into()],
            assets: Vec::new(),
        };
        let mut other = shape.clone();
        other.arguments[1] = "1024M".into();
        assert_eq!(shape.key(), shape.clone().key());
        assert_ne!(shape.key(), other.key());
        assert_eq!(shape.key().len(), 24);
    }
}
