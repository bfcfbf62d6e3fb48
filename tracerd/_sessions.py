"""The daemon's core: one probe, one drain, many sessions. No grpc, no bcc here.

Every session is a *view* over the same kernel counters. The kernel counts each
tracked process once, cumulatively; a session remembers, for each of its processes,
the counts at the moment the process joined it (its baseline) and reports the
difference. Two sessions on one process therefore each see exactly the calls made
during their own lifetime, and stopping one changes nothing for the other. When a
process exits, the drain removes its counters from the kernel map and freezes the
difference into every session that had it, so exited processes keep their counts.

Threads: the drain thread calls ``Hub.step`` in a loop; gRPC handler threads call
the other public methods. One lock serialises all state and every map access except
the blocking ring-buffer poll. Watchers never block the drain: the drain only
replaces a watcher's pending update (a mailbox of depth one) and counts what the
watcher did not collect in time; the watcher's own thread computes the delta from
what it last sent, so coalescing loses no calls.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Protocol

from . import _procfs, _records, syscalls
from ._budgets import Assertion, Evaluator, Result, Sample, matching_syscalls, newly_failed
from ._events import EventChannel, EventFilter, EventSubscriber
from ._metrics import Snapshot, SyscallTotals
from .model import (
    EV_EXEC,
    EV_EXIT,
    EV_FORK,
    LIMIT_RULES,
    Drops,
    ExitStatus,
    LifecycleEvent,
    ProcessInfo,
    Report,
    SyscallStats,
)

#: Pid used in reports for the folded counts of exited processes of a session that does
#: not keep per-process detail.
FOLDED_PID = 0

#: Longest wait, per drain, for the taskstats record of a process that just exited.
EXIT_RECORD_WAIT_S = 0.05

_log = logging.getLogger("tracerd.budget")


class ProbeLike(Protocol):
    """What the hub needs from the kernel side (tracerd._probe.Probe, or a fake in tests)."""

    def track(self, pid: int) -> None: ...
    def untrack(self, pid: int) -> None: ...
    def is_tracked(self, pid: int) -> bool: ...
    def poll_events(self, timeout_ms: int) -> list[LifecycleEvent]: ...
    def read_stats_by_gen(self) -> dict[tuple[int, int, int], SyscallStats]: ...
    def delete_stats_by_gen(self, tgids: list[int]
                            ) -> dict[tuple[int, int, int], SyscallStats]: ...
    def block_holders(self) -> set[int]: ...
    def drops(self) -> Drops: ...
    def add_rule(self, kind: str, value: str | int, slot: int | None = None) -> None: ...
    def remove_rule(self, kind: str, value: str | int) -> None: ...
    def set_limit(self, slot: int, rules: list[tuple[int, frozenset[int]]], sig: int) -> None: ...
    def read_limit(self, slot: int) -> LimitStateLike: ...
    def clear_limit(self, slot: int) -> None: ...
    def limit_process(self, pid: int, slot: int | None) -> bool: ...
    def limit_slot(self, pid: int) -> int | None: ...
    def set_events(self, slot: int, syscalls: frozenset[int] | None) -> int: ...
    def clear_events(self, slot: int) -> None: ...
    def events_lost(self, slot: int) -> int: ...
    def sys_events_fd(self) -> int: ...
    def sys_events_pending(self) -> bool: ...
    def read_sys_records(self, limit: int = ...) -> list[bytes]: ...


class LimitStateLike(Protocol):
    @property
    def counts(self) -> tuple[int, ...]: ...
    @property
    def rule_tripped_ns(self) -> tuple[int, ...]: ...


class ExitRecord(Protocol):
    """A task exit with its peak RSS (tracerd._taskstats.TaskExit)."""

    @property
    def tgid(self) -> int: ...
    @property
    def hiwater_rss_bytes(self) -> int: ...


class ExitSource(Protocol):
    """Where peak RSS of exited processes comes from (tracerd._taskstats.ExitListener)."""

    def drain(self, wait_s: float = 0.0) -> Sequence[ExitRecord]: ...
    def close(self) -> None: ...


class ErrorKind(Enum):
    INVALID = "invalid argument"
    NOT_FOUND = "not found"
    EXHAUSTED = "resource exhausted"
    DENIED = "permission denied"
    PRECONDITION = "failed precondition"


class RequestError(Exception):
    """A request the hub refuses; the servicer maps ``kind`` to a gRPC status."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# ---------------------------------------------------------------------- requests


@dataclass(frozen=True)
class PidTarget:
    pid: int
    children: bool = False


@dataclass(frozen=True)
class CgroupTarget:
    path: str


@dataclass(frozen=True)
class ExecRuleTarget:
    comm: str = ""
    path: str = ""
    children: bool = True


@dataclass(frozen=True)
class SpawnedTarget:
    pid: int
    argv: tuple[str, ...] = ()


Target = PidTarget | CgroupTarget | ExecRuleTarget | SpawnedTarget


@dataclass(frozen=True)
class SessionOptions:
    duration_ms: int = 0
    syscalls: frozenset[int] | None = None  #: numbers to count; None: all
    syscall_spec: tuple[str, ...] = ()  #: the filter as the client wrote it
    per_process: bool = False
    label: str = ""
    budget: tuple[Assertion, ...] = ()  #: evaluated on every drain and at the end
    #: measure each process's peak RSS (VmHWM while alive, taskstats at exit)
    peak_rss: bool = False
    #: record one event per syscall (StreamEvents); costs more than counting
    events: bool = False
    #: syscalls with events; None: those the session counts (options.syscalls)
    event_syscalls: frozenset[int] | None = None
    event_spec: tuple[str, ...] = ()  #: the event filter as the client wrote it


@dataclass(frozen=True)
class Caller:
    """Who is asking, and what their token allows (see tracerd._config)."""

    name: str
    uids: frozenset[int] | None = None  #: whose processes it may trace; None: anyone's
    exec_rules: bool = True
    max_sessions: int | None = None
    admin: bool = True  #: sees and controls every session, not only its own

    def may_trace_uid(self, uid: int | None) -> bool:
        return self.uids is None or (uid is not None and uid in self.uids)


@dataclass(frozen=True)
class WatchRule:
    """A rule of the daemon's config: every exec it matches starts a session of its own.

    Every criterion given must match (path, comm, cgroup and uid together). The kernel
    starts counting at the exec from one of them (its key: the path, else the comm, else
    the cgroup ids), so a session counts its process from the exec's first syscall;
    the others are checked here, and a process they reject is released at once.
    """

    name: str
    path: str = ""  #: the path given to execve (as a shell passes it after PATH lookup)
    comm: str = ""  #: the new comm (a script's file name, an executable's basename)
    cgroup: str = ""  #: as configured
    cgroup_ids: frozenset[int] = frozenset()  #: that cgroup and those below it, at load
    uids: frozenset[int] | None = None  #: real uid of the exec'ing process; None: any
    options: SessionOptions = field(default_factory=SessionOptions)
    alert: bool = True  #: log each violation (the journal, when run by systemd)

    def kernel_keys(self) -> list[tuple[str, str | int]]:
        if self.path:
            # The kernel compares the path as given to execve, so `./x.sh` would not
            # match /dir/x.sh: its comm (the file's name) is watched too, and the path
            # is then checked here, resolved against the process's working directory.
            name = os.path.basename(self.path).encode()[:15].decode(errors="ignore")
            return [("path", self.path), ("comm", name)]
        if self.comm:
            return [("comm", self.comm)]
        return [("cgroup", i) for i in sorted(self.cgroup_ids)]

    def matches(self, ev: LifecycleEvent, path: str | None) -> bool:
        """``path``: the exec'd file's absolute path (tracerd._procfs.exec_path); None
        when a relative one could not be resolved because the process has exited by
        the time the daemon reads its exec: then the file's name decides (known race:
        a same-named file elsewhere is taken for it; the process is gone, so this can
        only add a report, never act on a wrong process). A process whose directory may
        not be read gives "": no match."""
        if path is None:
            path = self.path if os.path.basename(ev.filename) == os.path.basename(
                self.path) else ""
        return ((not self.path or path == self.path)
                and (not self.comm or ev.comm == self.comm)
                and (not self.cgroup_ids or ev.cgroup_id in self.cgroup_ids)
                and (self.uids is None or ev.uid in self.uids))


@dataclass(frozen=True)
class HubLimits:
    max_sessions: int = 64
    max_watchers: int = 64
    max_tracked_pids: int = 16384
    min_interval_ms: int = 50
    max_interval_ms: int = 3_600_000
    max_finished_sessions: int = 256
    max_duration_ms: int = 30 * 24 * 3600 * 1000
    max_limits: int = 64  #: kernel session slots (sessions with a kill budget or events)
    event_backlog: int = 1 << 20  #: events kept for an events session nobody streams yet


class State(Enum):
    RUNNING = 1
    FINISHED = 2
    INTERRUPTED = 3


# ---------------------------------------------------------------------- state


