#!/bin/sh
# Golden-trace example: cat a file and list a directory, deterministically.
# Every external command's output goes through a command substitution (a pipe), and only
# the shell's builtin echo writes to the caller's stdout: ls and cat behave differently
# on a terminal (isatty, TIOCGWINSZ), which would change the syscall counts.
# Run it with a fixed environment, as the golden file records:
#   env -i PATH=/usr/bin:/bin LC_ALL=C sh examples/golden/hello.sh
set -eu
here=$(dirname "$0")
first=$(cat "$here/data/a.txt")
files=$(ls "$here/data")
echo "first line: $first"
echo "files:" $files
