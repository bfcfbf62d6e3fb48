"""Checks run inside the aarch64 guest by tests/arm64/guest_test.sh (not a pytest module).

  check_report.py exact REPORT N T               `exact N T`: counts, processes, names
  check_report.py strace REPORT OUT              against `strace -f -c -o OUT` of the same
  check_report.py compat REPORT N                an AArch32 task's N getppid: arm32 names
  check_report.py info ADDR CA TOKEN WAIT_S PID  GetInfo over TLS in the guest, retried
                                                 while the daemon PID starts (WAIT_S max)

Syscall numbers are checked against the guest's own C headers (<asm/unistd.h> as gcc
sees it on aarch64), not against tracerd's tables, so a wrong table cannot pass. Each
check prints one PASS or FAIL line; the exit status is the number of failures.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: Syscalls x86_64 has and aarch64 does not (the generic table left them out): an
#: aarch64 report naming one of them was decoded with the wrong table.
NOT_ON_AARCH64 = {
    "open", "stat", "lstat", "access", "fork", "vfork", "dup2", "pipe", "poll", "select",
    "arch_prctl", "getdents", "readlink", "unlink", "mkdir", "rmdir", "rename", "creat",
    "chmod", "chown", "lchown", "link", "symlink", "mknod", "time", "alarm", "pause",
    "epoll_wait", "epoll_create", "inotify_init", "eventfd", "signalfd", "getpgrp",
    "utimes", "futimesat", "iopl", "ioperm", "modify_ldt",
}
NEVER_RETURN = {"exit", "exit_group"}

failures = 0


def check(ok: bool, what: str) -> None:
    global failures
    print(f"{'PASS' if ok else 'FAIL'}: {what}", flush=True)
    if not ok:
        failures += 1


def header_numbers() -> dict[str, int]:
    """name -> number from the guest's <asm/unistd.h>, macros resolved."""
    out = subprocess.run(["gcc", "-dM", "-E", "-x", "c", "-"], input="#include <asm/unistd.h>\n",
                         capture_output=True, text=True, check=True).stdout
    defs = dict(re.findall(r"^#define (__NR\w*) (\w+)$", out, re.M))

    def resolve(v: str, depth: int = 0) -> int | None:
        if v.isdigit():
            return int(v)
        return resolve(defs[v], depth + 1) if v in defs and depth < 8 else None

    nums: dict[str, int] = {}
    for macro, value in defs.items():
        if macro.startswith("__NR_") and (n := resolve(value)) is not None:
            nums[macro[len("__NR_"):]] = n
    return nums


def totals(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in report["totals"]["syscalls"]}


def check_names(report: dict[str, Any]) -> None:
    by_name = totals(report)
    nums = header_numbers()
    wrong = [f"{n}={s['nr']} (headers: {nums[n]})" for n, s in by_name.items()
             if n in nums and nums[n] != s["nr"]]
    unknown = sorted(n for n in by_name if n not in nums)
    check(not wrong and not unknown,
          f"{len(by_name)} syscall names match their numbers in the guest's <asm/unistd.h>"
          + (f"; wrong: {wrong}" if wrong else "") + (f"; unknown: {unknown}" if unknown else ""))
    legacy = sorted(NOT_ON_AARCH64 & set(by_name))
    check(not legacy, "no x86_64-only syscall names" + (f": {legacy}" if legacy else ""))
    check({"openat", "execve", "mmap", "exit_group"} <= set(by_name),
          "the loader's aarch64 calls are named: openat, execve, mmap, exit_group")