@dataclass
class _Member:
    info: ProcessInfo
    baseline: dict[int, SyscallStats]  #: cumulative counts (gens >= min_gen) when it joined
    min_gen: int = 0  #: exec generations before this one are not the session's (exec rules)


@dataclass(frozen=True)
class Violation:
    """An assertion that failed, as a Watch stream reports it."""

    ts_ns: int
    result: Result


@dataclass
class _Budget:
    """A session's budget: the evaluator, its last results, and how kills are enforced."""

    evaluator: Evaluator
    assertions: tuple[Assertion, ...]
    results: list[Result] = field(default_factory=list)
    #: the in-kernel count rules this budget wants in the session's slot
    rules: list[tuple[int, frozenset[int]]] = field(default_factory=list)
    #: assertion index -> its rules in the slot: (rule index, max calls); killed in kernel
    kernel: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    signalled: set[str] = field(default_factory=set)  #: assertions whose action was taken


@dataclass
class Session:
    id: str
    target: Target
    options: SessionOptions
    owner: Caller
    start_ns: int
    root_pid: int = 0
    command: list[str] = field(default_factory=list)
    state: State = State.RUNNING
    end_ns: int = 0
    end_reason: str = ""
    members: dict[int, _Member] = field(default_factory=dict)
    exited: dict[int, ProcessInfo] = field(default_factory=dict)
    root_exit: ExitStatus | None = None
    drops_base: Drops = field(default_factory=Drops)
    rules: list[tuple[str, str | int]] = field(default_factory=list)
    cgroup_ids: frozenset[int] = frozenset()
    final: Report | None = None
    watchers: list[Watcher] = field(default_factory=list)
    budget: _Budget | None = None
    #: session slot in the kernel (limits[] and ev_filters[]): kill budgets and events
    slot: int | None = None
    events: EventChannel | None = None
    events_gen: int = 0  #: the slot's generation while this session holds it
    rule: str = ""  #: the watch rule that started it ("" for a client's session)
    alert: bool = True  #: violations are logged (a watch rule may turn it off)
    #: forks it follows that were not tracked (max_tracked_pids): in its drops
    forks_untracked: int = 0

    @property
    def follows_children(self) -> bool:
        t = self.target
        return isinstance(t, CgroupTarget | SpawnedTarget) or getattr(t, "children", False)

    @property
    def ends_with_processes(self) -> bool:
        """Pid-like sessions end when their last process exits; rule sessions never do."""
        return isinstance(self.target, PidTarget | SpawnedTarget)


@dataclass
class SessionSummary:
    """What ListSessions shows of a session."""

    id: str
    state: State
    target: Target
    options: SessionOptions
    owner: str
    start_ns: int
    end_ns: int
    end_reason: str
    processes: int
    calls: int
    rule: str = ""  #: the watch rule that started it ("" for a client's session)
    start_unix_ns: int = 0
    end_unix_ns: int = 0  #: 0 while running
    from_history: bool = False  #: read back from the history store


@dataclass
class View:
    """A session's aggregates at one instant, as a watcher receives them."""

    ts_ns: int
    totals: dict[int, SyscallStats]
    processes: dict[int, ProcessInfo] | None
    drops: Drops


class Watcher:
    """One Watch stream: a mailbox of depth one, filled by the drain, emptied by the stream."""

    def __init__(self, session_id: str, interval_ns: int, per_process: bool, now_ns: int) -> None:
        self.session_id = session_id
        self.interval_ns = interval_ns
        self.per_process = per_process
        self.next_due_ns = now_ns + interval_ns
        self._cond = threading.Condition()
        self._pending: View | None = None
        self._missed = 0  #: views replaced before the stream collected them
        #: state changes (at most two) and violations (at most one per assertion), in order
        self._events: list[SessionSummary | Violation] = []
        self._final: tuple[SessionSummary, Report] | None = None
        self.closed = False
        self.released = False  #: the hub no longer counts it (guarded by the hub's lock)

    # producer side (drain thread, hub lock held): never blocks on the consumer
    def offer(self, view: View) -> bool:
        """Deliver a view; returns True when it replaced one never collected."""
        with self._cond:
            replaced = self._pending is not None
            if replaced:
                self._missed += 1
            self._pending = view
            self._cond.notify()
            return replaced

    def offer_event(self, event: SessionSummary | Violation) -> None:
        """Queue a state change or a violation. Both are bounded by the session itself:
        it changes state at most twice and each assertion fails at most once."""
        with self._cond:
            self._events.append(event)
            self._cond.notify()

    def offer_final(self, summary: SessionSummary, report: Report) -> None:
        with self._cond:
            self._final = (summary, report)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify()

    # consumer side (the stream's own thread)
    def take(self, timeout_s: float) -> tuple[View | None, int, list[SessionSummary | Violation],
                                               tuple[SessionSummary, Report] | None]:
        """Wait up to ``timeout_s`` for something; returns (view, missed, events, final)."""
        with self._cond:
            if not (self._pending or self._events or self._final or self.closed):
                self._cond.wait(timeout_s)
            view, missed, events = self._pending, self._missed, self._events
            self._pending, self._missed, self._events = None, 0, []
            final = self._final
            return view, missed, events, final


# ---------------------------------------------------------------------- helpers


def resolve_cgroup(path: str) -> Path:
    """The cgroup v2 directory a target names; RequestError when it is not one.

    A relative path is taken from the cgroup v2 mount point (/sys/fs/cgroup, or e.g.
    /sys/fs/cgroup/unified on a hybrid system), as /proc/PID/cgroup shows paths.
    """
    if not path:
        raise RequestError(ErrorKind.INVALID, "target.cgroup.path: must not be empty")
    root = _procfs.cgroup2_root()
    if root is None:
        raise RequestError(ErrorKind.PRECONDITION, "target.cgroup: no cgroup v2 hierarchy "
                           "is mounted on the daemon's host")
    p = Path(path)
    if not p.is_absolute() or root not in (p, *p.parents):
        p = root / path.lstrip("/")
    try:
        full = p.resolve(strict=True)
    except (OSError, ValueError):
        raise RequestError(ErrorKind.NOT_FOUND,
                           f"target.cgroup.path: no cgroup at {p}") from None
    if root.resolve() not in (full, *full.parents) or not (full / "cgroup.procs").is_file():
        raise RequestError(ErrorKind.INVALID,
                           f"target.cgroup.path: {full} is not a cgroup v2 directory")
    return full


def cgroup_tree_ids(root: Path) -> list[int]:
    """Cgroup ids of ``root`` and every cgroup below it."""
    return _cgroup_tree(root)[0]


def _cgroup_tree(root: Path) -> tuple[list[int], list[int]]:
    """(cgroup ids, member pids) of ``root`` and every cgroup below it."""
    ids: list[int] = []
    pids: list[int] = []
    for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        with contextlib.suppress(OSError, ValueError):
            ids.append(d.stat().st_ino)  # a cgroup v2 id is its directory's inode number
            pids += [int(x) for x in (d / "cgroup.procs").read_text().split()]
    return ids, pids


#: A process's counters as the kernel keeps them: (exec generation, syscall) -> stats.
GenStats = dict[tuple[int, int], SyscallStats]


def _by_pid(snapshot: dict[tuple[int, int, int], SyscallStats]) -> dict[int, GenStats]:
    out: dict[int, GenStats] = {}
    for (tgid, gen, nr), st in snapshot.items():
        out.setdefault(tgid, {})[(gen, nr)] = st
    return out


def _from_gen(stats: GenStats, min_gen: int = 0) -> dict[int, SyscallStats]:
    """Per-syscall sums over the generations from ``min_gen`` on."""
    out: dict[int, SyscallStats] = {}
    for (gen, nr), st in stats.items():
        if gen >= min_gen:
            out.setdefault(nr, SyscallStats()).add(st)
    return out


def since_stats(cur: dict[int, SyscallStats],
                base: dict[int, SyscallStats]) -> dict[int, SyscallStats]:
    """Per syscall, what ``cur`` counted after ``base`` (syscalls without calls dropped)."""
    out = {}
    for nr, st in cur.items():
        d = st.since(base[nr]) if nr in base else replace(st, hist=list(st.hist))
        if d.calls:
            out[nr] = d
    return out


def _filtered(stats: dict[int, SyscallStats],
              keep: frozenset[int] | None) -> dict[int, SyscallStats]:
    return stats if keep is None else {nr: st for nr, st in stats.items() if nr in keep}


def _merge(old: ProcessInfo, new: ProcessInfo) -> ProcessInfo:
    """Two processes that had the same pid in one session (pid reuse), as one entry."""
    peaks = [p for p in (old.peak_rss_bytes, new.peak_rss_bytes) if p is not None]
    return replace(new, start_ns=old.start_ns, syscalls=sum_stats([old.syscalls, new.syscalls]),
                   peak_rss_bytes=max(peaks) if peaks else None)


def sum_stats(parts: list[dict[int, SyscallStats]]) -> dict[int, SyscallStats]:
    out: dict[int, SyscallStats] = {}
    for part in parts:
        for nr, st in part.items():
            out.setdefault(nr, SyscallStats()).add(st)
    return out


