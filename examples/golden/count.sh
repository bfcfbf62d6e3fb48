#!/bin/sh
# Golden-trace example: a short Python program, deterministic on purpose.
# The interpreter is /usr/bin/python3 when present: a bare `python3` may be a pyenv shim
# (bash scripts that spawn several processes, changing with pyenv's configuration).
# Python checks whether its standard streams are terminals at start-up (ioctl TCGETS,
# which fails on a pipe), so they are always a pipe or /dev/null here.
set -eu
here=$(dirname "$0")
py=/usr/bin/python3
[ -x "$py" ] || py=python3
out=$("$py" -I -S -B "$here/count.py" </dev/null 2>&1)
echo "$out"
