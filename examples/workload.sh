#!/bin/sh
# The bundled sample workload for `make demo`: a small script of the kind CI runs,
# with a few processes, file access, a failing open and a short Python program.
set -u
ls -la /usr/bin > /dev/null
cat /etc/os-release | grep -c = > /dev/null
cat /nonexistent/file 2>/dev/null || true
python3 -c 'import json, sys; json.dump({"ok": True}, sys.stdout); print()'
for i in 1 2 3; do
  printf 'step %s\n' "$i"
done
