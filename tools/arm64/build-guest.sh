#!/usr/bin/env bash
# Build the emulated aarch64 test machine, once: everything comes from the distribution's
# own packages (its arm64 kernel, a debootstrap --arch=arm64 root filesystem populated
# through qemu-user-static) plus tracerd's Python dependencies as aarch64 wheels fetched
# here on the host (the guest never needs a network). Run as root; safe to run again:
# each stage is redone only when what it depends on changed.
#
#   tools/arm64/build-guest.sh            # build or reuse the cache
#   TRACERD_ARM64_CACHE=DIR ...           # cache directory (default /var/cache/tracerd-arm64)
#   TRACERD_ARM64_REBUILD=1 ...           # start again from nothing
#
# The cache holds rootfs/ (the guest's tree), base.qcow2 (an ext4 image of it), vmlinuz
# and initrd.img (the guest's kernel, booted directly by qemu) and wheels/.
# tools/arm64/run-in-guest.sh boots it; the source tree is never copied in: it is shared
# read-only at run time, so the guest always tests the current tree.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${TRACERD_ARM64_CACHE:-/var/cache/tracerd-arm64}
say() { printf 'arm64-build: %s\n' "$*"; }
die() { printf 'arm64-build: %s\n' "$*" >&2; exit 1; }
trap 'echo "arm64-build: failed (line $LINENO: $BASH_COMMAND)" >&2' ERR

[ "$(id -u)" = 0 ] || { echo "arm64-build: must run as root (apt, debootstrap, chroot)" >&2; exit 77; }

# Bump when the way the guest is made changes in a way the inputs below do not show.
RECIPE=1
# What the guest has: its kernel and the headers BCC compiles against (same version,
# from the same metapackages), BCC, a compiler for the fixture, strace to compare with.
GUEST_PKGS=(linux-image-arm64 linux-headers-arm64 python3 python3-venv python3-bpfcc
            libbpfcc bpfcc-tools gcc libc6-dev strace kmod iproute2 procps)
HOST_PKGS=(qemu-system-arm qemu-user-static qemu-utils binfmt-support debootstrap
           e2fsprogs debian-archive-keyring python3-venv openssl)

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9   # one build at a time; runs take the lock shared

if [ -n "${TRACERD_ARM64_REBUILD:-}" ]; then
  say "TRACERD_ARM64_REBUILD set: removing the cache"
  rm -rf "$cache/rootfs" "$cache/rootfs.tmp" "$cache"/*.stamp "$cache/base.qcow2" \
    "$cache/vmlinuz" "$cache/initrd.img" "$cache/wheels"
fi

# ------------------------------------------------------------------ host packages
missing=()
for p in "${HOST_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing on the host: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# qemu-user-static runs the guest's arm64 binaries inside the chroot through binfmt_misc
# (its entries carry the F flag: the interpreter is opened now, no copy in the chroot).
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    update-binfmts --import qemu-aarch64 >/dev/null 2>&1 || true
  fi
fi
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] ||
  die "binfmt_misc has no qemu-aarch64 entry (update-binfmts --enable qemu-aarch64 failed)"

# ------------------------------------------------------------------ the mirror
# The distribution's mirror as this host's apt is configured (deb822 .sources files and
# one-line sources.list), for the host's own release.
. /etc/os-release
suite=${TRACERD_ARM64_SUITE:-${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}}
apt_sources() {  # prints "URI SUITE" for every enabled Debian deb source
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'function flush() { if (deb && uri != "") { n = split(suites, s, " ");
                              for (i = 1; i <= n; i++) print uri, s[i] } deb = 0; uri = ""; suites = "" }
         /^[ \t]*$/ { flush(); next }
         /^Types:/ { deb = ($0 ~ /[ \t]deb([ \t]|$)/) }
         /^URIs:/ { uri = $2 }
         /^Suites:/ { sub(/^Suites:[ \t]*/, ""); suites = $0 }
         END { flush() }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } print $i, $(i + 1) }' "$f"
  done
}
sources=$(apt_sources | sort -u)
mirror=$(awk -v s="$suite" '$2 == s { print $1; exit }' <<<"$sources")
[ -n "$mirror" ] || die "no Debian mirror for '$suite' in /etc/apt/sources.list*"
sec_mirror=$(awk -v s="$suite-security" '$2 == s { print $1; exit }' <<<"$sources")
upd_mirror=$(awk -v s="$suite-updates" '$2 == s { print $1; exit }' <<<"$sources")

# ------------------------------------------------------------------ stage 1: rootfs
root="$cache/rootfs"
base_key=$(printf '%s\n' "$RECIPE" "$suite" "$mirror" "$sec_mirror" "$upd_mirror" \
  "${GUEST_PKGS[@]}" | sha256sum | cut -c1-16)

