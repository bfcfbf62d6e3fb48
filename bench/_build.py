"""Shared by the bench scripts: compile one of bench/*.c into bench/results/."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def build_c(source: str, out_dir: Path, error: type[Exception]) -> Path:
    """Compile bench/SOURCE with -O2 into OUT_DIR (named SOURCE without .c); rebuilt every
    run, it takes well under a second. Failures raise ``error`` with the compiler's text."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise error("no C compiler: apt-get install gcc")
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / Path(source).stem
    cmd = [cc, "-O2", "-Wall", "-Wextra", "-o", str(binary), str(BENCH / source)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise error(f"building {source} failed:\n{res.stderr}")
    return binary
