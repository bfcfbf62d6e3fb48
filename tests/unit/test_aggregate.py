"""The aggregate: events and map snapshots in, per-process totals out (no kernel)."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from tracerd._aggregate import Aggregate, filter_report
from tracerd.model import (
    EV_EXEC,
    EV_EXIT,
    EV_FORK,
    Drops,
    ExitStatus,
    LifecycleEvent,
    ProcessInfo,
    SyscallStats,
)


def ev(kind: int, pid: int, ppid: int = 0, *, code: int | None = None, ts: int = 0,
       comm: str = "x", filename: str = "") -> LifecycleEvent:
    return LifecycleEvent(kind, pid, ppid, code, ts, comm, filename)


def stats(calls: int, errors: int = 0) -> SyscallStats:
    return SyscallStats(calls=calls, errors=errors, total_ns=calls * 10, max_ns=10)


def make() -> Aggregate:
    agg = Aggregate()
    agg.add_process(ProcessInfo(pid=100, argv=["sh", "-c", "x"], start_ns=1))
    return agg


def report(agg: Aggregate):  # type: ignore[no-untyped-def]
    return agg.report(command=["sh"], arch="x86_64", kernel="k", root_pid=100, start_ns=0,
                      end_ns=9, exit=None, drops=Drops())


def test_fork_inherits_argv_exec_replaces_it_exit_decodes_status() -> None:
    agg = make()
    agg.on_event(ev(EV_FORK, 101, 100, ts=5, comm="sh"))
    assert agg.processes[101].argv == ["sh", "-c", "x"] and agg.processes[101].ppid == 100
    agg.on_event(ev(EV_EXEC, 101, comm="ls", filename="/bin/ls"), read_argv=False)
    assert (agg.processes[101].comm, agg.processes[101].filename) == ("ls", "/bin/ls")
    gone = agg.on_events([ev(EV_EXIT, 101, code=2 << 8, ts=7),
                          ev(EV_EXIT, 100, code=9)])
    assert gone == [101, 100]
    assert agg.processes[101].exit == ExitStatus(code=2)
    assert agg.processes[101].end_ns == 7
    assert agg.processes[100].exit == ExitStatus(signal=9)


def test_live_snapshots_replace_and_removed_entries_accumulate() -> None:
    agg = make()
    agg.set_live({(100, 1): stats(5)})
    agg.set_live({(100, 1): stats(7)})  # cumulative: replaces, never adds
    assert agg.stats_of(100)[1].calls == 7
    agg.add_done({(100, 1): stats(8)})  # removed from the map at exit
    assert agg.stats_of(100)[1].calls == 8
    # A late count for the dead tgid (a sibling thread still in do_exit) adds on top.
    agg.set_live({(100, 1): stats(1)})
    agg.add_done({(100, 1): stats(1)})
    assert agg.stats_of(100)[1].calls == 9


def test_foreign_processes_are_ignored_and_unknown_ones_kept() -> None:
    agg = make()
    agg.set_live({(999, 1): stats(3), (100, 2): stats(1)})
    assert 999 not in report(agg).processes
    agg.on_event(ev(EV_EXIT, 555, code=0))  # fork event lost: still reported
    assert 555 in report(agg).processes


def test_filter_report_keeps_only_selected_numbers() -> None:
    agg = make()
    agg.set_live({(100, 1): stats(3), (100, 2): stats(4)})
    filtered = filter_report(report(agg), frozenset({2}))
    assert set(filtered.processes[100].syscalls) == {2}
    assert filter_report(report(agg), None).processes[100].syscalls.keys() == {1, 2}


@given(st.lists(st.tuples(st.integers(1, 5), st.integers(0, 1000)), max_size=30))
def test_repeated_snapshots_never_double_count(reads: list[tuple[int, int]]) -> None:
    agg = make()
    latest: dict[int, int] = {}
    for nr, calls in reads:
        latest[nr] = max(latest.get(nr, 0), calls)
        agg.set_live({(100, k): stats(v) for k, v in latest.items()})
    got = {nr: s.calls for nr, s in agg.stats_of(100).items()}
    assert got == {k: v for k, v in latest.items()}


def test_exit_status_decoding_matches_wait_status() -> None:
    assert ExitStatus.from_wait_status(3 << 8).shell_status() == 3
    killed = ExitStatus.from_wait_status(9)
    assert killed.shell_status() == 137 and killed.describe() == "killed by SIGKILL"
    assert ExitStatus.from_wait_status(0x80 | 11).core_dumped
    assert os.WEXITSTATUS(3 << 8) == 3


def test_percentiles_from_log2_histogram() -> None:
    s = SyscallStats(calls=100, total_ns=0, max_ns=5000)
    s.hist[3] = 50  # 8..15 ns
    s.hist[12] = 49  # 4096..8191 ns, capped by max_ns
    s.hist[2] = 1
    assert s.percentile_ns(0.5) == 15
    assert s.percentile_ns(0.99) == 5000
    assert s.percentile_ns(0.01) == 7
    assert SyscallStats().percentile_ns(0.5) is None
