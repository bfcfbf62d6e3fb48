#!/bin/bash
# tracerd's tests on aarch64, run INSIDE the emulated guest (tools/arm64/run-in-guest.sh;
# `make test-arm64` drives it from the host):
#
#   bash /mnt/src/tests/arm64/guest_test.sh N THREADS [STRACE_N]
#
#   1. builds the exactness fixture (tests/fixtures/exact.c) with the guest's gcc;
#   2. `tracerd run --json` on `exact N THREADS`: exact counts (as tests/conftest.py's
#      assert_exact_tree), aarch64 names whose numbers agree with the guest's own
#      <asm/unistd.h>, and none of x86_64's;
#   3. `exact STRACE_N 0` and `ls` under tracerd and under `strace -c -f`: the same
#      names and counts (strace never lists exit_group);
#   4. an AArch32 task (tests/fixtures/compat_elf.py): counted under the arm32 table,
#      in full and count-only mode;
#   5. when the host asked for it ($TRACERD_SHARE/daemon.env), `tracerd serve` on TCP
#      with TLS and a token, answering GetInfo here and from the host through qemu's
#      forwarded port.
#
# tracerd runs from a copy of the shared source tree with the guest's venv Python.
# Prints PASS/FAIL lines; exits 1 if anything failed.
set -uo pipefail
N=${1:-1000}
THREADS=${2:-2}
STRACE_N=${3:-500}
src=${TRACERD_SRC:-/mnt/src}
share=${TRACERD_SHARE:-/mnt/host}
py=/opt/tracerd/venv/bin/python
work=/root/arm64-test

