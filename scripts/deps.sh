#!/usr/bin/env bash
# Install what building and testing vessel needs, idempotently (Debian bookworm).
#
#   scripts/deps.sh        base packages (make deps)
#   scripts/deps.sh vm     QEMU from bookworm-backports, the guest kernel (make deps-vm)
#   scripts/deps.sh sid DEST PKG...
#                          unpack packages of Debian's unstable suite (sid) under DEST, never
#                          installing them: the newest containerd for the tests, the guest's crun.
#                          DEST/.packages lists what is there; an unchanged list is kept.
#
# Only runs `apt-get update` / `apt-get install` when something is missing.
# Also adds the bookworm-backports suite as
# /etc/apt/sources.list.d/bookworm-backports.sources, with the URIs and
# Signed-By keyring of the main suite in debian.sources.
set -euo pipefail

BASE_PACKAGES=(
    containerd runc crun containernetworking-plugins # runtimes, CNI plugins
    busybox-static gcc libc6-dev                     # test images (static pause)
    iproute2 util-linux mount coreutils findutils    # scripts/containerd.sh
    tar gzip make                                    # build-images.sh, Makefile
    protobuf-compiler                                # CRI client of the tests (k8s-cri)
    bsdutils                                         # script(1): tty tests
    nftables                                         # port forwarding into vm pods
    libseccomp-dev                                   # the agent's built-in runtime (seccomp)
    libelf-dev zlib1g-dev                            # ... and its device rules (libbpf)
)
VM_PACKAGES=(qemu-system-x86)
# virtiofsd is not in bookworm: built from crates.io (what it links, and the version).
VIRTIOFSD=/usr/libexec/virtiofsd
VIRTIOFSD_VERSION=1.14.0
VIRTIOFSD_BUILD_PACKAGES=(libseccomp-dev libcap-ng-dev pkg-config)
# The guest image (make guest): Debian's kernel and its modules, and the tools that unpack
# and pack them.
GUEST_PACKAGES=(linux-image-amd64 cpio xz-utils zstd kmod)
BACKPORTS=/etc/apt/sources.list.d/bookworm-backports.sources
MAIN_SOURCES=/etc/apt/sources.list.d/debian.sources

