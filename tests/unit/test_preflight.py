"""The daemon's start-up checks turn an unreadable or missing prerequisite into one
clear error with its exit status, never a traceback (tracerd._probe)."""

from __future__ import annotations

import ctypes as ct
from pathlib import Path

import pytest

from tracerd import _probe
from tracerd._errors import TracerdError


def test_headers_hidden_by_a_sandbox_are_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    real_exists, real_is_dir = Path.exists, Path.is_dir

    def exists(p: Path) -> bool:
        return False if p.name == "kheaders.tar.xz" else real_exists(p)

    def is_dir(p: Path) -> bool:
        if str(p).startswith("/lib/modules"):
            raise PermissionError(13, "Permission denied")
        return real_is_dir(p)

    monkeypatch.setattr(Path, "exists", exists)
    monkeypatch.setattr(Path, "is_dir", is_dir)
    with pytest.raises(_probe.HeadersMissing, match="cannot read them: Permission denied") as e:
        _probe.check_headers()
    assert isinstance(e.value, TracerdError) and e.value.exit_status == 72


def test_tracefs_that_cannot_be_mounted_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    monkeypatch.setattr(_probe, "_TRACEFS", (tmp_path / "tracing", tmp_path / "debug"))
    with pytest.raises(_probe.BpfUnusable, match="tracefs is not mounted"):
        _probe.ensure_tracefs()


def test_count_only_has_no_per_syscall_events() -> None:
    # Events need sys_exit, which count-only leaves alone: refused before any map is used.
    probe = _probe.Probe(_probe.Limits(pid_max=100), count_only=True)
    with pytest.raises(TracerdError, match="count-only"):
        probe.set_events(0, None)


@pytest.mark.parametrize(("cpus", "max_stats", "prealloc"),
                         [(2, 65536, True), (5, 65536, True), (64, 65536, False),
                          (64, 4096, True)])
def test_stats_map_preallocated_within_its_memory_budget(
        monkeypatch: pytest.MonkeyPatch, cpus: int, max_stats: int, prealloc: bool) -> None:
    monkeypatch.setattr(_probe, "_possible_cpus", lambda: cpus)
    probe = _probe.Probe(_probe.Limits(pid_max=100, max_stats=max_stats))
    assert probe.stats_prealloc() is prealloc


@pytest.mark.parametrize(("possible", "slots", "blocks"),
                         [("0-1", 2, 390), ("0-1,4-7", 8, 97), ("0-255", 256, 3),
                          ("0-1023", 1024, 0), ("0", 1, 780)])
def test_counter_blocks_fit_their_memory_budget(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, possible: str, slots: int,
        blocks: int) -> None:
    # Copies are indexed by CPU id: holes in the possible mask still take a copy.
    (tmp_path / "possible").write_text(possible + "\n")
    monkeypatch.setattr(_probe, "_POSSIBLE_CPUS", tmp_path / "possible")
    assert _probe._cpu_slots() == slots
    probe = _probe.Probe(_probe.Limits(pid_max=100))
    assert probe.block_count() == blocks
    assert blocks * 512 * ct.sizeof(_probe.StatsVal) * slots <= _probe.BLOCK_BUDGET_BYTES
    assert _probe.Probe(_probe.Limits(pid_max=100, max_blocks=7)).block_count() == 7


def test_too_many_counter_blocks_is_a_usage_error(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    (tmp_path / "possible").write_text("0-63\n")
    monkeypatch.setattr(_probe, "_POSSIBLE_CPUS", tmp_path / "possible")
    assert _probe.Probe(_probe.Limits(pid_max=100, max_blocks=65535)).block_count() == 65535
    with pytest.raises(TracerdError, match="max_blocks 65536: 0 to 65535 on 64 CPU slots") as e:
        _probe.Probe(_probe.Limits(pid_max=100, max_blocks=65536)).block_count()
    assert e.value.exit_status == 2
