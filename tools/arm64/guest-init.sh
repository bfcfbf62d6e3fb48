#!/bin/bash
# PID 1 of the aarch64 test guest (installed as /usr/local/sbin/tracerd-guest-init by
# tools/arm64/build-guest.sh; booted with init=... by tools/arm64/run-in-guest.sh).
# No service manager: mount what tracerd needs, mount the two 9p shares from the host
# (the source tree, read-only, at /mnt/src; the run's exchange directory at /mnt/host),
# run /mnt/host/.cmd.sh, write its exit status to /mnt/host/.status and power off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb

mnt() {  # TYPE WHERE [OPTIONS]: mount unless already mounted
  mkdir -p "$2"
  mountpoint -q "$2" || mount -t "$1" ${3:+-o "$3"} "$1" "$2"
}
mnt proc /proc
mnt sysfs /sys
mnt devtmpfs /dev
mnt devpts /dev/pts gid=5,mode=620
mnt tmpfs /dev/shm mode=1777
mnt tmpfs /run mode=755
mnt tmpfs /tmp mode=1777
mnt tracefs /sys/kernel/tracing
mnt debugfs /sys/kernel/debug
mnt cgroup2 /sys/fs/cgroup
mnt bpf /sys/fs/bpf
echo 1 >/proc/sys/kernel/sysrq
hostname tracerd-arm64

# No udev: load the drivers of the virtio devices qemu gave us (net, rng, 9p) by hand.
for alias in /sys/bus/virtio/devices/*/modalias; do
  modprobe -q -b "$(cat "$alias")" 2>/dev/null
done
modprobe -q virtio_net; modprobe -q 9pnet_virtio; modprobe -q 9p
mkdir -p /mnt/src /mnt/host
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro src /mnt/src
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 host /mnt/host

ip link set lo up
if [ -e /mnt/host/.net ]; then
  # qemu's user-mode network: only the host's forwarded ports reach in (restrict=on).
  for _ in $(seq 20); do [ -e /sys/class/net/eth0 ] && break; sleep 0.5; done
  ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up ||
    echo "guest: no network interface for the forwarded ports" >&2
fi

status=125
if [ -f /mnt/host/.cmd.sh ]; then
  echo "guest: $(uname -m) kernel $(uname -r), $(nproc) CPUs, up $(cut -d' ' -f1 /proc/uptime) s"
  cd /root || true
  bash /mnt/host/.cmd.sh </dev/null
  status=$?
else
  echo "guest: no /mnt/host/.cmd.sh to run" >&2
fi
echo "$status" >/mnt/host/.status
sync
echo o >/proc/sysrq-trigger   # power off (qemu exits: -no-reboot)
sleep 60
