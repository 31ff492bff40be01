#!/usr/bin/env bash
# Build the two container images the integration tests need, offline.
#
#   scripts/build-images.sh OUTDIR
#
# Produces, in OUTDIR:
#   busybox.tar  OCI image archive, docker.io/library/busybox:latest
#                (rootfs: /bin/busybox from busybox-static + applet symlinks,
#                 /etc/passwd, /etc/group, /tmp, /proc, /sys, /dev; Cmd ["sh"])
#   pause.tar    OCI image archive, registry.k8s.io/pause:3.6
#                (rootfs: /pause built statically from tests/images/pause.c;
#                 Entrypoint ["/pause"], User 65535:65535 like the real one)
#   images.txt   "<image name> <archive file>" per line
#
# Both archives are oci-layout directories (oci-layout, index.json,
# blobs/sha256/...) packed with a reproducible tar, importable with
#   ctr -n NAMESPACE images import OUTDIR/busybox.tar
# Each index entry carries io.containerd.image.name and
# org.opencontainers.image.ref.name so ctr names the image by itself.
#
# Inputs are hashed into OUTDIR/.inputs; when they did not change the
# build is skipped. Needs: bash, coreutils, GNU tar, gzip, gcc (+ libc6-dev
# for -static) and busybox-static. No network.
set -euo pipefail

usage() { echo "usage: $0 OUTDIR" >&2; exit 2; }
[ $# -eq 1 ] || usage

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="$REPO/scripts/build-images.sh"
BUSYBOX=${BUSYBOX:-/bin/busybox}
PAUSE_SRC="$REPO/tests/images/pause.c"
CC=${CC:-gcc}

BUSYBOX_NAME=docker.io/library/busybox:latest
PAUSE_NAME=registry.k8s.io/pause:3.6
EPOCH=1970-01-01T00:00:00Z
PATH_ENV=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

die() { echo "build-images: $*" >&2; exit 1; }

[ -x "$BUSYBOX" ] || die "$BUSYBOX missing (apt-get install busybox-static, or run make deps)"
"$BUSYBOX" --list >/dev/null 2>&1 || die "$BUSYBOX does not list its applets"
[ -f "$PAUSE_SRC" ] || die "$PAUSE_SRC missing"
command -v "$CC" >/dev/null || die "$CC missing (apt-get install gcc libc6-dev)"

case "$(uname -m)" in
    x86_64) ARCH=amd64 ;;
    aarch64) ARCH=arm64 ;;
    *) ARCH=$(uname -m) ;;
esac

mkdir -p "$1"
OUT=$(cd "$1" && pwd)

# ---- cache ---------------------------------------------------------------
inputs() {
    sha256sum "$SELF" "$BUSYBOX" "$PAUSE_SRC"
    "$CC" --version | head -n1
    echo "arch $ARCH"
}
NEW_INPUTS=$(inputs)
if [ -s "$OUT/busybox.tar" ] && [ -s "$OUT/pause.tar" ] && [ -f "$OUT/.inputs" ] &&
    [ "$(cat "$OUT/.inputs")" = "$NEW_INPUTS" ]; then
    echo "build-images: $OUT is up to date"
    exit 0
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/vessel-images.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
umask 022

# ---- helpers ---------------------------------------------------------------
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# reproducible tar of the contents of dir $1 into file $2
rtar() {
    (cd "$1" && find . -mindepth 1 -exec touch -h -d @0 {} +)
    tar -C "$1" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
        --format=gnu -cf "$2" .
}

# put file $1 into layout $2 as a blob; prints its digest (hex only)
blob() {
    local d
    d=$(sha "$1")
    mkdir -p "$2/blobs/sha256"
    cp "$1" "$2/blobs/sha256/$d"
    echo "$d"
}

# make_image NAME ROOTFS CONFIG_JSON(the "config" object) OUTFILE
make_image() {
    local name=$1 rootfs=$2 cfg=$3 outfile=$4
    local w
    w="$WORK/$(basename "$outfile" .tar)"
    local layout="$w/layout"
    mkdir -p "$layout"

    rtar "$rootfs" "$w/layer.tar"
    local diffid
    diffid=$(sha "$w/layer.tar")
    gzip -n -9 -c "$w/layer.tar" >"$w/layer.tar.gz"
    local ldig lsize
    ldig=$(blob "$w/layer.tar.gz" "$layout")
    lsize=$(size "$w/layer.tar.gz")

    printf '{"created":"%s","architecture":"%s","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"%s","created_by":"scripts/build-images.sh"}]}' \
        "$EPOCH" "$ARCH" "$cfg" "$diffid" "$EPOCH" >"$w/config.json"
    local cdig csize
    cdig=$(blob "$w/config.json" "$layout")
    csize=$(size "$w/config.json")

    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
        "$cdig" "$csize" "$ldig" "$lsize" >"$w/manifest.json"
    local mdig msize
    mdig=$(blob "$w/manifest.json" "$layout")
    msize=$(size "$w/manifest.json")

    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
        "$mdig" "$msize" "$ARCH" "$name" "$name" >"$layout/index.json"
    printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"

    rtar "$layout" "$outfile.tmp"
    mv -f "$outfile.tmp" "$outfile"
    echo "build-images: $name -> $outfile (manifest sha256:$mdig)"
}

# ---- busybox -------------------------------------------------------------
R="$WORK/busybox-rootfs"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc,root,home,tmp,var/tmp,proc,sys,dev,run}
chmod 1777 "$R/tmp" "$R/var/tmp"
chmod 0700 "$R/root"
cp "$BUSYBOX" "$R/bin/busybox"
chmod 0755 "$R/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    case "$applet" in busybox | */*) continue ;; esac
    ln -s busybox "$R/bin/$applet"
done
ln -s /bin/env "$R/usr/bin/env"
cat >"$R/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
EOF
cat >"$R/etc/group" <<'EOF'
root:x:0:
daemon:x:1:
nogroup:x:65534:
EOF
chmod 0644 "$R/etc/passwd" "$R/etc/group"
: >"$R/etc/hosts"
: >"$R/etc/resolv.conf"
echo busybox >"$R/etc/hostname"
make_image "$BUSYBOX_NAME" "$R" \
    "{\"Env\":[\"PATH=$PATH_ENV\"],\"Cmd\":[\"sh\"]}" "$OUT/busybox.tar"

# ---- pause ---------------------------------------------------------------
P="$WORK/pause-rootfs"
mkdir -p "$P"
"$CC" -static -Os -s -Wall -o "$P/pause" "$PAUSE_SRC"
chmod 0755 "$P/pause"
make_image "$PAUSE_NAME" "$P" \
    "{\"Env\":[\"PATH=$PATH_ENV\"],\"Entrypoint\":[\"/pause\"],\"User\":\"65535:65535\"}" "$OUT/pause.tar"

printf '%s %s\n%s %s\n' "$BUSYBOX_NAME" "$OUT/busybox.tar" "$PAUSE_NAME" "$OUT/pause.tar" >"$OUT/images.txt"
printf '%s\n' "$NEW_INPUTS" >"$OUT/.inputs"
