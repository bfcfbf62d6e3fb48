"""Tests for tracerd._top's pure half: frames built from hand-made summaries and reports."""

from __future__ import annotations

import time
from collections.abc import Mapping

import grpc
import pytest

from tracerd._budgets import Result
from tracerd._sessions import (
    FOLDED_PID,
    PidTarget,
    SessionOptions,
    SessionSummary,
    SpawnedTarget,
    State,
    Target,
)
from tracerd._top import (
    RECENT_NS,
    Poll,
    Sample,
    _Poller,
    build_frame,
    process_rates,
    rate,
    select,
    session_rate,
    syscall_rates,
)
from tracerd.client import ClientError
from tracerd.model import ExitStatus, ProcessInfo, Report, SyscallStats

S = 1_000_000_000
GETPPID, YIELD, OPENAT = 110, 24, 257
_NAMES = {GETPPID: "getppid", YIELD: "sched_yield", OPENAT: "openat"}


def name_of(nr: int) -> str:
    return _NAMES.get(nr, f"syscall_{nr}")


#: per pid: comm and, per syscall, (calls, errors, total_ns)
Procs = Mapping[int, tuple[str, Mapping[int, tuple[int, int, int]]]]


def report(procs: Procs, budget: list[Result] | None = None,
           exited: Mapping[int, ExitStatus] | None = None) -> Report:
    exited = exited or {}
    return Report(
        command=["work"], arch="x86_64", kernel="6.1", root_pid=min(procs, default=0),
        start_ns=0,
        processes={pid: ProcessInfo(pid=pid, comm=comm, exit=exited.get(pid),
                                    end_ns=S if pid in exited else None,
                                    syscalls={nr: SyscallStats(calls=c, errors=e, total_ns=t)
                                              for nr, (c, e, t) in stats.items()})
                   for pid, (comm, stats) in procs.items()},
        budget=budget or [])


def sample(sid: str, t_ns: int, procs: Procs, *, state: State = State.RUNNING,
           budget: list[Result] | None = None, end_ns: int = 0, reason: str = "",
           target: Target | None = None, label: str = "", owner: str = "admin",
           gone_ns: int | None = None, exited: Mapping[int, ExitStatus] | None = None,
           ) -> Sample:
    rep = report(procs, budget, exited)
    summ = SessionSummary(id=sid, state=state, target=target or PidTarget(pid=min(procs)),
                          options=SessionOptions(label=label), owner=owner, start_ns=S,
                          end_ns=end_ns, end_reason=reason, processes=len(procs),
                          calls=sum(st.calls for st in rep.totals().values()))
    return Sample(t_ns=t_ns, summary=summ, report=rep, gone_ns=gone_ns)


def poll(*samples: Sample, now_ns: int = 100 * S) -> Poll:
    return Poll(t_ns=min((s.t_ns for s in samples), default=0), now_ns=now_ns,
                samples={s.summary.id: s for s in samples})


def failed(name: str, *, counts: bool = True) -> Result:
    return Result(name=name, type="syscall_calls", passed=False,
                  message="getppid: 500 calls > 100 calls", actual_value=500.0,
                  expected_value=100.0, action="fail" if counts else "warn", enabled=True,
                  fail_on_violation=True)


def passed(name: str) -> Result:
    return Result(name=name, type="span_count", passed=True, message="10 calls <= 1000 calls",
                  actual_value=10.0, expected_value=1000.0, action="fail", enabled=True,
                  fail_on_violation=True)


def row(lines: list[str], first: str) -> list[str]:
    """The cells of the row whose first cell is ``first``."""
    hits = [line.split() for line in lines if line.split()[:1] == [first]]
    assert len(hits) == 1, (first, lines)
    return hits[0]


def column(lines: list[str], header: str, key: str) -> str:
    """Cell under ``header`` in the row starting with ``key``, in the table holding both."""
    for i, line in enumerate(lines):
        cells = line.split()
        if header in cells and cells[0].isupper():
            idx = cells.index(header)
            for other in lines[i + 1:]:
                if not other.strip():
                    break
                if other.split()[:1] == [key]:
                    return other.split()[idx]
    raise AssertionError(f"no {header} for {key} in {lines}")


# ---------------------------------------------------------------------- rates


