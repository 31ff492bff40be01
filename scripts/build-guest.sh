#!/usr/bin/env bash
# Builds vessel's guest image from Debian packages only, offline and reproducibly:
#
#   OUT/vmlinux          the kernel of linux-image-amd64, uncompressed (its PVH entry boots
#                        without unpacking xz under emulation)
#   OUT/initramfs.cpio   uncompressed newc cpio, sorted, every mtime 0:
#                          /init                 vessel-agent (static), in /bin; /bin/modprobe
#                          /usr/bin/crun         sid's (it runs every spec version containerd
#                                                writes, 1.0 to 1.2.x; bookworm's refuses 1.2),
#                                                with the shared libraries it links, from sid too
#                          /bin/busybox          for debugging (rdinit=/bin/busybox)
#                          /lib/modules/<kver>/  the VM's device and file system modules,
#                                                with their own modules.dep
#   OUT/modules/<kver>/  modules loaded on demand (bridge, veth, netfilter, overlay, ...),
#                        shared read-only with each VM, with their modules.dep/alias/devname
#   OUT/runtime-features.json  the guest crun's features (runtime-spec), for the shim's -info
#   OUT/kernel-release   the kernel's release
#
#   scripts/build-guest.sh OUT AGENT SID  (make guest; AGENT: the release vessel-agent; SID:
#                                          crun and its libraries unpacked by `deps.sh sid`)
set -euo pipefail

OUT=${1:?usage: build-guest.sh OUT AGENT SID}
AGENT=${2:?usage: build-guest.sh OUT AGENT SID}
SID=${3:?usage: build-guest.sh OUT AGENT SID}
# The modules of the image, with their dependencies: PCI transport, the agent's serial
# port, the shared directory (9p or virtio-fs), networking, entropy, memory plugged in
# (virtio-mem). The agent loads those of the devices the VM has (modules.alias), and the
# shared directory's file system.
MODULES=(virtio_pci virtio_console 9pnet_virtio 9p virtiofs virtio_net virtio_rng virtio_mem)
# What a privileged container can do with kata's guest kernel (built in there): bridges,
# virtual links and tunnels, netfilter (nftables and iptables, NAT, conntrack), traffic
# control, overlay and FUSE file systems. Loaded on demand, not at boot.
ON_DEMAND_MODULES=(
    bridge br_netfilter veth tun macvlan ipvlan vxlan 8021q dummy ipip
    overlay fuse
    nf_tables nft_chain_nat nft_compat nft_ct nft_masq nft_nat nft_reject_inet nft_fib_inet
    nf_conntrack nf_nat ip_tables ip6_tables iptable_filter iptable_nat iptable_mangle
    iptable_raw ip6table_filter ip6table_nat ip6table_mangle ipt_REJECT ip6t_REJECT
    xt_conntrack xt_addrtype xt_comment xt_mark xt_multiport xt_MASQUERADE xt_REDIRECT
    xt_nat xt_state xt_tcpudp xt_LOG xt_limit xt_CHECKSUM
    sch_htb sch_ingress sch_netem cls_u32 cls_bpf act_mirred
)

log() { echo "build-guest: $*" >&2; }
die() { log "$*"; exit 1; }

[ -x "$AGENT" ] || die "no agent binary at $AGENT"
file_type=$(od -An -c -N4 "$AGENT" | tr -d ' ')
[ "$file_type" = '177ELF' ] || die "$AGENT is not an ELF binary"
if readelf -l "$AGENT" | grep -q 'Requesting program interpreter'; then
    die "$AGENT is dynamically linked: build it with -C target-feature=+crt-static"
fi
# A library linked as a shared one into the static agent leaves its functions undefined: the
# agent would crash at start (a weak undefined symbol is only glibc's optional hooks).
undefined=$(readelf --dyn-syms -W "$AGENT" | awk '$5 == "GLOBAL" && $7 == "UND" {print $8}')
[ -z "$undefined" ] || die "$AGENT leaves symbols undefined (a shared library linked in): $(echo $undefined)"

