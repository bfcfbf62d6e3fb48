"""Protobuf <-> dataclass conversions (tracerd._convert): round trips and request validation."""

from __future__ import annotations

import pytest

from tracerd import syscalls
from tracerd._convert import (
    drops_from_pb,
    drops_to_pb,
    options_from_pb,
    options_to_pb,
    process_from_pb,
    process_to_pb,
    report_from_pb,
    report_to_pb,
    state_from_pb,
    state_to_pb,
    stats_from_pb,
    stats_to_pb,
    summary_from_pb,
    summary_to_pb,
    target_from_pb,
    target_to_pb,
    view_to_pb,
)
from tracerd._sessions import (
    CgroupTarget,
    ErrorKind,
    ExecRuleTarget,
    PidTarget,
    RequestError,
    SessionOptions,
    SessionSummary,
    SpawnedTarget,
    State,
    Target,
    View,
)
from tracerd.model import HIST_BUCKETS, Drops, ExitStatus, ProcessInfo, Report, SyscallStats
from tracerd.v1 import tracerd_pb2 as pb

ARCH = "x86_64"
TABLE = syscalls.table_for(ARCH)
name_of = TABLE.name
READ, WRITE, OPENAT = 0, 1, 257


def hist(**buckets: int) -> list[int]:
    h = [0] * HIST_BUCKETS
    for k, v in buckets.items():
        h[int(k[1:])] = v
    return h


def st(calls: int, errors: int = 0, total: int = 0, mx: int = 0, **h: int) -> SyscallStats:
    return SyscallStats(calls=calls, errors=errors, total_ns=total, max_ns=mx, hist=hist(**h))


def sample_report() -> Report:
    return Report(
        command=["make", "-j2"], arch=ARCH, kernel="6.8.0-test", root_pid=100,
        start_ns=1_000, end_ns=9_000, exit=ExitStatus(code=2),
        processes={
            0: ProcessInfo(pid=0, comm="(exited, folded)", uid=0,
                           syscalls={READ: st(4, 1, 400, 150, b6=3, b7=1)}),
            100: ProcessInfo(pid=100, ppid=1, comm="make", argv=["make", "-j2"],
                             filename="/usr/bin/make", uid=1000, cgroup="/user.slice/x",
                             start_ns=1_000, end_ns=8_000, exit=ExitStatus(code=2),
                             syscalls={READ: st(10, 0, 1000, 300, b6=5, b8=5),
                                       OPENAT: st(3, 2, 3_000_000, 2**31 + 5, b31=1, b10=2)}),
            101: ProcessInfo(pid=101, ppid=100, comm="cc", argv=[], uid=0, start_ns=2_000,
                             end_ns=7_000, exit=ExitStatus(code=0), syscalls={}),
            102: ProcessInfo(pid=102, ppid=100, comm="ld", uid=1000, start_ns=2_500,
                             end_ns=6_000,
                             exit=ExitStatus(signal=11, core_dumped=True),
                             syscalls={WRITE: st(1, 0, 50, 50, b5=1)}),
            103: ProcessInfo(pid=103, ppid=100, comm="sleep", uid=65534, start_ns=3_000,
                             exit=None, syscalls={WRITE: st(2)}),  # still running
        },
        drops=Drops(stats_full=1, events_lost=2, pid_out_of_range=3),
        interrupted="duration limit reached")


# ---------------------------------------------------------------------- reports


def test_report_round_trip() -> None:
    r = sample_report()
    m = report_to_pb(r, name_of)
    back = report_from_pb(pb.Report.FromString(m.SerializeToString()))
    assert back == r


