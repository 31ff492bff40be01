//! A VM sized to its pod. The VM boots at the configured default (`default_vcpus`,
//! `default_memory`); each container's CPU quota and memory limit are added before it is
//! created and on every update, and taken away when it goes:
//! `vCPUs = default_vcpus + ceil(Σ quota/period)`, `memory = default_memory + Σ limits`
//! (huge page limits included), capped at `default_maxvcpus` and `default_maxmemory` (0: the
//! host's). vCPUs are ACPI-hotplugged through QMP (`device_add` of the slots
//! `query-hotpluggable-cpus` lists free, `device_del` to give them back) and brought online by
//! the agent; memory is one `virtio-mem-pci` device as large as the cap, whose
//! `requested-size` is set, and the guest's driver plugs (or unplugs, best effort) that much.
//!
//! With `static_sandbox_resource_mgmt` the VM boots at the default plus the pod's own
//! resources, which containerd passes on the sandbox's spec (`io.kubernetes.cri.sandbox-*`),
//! and never changes.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use oci_spec::runtime::LinuxResources;
use serde_json::{json, Value};

use super::{
    super::{Error, Result},
    qmp::Qmp,
};

/// The virtio-mem device's QOM id, and its memory backend's.
pub const MEMORY_DEVICE: &str = "hotmem0";
/// The memory backend of [`MEMORY_DEVICE`].
pub const MEMORY_BACKEND: &str = "hotmem";
/// virtio-mem's block size on x86 (QEMU's default): sizes are multiples of it, MiB.
const BLOCK_MIB: u64 = 2;
/// How long the guest may take to plug the memory asked for.
const PLUG_LIMIT: Duration = Duration::from_secs(30);
/// How long an unplugged vCPU's slot may take to come free.
const UNPLUG_LIMIT: Duration = Duration::from_secs(5);

/// The CRI annotations of a sandbox's spec carrying the pod's resources (kubelet fills them
/// from the pod's limits, without the RuntimeClass overhead).
const POD_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
const POD_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
const POD_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";

/// What a container (or a pod) asks of its VM.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Demand {
    /// CPUs: its quota over its period (0 without a quota).
    pub cpus: f64,
    /// Memory, MiB: its limit and huge page limits (0 without a limit).
    pub memory_mib: u64,
}

/// A VM's size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Size {
    /// vCPUs.
    pub vcpus: u32,
    /// Memory, MiB.
    pub memory_mib: u64,
}

const MIB: u64 = 1 << 20;

fn cpus(quota: i64, period: u64) -> f64 {
    if quota > 0 && period > 0 {
        quota as f64 / period as f64
    } else {
        0.0
    }
}

/// What `resources` ask: the CPU quota over its period, the memory limit and the huge page
/// limits. A container without limits asks nothing.
pub fn demand(resources: &LinuxResources) -> Demand {
    let cpu = resources.cpu().as_ref();
    let quota = cpu.and_then(|c| c.quota()).unwrap_or(0);
    let period = cpu.and_then(|c| c.period()).unwrap_or(0);
    let limit = resources
        .memory()
        .as_ref()
        .and_then(|m| m.limit())
        .filter(|l| *l > 0)
        .map_or(0, |l| l as u64);
    let huge_pages: u64 = resources
        .hugepage_limits()
        .iter()
        .flatten()
        .map(|h| h.limit().max(0) as u64)
        .sum();
    Demand {
        cpus: cpus(quota, period),
        memory_mib: (limit + huge_pages).div_ceil(MIB),
    }
}

/// What a pod asks, from the CRI annotations of its sandbox's spec (static sizing).
pub fn pod_demand(annotations: Option<&HashMap<String, String>>) -> Demand {
    let number = |key: &str| {
        annotations
            .and_then(|a| a.get(key))
            .and_then(|v| v.trim().parse::<i64>().ok())
    };
    let quota = number(POD_CPU_QUOTA).unwrap_or(0);
    let period = number(POD_CPU_PERIOD).unwrap_or(0).max(0) as u64;
    Demand {
        cpus: cpus(quota, period),
        memory_mib: number(POD_MEMORY).unwrap_or(0).max(0) as u64 / MIB,
    }
}

/// The size of a VM of `base` asked for `demands`, capped at `max`; memory in whole blocks.
pub fn target(base: Size, max: Size, demands: impl IntoIterator<Item = Demand>) -> Size {
    let (cpus, memory) = demands
        .into_iter()
        .fold((0.0, 0u64), |(c, m), d| (c + d.cpus, m + d.memory_mib));
    let added_vcpus = cpus.ceil().min(u32::MAX as f64) as u32;
    let memory = base.memory_mib + memory.div_ceil(BLOCK_MIB) * BLOCK_MIB;
    Size {
        vcpus: base
            .vcpus
            .saturating_add(added_vcpus)
            .min(max.vcpus.max(base.vcpus)),
        memory_mib: memory.min(max.memory_mib.max(base.memory_mib)),
    }
}

