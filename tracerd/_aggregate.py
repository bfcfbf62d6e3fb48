"""Cumulative per-process aggregates built from lifecycle events and map snapshots.

This is the only place that adds numbers up; renderers, budgets and sessions read
from it. Pure logic: no bcc, no grpc.

Each process's totals are ``done + live``: ``live`` is the latest cumulative snapshot
of its entries still in the kernel map (replaced wholesale on every read, so reading
twice never double counts), ``done`` is the sum of entries already removed from the
map. An entry is removed only after its process died, and a count that arrives after
that (a sibling thread finishing do_exit after the group_dead one) simply shows up as
a new live entry and is moved to ``done`` by the next removal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from . import _procfs
from .model import (
    EV_EXEC,
    EV_EXIT,
    EV_FORK,
    Drops,
    ExitStatus,
    LifecycleEvent,
    ProcessInfo,
    Report,
    SyscallStats,
)

Snapshot = Mapping[tuple[int, int], SyscallStats]


class Aggregate:
    def __init__(self) -> None:
        self.processes: dict[int, ProcessInfo] = {}
        self._done: dict[int, dict[int, SyscallStats]] = {}
        self._live: dict[int, dict[int, SyscallStats]] = {}
        self.exited: set[int] = set()

    def add_process(self, info: ProcessInfo) -> None:
        self.processes[info.pid] = info

    def _proc(self, pid: int) -> ProcessInfo:
        if pid not in self.processes:
            # Its fork event was lost (counted in drops): keep its counts anyway.
            self.processes[pid] = ProcessInfo(pid=pid)
        return self.processes[pid]

    def on_event(self, ev: LifecycleEvent, *, read_argv: bool = True) -> None:
        if ev.type == EV_FORK:
            parent = self.processes.get(ev.ppid)
            self.processes[ev.pid] = ProcessInfo(
                pid=ev.pid,
                ppid=ev.ppid,
                comm=ev.comm,
                argv=list(parent.argv) if parent else [],
                filename=parent.filename if parent else "",
                uid=ev.uid,
                cgroup=parent.cgroup if parent else "",
                start_ns=ev.ts_ns,
            )
        elif ev.type == EV_EXEC:
            proc = self._proc(ev.pid)
            proc.comm = ev.comm
            proc.filename = ev.filename
            argv = _procfs.cmdline(ev.pid) if read_argv else None
            if argv is not None:
                proc.argv = argv
        elif ev.type == EV_EXIT:
            proc = self._proc(ev.pid)
            proc.end_ns = ev.ts_ns
            if ev.comm:
                proc.comm = ev.comm
            if ev.exit_code is not None:
                proc.exit = ExitStatus.from_wait_status(ev.exit_code)
            self.exited.add(ev.pid)

    def on_events(self, events: Iterable[LifecycleEvent]) -> list[int]:
        """Apply events in order; return the pids that exited."""
        gone = []
        for ev in events:
            self.on_event(ev)
            if ev.type == EV_EXIT:
                gone.append(ev.pid)
        return gone

    def set_live(self, snapshot: Snapshot, pids: Iterable[int] | None = None) -> None:
        """Replace the live part with a cumulative snapshot of the kernel map.

        Only processes in ``pids`` (default: those already known) are kept, so a map
        shared with other users contributes nothing foreign.
        """
        keep = set(self.processes) if pids is None else set(pids)
        live: dict[int, dict[int, SyscallStats]] = {}
        for (tgid, nr), st in snapshot.items():
            if tgid in keep:
                live.setdefault(tgid, {})[nr] = st
        self._live = live

    def add_done(self, removed: Snapshot) -> None:
        """Fold entries that were removed from the kernel map into the totals."""
        for (tgid, nr), st in removed.items():
            if tgid not in self.processes:
                continue
            self._done.setdefault(tgid, {}).setdefault(nr, SyscallStats()).add(st)
            live = self._live.get(tgid)
            if live is not None:
                live.pop(nr, None)

    def stats_of(self, pid: int) -> dict[int, SyscallStats]:
        out: dict[int, SyscallStats] = {}
        for part in (self._done.get(pid, {}), self._live.get(pid, {})):
            for nr, st in part.items():
                out.setdefault(nr, SyscallStats()).add(st)
        return out

    def report(self, *, command: list[str], arch: str, kernel: str, root_pid: int,
               start_ns: int, end_ns: int | None, exit: ExitStatus | None,
               drops: Drops) -> Report:
        procs = {
            pid: replace(info, syscalls=self.stats_of(pid))
            for pid, info in sorted(self.processes.items())
        }
        return Report(command=command, arch=arch, kernel=kernel, root_pid=root_pid,
                      start_ns=start_ns, end_ns=end_ns, exit=exit, processes=procs,
                      drops=drops)


def filter_report(report: Report, keep: frozenset[int] | None) -> Report:
    """The same report restricted to the syscall numbers in ``keep`` (None: all)."""
    if keep is None:
        return report
    procs = {
        pid: replace(p, syscalls={nr: st for nr, st in p.syscalls.items() if nr in keep})
        for pid, p in report.processes.items()
    }
    return replace(report, processes=procs)