def test_report_message_contents() -> None:
    m = report_to_pb(sample_report(), name_of)
    assert [p.pid for p in m.processes] == [0, 100, 101, 102, 103]  # sorted by pid
    assert m.end_ns == 9_000 and m.interrupted == "duration limit reached"
    assert m.HasField("exit") and m.exit.code == 2 and not m.exit.HasField("signal")
    p100 = m.processes[1]
    assert [(s.nr, s.name) for s in p100.syscalls] == [(READ, "read"), (OPENAT, "openat")]
    assert list(p100.syscalls[1].hist)[31] == 1 and len(p100.syscalls[1].hist) == HIST_BUCKETS
    killed = m.processes[3]
    assert killed.exit.signal == 11 and killed.exit.core_dumped
    assert not killed.exit.HasField("code")
    assert not m.processes[4].HasField("exit") and m.processes[4].end_ns == 0
    # totals over every process, by number
    totals = {s.name: (s.calls, s.errors, s.total_ns, s.max_ns) for s in m.totals}
    assert totals == {"read": (14, 1, 1400, 300), "write": (3, 0, 50, 50),
                      "openat": (3, 2, 3_000_000, 2**31 + 5)}
    assert [s.nr for s in m.totals] == [READ, WRITE, OPENAT]


def test_exit_code_zero_is_not_lost() -> None:
    p = ProcessInfo(pid=5, exit=ExitStatus(code=0))
    m = process_to_pb(p, name_of)
    assert m.HasField("exit") and m.exit.HasField("code") and m.exit.code == 0
    assert process_from_pb(m).exit == ExitStatus(code=0)


def test_running_report_round_trip() -> None:
    r = Report(command=[], arch=ARCH, kernel="k", root_pid=0, start_ns=5)
    m = report_to_pb(r, name_of)
    assert m.end_ns == 0 and not m.HasField("exit") and m.interrupted == ""
    back = report_from_pb(m)
    assert back == r
    assert (back.end_ns, back.exit, back.interrupted) == (None, None, None)


def test_unknown_uid_survives_the_round_trip() -> None:
    p = ProcessInfo(pid=0, comm="(exited, folded)", uid=None)
    assert process_from_pb(process_to_pb(p, name_of)).uid is None


def test_stats_round_trip_pads_and_truncates_histograms() -> None:
    stats = {OPENAT: st(3, 1, 30, 20, b4=2, b31=1), READ: st(0)}
    back = stats_from_pb(stats_to_pb(stats, name_of))
    assert back == stats
    short = pb.SyscallStats(nr=1, calls=2, hist=[1, 1])
    long = pb.SyscallStats(nr=2, calls=1, hist=[1] * (HIST_BUCKETS + 3))
    got = stats_from_pb([short, long])
    assert got[1].hist == [1, 1] + [0] * (HIST_BUCKETS - 2)
    assert got[2].hist == [1] * HIST_BUCKETS
    assert stats_to_pb({999: st(1)}, name_of)[0].name == "syscall_999"


def test_drops_round_trip() -> None:
    d = Drops(stats_full=7, events_lost=8, pid_out_of_range=9, syscall_events_lost=10,
              forks_untracked=11)
    assert drops_from_pb(drops_to_pb(d)) == d


# ---------------------------------------------------------------------- targets, options


@pytest.mark.parametrize("target", [
    PidTarget(pid=42), PidTarget(pid=42, children=True),
    CgroupTarget(path="system.slice/x.service"),
    ExecRuleTarget(comm="make"), ExecRuleTarget(path="/usr/bin/cc", children=False),
    ExecRuleTarget(comm="cc", path="/usr/bin/cc", children=True),
    SpawnedTarget(pid=7), SpawnedTarget(pid=7, argv=("ls", "-l", "")),
])
def test_target_round_trip(target: Target) -> None:
    m = pb.Target.FromString(target_to_pb(target).SerializeToString())
    assert target_from_pb(m) == target


def test_target_without_kind_is_invalid() -> None:
    with pytest.raises(RequestError) as info:
        target_from_pb(pb.Target())
    assert info.value.kind == ErrorKind.INVALID
    assert str(info.value) == "target: set one of pid, cgroup, exec_rule, spawned"


