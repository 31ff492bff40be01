#!/usr/bin/env bash
# A private containerd for tests, demos and benchmarks. Never touches the
# system containerd (/run/containerd/containerd.sock, /var/lib/containerd).
#
#   scripts/containerd.sh start  DIR   start (idempotent; cleans up a crashed DIR first)
#   scripts/containerd.sh stop   DIR   stop, kill leftover shims/containers, unmount, rm DIR
#   scripts/containerd.sh restart DIR  SIGTERM containerd alone and start it again with the
#                                      same config; shims and containers keep running
#   scripts/containerd.sh env    DIR   print shell exports for DIR
#   scripts/containerd.sh status DIR   exit 0 when the containerd in DIR answers
#
# Layout of DIR:
#   config.toml  containerd.sock (+ .ttrpc)  debug.sock  containerd.log
#   containerd.pid  root/  state/  opt/  cni/ (conflist)  cni-ipam/
#   certs.d/ (registry hosts, containerd 2.x)  bin/ctr (the matching ctr)
#   containerd.version (e.g. 1.6.20 or 2.1.9)
#
# Environment:
#   CONTAINERD_BIN_DIR dir holding the containerd and ctr to run (start only;
#                      restart, stop and env use the ones DIR was started with).
#                      Default: the system's, from PATH. Its shims (containerd-
#                      shim-runc-v2) come first on containerd's PATH after SHIM_DIR.
#                      containerd 1.x gets a version 2 config, 2.x a version 3 one.
#   SHIM_DIR           dir holding containerd-shim-vessel-v2, prepended to
#                      containerd's PATH (default: cargo's debug output dir)
#   VESSEL_TEST_CONFIG if set, passed as the vessel runtime's ConfigPath option
#                      (CRI) and exported to containerd (and so to the shims)
#   IMAGES_DIR         where scripts/build-images.sh puts the test images
#                      (default: REPO/build/images)
#   CONTAINERD_LOG_LEVEL  containerd log level (default: info)
#
# Runtimes registered for CRI: runc (io.containerd.runc.v2, default) and
# vessel (io.containerd.vessel.v2). `ctr run --runtime io.containerd.vessel.v2`
# works without any of this (containerd resolves the shim from PATH).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CMD=${1:-}
RAW_DIR=${2:-}

die() { echo "containerd.sh: $*" >&2; exit 1; }
log() { echo "containerd.sh: $*" >&2; }

[ -n "$CMD" ] && [ -n "$RAW_DIR" ] || die "usage: $0 start|stop|restart|env|status DIR"

# ---- DIR sanity -------------------------------------------------------------
case "$RAW_DIR" in /*) DIR=$RAW_DIR ;; *) DIR=$PWD/$RAW_DIR ;; esac
DIR=$(realpath -m -- "$DIR")
case "$DIR" in
    / | /run | /run/containerd* | /var | /var/lib | /var/lib/containerd* | /tmp | /home | /root | /usr* | /etc* | /bin* | /sbin* | /lib* | /proc* | /sys* | /dev*)
        die "refusing to use $DIR as a private containerd dir" ;;
esac
[ "$DIR" != "$REPO" ] || die "refusing to use the repo itself as DIR"

SOCK=$DIR/containerd.sock
PIDFILE=$DIR/containerd.pid
CONFIG=$DIR/config.toml
LOGFILE=$DIR/containerd.log
IMAGES_DIR=${IMAGES_DIR:-$REPO/build/images}
# A unique-ish bridge name (<= 15 chars) and /24 per DIR, so two private
# containerds (say `make demo` during `make test`) do not share a bridge.
HASH=$(printf '%s' "$DIR" | sha256sum | cut -c1-6)
BRIDGE=vsl$HASH
SUBNET_OCTET=$((0x${HASH:0:2} % 200 + 20))
SUBNET=10.88.$SUBNET_OCTET.0/24
NAMESPACES="default k8s.io"
PAUSE_IMAGE=registry.k8s.io/pause:3.6
CNI_BIN_DIR=/usr/lib/cni

[ ${#SOCK} -le 100 ] || die "socket path $SOCK is too long for a unix socket (max ~100 chars); use a shorter DIR"

# The containerd binaries of DIR: those it was started with (recorded in its config), else
# CONTAINERD_BIN_DIR, else the system's.
use_bin_dir() { # DIR (empty: the system's)
    BIN_DIR=$1
    if [ -n "$BIN_DIR" ]; then
        case "$BIN_DIR" in /*) ;; *) BIN_DIR=$PWD/$BIN_DIR ;; esac
        CONTAINERD=$BIN_DIR/containerd
        CTR=$BIN_DIR/ctr
    else
        CONTAINERD=$(command -v containerd || echo containerd)
        CTR=$(command -v ctr || echo ctr)
    fi
}
recorded_bin_dir() { sed -n 's/^# containerd bin dir: //p' "$CONFIG" 2>/dev/null || true; }
if [ "$CMD" != start ] && [ -f "$CONFIG" ]; then
    use_bin_dir "$(recorded_bin_dir)"
else
    use_bin_dir "${CONTAINERD_BIN_DIR:-}"
fi

ctr_() { timeout "${CTR_TIMEOUT:-60}" "$CTR" --address "$SOCK" "$@"; }

# "2.1.9" from "containerd github.com/containerd/containerd/v2 2.1.9+unknown ..."
containerd_version() {
    "$CONTAINERD" --version | awk '{ v = $3; sub(/^v/, "", v); sub(/[~+-].*/, "", v); print v }'
}

