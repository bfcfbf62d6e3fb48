#!/usr/bin/env bash
# One idempotent set-up step for a fresh Debian machine (run as root):
#   OS packages (BCC from the distribution, kernel headers, strace, a C compiler),
#   kernel headers BCC can find, tracefs, and .venv with tracerd and its deps in
#   which the OS's bcc module is importable. Safe to run again: it only does what
#   is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf 'setup: %s\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "setup: must run as root (it installs OS packages and mounts tracefs)" >&2; exit 77; }

case "$(uname -m)" in
  x86_64) hdr_arch=amd64 ;;
  aarch64) hdr_arch=arm64 ;;
  *) echo "setup: unsupported architecture $(uname -m)" >&2; exit 69 ;;
esac

pkgs=(python3-bpfcc libbpfcc bpfcc-tools "linux-headers-$hdr_arch" strace gcc make libc6-dev python3-venv)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# BCC compiles against /lib/modules/$(uname -r)/build. A kernel without its own
# header package (a cloud or VM kernel) gets the newest installed distribution tree:
# tracepoint programs read their argument layout from tracefs and struct offsets
# from BTF, so the header version does not change what they compute.
mods="/lib/modules/$(uname -r)"
if [ ! -d "$mods/build/include" ]; then
  if apt-cache show "linux-headers-$(uname -r)" >/dev/null 2>&1; then
    apt-get install -y -qq "linux-headers-$(uname -r)" >/dev/null
  fi
fi
if [ ! -d "$mods/build/include" ]; then
  tree=$(ls -d /usr/src/linux-headers-*-"$hdr_arch" 2>/dev/null | sort -V | tail -n 1)
  [ -n "$tree" ] || { echo "setup: no linux-headers tree under /usr/src" >&2; exit 72; }
  common="${tree%-"$hdr_arch"}-common"
  mkdir -p "$mods"
  ln -sfn "$tree" "$mods/build"
  [ -d "$common" ] && ln -sfn "$common" "$mods/source"
  say "kernel $(uname -r) has no header package; BCC will use $(basename "$tree") via $mods/build"
fi

if [ ! -d /sys/kernel/tracing/events ]; then
  mount -t tracefs nodev /sys/kernel/tracing
  say "mounted tracefs at /sys/kernel/tracing"
fi

# The virtualenv. bcc is exposed through a .pth naming a directory that holds only
# a link to the OS module, so none of the distribution's other packages leak in.
py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
bccdir=$(/usr/bin/python3 -c 'import bcc, os; print(os.path.dirname(os.path.dirname(bcc.__file__)))')
mkdir -p .venv/os-bcc
ln -sfn "$bccdir/bcc" .venv/os-bcc/bcc
echo "$PWD/.venv/os-bcc" > "$site/os-bcc.pth"
stamp=.venv/.tracerd-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  # pip's chatter goes to a log, shown only if the install fails.
  if ! .venv/bin/python -m pip install -q -e '.[dev]' >.venv/pip.log 2>&1; then
    cat .venv/pip.log >&2; echo "setup: pip install failed" >&2; exit 1
  fi
  touch "$stamp"
fi
.venv/bin/python -c 'import bcc' || { echo "setup: bcc is not importable from .venv" >&2; exit 78; }
say "ready: $(.venv/bin/tracerd --version) with BCC from the OS"