/// A running VM's hotplug: QMP, what it booted with, what it can grow to, and what was
/// plugged.
pub struct Hotplug {
    qmp: Qmp,
    base: Size,
    max: Size,
    /// The ids of the vCPUs plugged, in order.
    vcpus: Vec<String>,
    /// A counter for unique vCPU device ids.
    next_vcpu: u32,
    /// The memory plugged above the base, MiB (None: no virtio-mem device).
    memory_mib: Option<u64>,
    /// Each container's demand.
    demands: BTreeMap<String, Demand>,
}

impl Hotplug {
    /// The hotplug of a VM of `base` that can grow to `max`; `memory` when it has the
    /// virtio-mem device.
    pub fn new(qmp: Qmp, base: Size, max: Size, memory: bool) -> Self {
        Self {
            qmp,
            base,
            max,
            vcpus: Vec::new(),
            next_vcpu: 0,
            memory_mib: memory.then_some(0),
            demands: BTreeMap::new(),
        }
    }

    /// Records container `id`'s demand (None: it went); the size the VM must have, if that
    /// is not the size it has.
    pub fn set_demand(&mut self, id: &str, demand: Option<Demand>) -> Option<Size> {
        match demand {
            Some(demand) => self.demands.insert(id.to_string(), demand),
            None => self.demands.remove(id),
        };
        let wanted = target(self.base, self.max, self.demands.values().copied());
        let memory = self
            .memory_mib
            .map_or(wanted.memory_mib, |m| self.base.memory_mib + m);
        (wanted.vcpus != self.vcpus() || wanted.memory_mib != memory).then_some(wanted)
    }

    /// The vCPUs the VM has now.
    pub fn vcpus(&self) -> u32 {
        self.base.vcpus + self.vcpus.len() as u32
    }

    /// Plugs or unplugs vCPUs until the VM has `wanted`.
    pub async fn set_vcpus(&mut self, wanted: u32) -> Result<()> {
        while self.vcpus() > wanted {
            let Some(id) = self.vcpus.pop() else { break };
            self.qmp.execute("device_del", json!({ "id": id })).await?;
            self.wait_unplugged(&id).await;
        }
        if self.vcpus() >= wanted {
            return Ok(());
        }
        let slots = self
            .qmp
            .execute("query-hotpluggable-cpus", json!({}))
            .await?;
        let mut free = free_cpu_slots(&slots);
        while self.vcpus() < wanted {
            let Some((driver, props)) = free.pop() else {
                return Err(Error::Unsupported(format!(
                    "the VM has no free vCPU slot for {wanted} vCPUs (it has {})",
                    self.vcpus()
                )));
            };
            let id = format!("vcpu{}", self.next_vcpu);
            self.next_vcpu += 1;
            let mut arguments = props;
            arguments["driver"] = Value::String(driver);
            arguments["id"] = Value::String(id.clone());
            self.qmp.execute("device_add", arguments).await?;
            self.vcpus.push(id);
        }
        Ok(())
    }

