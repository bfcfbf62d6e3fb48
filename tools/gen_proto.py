"""Regenerate tracerd/v1/ from proto/tracerd/v1/*.proto (``make proto``).

With ``--check``, generate into a scratch directory and fail if the checked-in code
differs: CI runs that, so the generated code can never drift from the .proto files.
The generators are pinned in pyproject.toml (grpcio-tools, mypy-protobuf) because
their output embeds their versions.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_PKG = Path("tracerd") / "v1"
INIT = '"""Generated protobuf and gRPC code for proto/tracerd/v1: do not edit, run make proto."""\n'


def generate(out_root: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_DIR))
                    for p in (PROTO_DIR / "tracerd" / "v1").glob("*.proto"))
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
    (out_root / OUT_PKG).mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}",
         f"--python_out={out_root}", f"--grpc_python_out={out_root}",
         f"--mypy_out={out_root}", f"--mypy_grpc_out={out_root}", *protos],
        env=env, cwd=PROTO_DIR, capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:  # the generators' chatter is shown only when they fail
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"gen_proto: protoc failed with status {done.returncode}")
    (out_root / OUT_PKG / "__init__.py").write_text(INIT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if tracerd/v1 is stale")
    args = ap.parse_args()
    if not args.check:
        shutil.rmtree(ROOT / OUT_PKG, ignore_errors=True)
        generate(ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh, current = Path(tmp) / OUT_PKG, ROOT / OUT_PKG
        names = {p.name for p in fresh.iterdir()}
        names |= {p.name for p in current.glob("*") if p.is_file()}
        names.discard("__pycache__")
        stale = sorted(n for n in names
                       if not (fresh / n).is_file() or not (current / n).is_file()
                       or not filecmp.cmp(fresh / n, current / n, shallow=False))
    if stale:
        print(f"gen_proto: {OUT_PKG} is stale ({', '.join(stale)}): run 'make proto'",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
