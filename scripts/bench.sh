#!/usr/bin/env bash
# Benchmarks vessel against runc, in a throw-away private containerd:
#   1. median wall time of N `ctr run --rm ... busybox true` per runtime
#   2. RSS (VmRSS) and PSS (smaps_rollup) of one idle shim per runtime,
#      each serving a `sleep 1000` container
#   3. the vm backend: median time from `ctr run` to the container's first output from a VM
#      cloned from a template (crun; the agent's built-in runtime with QEMU's translated-code
#      cache capped at VM_TB_SIZE MiB) and from a booted one, beside a bare boot of the same
#      kernel and initramfs to init (the floor), interleaved; the PSS of one idle pod (its shim
#      and its QEMU) and of three idle pods cloned from one template (each of the two ways)
#      and the time of a VM's hot-add (TCG): 1 GiB of memory (virtio-mem), 2 vCPUs (ACPI
#      hotplug, onlined by the agent), as the shim logs its resize of the pod's VM
#   4. `cargo bench --bench convert` (OCI spec conversion core)
#   5. `cargo bench --bench guest`: the guest's bare boot to init beside its boot to the
#      agent's first health check, the agent's and the initramfs's sizes
#
#   scripts/bench.sh   (env: N=20, VM_N=5, VM_TB_SIZE=28, SHIM_DIR=dir of the release shim,
#                       SKIP_CARGO_BENCH=1,
#                       VESSEL_GUEST_DIR and VESSEL_AGENT for the guest benchmark)
#   `make bench` builds the release shim (static), the guest image, and runs this.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${N:-20}
CARGO=${CARGO:-cargo}
IMAGE=docker.io/library/busybox:latest
VESSEL=io.containerd.vessel.v2
RUNC=io.containerd.runc.v2
FAILED=0

cd "$REPO"
[ -n "${SHIM_DIR:-}" ] || { echo "bench.sh: set SHIM_DIR (make bench does)" >&2; exit 2; }

DIR=$(mktemp -d /tmp/vessel-bench.XXXXXX)
cleanup() { "$REPO/scripts/containerd.sh" stop "$DIR"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
SHIM_DIR="$SHIM_DIR" "$REPO/scripts/containerd.sh" start "$DIR"
SHIM_BIN=$SHIM_DIR/containerd-shim-vessel-v2
SOCK=$DIR/containerd.sock
c() { timeout 120 ctr --address "$SOCK" "$@" </dev/null; }

now_ns() { date +%s%N; }

# median_ms RUNTIME TAG -> prints median in ms, or "failed"
median_ms() {
    local rt=$1 tag=$2 i t0 t1 times=()
    # warm-up (page cache, first shim exec), not counted
    if ! c run --rm --runtime "$rt" "$IMAGE" "bench-$tag-warm-$$" true >/dev/null 2>&1; then
        echo failed
        return 0
    fi
    for ((i = 0; i < N; i++)); do
        t0=$(now_ns)
        if ! c run --rm --runtime "$rt" "$IMAGE" "bench-$tag-$$-$i" true >/dev/null 2>&1; then
            echo failed
            return 0
        fi
        t1=$(now_ns)
        times+=($(((t1 - t0) / 1000)))
    done
    printf '%s\n' "${times[@]}" | sort -n | awk '
        { v[NR] = $1 }
        END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.1f\n", m / 1000 }'
}

# pid of the shim process (argv0 basename $1) serving container $2 of our containerd
shim_pid() {
    local want=$1 id=$2 d pid args
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        args=$({ tr '\0' ' ' <"$d/cmdline"; } 2>/dev/null || true)
        case "$args" in
            *"$want "*"-id $id "*"$SOCK"*) ;;
            *) continue ;;
        esac
        case "$(basename -- "${args%% *}")" in "$want") echo "$pid"; return 0 ;; esac
    done
    return 1
}

kb() { awk -v k="$2:" '$1 == k { print $2 }' "$1" 2>/dev/null || true; }

# memory RUNTIME SHIM_BINARY TAG -> "rss_kib pss_kib" or "failed failed"
memory() {
    local rt=$1 shim=$2 tag=$3 id="bench-idle-$3-$$" pid rss pss binary
    # A binary just built or copied sits in the page cache in large folios, which map more
    # of it than the idle shim touches (about 120 KiB more, seen here): measure both shims
    # from a cold cache, as after a reboot.
    binary=$SHIM_DIR/$shim
    [ -x "$binary" ] || binary=$(command -v "$shim" || true)
    [ -z "$binary" ] || dd if="$binary" iflag=nocache count=0 status=none 2>/dev/null || true
    if ! c run -d --runtime "$rt" "$IMAGE" "$id" sleep 1000 >/dev/null 2>&1; then
        echo "failed failed"
        return 0
    fi
    sleep 2 # let the shim settle
    if pid=$(shim_pid "$shim" "$id"); then
        rss=$(kb "/proc/$pid/status" VmRSS)
        pss=$(kb "/proc/$pid/smaps_rollup" Pss)
        echo "${rss:-?} ${pss:-?}"
    else
        echo "failed failed"
    fi
}

