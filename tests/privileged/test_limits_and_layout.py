"""Drops are reported, never silent; user space agrees with the C struct layouts."""

from __future__ import annotations

import ctypes as ct
import os
from pathlib import Path

from conftest import traced_json, tracerd

from tracerd import _probe, _records, syscalls
from tracerd._probe import MAP_LAYOUTS, Limits, Probe


def test_tiny_stats_map_reports_drops(tmp_path: Path, fixture_bin: Path) -> None:
    report, proc = traced_json(tmp_path, [str(fixture_bin), "exact", "100", "0"],
                               "--max-stats", "4")
    assert proc.returncode == 0, proc.stderr
    assert report["drops"]["stats_full"] > 0
    counted = report["totals"]["calls"]
    # Nothing vanishes: what was counted plus what was dropped is every call made.
    full, _ = traced_json(tmp_path, [str(fixture_bin), "exact", "100", "0"])
    assert counted + report["drops"]["stats_full"] == full["totals"]["calls"]

    text = tracerd("run", "--max-stats", "4", "--", str(fixture_bin), "exact", "10", "0")
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
