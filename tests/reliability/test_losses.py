"""No silent loss: when the kernel's counter map fills or its event ring overflows, the
loss shows in the session's report, its Watch updates, GetInfo and /metrics alike, and
the daemon carries on (real kernel, real daemon, maps made tiny on purpose)."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

from conftest import Daemon, free_port, scrape, wait_for

from tracerd._sessions import SessionOptions, State
from tracerd.client import Client, Final, Update
from tracerd.model import Drops, Report


def drop_metrics(port: int) -> dict[str, float]:
    """tracerd_drops_total by kind."""
    return {k.split('"')[1]: v for k, v in scrape(f"127.0.0.1:{port}").items()
            if k.startswith("tracerd_drops_total{")}


def held_shell(script: str) -> subprocess.Popen[str]:
    """``sh`` that waits for a line on stdin, then runs ``script``: a session can start
    on it before it does anything. Scripts end with a pause, so the watcher's next
    update comes while the session still runs."""
    return subprocess.Popen(["sh", "-c", f"read go; {script}"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)


def trace(c: Client, proc: subprocess.Popen[str]) -> tuple[Report, list[Drops]]:
    """Run the held shell under a session with a Watch; (final report, drops per update)."""
    s = c.start_pid(proc.pid, children=True, options=SessionOptions(per_process=True))
    seen: list[Drops] = []
    final: list[Report] = []

    def watch() -> None:
        for ev in c.watch(s.id, interval_ms=50):
            if isinstance(ev, Update):
                seen.append(ev.drops)
            elif isinstance(ev, Final):
                final.append(ev.report)

    t = threading.Thread(target=watch)
    t.start()
    wait_for(lambda: seen, why="the watch is subscribed")
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.close()
    assert proc.wait(120) == 0
    t.join(60)
    assert final, "the watch ended without its final report"
    summary, report = c.report(s.id)
    assert summary.state == State.FINISHED
    return report, seen


def test_a_full_counter_map_is_counted_everywhere(tmp_path: Path, fixture_bin: Path) -> None:
    port = free_port()
    # 8 entries: fewer than the (process, syscall) pairs of the fixture's three processes,
    # and no counter blocks to take any of them off the map.
    d = Daemon(tmp_path, "--max-stats", "8", "--max-blocks", "0",
               "--metrics", f"127.0.0.1:{port}").wait_ready()
    try:
        with d.client() as c:
            report, updates = trace(c, held_shell(f"{fixture_bin} exact 20 0; sleep 0.5"))
            info = c.info()
            sid = c.list()[-1].id
        lost = report.drops.stats_full
        assert lost > 0 and report.drops.total() == lost
        assert info.drops.stats_full == lost  # the only session: the same calls
        assert max(u.stats_full for u in updates) > 0
        assert drop_metrics(port)["stats_full"] == lost
        out = d.cli("report", sid)
        assert out.returncode == 0 and f"{lost} syscalls not counted (stats map full)" in (
            out.stdout + out.stderr)
    finally:
        assert d.stop() == 0


def test_an_overflowing_event_ring_is_counted_and_repaired(tmp_path: Path) -> None:
    port = free_port()
    # One 4 KiB page holds about a dozen fork/exec/exit records: a burst of short
    # children overflows it before the drain can read it.
    d = Daemon(tmp_path, "--ringbuf-pages", "1", "--metrics", f"127.0.0.1:{port}").wait_ready()
    burst = "i=0; while [ $i -lt 300 ]; do /bin/true & i=$((i+1)); done; wait; sleep 1.5"
    try:
        with d.client() as c:
            for _ in range(3):
                report, updates = trace(c, held_shell(burst))
                if report.drops.events_lost:
                    break
            info = c.info()
            assert info.sessions_running == 0 and info.tracked_pids == 0
        lost = report.drops.events_lost
        assert lost > 0, "the burst never overflowed a one-page ring"
        # The session still ended: exits whose records were lost were found by the sweep.
        assert info.drops.events_lost >= lost
        assert drop_metrics(port)["events_lost"] == info.drops.events_lost
        assert max(u.events_lost for u in updates) > 0  # watchers were told as it happened
        # Every /bin/true that was seen, was seen exactly (it makes no calls we could miss
        # without saying so): the report lists the shell and its children.
        assert len(report.processes) >= 2
    finally:
        assert d.stop() == 0
