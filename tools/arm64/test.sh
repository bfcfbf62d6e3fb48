#!/usr/bin/env bash
# `make test-arm64`: tracerd's tests on an emulated aarch64 machine, from the host.
#
#   ARM64_SCALE=full     (default) exact 100000 4, strace comparison on exact 500 0
#   ARM64_SCALE=reduced  exact 1000 2, strace comparison on exact 100 0 (for CI runs)
#
# 1. tools/arm64/build-guest.sh: the guest, built once and cached;
# 2. a throw-away TLS certificate (SAN 127.0.0.1) and bearer token for the guest's daemon;
# 3. tools/arm64/run-in-guest.sh runs tests/arm64/guest_test.sh in the guest, with a free
#    host port forwarded to the daemon's port 7345 there, while tools/arm64/host_getinfo.py
#    calls GetInfo through it from here.
# Prints the time of each part; exits non-zero if any check failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
say() { printf 'test-arm64: %s\n' "$*"; }

scale=${ARM64_SCALE:-full}
case "$scale" in
  full) n=100000 threads=4 strace_n=500 ;;
  reduced) n=1000 threads=2 strace_n=100 ;;
  *) echo "test-arm64: ARM64_SCALE must be full or reduced, not '$scale'" >&2; exit 2 ;;
esac
py=.venv/bin/python
[ -x "$py" ] || { echo "test-arm64: no $py: run make setup (make test-arm64 does)" >&2; exit 1; }

t_start=$SECONDS
bash tools/arm64/build-guest.sh
t_build=$((SECONDS - t_start))

share=$(mktemp -d /tmp/tracerd-arm64-share.XXXXXX)
hpid="" gpid=""
cleanup() {
  [ -z "$gpid" ] || kill "$gpid" 2>/dev/null || true
  [ -z "$hpid" ] || kill "$hpid" 2>/dev/null || true
  rm -rf "$share"
}
trap cleanup EXIT
trap 'exit 130' INT; trap 'exit 143' TERM; trap 'exit 129' HUP

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=tracerd arm64 guest" -addext "subjectAltName=IP:127.0.0.1" \
  -keyout "$share/key.pem" -out "$share/cert.pem" 2>/dev/null
token=$(openssl rand -hex 24)
printf '[[token]]\nname = "arm64-test"\nsecret = "%s"\n' "$token" >"$share/tokens.toml"
chmod 600 "$share/tokens.toml" "$share/key.pem"
printf 'PORT=7345\nTOKEN=%s\n' "$token" >"$share/daemon.env"
hport=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

"$py" tools/arm64/host_getinfo.py "$share" "$hport" "$token" &
hpid=$!

say "scale $scale: exact $n $threads in the guest, strace comparison on exact $strace_n 0"
t_run0=$SECONDS
rc=0
bash tools/arm64/run-in-guest.sh --share "$share" --forward "$hport:7345" --timeout 5400 -- \
  bash /mnt/src/tests/arm64/guest_test.sh "$n" "$threads" "$strace_n" &
gpid=$!
wait "$gpid" || rc=$?
gpid=""
t_run=$((SECONDS - t_run0))
hrc=0
if [ ! -f "$share/host-done" ]; then
  # The guest is gone without its daemon being asked: the host's side cannot pass.
  kill "$hpid" 2>/dev/null || true
  say "the host's GetInfo never ran (the guest's daemon was not ready)" >&2
fi
wait "$hpid" || hrc=$?
hpid=""

say "times: guest build/cache check ${t_build} s, guest run ${t_run} s, total $((SECONDS - t_start)) s"
if [ "$rc" = 0 ] && [ "$hrc" = 0 ]; then
  say "passed on aarch64 (scale $scale)"
  exit 0
fi
say "FAILED (guest status $rc, host GetInfo status $hrc)" >&2
exit 1