# ---------------------------------------------------------------------- the hub


class Hub:
    """Sessions over one probe. Thread-safe; see the module docstring."""

    def __init__(self, probe: ProbeLike, limits: HubLimits | None = None, *,
                 clock: Callable[[], int] = time.monotonic_ns,
                 exit_source: Callable[[], ExitSource] | None = None,
                 on_violation: Callable[[Session, Violation], None] | None = None,
                 on_finish: Callable[[SessionSummary, Report], None] | None = None,
                 kill: Callable[[int, int], None] = os.kill) -> None:
        self.probe = probe
        #: called with each session's final report, under the hub lock: must not block
        self.on_finish = on_finish
        self._kill = kill
        self.limits = limits or HubLimits()
        self.clock = clock
        self._open_exit_source = exit_source
        self._exit_source: ExitSource | None = None
        self.on_violation = on_violation or _log_violation
        #: peak RSS by pid, for processes of sessions that measure it
        self._peaks: dict[int, int] = {}
        #: free in-kernel limit slots, least recently used first (see _release_slot)
        self._free_slots: deque[int] = deque(range(self.limits.max_limits))
        self._slot_owner: dict[int, Session] = {}
        #: exec rule -> the limit slot its kernel value hands out (the first session's)
        self._rule_slot: dict[tuple[str, str | int], int | None] = {}
        self.lock = threading.RLock()
        #: CLOCK_MONOTONIC to Unix time, fixed at start (a later wall-clock step is not
        #: followed: session times stay consistent with each other)
        self.unix_offset_ns = time.time_ns() - time.monotonic_ns()
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self.procs: dict[int, ProcessInfo] = {}  #: processes tracked for some session
        self._snapshot: dict[int, GenStats] = {}
        #: Forks no session follows, kept tracked for a moment while exec-rule sessions run:
        #: one may exec into a rule match, and untracking it could race that exec.
        self._limbo: dict[int, int] = {}
        self._exit_stash: dict[int, GenStats] = {}
        self._rules: dict[tuple[str, str | int], int] = {}  #: kernel rule -> sessions using it
        #: the config's watch rules (set_watch_rules); each holds its kernel keys
        self._watch_rules: tuple[WatchRule, ...] = ()
        self.watch_sessions_refused = 0  #: rule matches not traced: max_sessions reached
        # Metrics (tracerd._metrics): cumulative over the daemon's life.
        self.sessions_started: dict[str, int] = {}  #: by rule
        self.violations: dict[tuple[str, str], int] = {}  #: by (rule, assertion)
        self._finished_totals: dict[tuple[str, int], SyscallStats] = {}  #: (rule, nr)
        self.drains = 0
        self.drain_ns = 0
        self.watchers = 0
        self.event_streams = 0
        self.watch_missed = 0
        self.pids_over_limit = 0  #: forks not tracked because max_tracked_pids was reached
        self._last_liveness_ns = 0
        self.closed = False
        #: serialises reading the syscall event ring (pump thread and _finish)
        self._ev_lock = threading.Lock()
        self._pump: threading.Thread | None = None
        uname = os.uname()
        self.arch, self.kernel = uname.machine, uname.release
        table = syscalls.table_for()
        self.syscall_name = table.name
        self._syscall_names = {nr: table.name(nr) for nr in table.numbers()}

    # ------------------------------------------------------------------ queries
    def _session(self, caller: Caller, session_id: str) -> Session:
        sess = self.sessions.get(session_id)
        if sess is None:
            raise RequestError(ErrorKind.NOT_FOUND, f"session_id: no session {session_id!r}")
        if not caller.admin and sess.owner.name != caller.name:
            raise RequestError(ErrorKind.DENIED,
                               f"session {session_id} belongs to another client")
        return sess

    def summary(self, sess: Session) -> SessionSummary:
        calls = sum(st.calls for st in self._totals(sess).values())
        seen = (len(sess.final.processes) if sess.final is not None
                else len(sess.members) + len(sess.exited))
        return SessionSummary(id=sess.id, state=sess.state, target=sess.target,
                              options=sess.options, owner=sess.owner.name,
                              start_ns=sess.start_ns, end_ns=sess.end_ns,
                              end_reason=sess.end_reason, processes=seen, calls=calls,
                              rule=sess.rule, start_unix_ns=sess.start_ns + self.unix_offset_ns,
                              end_unix_ns=sess.end_ns + self.unix_offset_ns if sess.end_ns else 0)

    def list_sessions(self, caller: Caller, state: State | None = None) -> list[SessionSummary]:
        with self.lock:
            return [self.summary(s) for s in self.sessions.values()
                    if (state is None or s.state == state)
                    and (caller.admin or s.owner.name == caller.name)]

    def report(self, caller: Caller, session_id: str) -> tuple[SessionSummary, Report]:
        with self.lock:
            sess = self._session(caller, session_id)
            if sess.final is None:
                self._refresh()
            return self.summary(sess), self._report(sess)

    def counts(self) -> dict[str, int]:
        with self.lock:
            running = sum(1 for s in self.sessions.values() if s.state == State.RUNNING)
            return {"running": running, "finished": len(self.sessions) - running,
                    "tracked": len(self.procs), "watchers": self.watchers,
                    "watch_missed": self.watch_missed, "pids_over_limit": self.pids_over_limit}

    def metrics(self) -> Snapshot:
        """The daemon's metrics now (tracerd._metrics): finished sessions' totals plus
        running sessions' counts at the last drain, by rule and syscall."""
        with self.lock:
            # Summed as integers and divided once: float sums in another order could
            # make a counter go down by an ulp when a session moves to the totals.
            acc: dict[tuple[str, int], SyscallStats] = {}

            def add(rule: str, nr: int, st: SyscallStats) -> None:
                t = acc.get((rule, nr))
                if t is None:
                    t = acc[(rule, nr)] = SyscallStats(hist=[])
                t.calls += st.calls
                t.errors += st.errors
                t.total_ns += st.total_ns

            for (rule, nr), st in self._finished_totals.items():
                add(rule, nr, st)
            states: dict[str, int] = {"running": 0, "finished": 0, "interrupted": 0}
            for sess in self.sessions.values():
                states[sess.state.name.lower()] += 1
                if sess.state == State.RUNNING:
                    for nr, st in self._totals(sess).items():
                        add(sess.rule, nr, st)
            d = self.probe.drops()
            return Snapshot(
                syscalls={(rule, self.syscall_name(nr)): SyscallTotals(
                    calls=t.calls, errors=t.errors, seconds=t.total_ns / 1e9)
                    for (rule, nr), t in acc.items()},
                sessions=states, sessions_started=dict(self.sessions_started),
                violations=dict(self.violations),
                drops={"stats_full": d.stats_full, "events_lost": d.events_lost,
                       "pid_out_of_range": d.pid_out_of_range,
                       "syscall_events_lost": d.syscall_events_lost,
                       "watch_updates_missed": self.watch_missed,
                       "pids_over_limit": self.pids_over_limit,
                       "watch_sessions_refused": self.watch_sessions_refused},
                tracked_pids=len(self.procs), watchers=self.watchers + self.event_streams,
                drains=self.drains, drain_seconds=self.drain_ns / 1e9)

    def _member_stats(self, sess: Session, pid: int) -> dict[int, SyscallStats]:
        m = sess.members[pid]
        cur = _from_gen(self._snapshot.get(pid, {}), m.min_gen)
        return _filtered(since_stats(cur, m.baseline), sess.options.syscalls)

    def _processes(self, sess: Session) -> dict[int, ProcessInfo]:
        procs = dict(sess.exited)
        for pid, m in sess.members.items():
            live = replace(m.info, syscalls=self._member_stats(sess, pid),
                           peak_rss_bytes=self._peaks.get(pid))
            procs[pid] = _merge(procs[pid], live) if pid in procs else live
        return dict(sorted(procs.items()))

    @staticmethod
    def _drops(sess: Session, now: Drops) -> Drops:
        """What the session missed: the kernel's losses during its lifetime, and the
        forks it follows that the daemon could not track."""
        d = now.since(sess.drops_base)
        d.forks_untracked = sess.forks_untracked
        return d

    def _totals(self, sess: Session) -> dict[int, SyscallStats]:
        if sess.final is not None:
            return sess.final.totals()
        return sum_stats([p.syscalls for p in self._processes(sess).values()])

    def _report(self, sess: Session) -> Report:
        if sess.final is not None:
            return sess.final
        return Report(command=list(sess.command), arch=self.arch, kernel=self.kernel,
                      root_pid=sess.root_pid, start_ns=sess.start_ns, end_ns=None,
                      exit=sess.root_exit, processes=self._processes(sess),
                      drops=self._drops(sess, self.probe.drops()),
                      budget=list(sess.budget.results) if sess.budget else [])

    # ------------------------------------------------------------------ starting
    def start(self, caller: Caller, target: Target, options: SessionOptions) -> SessionSummary:
        with self.lock:
            if self.closed:
                raise RequestError(ErrorKind.PRECONDITION, "the daemon is shutting down")
            self._check_options(options)
            running = [s for s in self.sessions.values() if s.state == State.RUNNING]
            mine = sum(1 for s in running if s.owner.name == caller.name)
            if caller.max_sessions is not None and mine >= caller.max_sessions:
                raise RequestError(ErrorKind.EXHAUSTED,
                                   f"token {caller.name!r} may run {caller.max_sessions} sessions")
            sess = self._new_session(caller, target, options, self.clock())
            try:
                if sess.options.budget:
                    self._check_budget(target, sess.options)
                self._arm(sess)
                if isinstance(target, PidTarget | SpawnedTarget):
                    self._start_pid(sess, caller, target)
                elif isinstance(target, CgroupTarget):
                    self._start_cgroup(sess, caller, target)
                else:
                    self._start_rule(sess, caller, target)
            except BaseException:
                self._unarm(sess)
                raise
            self._add_session(sess)
            return self.summary(sess)

    def _new_session(self, caller: Caller, target: Target, options: SessionOptions,
                     start_ns: int, rule: str = "") -> Session:
        running = sum(1 for s in self.sessions.values() if s.state == State.RUNNING)
        if running >= self.limits.max_sessions:
            raise RequestError(ErrorKind.EXHAUSTED,
                               f"{running} sessions running: the daemon's limit")
        sid = secrets.token_hex(6)
        while sid in self.sessions:
            sid = secrets.token_hex(6)
        if options.budget:
            # Budgets judge processes one by one (GodProcess, RSS, critical paths).
            rss = any(a.enabled and a.type == "memory_usage" and a.tracking_mode == "rss"
                      for a in options.budget)
            options = replace(options, per_process=True, peak_rss=options.peak_rss or rss)
        return Session(id=sid, target=target, options=options, owner=caller,
                       start_ns=start_ns, drops_base=self.probe.drops(), rule=rule)

    def _arm(self, sess: Session) -> None:
        """The session's budget, events channel, kernel slot and exit records."""
        options = sess.options
        if options.budget:
            sess.budget = self._new_budget(options)
        if options.events:
            sess.events = EventChannel(self.limits.event_backlog)
        self._take_slot(sess)
        if options.peak_rss:
            self._open_exits()

    def _unarm(self, sess: Session) -> None:
        """Undo a half-started session: whatever it tracked or added to the kernel goes
        again, so a refused request never leaves a tracked pid or a rule behind."""
        self._drop_rules(sess)
        self._release_slot(sess)
        self._close_exits(sess)
        self._release_unwanted()

    def _add_session(self, sess: Session) -> None:
        self.sessions[sess.id] = sess
        self.sessions_started[sess.rule] = self.sessions_started.get(sess.rule, 0) + 1
        self._forget_old()

    def _check_options(self, o: SessionOptions) -> None:
        if o.duration_ms < 0 or o.duration_ms > self.limits.max_duration_ms:
            raise RequestError(ErrorKind.INVALID, f"options.duration_ms: {o.duration_ms} is "
                               f"outside 0..{self.limits.max_duration_ms}")
        if len(o.label) > 256:
            raise RequestError(ErrorKind.INVALID, "options.label: longer than 256 characters")

    # ------------------------------------------------------------------ budgets
    def _new_budget(self, options: SessionOptions) -> _Budget:
        """The budget's evaluator, and an in-kernel limit for its kill count budgets.

        span_count with action kill is one kernel rule; syscall_calls with kill is one
        rule per syscall it covers. Rules beyond a slot's LIMIT_RULES, or when every
        slot is taken, are enforced from user space at the next drain instead (the
        result says which).
        """
        assertions = options.budget
        b = _Budget(evaluator=Evaluator(assertions, self.syscall_name), assertions=assertions)
        rules: list[tuple[int, frozenset[int]]] = []
        for i, a in enumerate(assertions):
            if not (a.enabled and a.action == "kill"):
                continue
            nrs = matching_syscalls(a.syscall_pattern(), self._syscall_names)
            if options.syscalls is not None:
                nrs &= options.syscalls  # the session counts nothing else
            if a.type == "span_count" and a.max_spans is not None:
                wanted = [(a.max_spans, nrs)]
            elif a.type == "syscall_calls" and a.max_calls is not None:
                wanted = [(a.max_calls, frozenset({nr})) for nr in sorted(nrs)]
            else:
                continue
            if not wanted or len(rules) + len(wanted) > LIMIT_RULES:
                continue
            b.kernel[i] = [(len(rules) + k, most) for k, (most, _) in enumerate(wanted)]
            rules += wanted
        b.rules = rules
        return b

    def _take_slot(self, sess: Session) -> None:
        """A kernel session slot for the kill rules of its budget and its events.

        Without a free slot, kills are sent from user space (the results say so) and
        an events session is refused: events need the kernel's filter.
        """
        b = sess.budget
        rules = b.rules if b is not None else []
        if not rules and sess.events is None:
            return
        if not self._free_slots:
            if b is not None:
                b.kernel.clear()
            if sess.events is not None:
                raise RequestError(ErrorKind.EXHAUSTED, "options.events: every kernel session "
                                   f"slot is taken ({self.limits.max_limits})")
            return
        slot = self._free_slots.popleft()
        try:
            self.probe.set_limit(slot, rules, signal.SIGKILL)
            if sess.events is not None:
                o = sess.options  # events default to the syscalls the session counts
                sess.events_gen = self.probe.set_events(
                    slot, o.event_syscalls if o.event_syscalls is not None else o.syscalls)
        except Exception as e:
            self.probe.clear_limit(slot)
            self._free_slots.appendleft(slot)
            raise RequestError(ErrorKind.EXHAUSTED, f"kernel session slot: {e}") from None
        sess.slot = slot
        self._slot_owner[slot] = sess
        if sess.events is not None:
            self._start_pump()

    def _check_budget(self, target: Target, options: SessionOptions) -> None:
        if isinstance(target, ExecRuleTarget | CgroupTarget):
            for i, a in enumerate(options.budget):
                if a.type == "critical_path" and not a.trace_name_pattern:
                    raise RequestError(ErrorKind.INVALID, f"options.budget: assertion[{i}] "
                                       f"{a.name!r}: trace_name_pattern: required for exec-rule"
                                       " and cgroup sessions (they have no root process)")

    def _limit_members(self, sess: Session, pids: Iterable[int]) -> None:
        """Put new members under the session's in-kernel limit. A process already under
        another session's limit stays there (one slot per process); this session's
        kill then reaches it from user space, at the drain that sees the violation."""
        slot = sess.slot
        if slot is None:
            return
        for pid in pids:
            if self.probe.limit_slot(pid) is None:
                self.probe.limit_process(pid, slot)

    def _reslot(self, pid: int) -> None:
        """A process keeps an in-kernel limit only while it is a member of the session
        that owns it. The kernel hands a parent's limit to every child, so a fork
        another session (or limbo) took, or a member dropped at a setuid exec, would
        otherwise be killed by a budget that does not count it."""
        cur = self.probe.limit_slot(pid)
        if cur is None:
            return
        owner = self._slot_owner.get(cur)
        if owner is not None and pid in owner.members:
            return
        mine = [s.slot for s in self._running() if pid in s.members and s.slot is not None]
        self.probe.limit_process(pid, mine[0] if mine else None)

    def _release_slot(self, sess: Session) -> None:
        if sess.slot is None:
            return
        for pid in [*self.procs, *self._limbo]:
            if self.probe.limit_slot(pid) == sess.slot:
                self.probe.limit_process(pid, None)
        # Exec rules still used by other sessions must not hand this slot out.
        for rule, slot in list(self._rule_slot.items()):
            if slot == sess.slot:
                self._rule_slot[rule] = None
                if rule in self._rules:
                    self.probe.add_rule(*rule, slot=None)
        self.probe.clear_limit(sess.slot)
        if sess.events is not None:
            self.probe.clear_events(sess.slot)
        self._slot_owner.pop(sess.slot, None)
        # Reused last: a fork still in flight when the slot was cleared may carry
        # it into a process the hub has not seen yet (known race, made rare).
        self._free_slots.append(sess.slot)
        sess.slot = None

    def _evaluate(self, sess: Session, procs: dict[int, ProcessInfo], now: int, *,
                  final: bool = False) -> list[Result]:
        """Evaluate the budget at this drain; report, log and act on new violations."""
        b = sess.budget
        assert b is not None
        sample = Sample(ts_ns=now, start_ns=sess.start_ns, root_pid=sess.root_pid,
                        processes=procs, final=final,
                        peak_rss_bytes={pid: p.peak_rss_bytes for pid, p in procs.items()
                                        if p.peak_rss_bytes is not None})
        results = b.evaluator.update(sample)
        state = self.probe.read_limit(sess.slot) if sess.slot is not None and b.rules else None
        for i, r in enumerate(results):
            if state is not None and i in b.kernel:
                # From the kernel's own counter: the calls entered beyond the budget (the
                # one in flight in each process when it tripped), and when it tripped.
                rules = [k for k, _ in b.kernel[i] if k < len(state.counts)]
                over = sum(max(0, state.counts[k] - most) for k, most in b.kernel[i]
                           if k < len(state.counts))
                tripped = [state.rule_tripped_ns[k] for k in rules if state.rule_tripped_ns[k]]
                failed_at = r.first_failed_ns
                if not r.passed and tripped:
                    failed_at = min([*tripped, failed_at or min(tripped)])
                results[i] = replace(r, enforcement="kernel", first_failed_ns=failed_at,
                                     overshoot=over)
            elif r.action in ("signal", "kill"):
                results[i] = replace(r, enforcement="user")
        new = newly_failed(b.results, results)
        b.results = results
        for r in new:
            v = Violation(ts_ns=now, result=r)
            for w in sess.watchers:
                w.offer_event(v)
            # Assertion names label the metric for watch rules (the config's); a client's
            # budget could name them anything, so client sessions count under "".
            key = (sess.rule, r.name if sess.rule else "")
            self.violations[key] = self.violations.get(key, 0) + 1
            if sess.alert:
                self.on_violation(sess, v)
            if not final:
                self._act(sess, r)
        return results

    def _act(self, sess: Session, r: Result) -> None:
        """Signal every live process of the session (kill: also the sleeping ones the
        kernel cannot reach until their next syscall).

        Known race: a member that exited since the last drain and whose pid was reused
        within that ~100 ms would receive the signal; pidfds would close this gap.
        """
        b = sess.budget
        assert b is not None
        if r.action not in ("signal", "kill") or r.name in b.signalled:
            return
        b.signalled.add(r.name)
        a = next(a for a in b.assertions if a.name == r.name)
        sig = signal.SIGKILL if r.action == "kill" else a.signal
        for pid in list(sess.members):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                self._kill(pid, sig)

    # ------------------------------------------------------------------ events
    def subscribe_events(self, caller: Caller, session_id: str, flt: EventFilter,
                         queue_max: int | None = None) -> EventSubscriber:
        """A subscriber to an events session's syscall events (its backlog first)."""
        with self.lock:
            sess = self._session(caller, session_id)
            if sess.events is None:
                raise RequestError(ErrorKind.PRECONDITION, f"session {session_id} was not "
                                   "started with events (options.events)")
            # Streams hold a server thread each, like watchers: one limit for both.
            if self.watchers + self.event_streams >= self.limits.max_watchers:
                raise RequestError(ErrorKind.EXHAUSTED, f"{self.limits.max_watchers} watch "
                                   "and event streams are open")
            queue = min(queue_max or self.limits.event_backlog, self.limits.event_backlog)
            self.event_streams += 1
            return sess.events.subscribe(flt, queue)

    def unsubscribe_events(self, sub: EventSubscriber) -> None:
        with self.lock:
            if not sub.closed:
                self.event_streams -= 1
            sub.close()

    def pump_events(self, limit: int = 1 << 16) -> int:
        """Route the syscall events waiting in the kernel to their sessions; how many."""
        with self._ev_lock:
            batch = self.probe.read_sys_records(limit)
            if not batch:
                return 0
            # Kept as the kernel's records: one object per event less (tracerd._records).
            by_slot: dict[int, list[bytes]] = {}
            slot_of = _records.slot_of
            for rec in batch:
                tagged = slot_of(rec)
                group = by_slot.get(tagged)
                if group is None:
                    by_slot[tagged] = [rec]
                else:
                    group.append(rec)
            for tagged, events in by_slot.items():
                # Read without the hub lock: a dict lookup. The generation tells this
                # slot's session from an earlier holder whose last events arrive late
                # (those belong to a session that has ended, and are dropped).
                slot, gen = tagged & 0xFFFF, tagged >> 16
                sess = self._slot_owner.get(slot)
                if sess is not None and sess.events is not None and sess.events_gen == gen:
                    sess.events.offer(events, self.probe.events_lost(slot))
            return len(batch)

    def _start_pump(self) -> None:
        if self._pump is not None:
            return
        self._pump = threading.Thread(target=self._pump_loop, name="tracerd-events",
                                      daemon=True)
        self._pump.start()

    def _pump_loop(self) -> None:
        """Reads the event ring as soon as it has records (poll on its fd), until no
        events session is left. Never takes the hub lock: the drain is not slowed."""
        import select  # noqa: PLC0415 - this thread only

        fd = self.probe.sys_events_fd()
        try:
            while not self.closed:
                select.select([fd], [], [], 0.05)
                while self.pump_events() >= 1 << 16:
                    pass  # more waiting: read on before sleeping
                # Decided under the hub lock, which start() holds while it calls
                # _start_pump: a session starting now either sees this thread gone
                # (and starts another) or is seen here.
                with self.lock:
                    if not any(s.events is not None for s in self._slot_owner.values()):
                        self._pump = None
                        return
        except Exception:
            _log.exception("syscall event reader failed; events sessions get no more events")
            with self.lock:
                self._pump = None

    def _open_exits(self) -> None:
        """Listen to taskstats exit records while some session measures peak RSS."""
        if self._exit_source is None and self._open_exit_source is not None:
            try:
                self._exit_source = self._open_exit_source()
            except Exception as e:  # peaks of exited processes are then polled ones only
                _log.warning("taskstats unavailable, RSS of exited processes is the last "
                             "polled value: %s", e)

    def _close_exits(self, sess: Session) -> None:
        if self._exit_source is not None and not any(
                s.options.peak_rss for s in self._running() if s is not sess):
            self._exit_source.close()
            self._exit_source = None

    def _rss_pids(self) -> set[int]:
        return {pid for s in self._running() if s.options.peak_rss for pid in s.members}

    def _collect_exit_peaks(self, exiting: Sequence[int]) -> None:
        """Peak RSS of processes that exited, from taskstats.

        The kernel sends a task's record from do_exit close to the tracepoint that
        produces EV_EXIT, but on another CPU the record can reach the socket a little after
        the ring buffer record was read: for each exit of this drain whose record is not in
        yet, wait up to EXIT_RECORD_WAIT_S (under the lock: exits of RSS sessions only).
        """
        if self._exit_source is None:
            return
        wanted = self._rss_pids()
        waiting = {pid for pid in exiting if pid in wanted}
        deadline = time.monotonic() + EXIT_RECORD_WAIT_S
        records = self._exit_source.drain()
        while True:
            for rec in records:
                waiting.discard(rec.tgid)
                if rec.tgid in wanted and rec.hiwater_rss_bytes:
                    self._peaks[rec.tgid] = max(self._peaks.get(rec.tgid, 0),
                                                rec.hiwater_rss_bytes)
            left = deadline - time.monotonic()
            if not waiting or left <= 0:
                return
            records = self._exit_source.drain(wait_s=left)

    def _poll_peaks(self) -> None:
        for pid in self._rss_pids():
            hwm = _procfs.vm_hwm_bytes(pid)
            if hwm:
                self._peaks[pid] = max(self._peaks.get(pid, 0), hwm)

    def _room_for(self, n: int) -> None:
        if len(self.procs) + n > self.limits.max_tracked_pids:
            raise RequestError(ErrorKind.EXHAUSTED,
                               f"tracking {n} more processes would exceed the daemon's limit of "
                               f"{self.limits.max_tracked_pids}")

    def _start_pid(self, sess: Session, caller: Caller, target: PidTarget | SpawnedTarget) -> None:
        pid = target.pid
        field_ = "target.spawned.pid" if isinstance(target, SpawnedTarget) else "target.pid.pid"
        if pid <= 0 or pid >= 1 << 22:
            raise RequestError(ErrorKind.INVALID, f"{field_}: {pid} is not a valid pid")
        if pid == os.getpid():
            raise RequestError(ErrorKind.INVALID, f"{field_}: tracerd cannot trace itself")
        st = _procfs.stat(pid)
        if st is None or st[0] in ("Z", "X"):
            raise RequestError(ErrorKind.NOT_FOUND, f"{field_}: no such process: {pid}")
        if isinstance(target, SpawnedTarget) and st[0] not in ("T", "t"):
            raise RequestError(ErrorKind.PRECONDITION,
                               f"{field_}: process {pid} is not stopped; a spawned target must "
                               "stop itself (SIGSTOP) before exec")
        if not caller.may_trace_uid(_procfs.uid(pid)):
            raise RequestError(ErrorKind.DENIED,
                               f"{field_}: token {caller.name!r} may not trace process {pid}")
        sess.root_pid = pid
        sess.command = list(target.argv) if isinstance(target, SpawnedTarget) else (
            _procfs.cmdline(pid) or [])
        pids = [pid]
        if isinstance(target, PidTarget) and target.children:
            # Track the root first: from then on the kernel catches its forks. Each
            # process's children are then listed once, after it is tracked: what it
            # forked before is in that list, what it forks after, the kernel catches.
            # (Listing everyone's children again until nothing new appears never ends
            # on a process that forks all the time, and holds the hub lock meanwhile.)
            self._join(sess, [pid], argv_hint=None)
            seen = {pid}
            frontier = [pid]
            while frontier:
                new = [c for p in frontier for c in _procfs.children(p) if c not in seen]
                # Descendants of another user stay out for a token limited to some uids.
                new = [c for c in new if caller.may_trace_uid(_procfs.uid(c))]
                if new:
                    self._room_for(len(new))
                    self._join(sess, new, argv_hint=None)
                seen.update(new)
                frontier = new
            if pid not in sess.members:
                raise RequestError(ErrorKind.NOT_FOUND, f"{field_}: process {pid} exited")
            self._check_events_slot(sess, pid, field_)
            return
        spawned = isinstance(target, SpawnedTarget)
        self._join(sess, pids, argv_hint=sess.command if spawned else None)
        if pid not in sess.members:
            raise RequestError(ErrorKind.NOT_FOUND, f"{field_}: process {pid} exited")
        self._check_events_slot(sess, pid, field_)

    def _check_events_slot(self, sess: Session, pid: int, field_: str) -> None:
        """Refuse an events session whose root already reports to another session: a
        process has one kernel slot, so its events would go there, and this session would
        count its calls and silently see none of them."""
        if sess.events is None or sess.slot is None:
            return
        other = self.probe.limit_slot(pid)
        if other != sess.slot:
            owner = self._slot_owner.get(other) if other is not None else None
            raise RequestError(ErrorKind.PRECONDITION, f"{field_}: process {pid} already "
                               "sends its events or kill budget to session "
                               f"{owner.id if owner else '?'} (one kernel slot per process)")

    def _start_cgroup(self, sess: Session, caller: Caller, target: CgroupTarget) -> None:
        if caller.uids is not None or not caller.exec_rules:
            raise RequestError(ErrorKind.DENIED,
                               f"token {caller.name!r} may not trace a whole cgroup (it needs "
                               "exec_rules and no uids limit)")
        root = resolve_cgroup(target.path)
        ids, pids = _cgroup_tree(root)
        pids = [p for p in pids if p != os.getpid()]
        self._room_for(len(pids))
        sess.cgroup_ids = frozenset(ids)
        sess.command = [str(root)]
        # Rules first: a process exec'd in the cgroup while the members are being
        # tracked is caught by the rule, one that forked is caught by its parent.
        self._add_rules(sess, [("cgroup", i) for i in ids])
        self._join(sess, pids, argv_hint=None)

    def _start_rule(self, sess: Session, caller: Caller, target: ExecRuleTarget) -> None:
        if not caller.exec_rules:
            raise RequestError(ErrorKind.DENIED, f"token {caller.name!r} may not use exec rules")
        if not target.comm and not target.path:
            raise RequestError(ErrorKind.INVALID,
                               "target.exec_rule: set comm, path or both")
        if len(target.comm.encode()) > 15:
            raise RequestError(ErrorKind.INVALID, f"target.exec_rule.comm: {target.comm!r} is "
                               "longer than the kernel's 15-byte comm")
        if len(target.path.encode()) > 255 or "\0" in target.path + target.comm:
            raise RequestError(ErrorKind.INVALID,
                               "target.exec_rule: path longer than 255 bytes or contains NUL")
        rules: list[tuple[str, str | int]] = []
        if target.comm:
            rules.append(("comm", target.comm))
        if target.path:
            rules.append(("path", target.path))
        sess.command = [f"exec rule comm={target.comm!r} path={target.path!r}"]
        self._add_rules(sess, rules)

    # ------------------------------------------------------------------ watch rules
    def set_watch_rules(self, rules: Sequence[WatchRule]) -> None:
        """Replace the config's watch rules (at start and on SIGHUP).

        Sessions the old rules started run on. The new rules' kernel keys are added
        before the old ones' are removed, so a key both sets share is never absent.
        """
        with self.lock:
            names = [r.name for r in rules]
            if len(set(names)) != len(names):
                raise RequestError(ErrorKind.INVALID, "watch rules: names must be unique")
            for r in rules:
                try:
                    self._check_options(r.options)
                except RequestError as e:
                    raise RequestError(e.kind, f"watch rule {r.name!r}: {e}") from None
            added: list[tuple[str, str | int]] = []
            try:
                for r in rules:
                    for key in r.kernel_keys():
                        self._ref_rule(key, None)
                        added.append(key)
            except Exception as e:
                for key in added:
                    self._unref_rule(key)
                raise RequestError(ErrorKind.EXHAUSTED, f"watch rules: {e}") from None
            for r in self._watch_rules:
                for key in r.kernel_keys():
                    self._unref_rule(key)
            self._watch_rules = tuple(rules)
            self._release_unwanted()

    @property
    def watch_rules(self) -> tuple[WatchRule, ...]:
        return self._watch_rules

    def _watch_starts(self, ev: LifecycleEvent) -> list[Session]:
        """New sessions for the watch rules this exec matches.

        A process already in a running session of the same rule (a script that execs
        itself, or a child of the matched one that runs it again) starts none: the
        outer session counts it already.
        """
        out: list[Session] = []
        path: str | None = ""
        if any(r.path for r in self._watch_rules):
            path = _procfs.exec_path(ev.pid, ev.filename)
        for rule in self._watch_rules:
            if not rule.matches(ev, path) or any(s.rule == rule.name and ev.pid in s.members
                                           for s in self._running()):
                continue
            try:
                if ev.pid not in self.procs and len(self.procs) >= self.limits.max_tracked_pids:
                    raise RequestError(ErrorKind.EXHAUSTED, f"{len(self.procs)} processes "
                                       "tracked: the daemon's max_tracked_pids")
                sess = self._new_session(Caller(name=f"rule:{rule.name}"),
                                         PidTarget(ev.pid, children=True), rule.options,
                                         ev.ts_ns, rule=rule.name)
                sess.root_pid, sess.alert = ev.pid, rule.alert
                sess.command = _procfs.cmdline(ev.pid) or [ev.filename]
                self._arm(sess)
            except RequestError as e:
                self.watch_sessions_refused += 1
                # A hot rule at the limit would log every exec: the first of each
                # hundred is enough (the metric counts them all).
                if self.watch_sessions_refused % 100 == 1:
                    _log.warning("watch rule %s: pid %d not traced: %s (%d refused so far)",
                                 rule.name, ev.pid, e, self.watch_sessions_refused)
                continue
            self._add_session(sess)
            out.append(sess)
        return out

    def _ref_rule(self, rule: tuple[str, str | int], slot: int | None) -> None:
        if self._rules.get(rule, 0) == 0:
            # A rule shared with a later session keeps this one's slot (if any);
            # the later one's kill then reaches its processes from user space.
            self.probe.add_rule(*rule, slot=slot)
            self._rule_slot[rule] = slot
        self._rules[rule] = self._rules.get(rule, 0) + 1

    def _unref_rule(self, rule: tuple[str, str | int]) -> None:
        n = self._rules.get(rule, 0) - 1
        if n <= 0:
            self._rules.pop(rule, None)
            self._rule_slot.pop(rule, None)
            self.probe.remove_rule(*rule)
        else:
            self._rules[rule] = n

    def _add_rules(self, sess: Session, rules: list[tuple[str, str | int]]) -> None:
        added: list[tuple[str, str | int]] = []
        try:
            for rule in rules:
                self._ref_rule(rule, sess.slot)
                added.append(rule)
        except Exception as e:
            sess.rules = added
            self._drop_rules(sess)
            raise RequestError(ErrorKind.EXHAUSTED, str(e)) from None
        sess.rules = added

    def _drop_rules(self, sess: Session) -> None:
        for rule in sess.rules:
            self._unref_rule(rule)
        sess.rules = []

    def _join(self, sess: Session, pids: list[int], argv_hint: list[str] | None) -> None:
        """Make live processes members of ``sess``, counting from now on."""
        # Never the daemon itself: a children walk from one of its ancestors reaches it.
        new = [p for p in pids if p not in self.procs and p != os.getpid()]
        self._room_for(len(new))
        #: Tracked by the kernel but unknown here and not in limbo: forked by a process
        #: this session tracked a moment ago (the children walk), so counted since its
        #: fork, all of which is this session's.
        since_fork = {p for p in new if p not in self._limbo and self.probe.is_tracked(p)}
        for pid in new:
            self._limbo.pop(pid, None)
            try:
                self.probe.track(pid)
            except Exception as e:
                raise RequestError(ErrorKind.INVALID, str(e)) from None
            st = _procfs.stat(pid)
            # Checked after tracking: a process that died (or began exiting) in between
            # would otherwise stay tracked, its exit hook having run before the flag was set.
            if st is None or not st.live:
                self.probe.untrack(pid)
                continue
            self.procs[pid] = ProcessInfo(
                pid=pid, ppid=st[1], comm=_procfs.comm(pid),
                argv=list(argv_hint) if argv_hint else (_procfs.cmdline(pid) or []),
                uid=_procfs.uid(pid), cgroup=_procfs.cgroup(pid), start_ns=self.clock())
        # The baseline must be read after tracking, and the shared snapshot refreshed
        # with it, so no view ever subtracts a baseline newer than its snapshot.
        self._refresh()
        now = self.clock()
        for pid in pids:
            if pid in self.procs and pid not in sess.members:
                info = replace(self.procs[pid], start_ns=now, syscalls={})
                base = {} if pid in since_fork else _from_gen(self._snapshot.get(pid, {}))
                sess.members[pid] = _Member(info=info, baseline=base)
        self._limit_members(sess, pids)

    # ------------------------------------------------------------------ stopping
    def stop(self, caller: Caller, session_id: str) -> SessionSummary:
        with self.lock:
            sess = self._session(caller, session_id)
            if sess.state == State.RUNNING:
                self._refresh()
                self._finish(sess, State.FINISHED, "stopped by client")
            return self.summary(sess)

    def _finish(self, sess: Session, state: State, reason: str) -> None:
        """Freeze the session's report; the caller refreshed the snapshot just before."""
        now = self.clock()
        final = replace(self._report(sess), end_ns=now, exit=sess.root_exit,
                        interrupted=reason if state == State.INTERRUPTED else None)
        if sess.budget is not None:
            final.budget = self._evaluate(sess, final.processes, now, final=True)
        sess.final = final
        sess.state, sess.end_ns, sess.end_reason = state, now, reason
        for nr, st in final.totals().items():
            acc = self._finished_totals.setdefault((sess.rule, nr), SyscallStats(hist=[]))
            acc.calls, acc.errors = acc.calls + st.calls, acc.errors + st.errors
            acc.total_ns += st.total_ns
        if sess.events is not None and sess.slot is not None:
            # Every event its processes made is in the ring by now (they exited, or
            # the session stopped counting): route them before the slot goes. A record
            # another CPU has reserved but not yet submitted stops a read; it is
            # retried briefly (other sessions' records may keep the ring busy).
            for _ in range(100):
                if self.pump_events() == 0:
                    if not self.probe.sys_events_pending():
                        break
                    time.sleep(0.0005)
            sess.events.close(self.probe.events_lost(sess.slot))
        sess.members.clear()
        self._drop_rules(sess)
        self._release_slot(sess)
        self._close_exits(sess)
        self._release_unwanted()
        summary = self.summary(sess)
        for w in sess.watchers:
            w.offer_event(summary)
            w.offer_final(summary, sess.final)
        if self.on_finish is not None:
            try:
                self.on_finish(summary, sess.final)
            except Exception:  # history or export trouble must not stop the drain
                _log.exception("session %s: handing on the final report failed", sess.id)
        self._forget_old()

    def _wanted(self) -> set[int]:
        return {pid for s in self.sessions.values() if s.state == State.RUNNING
                for pid in s.members}

    def _release_unwanted(self) -> None:
        wanted = self._wanted()
        if not self._rule_sessions_running():
            for pid in list(self._limbo):
                self.probe.untrack(pid)
            self._limbo.clear()
        for pid in [p for p in self.procs if p not in wanted]:
            self.probe.untrack(pid)
            del self.procs[pid]
        # Their counters are deleted by the next drain's sweep (see _sweep).

    def _forget_old(self) -> None:
        done = sorted((s for s in self.sessions.values() if s.state != State.RUNNING),
                      key=lambda s: s.end_ns)  # the longest finished go first
        for s in done[: max(0, len(done) - self.limits.max_finished_sessions)]:
            del self.sessions[s.id]

    def shutdown(self, reason: str = "daemon shutting down") -> None:
        """Finish every running session with a final report marked interrupted."""
        with self.lock:
            self.closed = True
            self._refresh()
            for sess in list(self.sessions.values()):
                if sess.state == State.RUNNING:
                    self._finish(sess, State.INTERRUPTED, reason)

    # ------------------------------------------------------------------ watching
    def watch(self, caller: Caller, session_id: str, interval_ms: int,
              per_process: bool) -> Watcher:
        with self.lock:
            lim = self.limits
            if not lim.min_interval_ms <= interval_ms <= lim.max_interval_ms:
                raise RequestError(ErrorKind.INVALID, f"interval_ms: {interval_ms} is outside "
                                   f"{lim.min_interval_ms}..{lim.max_interval_ms}")
            sess = self._session(caller, session_id)
            if self.watchers + self.event_streams >= lim.max_watchers:
                raise RequestError(ErrorKind.EXHAUSTED,
                                   f"{self.watchers} watchers open: the daemon's limit")
            w = Watcher(session_id, interval_ms * 1_000_000, per_process, self.clock())
            self.watchers += 1
            # Violations seen before the stream began come first, so a watcher that
            # connects late (or after the end) still gets every one.
            results = sess.final.budget if sess.final is not None else (
                sess.budget.results if sess.budget else [])
            for r in results:
                if not r.passed:
                    w.offer_event(Violation(ts_ns=r.first_failed_ns or sess.start_ns, result=r))
            if sess.final is not None:
                w.offer_final(self.summary(sess), sess.final)
            else:
                sess.watchers.append(w)
            return w

    def unwatch(self, w: Watcher) -> None:
        """Free a watcher at once (its stream ended or its client went away)."""
        with self.lock:
            if w.released:
                return
            w.released = True
            w.close()
            sess = self.sessions.get(w.session_id)
            if sess is not None and w in sess.watchers:
                sess.watchers.remove(w)
            self.watchers -= 1

    def _publish(self, now: int) -> None:
        drops_now: Drops | None = None
        for sess in self.sessions.values():
            due = [w for w in sess.watchers if now >= w.next_due_ns]
            if not due or sess.state != State.RUNNING:
                continue
            procs = self._processes(sess)
            totals = sum_stats([p.syscalls for p in procs.values()])
            if drops_now is None:  # one read of the counters per drain, not per session
                drops_now = self.probe.drops()
            drops = self._drops(sess, drops_now)
            for w in due:
                view = View(ts_ns=now, totals=totals,
                            processes=procs if w.per_process else None, drops=drops)
                if w.offer(view):
                    self.watch_missed += 1
                # Next tick on the watcher's own grid, skipping ticks already past.
                behind = now - w.next_due_ns
                w.next_due_ns += (behind // w.interval_ns + 1) * w.interval_ns

    # ------------------------------------------------------------------ the drain
    def _refresh(self) -> None:
        self._snapshot = _by_pid(self.probe.read_stats_by_gen())

    def step(self, timeout_ms: int) -> None:
        """One drain: events, exits, a fresh snapshot, deadlines, watcher updates."""
        events = self.probe.poll_events(timeout_ms)  # blocks: outside the lock
        with self.lock:
            if self.closed:
                return
            t0 = time.monotonic_ns()
            try:
                self._step(events)
            finally:
                self.drains += 1
                self.drain_ns += time.monotonic_ns() - t0

    def _step(self, events: list[LifecycleEvent]) -> None:
        self._on_events(events)
        self._refresh()
        now = self.clock()
        self._sweep(now)
        self._poll_peaks()
        for sess in list(self._running()):
            if sess.budget is not None:
                self._evaluate(sess, self._processes(sess), now)
        for sess in list(self.sessions.values()):
            limit_ns = sess.options.duration_ms * 1_000_000
            if sess.state == State.RUNNING and limit_ns and now - sess.start_ns >= limit_ns:
                self._finish(sess, State.INTERRUPTED, "duration limit reached")
        self._publish(now)

    def _on_events(self, events: Sequence[LifecycleEvent]) -> None:
        # A process forked within this batch is unknown when it starts; if it exits
        # within it too (a shell loop's children), its exit must be in the one pass over
        # the map, or each costs a pass of its own under the hub lock.
        forked = {ev.pid for ev in events if ev.type == EV_FORK}
        exits = [ev.pid for ev in events if ev.type == EV_EXIT and (
            ev.pid in self.procs or ev.pid in self._limbo or ev.pid in forked)]
        self._collect_exit_peaks(exits)
        if exits:  # one pass over the map for every exit of the batch
            self._exit_stash = _by_pid(self.probe.delete_stats_by_gen(exits))
            for pid in exits:
                self._exit_stash.setdefault(pid, {})
        for ev in events:
            self._on_event(ev)
        self._exit_stash = {}

    def _on_event(self, ev: LifecycleEvent) -> None:
        if ev.type == EV_FORK:
            self._on_fork(ev)
        elif ev.type == EV_EXEC:
            self._on_exec(ev)
        elif ev.type == EV_EXIT:
            self._on_exit(ev.pid, ev.ts_ns, ev.exit_code)

    def _running(self) -> Iterator[Session]:
        return (s for s in self.sessions.values() if s.state == State.RUNNING)

    def _rule_sessions_running(self) -> bool:
        """Something takes processes at exec: watch rules, or exec-rule or cgroup sessions."""
        return bool(self._watch_rules) or any(
            isinstance(s.target, ExecRuleTarget | CgroupTarget) for s in self._running())

    def _on_fork(self, ev: LifecycleEvent) -> None:
        child, parent = ev.pid, ev.ppid
        takers = [s for s in self._running() if parent in s.members and s.follows_children
                  and s.owner.may_trace_uid(ev.uid)]
        if child in self.procs:
            return
        if not takers:
            # The kernel tracks every fork of a tracked process; nobody wants this one,
            # unless an exec rule matches it soon: then it waits in limbo (see _sweep).
            if self._rule_sessions_running():
                self._limbo[child] = self.clock()
                self._reslot(child)  # no session's member: no session's limit
            else:
                self.probe.untrack(child)
            return
        if len(self.procs) >= self.limits.max_tracked_pids:
            self.probe.untrack(child)
            self.pids_over_limit += 1
            for s in takers:  # their counts now miss this process: said in their drops
                s.forks_untracked += 1
            return
        pinfo = self.procs.get(parent)
        info = ProcessInfo(pid=child, ppid=parent, comm=ev.comm,
                           argv=list(pinfo.argv) if pinfo else [],
                           filename=pinfo.filename if pinfo else "", uid=ev.uid,
                           cgroup=pinfo.cgroup if pinfo else "", start_ns=ev.ts_ns)
        self.procs[child] = info
        for s in takers:
            # A new process: everything it ever counted belongs to these sessions.
            s.members[child] = _Member(info=replace(info), baseline={})
        # The kernel gave it its parent's limit: kept if the owner took it, else swapped.
        self._reslot(child)
        for s in takers:
            self._limit_members(s, [child])

    def _rule_takers(self, ev: LifecycleEvent) -> list[Session]:
        out = []
        for s in self._running():
            t = s.target
            if isinstance(t, ExecRuleTarget):
                hit = (t.comm and t.comm == ev.comm) or (t.path and t.path == ev.filename)
            elif isinstance(t, CgroupTarget):
                hit = ev.cgroup_id in s.cgroup_ids
            else:
                hit = False
            if hit and ev.pid not in s.members and s.owner.may_trace_uid(ev.uid):
                out.append(s)
        return out

    def _on_exec(self, ev: LifecycleEvent) -> None:
        pid = ev.pid
        known = pid in self.procs
        takers = self._rule_takers(ev) + self._watch_starts(ev)
        if not known and not takers:
            if pid not in self._limbo:
                # Matched a rule that was dropped since, or a process we released.
                self.probe.untrack(pid)
            return
        if not known:
            if len(self.procs) >= self.limits.max_tracked_pids:
                self.probe.untrack(pid)
                self._limbo.pop(pid, None)
                self.pids_over_limit += 1
                for s in takers:  # exec-rule sessions (watch rules checked this first)
                    s.forks_untracked += 1
                return
            self._limbo.pop(pid, None)
            if not self.probe.is_tracked(pid):
                # Released before this exec was seen: count from now on.
                self.probe.track(pid)
            st = _procfs.stat(pid)
            self.procs[pid] = ProcessInfo(pid=pid, ppid=st[1] if st else 0, uid=ev.uid,
                                          cgroup=_procfs.cgroup(pid), start_ns=ev.ts_ns)
        info = self.procs[pid]
        info.comm, info.filename = ev.comm, ev.filename
        argv = _procfs.cmdline(pid)
        if argv is not None:
            info.argv = argv
        dropped: list[Session] = []
        for s in list(self._running()):
            m = s.members.get(pid)
            if m is None:
                continue
            if not s.owner.may_trace_uid(ev.uid):
                dropped.append(s)
                # It exec'd as a user this session's token may not watch (setuid):
                # the session keeps what it saw so far and stops following it.
                s.exited[pid] = replace(m.info, end_ns=ev.ts_ns,
                                        syscalls=self._member_stats(s, pid))
                del s.members[pid]
                self._reslot(pid)
                continue
            m.info.comm, m.info.filename = info.comm, info.filename
            m.info.argv = list(info.argv)
        for s in takers:
            # The kernel keeps the counters of each exec generation apart, so the
            # session takes exactly the calls from this exec on (its in-flight execve
            # included when another session already tracked the process).
            s.members[pid] = _Member(info=replace(info, start_ns=ev.ts_ns, argv=list(info.argv)),
                                     baseline={}, min_gen=ev.gen)
            self._limit_members(s, [pid])
        if dropped:
            for s in dropped:
                if s.ends_with_processes and not s.members:
                    self._finish(s, State.FINISHED, "no process left it may trace")
            self._release_unwanted()

    def _on_exit(self, pid: int, ts_ns: int, exit_code: int | None) -> None:
        if self._limbo.pop(pid, None) is not None and pid not in self.procs:
            self._final_counts(pid)
            self._snapshot.pop(pid, None)
        if pid not in self.procs:
            return
        final = self._final_counts(pid)
        cur = dict(self._snapshot.get(pid, {}))
        cur.update(final)
        self._snapshot[pid] = cur
        exit = ExitStatus.from_wait_status(exit_code) if exit_code is not None else None
        ended: list[Session] = []
        for s in list(self._running()):
            m = s.members.get(pid)
            if m is None:
                continue
            stats = self._member_stats(s, pid)
            del s.members[pid]
            info = replace(m.info, end_ns=ts_ns, exit=exit, syscalls=stats,
                           peak_rss_bytes=self._peaks.get(pid))
            if pid == s.root_pid:
                s.root_exit = exit
            if s.options.per_process or pid == s.root_pid:
                # A pid reused within the session: one entry, both processes' counts.
                s.exited[pid] = _merge(s.exited[pid], info) if pid in s.exited else info
            else:
                folded = s.exited.get(FOLDED_PID)
                if folded is None:
                    folded = s.exited[FOLDED_PID] = ProcessInfo(pid=FOLDED_PID,
                                                                comm="(exited, folded)")
                folded.syscalls = sum_stats([folded.syscalls, stats])
            if s.ends_with_processes and not s.members:
                ended.append(s)
        del self.procs[pid]
        self._snapshot.pop(pid, None)
        self._peaks.pop(pid, None)
        for s in ended:
            self._finish(s, State.FINISHED, "all processes exited")

    def _final_counts(self, pid: int) -> GenStats:
        """Remove an exited process's counters from the map (read in ``step`` for every
        exit of the batch at once, when possible)."""
        if pid in self._exit_stash:
            return self._exit_stash.pop(pid)
        return _by_pid(self.probe.delete_stats_by_gen([pid])).get(pid, {})

    def _sweep(self, now: int) -> None:
        """Repair what lost events or races leave behind (about once a second).

        - a tracked process whose exit record was lost (ring buffer full) is found by
          the kernel having cleared its flag at group death;
        - counters of processes nobody tracks any more (released, or a late in-flight
          call landing after their exit) are deleted, so the map cannot fill up; so are
          their counter blocks, even with nothing counted in them yet (a process released
          before its first call returned holds one all the same).
        """
        if now - self._last_liveness_ns < 1_000_000_000:
            return
        self._last_liveness_ns = now
        cleared = [p for p in self.procs if not self.probe.is_tracked(p)]
        unknown = [t for t in {*self._snapshot, *self.probe.block_holders()}
                   if t not in self.procs and t not in self._limbo]
        strays = [t for t in unknown if not self.probe.is_tracked(t)]
        # Tracked in the kernel yet known to nobody: an exec-rule match whose record
        # was lost. Untracked below unless the records read next explain it.
        orphans = [t for t in unknown if t not in strays]
        if cleared or unknown:
            # The kernel emits a process's fork record before the child can run and its
            # exit record before clearing its flag, so the records read *after* seeing a
            # flag cleared include both, unless they were lost. A process that forked and
            # exited since the last poll is thus adopted here, not mistaken for a stray.
            self._on_events(self.probe.poll_events(0))
        for pid in cleared:
            st = _procfs.stat(pid)
            if pid in self.procs and (st is None or st[0] in ("Z", "X")):
                self._on_exit(pid, now, None)  # its exit record was lost: status unknown
        strays = [t for t in strays if t not in self.procs]
        for t in orphans:
            if t not in self.procs and t not in self._limbo:
                self.probe.untrack(t)
        for pid, since in list(self._limbo.items()):
            if now - since >= 1_000_000_000:  # no exec rule took it: release it
                del self._limbo[pid]
                self.probe.untrack(pid)
        if strays:
            self.probe.delete_stats_by_gen(strays)
            for t in strays:
                self._snapshot.pop(t, None)


def _log_violation(sess: Session, v: Violation) -> None:
    r = v.result
    verdict = "failed" if r.counts else "warning"
    rule = f" (rule {sess.rule}, pid {sess.root_pid})" if sess.rule else ""
    _log.warning("session %s%s: budget %s %s: %s", sess.id, rule, r.name, verdict, r.message)


def drain_forever(hub: Hub, stop: threading.Event, poll_ms: int = 100,
                  on_error: Callable[[BaseException], None] | None = None) -> None:
    """The drain thread's body."""
    while not stop.is_set():
        try:
            hub.step(poll_ms)
        except Exception as e:  # keep draining: a bad record must not stop the daemon
            if on_error is not None:
                on_error(e)
            time.sleep(poll_ms / 1000)
