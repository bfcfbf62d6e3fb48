"""The daemon's hub (tracerd._sessions) over a fake kernel: no root, no BPF, no grpc.

``FakeProbe`` models what bpf/syscount.bpf.c does, closely enough for the hub: only
tracked processes are counted (cumulatively, per (tgid, nr)); a tracked process's forks
are tracked by the "kernel" and reported; an exec is reported when the process is tracked
or matches a rule (which then tracks it); an exit of a tracked process is reported and
clears its flag, its counters staying until user space deletes them. It also carries a
fake process table that stands in for /proc (``tracerd._sessions._procfs`` is replaced
by ``FakeProcfs``); a few tests use real ``sleep`` processes and the real /proc instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracerd import _budgets, _procfs, _records, _sessions
from tracerd._events import EventFilter
from tracerd._metrics import SyscallTotals
from tracerd._procfs import ProcStat
from tracerd._sessions import (
    FOLDED_PID,
    Caller,
    CgroupTarget,
    ErrorKind,
    ExecRuleTarget,
    Hub,
    HubLimits,
    PidTarget,
    RequestError,
    Session,
    SessionOptions,
    SessionSummary,
    SpawnedTarget,
    State,
    View,
    Violation,
    Watcher,
    WatchRule,
)
from tracerd.model import (
    EV_EXEC,
    EV_EXIT,
    EV_FORK,
    HIST_BUCKETS,
    Drops,
    ExitStatus,
    LifecycleEvent,
    Report,
    SyscallEvent,
    SyscallStats,
)

ADMIN = Caller(name="admin")
READ, WRITE, OPENAT, CLOSE = 0, 1, 257, 3
MS = 1_000_000
START_NS = 10**12


# ---------------------------------------------------------------------- the fake kernel


class FakeClock:
    def __init__(self, now: int = START_NS) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance_ms(self, ms: int) -> None:
        self.now += ms * MS


def bucket(ns: int) -> int:
    return min(max(ns.bit_length() - 1, 0), HIST_BUCKETS - 1)


def copy_stats(s: SyscallStats) -> SyscallStats:
    return SyscallStats(calls=s.calls, errors=s.errors, total_ns=s.total_ns, max_ns=s.max_ns,
                        hist=list(s.hist))


@dataclass
class FakeProc:
    """One entry of the fake /proc."""

    ppid: int = 1
    uid: int = 0
    comm: str = "proc"
    argv: list[str] = field(default_factory=list)
    state: str = "S"
    cgroup: str = "/test.slice"
    hwm: int | None = None  #: VmHWM in bytes
    cwd: str = "/work"


@dataclass
class FakeLimit:
    rules: list[tuple[int, frozenset[int]]]
    sig: int
    counts: list[int]
    rule_tripped_ns: list[int]
    tripped_ns: int = 0


class FakeProbe:
    """Implements tracerd._sessions.ProbeLike; the test drives the "world" through it."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.tracked: set[int] = set()
        self.stats: dict[tuple[int, int, int], SyscallStats] = {}  # (tgid, gen, nr)
        self.gen: dict[int, int] = {}  # exec generation of each tracked process
        self.events: list[LifecycleEvent] = []
        self.rules: set[tuple[str, str | int]] = set()
        self.rule_log: list[tuple[str, str, str | int]] = []
        self.fail_rule: tuple[str, str | int] | None = None
        self.drop_counts = Drops()
        self.proc: dict[int, FakeProc] = {}
        self.next_pid = 5000
        self.limits: dict[int, FakeLimit] = {}
        self.slot: dict[int, int] = {}  # tracked pid -> limit slot
        self.rule_slot: dict[tuple[str, str | int], int | None] = {}
        self.signalled: list[tuple[int, int]] = []  # (pid, sig) sent "in kernel"
        # per-syscall events: slot -> (gen, mask or None); the ring; lost per slot
        self.ev_filters: dict[int, tuple[int, frozenset[int] | None]] = {}
        self.ev_gen: dict[int, int] = {}
        self.ring: list[bytes] = []
        self.ev_lost: dict[int, int] = {}
        self.ring_room: int | None = None  # None: unbounded
        self._pipe = os.pipe()  # never readable: the pump thread just times out
        self.holders: set[int] = set()  # processes holding a counter block


    # ---- ProbeLike
    def track(self, pid: int) -> None:
        self.tracked.add(pid)
        self.holders.add(pid)

    def untrack(self, pid: int) -> None:
        self.tracked.discard(pid)
        self.slot.pop(pid, None)

    def is_tracked(self, pid: int) -> bool:
        return pid in self.tracked

    def poll_events(self, timeout_ms: int) -> list[LifecycleEvent]:
        out, self.events = self.events, []
        return out

    def read_stats_by_gen(self) -> dict[tuple[int, int, int], SyscallStats]:
        return {k: copy_stats(v) for k, v in self.stats.items()}

    def delete_stats_by_gen(self, tgids: list[int]) -> dict[tuple[int, int, int], SyscallStats]:
        gone = {k: v for k, v in self.stats.items() if k[0] in set(tgids)}
        for k in gone:
            del self.stats[k]
        self.holders -= set(tgids)
        return gone

    def block_holders(self) -> set[int]:
        return set(self.holders)

    def drops(self) -> Drops:
        d = self.drop_counts
        return Drops(d.stats_full, d.events_lost, d.pid_out_of_range)

    def add_rule(self, kind: str, value: str | int, slot: int | None = None) -> None:
        if self.fail_rule == (kind, value):
            raise RuntimeError(f"exec rule map '{kind}' is full")
        self.rule_log.append(("add", kind, value))
        self.rules.add((kind, value))
        self.rule_slot[(kind, value)] = slot

    def set_limit(self, slot: int, rules: list[tuple[int, frozenset[int]]], sig: int) -> None:
        self.limits[slot] = FakeLimit(rules=list(rules), sig=sig, counts=[0] * len(rules),
                                      rule_tripped_ns=[0] * len(rules))

    def read_limit(self, slot: int) -> FakeLimit:
        return self.limits.get(slot) or FakeLimit(rules=[], sig=0, counts=[], rule_tripped_ns=[])

    def clear_limit(self, slot: int) -> None:
        self.limits.pop(slot, None)

    def limit_process(self, pid: int, slot: int | None) -> bool:
        if pid not in self.tracked:
            return False
        if slot is None:
            self.slot.pop(pid, None)
        else:
            self.slot[pid] = slot
        return True

    def limit_slot(self, pid: int) -> int | None:
        return self.slot.get(pid) if pid in self.tracked else None

    def set_events(self, slot: int, syscalls: frozenset[int] | None) -> int:
        gen = self.ev_gen[slot] = self.ev_gen.get(slot, 0) + 1
        self.ev_filters[slot] = (gen, syscalls)
        self.ev_lost[slot] = 0
        return gen

    def clear_events(self, slot: int) -> None:
        self.ev_filters.pop(slot, None)

    def events_lost(self, slot: int) -> int:
        return self.ev_lost.get(slot, 0)

    def sys_events_fd(self) -> int:
        return self._pipe[0]

    def sys_events_pending(self) -> bool:
        return False

    def read_sys_records(self, limit: int = 1 << 20) -> list[bytes]:
        out, self.ring = self.ring[:limit], self.ring[limit:]
        return out

    def emit(self, pid: int, nr: int, n: int = 1, *, slot_gen: tuple[int, int] | None = None
             ) -> None:
        """``n`` events of ``pid`` as the kernel would record them (its slot's filter);
        ``slot_gen`` forces the record's tag (a call entered under an earlier session)."""
        slot = self.slot.get(pid)
        if slot_gen is None:
            if slot is None or slot not in self.ev_filters:
                return
            gen, mask = self.ev_filters[slot]
            if mask is not None and nr not in mask:
                return
            slot_gen = (slot, gen)
        for _ in range(n):
            if self.ring_room is not None and len(self.ring) >= self.ring_room:
                self.ev_lost[slot_gen[0]] = self.ev_lost.get(slot_gen[0], 0) + 1
                continue
            t = self.clock()
            self.ring.append(_records.encode(SyscallEvent(
                start_ns=t, end_ns=t + 1, pid=pid, tid=pid, nr=nr, ret=0, args=(0,) * 6),
                slot_gen[0] | slot_gen[1] << 16))

    def remove_rule(self, kind: str, value: str | int) -> None:
        self.rule_log.append(("remove", kind, value))
        self.rules.discard((kind, value))

    # ---- the world
    def spawn(self, pid: int | None = None, *, ppid: int = 1, uid: int = 0, comm: str = "proc",
              argv: list[str] | None = None, state: str = "S") -> int:
        """A process appears in /proc (not tracked: the kernel tracks nothing by itself)."""
        if pid is None:
            pid, self.next_pid = self.next_pid, self.next_pid + 1
        self.proc[pid] = FakeProc(ppid=ppid, uid=uid, comm=comm,
                                  argv=list(argv) if argv is not None else [comm], state=state)
        return pid

    def call(self, pid: int, nr: int, n: int = 1, errors: int = 0, ns: int = 1000) -> bool:
        """``pid`` makes ``n`` calls of ``nr`` taking ``ns`` each; False if not counted."""
        assert pid in self.proc, f"process {pid} does not exist"
        if pid not in self.tracked:
            return False
        lim = self.limits.get(self.slot.get(pid, -1))
        if lim is not None:  # sys_enter's enforce(), one call at a time
            for _ in range(n):
                for i, (most, nrs) in enumerate(lim.rules):
                    if nr in nrs:
                        lim.counts[i] += 1
                        if lim.counts[i] > most and not lim.rule_tripped_ns[i]:
                            lim.rule_tripped_ns[i] = self.clock()
                            lim.tripped_ns = lim.tripped_ns or self.clock()
                if lim.tripped_ns:
                    self.signalled.append((pid, lim.sig))
        s = self.stats.setdefault((pid, self.gen.get(pid, 0), nr), SyscallStats())
        s.calls += n
        s.errors += errors
        s.total_ns += n * ns
        s.max_ns = max(s.max_ns, ns)
        s.hist[bucket(ns)] += n
        return True

    def _event(self, type_: int, pid: int, *, ppid: int = 0, code: int | None = None,
               filename: str = "", uid: int | None = None, cgroup_id: int = 0,
               rule_matched: bool = False) -> None:
        p = self.proc.get(pid)
        self.events.append(LifecycleEvent(
            type=type_, pid=pid, ppid=ppid, exit_code=code, ts_ns=self.clock(),
            comm=p.comm if p else "", filename=filename,
            uid=uid if uid is not None else (p.uid if p else 0), cgroup_id=cgroup_id,
            rule_matched=rule_matched, gen=self.gen.get(pid, 0)))

    def fork(self, parent: int, child: int | None = None) -> int:
        """``parent`` forks; the child inherits the tracked flag (task_newtask)."""
        pp = self.proc[parent]
        child = self.spawn(child, ppid=parent, uid=pp.uid, comm=pp.comm, argv=pp.argv)
        self.gen[child] = 0
        if parent in self.tracked:
            self.tracked.add(child)
            if parent in self.slot:
                self.slot[child] = self.slot[parent]
            self._event(EV_FORK, child, ppid=parent, uid=pp.uid)  # uid: the parent's
        return child

    def exec(self, pid: int, comm: str, filename: str = "", *, cgroup_id: int = 0) -> bool:
        """``pid`` execs; rules are tested on every exec (sched_process_exec)."""
        p = self.proc[pid]
        p.comm, p.argv = comm[:15], [filename or comm]
        matched = (("comm", comm[:15]) in self.rules or ("path", filename) in self.rules
                   or ("cgroup", cgroup_id) in self.rules)
        if pid not in self.tracked and not matched:
            return False
        if pid not in self.tracked:
            hit = [k for k in (("comm", comm[:15]), ("path", filename), ("cgroup", cgroup_id))
                   if k in self.rules]
            slot = self.rule_slot.get(hit[0])
            if slot is not None:
                self.slot[pid] = slot
        self.tracked.add(pid)
        self.gen[pid] = self.gen.get(pid, 0) + 1  # counters after this exec: a new generation
        self._event(EV_EXEC, pid, filename=filename, cgroup_id=cgroup_id, rule_matched=matched)
        return True

    def exit(self, pid: int, code: int = 0, *, sig: int | None = None, core: bool = False,
             lose_event: bool = False) -> None:
        """``pid`` exits (group death); its counters stay until delete_stats."""
        raw = (sig | (0x80 if core else 0)) if sig is not None else code << 8
        if pid in self.tracked and not lose_event:
            self._event(EV_EXIT, pid, code=raw)
        self.tracked.discard(pid)
        self.slot.pop(pid, None)
        self.gen.pop(pid, None)
        del self.proc[pid]
        for q in self.proc.values():  # orphans are reparented to init
            if q.ppid == pid:
                q.ppid = 1

    def entries(self, pid: int) -> dict[int, int]:
        out: dict[int, int] = {}
        for (t, _gen, nr), s in self.stats.items():
            if t == pid:
                out[nr] = out.get(nr, 0) + s.calls
        return out


class FakeProcfs:
    """Stands in for tracerd._procfs, reading the fake process table."""

    def __init__(self, k: FakeProbe) -> None:
        self.k = k

    def stat(self, pid: int) -> ProcStat | None:
        p = self.k.proc.get(pid)
        return None if p is None else ProcStat(p.state, p.ppid, 0)

    def uid(self, pid: int) -> int | None:
        p = self.k.proc.get(pid)
        return None if p is None else p.uid

    def cmdline(self, pid: int) -> list[str] | None:
        p = self.k.proc.get(pid)
        return None if p is None else list(p.argv)

    def comm(self, pid: int) -> str:
        p = self.k.proc.get(pid)
        return "" if p is None else p.comm

    def cgroup(self, pid: int | str) -> str:
        p = self.k.proc.get(int(pid))
        return "" if p is None else p.cgroup

    def children(self, pid: int) -> list[int]:
        return [c for c, q in self.k.proc.items() if q.ppid == pid]

    def vm_hwm_bytes(self, pid: int) -> int | None:
        p = self.k.proc.get(pid)
        return None if p is None else p.hwm

    def alive(self, pid: int) -> bool:
        st = self.stat(pid)
        return st is not None and st[0] not in ("Z", "X")

    def exec_path(self, pid: int, filename: str) -> str | None:
        p = self.k.proc.get(pid)
        if filename.startswith("/"):
            return filename
        if p is None or not p.cwd:  # exited; or "" (its directory may not be read)
            return None if p is None else ""
        return os.path.normpath(os.path.join(p.cwd, filename))


@pytest.fixture
def k(monkeypatch: pytest.MonkeyPatch) -> FakeProbe:
    probe = FakeProbe(FakeClock())
    monkeypatch.setattr(_sessions, "_procfs", FakeProcfs(probe))
    return probe


def hub_for(k: FakeProbe, **limits: int) -> Hub:
    return Hub(k, HubLimits(**limits), clock=k.clock)


def raises_kind(kind: ErrorKind, fn: object, *args: object,
                match: str | None = None) -> RequestError:
    with pytest.raises(RequestError, match=match) as info:
        fn(*args)  # type: ignore[operator]
    assert info.value.kind == kind, str(info.value)
    return info.value


def start(hub: Hub, target: object, caller: Caller = ADMIN, **opts: object) -> str:
    return hub.start(caller, target, SessionOptions(**opts)).id  # type: ignore[arg-type]


def report(hub: Hub, sid: str, caller: Caller = ADMIN) -> Report:
    return hub.report(caller, sid)[1]


def calls(r: Report) -> dict[int, int]:
    return {nr: s.calls for nr, s in r.totals().items() if s.calls}


def proc_calls(r: Report, pid: int) -> dict[int, int]:
    return {nr: s.calls for nr, s in r.processes[pid].syscalls.items()}


def state(hub: Hub, sid: str) -> State:
    return hub.sessions[sid].state


# ---------------------------------------------------------------------- SyscallStats.since


def stats(calls: int, errors: int, total: int, mx: int, **hist: int) -> SyscallStats:
    h = [0] * HIST_BUCKETS
    for k_, v in hist.items():
        h[int(k_[1:])] = v
    return SyscallStats(calls=calls, errors=errors, total_ns=total, max_ns=mx, hist=h)


def test_since_counts_exact_and_max_exact_when_it_grew() -> None:
    base = stats(3, 1, 300, 150, b6=2, b7=1)
    cur = stats(8, 2, 5300, 4000, b6=4, b7=1, b11=3)
    d = cur.since(base)
    assert (d.calls, d.errors, d.total_ns, d.max_ns) == (5, 1, 5000, 4000)
    assert d.hist[6] == 2 and d.hist[11] == 3 and sum(d.hist) == 5
    assert (base.calls, base.max_ns, cur.calls) == (3, 150, 8)  # inputs unchanged


def test_since_max_is_bucket_bound_when_it_did_not_grow() -> None:
    base = stats(2, 0, 2000, 1500, b10=2)  # 1500 ns: bucket 10 (1024..2047)
    cur = stats(5, 0, 2300, 1500, b10=2, b6=3)  # three 100 ns calls: bucket 6 (64..127)
    d = cur.since(base)
    assert d.max_ns == 127  # upper bound of bucket 6, not the all-time max 1500
    assert d.max_ns <= cur.max_ns
    # the bound is capped by the overall maximum
    cur2 = stats(4, 0, 2100, 1500, b10=4)
    assert cur2.since(base).max_ns == 1500  # bucket 10's bound 2047 > 1500
    # nothing timed in the window: no maximum
    assert stats(2, 0, 2000, 1500, b10=2).since(base).max_ns == 0


def test_since_of_itself_is_empty_and_never_negative() -> None:
    s = stats(4, 1, 400, 100, b6=4)
    d = s.since(s)
    assert (d.calls, d.errors, d.total_ns, d.max_ns, sum(d.hist)) == (0, 0, 0, 0, 0)
    shrunk = stats(1, 0, 10, 10, b3=1).since(s)
    assert (shrunk.calls, shrunk.errors, shrunk.total_ns) == (0, 0, 0)
    assert min(shrunk.hist) == 0


# ---------------------------------------------------------------------- baselines


def test_pid_session_counts_only_its_own_window(k: FakeProbe) -> None:
    hub = hub_for(k)
    p = k.spawn(100)
    a = start(hub, PidTarget(p))
    assert k.is_tracked(p)
    k.call(p, READ, 5, errors=1, ns=100)
    b = start(hub, PidTarget(p))
    k.call(p, READ, 3, ns=100)
    k.call(p, WRITE, 2, errors=2, ns=3000)
    ra, rb = report(hub, a), report(hub, b)
    assert calls(ra) == {READ: 8, WRITE: 2}
    assert calls(rb) == {READ: 3, WRITE: 2}
    assert (ra.totals()[READ].errors, rb.totals()[READ].errors) == (1, 0)
    assert (ra.totals()[READ].total_ns, rb.totals()[READ].total_ns) == (800, 300)
    assert rb.totals()[WRITE].errors == 2 and rb.totals()[WRITE].max_ns == 3000

    hub.stop(ADMIN, a)
    assert state(hub, a) == State.FINISHED and hub.sessions[a].end_reason == "stopped by client"
    assert k.is_tracked(p)  # b still wants it
    k.call(p, READ, 4, ns=100)
    assert calls(report(hub, a)) == {READ: 8, WRITE: 2}  # frozen
    assert report(hub, a).interrupted is None
    assert calls(report(hub, b)) == {READ: 7, WRITE: 2}  # unaffected by stopping a
    assert hub.stop(ADMIN, a).state == State.FINISHED  # stopping twice is harmless

    hub.stop(ADMIN, b)
    assert not k.is_tracked(p)
    assert hub.counts()["tracked"] == 0
    assert not k.call(p, READ)  # the kernel no longer counts it
    assert calls(report(hub, b)) == {READ: 7, WRITE: 2}


def test_retracked_process_with_stale_counters_starts_from_zero(k: FakeProbe) -> None:
    hub = hub_for(k)
    p = k.spawn(100)
    a = start(hub, PidTarget(p))
    k.call(p, READ, 9)
    hub.stop(ADMIN, a)
    assert k.entries(p) == {READ: 9}  # released, counters not swept yet
    b = start(hub, PidTarget(p))
    k.call(p, READ, 2)
    assert calls(report(hub, b)) == {READ: 2}
    k.clock.advance_ms(1500)
    hub.step(0)  # the sweep must not delete counters of a tracked process
    k.call(p, READ, 1)
    assert calls(report(hub, b)) == {READ: 3}


def test_sweep_deletes_counters_of_released_processes(k: FakeProbe) -> None:
    hub = hub_for(k)
    p = k.spawn(100)
    a = start(hub, PidTarget(p))
    k.call(p, READ, 4)
    hub.stop(ADMIN, a)
    hub.step(0)  # first drain: the sweep runs (more than 1 s since "boot")
    assert k.entries(p) == {}
    assert calls(report(hub, a)) == {READ: 4}


def test_sweep_frees_the_block_of_a_process_released_before_any_count(k: FakeProbe) -> None:
    # Nothing counted: the process is in no snapshot, only among the block holders.
    hub = hub_for(k)
    p = k.spawn(100)
    a = start(hub, PidTarget(p))
    hub.stop(ADMIN, a)
    assert p in k.holders and k.entries(p) == {}
    hub.step(0)
    assert p not in k.holders


def test_report_and_summary_of_a_running_session(k: FakeProbe) -> None:
    hub = hub_for(k)
    p = k.spawn(100, argv=["make", "-j2"], comm="make", uid=1000)
    k.clock.advance_ms(5)
    s = hub.start(ADMIN, PidTarget(p), SessionOptions(label="ci build"))
    assert (s.state, s.owner, s.start_ns, s.end_ns, s.end_reason) == (
        State.RUNNING, "admin", START_NS + 5 * MS, 0, "")
    assert (s.processes, s.calls, s.options.label) == (1, 0, "ci build")
    k.call(p, READ, 6)
    summary, r = hub.report(ADMIN, s.id)
    assert summary.calls == 6 and summary.processes == 1
    assert (r.command, r.root_pid, r.start_ns, r.end_ns, r.exit) == (
        ["make", "-j2"], p, START_NS + 5 * MS, None, None)
    info = r.processes[p]
    assert (info.comm, info.uid, info.ppid, info.cgroup, info.argv) == (
        "make", 1000, 1, "/test.slice", ["make", "-j2"])
    assert (r.arch, r.kernel) == (os.uname().machine, os.uname().release)


def test_report_drops_are_those_since_the_session_started(k: FakeProbe) -> None:
    hub = hub_for(k)
    p = k.spawn(100)
    k.drop_counts = Drops(stats_full=5, events_lost=1, pid_out_of_range=2)
    sid = start(hub, PidTarget(p))
    k.drop_counts = Drops(stats_full=7, events_lost=4, pid_out_of_range=2)
    assert report(hub, sid).drops == Drops(stats_full=2, events_lost=3, pid_out_of_range=0)


# ---------------------------------------------------------------------- forks


def test_forks_join_sessions_that_follow_children_only(k: FakeProbe) -> None:
    hub = hub_for(k)
    p = k.spawn(100, comm="sh", argv=["sh", "-c", "x"])
    follows = start(hub, PidTarget(p, children=True), per_process=True)
    alone = start(hub, PidTarget(p))
    c = k.fork(p, 200)
    hub.step(0)
    assert set(hub.sessions[follows].members) == {p, c}
    assert set(hub.sessions[alone].members) == {p}
    k.call(c, OPENAT, 4)
    k.call(p, READ, 1)
    rf, ra = report(hub, follows), report(hub, alone)
    assert calls(rf) == {OPENAT: 4, READ: 1}
    assert calls(ra) == {READ: 1}
    child = rf.processes[c]
    assert (child.ppid, child.comm, child.argv, child.uid) == (p, "sh", ["sh", "-c", "x"], 0)
    # grandchildren too
    g = k.fork(c, 201)
    hub.step(0)
    k.call(g, CLOSE, 2)
    assert calls(report(hub, follows)) == {OPENAT: 4, READ: 1, CLOSE: 2}
    assert hub.counts()["tracked"] == 3


def test_a_fork_nobody_wants_is_untracked(k: FakeProbe) -> None:
    hub = hub_for(k)
    p = k.spawn(100)
    sid = start(hub, PidTarget(p))
    c = k.fork(p, 200)
    assert k.is_tracked(c)  # the kernel tracks every fork of a tracked process...
    hub.step(0)
    assert not k.is_tracked(c)  # ...and the hub releases the ones no session follows
    assert not k.call(c, READ, 3)
    assert calls(report(hub, sid)) == {}
    assert hub.counts()["tracked"] == 1


def test_fork_over_max_tracked_pids_is_untracked_and_counted(k: FakeProbe) -> None:
    hub = hub_for(k, max_tracked_pids=2)
    p = k.spawn(100)
    sid = start(hub, PidTarget(p, children=True))
    c1 = k.fork(p, 201)
    hub.step(0)
    c2 = k.fork(p, 202)
    hub.step(0)
    assert set(hub.sessions[sid].members) == {p, c1}
    assert not k.is_tracked(c2)
    assert hub.counts()["pids_over_limit"] == 1 and hub.counts()["tracked"] == 2
    # Not silent: the session's report and watchers say its counts miss a process.
    assert report(hub, sid).drops.forks_untracked == 1
    assert report(hub, sid).drops.total() == 1
    assert hub.metrics().drops["pids_over_limit"] == 1


def test_children_alive_at_start_are_walked(k: FakeProbe) -> None:
    hub = hub_for(k)
    p = k.spawn(100)
    c = k.spawn(200, ppid=p)
    g = k.spawn(300, ppid=c)
    other = k.spawn(400)
    sid = start(hub, PidTarget(p, children=True), per_process=True)
    assert set(hub.sessions[sid].members) == {p, c, g}
    assert k.tracked == {p, c, g}
    for pid in (p, c, g, other):
        k.call(pid, READ)
    assert calls(report(hub, sid)) == {READ: 3}


# ---------------------------------------------------------------------- exits


def test_exit_freezes_counts_into_every_session(k: FakeProbe) -> None:
    hub = hub_for(k)
    p = k.spawn(100)
    a = start(hub, PidTarget(p, children=True), per_process=True)
    k.call(p, READ, 2)
    b = start(hub, PidTarget(p, children=True), per_process=True)
    c = k.fork(p, 200)
    hub.step(0)
    k.call(c, READ, 5, errors=1)
    k.call(p, READ, 1)
    k.clock.advance_ms(7)
    k.exit(c, 3)
    hub.step(0)
    assert k.entries(c) == {}  # the kernel entries are gone...
    for sid, root_reads in ((a, 3), (b, 1)):
        r = report(hub, sid)  # ...and both sessions still show them
        child = r.processes[c]
        assert proc_calls(r, c) == {READ: 5} and child.syscalls[READ].errors == 1
        assert child.exit == ExitStatus(code=3) and child.end_ns == START_NS + 7 * MS
        assert calls(r) == {READ: 5 + root_reads}
        assert state(hub, sid) == State.RUNNING  # the root still lives
    assert hub.counts()["tracked"] == 1

    k.call(p, WRITE, 1)
    k.exit(p, sig=signal.SIGKILL)
    hub.step(0)
    for sid, root_reads in ((a, 3), (b, 1)):
        sess = hub.sessions[sid]
        assert (sess.state, sess.end_reason) == (State.FINISHED, "all processes exited")
        r = report(hub, sid)
        assert r.exit == ExitStatus(signal=signal.SIGKILL)
        assert r.processes[p].exit == ExitStatus(signal=signal.SIGKILL)
        assert r.interrupted is None and r.end_ns == k.clock()
        assert calls(r) == {READ: 5 + root_reads, WRITE: 1}
    assert hub.counts() == {"running": 0, "finished": 2, "tracked": 0, "watchers": 0,
                            "watch_missed": 0, "pids_over_limit": 0}


def test_exit_status_decoding(k: FakeProbe) -> None:
    hub = hub_for(k)
    p = k.spawn(100)
    sid = start(hub, PidTarget(p, children=True), per_process=True)
    c1, c2, c3 = k.fork(p, 201), k.fork(p, 202), k.fork(p, 203)
    hub.step(0)
    k.exit(c1, 0)
    k.exit(c2, 255)
    k.exit(c3, sig=signal.SIGSEGV, core=True)
    hub.step(0)
    r = report(hub, sid)
    assert r.processes[c1].exit == ExitStatus(code=0)
    assert r.processes[c2].exit == ExitStatus(code=255)
    assert r.processes[c3].exit == ExitStatus(signal=signal.SIGSEGV, core_dumped=True)
    assert r.exit is None  # the root is alive


def test_per_process_false_folds_exited_children_into_pid_0(k: FakeProbe) -> None:
    hub = hub_for(k)
    p = k.spawn(100)
    sid = start(hub, PidTarget(p, children=True))  # per_process=False
    c1, c2 = k.fork(p, 201), k.fork(p, 202)
    hub.step(0)
    k.call(c1, READ, 2, ns=100)
    k.call(c2, READ, 3, ns=5000)
    k.call(c2, WRITE, 1)
    k.call(p, READ, 1)
    k.exit(c1)
    hub.step(0)
    r = report(hub, sid)
    assert set(r.processes) == {FOLDED_PID, p, c2}  # live ones keep their detail
    assert proc_calls(r, FOLDED_PID) == {READ: 2}
    k.exit(c2)
    hub.step(0)
    r = report(hub, sid)
    assert set(r.processes) == {FOLDED_PID, p}
    folded = r.processes[FOLDED_PID]
    assert folded.comm == "(exited, folded)"
    assert proc_calls(r, FOLDED_PID) == {READ: 5, WRITE: 1}
    assert folded.syscalls[READ].total_ns == 2 * 100 + 3 * 5000
    assert folded.syscalls[READ].max_ns == 5000
    assert calls(r) == {READ: 6, WRITE: 1}
    k.exit(p, 1)
    hub.step(0)
    r = report(hub, sid)
    assert set(r.processes) == {FOLDED_PID, p}  # the root keeps its own entry
    assert r.processes[p].exit == ExitStatus(code=1) and r.exit == ExitStatus(code=1)
    assert calls(r) == {READ: 6, WRITE: 1}
    assert hub.sessions[sid].state == State.FINISHED


def test_lost_exit_event_is_repaired_by_the_sweep(k: FakeProbe) -> None:
    hub = hub_for(k)
    p = k.spawn(100)
    sid = start(hub, PidTarget(p))
    hub.step(0)  # first sweep
    k.call(p, READ, 2)
    k.exit(p, lose_event=True)  # ring buffer full: no EV_EXIT
    hub.step(0)
    assert state(hub, sid) == State.RUNNING  # not noticed before the next sweep
    k.clock.advance_ms(1000)
    hub.step(0)
    sess = hub.sessions[sid]
    assert (sess.state, sess.end_reason) == (State.FINISHED, "all processes exited")
    r = report(hub, sid)
    assert calls(r) == {READ: 2} and r.exit is None


@pytest.mark.parametrize("sweep", [True, False])
def test_fork_and_exit_between_poll_and_snapshot_are_adopted(k: FakeProbe, sweep: bool) -> None:
    """A child that forks, calls and exits after the drain's poll but before its snapshot
    is seen as counters of an unknown pid: it must be adopted, not deleted as a stray."""
    hub = hub_for(k)
    p = k.spawn(100)
    sid = start(hub, PidTarget(p, children=True), per_process=True)
    hub.step(0)  # first sweep
    real_read = k.read_stats_by_gen
    child: list[int] = []

    def read_stats() -> dict[tuple[int, int, int], SyscallStats]:
        if not child:
            child.append(k.fork(p, 200))
            k.call(200, OPENAT, 3)
            k.exit(200, 4)
        return real_read()

    k.read_stats_by_gen = read_stats  # type: ignore[method-assign]
    k.clock.advance_ms(1000 if sweep else 10)
    hub.step(0)
    k.read_stats_by_gen = real_read  # type: ignore[method-assign]
    # with a sweep in that drain, the sweep itself reads the late records
    assert (200 in report(hub, sid).processes) == sweep
    assert bool(k.events) != sweep
    hub.step(0)
    r = report(hub, sid)
    assert proc_calls(r, 200) == {OPENAT: 3}
    assert r.processes[200].exit == ExitStatus(code=4)
    assert k.entries(200) == {}


# ---------------------------------------------------------------------- exec rules


def test_exec_rule_session_adds_matching_processes(k: FakeProbe) -> None:
    hub = hub_for(k)
    sid = start(hub, ExecRuleTarget(comm="make"), per_process=True)
    psid = start(hub, ExecRuleTarget(path="/usr/bin/cc"), per_process=True)
    assert k.rules == {("comm", "make"), ("path", "/usr/bin/cc")}
    m, cc, other = k.spawn(300, uid=1000), k.spawn(301), k.spawn(302)
    k.call(m, READ, 7)  # before the exec: untracked, not counted
    assert k.exec(m, "make", "/usr/bin/make")
    assert k.exec(cc, "cc", "/usr/bin/cc")
    assert not k.exec(other, "ls", "/bin/ls")
    k.clock.advance_ms(3)
    hub.step(0)
    assert set(hub.sessions[sid].members) == {m}
    assert set(hub.sessions[psid].members) == {cc}
    assert not k.is_tracked(other)
    k.call(m, READ, 2)
    k.call(cc, WRITE, 1)
    r = report(hub, sid)
    assert calls(r) == {READ: 2}
    info = r.processes[m]
    assert (info.comm, info.filename, info.uid, info.argv) == (
        "make", "/usr/bin/make", 1000, ["/usr/bin/make"])
    assert r.root_pid == 0 and r.command == ["exec rule comm='make' path=''"]
    assert calls(report(hub, psid)) == {WRITE: 1}
    # a rule session never ends because its processes did
    k.exit(m)
    hub.step(0)
    assert state(hub, sid) == State.RUNNING
    assert calls(report(hub, sid)) == {READ: 2}


def test_exec_rule_session_follows_children(k: FakeProbe) -> None:
    hub = hub_for(k)
    follows = start(hub, ExecRuleTarget(comm="make"))
    m = k.spawn(300)
    k.exec(m, "make", "/usr/bin/make")
    hub.step(0)
    c = k.fork(m, 301)
    hub.step(0)
    k.call(c, READ, 4)
    assert calls(report(hub, follows)) == {READ: 4}
    hub.stop(ADMIN, follows)

    alone = start(hub, ExecRuleTarget(comm="make", children=False))
    m2 = k.spawn(400)
    k.exec(m2, "make", "/usr/bin/make")
    hub.step(0)
    c2 = k.fork(m2, 401)
    hub.step(0)
    # Nobody follows it, but an exec rule might still match it: it waits in limbo,
    # tracked, and is released at the first sweep a second later.
    assert k.is_tracked(c2) and c2 not in hub.procs
    k.clock.advance_ms(1000)
    hub.step(0)
    assert not k.is_tracked(c2)
    assert set(hub.sessions[alone].members) == {m2}


def test_exec_rule_respects_caller_uids(k: FakeProbe) -> None:
    hub = hub_for(k)
    ci = Caller(name="ci", uids=frozenset({1000}), admin=False)
    sid = start(hub, ExecRuleTarget(comm="make"), ci, per_process=True)
    mine, roots = k.spawn(300, uid=1000), k.spawn(301, uid=0)
    assert k.exec(mine, "make", "/usr/bin/make")
    assert k.exec(roots, "make", "/usr/bin/make")  # the kernel matches it...
    hub.step(0)
    assert set(hub.sessions[sid].members) == {mine}
    assert not k.is_tracked(roots)  # ...the hub releases it
    k.call(mine, READ, 1)
    k.call(roots, READ, 1)
    assert set(report(hub, sid, ci).processes) == {mine}
    assert calls(report(hub, sid, ci)) == {READ: 1}


def test_exec_rules_are_reference_counted_in_the_kernel(k: FakeProbe) -> None:
    hub = hub_for(k)
    a = start(hub, ExecRuleTarget(comm="make"))
    b = start(hub, ExecRuleTarget(comm="make", path="/usr/bin/make"))
    assert k.rule_log == [("add", "comm", "make"), ("add", "path", "/usr/bin/make")]
    hub.stop(ADMIN, a)
    assert k.rule_log[2:] == []  # b still uses the comm rule
    assert k.rules == {("comm", "make"), ("path", "/usr/bin/make")}
    hub.stop(ADMIN, b)
    assert sorted(k.rule_log[2:]) == [("remove", "comm", "make"),
                                      ("remove", "path", "/usr/bin/make")]
    assert k.rules == set()
    m = k.spawn(300)
    assert not k.exec(m, "make", "/usr/bin/make")  # nothing tracks it any more
    c = start(hub, ExecRuleTarget(comm="make"))
    assert k.rule_log[-1] == ("add", "comm", "make")  # added again from zero
    hub.shutdown()
    assert k.rule_log[-1] == ("remove", "comm", "make")
    assert state(hub, c) == State.INTERRUPTED


def test_exec_rule_matched_after_the_rule_was_dropped_is_released(k: FakeProbe) -> None:
    hub = hub_for(k)
    sid = start(hub, ExecRuleTarget(comm="make"))
    m = k.spawn(300)
    k.exec(m, "make", "/usr/bin/make")  # matched in the kernel...
    hub.stop(ADMIN, sid)  # ...but the session stops before the drain
    hub.step(0)
    assert not k.is_tracked(m)
    assert hub.counts()["tracked"] == 0


def test_exec_rule_add_failure_rolls_back(k: FakeProbe) -> None:
    hub = hub_for(k)
    keep = start(hub, ExecRuleTarget(comm="make"))
    k.fail_rule = ("path", "/usr/bin/cc")
    e = raises_kind(ErrorKind.EXHAUSTED, hub.start, ADMIN,
                    ExecRuleTarget(comm="cc", path="/usr/bin/cc"), SessionOptions(),
                    match="full")
    assert "exec rule map 'path' is full" in str(e)
    assert k.rules == {("comm", "make")}  # "cc" added then removed; "make" untouched
    assert k.rule_log == [("add", "comm", "make"), ("add", "comm", "cc"),
                          ("remove", "comm", "cc")]
    assert list(hub.sessions) == [keep]


def test_exec_rules_refused_without_permission_or_when_malformed(k: FakeProbe) -> None:
    hub = hub_for(k)
    no_rules = Caller(name="ci", exec_rules=False)
    raises_kind(ErrorKind.DENIED, hub.start, no_rules, ExecRuleTarget(comm="make"),
                SessionOptions(), match="'ci' may not use exec rules")
    raises_kind(ErrorKind.INVALID, hub.start, ADMIN, ExecRuleTarget(), SessionOptions(),
                match="target.exec_rule: set comm, path or both")
    raises_kind(ErrorKind.INVALID, hub.start, ADMIN, ExecRuleTarget(comm="x" * 16),
                SessionOptions(), match="target.exec_rule.comm")
    raises_kind(ErrorKind.INVALID, hub.start, ADMIN, ExecRuleTarget(path="/" + "p" * 255),
                SessionOptions(), match="target.exec_rule")
    raises_kind(ErrorKind.INVALID, hub.start, ADMIN, ExecRuleTarget(path="/bin/\0x"),
                SessionOptions(), match="NUL")
    assert start(hub, ExecRuleTarget(comm="x" * 15))  # exactly 15 bytes is fine
    assert k.rule_log == [("add", "comm", "x" * 15)]


def test_cgroup_session_refused_for_uid_limited_tokens(k: FakeProbe) -> None:
    hub = hub_for(k)
    limited = Caller(name="ci", uids=frozenset({1000}))
    raises_kind(ErrorKind.DENIED, hub.start, limited, CgroupTarget("system.slice"),
                SessionOptions(), match="may not trace a whole cgroup")
    raises_kind(ErrorKind.INVALID, hub.start, ADMIN, CgroupTarget(""), SessionOptions(),
                match="target.cgroup.path: must not be empty")


def test_cgroup_session_with_a_fake_cgroup_tree(k: FakeProbe,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    hub = hub_for(k)
    a, b = k.spawn(300), k.spawn(301)
    monkeypatch.setattr(_sessions, "resolve_cgroup", lambda path: f"/sys/fs/cgroup/{path}")
    monkeypatch.setattr(_sessions, "_cgroup_tree", lambda root: ([77, 78], [a, b]))
    sid = start(hub, CgroupTarget("ci.slice"), per_process=True)
    assert k.rules == {("cgroup", 77), ("cgroup", 78)}
    assert set(hub.sessions[sid].members) == {a, b}
    newcomer = k.spawn(302)
    assert k.exec(newcomer, "sh", "/bin/sh", cgroup_id=78)
    hub.step(0)
    k.call(newcomer, READ, 2)
    k.call(a, READ, 1)
    assert calls(report(hub, sid)) == {READ: 3}
    assert report(hub, sid).command == ["/sys/fs/cgroup/ci.slice"]
    hub.stop(ADMIN, sid)
    assert k.rules == set()


# ---------------------------------------------------------------------- options


def test_duration_limit_interrupts_the_session(k: FakeProbe) -> None:
    hub = hub_for(k)
    p = k.spawn(100)
    sid = start(hub, PidTarget(p), duration_ms=100)
    k.call(p, READ, 2)
    k.clock.advance_ms(99)
    hub.step(0)
    assert state(hub, sid) == State.RUNNING
    k.call(p, READ, 1)
    k.clock.advance_ms(1)
    hub.step(0)
    sess = hub.sessions[sid]
    assert (sess.state, sess.end_reason) == (State.INTERRUPTED, "duration limit reached")
    assert sess.end_ns == START_NS + 100 * MS
    r = report(hub, sid)
    assert r.interrupted == "duration limit reached" and r.end_ns == START_NS + 100 * MS
    assert calls(r) == {READ: 3}
    assert not k.is_tracked(p)


def test_syscall_filter_restricts_reports(k: FakeProbe) -> None:
    hub = hub_for(k)
    p = k.spawn(100)
    sid = start(hub, PidTarget(p, children=True), syscalls=frozenset({READ, OPENAT}),
                syscall_spec=("read", "openat"), per_process=True)
    c = k.fork(p, 200)
    hub.step(0)
    for pid in (p, c):
        k.call(pid, READ, 2)
        k.call(pid, WRITE, 5)
        k.call(pid, OPENAT, 1)
    k.exit(c)
    hub.step(0)
    summary, r = hub.report(ADMIN, sid)
    assert calls(r) == {READ: 4, OPENAT: 2}
    assert proc_calls(r, c) == {READ: 2, OPENAT: 1}  # frozen filtered
    assert proc_calls(r, p) == {READ: 2, OPENAT: 1}
    assert summary.calls == 6
    hub.stop(ADMIN, sid)
    assert calls(report(hub, sid)) == {READ: 4, OPENAT: 2}


def test_bad_options_are_invalid(k: FakeProbe) -> None:
    hub = hub_for(k, max_duration_ms=1000)
    p = k.spawn(100)
    raises_kind(ErrorKind.INVALID, hub.start, ADMIN, PidTarget(p), SessionOptions(duration_ms=-1),
                match="options.duration_ms: -1 is outside 0..1000")
    raises_kind(ErrorKind.INVALID, hub.start, ADMIN, PidTarget(p),
                SessionOptions(duration_ms=1001), match="options.duration_ms")
    raises_kind(ErrorKind.INVALID, hub.start, ADMIN, PidTarget(p),
                SessionOptions(label="x" * 257), match="options.label")
    assert start(hub, PidTarget(p), duration_ms=1000, label="x" * 256)
    assert not k.rule_log and hub.counts()["running"] == 1


# ---------------------------------------------------------------------- limits and access


def test_max_sessions_and_per_caller_limit(k: FakeProbe) -> None:
    hub = hub_for(k, max_sessions=3)
    p = k.spawn(100)
    ci = Caller(name="ci", max_sessions=1, admin=False)
    first = start(hub, PidTarget(p), ci)
    raises_kind(ErrorKind.EXHAUSTED, hub.start, ci, PidTarget(p), SessionOptions(),
                match="token 'ci' may run 1 sessions")
    start(hub, PidTarget(p))
    start(hub, PidTarget(p))
    raises_kind(ErrorKind.EXHAUSTED, hub.start, ADMIN, PidTarget(p), SessionOptions(),
                match="3 sessions running: the daemon's limit")
    hub.stop(ci, first)  # finished sessions do not count
    assert start(hub, PidTarget(p), ci)
    assert hub.counts()["running"] == 3


def test_max_tracked_pids(k: FakeProbe) -> None:
    hub = hub_for(k, max_tracked_pids=1)
    p, q = k.spawn(100), k.spawn(101)
    start(hub, PidTarget(p))
    start(hub, PidTarget(p))  # already tracked: no room needed
    raises_kind(ErrorKind.EXHAUSTED, hub.start, ADMIN, PidTarget(q), SessionOptions(),
                match="limit of 1")
    assert k.tracked == {p}


def test_forget_old_finished_sessions(k: FakeProbe) -> None:
    hub = hub_for(k, max_finished_sessions=1)
    p = k.spawn(100)
    old = start(hub, PidTarget(p))
    hub.stop(ADMIN, old)
    newer = start(hub, PidTarget(p))
    hub.stop(ADMIN, newer)
    start(hub, PidTarget(p))  # forgetting happens at start
    raises_kind(ErrorKind.NOT_FOUND, hub.report, ADMIN, old, match="session_id: no session")
    assert hub.report(ADMIN, newer)[0].state == State.FINISHED


@pytest.mark.parametrize("pid", [0, -1, 1 << 22, 2**31])
def test_bad_pids_are_invalid(k: FakeProbe, pid: int) -> None:
    hub = hub_for(k)
    raises_kind(ErrorKind.INVALID, hub.start, ADMIN, PidTarget(pid), SessionOptions(),
                match=f"target.pid.pid: {pid} is not a valid pid")
    raises_kind(ErrorKind.INVALID, hub.start, ADMIN, SpawnedTarget(pid), SessionOptions(),
                match="target.spawned.pid")
    assert not k.tracked and not hub.sessions


def test_own_pid_missing_and_zombie_processes(k: FakeProbe) -> None:
    hub = hub_for(k)
    k.spawn(os.getpid())
    raises_kind(ErrorKind.INVALID, hub.start, ADMIN, PidTarget(os.getpid()), SessionOptions(),
                match="cannot trace itself")
    raises_kind(ErrorKind.NOT_FOUND, hub.start, ADMIN, PidTarget(4242), SessionOptions(),
                match="target.pid.pid: no such process: 4242")
    z = k.spawn(4243, state="Z")
    raises_kind(ErrorKind.NOT_FOUND, hub.start, ADMIN, PidTarget(z), SessionOptions())
    running = k.spawn(4244, state="S")
    raises_kind(ErrorKind.PRECONDITION, hub.start, ADMIN, SpawnedTarget(running),
                SessionOptions(), match="is not stopped")
    assert not k.tracked and not hub.sessions


def test_spawned_target_on_a_stopped_fake_process(k: FakeProbe) -> None:
    hub = hub_for(k)
    p = k.spawn(100, state="T", argv=["tracerd"])
    s = hub.start(ADMIN, SpawnedTarget(p, argv=("ls", "-l")), SessionOptions())
    r = report(hub, s.id)
    assert r.command == ["ls", "-l"] and r.processes[p].argv == ["ls", "-l"]
    assert hub.sessions[s.id].follows_children


def test_caller_uids_limit_pid_sessions(k: FakeProbe) -> None:
    hub = hub_for(k)
    ci = Caller(name="ci", uids=frozenset({1000}), admin=False)
    mine, roots = k.spawn(100, uid=1000), k.spawn(101, uid=0)
    assert start(hub, PidTarget(mine), ci)
    raises_kind(ErrorKind.DENIED, hub.start, ci, PidTarget(roots), SessionOptions(),
                match="token 'ci' may not trace process 101")
    assert k.tracked == {mine}


def test_fork_by_a_process_of_a_foreign_uid_is_not_followed(k: FakeProbe) -> None:
    hub = hub_for(k)
    ci = Caller(name="ci", uids=frozenset({1000}), admin=False)
    p = k.spawn(100, uid=1000)
    sid = start(hub, PidTarget(p, children=True), ci)
    c = k.fork(p, 200)
    hub.step(0)
    assert c in hub.sessions[sid].members
    k.proc[c].uid = 0  # e.g. a setuid helper that changed its real uid
    g = k.fork(c, 300)
    hub.step(0)
    assert g not in hub.sessions[sid].members and not k.is_tracked(g)


def test_non_admin_callers_see_only_their_own_sessions(k: FakeProbe) -> None:
    hub = hub_for(k)
    p = k.spawn(100)
    alice = Caller(name="alice", admin=False)
    bob = Caller(name="bob", admin=False)
    a = start(hub, PidTarget(p), alice)
    b = start(hub, PidTarget(p), bob)
    for fn, args in ((hub.report, (bob, a)), (hub.stop, (bob, a)),
                     (hub.watch, (bob, a, 100, False))):
        raises_kind(ErrorKind.DENIED, fn, *args, match=f"session {a} belongs to another client")
    assert state(hub, a) == State.RUNNING
    assert [s.id for s in hub.list_sessions(bob)] == [b]
    assert [s.id for s in hub.list_sessions(alice)] == [a]
    assert [s.id for s in hub.list_sessions(ADMIN)] == [a, b]
    assert [s.owner for s in hub.list_sessions(ADMIN)] == ["alice", "bob"]
    hub.stop(ADMIN, a)  # an admin controls every session
    assert [s.id for s in hub.list_sessions(ADMIN, State.RUNNING)] == [b]
    assert [s.id for s in hub.list_sessions(ADMIN, State.FINISHED)] == [a]
    assert hub.list_sessions(bob, State.FINISHED) == []
    raises_kind(ErrorKind.NOT_FOUND, hub.report, ADMIN, "nope", match="no session 'nope'")
    raises_kind(ErrorKind.NOT_FOUND, hub.stop, bob, "nope")


# ---------------------------------------------------------------------- watchers


def take(w: Watcher) -> tuple[View | None, int, list[SessionSummary | Violation],
                              tuple[SessionSummary, Report] | None]:
    return w.take(0)


def test_watch_interval_bounds(k: FakeProbe) -> None:
    hub = hub_for(k, min_interval_ms=50, max_interval_ms=1000)
    sid = start(hub, PidTarget(k.spawn(100)))
    for bad in (49, 1001, 0, -5):
        raises_kind(ErrorKind.INVALID, hub.watch, ADMIN, sid, bad, False,
                    match=f"interval_ms: {bad} is outside 50..1000")
    raises_kind(ErrorKind.INVALID, hub.watch, ADMIN, "nope", 10, False)  # interval checked first
    raises_kind(ErrorKind.NOT_FOUND, hub.watch, ADMIN, "nope", 50, False)
    hub.watch(ADMIN, sid, 50, False)
    hub.watch(ADMIN, sid, 1000, False)
    assert hub.counts()["watchers"] == 2


def test_max_watchers_and_unwatch(k: FakeProbe) -> None:
    hub = hub_for(k, max_watchers=2)
    sid = start(hub, PidTarget(k.spawn(100)))
    w1 = hub.watch(ADMIN, sid, 100, False)
    w2 = hub.watch(ADMIN, sid, 100, False)
    raises_kind(ErrorKind.EXHAUSTED, hub.watch, ADMIN, sid, 100, False,
                match="2 watchers open")
    hub.unwatch(w1)
    hub.unwatch(w1)  # idempotent
    assert hub.counts()["watchers"] == 1
    assert w1.closed and hub.sessions[sid].watchers == [w2]
    w3 = hub.watch(ADMIN, sid, 100, False)
    assert hub.counts()["watchers"] == 2
    hub.unwatch(w2)
    hub.unwatch(w3)
    hub.unwatch(w3)
    assert hub.counts()["watchers"] == 0 and hub.sessions[sid].watchers == []
    # a watcher freed after its session was forgotten
    w4 = hub.watch(ADMIN, sid, 100, False)
    hub.stop(ADMIN, sid)
    del hub.sessions[sid]
    hub.unwatch(w4)
    assert hub.counts()["watchers"] == 0


def test_slow_watcher_has_its_view_replaced_and_missed_counted(k: FakeProbe) -> None:
    hub = hub_for(k)
    p = k.spawn(100)
    sid = start(hub, PidTarget(p))
    w = hub.watch(ADMIN, sid, 100, False)
    hub.step(0)
    assert take(w) == (None, 0, [], None)  # not due yet
    k.call(p, READ, 1)
    k.clock.advance_ms(100)
    hub.step(0)
    k.call(p, READ, 2)
    k.clock.advance_ms(100)
    hub.step(0)
    k.call(p, WRITE, 4)
    k.clock.advance_ms(100)
    hub.step(0)
    assert hub.counts()["watch_missed"] == 2
    view, missed, states, final = take(w)
    assert missed == 2 and states == [] and final is None
    assert view is not None
    assert view.ts_ns == START_NS + 300 * MS  # the newest one
    assert {nr: s.calls for nr, s in view.totals.items()} == {READ: 3, WRITE: 4}
    assert view.processes is None
    assert take(w) == (None, 0, [], None)  # collected: empty again
    k.clock.advance_ms(100)
    hub.step(0)
    view, missed, _, _ = take(w)
    assert view is not None and missed == 0
    assert hub.counts()["watch_missed"] == 2


def test_watch_ticks_stay_on_their_grid(k: FakeProbe) -> None:
    hub = hub_for(k)
    sid = start(hub, PidTarget(k.spawn(100)))
    w = hub.watch(ADMIN, sid, 100, True)
    k.clock.advance_ms(350)  # three ticks late: one view, next tick at 400
    hub.step(0)
    assert w.next_due_ns == START_NS + 400 * MS
    view, missed, _, _ = take(w)
    assert view is not None and missed == 0
    assert view.processes is not None and set(view.processes) == {100}
    k.clock.advance_ms(49)
    hub.step(0)
    assert take(w)[0] is None
    k.clock.advance_ms(1)
    hub.step(0)
    assert take(w)[0] is not None


def test_view_drops_and_per_process(k: FakeProbe) -> None:
    hub = hub_for(k)
    p = k.spawn(100)
    sid = start(hub, PidTarget(p, children=True))
    c = k.fork(p, 200)
    w = hub.watch(ADMIN, sid, 50, True)
    k.drop_counts = Drops(events_lost=2)
    k.call(c, READ, 1)
    k.clock.advance_ms(50)
    hub.step(0)
    view = take(w)[0]
    assert view is not None
    assert view.drops == Drops(events_lost=2)
    assert view.processes is not None
    assert {pid: {nr: s.calls for nr, s in pi.syscalls.items()}
            for pid, pi in view.processes.items()} == {p: {}, c: {READ: 1}}


def test_finished_session_delivers_state_and_final_report(k: FakeProbe) -> None:
    hub = hub_for(k)
    p = k.spawn(100)
    sid = start(hub, PidTarget(p))
    w = hub.watch(ADMIN, sid, 100, False)
    k.call(p, READ, 3)
    k.exit(p, 7)
    hub.step(0)
    view, missed, states, final = take(w)
    assert view is None and missed == 0
    assert [(s.state, s.end_reason, s.calls) for s in states] == [
        (State.FINISHED, "all processes exited", 3)]
    assert final is not None
    summary, rep = final
    assert summary.state == State.FINISHED
    assert rep == report(hub, sid) and calls(rep) == {READ: 3}
    assert rep.exit == ExitStatus(code=7)
    # a watcher of an already finished session gets the final report at once
    late = hub.watch(ADMIN, sid, 100, False)
    view, _, states, final = take(late)
    assert view is None and states == [] and final is not None and final[1] == rep
    assert hub.counts()["watchers"] == 2
    hub.unwatch(late)
    hub.unwatch(w)
    assert hub.counts()["watchers"] == 0


# ---------------------------------------------------------------------- shutdown


def test_shutdown_interrupts_running_sessions(k: FakeProbe) -> None:
    hub = hub_for(k)
    p = k.spawn(100)
    done = start(hub, PidTarget(p))
    hub.stop(ADMIN, done)
    running = start(hub, PidTarget(p))
    rule = start(hub, ExecRuleTarget(comm="make"))
    w = hub.watch(ADMIN, running, 100, False)
    k.call(p, READ, 2)
    k.clock.advance_ms(10)
    hub.shutdown()
    for sid in (running, rule):
        sess = hub.sessions[sid]
        assert (sess.state, sess.end_reason) == (State.INTERRUPTED, "daemon shutting down")
        assert report(hub, sid).interrupted == "daemon shutting down"
        assert report(hub, sid).end_ns == START_NS + 10 * MS
    assert calls(report(hub, running)) == {READ: 2}
    assert hub.sessions[done].end_reason == "stopped by client"
    assert report(hub, done).interrupted is None
    assert k.tracked == set() and k.rules == set()
    _, _, states, final = take(w)
    assert [s.state for s in states] == [State.INTERRUPTED] and final is not None
    raises_kind(ErrorKind.PRECONDITION, hub.start, ADMIN, PidTarget(p), SessionOptions(),
                match="shutting down")
    k.exec(p, "x")
    hub.step(0)  # a closed hub ignores the drain
    assert hub.counts()["running"] == 0


# ---------------------------------------------------------------------- real processes


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(["sleep", "30"])
    # Popen returns once the child's execve has released the parent's memory, a moment
    # before the kernel sets up the new argv: wait until /proc shows it.
    deadline = time.monotonic() + 5
    while _procfs.cmdline(p.pid) != ["sleep", "30"] and time.monotonic() < deadline:
        time.sleep(0.001)
    try:
        yield p
    finally:
        p.kill()
        p.wait()


def wait_state(pid: int, letters: str) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        st = _procfs.stat(pid)
        if st is not None and st[0] in letters:
            return
        time.sleep(0.005)
    raise AssertionError(f"process {pid} never reached state {letters}")


def test_real_process_pid_session(sleeper: subprocess.Popen[bytes]) -> None:
    k = FakeProbe(FakeClock())
    hub = Hub(k, clock=k.clock)
    s = hub.start(ADMIN, PidTarget(sleeper.pid), SessionOptions())
    r = report(hub, s.id)
    assert r.command == ["sleep", "30"] and r.root_pid == sleeper.pid
    info = r.processes[sleeper.pid]
    assert (info.comm, info.uid, info.ppid) == ("sleep", os.getuid(), os.getpid())
    assert k.tracked == {sleeper.pid}
    raises_kind(ErrorKind.PRECONDITION, hub.start, ADMIN, SpawnedTarget(sleeper.pid),
                SessionOptions(), match="is not stopped")


def test_real_stopped_process_spawned_session(sleeper: subprocess.Popen[bytes]) -> None:
    os.kill(sleeper.pid, signal.SIGSTOP)
    wait_state(sleeper.pid, "Tt")
    k = FakeProbe(FakeClock())
    hub = Hub(k, clock=k.clock)
    s = hub.start(ADMIN, SpawnedTarget(sleeper.pid, argv=("true", "x")), SessionOptions())
    assert s.state == State.RUNNING
    r = report(hub, s.id)
    assert r.command == ["true", "x"] and r.processes[sleeper.pid].argv == ["true", "x"]


def test_real_process_that_is_gone_is_not_found() -> None:
    p = subprocess.Popen(["true"])
    p.wait()
    k = FakeProbe(FakeClock())
    hub = Hub(k, clock=k.clock)
    raises_kind(ErrorKind.NOT_FOUND, hub.start, ADMIN, PidTarget(p.pid), SessionOptions(),
                match="no such process")
    assert not k.tracked


# ---------------------------------------------------------------------- bugs found in review


def test_stopped_session_still_counts_its_processes(k: FakeProbe) -> None:
    hub = hub_for(k)
    p = k.spawn(100)
    sid = start(hub, PidTarget(p))
    k.call(p, READ, 3)
    summary = hub.stop(ADMIN, sid)
    assert summary.calls == 3
    assert summary.processes == 1


def test_failed_start_leaves_nothing_tracked(k: FakeProbe) -> None:
    hub = hub_for(k, max_tracked_pids=2)
    p = k.spawn(100)
    k.spawn(200, ppid=p)
    k.spawn(201, ppid=p)
    raises_kind(ErrorKind.EXHAUSTED, hub.start, ADMIN, PidTarget(p, children=True),
                SessionOptions())
    assert not hub.sessions
    assert hub.counts()["tracked"] == 0
    assert k.tracked == set()


def test_failed_cgroup_start_drops_its_rules_and_pids(k: FakeProbe,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    hub = hub_for(k)
    a, b = k.spawn(300), k.spawn(301)
    monkeypatch.setattr(_sessions, "resolve_cgroup", lambda path: f"/sys/fs/cgroup/{path}")
    monkeypatch.setattr(_sessions, "_cgroup_tree", lambda root: ([77], [a, b]))
    real_track = k.track

    def track(pid: int) -> None:
        if pid == b:
            raise RuntimeError(f"pid {pid} is outside 1..{b - 1}")
        real_track(pid)

    monkeypatch.setattr(k, "track", track)
    raises_kind(ErrorKind.INVALID, hub.start, ADMIN, CgroupTarget("ci.slice"), SessionOptions(),
                match="outside")
    assert k.rule_log == [("add", "cgroup", 77), ("remove", "cgroup", 77)]
    assert k.rules == set() and k.tracked == set() and not hub.sessions
    assert hub.counts()["tracked"] == 0


def test_fork_then_rule_exec_in_one_drain_is_counted(k: FakeProbe) -> None:
    hub = hub_for(k)
    p = k.spawn(100, comm="sh")
    start(hub, PidTarget(p))  # tracks the shell, not its children
    rule = start(hub, ExecRuleTarget(comm="make"))
    c = k.fork(p, 200)  # tracked by the kernel at fork
    k.exec(c, "make", "/usr/bin/make")  # matches the rule (already tracked)
    hub.step(0)  # one drain sees both: EV_FORK (nobody follows) then EV_EXEC (rule)
    assert c in hub.sessions[rule].members
    k.call(c, READ, 5)
    assert calls(report(hub, rule)) == {READ: 5}


def test_rule_session_does_not_count_calls_before_the_exec(k: FakeProbe) -> None:
    hub = hub_for(k)
    p = k.spawn(100, comm="sh")
    start(hub, PidTarget(p))
    rule = start(hub, ExecRuleTarget(comm="make"))
    k.call(p, READ, 5)
    hub.step(0)
    k.call(p, READ, 3)  # still the shell, before the exec
    k.exec(p, "make", "/usr/bin/make")
    hub.step(0)
    k.call(p, READ, 2)  # make
    assert calls(report(hub, rule)) == {READ: 2}


def test_pid_reuse_within_a_session_keeps_both_processes_counts(k: FakeProbe) -> None:
    hub = hub_for(k)
    p = k.spawn(100)
    sid = start(hub, PidTarget(p, children=True), per_process=True)
    c = k.fork(p, 200)
    hub.step(0)
    k.call(c, READ, 4)
    k.exit(c)
    hub.step(0)
    assert calls(report(hub, sid)) == {READ: 4}
    k.fork(p, 200)  # pid 200 reused
    hub.step(0)
    k.call(200, WRITE, 1)
    assert calls(report(hub, sid)) == {READ: 4, WRITE: 1}
    k.exit(200)
    hub.step(0)
    assert calls(report(hub, sid)) == {READ: 4, WRITE: 1}


def test_children_walk_respects_caller_uids(k: FakeProbe) -> None:
    hub = hub_for(k)
    ci = Caller(name="ci", uids=frozenset({1000}), admin=False)
    p = k.spawn(100, uid=1000)
    mine = k.spawn(200, ppid=p, uid=1000)
    roots = k.spawn(201, ppid=p, uid=0)
    sid = start(hub, PidTarget(p, children=True), ci)
    assert mine in hub.sessions[sid].members
    assert roots not in hub.sessions[sid].members
    assert not k.is_tracked(roots)


# ---------------------------------------------------------------------- property


@dataclass
class ModelSession:
    sid: str
    members: set[int]
    children: bool
    keep: frozenset[int] | None
    running: bool = True
    expected: Counter[int] = field(default_factory=Counter)
    errors: Counter[int] = field(default_factory=Counter)


NRS = (READ, WRITE, CLOSE, OPENAT)

op_st = st.one_of(
    st.tuples(st.just("start"), st.integers(0, 50), st.booleans(), st.booleans(),
              st.one_of(st.none(), st.frozensets(st.sampled_from(NRS), min_size=1))),
    st.tuples(st.just("stop"), st.integers(0, 50)),
    st.tuples(st.just("call"), st.integers(0, 50), st.sampled_from(NRS), st.integers(1, 5),
              st.integers(0, 5)),
    st.tuples(st.just("call"), st.integers(0, 50), st.sampled_from(NRS), st.integers(1, 5),
              st.integers(0, 5)),
    st.tuples(st.just("fork"), st.integers(0, 50)),
    st.tuples(st.just("exit"), st.integers(0, 50)),
    st.tuples(st.just("tick"), st.integers(1, 1500)),
)


def descendants(k: FakeProbe, pid: int) -> set[int]:
    out, todo = {pid}, [pid]
    while todo:
        q = todo.pop()
        for c, info in k.proc.items():
            if info.ppid == q and c not in out:
                out.add(c)
                todo.append(c)
    return out


def check_model(hub: Hub, model: list[ModelSession]) -> None:
    for m in model:
        summary, r1 = hub.report(ADMIN, m.sid)
        _, r2 = hub.report(ADMIN, m.sid)
        assert r1 == r2
        assert calls(r1) == {nr: n for nr, n in m.expected.items() if n}
        assert {nr: s.errors for nr, s in r1.totals().items() if s.errors} == {
            nr: n for nr, n in m.errors.items() if n}
        assert summary.calls == sum(m.expected.values())
        assert (summary.state == State.RUNNING) == m.running


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op_st, min_size=10, max_size=60), per_process=st.booleans())
def test_reports_equal_calls_made_while_running(ops: list[tuple[Any, ...]],
                                                per_process: bool) -> None:
    k = FakeProbe(FakeClock())
    with mock.patch.object(_sessions, "_procfs", FakeProcfs(k)):
        hub = Hub(k, clock=k.clock)
        for pid in (100, 101, 102):
            k.spawn(pid)
        model: list[ModelSession] = []
        for op in ops:
            alive = sorted(k.proc)
            kind = op[0]
            if kind == "start" and alive:
                _, i, children, pp, keep = op
                pid = alive[i % len(alive)]
                opts = SessionOptions(syscalls=keep, per_process=pp or per_process)
                sid = hub.start(ADMIN, PidTarget(pid, children=children), opts).id
                members = descendants(k, pid) if children else {pid}
                model.append(ModelSession(sid, members, children, keep))
            elif kind == "stop" and model:
                m = model[op[1] % len(model)]
                hub.stop(ADMIN, m.sid)
                m.running = False
            elif kind == "call" and alive:
                _, i, nr, n, e = op
                pid, e = alive[i % len(alive)], min(e, n)
                k.call(pid, nr, n, errors=e)
                for m in model:
                    if m.running and pid in m.members and (m.keep is None or nr in m.keep):
                        m.expected[nr] += n
                        m.errors[nr] += e
            elif kind == "fork" and alive:
                parent = alive[op[1] % len(alive)]
                child = k.fork(parent)
                hub.step(0)
                for m in model:
                    if m.running and m.children and parent in m.members:
                        m.members.add(child)
            elif kind == "exit" and alive:
                pid = alive[op[1] % len(alive)]
                k.exit(pid, 1)
                hub.step(0)
                for m in model:
                    if m.running and pid in m.members:
                        m.members.discard(pid)
                        m.running = bool(m.members)
            elif kind == "tick":
                k.clock.advance_ms(op[1])
                hub.step(0)
            check_model(hub, model)
        # every process the kernel tracks is wanted by a running session, and back
        wanted = {p for m in model if m.running for p in m.members}
        assert k.tracked == wanted
        assert set(hub.procs) == wanted


def test_helpers_of_the_fake_kernel() -> None:
    """The fake itself: only tracked processes count; exits keep counters until deleted."""
    k = FakeProbe(FakeClock())
    p = k.spawn(1)
    assert not k.call(p, READ)
    k.track(p)
    assert k.call(p, READ, 2, ns=300)
    s = k.read_stats_by_gen()[(p, 0, READ)]
    assert (s.calls, s.total_ns, s.max_ns, s.hist[8]) == (2, 600, 300, 2)
    c = k.fork(p)
    assert k.is_tracked(c) and k.poll_events(0)[0].type == EV_FORK
    k.exit(p, 2)
    ev = k.poll_events(0)[0]
    assert (ev.type, ev.exit_code, ev.pid) == (EV_EXIT, 2 << 8, p)
    assert k.proc[c].ppid == 1 and k.entries(p) == {READ: 2}
    assert k.delete_stats_by_gen([p]) and k.entries(p) == {}


def test_a_fork_in_limbo_joined_by_a_session_keeps_being_counted(k: FakeProbe) -> None:
    """Review finding: _join did not take a pid out of limbo, so the sweep untracked a
    member a second later, and its exit deleted counters before they were frozen."""
    hub = hub_for(k)
    start(hub, ExecRuleTarget(comm="make"))  # keeps unfollowed forks in limbo
    p = k.spawn(100)
    start(hub, PidTarget(p))  # tracks p, not its children
    c = k.fork(p, 101)
    hub.step(0)
    assert k.is_tracked(c) and c not in hub.procs  # in limbo
    sid = start(hub, PidTarget(c))
    k.clock.advance_ms(1500)
    hub.step(0)  # a sweep: limbo expiry must not touch a member
    assert k.is_tracked(c)
    k.call(c, READ, 3)
    k.exit(c)
    hub.step(0)
    assert calls(report(hub, sid)) == {READ: 3}
    assert state(hub, sid) == State.FINISHED


def test_a_tracked_pid_nobody_knows_is_untracked_by_the_sweep(k: FakeProbe) -> None:
    """An exec-rule match whose record was lost stays tracked in the kernel; the sweep
    untracks it once the records it reads do not explain it."""
    hub = hub_for(k)
    start(hub, ExecRuleTarget(comm="make"))
    m = k.spawn(300)
    k.exec(m, "make", "/usr/bin/make")
    k.events.clear()  # the ring buffer lost the exec record
    k.call(m, READ)
    k.clock.advance_ms(1500)
    hub.step(0)
    assert not k.is_tracked(m)


# ---------------------------------------------------------------------- budgets

GETPPID = 110


def budget(text: str) -> tuple[_budgets.Assertion, ...]:
    return tuple(_budgets.loads(text))


@dataclass
class FakeExit:
    tgid: int
    hiwater_rss_bytes: int


class FakeExits:
    def __init__(self) -> None:
        self.records: list[FakeExit] = []
        self.lost = 0
        self.closed = False

    def drain(self, wait_s: float = 0.0) -> list[FakeExit]:
        out, self.records = self.records, []
        return out

    def close(self) -> None:
        self.closed = True


def test_budget_is_evaluated_at_each_drain_and_streamed(k: FakeProbe) -> None:
    killed: list[tuple[int, int]] = []
    seen: list[Violation] = []
    hub = Hub(k, clock=k.clock, kill=lambda pid, sig: killed.append((pid, sig)),
              on_violation=lambda _s, v: seen.append(v))
    root = k.spawn()
    sid = start(hub, PidTarget(root, children=True), budget=budget(
        '[[assertion]]\nname = "few"\ntype = "span_count"\nmax_spans = 10\n'
        'action = "signal"\nsignal = "SIGUSR1"\n'
        '[[assertion]]\nname = "warned"\ntype = "syscall_calls"\nmax_calls = 3\n'
        'fail_on_violation = false\n'))
    assert hub.sessions[sid].options.per_process  # a budget keeps per-process detail
    w = hub.watch(ADMIN, sid, 1000, False)
    k.call(root, READ, 3)
    hub.step(0)
    assert [r.passed for r in report(hub, sid).budget] == [True, True] and not seen
    child = k.fork(root)
    k.call(child, READ, 8)
    k.clock.advance_ms(1)
    hub.step(0)
    results = report(hub, sid).budget
    assert [(r.passed, r.actual_value) for r in results] == [(False, 11), (False, 11)]
    assert [v.result.name for v in seen] == ["few", "warned"]
    assert results[0].counts and not results[1].counts and results[0].enforcement == "user"
    # The signal reaches every live process of the session, once.
    assert sorted(killed) == sorted([(root, signal.SIGUSR1), (child, signal.SIGUSR1)])
    k.call(root, READ, 5)
    hub.step(0)
    assert len(killed) == 2 and len(seen) == 2  # failed once, acted once
    events = take(w)[2]
    assert [e.result.name for e in events if isinstance(e, Violation)] == ["few", "warned"]
    # A watcher that connects later is told of the violations already seen.
    late = hub.watch(ADMIN, sid, 1000, False)
    assert [e.result.name for e in take(late)[2] if isinstance(e, Violation)] == ["few",
                                                                                 "warned"]
    k.exit(child)
    k.exit(root)
    hub.step(0)
    final = report(hub, sid)
    assert final.budget_failed() and final.budget[0].actual_value == 16


def test_kill_budget_gets_an_inherited_kernel_limit_released_at_the_end(k: FakeProbe) -> None:
    hub = Hub(k, HubLimits(max_limits=1), clock=k.clock, kill=lambda _p, _s: None)
    text = ('[[assertion]]\nname = "cap"\ntype = "span_count"\nmax_spans = 4\n'
            'span_name_pattern = "^read$"\naction = "kill"\n')
    root = k.spawn()
    sid = start(hub, PidTarget(root, children=True), budget=budget(text))
    assert k.limit_slot(root) == 0 and k.limits[0].sig == signal.SIGKILL
    assert k.limits[0].rules == [(4, frozenset({READ}))]
    child = k.fork(root)  # inherits the slot in the kernel
    assert k.limit_slot(child) == 0
    k.call(child, WRITE, 10)  # not counted against the rule
    k.call(child, READ, 4)
    assert not k.signalled
    k.call(root, READ, 2)  # over: the kernel signals the calls entered from now on
    assert k.signalled == [(root, signal.SIGKILL), (root, signal.SIGKILL)]
    k.clock.advance_ms(1)
    hub.step(0)
    r = report(hub, sid).budget[0]
    assert (r.passed, r.enforcement, r.overshoot) == (False, "kernel", 2)
    assert r.first_failed_ns == k.limits[0].rule_tripped_ns[0]  # the kernel's time
    # One slot only: a second kill budget is enforced from user space.
    other = k.spawn()
    sid2 = start(hub, PidTarget(other), budget=budget(text))
    assert k.limit_slot(other) is None
    k.call(other, READ, 5)
    hub.step(0)
    assert report(hub, sid2).budget[0].enforcement == "user"
    hub.stop(ADMIN, sid)
    assert 0 not in k.limits and hub._free_slots == deque([0])
    assert k.limit_slot(root) is None and k.limit_slot(child) is None


def test_rule_session_limits_processes_from_their_exec(k: FakeProbe) -> None:
    hub = Hub(k, clock=k.clock, kill=lambda _p, _s: None)
    start(hub, ExecRuleTarget(comm="job"), budget=budget(
        '[[assertion]]\nname = "cap"\ntype = "span_count"\nmax_spans = 4\naction = "kill"\n'))
    assert k.rule_slot[("comm", "job")] == 0
    p = k.spawn()
    assert k.exec(p, "job")
    assert k.limit_slot(p) == 0  # from the exec itself, before any drain


def test_peak_rss_from_polls_and_exit_records(k: FakeProbe) -> None:
    exits = FakeExits()
    hub = Hub(k, clock=k.clock, exit_source=lambda: exits)
    root = k.spawn()
    sid = start(hub, PidTarget(root, children=True), budget=budget(
        '[[assertion]]\nname = "rss"\ntype = "memory_usage"\nmax_bytes = 1000\n'))
    child = k.fork(root)
    k.proc[root].hwm, k.proc[child].hwm = 500, 700
    hub.step(0)
    assert report(hub, sid).budget[0].actual_value == 700
    # The child's exit record carries a higher peak than it was last polled at.
    exits.records.append(FakeExit(tgid=child, hiwater_rss_bytes=1500))
    exits.records.append(FakeExit(tgid=99999, hiwater_rss_bytes=10**9))  # not ours
    k.exit(child)
    hub.step(0)
    r = report(hub, sid)
    assert r.processes[child].peak_rss_bytes == 1500 and r.budget[0].actual_value == 1500
    assert r.budget[0].pid == child and not r.budget[0].passed
    k.exit(root)
    hub.step(0)
    assert exits.closed  # nobody needs exit records any more


def test_start_refused_by_budget_leaves_no_limit(k: FakeProbe) -> None:
    hub = Hub(k, HubLimits(max_limits=2), clock=k.clock)
    raises_kind(ErrorKind.NOT_FOUND, hub.start, ADMIN, PidTarget(4242),
                SessionOptions(budget=budget(
                    '[[assertion]]\nname = "c"\ntype = "span_count"\nmax_spans = 1\n'
                    'action = "kill"\n')))
    assert not k.limits and len(hub._free_slots) == 2


_COUNT_BUDGET = (
    '[[assertion]]\nname = "all"\ntype = "span_count"\nmax_spans = 40\n'
    '[[assertion]]\nname = "reads"\ntype = "syscall_calls"\nmax_calls = 15\n'
    'syscall_name_pattern = "^read$"\n'
    '[[assertion]]\nname = "errs"\ntype = "error_ratio"\nmax_error_ratio = 0.3\n'
    '[[assertion]]\nname = "god"\ntype = "anti_pattern"\npattern = "GodProcess"\n'
    'threshold = 0.7\n')


@settings(max_examples=60, deadline=None)
@given(work=st.lists(st.tuples(st.booleans(), st.sampled_from([READ, WRITE]),
                               st.integers(1, 6), st.booleans(), st.booleans()),
                     min_size=1, max_size=25))
def test_budget_verdicts_do_not_depend_on_drain_timing(
        work: list[tuple[bool, int, int, bool, bool]]) -> None:
    """The same calls, drained after every step or only at the end, give the same final
    results (apart from when a failure was first seen)."""

    def final(drain_often: bool) -> list[tuple[str, bool, float]]:
        probe = FakeProbe(FakeClock())
        with mock.patch.object(_sessions, "_procfs", FakeProcfs(probe)):
            hub = Hub(probe, clock=probe.clock, kill=lambda _p, _s: None)
            root = probe.spawn(4000)
            sid = start(hub, PidTarget(root, children=True), budget=budget(_COUNT_BUDGET))
            child = probe.fork(root, 4001)
            for in_child, nr, n, failing, drain in work:
                probe.call(child if in_child else root, nr, n, errors=n if failing else 0)
                probe.clock.advance_ms(10)
                if drain_often and drain:
                    hub.step(0)
            probe.exit(child)
            probe.exit(root)
            hub.step(0)
            return [(r.name, r.passed, r.actual_value) for r in report(hub, sid).budget]

    assert final(True) == final(False)


def test_kernel_limit_stays_with_the_sessions_members_only(k: FakeProbe) -> None:
    hub = Hub(k, clock=k.clock, kill=lambda _p, _s: None)
    cap = budget('[[assertion]]\nname = "c"\ntype = "span_count"\nmax_spans = 9\n'
                 'action = "kill"\n')
    # An exec rule shared with a later session: when the limiting session ends, the
    # rule no longer hands its (freed, reusable) slot to new processes.
    first = start(hub, ExecRuleTarget(comm="job"), budget=cap)
    start(hub, ExecRuleTarget(comm="job"))
    assert k.rule_slot[("comm", "job")] == 0
    hub.stop(ADMIN, first)
    assert k.rule_slot[("comm", "job")] is None and ("comm", "job") in k.rules
    p = k.spawn()
    k.exec(p, "job")
    assert k.limit_slot(p) is None

    # A fork the limiting session does not take (here: a pid session without children)
    # loses the limit the kernel copied from its parent.
    root = k.spawn()
    start(hub, PidTarget(root), budget=cap)
    slot = k.limit_slot(root)
    assert slot == 1  # the freed slot 0 is reused last
    child = k.fork(root)
    assert k.limit_slot(child) == slot
    hub.step(0)
    assert k.limit_slot(child) is None and k.limit_slot(root) == slot


# ---------------------------------------------------------------------- events


def test_events_reach_their_session_with_losses_counted(k: FakeProbe) -> None:
    hub = hub_for(k)
    a, b = k.spawn(), k.spawn()
    sa = start(hub, PidTarget(a), events=True, syscalls=frozenset({READ}))
    sb = start(hub, PidTarget(b), events=True)
    sub_a = hub.subscribe_events(ADMIN, sa, EventFilter())
    # The kernel filter defaults to the syscalls the session counts.
    assert k.ev_filters[hub.sessions[sa].slot or 0][1] == frozenset({READ})
    k.emit(a, READ, 3)
    k.emit(a, WRITE, 2)  # not selected: never leaves the kernel
    k.emit(b, WRITE, 4)
    k.ring_room = len(k.ring) + 1
    k.emit(a, READ, 3)  # one fits, two are lost (counted in the kernel)
    assert hub.pump_events() == 8
    batch = sub_a.next_batch(timeout_s=0)
    assert batch is not None and [e.nr for e in batch.events] == [READ] * 4
    assert (batch.kernel_lost, batch.dropped, batch.last) == (2, 0, False)
    # b's events were recorded before anyone streamed them: the first stream gets them.
    late = hub.subscribe_events(ADMIN, sb, EventFilter())
    got = late.next_batch(timeout_s=0)
    assert got is not None and len(got.events) == 4
    # A second stream on b did not see them, and says so.
    second = hub.subscribe_events(ADMIN, sb, EventFilter())
    hub.stop(ADMIN, sb)
    end = second.next_batch(timeout_s=0)
    assert end is not None and end.last and (len(end.events), end.dropped) == (0, 4)
    assert hub.event_streams == 3
    hub.unsubscribe_events(second)
    assert hub.event_streams == 2


def test_late_events_of_an_ended_session_never_reach_the_next_one(k: FakeProbe) -> None:
    hub = hub_for(k, max_limits=1)
    a = k.spawn()
    s1 = start(hub, PidTarget(a), events=True)
    slot = hub.sessions[s1].slot
    old_gen = k.ev_gen[slot or 0]
    hub.stop(ADMIN, s1)
    b = k.spawn()
    s2 = start(hub, PidTarget(b), events=True)
    assert hub.sessions[s2].slot == slot  # the only slot, reused
    sub = hub.subscribe_events(ADMIN, s2, EventFilter())
    k.emit(a, READ, 2, slot_gen=(slot or 0, old_gen))  # a call s1's process was in
    k.emit(b, READ, 1)
    hub.pump_events()
    batch = sub.next_batch(timeout_s=0)
    assert batch is not None and [e.pid for e in batch.events] == [b]


def test_events_need_a_slot_and_streams_are_bounded(k: FakeProbe) -> None:
    hub = hub_for(k, max_limits=1, max_watchers=2)
    a, b = k.spawn(), k.spawn()
    sa = start(hub, PidTarget(a), events=True)
    raises_kind(ErrorKind.EXHAUSTED, hub.start, ADMIN, PidTarget(b),
                SessionOptions(events=True))
    assert b not in k.tracked  # refused: nothing left behind
    plain = start(hub, PidTarget(b))
    raises_kind(ErrorKind.PRECONDITION, hub.subscribe_events, ADMIN, plain, EventFilter())
    hub.subscribe_events(ADMIN, sa, EventFilter())
    hub.watch(ADMIN, sa, 1000, False)
    raises_kind(ErrorKind.EXHAUSTED, hub.subscribe_events, ADMIN, sa, EventFilter())


def test_an_events_session_is_refused_where_another_session_has_the_slot(k: FakeProbe) -> None:
    hub = hub_for(k)
    a = k.spawn()
    first = start(hub, PidTarget(a), events=True)
    raises_kind(ErrorKind.PRECONDITION, hub.start, ADMIN, PidTarget(a),
                SessionOptions(events=True))
    assert k.slot[a] == hub.sessions[first].slot  # the first one keeps it
    start(hub, PidTarget(a))  # counting alone is fine


# ---------------------------------------------------------------------- watch rules


def rule(name: str, **kw: object) -> WatchRule:
    return WatchRule(name=name, **kw)  # type: ignore[arg-type]


def rule_sessions(hub: Hub, name: str) -> list[Session]:
    return [s for s in hub.sessions.values() if s.rule == name]


def test_a_watch_rule_starts_one_session_per_matching_exec_from_the_exec_on(
        k: FakeProbe) -> None:
    done: list[tuple[SessionSummary, Report]] = []
    hub = Hub(k, HubLimits(), clock=k.clock, on_finish=lambda s, r: done.append((s, r)))
    hub.set_watch_rules([rule("deploy", path="/opt/deploy.sh",
                              options=SessionOptions(per_process=True))])
    # The path as given to execve, and the comm for relative invocations (./deploy.sh).
    assert k.rules == {("path", "/opt/deploy.sh"), ("comm", "deploy.sh")}
    a, b = k.spawn(300), k.spawn(301)
    k.proc[b].cwd = "/opt"
    k.call(a, READ, 5)  # before its exec: nobody's
    assert k.exec(a, "deploy.sh", "/opt/deploy.sh")
    assert k.exec(b, "deploy.sh", "./deploy.sh")
    hub.step(0)
    sa, sb = rule_sessions(hub, "deploy")
    assert (sa.root_pid, sb.root_pid) == (a, b)
    assert sa.owner.name == "rule:deploy" and sa.target == PidTarget(a, children=True)
    k.call(a, READ, 2)
    child = k.fork(a, 302)
    hub.step(0)
    k.call(child, WRITE, 3)
    # The child runs the script again: the outer session counts it, no new session.
    assert k.exec(child, "deploy.sh", "/opt/deploy.sh")
    k.call(child, WRITE, 1)
    hub.step(0)
    assert len(rule_sessions(hub, "deploy")) == 2
    k.call(b, OPENAT, 1)
    for pid in (child, a, b):
        k.exit(pid)
    hub.step(0)
    assert [s.state for s in (sa, sb)] == [State.FINISHED, State.FINISHED]
    assert calls(report(hub, sa.id)) == {READ: 2, WRITE: 4}
    assert calls(report(hub, sb.id)) == {OPENAT: 1}
    assert sorted(s.id for s, _ in done) == sorted([sa.id, sb.id])
    assert all(s.rule == "deploy" for s, _ in done)
    # A file of the same name elsewhere: tracked by the comm key, then released.
    c = k.spawn(303)
    assert k.exec(c, "deploy.sh", "/tmp/deploy.sh")
    hub.step(0)
    assert len(rule_sessions(hub, "deploy")) == 2 and not k.is_tracked(c)
    # `./deploy.sh` that has exited before the daemon reads its exec: its cwd is gone,
    # its file name decides, and its calls are the session's.
    d = k.spawn(304)
    assert k.exec(d, "deploy.sh", "./deploy.sh")
    k.call(d, READ, 4)
    k.exit(d)
    hub.step(0)
    (sd,) = [s for s in rule_sessions(hub, "deploy") if s.root_pid == d]
    assert sd.state == State.FINISHED and calls(report(hub, sd.id)) == {READ: 4}
    # Alive but its directory may not be read (another user's, no CAP_SYS_PTRACE): the
    # name alone must not decide, or any ./deploy.sh anywhere would be taken for it.
    e = k.spawn(305, uid=1000)
    k.proc[e].cwd = ""
    assert k.exec(e, "deploy.sh", "./deploy.sh")
    hub.step(0)
    assert not [s for s in rule_sessions(hub, "deploy") if s.root_pid == e]
    assert not k.is_tracked(e)


def test_every_criterion_of_a_watch_rule_must_match(k: FakeProbe) -> None:
    hub = hub_for(k)
    hub.set_watch_rules([rule("ci", comm="make", uids=frozenset({1000}))])
    root, user = k.spawn(300, uid=0), k.spawn(301, uid=1000)
    assert k.exec(root, "make", "/usr/bin/make")
    assert k.exec(user, "make", "/usr/bin/make")
    hub.step(0)
    (s,) = rule_sessions(hub, "ci")
    assert s.root_pid == user
    assert not k.is_tracked(root)


def test_new_watch_rules_keep_shared_keys_and_running_sessions(k: FakeProbe) -> None:
    hub = hub_for(k)
    hub.set_watch_rules([rule("a", comm="make"), rule("b", comm="cc")])
    p = k.spawn(300)
    k.exec(p, "make", "/usr/bin/make")
    hub.step(0)
    (s,) = rule_sessions(hub, "a")
    k.rule_log.clear()
    hub.set_watch_rules([rule("a2", comm="make"), rule("ld", comm="ld")])
    assert k.rules == {("comm", "make"), ("comm", "ld")}
    # "make" was never absent: added for a2 before a's reference went.
    assert ("remove", "comm", "make") not in k.rule_log
    assert s.state == State.RUNNING and s.id in hub.sessions
    k.call(p, READ, 1)
    k.exit(p)
    hub.step(0)
    assert s.state == State.FINISHED and calls(report(hub, s.id)) == {READ: 1}
    raises_kind(ErrorKind.INVALID, hub.set_watch_rules, [rule("x", comm="a"),
                                                          rule("x", comm="b")])
    assert k.rules == {("comm", "make"), ("comm", "ld")}  # refused: nothing changed


def test_watch_rule_matches_beyond_max_sessions_are_counted_not_traced(k: FakeProbe) -> None:
    hub = hub_for(k, max_sessions=1)
    hub.set_watch_rules([rule("r", comm="job")])
    a, b = k.spawn(300), k.spawn(301)
    k.exec(a, "job", "/bin/job")
    k.exec(b, "job", "/bin/job")
    hub.step(0)
    assert [s.root_pid for s in rule_sessions(hub, "r")] == [a]
    assert hub.watch_sessions_refused == 1
    assert not k.is_tracked(b)
    assert hub.metrics().drops["watch_sessions_refused"] == 1


def test_metrics_count_by_rule_and_syscall_across_finished_sessions(k: FakeProbe) -> None:
    hub = hub_for(k)
    budget = _budgets.loads('[[assertion]]\nname = "few"\ntype = "syscall_calls"\n'
                            'syscall_name_pattern = "read"\nmax_calls = 1\n')
    hub.set_watch_rules([rule("r", comm="job", options=SessionOptions(budget=tuple(budget)))])
    client = start(hub, PidTarget(k.spawn(400)), budget=tuple(_budgets.loads(
        '[[assertion]]\nname = "any text a client likes"\ntype = "syscall_calls"\n'
        'syscall_name_pattern = "write"\nmax_calls = 1\n')))
    k.call(400, WRITE, 2, errors=1, ns=500_000_000)
    for pid in (300, 301):
        k.spawn(pid)
        k.exec(pid, "job", "/bin/job")
        hub.step(0)
        k.call(pid, READ, 3)
    hub.step(0)
    m = hub.metrics()
    assert m.syscalls[("r", "read")].calls == 6
    assert m.syscalls[("", "write")] == SyscallTotals(calls=2, errors=1, seconds=1.0)
    assert m.sessions == {"running": 3, "finished": 0, "interrupted": 0}
    assert m.sessions_started == {"": 1, "r": 2}
    # Rules' assertion names label the metric; a client's budget cannot add labels.
    assert m.violations == {("r", "few"): 2, ("", ""): 1}
    for pid, ns in ((300, 333_333), (301, 1_000_001)):  # odd times: float sums drift
        k.call(pid, READ, 7, ns=ns)
    hub.step(0)
    live = hub.metrics()
    k.exit(300)
    hub.step(0)
    hub.stop(ADMIN, client)
    after = hub.metrics()
    for key, t in live.syscalls.items():  # counters never go down as sessions finish
        assert after.syscalls[key].calls >= t.calls and after.syscalls[key].seconds >= t.seconds
    assert after.syscalls[("r", "read")].calls == 20  # finished: kept in the totals
    assert after.syscalls[("", "write")].calls == 2
    assert after.sessions == {"running": 1, "finished": 2, "interrupted": 0}
    assert after.drains == 5 and after.drain_seconds > 0
