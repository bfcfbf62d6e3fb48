"""Drops are reported, never silent; user space agrees with the C struct layouts."""

from __future__ import annotations

import ctypes as ct
import os
import subprocess
import time
from pathlib import Path

from conftest import traced_json, tracerd

from tracerd import _probe, _records, syscalls
from tracerd._probe import MAP_LAYOUTS, Limits, Probe
from tracerd.model import EV_EXIT, EV_FORK


def test_tiny_stats_map_reports_drops(tmp_path: Path, fixture_bin: Path) -> None:
    # No counter blocks: every count goes through the 4-entry map.
    report, proc = traced_json(tmp_path, [str(fixture_bin), "exact", "100", "0"],
                               "--max-stats", "4", "--max-blocks", "0")
    assert proc.returncode == 0, proc.stderr
    assert report["drops"]["stats_full"] > 0
    counted = report["totals"]["calls"]
    # Nothing vanishes: what was counted plus what was dropped is every call made.
    full, _ = traced_json(tmp_path, [str(fixture_bin), "exact", "100", "0"])
    assert counted + report["drops"]["stats_full"] == full["totals"]["calls"]

    text = tracerd("run", "--max-stats", "4", "--max-blocks", "0", "--",
                   str(fixture_bin), "exact", "10", "0")
    assert "WARNING" in text.stderr and "stats map full" in text.stderr


def _layout(struct: type[ct.Structure]) -> list[tuple[str, int, int]]:
    return [(name, getattr(struct, name).offset, getattr(struct, name).size)
            for name, *_ in struct._fields_]


def test_python_structs_match_compiled_layout() -> None:
    with Probe(Limits.for_this_kernel()) as probe:
        for name, (key, leaf) in MAP_LAYOUTS.items():
            table = probe.table(name)
            # Per-CPU maps present their value as an array with one element per CPU.
            compiled = getattr(table.Leaf, "_type_", table.Leaf)
            if leaf is not None:
                assert ct.sizeof(compiled) == ct.sizeof(leaf), name
                assert _layout(compiled) == _layout(leaf), name
            if key is not None:
                assert ct.sizeof(table.Key) == ct.sizeof(key), name
                assert _layout(table.Key) == _layout(key), name
    # The ring's records are parsed with a struct.Struct, not the ctypes mirror.
    assert _records.HEADER.size == ct.sizeof(_probe.SysEvent)


def test_reads_are_cumulative_and_never_clear() -> None:
    """read_stats leaves counters in place; only delete_stats removes, returning them."""
    me = os.getpid()
    getppid = syscalls.table_for().number("getppid")
    assert getppid is not None
    with Probe(Limits.for_this_kernel()) as probe:
        probe.track(me)
        try:
            for _ in range(100):
                os.getppid()
            first = probe.read_stats()[(me, getppid)].calls
            for _ in range(50):
                os.getppid()
            second = probe.read_stats()[(me, getppid)].calls
        finally:
            probe.untrack(me)
        removed = probe.delete_stats([me])
        assert (me, getppid) not in probe.read_stats()
    assert first == 100 and second == 150
    assert removed[(me, getppid)].calls == 150


def test_group_death_without_the_tracepoints_group_dead_field(fixture_bin: Path) -> None:
    """Kernels before 6.16 have no sched_process_exit.group_dead: the fallback (the last
    thread out sees signal->live == 0) must report each process's exit once, after all
    its threads, with every call counted. Forced here on a kernel that has the field."""
    n, threads = 20, 4
    with Probe(Limits.for_this_kernel(), exit_has_group_dead=False) as probe:
        g = subprocess.Popen([str(fixture_bin), "gated", str(n), str(threads)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert g.stdout is not None and g.stdin is not None
        assert g.stdout.readline().startswith(b"ready")
        probe.track(g.pid)
        g.stdin.write(b"x")
        g.stdin.close()
        assert g.wait(60) == 0
        # `stuck`: the leader calls exit_group while its threads block in read(2);
        # the last thread out is not the leader.
        s = subprocess.Popen([str(fixture_bin), "stuck", "3"])
        probe.track(s.pid)
        assert s.wait(60) == 0
        pids: set[int] = {g.pid, s.pid}
        exits: list[int] = []
        deadline = time.monotonic() + 10
        while len(exits) < 4 and time.monotonic() < deadline:
            for ev in probe.poll_events(100):
                if ev.type == EV_FORK:
                    pids.add(ev.pid)
                elif ev.type == EV_EXIT:
                    exits.append(ev.pid)
        assert sorted(exits) == sorted(pids) and len(pids) == 4  # once each
        counts = probe.delete_stats(sorted(pids))
    name = syscalls.table_for().name

    def total(syscall: str) -> int:
        return sum(st.calls for (_, nr), st in counts.items() if name(nr) == syscall)

    assert total("getppid") == 6 * n
    assert total("sched_yield") == threads * n
    assert total("exit_group") == 4
    assert total("read") >= 3  # the stuck threads' reads, counted though they never return


def test_a_burst_of_new_processes_loses_no_counts() -> None:
    # 2,000 tracked children released at once each make six first calls together: ~16,000
    # first inserts within milliseconds. A map allocating entries at insert time
    # (BPF_F_NO_PREALLOC) lost hundreds of them to -ENOMEM in two runs out of three here,
    # reported as stats_full with the map a quarter full; the preallocated map loses none.
    # (No counter blocks: they would take the first few hundred children off the map.)
    n = 2000
    with Probe(Limits.for_this_kernel(max_blocks=0)) as probe:
        assert probe.stats_prealloc()
        r, w = os.pipe()
        probe.track(os.getpid())
        kids = []
        try:
            for _ in range(n):
                pid = os.fork()
                if pid == 0:  # pragma: no cover - the child
                    os.close(w)
                    os.read(r, 1)
                    os.getppid(), os.getpid(), os.getuid(), os.getgid()
                    os.geteuid(), os.getegid()
                    os._exit(0)
                kids.append(pid)
        finally:
            probe.untrack(os.getpid())
            os.close(w)
            for k in kids:
                os.waitpid(k, 0)
        nr = syscalls.table_for().number("getppid")
        stats = probe.read_stats()
        assert probe.drops().stats_full == 0
        assert sum(stats[(k, nr)].calls for k in kids if (k, nr) in stats) == n