fails=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
step() { echo "--- $* (guest uptime $(cut -d' ' -f1 /proc/uptime) s)"; }
checker() {  # the Python checks count their own failures
  local n
  "$py" "$work/check_report.py" "$@"
  n=$?
  fails=$((fails + n))
}
secs() { local t0=$1; awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

rm -rf "$work"; mkdir -p "$work"; cd "$work" || exit 1
cp -r "$src/tracerd" "$src/bpf" "$src/tests/arm64/check_report.py" "$work/"
find "$work" -name __pycache__ -prune -exec rm -rf {} +
export PYTHONPATH=$work
tracerd() { "$py" -m tracerd "$@"; }

step "environment"
arch=$(uname -m)
[ "$arch" = aarch64 ] && pass "uname -m: $arch, kernel $(uname -r)" || fail "uname -m: $arch"
[ -e /sys/kernel/btf/vmlinux ] && pass "kernel BTF present" || fail "no /sys/kernel/btf/vmlinux"
[ -d "/lib/modules/$(uname -r)/build/include" ] && pass "kernel headers at /lib/modules/$(uname -r)/build" ||
  fail "no kernel headers for $(uname -r)"
echo "    tracerd $(tracerd --version 2>&1), BCC $(dpkg-query -W -f='${Version}' python3-bpfcc)"

step "build tests/fixtures/exact.c"
if gcc -O2 -Wall -Wextra -Werror -pthread -o exact "$src/tests/fixtures/exact.c"; then
  machine=$(od -An -t u2 -j 18 -N 2 exact | tr -d ' ')
  [ "$machine" = 183 ] && pass "fixture built for aarch64 (ELF e_machine 183)" ||
    fail "fixture ELF e_machine $machine, expected 183 (aarch64)"
else
  fail "gcc could not build the fixture"
  exit 1
fi

step "tracerd run --json -- ./exact exact $N $THREADS (BCC compiles the programs under emulation)"
t0=$EPOCHREALTIME
tracerd run --json -o exact.json -- ./exact exact "$N" "$THREADS" >roles.txt
rc=$?
echo "    tracerd run took $(secs "$t0") s"
[ "$rc" = 0 ] && pass "tracerd run exited 0" || fail "tracerd run exited $rc"
if [ -s exact.json ]; then checker exact exact.json "$N" "$THREADS"; else fail "no report written"; fi

step "tracerd vs strace -c -f"
# Address-space randomisation off for this step: aarch64 libraries are 64 KiB-aligned
# and glibc's ld.so maps each with 64 KiB of slack, then unmaps the slack before the
# aligned start only when there is some: 15 times in 16 with a random base, so the
# munmap count of `ls` differs from run to run by chance. With a fixed base both tools see
# the same layout. (x86_64's libraries are 4 KiB-aligned: no slack, no such effect.)
aslr=$(cat /proc/sys/kernel/randomize_va_space)
echo 0 >/proc/sys/kernel/randomize_va_space
for cmd in "./exact exact $STRACE_N 0" "ls -la /usr/bin /nonexistent"; do
  # shellcheck disable=SC2086 # the words of $cmd are the command line
  strace -f -c -o strace.txt $cmd </dev/null >/dev/null 2>&1
  t0=$EPOCHREALTIME
  # shellcheck disable=SC2086
  tracerd run --json -o vs.json -- $cmd </dev/null >/dev/null 2>&1
  echo "    $cmd: tracerd run took $(secs "$t0") s"
  if [ -s vs.json ]; then checker strace vs.json strace.txt; else fail "$cmd: no report"; fi
  rm -f vs.json strace.txt
done
echo "$aslr" >/proc/sys/kernel/randomize_va_space

step "an AArch32 (compat) task: tests/fixtures/compat_elf.py arm32 $N"
"$py" "$src/tests/fixtures/compat_elf.py" arm32 "$N" arm32-loop
if ./arm32-loop; then
  tracerd run --json -o compat.json -- ./arm32-loop
  rc=$?
  [ "$rc" = 0 ] && pass "tracerd run on the arm32 task exited 0" || fail "tracerd run exited $rc"
  if [ -s compat.json ]; then checker compat compat.json "$N"; else fail "no compat report"; fi
  tracerd run --count-only --json -o compat-count.json -- ./arm32-loop
  if [ -s compat-count.json ]; then checker compat compat-count.json "$N"; else fail "no report"; fi
else
  # qemu's -cpu max runs AArch32 at EL0; a CPU without it cannot exec the file at all.
  fail "this CPU/kernel cannot run AArch32 binaries (exec of arm32-loop failed)"
fi

if [ -f "$share/daemon.env" ]; then
  # shellcheck disable=SC1091 # written by tools/arm64/test.sh: PORT and TOKEN
  . "$share/daemon.env"
  step "tracerd serve on 0.0.0.0:$PORT (TLS, token), GetInfo here and from the host"
  install -m 600 "$share/tokens.toml" /run/tracerd-tokens.toml
  # Not through the tracerd function: $! must be the daemon itself, for kill and wait.
  "$py" -m tracerd serve --socket '' --state-dir '' --listen "0.0.0.0:$PORT" \
    --tls-cert "$share/cert.pem" --tls-key "$share/key.pem" \
    --tokens /run/tracerd-tokens.toml >daemon.log 2>&1 &
  dpid=$!
  t0=$EPOCHREALTIME
  checker info "127.0.0.1:$PORT" "$share/cert.pem" "$TOKEN" 900 "$dpid"
  echo "    (GetInfo in the guest: $(secs "$t0") s after the daemon started)"
  if kill -0 "$dpid" 2>/dev/null; then
    touch "$share/serve-ready"
  else
    tail -n 30 daemon.log
  fi
  # The host's GetInfo goes through qemu's forwarded port; it writes its verdict here.
  for _ in $(seq 300); do
    [ -f "$share/host-done" ] && break
    kill -0 "$dpid" 2>/dev/null || break
    sleep 1
  done
  if [ -f "$share/host-done" ]; then
    grep -q '^PASS' "$share/host-done" && pass "from the host: $(cat "$share/host-done")" ||
      fail "from the host: $(cat "$share/host-done")"
  else
    fail "the host's GetInfo never came (daemon alive: $(kill -0 "$dpid" 2>/dev/null && echo yes || echo no))"
  fi
  kill -TERM "$dpid" 2>/dev/null
  wait "$dpid"
  rc=$?
  [ "$rc" = 0 ] && pass "tracerd serve stopped cleanly on SIGTERM" ||
    { fail "tracerd serve exited $rc"; tail -n 30 daemon.log; }
fi

step "done"
if [ "$fails" = 0 ]; then
  echo "arm64 guest: all checks passed"
  exit 0
fi
echo "arm64 guest: $fails check(s) FAILED"
exit 1