# ---- /proc helpers -------------------------------------------------------
# argv of PID, NUL separators turned into spaces
cmdline() { { tr '\0' ' ' <"/proc/$1/cmdline"; } 2>/dev/null || true; }
argv0() { { tr '\0' '\n' <"/proc/$1/cmdline" | head -n1; } 2>/dev/null || true; }
ppid_of() { awk '/^PPid:/ {print $2}' "/proc/$1/status" 2>/dev/null || true; }
alive() { [ -n "${1:-}" ] && [ -d "/proc/$1" ] && [ "$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null)" != Z ]; }
under_dir() { case "$1" in "$DIR" | "$DIR"/*) return 0 ;; esac; return 1; }

# pids of this script and its ancestors: never kill those
ANCESTORS=" "
p=$$
while [ -n "$p" ] && [ "$p" -gt 1 ] 2>/dev/null; do
    ANCESTORS="$ANCESTORS$p "
    p=$(ppid_of "$p")
done
is_ancestor() { case "$ANCESTORS" in *" $1 "*) return 0 ;; esac; return 1; }

all_pids() { for d in /proc/[0-9]*; do echo "${d#/proc/}"; done; }

# containerd processes started with our config
containerd_pids() {
    local pid
    {
        [ -f "$PIDFILE" ] && cat "$PIDFILE"
        for pid in $(all_pids); do
            case "$(cmdline "$pid")" in *"--config $CONFIG"*) echo "$pid" ;; esac
        done
    } | sort -un | while read -r pid; do
        case "$(argv0 "$pid")" in *containerd) alive "$pid" && ! is_ancestor "$pid" && echo "$pid" ;; esac
    done
}

# shims belonging to DIR: argv0 containerd-shim-*, and argv/cwd reference DIR
shim_pids() {
    local pid cwd
    for pid in $(all_pids); do
        case "$(basename -- "$(argv0 "$pid")")" in containerd-shim*) ;; *) continue ;; esac
        is_ancestor "$pid" && continue
        cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null || true)
        case "$(cmdline "$pid")" in
            *"$DIR/"*) echo "$pid"; continue ;;
        esac
        under_dir "$cwd" && echo "$pid"
    done
}

# processes of containers that lived here: in a cgroup named after one of
# DIR's task bundles (runc: /NS/ID), or with their root under DIR
container_pids() {
    local pid root b ids="" cg id
    for b in "$DIR"/state/io.containerd.runtime.v2.task/*/*; do
        [ -d "$b" ] && ids="$ids $(basename "$b")"
    done
    for pid in $(all_pids); do
        is_ancestor "$pid" && continue
        root=$(readlink "/proc/$pid/root" 2>/dev/null || true)
        if under_dir "$root"; then echo "$pid"; continue; fi
        [ -n "$ids" ] || continue
        cg=$(cut -d: -f3 "/proc/$pid/cgroup" 2>/dev/null || true)
        for id in $ids; do
            case "$cg" in */"$id" | */"$id"/* | */"$id"$'\n'*) echo "$pid"; break ;; esac
        done
    done
    return 0
}

