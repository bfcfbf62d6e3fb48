"""Shared by the bench scripts: compile one of bench/*.c into bench/results/, and
describe the machine a run was made on."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

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


def machine_facts(loop_cpu: int) -> dict[str, Any]:
    """When and on what a run was made: date, kernel, CPUs and their model, the CPU the
    measured loop was pinned to, the load average (noisy neighbours show there)."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "loop_cpu": loop_cpu,
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }
