"""Between tracerd.v1 protobuf messages and the plain dataclasses every other layer uses.

Used by both sides of the wire (the servicer and tracerd.client), so a report that went
through the daemon is the same Report object ``tracerd run`` builds. Validation of
client-supplied messages raises RequestError naming the offending field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from . import _budgets, syscalls
from ._budgets import Assertion, Result
from ._events import EventBatch, EventFilter
from ._sessions import (
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
    Violation,
)
from .model import (
    HIST_BUCKETS,
    ArgData,
    ArgKind,
    Drops,
    ExitStatus,
    ProcessInfo,
    Report,
    SyscallEvent,
    SyscallStats,
)
from .v1 import tracerd_pb2 as pb

NameOf = Callable[[int], str]

# Bounds on what a client may make the daemon keep (sessions are kept after they end).
MAX_ARGV = 4096
MAX_ARGV_BYTES = 128 * 1024
MAX_FILTER_ITEMS = 512

_STATE_TO_PB = {
    State.RUNNING: pb.SESSION_STATE_RUNNING,
    State.FINISHED: pb.SESSION_STATE_FINISHED,
    State.INTERRUPTED: pb.SESSION_STATE_INTERRUPTED,
}
_STATE_FROM_PB = {v: k for k, v in _STATE_TO_PB.items()}


def state_to_pb(state: State) -> pb.SessionState.ValueType:
    return _STATE_TO_PB[state]


def state_from_pb(value: int) -> State | None:
    """None for UNSPECIFIED (any state); RequestError for a value this daemon does not know."""
    if value == pb.SESSION_STATE_UNSPECIFIED:
        return None
    if value not in _STATE_FROM_PB:
        raise RequestError(ErrorKind.INVALID, f"state: unknown session state {value}")
    return _STATE_FROM_PB[value]  # type: ignore[index]


# ---------------------------------------------------------------------- stats


def stats_to_pb(stats: Mapping[int, SyscallStats], name_of: NameOf) -> list[pb.SyscallStats]:
    return [pb.SyscallStats(nr=nr, name=name_of(nr), calls=st.calls, errors=st.errors,
                            total_ns=st.total_ns, max_ns=st.max_ns, hist=st.hist,
                            alloc_bytes=st.alloc_bytes)
            for nr, st in sorted(stats.items())]


def stats_from_pb(items: Iterable[pb.SyscallStats]) -> dict[int, SyscallStats]:
    out = {}
    for m in items:
        hist = list(m.hist) + [0] * (HIST_BUCKETS - len(m.hist))
        out[m.nr] = SyscallStats(calls=m.calls, errors=m.errors, total_ns=m.total_ns,
                                 max_ns=m.max_ns, hist=hist[:HIST_BUCKETS],
                                 alloc_bytes=m.alloc_bytes)
    return out


def drops_to_pb(d: Drops) -> pb.Drops:
    return pb.Drops(stats_full=d.stats_full, events_lost=d.events_lost,
                    pid_out_of_range=d.pid_out_of_range,
                    syscall_events_lost=d.syscall_events_lost,
                    forks_untracked=d.forks_untracked)


def drops_from_pb(m: pb.Drops) -> Drops:
    return Drops(stats_full=m.stats_full, events_lost=m.events_lost,
                 pid_out_of_range=m.pid_out_of_range,
                 syscall_events_lost=m.syscall_events_lost,
                 forks_untracked=m.forks_untracked)


def _exit_to_pb(e: ExitStatus | None, out: pb.ExitStatus) -> None:
    if e is None:
        return
    if e.code is not None:
        out.code = e.code
    if e.signal is not None:
        out.signal = e.signal
    out.core_dumped = e.core_dumped


def _exit_from_pb(owner: pb.Process | pb.Report) -> ExitStatus | None:
    if not owner.HasField("exit"):
        return None
    m = owner.exit
    return ExitStatus(code=m.code if m.HasField("code") else None,
                      signal=m.signal if m.HasField("signal") else None,
                      core_dumped=m.core_dumped)


def process_to_pb(p: ProcessInfo, name_of: NameOf) -> pb.Process:
    m = pb.Process(pid=p.pid, ppid=p.ppid, comm=p.comm, argv=p.argv, filename=p.filename,
                   uid=p.uid, cgroup=p.cgroup, start_ns=p.start_ns, end_ns=p.end_ns or 0,
                   syscalls=stats_to_pb(p.syscalls, name_of), peak_rss_bytes=p.peak_rss_bytes)
    if p.exit is not None:
        _exit_to_pb(p.exit, m.exit)
    return m


def process_from_pb(m: pb.Process) -> ProcessInfo:
    return ProcessInfo(pid=m.pid, ppid=m.ppid, comm=m.comm, argv=list(m.argv),
                       filename=m.filename, uid=m.uid if m.HasField("uid") else None,
                       cgroup=m.cgroup, start_ns=m.start_ns,
                       end_ns=m.end_ns or None, exit=_exit_from_pb(m),
                       syscalls=stats_from_pb(m.syscalls),
                       peak_rss_bytes=m.peak_rss_bytes if m.HasField("peak_rss_bytes") else None)


def report_to_pb(r: Report, name_of: NameOf) -> pb.Report:
    m = pb.Report(command=r.command, arch=r.arch, kernel=r.kernel, root_pid=r.root_pid,
                  start_ns=r.start_ns, end_ns=r.end_ns or 0,
                  processes=[process_to_pb(p, name_of) for _, p in sorted(r.processes.items())],
                  drops=drops_to_pb(r.drops), interrupted=r.interrupted or "",
                  totals=stats_to_pb(r.totals(), name_of),
                  budget=[result_to_pb(x) for x in r.budget], budget_failed=r.budget_failed())
    if r.exit is not None:
        _exit_to_pb(r.exit, m.exit)
    return m


def report_from_pb(m: pb.Report) -> Report:
    return Report(command=list(m.command), arch=m.arch, kernel=m.kernel, root_pid=m.root_pid,
                  start_ns=m.start_ns, end_ns=m.end_ns or None, exit=_exit_from_pb(m),
                  processes={p.pid: process_from_pb(p) for p in m.processes},
                  drops=drops_from_pb(m.drops), interrupted=m.interrupted or None,
                  budget=[result_from_pb(x) for x in m.budget])


# ---------------------------------------------------------------------- budgets

def budget_from_pb(items: Sequence[pb.Assertion]) -> tuple[Assertion, ...]:
    """The same checks as a budget file: RequestError naming the assertion and field."""
    # ListFields gives exactly the fields that were set: proto3 optionals that are
    # present and strings that are not empty, as a budget file would have its keys.
    entries: list[dict[str, Any]] = [{fd.name: v for fd, v in m.ListFields()} for m in items]
    try:
        return tuple(_budgets.parse_entries(entries, "options.budget"))
    except _budgets.BudgetError as e:
        raise RequestError(ErrorKind.INVALID, str(e)) from None


def budget_to_pb(assertions: Iterable[Assertion]) -> list[pb.Assertion]:
    out = []
    for a in assertions:
        d = a.to_dict()
        if "signal" in d:
            d["signal"] = str(d["signal"])
        out.append(pb.Assertion(**d))
    return out


def result_to_pb(r: Result) -> pb.AssertionResult:
    return pb.AssertionResult(name=r.name, type=r.type, passed=r.passed, message=r.message,
                              actual_value=r.actual_value, expected_value=r.expected_value,
                              action=r.action, enabled=r.enabled,
                              fail_on_violation=r.fail_on_violation,
                              first_failed_ns=r.first_failed_ns, pid=r.pid,
                              enforcement=r.enforcement, overshoot=r.overshoot)


def result_from_pb(m: pb.AssertionResult) -> Result:
    return Result(name=m.name, type=m.type, passed=m.passed, message=m.message,
                  actual_value=m.actual_value, expected_value=m.expected_value,
                  action=m.action, enabled=m.enabled, fail_on_violation=m.fail_on_violation,
                  first_failed_ns=m.first_failed_ns if m.HasField("first_failed_ns") else None,
                  pid=m.pid if m.HasField("pid") else None, enforcement=m.enforcement,
                  overshoot=m.overshoot if m.HasField("overshoot") else None)


def violation_to_pb(v: Violation) -> pb.Violation:
    return pb.Violation(ts_ns=v.ts_ns, result=result_to_pb(v.result))


def violation_from_pb(m: pb.Violation) -> Violation:
    return Violation(ts_ns=m.ts_ns, result=result_from_pb(m.result))


# ---------------------------------------------------------------------- requests


def target_from_pb(m: pb.Target) -> Target:
    kind = m.WhichOneof("kind")
    if kind == "pid":
        return PidTarget(pid=m.pid.pid, children=m.pid.children)
    if kind == "cgroup":
        return CgroupTarget(path=m.cgroup.path)
    if kind == "exec_rule":
        r = m.exec_rule
        return ExecRuleTarget(comm=r.comm, path=r.path, children=r.children)
    if kind == "spawned":
        argv = tuple(m.spawned.argv)
        if len(argv) > MAX_ARGV or sum(len(a) for a in argv) > MAX_ARGV_BYTES:
            raise RequestError(ErrorKind.INVALID, f"target.spawned.argv: more than {MAX_ARGV} "
                               f"entries or {MAX_ARGV_BYTES} characters")
        return SpawnedTarget(pid=m.spawned.pid, argv=argv)
    raise RequestError(ErrorKind.INVALID, "target: set one of pid, cgroup, exec_rule, spawned")


def target_to_pb(t: Target) -> pb.Target:
    if isinstance(t, PidTarget):
        return pb.Target(pid=pb.PidTarget(pid=t.pid, children=t.children))
    if isinstance(t, CgroupTarget):
        return pb.Target(cgroup=pb.CgroupTarget(path=t.path))
    if isinstance(t, ExecRuleTarget):
        return pb.Target(exec_rule=pb.ExecRule(comm=t.comm, path=t.path, children=t.children))
    return pb.Target(spawned=pb.SpawnedTarget(pid=t.pid, argv=list(t.argv)))


def syscall_filter_from_pb(spec: Sequence[str], field: str,
                           arch: str | None = None) -> frozenset[int] | None:
    """Syscall names and classes a client sent; None when the list is empty."""
    if len(spec) > MAX_FILTER_ITEMS or any(len(item) > 4096 for item in spec):
        raise RequestError(ErrorKind.INVALID, f"{field}: more than {MAX_FILTER_ITEMS} "
                           "entries, or an entry longer than 4096 characters")
    if any(not item.strip(" ,") for item in spec):
        raise RequestError(ErrorKind.INVALID, f"{field}: an empty entry selects nothing")
    if not spec:
        return None
    try:
        return syscalls.resolve(spec, arch)
    except ValueError as e:
        raise RequestError(ErrorKind.INVALID, f"{field}: {e}") from None


def options_from_pb(m: pb.SessionOptions, arch: str | None = None) -> SessionOptions:
    spec = tuple(m.syscalls)
    keep = syscall_filter_from_pb(spec, "options.syscalls", arch)
    ev_spec = tuple(m.event_syscalls)
    ev_keep = syscall_filter_from_pb(ev_spec, "options.event_syscalls", arch)
    return SessionOptions(duration_ms=m.duration_ms, syscalls=keep, syscall_spec=spec,
                          per_process=m.per_process, label=m.label,
                          budget=budget_from_pb(m.budget), peak_rss=m.peak_rss,
                          events=m.events, event_syscalls=ev_keep, event_spec=ev_spec)


def options_to_pb(o: SessionOptions) -> pb.SessionOptions:
    return pb.SessionOptions(duration_ms=o.duration_ms, syscalls=list(o.syscall_spec),
                             per_process=o.per_process, label=o.label,
                             budget=budget_to_pb(o.budget), peak_rss=o.peak_rss,
                             events=o.events, event_syscalls=list(o.event_spec))


def summary_to_pb(s: SessionSummary) -> pb.SessionInfo:
    return pb.SessionInfo(session_id=s.id, state=state_to_pb(s.state),
                          target=target_to_pb(s.target), options=options_to_pb(s.options),
                          start_ns=s.start_ns, end_ns=s.end_ns, end_reason=s.end_reason,
                          processes=s.processes, calls=s.calls, owner=s.owner, rule=s.rule,
                          start_unix_ns=s.start_unix_ns, end_unix_ns=s.end_unix_ns,
                          from_history=s.from_history)


def summary_from_pb(m: pb.SessionInfo) -> SessionSummary:
    spec = tuple(m.options.syscalls)
    opts = SessionOptions(duration_ms=m.options.duration_ms, syscall_spec=spec,
                          per_process=m.options.per_process, label=m.options.label,
                          budget=budget_from_pb(m.options.budget),
                          peak_rss=m.options.peak_rss, events=m.options.events,
                          event_spec=tuple(m.options.event_syscalls))
    return SessionSummary(id=m.session_id, state=_STATE_FROM_PB.get(m.state, State.RUNNING),
                          target=target_from_pb(m.target), options=opts, owner=m.owner,
                          start_ns=m.start_ns, end_ns=m.end_ns, end_reason=m.end_reason,
                          processes=m.processes, calls=m.calls, rule=m.rule,
                          start_unix_ns=m.start_unix_ns, end_unix_ns=m.end_unix_ns,
                          from_history=m.from_history)


def view_to_pb(seq: int, view: View, missed: int, delta: Mapping[int, SyscallStats],
               name_of: NameOf) -> pb.Update:
    procs = [] if view.processes is None else [
        process_to_pb(p, name_of) for _, p in sorted(view.processes.items())]
    return pb.Update(seq=seq, ts_ns=view.ts_ns, missed=missed, delta=stats_to_pb(delta, name_of),
                     totals=stats_to_pb(view.totals, name_of), processes=procs,
                     drops=drops_to_pb(view.drops))


# ---------------------------------------------------------------------- events


def event_filter_from_pb(m: pb.EventFilter, arch: str | None = None) -> EventFilter:
    for name, items in (("pids", m.pids), ("tids", m.tids)):
        if len(items) > MAX_FILTER_ITEMS:
            raise RequestError(ErrorKind.INVALID, f"filter.{name}: more than "
                               f"{MAX_FILTER_ITEMS} entries")
    keep = syscall_filter_from_pb(tuple(m.syscalls), "filter.syscalls", arch)
    return EventFilter(syscalls=keep or frozenset(), pids=frozenset(m.pids),
                       tids=frozenset(m.tids))


def event_filter_to_pb(f: EventFilter, name_of: NameOf) -> pb.EventFilter:
    return pb.EventFilter(syscalls=sorted(name_of(nr) for nr in f.syscalls),
                          pids=sorted(f.pids), tids=sorted(f.tids))


def event_to_pb(e: SyscallEvent, name_of: NameOf) -> pb.SyscallEvent:
    return pb.SyscallEvent(
        start_ns=e.start_ns, end_ns=e.end_ns, pid=e.pid, tid=e.tid, nr=e.nr,
        name=name_of(e.nr), return_value=e.ret or 0, returned=e.ret is not None,
        args=list(e.args),
        data=[pb.ArgData(index=d.index, kind=int(d.kind),  # type: ignore[arg-type]
                         value=d.value, truncated=d.truncated) for d in e.data])


def event_from_pb(m: pb.SyscallEvent) -> SyscallEvent:
    return SyscallEvent(start_ns=m.start_ns, end_ns=m.end_ns, pid=m.pid, tid=m.tid, nr=m.nr,
                        ret=m.return_value if m.returned else None, args=tuple(m.args),
                        data=tuple(ArgData(index=d.index, kind=ArgKind(d.kind), value=d.value,
                                           truncated=d.truncated) for d in m.data))


def batch_to_pb(b: EventBatch, name_of: NameOf) -> pb.EventBatch:
    return pb.EventBatch(events=[event_to_pb(e, name_of) for e in b.events],
                         kernel_lost=b.kernel_lost, dropped=b.dropped, lost=b.lost, last=b.last)


def batch_from_pb(m: pb.EventBatch) -> EventBatch:
    return EventBatch(events=[event_from_pb(e) for e in m.events], kernel_lost=m.kernel_lost,
                      dropped=m.dropped, last=m.last)