cleanup() {  # /proc of the chroot, mounted by in_root (possibly from a subshell)
  local m
  for m in "$cache/rootfs.tmp/proc" "$cache/rootfs/proc"; do
    if mountpoint -q "$m" 2>/dev/null; then umount -l "$m" || true; fi
  done
}
trap cleanup EXIT
trap 'exit 130' INT; trap 'exit 143' TERM; trap 'exit 129' HUP
in_root() {  # run a command inside the arm64 tree (through qemu-user-static)
  local r=$1; shift
  mountpoint -q "$r/proc" || mount -t proc proc "$r/proc"
  LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    chroot "$r" "$@"
}

if [ "$(cat "$cache/rootfs.stamp" 2>/dev/null)" != "$base_key" ] || [ ! -d "$root" ]; then
  t0=$SECONDS
  tmp="$cache/rootfs.tmp"
  umount -l "$tmp/proc" 2>/dev/null || true
  rm -rf "$tmp" "$cache"/*.stamp
  say "debootstrap --arch=arm64 $suite from $mirror (emulated: several minutes)"
  debootstrap --arch=arm64 --variant=minbase --components=main "$suite" "$tmp" "$mirror" \
    >"$cache/debootstrap.log" 2>&1 || { tail -n 30 "$cache/debootstrap.log" >&2; die "debootstrap failed (log: $cache/debootstrap.log)"; }
  {
    echo "deb $mirror $suite main"
    [ -z "$upd_mirror" ] || echo "deb $upd_mirror $suite-updates main"
    [ -z "$sec_mirror" ] || echo "deb $sec_mirror $suite-security main"
  } >"$tmp/etc/apt/sources.list"
  # No daemon starts inside the chroot; no documentation is kept.
  printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"; chmod 755 "$tmp/usr/sbin/policy-rc.d"
  printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/locale/*\npath-include /usr/share/doc/*/copyright\n' \
    >"$tmp/etc/dpkg/dpkg.cfg.d/tracerd-nodoc"
  # The initrd only has to find the root disk on qemu's virt machine (virtio over PCI):
  # listing its modules, rather than the default "most", saves half an hour of emulation.
  mkdir -p "$tmp/etc/initramfs-tools/conf.d"
  printf 'virtio_pci\nvirtio_blk\next4\n' >>"$tmp/etc/initramfs-tools/modules"
  echo MODULES=list >"$tmp/etc/initramfs-tools/conf.d/tracerd-guest"
  echo tracerd-arm64 >"$tmp/etc/hostname"
  printf '/dev/vda / ext4 rw 0 1\n' >"$tmp/etc/fstab"
  say "installing in the guest: ${GUEST_PKGS[*]}"
  in_root "$tmp" apt-get update -qq >"$cache/apt.log" 2>&1 ||
    { tail -n 30 "$cache/apt.log" >&2; die "apt-get update in the guest failed"; }
  in_root "$tmp" apt-get install -y -q --no-install-recommends "${GUEST_PKGS[@]}" \
    >>"$cache/apt.log" 2>&1 ||
    { tail -n 30 "$cache/apt.log" >&2; die "apt-get install in the guest failed (log: $cache/apt.log)"; }
  in_root "$tmp" apt-get clean
  rm -rf "$tmp"/var/lib/apt/lists/*_dists_* "$tmp/usr/sbin/policy-rc.d"
  kver=$(cd "$tmp/lib/modules" && ls | sort -V | tail -n 1)
  [ -f "$tmp/boot/vmlinuz-$kver" ] && [ -f "$tmp/boot/initrd.img-$kver" ] ||
    die "the guest has no kernel/initrd for $kver"
  in_root "$tmp" test -d "/lib/modules/$kver/build/include" ||
    die "the guest's headers do not match its kernel $kver (no /lib/modules/$kver/build)"
  umount -l "$tmp/proc" 2>/dev/null || true
  rm -rf "$root"
  mv "$tmp" "$root"
  echo "$base_key" >"$cache/rootfs.stamp"
  say "root filesystem ready: kernel $kver ($((SECONDS - t0)) s)"
fi

# ------------------------------------------------------------------ stage 2: Python deps
# tracerd's runtime dependencies from pyproject.toml, as aarch64 wheels for the guest's
# Python, downloaded here (the guest has no network) and installed offline into a venv
# in which, as `make setup` does on the host, only the OS's bcc module is added.
hostpy=$repo/.venv/bin/python
[ -x "$hostpy" ] || hostpy=python3
gpyver=$(in_root "$root" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ -n "$gpyver" ] || die "no python3.X in the guest"
reqs=$("$hostpy" -c 'import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
  "$repo/pyproject.toml")
py_key=$(printf '%s\n' "$RECIPE" "$base_key" "$gpyver" "$reqs" | sha256sum | cut -c1-16)
if [ "$(cat "$cache/python.stamp" 2>/dev/null)" != "$py_key" ]; then
  t0=$SECONDS
  rm -f "$cache/image.stamp"
  rm -rf "$cache/wheels"; mkdir -p "$cache/wheels"
  printf '%s\n' "$reqs" >"$cache/wheels/requirements.txt"
  abi="cp${gpyver/./}"
  say "downloading aarch64 wheels for Python $gpyver: $(tr '\n' ' ' <<<"$reqs")"
  "$hostpy" -m pip download -q --dest "$cache/wheels" --only-binary=:all: \
    --implementation cp --python-version "$gpyver" --abi "$abi" --abi abi3 --abi none \
    --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
    --platform manylinux_2_28_aarch64 --platform manylinux_2_34_aarch64 \
    --platform linux_aarch64 --platform any \
    -r "$cache/wheels/requirements.txt" >"$cache/pip.log" 2>&1 ||
    { tail -n 30 "$cache/pip.log" >&2; die "pip download failed (log: $cache/pip.log)"; }
  rm -rf "$root/opt/tracerd" "$root/tmp/wheels"
  cp -r "$cache/wheels" "$root/tmp/wheels"
  say "installing them offline in the guest's /opt/tracerd/venv"
  in_root "$root" python3 -m venv /opt/tracerd/venv
  in_root "$root" /opt/tracerd/venv/bin/python -m pip install -q --no-index \
    --disable-pip-version-check --find-links /tmp/wheels -r /tmp/wheels/requirements.txt \
    >>"$cache/pip.log" 2>&1 ||
    { tail -n 30 "$cache/pip.log" >&2; die "offline pip install in the guest failed"; }
  rm -rf "$root/tmp/wheels"
  site=$(in_root "$root" /opt/tracerd/venv/bin/python -c \
    'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  bccdir=$(in_root "$root" /usr/bin/python3 -c \
    'import bcc, os; print(os.path.dirname(bcc.__file__))')
  mkdir -p "$root/opt/tracerd/os-bcc"
  ln -sfn "$bccdir" "$root/opt/tracerd/os-bcc/bcc"
  echo /opt/tracerd/os-bcc >"$root$site/os-bcc.pth"
  in_root "$root" /opt/tracerd/venv/bin/python -c \
    'import bcc, grpc, google.protobuf, psutil, pyroute2, prometheus_client, opentelemetry.sdk' ||
    die "the guest's venv cannot import tracerd's dependencies"
  echo "$py_key" >"$cache/python.stamp"
  say "Python dependencies ready ($((SECONDS - t0)) s)"
fi

# ------------------------------------------------------------------ stage 3: the image
install -m 755 "$here/guest-init.sh" "$root/usr/local/sbin/tracerd-guest-init"
img_key=$(printf '%s\n' "$RECIPE" "$base_key" "$py_key" | cat - "$here/guest-init.sh" |
  sha256sum | cut -c1-16)
if [ "$(cat "$cache/image.stamp" 2>/dev/null)" != "$img_key" ] || [ ! -f "$cache/base.qcow2" ]; then
  t0=$SECONDS
  kver=$(cd "$root/lib/modules" && ls | sort -V | tail -n 1)
  umount -l "$root/proc" 2>/dev/null || true
  # An ext4 image filled straight from the tree (mke2fs -d): no loop device needed.
  # Sparse: it only takes the room of what is in it; runs write to a qcow2 overlay.
  say "making the disk image (ext4 from rootfs/, qcow2)"
  rm -f "$cache/base.raw" "$cache/base.qcow2"
  mke2fs -q -F -t ext4 -L tracerd-root -d "$root" "$cache/base.raw" 6G >/dev/null
  qemu-img convert -O qcow2 "$cache/base.raw" "$cache/base.qcow2"
  rm -f "$cache/base.raw"
  cp "$root/boot/vmlinuz-$kver" "$cache/vmlinuz"
  cp "$root/boot/initrd.img-$kver" "$cache/initrd.img"
  echo "$kver" >"$cache/kernel-version"
  echo "$img_key" >"$cache/image.stamp"
  say "image ready ($((SECONDS - t0)) s)"
fi
cleanup
say "ready: $cache (guest kernel $(cat "$cache/kernel-version"), $(du -sh "$cache" | cut -f1) on disk)"