log() { echo "deps: $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }

UPDATED=0
apt_update() {
    [ $UPDATED = 1 ] && return 0
    log "apt-get update"
    as_root apt-get update -qq
    UPDATED=1
}

apt_install() { # [-t SUITE] PKGS...
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@"
}

# "URIS|KEYRING" of the machine's own Debian entry (the main suite's stanza): other suites are
# fetched from the same archive with the same keyring.
main_source() {
    local uris="" keyring=""
    if [ -r "$MAIN_SOURCES" ]; then
        # first deb822 stanza whose Suites has the plain release (not -security)
        local found
        found=$(awk '
            function flush() {
                if (!done && suites ~ /(^| )bookworm( |$)/ && uris != "") {
                    print uris "|" key; done = 1
                }
                uris = ""; suites = ""; key = ""
            }
            /^[[:space:]]*$/ { flush(); next }
            /^[[:space:]]*#/ { next }
            /^URIs:/      { sub(/^URIs:[[:space:]]*/, "");      uris = $0 }
            /^Suites:/    { sub(/^Suites:[[:space:]]*/, "");    suites = $0 }
            /^Signed-By:/ { sub(/^Signed-By:[[:space:]]*/, ""); key = $0 }
            END { flush() }
        ' "$MAIN_SOURCES")
        uris=${found%%|*}
        keyring=${found#*|}
    fi
    if [ -z "$uris" ] && [ -r /etc/apt/sources.list ]; then
        uris=$(awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' /etc/apt/sources.list)
    fi
    [ -n "$uris" ] || { log "no bookworm entry in $MAIN_SOURCES or /etc/apt/sources.list"; exit 1; }
    [ -n "$keyring" ] || keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    echo "$uris|$keyring"
}

# The bookworm-backports suite, from the main suite's URIs and keyring.
add_backports() {
    local source uris keyring
    source=$(main_source)
    uris=${source%%|*}
    keyring=${source#*|}

    local want
    want=$(printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' "$uris" "$keyring")
    if [ -f "$BACKPORTS" ] && [ "$(cat "$BACKPORTS")" = "$want" ]; then
        return 0
    fi
    log "writing $BACKPORTS ($uris)"
    printf '%s\n' "$want" | as_root tee "$BACKPORTS" >/dev/null
    UPDATED=0 # the new suite needs an update before use
    return 0
}

base() {
    add_backports
    local missing=() p
    for p in "${BASE_PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        apt_update
        apt_install "${missing[@]}"
    else
        log "all base packages present"
    fi
}

vm() {
    add_backports
    local missing=() p v
    for p in "${VM_PACKAGES[@]}"; do
        v=$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || true)
        if ! installed "$p" || [[ "$v" != *bpo* ]]; then missing+=("$p"); fi
    done
    local guest=()
    for p in "${GUEST_PACKAGES[@]}"; do installed "$p" || guest+=("$p"); done
    if [ ${#guest[@]} -gt 0 ]; then
        log "installing ${guest[*]}"
        apt_update
        apt_install "${guest[@]}"
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]} from bookworm-backports"
        apt_update
        apt_install -t bookworm-backports "${missing[@]}"
    else
        log "VM packages present ($(dpkg-query -W -f='${Package} ${Version}' "${VM_PACKAGES[@]}" | tr '\n' ' '))"
    fi
}

# virtiofsd for shared_fs = "virtio-fs", built once with cargo.
virtiofsd() {
    if [ -x "$VIRTIOFSD" ] && "$VIRTIOFSD" --version 2>/dev/null | grep -q "$VIRTIOFSD_VERSION"; then
        log "virtiofsd $VIRTIOFSD_VERSION present"
        return 0
    fi
    local missing=() p root
    for p in "${VIRTIOFSD_BUILD_PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        apt_update
        apt_install "${missing[@]}"
    fi
    root=$(mktemp -d /tmp/virtiofsd.XXXXXX)
    log "building virtiofsd $VIRTIOFSD_VERSION (crates.io)"
    cargo install --quiet --locked --version "$VIRTIOFSD_VERSION" --root "$root" virtiofsd
    as_root install -D -m 0755 "$root/bin/virtiofsd" "$VIRTIOFSD"
    rm -rf "$root"
}

# Packages of sid, downloaded with apt into a private state directory (its own lists, cache
# and sources: the machine's apt is not touched) and unpacked with dpkg-deb under DEST.
sid() { # DEST PKG...
    local dest=${1:?usage: deps.sh sid DEST PKG...}
    shift
    [ $# -gt 0 ] || { log "sid: no packages named"; exit 2; }
    if [ -f "$dest/.packages" ] && [ "$(cut -d' ' -f1 "$dest/.packages")" = "$(printf '%s\n' "$@")" ]; then
        log "sid: $(tr '\n' ' ' <"$dest/.packages")present in $dest"
        return 0
    fi
    local state source
    state=$(mktemp -d /tmp/vessel-sid-apt.XXXXXX)
    # shellcheck disable=SC2064
    trap "rm -rf '$state'" RETURN
    source=$(main_source)
    mkdir -p "$state"/{lists/partial,cache/archives/partial,sources,debs}
    printf 'Types: deb\nURIs: %s\nSuites: sid\nComponents: main\nSigned-By: %s\n' \
        "${source%%|*}" "${source#*|}" >"$state/sources/sid.sources"
    touch "$state/status"
    cat >"$state/apt.conf" <<EOF
Dir::State "$state";
Dir::State::Lists "$state/lists";
Dir::State::status "$state/status";
Dir::Cache "$state/cache";
Dir::Etc::SourceList "/dev/null";
Dir::Etc::SourceParts "$state/sources";
Dir::Etc::Preferences "/dev/null";
Dir::Etc::PreferencesParts "/dev/null";
APT::Architecture "amd64";
APT::Sandbox::User "root";
EOF
    log "sid: apt-get update (private state $state)"
    APT_CONFIG=$state/apt.conf apt-get update -qq
    (cd "$state/debs" && APT_CONFIG=$state/apt.conf apt-get download -qq "$@")
    rm -rf "$dest"
    mkdir -p "$dest"
    local deb pkg
    for deb in "$state"/debs/*.deb; do dpkg-deb -x "$deb" "$dest"; done
    for pkg in "$@"; do
        echo "$pkg $(dpkg-deb -f "$state"/debs/"${pkg}"_*.deb Version)"
    done >"$dest/.packages"
    log "sid: unpacked $(tr '\n' ' ' <"$dest/.packages")in $dest"
}

case "${1:-base}" in
    base) base ;;
    vm) vm && virtiofsd ;;
    sid) shift; sid "$@" ;;
    *) echo "usage: $0 [base|vm|sid DEST PKG...]" >&2; exit 2 ;;
esac