# The newest kernel linux-image-amd64 installed.
KVER=$(find /lib/modules -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
[ -n "$KVER" ] && [ -f "/boot/vmlinuz-$KVER" ] || die "no kernel: make deps-vm installs linux-image-amd64"

mkdir -p "$OUT"
TMP=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# 1. The uncompressed kernel: the xz stream inside the bzImage.
extract_vmlinux() {
    local image=$1 out=$2 offset
    offset=$(LC_ALL=C grep -aobUP '\xfd7zXZ\x00' "$image" | head -n 1 | cut -d: -f1 || true)
    [ -n "$offset" ] || die "$image: no xz stream (only xz-compressed kernels are handled)"
    tail -c "+$((offset + 1))" "$image" | xz -dc --single-stream >"$out" 2>/dev/null || true
    [ "$(od -An -c -N4 "$out" | tr -d ' ')" = '177ELF' ] || die "$image: the xz stream is not an ELF kernel"
}
extract_vmlinux "/boot/vmlinuz-$KVER" "$TMP/vmlinux"

# 2. The initramfs tree.
ROOT=$TMP/root
mkdir -p "$ROOT"/{bin,dev,proc,sys,run,tmp,etc,usr/bin,lib64}
# The agent is /init, and the guest's modprobe (the kernel runs /bin/modprobe for a module it
# needs); it keeps /bin once it left the initramfs.
install -m 0755 "$AGENT" "$ROOT/bin/vessel-agent"
ln -s bin/vessel-agent "$ROOT/init"
ln -s vessel-agent "$ROOT/bin/modprobe"
install -m 0755 /bin/busybox "$ROOT/bin/busybox"
ln -s busybox "$ROOT/bin/sh"
# The kernel opens /dev/console for init before anything is mounted.
mknod -m 0600 "$ROOT/dev/console" c 5 1
mknod -m 0666 "$ROOT/dev/null" c 1 3

# crun and every shared library it loads (as sid's own loader resolves them in SID), in the
# multiarch directory; the loader at the path crun names (PT_INTERP).
LIBDIR=usr/lib/x86_64-linux-gnu
[ -x "$SID/usr/bin/crun" ] && [ -x "$SID/$LIBDIR/ld-linux-x86-64.so.2" ] || die "no crun or loader in $SID (deps.sh sid)"
install -m 0755 "$SID/usr/bin/crun" "$ROOT/usr/bin/crun"
mkdir -p "$ROOT/$LIBDIR"
"$SID/$LIBDIR/ld-linux-x86-64.so.2" --library-path "$SID/$LIBDIR" --list "$SID/usr/bin/crun" >"$TMP/libs"
! grep -q 'not found' "$TMP/libs" || die "crun's libraries are not all in $SID: $(grep 'not found' "$TMP/libs")"
awk '$2 == "=>" && $3 ~ /^\// { print $3 }' "$TMP/libs" | while read -r lib; do
    install -m 0755 "$(readlink -f "$lib")" "$ROOT/$LIBDIR/$(basename "$lib")"
done
ln -s "../$LIBDIR/ld-linux-x86-64.so.2" "$ROOT/lib64/ld-linux-x86-64.so.2"
# What it supports (runtime-spec features.md), for the shim's -info.
"$SID/$LIBDIR/ld-linux-x86-64.so.2" --library-path "$SID/$LIBDIR" "$SID/usr/bin/crun" features >"$TMP/runtime-features.json"

# A module tree: modules NAMES... and what they need, copied under DEST as under
# /lib/modules/KVER, with a modules.dep, modules.alias and modules.devname of just them.
module_tree() { # DEST NAMES...
    local dest=$1 moddir=/lib/modules/$KVER path rel
    shift
    mkdir -p "$dest"
    modprobe -a -S "$KVER" --show-depends "$@" | awk '$1 == "insmod" { print $2 }' | sort -u >"$TMP/modules"
    while read -r path; do
        rel=${path#"$moddir"/}
        mkdir -p "$dest/$(dirname "$rel")"
        cp "$path" "$dest/$rel"
    done <"$TMP/modules"
    sed "s|^$moddir/||" "$TMP/modules" >"$TMP/wanted"
    awk -F: 'NR == FNR { want[$0] = 1; next } ($1 in want)' "$TMP/wanted" "$moddir/modules.dep" >"$dest/modules.dep"
    [ "$(wc -l <"$dest/modules.dep")" = "$(wc -l <"$TMP/wanted")" ] || die "modules.dep misses modules"
    # Their aliases: of devices (`alias virtio:d00000001v* virtio_net`), by which the agent
    # loads drivers, and the names the kernel asks for (`alias rtnl-link-veth veth`).
    sed 's|.*/||; s|\.ko.*||; s|-|_|g' "$TMP/wanted" >"$TMP/names"
    awk 'NR == FNR { want[$0] = 1; next } $1 == "alias" { m = $3; gsub("-", "_", m); if (m in want) print }' \
        "$TMP/names" "$moddir/modules.alias" >"$dest/modules.alias"
    awk 'NR == FNR { want[$0] = 1; next } !/^#/ { m = $1; gsub("-", "_", m); if (m in want) print }' \
        "$TMP/names" "$moddir/modules.devname" >"$dest/modules.devname"
}
MODDIR=/lib/modules/$KVER
module_tree "$ROOT$MODDIR" "${MODULES[@]}"
grep -q ' virtio_pci$' "$ROOT$MODDIR/modules.alias" || die "modules.alias has no alias for virtio_pci"

# The modules a privileged container may ask the kernel for, outside the image: the host
# shares OUT/modules with each VM read-only, and the kernel's module requests load them
# from there (the agent is the guest's modprobe).
rm -rf "$TMP/modules-tree"
module_tree "$TMP/modules-tree/$KVER" "${ON_DEMAND_MODULES[@]}"

# 3. A reproducible archive: sorted names, fixed owners and times.
find "$ROOT" -exec touch -h -d @0 {} +
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible) >"$TMP/initramfs.cpio"

rm -rf "$OUT/modules"
mv "$TMP/modules-tree" "$OUT/modules"
mv "$TMP/runtime-features.json" "$OUT/runtime-features.json"
mv "$TMP/vmlinux" "$OUT/vmlinux"
mv "$TMP/initramfs.cpio" "$OUT/initramfs.cpio"
echo "$KVER" >"$OUT/kernel-release"
log "$OUT/vmlinux ($(du -k "$OUT/vmlinux" | cut -f1) KiB), $OUT/initramfs.cpio ($(du -k "$OUT/initramfs.cpio" | cut -f1) KiB), kernel $KVER"