def test_options_round_trip() -> None:
    spec = ("read", "%network", "openat,close")
    o = SessionOptions(duration_ms=2500, syscalls=syscalls.resolve(spec, ARCH),
                       syscall_spec=spec, per_process=True, label="nightly")
    m = pb.SessionOptions.FromString(options_to_pb(o).SerializeToString())
    assert list(m.syscalls) == list(spec)
    back = options_from_pb(m, ARCH)
    assert back == o
    assert {READ, OPENAT, 3, TABLE.number("connect")} <= (back.syscalls or frozenset())


def test_options_without_syscalls_count_everything() -> None:
    o = options_from_pb(pb.SessionOptions(duration_ms=5), ARCH)
    assert o == SessionOptions(duration_ms=5)
    assert o.syscalls is None and o.syscall_spec == ()


@pytest.mark.parametrize(("arch", "name", "why"), [
    ("x86_64", "bogus", "unknown syscall or class 'bogus' on x86_64"),
    ("aarch64", "open", "unknown syscall or class 'open' on aarch64"),
    ("x86_64", "%nonsense", "'%nonsense'"),
])
def test_options_with_unknown_syscall_are_invalid(arch: str, name: str, why: str) -> None:
    with pytest.raises(RequestError) as info:
        options_from_pb(pb.SessionOptions(syscalls=["read", name]), arch)
    assert info.value.kind == ErrorKind.INVALID
    assert str(info.value).startswith("options.syscalls: "), str(info.value)
    assert why in str(info.value)


def test_syscall_numbers_follow_the_arch() -> None:
    m = pb.SessionOptions(syscalls=["read"])
    assert options_from_pb(m, "x86_64").syscalls == frozenset({0})
    assert options_from_pb(m, "aarch64").syscalls == frozenset({63})


# ---------------------------------------------------------------------- states, summaries


def test_state_conversions() -> None:
    for s in State:
        assert state_from_pb(state_to_pb(s)) == s
    assert state_from_pb(pb.SESSION_STATE_UNSPECIFIED) is None
    assert state_to_pb(State.RUNNING) == pb.SESSION_STATE_RUNNING
    assert state_to_pb(State.INTERRUPTED) == pb.SESSION_STATE_INTERRUPTED


@pytest.mark.parametrize("value", [4, 99, -1])
def test_unknown_state_is_invalid(value: int) -> None:
    with pytest.raises(RequestError) as info:
        state_from_pb(value)
    assert info.value.kind == ErrorKind.INVALID
    assert str(info.value) == f"state: unknown session state {value}"


def test_summary_round_trip() -> None:
    s = SessionSummary(id="abc123", state=State.INTERRUPTED,
                       target=ExecRuleTarget(comm="make", children=False),
                       options=SessionOptions(duration_ms=10, syscall_spec=("read",),
                                              per_process=True, label="x"),
                       owner="ci", start_ns=5, end_ns=15, end_reason="duration limit reached",
                       processes=3, calls=99)
    m = pb.SessionInfo.FromString(summary_to_pb(s).SerializeToString())
    assert m.state == pb.SESSION_STATE_INTERRUPTED and m.owner == "ci"
    assert summary_from_pb(m) == s  # syscalls stay unresolved (None) on the client side


def test_view_to_pb() -> None:
    procs = {7: ProcessInfo(pid=7, comm="a", syscalls={READ: st(2)}),
             3: ProcessInfo(pid=3, comm="b", syscalls={WRITE: st(1)})}
    view = View(ts_ns=123, totals={READ: st(2), WRITE: st(1)}, processes=procs,
                drops=Drops(events_lost=1))
    m = view_to_pb(4, view, 2, {READ: st(1)}, name_of)
    assert (m.seq, m.ts_ns, m.missed) == (4, 123, 2)
    assert [(s.name, s.calls) for s in m.delta] == [("read", 1)]
    assert [(s.name, s.calls) for s in m.totals] == [("read", 2), ("write", 1)]
    assert [p.pid for p in m.processes] == [3, 7]
    assert drops_from_pb(m.drops) == Drops(events_lost=1)
    bare = view_to_pb(1, View(ts_ns=1, totals={}, processes=None, drops=Drops()), 0, {}, name_of)
    assert list(bare.processes) == [] and list(bare.totals) == []
