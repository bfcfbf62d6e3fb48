#!/usr/bin/env bash
# Boot the aarch64 test guest built by tools/arm64/build-guest.sh, run one command in it,
# power it off and exit with the command's status. Run as root.
#
#   tools/arm64/run-in-guest.sh [OPTIONS] [--] CMD [ARG...]
#     --share DIR           the exchange directory, /mnt/host in the guest (default: a new
#                           temporary one, removed afterwards)
#     --forward HPORT:GPORT forward 127.0.0.1:HPORT on the host to GPORT in the guest
#                           (repeatable; the guest reaches nothing else)
#     --timeout S           kill the guest after S seconds (default 3600)
#     --cpus N / --memory M qemu's -smp and -m (default 2 and 4G)
#
# qemu-system-aarch64 -M virt -cpu max emulates the CPU (TCG: no KVM across
# architectures). The guest boots the distribution's arm64 kernel and initrd directly,
# with its root disk a throw-away qcow2 overlay of the cached image (each run starts from
# the same clean state), the source tree shared read-only over 9p at /mnt/src, and CMD
# run by bash in /root with the guest's console (kernel messages quieted) on stdout.
# In the guest, tracerd runs from the shared tree with /opt/tracerd/venv/bin/python.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${TRACERD_ARM64_CACHE:-/var/cache/tracerd-arm64}
say() { printf 'arm64-run: %s\n' "$*"; }
usage() { sed -n '5,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

share="" timeout_s=3600 cpus=2 memory=4G
forwards=()
while [ $# -gt 0 ]; do
  case "$1" in
    --share) share=$2; shift 2 ;;
    --forward) forwards+=("$2"); shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --memory) memory=$2; shift 2 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    -*) echo "arm64-run: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || usage
[ "$(id -u)" = 0 ] || { echo "arm64-run: must run as root" >&2; exit 77; }
for f in base.qcow2 vmlinuz initrd.img; do
  [ -f "$cache/$f" ] || { echo "arm64-run: no $cache/$f: run tools/arm64/build-guest.sh" >&2; exit 1; }
done

exec 9>"$cache/.lock"
flock -s 9   # the image is not rebuilt while a guest runs on it

work=$(mktemp -d /tmp/tracerd-arm64.XXXXXX)
keep_share=1
if [ -z "$share" ]; then
  share="$work/share"; keep_share=0
fi
mkdir -p "$share"
share=$(cd "$share" && pwd)
qemu_pid=""
cleanup() {
  [ -z "$qemu_pid" ] || kill "$qemu_pid" 2>/dev/null || true
  rm -rf "$work"
  [ "$keep_share" = 1 ] || rm -rf "$share"
}
trap cleanup EXIT
trap 'exit 130' INT; trap 'exit 143' TERM; trap 'exit 129' HUP

{
  echo "export TRACERD_SRC=/mnt/src TRACERD_SHARE=/mnt/host"
  printf 'exec'; printf ' %q' "$@"; printf '\n'
} >"$share/.cmd.sh"
rm -f "$share/.status" "$share/.net"

qemu-img create -q -f qcow2 -b "$cache/base.qcow2" -F qcow2 "$work/disk.qcow2"

net=(-nic none)
if [ ${#forwards[@]} -gt 0 ]; then
  spec="user,id=n0,restrict=on"
  for f in "${forwards[@]}"; do
    spec+=",hostfwd=tcp:127.0.0.1:${f%%:*}-:${f##*:}"
  done
  # shellcheck disable=SC2054 # qemu's own comma-separated option lists
  net=(-netdev "$spec" -device virtio-net-pci,netdev=n0,romfile=)  # no PXE ROM: direct boot
  touch "$share/.net"   # tells the guest's init to bring eth0 up
fi

say "booting $(cat "$cache/kernel-version" 2>/dev/null) on qemu-system-aarch64 -M virt -cpu max (TCG, $cpus CPUs, $memory)"
t0=$SECONDS
# pauth-impdef: an implementation-defined pointer-authentication hash, much cheaper to
# emulate than the architected QARMA one (the guest cannot tell).
timeout --foreground -k 10 "$timeout_s" qemu-system-aarch64 \
  -M virt -cpu max,pauth-impdef=on -smp "$cpus" -m "$memory" \
  -display none -monitor none -serial stdio -no-reboot \
  -kernel "$cache/vmlinuz" -initrd "$cache/initrd.img" \
  -append "console=ttyAMA0 root=/dev/vda rw rootwait fsck.mode=skip panic=-1 quiet loglevel=3 init=/usr/local/sbin/tracerd-guest-init" \
  -drive "file=$work/disk.qcow2,if=none,id=disk,format=qcow2,discard=unmap" \
  -device virtio-blk-pci,drive=disk \
  -device virtio-rng-pci \
  -virtfs "local,path=$repo,mount_tag=src,security_model=none,readonly=on" \
  -virtfs "local,path=$share,mount_tag=host,security_model=none" \
  "${net[@]}" </dev/null &
qemu_pid=$!
rc=0
wait "$qemu_pid" || rc=$?
qemu_pid=""
elapsed=$((SECONDS - t0))
if [ -f "$share/.status" ]; then
  status=$(cat "$share/.status")
  say "guest command exited $status after ${elapsed} s (boot to power-off)"
  exit "$status"
fi
if [ "$rc" = 124 ]; then
  say "timed out after ${timeout_s} s; the guest was killed" >&2
  exit 124
fi
say "the guest stopped without running the command to the end (qemu exit $rc, ${elapsed} s)" >&2
exit 1