# all descendants of the given pids (inclusive)
with_descendants() {
    local -A keep=()
    local pid changed=1 pp
    for pid in "$@"; do keep[$pid]=1; done
    local snapshot
    snapshot=$(for pid in $(all_pids); do echo "$pid $(ppid_of "$pid")"; done)
    while [ $changed = 1 ]; do
        changed=0
        while read -r pid pp; do
            [ -n "$pp" ] || continue
            if [ -n "${keep[$pp]:-}" ] && [ -z "${keep[$pid]:-}" ]; then
                keep[$pid]=1
                changed=1
            fi
        done <<<"$snapshot"
    done
    for pid in "${!keep[@]}"; do is_ancestor "$pid" || echo "$pid"; done
}

kill_wait() { # SIG TIMEOUT_S PIDS...
    local sig=$1 t=$2 pid left i
    shift 2
    [ $# -gt 0 ] || return 0
    kill "-$sig" "$@" 2>/dev/null || true
    for ((i = 0; i < t * 10; i++)); do
        left=0
        for pid in "$@"; do alive "$pid" && left=1; done
        [ $left = 0 ] && return 0
        sleep 0.1
    done
    return 1
}

# mount points under DIR, deepest/latest first
mounts_under_dir() {
    local mp
    # field 5 of mountinfo is the mount point, with \040-style escapes
    awk '{print $5}' /proc/self/mountinfo | while read -r mp; do
        mp=$(printf '%b' "$mp")
        under_dir "$mp" && echo "$mp"
    done | tac
    return 0
}

answers() { [ -S "$SOCK" ] && timeout 5 "$CTR" --address "$SOCK" version >/dev/null 2>&1; }

# ---- stop ------------------------------------------------------------------
graceful_cleanup() {
    # Ask containerd to remove what is still there, so shims clean up after
    # themselves (unmounts, VMs, sockets). Best effort, bounded in time.
    answers || return 0
    local ns id
    for ns in $(CTR_TIMEOUT=10 ctr_ namespaces ls -q 2>/dev/null || true); do
        for id in $(CTR_TIMEOUT=10 ctr_ -n "$ns" tasks ls -q 2>/dev/null || true); do
            CTR_TIMEOUT=10 ctr_ -n "$ns" tasks kill -a -s SIGKILL "$id" >/dev/null 2>&1 || true
        done
        for id in $(CTR_TIMEOUT=10 ctr_ -n "$ns" tasks ls -q 2>/dev/null || true); do
            CTR_TIMEOUT=15 ctr_ -n "$ns" tasks delete -f "$id" >/dev/null 2>&1 || true
        done
        for id in $(CTR_TIMEOUT=10 ctr_ -n "$ns" containers ls -q 2>/dev/null || true); do
            CTR_TIMEOUT=15 ctr_ -n "$ns" containers delete "$id" >/dev/null 2>&1 || true
        done
    done
}

# shim socket of a task, as containerd 1.6 and 2.x and the Rust shim crate compute it
shim_socket() { # NS ID
    local h
    h=$(printf '%s' "$SOCK/$1/$2" | sha256sum | cut -d' ' -f1)
    echo "/run/containerd/s/$h"
}

stop() {
    [ -e "$DIR" ] || { kill_bridge; return 0; }
    graceful_cleanup

    local pids
    pids=$(containerd_pids)
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086
        kill_wait TERM 10 $pids || kill_wait KILL 5 $pids || log "containerd ($pids) would not die"
    fi

    # leftover shims (and their children: VMMs, runc inits), container processes
    local victims
    # shellcheck disable=SC2046
    victims=$(with_descendants $(shim_pids) $(container_pids) | sort -un)
    if [ -n "$victims" ]; then
        log "killing leftover processes: $(tr '\n' ' ' <<<"$victims")"
        # shellcheck disable=SC2086
        kill_wait KILL 5 $victims || log "some leftover processes would not die"
    fi

    # runc state of tasks that lived here (default runc root of the runc shim)
    local b ns id
    for b in "$DIR"/state/io.containerd.runtime.v2.task/*/*; do
        [ -d "$b" ] || continue
        id=$(basename "$b")
        ns=$(basename "$(dirname "$b")")
        if [ -d "/run/containerd/runc/$ns/$id" ] && command -v runc >/dev/null; then
            runc --root "/run/containerd/runc/$ns" delete --force "$id" >/dev/null 2>&1 || true
            rm -rf "/run/containerd/runc/$ns/$id"
        fi
        rm -f "$(shim_socket "$ns" "$id")"
    done

    # unmount everything under DIR (several passes: lazy unmounts, stacked mounts)
    local mp _pass
    for _pass in 1 2 3; do
        for mp in $(mounts_under_dir); do
            umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || log "cannot unmount $mp"
        done
        [ -z "$(mounts_under_dir)" ] && break
    done
    if [ -n "$(mounts_under_dir)" ]; then
        die "mounts remain under $DIR, not removing it: $(mounts_under_dir | tr '\n' ' ')"
    fi

    kill_bridge
    rm -rf --one-file-system -- "$DIR"
}

kill_bridge() {
    if command -v ip >/dev/null && ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link del "$BRIDGE" 2>/dev/null || log "cannot delete bridge $BRIDGE"
    fi
    return 0
}

# ---- restart ---------------------------------------------------------------
# What a node upgrade does: containerd goes away (SIGTERM) and comes back with
# the same config and state; its shims and their containers live on.
restart() {
    [ -f "$CONFIG" ] || die "no containerd was started in $DIR"
    local pids
    pids=$(containerd_pids)
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086
        kill_wait TERM 10 $pids || die "containerd ($pids) did not stop on SIGTERM"
    fi
    launch "$(sed -n 's/^# shim dir on PATH: //p' "$CONFIG")"
    log "containerd $(cat "$DIR/containerd.version" 2>/dev/null) restarted: pid $(cat "$PIDFILE")"
}

# ---- start -----------------------------------------------------------------
# Runs containerd with DIR's config and waits until it answers.
launch() { # SHIM_DIR
    # setsid: keep containerd out of the caller's process group (Ctrl-C in
    # make should go through the stop path, not kill containerd under it)
    PATH="$1${BIN_DIR:+:$BIN_DIR}:$PATH" setsid "$CONTAINERD" --config "$CONFIG" </dev/null >>"$LOGFILE" 2>&1 &
    echo $! >"$PIDFILE"

    local i
    for ((i = 0; i < 300; i++)); do
        answers && break
        if [ -z "$(containerd_pids)" ] && [ $i -gt 5 ]; then
            tail -n 30 "$LOGFILE" >&2 || true
            die "containerd exited during startup (log: $LOGFILE)"
        fi
        sleep 0.1
    done
    answers || { tail -n 30 "$LOGFILE" >&2; die "containerd did not answer on $SOCK within 30s"; }
    # setsid may have forked: record the real pid
    containerd_pids | head -n1 >"$PIDFILE"
}

write_config() {
    local shim_dir=$1 version=$2
    local apparmor=false
    if ! [ -r /sys/module/apparmor/parameters/enabled ] ||
        [ "$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null)" != Y ]; then
        apparmor=true
    fi
    local config_version=2
    case "$version" in 1.*) ;; *) config_version=3 ;; esac
    cat >"$CONFIG" <<EOT
# Private containerd $version for vessel tests, written by scripts/containerd.sh.
# shim dir on PATH: $shim_dir
# containerd bin dir: $BIN_DIR
version = $config_version
root = "$DIR/root"
state = "$DIR/state"
oom_score = 0
disabled_plugins = [
EOT
    if [ $config_version = 2 ]; then
        cat >>"$CONFIG" <<EOT
  "io.containerd.snapshotter.v1.aufs",
EOT
    else
        # containerd 2.x: NRI would listen on /var/run/nri/nri.sock, shared by the machine.
        cat >>"$CONFIG" <<EOT
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs",
  "io.containerd.differ.v1.erofs",
  "io.containerd.nri.v1.nri",
EOT
    fi
    cat >>"$CONFIG" <<EOT
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "$SOCK"

[ttrpc]
  address = "$SOCK.ttrpc"

[debug]
  address = "$DIR/debug.sock"
  level = "${CONTAINERD_LOG_LEVEL:-info}"

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$DIR/opt"
EOT
    # The runtime handlers, the same on both config versions below a different table.
    local runtimes vessel_options=""
    if [ $config_version = 2 ]; then
        runtimes='plugins."io.containerd.grpc.v1.cri".containerd.runtimes'
    else
        runtimes='plugins."io.containerd.cri.v1.runtime".containerd.runtimes'
    fi
    if [ -n "${VESSEL_TEST_CONFIG:-}" ]; then
        vessel_options="
        [$runtimes.vessel.options]
          ConfigPath = \"$VESSEL_TEST_CONFIG\""
    fi
    local handlers="
      [$runtimes.runc]
        runtime_type = \"io.containerd.runc.v2\"

      [$runtimes.vessel]
        runtime_type = \"io.containerd.vessel.v2\"
        pod_annotations = [\"io.katacontainers.*\"]
        container_annotations = [\"io.katacontainers.*\"]$vessel_options

      # Every pod in its own VM: the same shim with the vm backend's configuration.
      [$runtimes.vessel-vm]
        runtime_type = \"io.containerd.vessel.v2\"
        pod_annotations = [\"io.katacontainers.*\"]
        container_annotations = [\"io.katacontainers.*\"]
        [$runtimes.vessel-vm.options]
          ConfigPath = \"$DIR/vessel-vm.toml\"

      # The same, each pod's VM cloned from a template.
      [$runtimes.vessel-vm-template]
        runtime_type = \"io.containerd.vessel.v2\"
        pod_annotations = [\"io.katacontainers.*\"]
        container_annotations = [\"io.katacontainers.*\"]
        [$runtimes.vessel-vm-template.options]
          ConfigPath = \"$DIR/vessel-vm-template.toml\""

    if [ $config_version = 2 ]; then
        cat >>"$CONFIG" <<EOT

  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$PAUSE_IMAGE"
    restrict_oom_score_adj = true
    enable_selinux = false
    disable_apparmor = $apparmor
    netns_mounts_under_state_dir = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    disable_tcp_service = true
    enable_tls_streaming = false

    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "$CNI_BIN_DIR"
      conf_dir = "$DIR/cni"
      max_conf_num = 1

    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
$handlers
EOT
    else
        # containerd 2.x (docs/cri/config.md): the runtime side, the image side and the
        # streaming server are three plugins. Registry hosts come from certs.d/HOST/hosts.toml
        # (none: the test images are imported, never pulled).
        mkdir -p "$DIR/certs.d"
        cat >>"$CONFIG" <<EOT

  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "overlayfs"

    [plugins."io.containerd.cri.v1.images".pinned_images]
      sandbox = "$PAUSE_IMAGE"

    [plugins."io.containerd.cri.v1.images".registry]
      config_path = "$DIR/certs.d"

  [plugins."io.containerd.cri.v1.runtime"]
    restrict_oom_score_adj = true
    enable_selinux = false
    disable_apparmor = $apparmor
    netns_mounts_under_state_dir = true

    [plugins."io.containerd.cri.v1.runtime".cni]
      bin_dirs = ["$CNI_BIN_DIR"]
      conf_dir = "$DIR/cni"
      max_conf_num = 1

    [plugins."io.containerd.cri.v1.runtime".containerd]
      default_runtime_name = "runc"
$handlers

  [plugins."io.containerd.grpc.v1.cri"]
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    disable_tcp_service = true
    enable_tls_streaming = false
EOT
    fi
    write_vm_config

    mkdir -p "$DIR/cni" "$DIR/cni-ipam"
    # The loopback interface is brought up by CRI itself (it runs the
    # "loopback" plugin from bin_dir), so only the bridge network is listed.
    # No default route and no masquerading: pods reach only the subnet and
    # the host side of the bridge.
    cat >"$DIR/cni/10-vessel.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "vessel-test",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$SUBNET" }]],
        "dataDir": "$DIR/cni-ipam"
      }
    }
  ]
}
EOF
}

# The vm backend's configuration for tests: the shipped one, with the guest image of this
# checkout (VESSEL_GUEST_DIR, default build/guest; `make guest` builds it).
write_vm_config() {
    local guest=${VESSEL_GUEST_DIR:-$REPO/build/guest}
    sed -e "s|^kernel = .*|kernel = \"$guest/vmlinux\"|" \
        -e "s|^initrd = .*|initrd = \"$guest/initramfs.cpio\"|" \
        "$REPO/config/configuration-vm.toml" >"$DIR/vessel-vm.toml"
    # Each pod's VM cloned from a template of its own directory (a tmpfs the shim mounts
    # there; `stop` unmounts everything under DIR).
    cat "$DIR/vessel-vm.toml" - >"$DIR/vessel-vm-template.toml" <<EOT

[factory]
enable_template = true
template_path = "$DIR/templates"
EOT
}

start() {
    if answers && [ -n "$(containerd_pids)" ]; then
        log "containerd in $DIR is already running"
        return 0
    fi
    # crashed or half-stopped before: clean up first
    if [ -e "$DIR" ] && [ -n "$(ls -A "$DIR" 2>/dev/null)" ]; then
        log "cleaning up stale $DIR"
        local wanted=$BIN_DIR
        [ -f "$CONFIG" ] && use_bin_dir "$(recorded_bin_dir)"
        stop
        use_bin_dir "$wanted"
    fi

    [ -x "$CONTAINERD" ] || die "containerd not installed (make deps) or not in CONTAINERD_BIN_DIR"
    [ -x "$CTR" ] || die "ctr not installed (make deps) or not in CONTAINERD_BIN_DIR"
    local version
    version=$(containerd_version)
    [ -n "$version" ] || die "cannot tell the version of $CONTAINERD"

    local shim_dir=${SHIM_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/debug}
    case "$shim_dir" in /*) ;; *) shim_dir=$PWD/$shim_dir ;; esac
    [ -x "$shim_dir/containerd-shim-vessel-v2" ] ||
        log "warning: $shim_dir/containerd-shim-vessel-v2 does not exist (yet); the vessel runtime will fail"

    "$REPO/scripts/build-images.sh" "$IMAGES_DIR" >&2

    mkdir -p "$DIR"
    chmod 0711 "$DIR"
    write_config "$shim_dir" "$version"
    echo "$version" >"$DIR/containerd.version"
    mkdir -p "$DIR/bin"
    ln -sfn "$CTR" "$DIR/bin/ctr"
    launch "$shim_dir"

    local ns f
    for ns in $NAMESPACES; do
        for f in "$IMAGES_DIR/busybox.tar" "$IMAGES_DIR/pause.tar"; do
            CTR_TIMEOUT=120 ctr_ -n "$ns" images import "$f" >/dev/null ||
                die "importing $f into namespace $ns failed (log: $LOGFILE)"
        done
    done

    # containerd 2.x splits CRI into the runtime and image plugins and the gRPC service
    local plugins cri_plugins='io\.containerd\.grpc\.v1[[:space:]]+cri'
    case "$version" in 1.*) ;; *) cri_plugins="$cri_plugins io\.containerd\.cri\.v1[[:space:]]+runtime io\.containerd\.cri\.v1[[:space:]]+images" ;; esac
    plugins=$(ctr_ plugins ls 2>/dev/null || true)
    for p in $cri_plugins; do
        if ! grep -Eq "^$p[[:space:]].*[[:space:]]ok[[:space:]]*$" <<<"$plugins"; then
            grep -Ev '[[:space:]]ok[[:space:]]*$' <<<"$plugins" >&2 || true
            log "warning: the CRI plugin did not load (see $LOGFILE)"
            break
        fi
    done
    log "containerd $version running: pid $(cat "$PIDFILE"), socket $SOCK, shims from $shim_dir"
}

print_env() {
    cat <<EOF
export VESSEL_TEST_CONTAINERD='$DIR'
export CONTAINERD_ADDRESS='$SOCK'
export CONTAINERD_SNAPSHOTTER=overlayfs
export CONTAINER_RUNTIME_ENDPOINT='unix://$SOCK'
export IMAGE_SERVICE_ENDPOINT='unix://$SOCK'
export VESSEL_TEST_CNI_BRIDGE='$BRIDGE'
export VESSEL_TEST_CNI_SUBNET='$SUBNET'
export VESSEL_TEST_CONTAINERD_VERSION='$(cat "$DIR/containerd.version" 2>/dev/null || containerd_version)'
export VESSEL_TEST_CTR='$CTR'
EOF
}

case "$CMD" in
    start) start ;;
    stop) stop ;;
    restart) restart ;;
    env) print_env ;;
    status) answers ;;
    *) die "unknown command $CMD (start|stop|restart|env|status)" ;;
esac