def test_rate_is_count_delta_over_time() -> None:
    assert rate(100, 600, 2 * S, 2 * S + S // 2) == 1000.0
    assert rate(0, 3, 0, 4 * S) == 0.75
    assert rate(5, 5, 0, S) == 0.0
    assert rate(10, 4, 0, S) == 0.0  # never negative
    assert rate(1, 2, S, S) is None  # no time between: no rate


def test_rates_are_exact_for_known_deltas() -> None:
    a0 = sample("a", 10 * S, {100: ("w", {GETPPID: (100, 0, 0), YIELD: (50, 0, 0)}),
                              101: ("c", {GETPPID: (10, 0, 0)})})
    a1 = sample("a", 10 * S + 250_000_000,  # 0.25 s later
                {100: ("w", {GETPPID: (350, 0, 0), YIELD: (60, 0, 0)}),
                 101: ("c", {GETPPID: (10, 0, 0)}),
                 102: ("n", {OPENAT: (5, 5, 0)})})
    assert session_rate(a0, a1) == (425 - 160) * 4.0 == 1060.0
    assert syscall_rates(a0, a1) == {GETPPID: 1000.0, YIELD: 40.0, OPENAT: 20.0}
    assert process_rates(a0, a1) == {100: 1040.0, 101: 0.0, 102: 20.0}
    assert session_rate(None, a1) is None
    assert syscall_rates(None, a1) is None

    lines = build_frame(poll(a0), poll(a1), None, None, name_of=name_of)
    assert column(lines, "CALLS/S", "a") == "1060.0"
    assert column(lines, "CALLS/S", "getppid") == "1000.0"
    assert column(lines, "CALLS/S", "sched_yield") == "40.0"
    assert "1060.0 calls/s" in lines[0]

    one = build_frame(poll(a0), poll(a1), None, None, name_of=name_of, session_id="a")
    assert "425 calls (1060.0/s)" in "\n".join(one)
    assert column(one, "CALLS/S", "getppid") == "1000.0"
    assert column(one, "CALLS/S", "100") == "1040.0"
    assert column(one, "CALLS/S", "102") == "20.0"


def test_rates_add_up_over_sessions_each_with_its_own_interval() -> None:
    a0 = sample("a", 0, {1: ("a", {GETPPID: (0, 0, 0)})})
    a1 = sample("a", S, {1: ("a", {GETPPID: (300, 0, 0)})})
    b0 = sample("b", S // 10, {2: ("b", {GETPPID: (0, 0, 0)})})
    b1 = sample("b", S // 10 + S // 2, {2: ("b", {GETPPID: (100, 0, 0)})})
    lines = build_frame(poll(a0, b0), poll(a1, b1), None, None, name_of=name_of)
    assert column(lines, "CALLS/S", "a") == "300.0"
    assert column(lines, "CALLS/S", "b") == "200.0"
    assert column(lines, "CALLS/S", "getppid") == "500.0"
    assert column(lines, "CALLS", "getppid") == "400"


def test_first_frame_has_no_rates() -> None:
    a = sample("a", S, {1: ("a", {GETPPID: (7, 0, 0)})})
    lines = build_frame(None, poll(a), None, None, name_of=name_of)
    assert column(lines, "CALLS/S", "a") == "-"
    assert column(lines, "CALLS/S", "getppid") == "-"
    assert column(lines, "CALLS", "getppid") == "7"
    assert "- calls/s" in lines[0]


# ---------------------------------------------------------------------- sorting


def test_sessions_sort_by_rate_then_ended_latest_first() -> None:
    procs0 = {1: ("x", {GETPPID: (0, 0, 0)})}
    prev = poll(sample("slow", 0, procs0), sample("fast", 0, procs0),
                sample("idle", 0, procs0))
    cur = poll(
        sample("slow", S, {1: ("x", {GETPPID: (10, 0, 0)})}),
        sample("idle", S, procs0),
        sample("fast", S, {1: ("x", {GETPPID: (5000, 0, 0)})}),
        sample("old", S, procs0, state=State.FINISHED, end_ns=20 * S),
        sample("new", S, procs0, state=State.INTERRUPTED, end_ns=90 * S, reason="stopped"),
    )
    lines = build_frame(prev, cur, None, None, name_of=name_of)
    order = [line.split()[0] for line in lines[3:8]]
    assert order == ["fast", "slow", "idle", "new", "old"]
    assert row(lines, "new")[1] == "interrupted"


def test_syscalls_sort_by_rate_then_calls() -> None:
    prev = poll(sample("a", 0, {1: ("x", {GETPPID: (1000, 0, 0), YIELD: (0, 0, 0),
                                          OPENAT: (0, 0, 0)})}))
    cur = poll(sample("a", S, {1: ("x", {GETPPID: (1000, 0, 0), YIELD: (10, 0, 0),
                                         OPENAT: (20, 0, 0)})}))
    for sid in (None, "a"):
        lines = build_frame(prev, cur, None, None, name_of=name_of, session_id=sid)
        names = [line.split()[0] for line in lines if line.split()[:1]
                 and line.split()[0] in _NAMES.values()]
        assert names == ["openat", "sched_yield", "getppid"]
    first = build_frame(None, cur, None, None, name_of=name_of, session_id="a")
    names = [line.split()[0] for line in first if line.split()[:1]
             and line.split()[0] in _NAMES.values()]
    assert names == ["getppid", "openat", "sched_yield"]  # no rates yet: by calls


# ---------------------------------------------------------------------- size


def test_lines_are_cut_to_width_and_height_and_tables_to_rows() -> None:
    long_cmd = SpawnedTarget(pid=42, argv=("make", "-j8", "x" * 300))
    procs = {pid: (f"p{pid}", {nr: (pid + nr, 0, 0) for nr in range(40)})
             for pid in range(42, 60)}
    cur = poll(*(sample(f"s{i}", S, procs, target=long_cmd) for i in range(12)))
    for sid in (None, "s0"):
        full = build_frame(None, cur, None, None, name_of=name_of, session_id=sid)
        assert max(len(line) for line in full) > 300
        cut = build_frame(None, cur, 60, None, name_of=name_of, session_id=sid)
        assert len(cut) == len(full)
        assert all(len(line) <= 60 for line in cut)
        assert [line[:60] for line in full] == cut
        capped = build_frame(None, cur, None, 4, name_of=name_of, session_id=sid)
        assert any(line.startswith("... ") and line.endswith(" more") for line in capped)
        short = build_frame(None, cur, 80, 4, name_of=name_of, session_id=sid, height=9)
        assert len(short) == 9
    capped = build_frame(None, cur, None, 4, name_of=name_of)
    assert "... 8 more" in capped  # 12 sessions, 4 shown
    assert "... 36 more" in capped  # 40 syscalls, 4 shown


# ---------------------------------------------------------------------- budget, states


def test_violations_are_counted_and_listed() -> None:
    procs = {7: ("w", {GETPPID: (500, 0, 0)})}
    cur = poll(sample("bad", S, procs, budget=[passed("ok"), failed("too_many"),
                                                 failed("soft", counts=False)]),
               sample("good", S, procs, budget=[passed("ok")]),
               sample("none", S, procs))
    lines = build_frame(None, cur, None, None, name_of=name_of)
    assert column(lines, "VIOL", "bad") == "2"
    assert column(lines, "VIOL", "good") == "0"
    assert column(lines, "VIOL", "none") == "-"

    one = build_frame(None, cur, None, None, name_of=name_of, session_id="bad")
    text = "\n".join(one)
    assert "budget: 2 of 3 failed" in text
    assert row(one, "too_many")[1:3] == ["FAIL", "syscall_calls"]
    assert row(one, "soft")[1] == "warn"
    assert "getppid: 500 calls > 100 calls" in row_text(one, "too_many")
    assert not any(line.startswith("ok ") for line in one)
    good = "\n".join(build_frame(None, cur, None, None, name_of=name_of, session_id="good"))
    assert "budget: 1 passing" in good
    assert "VIOLATION" not in good


def row_text(lines: list[str], first: str) -> str:
    return next(line for line in lines if line.split()[:1] == [first])


def test_finished_session_is_marked_and_has_no_rate() -> None:
    procs0 = {9: ("w", {GETPPID: (10, 1, 0)})}
    procs1 = {9: ("w", {GETPPID: (30, 1, 2000)})}
    ended = sample("done", 2 * S, procs1, state=State.FINISHED, end_ns=60 * S,
                   reason="all processes exited", exited={9: ExitStatus(code=3)})
    prev = poll(sample("done", S, procs0))
    lines = build_frame(prev, poll(ended, now_ns=62 * S), None, None, name_of=name_of)
    cells = row(lines, "done")
    assert cells[1] == "finished"
    # It ended within this interval: the calls it made before ending still have a rate.
    assert column(lines, "CALLS/S", "done") == "20.0"
    # ... and none once it was already over at the previous refresh.
    again = build_frame(poll(ended), poll(ended, now_ns=63 * S), None, None, name_of=name_of)
    assert column(again, "CALLS/S", "done") == "-"
    assert "0 running, 1 ended" in again[0]
    assert not any(line.startswith("SYSCALL") for line in again)  # only running ones count

    one = build_frame(poll(ended), poll(ended, now_ns=63 * S), None, None, name_of=name_of,
                      session_id="done")
    text = "\n".join(one)
    assert "FINISHED (all processes exited), ran 59.0s, ended 3.0s ago" in text
    assert row(one, "9")[-3:] == ["exited", "with", "3"]
    assert column(one, "CALLS/S", "getppid") == "-"
    assert column(one, "AVG(us)", "getppid") == f"{2000 / 30 / 1000:.1f}"
    assert column(one, "ERRORS", "getppid") == "1"


def test_gone_session_is_shown_as_gone() -> None:
    last = sample("lost", S, {3: ("w", {GETPPID: (4, 0, 0)})})
    prev = poll(last)
    cur = poll(Sample(t_ns=2 * S, summary=last.summary, report=last.report, gone_ns=50 * S))
    lines = build_frame(prev, cur, None, None, name_of=name_of)
    assert row(lines, "lost")[1] == "gone"
    assert column(lines, "CALLS/S", "lost") == "-"
    one = "\n".join(build_frame(prev, cur, None, None, name_of=name_of, session_id="lost"))
    assert "GONE (the daemon no longer knows it" in one
    missing = build_frame(None, poll(), None, None, name_of=name_of, session_id="nope")
    assert missing == ["session nope: not known to the daemon"]
    assert build_frame(None, poll(), None, None, name_of=name_of)[2] == "no sessions"


def test_folded_exited_processes_have_no_rate() -> None:
    prev = poll(sample("a", 0, {5: ("w", {GETPPID: (10, 0, 0)})}))
    cur = poll(sample("a", S, {FOLDED_PID: ("", {GETPPID: (10, 0, 0)}),
                               6: ("w", {GETPPID: (4, 0, 0)})}))
    one = build_frame(prev, cur, None, None, name_of=name_of, session_id="a")
    cells = row(one, "-")
    assert cells[1:3] == ["(exited", "processes)"]
    assert cells[4] == "-"
    assert column(one, "CALLS/S", "6") == "4.0"


def test_target_text_and_label() -> None:
    s = sample("r", S, {42: ("make", {GETPPID: (1, 0, 0)})},
               target=SpawnedTarget(pid=42, argv=("make", "-C", "a dir")), label="ci")
    lines = build_frame(None, poll(s), None, None, name_of=name_of)
    assert row_text(lines, "r").endswith("[ci] run 42: make -C 'a dir'")


def test_select_keeps_running_and_recently_ended() -> None:
    def summ(sid: str, state: State, end_ns: int) -> SessionSummary:
        return SessionSummary(id=sid, state=state, target=PidTarget(pid=1),
                              options=SessionOptions(), owner="o", start_ns=0, end_ns=end_ns,
                              end_reason="", processes=1, calls=0)
    items = [summ("run", State.RUNNING, 0), summ("fresh", State.FINISHED, 950 * S),
             summ("stale", State.INTERRUPTED, 100 * S)]
    assert [s.id for s in select(items, 1000 * S)] == ["run", "fresh"]
    assert [s.id for s in select(items, 0)] == ["run", "fresh", "stale"]


# ---------------------------------------------------------------------- poller


class _Info:
    arch = "x86_64"
    now_ns = 100 * S


class _StubClient:
    """Answers like tracerd.client.Client, from a dict the test edits between polls."""

    def __init__(self) -> None:
        self.sessions: dict[str, Sample] = {}
        self.reports = 0
        self.since: list[int | None] = []  #: ListSessions' since_unix_ns, per call

    def info(self) -> _Info:
        return _Info()

    def list(self, *, since_unix_ns: int | None = None) -> list[SessionSummary]:
        self.since.append(since_unix_ns)
        return [s.summary for s in self.sessions.values()]

    def report(self, sid: str) -> tuple[SessionSummary, Report]:
        self.reports += 1
        s = self.sessions.get(sid)
        if s is None or s.report is None:
            raise ClientError(grpc.StatusCode.NOT_FOUND, f"session_id: no session {sid!r}")
        return s.summary, s.report


def test_poller_marks_vanished_sessions_and_reads_ended_ones_once() -> None:
    stub = _StubClient()
    procs = {1: ("w", {GETPPID: (1, 0, 0)})}
    stub.sessions = {"live": sample("live", 0, procs),
                     "over": sample("over", 0, procs, state=State.FINISHED, end_ns=99 * S)}
    p = _Poller(stub, None)  # type: ignore[arg-type]
    first = p.poll()
    assert set(first.samples) == {"live", "over"}
    assert stub.reports == 2
    # Only the last minute is listed: the history behind ListSessions may be huge.
    since = stub.since[-1]
    assert since is not None and 0 < time.time_ns() - since <= RECENT_NS + 10**9
    second = p.poll()
    assert stub.reports == 3  # the ended one is not read again
    assert second.samples["over"] == first.samples["over"]
    del stub.sessions["live"]
    third = p.poll()
    assert third.samples["live"].gone
    assert third.samples["live"].gone_ns == 100 * S
    assert not third.samples["over"].gone

    single = _Poller(stub, "over")  # type: ignore[arg-type]
    assert not single.poll().samples["over"].gone
    del stub.sessions["over"]
    assert single.poll().samples["over"].gone
    with pytest.raises(ClientError) as e:
        _Poller(stub, "never").poll()  # type: ignore[arg-type]
    assert e.value.exit_status == 67
