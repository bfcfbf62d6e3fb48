"""Plain data shared by every layer above the probe: no bcc, no grpc here.

Times are nanoseconds on CLOCK_MONOTONIC (the clock of ``bpf_ktime_get_ns``), so
kernel and user-space timestamps can be compared directly.
"""

from __future__ import annotations

import enum
import os
import signal as _signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._budgets import Result

#: log2 latency buckets kept per (process, syscall); must equal HIST_BUCKETS in bpf/syscount.h.
HIST_BUCKETS = 32

#: Count rules per in-kernel limit (one session's kill budgets); LIMIT_RULES in syscount.h.
LIMIT_RULES = 4

#: Version of the ``--json`` report schema; bump on any incompatible change.
REPORT_SCHEMA = "tracerd.report/v1"


def _empty_hist() -> list[int]:
    return [0] * HIST_BUCKETS


@dataclass
class SyscallStats:
    """Aggregate of one syscall number for one process (or a total).

    ``hist[i]`` counts calls whose latency ``d`` satisfies ``2**i <= d < 2**(i+1)`` ns
    (bucket 0 also holds ``d == 0``; the last bucket holds everything above).
    """

    calls: int = 0
    errors: int = 0
    total_ns: int = 0
    max_ns: int = 0
    hist: list[int] = field(default_factory=_empty_hist)
    #: mmap (anonymous), brk and mremap only: bytes the calls asked for (see syscount.h)
    alloc_bytes: int = 0

    def copy(self) -> SyscallStats:
        """An independent copy (dataclasses.replace is several times slower: the drain
        copies one per (process, syscall) on every pass)."""
        return SyscallStats(self.calls, self.errors, self.total_ns, self.max_ns,
                            self.hist[:], self.alloc_bytes)

    def add(self, other: SyscallStats) -> None:
        self.calls += other.calls
        self.errors += other.errors
        self.total_ns += other.total_ns
        self.alloc_bytes += other.alloc_bytes
        self.max_ns = max(self.max_ns, other.max_ns)
        for i, n in enumerate(other.hist):
            self.hist[i] += n

    def since(self, base: SyscallStats) -> SyscallStats:
        """What happened after ``base`` was read, given that this was read later.

        Counts are exact. The maximum is exact when it grew in between; otherwise the
        window's own maximum is unknown and the upper bound of its highest histogram
        bucket (capped by the overall maximum) stands in for it.
        """
        hist = [max(0, a - b) for a, b in zip(self.hist, base.hist, strict=True)]
        if self.max_ns > base.max_ns:
            top = self.max_ns
        else:
            used = [i for i, n in enumerate(hist) if n]
            top = min((1 << (used[-1] + 1)) - 1, self.max_ns) if used else 0
        return SyscallStats(calls=max(0, self.calls - base.calls),
                            errors=max(0, self.errors - base.errors),
                            total_ns=max(0, self.total_ns - base.total_ns), max_ns=top, hist=hist,
                            alloc_bytes=max(0, self.alloc_bytes - base.alloc_bytes))

    def percentile_ns(self, q: float) -> int | None:
        """Upper bound of the log2 bucket holding the q-quantile (0 < q <= 1) of timed calls.

        Only calls that returned are timed (``sum(hist)`` may be below ``calls``). The bound is
        capped by ``max_ns``, which is exact, so p100 is exact and others are within 2x.
        """
        timed = sum(self.hist)
        if timed == 0:
            return None
        rank = max(1, -(-int(q * timed * 1_000_000) // 1_000_000))
        seen = 0
        for i, n in enumerate(self.hist):
            seen += n
            if seen >= rank:
                return min((1 << (i + 1)) - 1, self.max_ns)
        return self.max_ns


@dataclass
class ExitStatus:
    """How a process ended, decoded from the kernel's ``task->exit_code``."""

    code: int | None = None  #: exit(2) status when it exited normally
    signal: int | None = None  #: terminating signal number when killed
    core_dumped: bool = False

    @classmethod
    def from_wait_status(cls, raw: int) -> ExitStatus:
        if os.WIFSIGNALED(raw):
            return cls(signal=os.WTERMSIG(raw), core_dumped=os.WCOREDUMP(raw))
        return cls(code=os.WEXITSTATUS(raw))

    def shell_status(self) -> int:
        """The status a shell reports: the exit code, or 128 + signal."""
        if self.signal is not None:
            return 128 + self.signal
        return self.code if self.code is not None else 0

    def describe(self) -> str:
        if self.signal is not None:
            try:
                name = _signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by {name}" + (" (core dumped)" if self.core_dumped else "")
        if self.code is None:
            return "exit status unknown"
        return f"exited with {self.code}"


@dataclass
class ProcessInfo:
    """One process (thread group) seen by a trace, with its own syscall aggregates."""

    pid: int
    ppid: int = 0
    comm: str = ""
    argv: list[str] = field(default_factory=list)
    filename: str = ""  #: path passed to the last successful execve, if any
    uid: int | None = None  #: real uid when first seen
    cgroup: str = ""  #: cgroup v2 path when first seen (best effort)
    start_ns: int = 0  #: when tracking began (fork, exec rule or registration)
    end_ns: int | None = None
    exit: ExitStatus | None = None
    syscalls: dict[int, SyscallStats] = field(default_factory=dict)
    #: peak RSS (VmHWM while alive, taskstats at exit); None when not measured
    peak_rss_bytes: int | None = None


#: Lifecycle event types (enum event_type in bpf/syscount.h).
EV_FORK, EV_EXEC, EV_EXIT = 1, 2, 3


@dataclass(frozen=True)
class LifecycleEvent:
    """A fork, exec or exit of a tracked process, as the kernel reported it."""

    type: int  #: EV_FORK, EV_EXEC or EV_EXIT
    pid: int  #: the process the event is about (the child, for EV_FORK)
    ppid: int  #: EV_FORK: the forking process
    exit_code: int | None  #: EV_EXIT: raw task->exit_code (wait-status encoding), None if unknown
    ts_ns: int  #: CLOCK_MONOTONIC
    comm: str
    filename: str  #: EV_EXEC: the path exec'd
    uid: int = 0  #: real uid of the current task (the parent, for EV_FORK)
    cgroup_id: int = 0  #: cgroup v2 id of the current task
    rule_matched: bool = False  #: EV_EXEC: an exec rule matched (and started tracking)
    gen: int = 0  #: EV_EXEC: the exec generation its counters are kept under from here on


class ArgKind(enum.IntEnum):
    """What the kernel read from a syscall argument's user memory (enum arg_kind in syscount.h)."""

    PATH = 1  #: a NUL-terminated string (file names: open/stat/exec families)
    BUFFER = 2  #: the first bytes of a data buffer (write family at entry, read family at exit)
    SOCKADDR = 3  #: a struct sockaddr (connect/bind at entry, accept/recvfrom at exit)


@dataclass(frozen=True)
class ArgData:
    """Bytes read in the kernel from the user memory one argument points to."""

    index: int  #: argument position, 0..5
    kind: ArgKind
    value: bytes  #: PATH: without its NUL; BUFFER: at most the bytes the call moved
    truncated: bool = False  #: the argument holds more than the kernel copied


@dataclass(frozen=True)
class ArgRead:
    """Which argument's user memory the kernel copies into a syscall's events."""

    index: int  #: argument holding the pointer
    kind: ArgKind
    at_exit: bool  #: meaningful only after the call (an output buffer or address)
    #: argument holding the length; -1: the return value (BUFFER at exit), the socklen_t
    #: pointer that follows the address (SOCKADDR at exit), or up to the copy's size
    len_index: int = -1


@dataclass(frozen=True)
class SyscallEvent:
    """One syscall of a process in an events session, as the kernel recorded it.

    Timestamps are ``bpf_ktime_get_ns()``: CLOCK_MONOTONIC, the clock a debugger reads with
    ``clock_gettime(CLOCK_MONOTONIC)``, so the two timelines merge without conversion.
    """

    start_ns: int  #: at sys_enter
    end_ns: int  #: at sys_exit; equal to start_ns when the call did not return
    pid: int  #: thread group id
    tid: int  #: thread id
    nr: int  #: syscall number on the traced process's architecture
    ret: int | None  #: signed return value; None: the call never returned (exit_group)
    args: tuple[int, ...]  #: the six argument registers, unsigned 64-bit
    data: tuple[ArgData, ...] = ()  #: arguments decoded in kernel, by ascending index

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    def arg_data(self, index: int) -> ArgData | None:
        for d in self.data:
            if d.index == index:
                return d
        return None


@dataclass
class Drops:
    """Everything the kernel side could not record; reported, never silent."""

    stats_full: int = 0  #: syscalls not counted because the stats map was full
    events_lost: int = 0  #: lifecycle records lost because the ring buffer was full
    pid_out_of_range: int = 0  #: forks whose pid exceeds the array sized at load time
    #: per-syscall events not recorded (any session's); never makes a count wrong
    syscall_events_lost: int = 0
    #: forks a session follows that were not tracked: the daemon's max_tracked_pids
    #: was reached (the daemon's own limit, not the kernel's)
    forks_untracked: int = 0

    def total(self) -> int:
        """What makes counts incomplete (lost syscall events do not)."""
        return self.stats_full + self.events_lost + self.pid_out_of_range + self.forks_untracked

    def add(self, other: Drops) -> None:
        self.stats_full += other.stats_full
        self.events_lost += other.events_lost
        self.pid_out_of_range += other.pid_out_of_range
        self.syscall_events_lost += other.syscall_events_lost
        self.forks_untracked += other.forks_untracked

    def since(self, base: Drops) -> Drops:
        return Drops(stats_full=self.stats_full - base.stats_full,
                     events_lost=self.events_lost - base.events_lost,
                     pid_out_of_range=self.pid_out_of_range - base.pid_out_of_range,
                     syscall_events_lost=self.syscall_events_lost - base.syscall_events_lost,
                     forks_untracked=self.forks_untracked - base.forks_untracked)


@dataclass
class Report:
    """The result of one trace: what ``tracerd run`` prints and ``--json`` serialises."""

    command: list[str]
    arch: str
    kernel: str
    root_pid: int
    start_ns: int
    end_ns: int | None = None
    exit: ExitStatus | None = None
    processes: dict[int, ProcessInfo] = field(default_factory=dict)
    drops: Drops = field(default_factory=Drops)
    interrupted: str | None = None  #: why tracing stopped early, if it did
    budget: list[Result] = field(default_factory=list)  #: results, in the budget's order
    #: counted in count-only mode: calls only (errors and times were not measured)
    count_only: bool = False

    def budget_failed(self) -> bool:
        """An assertion that fails the session failed."""
        return any(r.counts for r in self.budget)

    def totals(self) -> dict[int, SyscallStats]:
        out: dict[int, SyscallStats] = {}
        for proc in self.processes.values():
            for nr, st in proc.syscalls.items():
                out.setdefault(nr, SyscallStats()).add(st)
        return out
