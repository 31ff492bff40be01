//! Enumerations that travel as fixed names (in the config file, annotations and JSON output).

/// Declares a `Copy` enum whose values are written as fixed names: serde uses the names, and the
/// enum gets `NAMES`, `from_name` and `as_str`. Exactly one variant carries `#[default]`.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant ),+
        }

        impl $name {
            /// Every accepted name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The value written as `name`, if `name` is accepted.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $( $text => Some(Self::$variant), )+
                    _ => None,
                }
            }

            /// The name of this value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $text ),+
                }
            }
        }
    };
}
pub(crate) use named_enum;

named_enum! {
    /// The hypervisor that runs a VM sandbox.
    HypervisorType {
        /// QEMU/KVM.
        #[default]
        Qemu => "qemu",
    }
}

named_enum! {
    /// How the container root file systems are shared with the guest.
    SharedFs {
        /// virtio-9p (9pfs).
        Virtio9p => "virtio-9p",
        /// virtio-fs (needs the virtiofsd daemon on the host).
        #[default]
        VirtioFs => "virtio-fs",
    }
}

named_enum! {
    /// The driver for block devices attached to the guest.
    BlockDeviceDriver {
        /// virtio-scsi.
        #[default]
        VirtioScsi => "virtio-scsi",
        /// virtio-blk over PCI.
        VirtioBlk => "virtio-blk",
        /// virtio-blk over MMIO.
        VirtioMmio => "virtio-mmio",
        /// NVDIMM.
        Nvdimm => "nvdimm",
        /// virtio-blk over CCW (s390x).
        VirtioBlkCcw => "virtio-blk-ccw",
    }
}

named_enum! {
    /// The virtio-fs cache mode.
    VirtioFsCache {
        /// No caching.
        None => "none",
        /// Cache with a timeout.
        #[default]
        Auto => "auto",
        /// Cache everything.
        Always => "always",
    }
}

named_enum! {
    /// How the VM is connected to the container network interface.
    InterworkingModel {
        /// The hypervisor's default.
        Default => "default",
        /// A macvtap device per interface.
        Macvtap => "macvtap",
        /// Traffic control filters redirecting between the veth and a tap device.
        #[default]
        TcFilter => "tcfilter",
        /// No interworking.
        None => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in SharedFs::NAMES {
            assert_eq!(SharedFs::from_name(name).map(SharedFs::as_str), Some(*name));
        }
        for name in BlockDeviceDriver::NAMES {
            let value = BlockDeviceDriver::from_name(name);
            assert_eq!(value.map(BlockDeviceDriver::as_str), Some(*name));
        }
        assert_eq!(InterworkingModel::from_name("bridge"), None);
        let json = serde_json::to_string(&VirtioFsCache::Always).unwrap_or_default();
        assert_eq!(json, "\"always\"");
    }
}