VM_N=${VM_N:-5}
VM_CONFIG=$DIR/vessel-vm.toml
VM_TEMPLATE_CONFIG=$DIR/vessel-vm-template.toml
# The same, the guest's containers run by the agent's built-in runtime instead of crun, and
# QEMU's cache of translated code capped (TCG) at VM_TB_SIZE MiB.
VM_TB_SIZE=${VM_TB_SIZE:-28}
VM_BUILTIN_CONFIG=$DIR/vessel-vm-template-builtin.toml
sed -e 's|^\[hypervisor.qemu\]$|[hypervisor.qemu]\nkernel_params = "vessel.runtime=builtin"|' \
    -e "s|^tcg_tb_size = .*|tcg_tb_size = $VM_TB_SIZE|" "$VM_TEMPLATE_CONFIG" >"$VM_BUILTIN_CONFIG"
GUEST=${VESSEL_GUEST_DIR:-$REPO/build/guest}
KERNEL_PARAMS="console=ttyS0 clocksource=hpet tsc=unstable no_timer_check rcupdate.rcu_expedited=1 i8042.direct=1 \
i8042.dumbkbd=1 i8042.nopnp=1 i8042.noaux=1 noreplace-smp cryptomgr.notests pci=lastbus=0 quiet panic=-1"