    /// Waits (bounded) until the vCPU `id` the guest was asked to eject is gone.
    async fn wait_unplugged(&mut self, id: &str) {
        let path = format!("/machine/peripheral/{id}");
        let deadline = tokio::time::Instant::now() + UNPLUG_LIMIT;
        while tokio::time::Instant::now() < deadline {
            let query = self
                .qmp
                .execute("qom-get", json!({ "path": path, "property": "type" }))
                .await;
            if query.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        log::warn!("vCPU {id}: the guest did not eject it within {UNPLUG_LIMIT:?}");
    }

    /// Sets the guest's memory to `wanted` MiB: growing waits until the guest plugged it all,
    /// shrinking asks and goes on (the guest unplugs what it can).
    pub async fn set_memory(&mut self, wanted: u64) -> Result<()> {
        let Some(plugged) = self.memory_mib else {
            return Ok(());
        };
        let extra = wanted.saturating_sub(self.base.memory_mib);
        if extra == plugged {
            return Ok(());
        }
        let path = format!("/machine/peripheral/{MEMORY_DEVICE}");
        self.qmp
            .execute(
                "qom-set",
                json!({ "path": path, "property": "requested-size", "value": extra * MIB }),
            )
            .await?;
        self.memory_mib = Some(extra);
        if extra < plugged {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + PLUG_LIMIT;
        loop {
            let size = self
                .qmp
                .execute("qom-get", json!({ "path": path, "property": "size" }))
                .await?
                .as_u64()
                .unwrap_or(0);
            if size >= extra * MIB {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "the guest plugged {} of the {extra} MiB of memory asked for in {PLUG_LIMIT:?}",
                    size / MIB
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The free slots of a `query-hotpluggable-cpus` answer (no `qom-path`), as device types and
/// their properties, the lowest core last (taken first).
fn free_cpu_slots(answer: &Value) -> Vec<(String, Value)> {
    let mut free: Vec<(String, Value)> = answer
        .as_array()
        .into_iter()
        .flatten()
        .filter(|slot| slot.get("qom-path").is_none())
        .filter_map(|slot| {
            let driver = slot.get("type")?.as_str()?.to_string();
            let props = slot.get("props")?.clone();
            props.is_object().then_some((driver, props))
        })
        .collect();
    let key = |props: &Value| {
        ["socket-id", "die-id", "core-id", "thread-id"]
            .map(|k| props.get(k).and_then(Value::as_u64).unwrap_or(0))
    };
    free.sort_by_key(|(_, props)| std::cmp::Reverse(key(props)));
    free
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxHugepageLimitBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder,
    };

    use super::*;

    fn resources(quota: i64, period: u64, memory: i64) -> LinuxResources {
        LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .quota(quota)
                    .period(period)
                    .build()
                    .unwrap(),
            )
            .memory(LinuxMemoryBuilder::default().limit(memory).build().unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn a_container_asks_its_quota_and_its_limits() {
        assert_eq!(
            demand(&resources(200_000, 100_000, 1 << 30)),
            Demand {
                cpus: 2.0,
                memory_mib: 1024
            }
        );
        // No quota (-1, or 0) and no limit (0, -1): nothing.
        assert_eq!(demand(&resources(-1, 100_000, -1)), Demand::default());
        assert_eq!(demand(&LinuxResources::default()), Demand::default());
        let huge = LinuxResourcesBuilder::default()
            .hugepage_limits(vec![LinuxHugepageLimitBuilder::default()
                .page_size("2MB")
                .limit(256 << 20)
                .build()
                .unwrap()])
            .build()
            .unwrap();
        assert_eq!(demand(&huge).memory_mib, 256);
    }

    #[test]
    fn the_vm_is_its_default_plus_what_its_containers_ask_within_the_caps() {
        let base = Size {
            vcpus: 1,
            memory_mib: 512,
        };
        let max = Size {
            vcpus: 4,
            memory_mib: 4096,
        };
        let half = Demand {
            cpus: 0.5,
            memory_mib: 129,
        };
        assert_eq!(target(base, max, []), base);
        // 0.5 + 0.5 CPUs are one more vCPU; 258 MiB, in 2 MiB blocks.
        assert_eq!(
            target(base, max, [half, half]),
            Size {
                vcpus: 2,
                memory_mib: 770
            }
        );
        let big = Demand {
            cpus: 16.0,
            memory_mib: 64 << 10,
        };
        assert_eq!(target(base, max, [big]), max);
    }

    #[test]
    fn a_pod_asks_what_kubelet_put_on_its_sandbox() {
        let annotations = HashMap::from([
            (POD_CPU_QUOTA.to_string(), "200000".to_string()),
            (POD_CPU_PERIOD.to_string(), "100000".to_string()),
            (POD_MEMORY.to_string(), (1u64 << 30).to_string()),
            (
                "io.kubernetes.cri.sandbox-cpu-shares".to_string(),
                "2048".to_string(),
            ),
        ]);
        assert_eq!(
            pod_demand(Some(&annotations)),
            Demand {
                cpus: 2.0,
                memory_mib: 1024
            }
        );
        assert_eq!(pod_demand(None), Demand::default());
        let bad = HashMap::from([(POD_MEMORY.to_string(), "lots".to_string())]);
        assert_eq!(pod_demand(Some(&bad)), Demand::default());
    }

    #[test]
    fn free_vcpu_slots_are_taken_lowest_core_first() {
        let answer = json!([
            {"type": "max-x86_64-cpu", "vcpus-count": 1,
             "props": {"core-id": 3, "thread-id": 0, "socket-id": 0}},
            {"type": "max-x86_64-cpu", "vcpus-count": 1,
             "props": {"core-id": 1, "thread-id": 0, "socket-id": 0}},
            {"type": "max-x86_64-cpu", "vcpus-count": 1, "qom-path": "/machine/unattached/device[0]",
             "props": {"core-id": 0, "thread-id": 0, "socket-id": 0}},
            {"type": 7}
        ]);
        let mut free = free_cpu_slots(&answer);
        assert_eq!(free.len(), 2);
        assert_eq!(free.pop().unwrap().1["core-id"], 1);
        assert_eq!(free.pop().unwrap().1["core-id"], 3);
    }
}