def cmd_exact(path: str, n: int, threads: int) -> None:
    report = json.loads(Path(path).read_text())
    check(report["arch"] == "aarch64", f"report arch is {report['arch']!r}")
    by_name = totals(report)

    def got(name: str) -> tuple[int, int]:
        s = by_name.get(name)
        return (s["calls"], s["errors"]) if s else (0, 0)

    expected = {"getppid": (6 * n, 0), "getpgid": (n, n), "getsid": (n, n),
                "umask": (n, 0), "sched_yield": (threads * n, 0), "exit_group": (3, 0)}
    for name, want in expected.items():
        check(got(name) == want, f"exact {n} {threads}: {name} (calls, errors) = {got(name)}, "
                                 f"expected {want}")
    procs = report["processes"]
    check(len(procs) == 3, f"3 processes traced (got {len(procs)})")
    check(report["exit"]["code"] == 0, f"exit status {report['exit']['code']}")
    drops = report["drops"]
    check(not any(drops.values()), f"no drops: {drops}")
    check_names(report)


def strace_counts(path: str) -> dict[str, tuple[int, int]]:
    counts: dict[str, tuple[int, int]] = {}
    for line in Path(path).read_text().splitlines():
        fields = line.split()
        if len(fields) < 5 or not fields[0][0].isdigit() or fields[-1] == "total":
            continue
        errors = int(fields[4]) if len(fields) == 6 else 0
        counts[fields[-1]] = (int(fields[3]), errors)
    return counts


def cmd_strace(path: str, strace_out: str) -> None:
    report = json.loads(Path(path).read_text())
    expected = strace_counts(strace_out)
    got = {n: (s["calls"], s["errors"]) for n, s in totals(report).items()}
    # strace -c never lists exit_group, which does not return; tracerd counts one per process.
    exit_group = got.pop("exit_group", None)
    check(exit_group == (len(report["processes"]), 0),
          f"exit_group {exit_group} for {len(report['processes'])} processes")
    diff = {n: (got.get(n), expected.get(n)) for n in set(got) | set(expected)
            if got.get(n) != expected.get(n)}
    check(not diff and not NEVER_RETURN & set(expected),
          f"{' '.join(report['command'])}: {len(got)} syscalls, counts and names equal "
          f"strace -c -f's" + (f"; differ (tracerd, strace): {diff}" if diff else ""))


def cmd_info(addr: str, ca: str, token: str, wait_s: float, pid: int) -> None:
    """GetInfo, retried until the daemon (process PID) answers: it compiles first."""
    from tracerd.client import Client, ClientError  # noqa: PLC0415 - the guest's tree

    deadline = time.monotonic() + wait_s
    while True:
        try:
            with Client(addr, token=token, tls_ca=ca, timeout=10, retries=0) as c:
                info = c.info()
            break
        except ClientError as e:
            if not Path(f"/proc/{pid}").exists():
                check(False, f"GetInfo in the guest: the daemon exited: {e}")
                return
            if time.monotonic() > deadline:
                check(False, f"GetInfo in the guest: no answer within {wait_s:.0f} s: {e}")
                return
            time.sleep(2)
    check(info.arch == "aarch64", f"GetInfo in the guest: arch {info.arch!r}, kernel "
                                  f"{info.kernel}, tracerd {info.version}")


def cmd_compat(path: str, n: int) -> None:
    """An AArch32 task's calls: counted under the arm32 table's numbers and names, not as
    the aarch64 calls of the same numbers (64 is write natively, getppid on arm32)."""
    report = json.loads(Path(path).read_text())
    calls = {name: s["calls"] for name, s in totals(report).items()}
    want = {"execve": 1, "arm32:getppid": n, "arm32:exit_group": 1}
    check(calls == want, f"arm32 task: calls {calls}, expected {want}")
    nr = totals(report).get("arm32:getppid", {}).get("nr")
    check(nr == 0x4000 | 64, f"arm32:getppid counted as nr {nr} (COMPAT_BIT | 64)")


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "exact":
        cmd_exact(argv[1], int(argv[2]), int(argv[3]))
    elif len(argv) == 3 and argv[0] == "compat":
        cmd_compat(argv[1], int(argv[2]))
    elif len(argv) == 3 and argv[0] == "strace":
        cmd_strace(argv[1], argv[2])
    elif len(argv) == 6 and argv[0] == "info":
        cmd_info(argv[1], argv[2], argv[3], float(argv[4]), int(argv[5]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return min(failures, 100)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