median_of() { sort -n | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.0f\n", m }'; }

# ms from `ctr run` (vm backend, configuration CONFIG) to the first line the container
# prints, or "failed"
vm_first_output_once() {
    local i=$1 config=$2 t0 stamp
    stamp=$(mktemp "$DIR/first.XXXXXX")
    t0=$(now_ns)
    if c run --rm --runtime "$VESSEL" --runtime-config-path "$config" "$IMAGE" "bench-vm-$$-$i" \
        echo first-output | { IFS= read -r _ && now_ns >"$stamp"; cat >/dev/null; }; then
        echo $((($(cat "$stamp") - t0) / 1000000))
    else
        echo failed
    fi
    rm -f "$stamp"
}

# ms from QEMU's start to busybox as init printing a marker: the same QEMU devices, kernel
# and initramfs as the vm backend, no agent; or "failed"
vm_floor_once() {
    local t0 t1 console qemu
    console=$(mktemp "$DIR/console.XXXXXX")
    t0=$(now_ns)
    qemu-system-x86_64 -machine q35,accel=tcg -cpu max -smp 1,maxcpus=1 -m 512M \
        -bios /usr/share/qemu/qboot.rom -nodefaults -display none -no-reboot \
        -kernel "$GUEST/vmlinux" -initrd "$GUEST/initramfs.cpio" \
        -append "$KERNEL_PARAMS rdinit=/bin/busybox -- echo vessel-floor-marker" \
        -serial "file:$console" -device virtio-serial-pci,id=serial0 \
        -fsdev "local,id=shared,path=$DIR,security_model=none" \
        -device virtio-9p-pci,fsdev=shared,mount_tag=vessel -object rng-random,id=rng0,filename=/dev/urandom \
        -device virtio-rng-pci,rng=rng0 </dev/null >/dev/null 2>&1 &
    qemu=$!
    until grep -q vessel-floor-marker "$console" 2>/dev/null; do
        kill -0 "$qemu" 2>/dev/null || { echo failed; rm -f "$console"; return 0; }
        sleep 0.005
    done
    t1=$(now_ns)
    kill "$qemu" 2>/dev/null || true
    wait "$qemu" 2>/dev/null || true
    rm -f "$console"
    echo $(((t1 - t0) / 1000000))
}

# "template_ms builtin_ms boot_ms floor_ms": medians of VM_N runs each of the first output
# from a VM cloned from a template (crun, then the agent's built-in runtime with QEMU's
# translation cache at VM_TB_SIZE MiB), from a booted
# VM, and of the bare boot, interleaved so that a host whose speed drifts (TCG on a shared
# machine) weighs on all alike
vm_first_output_and_floor() {
    local i clone builtin first floor clones=() builtins=() firsts=() floors=()
    for ((i = 0; i < VM_N; i++)); do
        clone=$(vm_first_output_once "t$i" "$VM_TEMPLATE_CONFIG")
        builtin=$(vm_first_output_once "b$i" "$VM_BUILTIN_CONFIG")
        first=$(vm_first_output_once "$i" "$VM_CONFIG")
        floor=$(vm_floor_once)
        for v in "$clone" "$builtin" "$first" "$floor"; do
            [ "$v" != failed ] || { echo "failed failed failed failed"; return 0; }
        done
        clones+=("$clone")
        builtins+=("$builtin")
        firsts+=("$first")
        floors+=("$floor")
    done
    echo "$(printf '%s\n' "${clones[@]}" | median_of) $(printf '%s\n' "${builtins[@]}" | median_of)" \
        "$(printf '%s\n' "${firsts[@]}" | median_of) $(printf '%s\n' "${floors[@]}" | median_of)"
}

# PSS (KiB) of one idle vm pod of configuration CONFIG named ID, started already: its shim
# and its QEMU, "total shim qemu"
pod_pss() {
    local id=$1 shim qemu p pss=0
    shim=$(shim_pid containerd-shim-vessel-v2 "$id") || { echo failed; return 0; }
    qemu=$(pgrep -f "qemu-system-x86_64 -name [^ ]*/$id( |$)" | head -n 1 || true)
    [ -n "$qemu" ] || { echo failed; return 0; }
    for p in "$shim" "$qemu"; do pss=$((pss + $(kb "/proc/$p/smaps_rollup" Pss))); done
    echo "$pss $(kb "/proc/$shim/smaps_rollup" Pss) $(kb "/proc/$qemu/smaps_rollup" Pss)"
}

# PSS (KiB) of one idle vm pod: its shim and its QEMU
vm_pod_pss() {
    local id="bench-vm-idle-$$"
    c run -d --runtime "$VESSEL" --runtime-config-path "$VM_CONFIG" "$IMAGE" "$id" sleep 1000 >/dev/null 2>&1 ||
        { echo failed; return 0; }
    sleep 3
    pod_pss "$id"
}

# PSS (KiB) of three idle pods of configuration CONFIG (TAG in their names) cloned from one
# template, measured together (the template's pages are shared between them): "per_pod total
# shim qemu" (the last two of the first pod)
vm_template_pods_pss() {
    local config=$1 tag=$2 n id first="" total=0 line
    for n in 1 2 3; do
        c run -d --runtime "$VESSEL" --runtime-config-path "$config" "$IMAGE" \
            "bench-$tag-idle-$$-$n" sleep 1000 >/dev/null 2>&1 || { echo failed; return 0; }
    done
    sleep 3
    for n in 1 2 3; do
        id="bench-$tag-idle-$$-$n"
        line=$(pod_pss "$id")
        [ "$line" != failed ] || { echo failed; return 0; }
        total=$((total + ${line%% *}))
        [ -n "$first" ] || first=${line#* }
    done
    echo "$((total / 3)) $total $first"
}

# ms the shim took to resize the VM of a `ctr run` with FLAGS (a memory limit, a CPU quota):
# the median of VM_N runs, from its log line "sandbox resized for ID: ... in N ms"
vm_hotplug_ms() {
    local tag=$1 i id ms times=()
    shift
    for ((i = 0; i < VM_N; i++)); do
        id="bench-hotplug-$tag-$$-$i"
        c run --rm --runtime "$VESSEL" --runtime-config-path "$VM_CONFIG" "$@" "$IMAGE" "$id" true \
            >/dev/null 2>&1 || { echo failed; return 0; }
        ms=$(grep -o "sandbox resized for $id: [^\"]* in [0-9]* ms" "$DIR/containerd.log" |
            sed -n 's/.* in \([0-9]*\) ms$/\1/p' | head -n 1)
        [ -n "$ms" ] || { echo failed; return 0; }
        times+=("$ms")
    done
    printf '%s\n' "${times[@]}" | median_of
}

echo "== startup: median of N=$N 'ctr run --rm ... true'"
V_MS=$(median_ms "$VESSEL" vessel)
R_MS=$(median_ms "$RUNC" runc)

echo "== idle shim memory (one 'sleep 1000' container each)"
read -r V_RSS V_PSS < <(memory "$VESSEL" containerd-shim-vessel-v2 vessel)
read -r R_RSS R_PSS < <(memory "$RUNC" containerd-shim-runc-v2 runc)

printf '\n%-28s %14s %14s\n' "" "vessel" "runc"
printf '%-28s %14s %14s\n' "ctr run --rm true (ms)" "$V_MS" "$R_MS"
printf '%-28s %14s %14s\n' "idle shim RSS (KiB)" "$V_RSS" "$R_RSS"
printf '%-28s %14s %14s\n\n' "idle shim PSS (KiB)" "$V_PSS" "$R_PSS"

if [ -f "$GUEST/vmlinux" ]; then
    echo "== vm backend: median of VM_N=$VM_N (QEMU TCG here)"
    T0=$(now_ns)
    "$SHIM_BIN" factory init --config "$VM_TEMPLATE_CONFIG" >/dev/null || FAILED=1
    VM_TEMPLATE_MS=$((($(now_ns) - T0) / 1000000))
    "$SHIM_BIN" factory init --config "$VM_BUILTIN_CONFIG" >/dev/null || FAILED=1
    read -r VM_CLONE VM_BUILTIN VM_FIRST VM_FLOOR < <(vm_first_output_and_floor)
    read -r VM_PSS VM_SHIM_PSS VM_QEMU_PSS < <(vm_pod_pss)
    read -r VM_TPL_PSS VM_TPL_TOTAL VM_TPL_SHIM VM_TPL_QEMU < <(vm_template_pods_pss "$VM_TEMPLATE_CONFIG" tpl)
    read -r VM_BTPL_PSS VM_BTPL_TOTAL VM_BTPL_SHIM VM_BTPL_QEMU < <(vm_template_pods_pss "$VM_BUILTIN_CONFIG" btpl)
    printf '%-44s %10s\n' "factory init: template made (ms)" "$VM_TEMPLATE_MS"
    printf '%-44s %10s\n' "ctr run to first output, from template (ms)" "$VM_CLONE"
    printf '%-44s %10s\n' "  the same, built-in, tcg_tb_size $VM_TB_SIZE (ms)" "$VM_BUILTIN"
    printf '%-44s %10s\n' "ctr run to first output, booted VM (ms)" "$VM_FIRST"
    printf '%-44s %10s\n' "bare boot to init, same VM (ms, the floor)" "$VM_FLOOR"
    ratio() { awk -v a="$1" -v b="$VM_FLOOR" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "?" }'; }
    printf '%-44s %10s\n' "  from template / floor (crun; built-in)" "$(ratio "$VM_CLONE"); $(ratio "$VM_BUILTIN")"
    printf '%-44s %10s\n' "idle vm pod PSS: shim + QEMU (KiB)" "$VM_PSS"
    printf '%-44s %10s\n' "  of which shim / QEMU (KiB)" "${VM_SHIM_PSS:-?} / ${VM_QEMU_PSS:-?}"
    printf '%-44s %10s\n' "idle template pod PSS, 3 pods (KiB per pod)" "$VM_TPL_PSS"
    printf '%-44s %10s\n' "  3 pods together; first: shim / QEMU (KiB)" "${VM_TPL_TOTAL:-?}; ${VM_TPL_SHIM:-?} / ${VM_TPL_QEMU:-?}"
    printf '%-44s %10s\n' "  the same, built-in, tcg_tb_size $VM_TB_SIZE (KiB)" "$VM_BTPL_PSS"
    printf '%-44s %10s\n' "  3 pods together; first: shim / QEMU (KiB)" "${VM_BTPL_TOTAL:-?}; ${VM_BTPL_SHIM:-?} / ${VM_BTPL_QEMU:-?}"
    VM_MEM_MS=$(vm_hotplug_ms mem --memory-limit 1073741824)
    VM_CPU_MS=$(vm_hotplug_ms cpu --cpus 2)
    printf '%-44s %10s\n' "hot-add of 1 GiB, plugged and online (ms)" "$VM_MEM_MS"
    printf '%-44s %10s\n\n' "hot-add of 2 vCPUs (or the host's), online (ms)" "$VM_CPU_MS"
    for v in "$VM_CLONE" "$VM_BUILTIN" "$VM_FIRST" "$VM_FLOOR" "$VM_PSS" "$VM_TPL_PSS" "$VM_BTPL_PSS" \
        "$VM_MEM_MS" "$VM_CPU_MS"; do
        [ "$v" != failed ] || FAILED=1
    done
else
    echo "== vm backend: no guest image in $GUEST (make guest); skipped"
fi

for v in "$V_MS" "$R_MS" "$V_RSS" "$R_RSS"; do
    [ "$v" != failed ] || FAILED=1
done
[ $FAILED = 0 ] || { echo "bench: some measurements failed; containerd log tail:"; tail -n 20 "$DIR/containerd.log"; }

# stop containerd (and the idle containers) before the CPU-bound benchmark
cleanup
trap - EXIT

if [ "${SKIP_CARGO_BENCH:-0}" != 1 ]; then
    echo "== cargo bench --bench convert"
    $CARGO bench --bench convert || FAILED=1
    echo "== cargo bench --bench guest"
    N=${GUEST_N:-5} $CARGO bench --bench guest || FAILED=1
fi
exit $FAILED
