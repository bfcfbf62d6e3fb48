"""Exact counts on the real kernel: every number here is known in advance."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import by_name, traced_json, tracerd

from tracerd import syscalls


def _roles(stdout: str) -> dict[str, int]:
    return {role: int(pid) for role, pid in (line.split() for line in stdout.splitlines())}


# Counter blocks for every process (the default), for the first process only (its
# children counted in the stats map), for none: every path counts the same.
@pytest.mark.parametrize("blocks", [[], ["--max-blocks", "1"], ["--max-blocks", "0"]],
                         ids=["blocks", "one-block", "map-only"])
def test_exact_counts_per_process(tmp_path: Path, fixture_bin: Path, blocks: list[str]) -> None:
    n, threads = 1000, 4
    report, proc = traced_json(tmp_path, [str(fixture_bin), "exact", str(n), str(threads)],
                               *blocks)
    assert proc.returncode == 0, proc.stderr
    roles = _roles(proc.stdout)
    procs = {p["pid"]: p for p in report["processes"]}
    assert set(procs) == set(roles.values())

    parent = by_name(procs[roles["parent"]]["syscalls"])
    assert (parent["getppid"]["calls"], parent["getppid"]["errors"]) == (n, 0)
    assert (parent["getpgid"]["calls"], parent["getpgid"]["errors"]) == (n, n)
    assert (parent["sched_yield"]["calls"], parent["sched_yield"]["errors"]) == (threads * n, 0)
    # Each worker thread ends with exit(2); the process with one exit_group.
    assert parent["exit"]["calls"] == threads
    assert parent["exit_group"]["calls"] == 1
    assert parent["execve"]["calls"] == 1

    child = by_name(procs[roles["child"]]["syscalls"])
    assert (child["getppid"]["calls"], child["getsid"]["calls"], child["getsid"]["errors"]) == (
        2 * n, n, n)
    assert "getpgid" not in child and "sched_yield" not in child and "execve" not in child

    grandchild = by_name(procs[roles["grandchild"]]["syscalls"])
    assert (grandchild["getppid"]["calls"], grandchild["umask"]["calls"]) == (3 * n, n)
    assert "getsid" not in grandchild

    assert procs[roles["child"]]["ppid"] == roles["parent"]
    assert procs[roles["grandchild"]]["ppid"] == roles["child"]
    assert procs[roles["grandchild"]]["exit"]["code"] == 3
    assert procs[roles["child"]]["exit"]["code"] == 0
    assert report["exit"]["status"] == 0

    totals = by_name(report["totals"]["syscalls"])
    assert totals["getppid"]["calls"] == 6 * n
    assert report["drops"] == {"stats_full": 0, "events_lost": 0, "pid_out_of_range": 0,
                               "syscall_events_lost": 0, "forks_untracked": 0}
    # Every returned call is timed and lands in exactly one histogram bucket.
    for s in report["totals"]["syscalls"]:
        if s["name"] not in ("exit", "exit_group"):
            assert sum(s["histogram"]) == s["calls"], s["name"]
            assert s["max_ns"] <= s["total_ns"]


def test_twenty_thousand_short_lived_threads(tmp_path: Path, fixture_bin: Path) -> None:
    # BCC syscount stops counting after 10,240 threads (its start map never shrinks).
    k = 20_000
    report, proc = traced_json(tmp_path, [str(fixture_bin), "threads", str(k)])
    assert proc.returncode == 0, proc.stderr
    totals = by_name(report["totals"]["syscalls"])
    assert totals["getppid"]["calls"] == k
    assert totals["exit"]["calls"] == k


def test_exit_group_and_signal_death(tmp_path: Path, fixture_bin: Path) -> None:
    report, proc = traced_json(tmp_path, [str(fixture_bin), "killself"])
    assert proc.returncode == 128 + signal.SIGKILL
    assert report["exit"]["signal"] == signal.SIGKILL and report["exit"]["code"] is None
    root = report["processes"][0]
    assert root["exit"]["signal"] == signal.SIGKILL
    # kill(2) returns before the signal is acted on, so it is a normal, timed call.
    assert by_name(root["syscalls"])["kill"]["calls"] == 1
    assert "exit_group" not in by_name(root["syscalls"])


def test_calls_interrupted_by_exit_group(tmp_path: Path, fixture_bin: Path) -> None:
    threads = 8
    report, proc = traced_json(tmp_path, [str(fixture_bin), "stuck", str(threads)])
    assert proc.returncode == 0, proc.stderr
    calls = by_name(report["totals"]["syscalls"])
    # exit_group kills the threads blocked in read(2): each read still returns through
    # sys_exit (with -ERESTARTSYS) before the thread dies, so it is counted, as an
    # error; the loader's one read of libc succeeds. exit_group itself never returns.
    assert (calls["read"]["calls"], calls["read"]["errors"]) == (threads + 1, threads)
    assert calls["exit_group"]["calls"] == 1
    assert sum(calls["exit_group"]["histogram"]) == 0  # counted at thread exit, untimed
    assert "exit" not in calls  # the threads died in the group exit, not by exit(2)


def test_descendant_exit_codes_from_btf(tmp_path: Path) -> None:
    script = "sh -c 'exit 7'; sh -c 'kill -TERM $$'; exit 5"
    report, proc = traced_json(tmp_path, ["sh", "-c", script])
    assert proc.returncode == 5
    exits = {
        (p["exit"]["code"], p["exit"]["signal"])
        for p in report["processes"] if p["pid"] != report["root_pid"]
    }
    assert exits == {(None, signal.SIGTERM), (7, None)}


def _calls(report: dict[str, Any], roles: dict[str, int]) -> dict[str, dict[str, int]]:
    procs = {p["pid"]: p for p in report["processes"]}
    return {role: {s["name"]: s["calls"] for s in procs[pid]["syscalls"]}
            for role, pid in roles.items()}


def test_count_only_counts_what_full_mode_counts(tmp_path: Path, fixture_bin: Path) -> None:
    # Counted at sys_enter with nothing on sys_exit: the same calls per process and
    # syscall as the full mode, including calls that never return (exit, exit_group)
    # and the execve that count-only has to move to the new exec generation.
    n, threads = 500, 3
    cmd = [str(fixture_bin), "exact", str(n), str(threads)]
    full, proc = traced_json(tmp_path, cmd)
    assert proc.returncode == 0, proc.stderr
    full_calls = _calls(full, _roles(proc.stdout))
    counted, proc = traced_json(tmp_path, cmd, "--count-only")
    assert proc.returncode == 0, proc.stderr
    assert counted["count_only"] is True and full["count_only"] is False
    got = _calls(counted, _roles(proc.stdout))
    # pthread_join's futex waits depend on timing: one run may wait where the other not.
    for calls in (*got.values(), *full_calls.values()):
        calls.pop("futex", None)
    assert got == full_calls
    assert full_calls["parent"]["execve"] == 1 and full_calls["parent"]["exit_group"] == 1
    for s in counted["totals"]["syscalls"]:
        assert (s["errors"], s["total_ns"], sum(s["histogram"])) == (0, 0, 0), s["name"]


def test_count_only_failed_execs_stay_with_the_old_image(tmp_path: Path) -> None:
    # env tries each PATH entry: two execve fail (ENOENT) before one succeeds. All three
    # are the same process's; the text summary of count-only is calls only.
    path = f"{tmp_path}/a:{tmp_path}/b:/usr/bin:/bin"
    cmd = ["/usr/bin/env", f"PATH={path}", "true"]
    full, proc = traced_json(tmp_path, cmd)
    assert proc.returncode == 0, proc.stderr
    counted, proc = traced_json(tmp_path, cmd, "--count-only")
    assert proc.returncode == 0, proc.stderr
    root = {s["name"]: s for s in counted["processes"][0]["syscalls"]}
    assert root["execve"]["calls"] == 4  # tracerd's exec of env, then 2 failed + 1 ok
    assert by_name(full["processes"][0]["syscalls"])["execve"]["errors"] == 2
    assert ({s["name"]: s["calls"] for s in counted["totals"]["syscalls"]}
            == {s["name"]: s["calls"] for s in full["totals"]["syscalls"]})
    text = tracerd("run", "--count-only", "--", *cmd)
    assert text.returncode == 0, text.stderr
    # The summary goes to stderr, as strace -c's does.
    assert ["calls", "syscall"] in [line.split() for line in text.stderr.splitlines()]


def _ia32_binary(tmp_path: Path, n: int) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures"))
    import compat_elf  # noqa: PLC0415 - a fixture script, not a package

    out = tmp_path / "ia32-loop"
    out.write_bytes(compat_elf.build("ia32", n))
    out.chmod(0o755)
    try:
        subprocess.run([str(out)], check=True)
    except OSError as e:  # ENOEXEC: a kernel built without ia32 emulation
        pytest.skip(f"this kernel does not run ia32 binaries: {e}")
    return out


@pytest.mark.parametrize("mode", [[], ["--count-only"]])
def test_ia32_calls_are_counted_under_the_ia32_table(tmp_path: Path, mode: list[str]) -> None:
    # getppid is 64 on i386 and 110 on x86_64; 64 natively is getpid. Counted under native
    # numbers, the loop would show up as 1000 getpid calls.
    n = 1000
    report, proc = traced_json(tmp_path, [str(_ia32_binary(tmp_path, n))], *mode)
    assert proc.returncode == 0, proc.stderr
    calls = {s["name"]: s["calls"] for s in report["totals"]["syscalls"]}
    assert calls == {"execve": 1, "ia32:getppid": n, "ia32:exit_group": 1}
    nrs = {s["name"]: s["nr"] for s in report["totals"]["syscalls"]}
    assert nrs["ia32:getppid"] == syscalls.COMPAT_BIT | 64
    # The text summary names them the same way, and -e selects them by that name.
    text = tracerd("run", "-e", "ia32:getppid", *mode, "--", str(_ia32_binary(tmp_path, n)))
    assert text.returncode == 0, text.stderr
    rows = {r[-1]: r[-2] for r in map(str.split, text.stderr.splitlines()) if len(r) >= 2}
    assert rows["ia32:getppid"] == str(n) and "execve" not in rows


def test_ia32_counts_match_strace_32_bit_summary(tmp_path: Path) -> None:
    binary = _ia32_binary(tmp_path, 777)
    strace = subprocess.run(["strace", "-c", "-f", str(binary)], capture_output=True, text=True,
                            check=True)
    # strace prints a second table for the 32-bit personality; its getppid row.
    section = strace.stderr.split("32 bit mode:")[1]
    theirs = next(int(r.split()[3]) for r in section.splitlines() if r.endswith(" getppid"))
    report, _ = traced_json(tmp_path, [str(binary)])
    ours = by_name(report["totals"]["syscalls"])["ia32:getppid"]["calls"]
    assert ours == theirs == 777
