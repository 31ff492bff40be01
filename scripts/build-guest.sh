#!/usr/bin/env bash
# Builds vessel's guest image from Debian packages only, offline and reproducibly:
#
#   OUT/vmlinux          the kernel of linux-image-amd64, uncompressed (its PVH entry boots
#                        without unpacking xz under emulation)
#   OUT/initramfs.cpio   uncompressed newc cpio, sorted, every mtime 0:
#                          /init                 vessel-agent (static)
#                          /usr/bin/crun         sid's (it runs every spec version containerd
#                                                writes, 1.0 to 1.2.x; bookworm's refuses 1.2),
#                                                with the shared libraries it links, from sid too
#                          /bin/busybox          for debugging (rdinit=/bin/busybox)
#                          /lib/modules/<kver>/  the VM's device and file system modules,
#                                                with their own modules.dep
#   OUT/kernel-release   the kernel's release
#
#   scripts/build-guest.sh OUT AGENT SID  (make guest; AGENT: the release vessel-agent; SID:
#                                          crun and its libraries unpacked by `deps.sh sid`)
set -euo pipefail

OUT=${1:?usage: build-guest.sh OUT AGENT}
AGENT=${2:?usage: build-guest.sh OUT AGENT SID}
SID=${3:?usage: build-guest.sh OUT AGENT SID}
# The modules of the image, with their dependencies: PCI transport, the agent's serial
# port, the shared directory (9p or virtio-fs), networking, entropy. The agent loads those
# of the devices the VM has (modules.alias), and the shared directory's file system.
MODULES=(virtio_pci virtio_console 9pnet_virtio 9p virtiofs virtio_net virtio_rng)

log() { echo "build-guest: $*" >&2; }
die() { log "$*"; exit 1; }

[ -x "$AGENT" ] || die "no agent binary at $AGENT"
file_type=$(od -An -c -N4 "$AGENT" | tr -d ' ')
[ "$file_type" = '177ELF' ] || die "$AGENT is not an ELF binary"
if readelf -l "$AGENT" | grep -q 'Requesting program interpreter'; then
    die "$AGENT is dynamically linked: build it with -C target-feature=+crt-static"
fi

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
install -m 0755 "$AGENT" "$ROOT/init"
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

# The modules and a modules.dep of just them.
MODDIR=/lib/modules/$KVER
mkdir -p "$ROOT$MODDIR"
modprobe -a -S "$KVER" --show-depends "${MODULES[@]}" | awk '$1 == "insmod" { print $2 }' | sort -u >"$TMP/modules"
while read -r path; do
    rel=${path#"$MODDIR"/}
    mkdir -p "$ROOT$MODDIR/$(dirname "$rel")"
    cp "$path" "$ROOT$MODDIR/$rel"
done <"$TMP/modules"
sed "s|^$MODDIR/||" "$TMP/modules" >"$TMP/wanted"
awk -F: 'NR == FNR { want[$0] = 1; next } ($1 in want)' "$TMP/wanted" "$MODDIR/modules.dep" >"$ROOT$MODDIR/modules.dep"
[ "$(wc -l <"$ROOT$MODDIR/modules.dep")" = "$(wc -l <"$TMP/wanted")" ] || die "modules.dep misses modules"
# Their device aliases (`alias virtio:d00000001v* virtio_net`), by which the agent loads them.
sed 's|.*/||; s|\.ko.*||; s|-|_|g' "$TMP/wanted" >"$TMP/names"
awk 'NR == FNR { want[$0] = 1; next } $1 == "alias" && $2 ~ /:/ { m = $3; gsub("-", "_", m); if (m in want) print }' \
    "$TMP/names" "$MODDIR/modules.alias" >"$ROOT$MODDIR/modules.alias"
grep -q ' virtio_pci$' "$ROOT$MODDIR/modules.alias" || die "modules.alias has no alias for virtio_pci"

# 3. A reproducible archive: sorted names, fixed owners and times.
find "$ROOT" -exec touch -h -d @0 {} +
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible) >"$TMP/initramfs.cpio"

mv "$TMP/vmlinux" "$OUT/vmlinux"
mv "$TMP/initramfs.cpio" "$OUT/initramfs.cpio"
echo "$KVER" >"$OUT/kernel-release"
log "$OUT/vmlinux ($(du -k "$OUT/vmlinux" | cut -f1) KiB), $OUT/initramfs.cpio ($(du -k "$OUT/initramfs.cpio" | cut -f1) KiB), kernel $KVER"
