"""tracerd against `strace -c -f` on deterministic workloads.

The one documented difference: strace -c never lists exit(2) and exit_group(2), which
do not return; tracerd counts them (one exit_group per process that called it). Both
tools run each workload with the same stdio, so libc takes the same paths.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import by_name, traced_json

NEVER_RETURN = {"exit", "exit_group"}
SAME_STDIO = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL,
              "stderr": subprocess.DEVNULL}


def strace_counts(cmd: list[str], out: Path) -> dict[str, tuple[int, int]]:
    subprocess.run(["strace", "-f", "-c", "-o", str(out), *cmd], check=False, timeout=120,
                   **SAME_STDIO)
    counts: dict[str, tuple[int, int]] = {}
    for line in out.read_text().splitlines():
        fields = line.split()
        if len(fields) < 5 or not fields[0][0].isdigit() or fields[-1] == "total":
            continue
        # % time, seconds, usecs/call, calls, [errors], syscall
        errors = int(fields[4]) if len(fields) == 6 else 0
        counts[fields[-1]] = (int(fields[3]), errors)
    return counts


def workloads(fixture: Path) -> list[list[str]]:
    return [
        ["true"],
        ["cat", "/etc/os-release"],
        ["ls", "-la", "/usr/bin", "/nonexistent"],
        ["sh", "-c", "cat /etc/hostname; ls / ; echo done"],
        [str(fixture), "exact", "500", "0"],
    ]


@pytest.mark.parametrize("index", range(5))
def test_counts_equal_strace(tmp_path: Path, fixture_bin: Path, index: int) -> None:
    cmd = workloads(fixture_bin)[index]
    expected = strace_counts(cmd, tmp_path / "strace.txt")
    report, _ = traced_json(tmp_path, cmd, **SAME_STDIO)
    got = {n: (s["calls"], s["errors"]) for n, s in by_name(report["totals"]["syscalls"]).items()}
    nprocs = len(report["processes"])
    assert got.pop("exit_group") == (nprocs, 0)
    assert "exit" not in got  # single-threaded workloads
    assert got == expected
    assert not NEVER_RETURN & set(expected)
