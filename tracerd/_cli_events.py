"""Writing syscall events as strace lines or as the debugger's JSON document.

``tracerd run --events`` and ``tracerd sessions events ID`` both hand their batches to an
EventWriter. Text is strace's format (``-f`` adds ``[pid N]`` for threads and processes
other than the first, as strace does); JSON is ``{"events": [...], "metadata": {...}}``,
written as the events come so memory stays flat, with the metadata (which includes the
final lost counts) last.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TextIO

from . import __version__, _strace
from ._events import EventBatch
from .syscalls import SyscallTable


class EventWriter:
    """Consumes EventBatch objects; call ``close`` once after the last one."""

    def __init__(self, out: TextIO, table: SyscallTable, *, as_json: bool = False,
                 follow: bool = False, program: list[str] | None = None) -> None:
        self.out = out
        self.table = table
        self.as_json = as_json
        self.follow = follow
        self.program = program or []
        self.first_tid: int | None = None
        self.events = 0
        self.kernel_lost = 0
        self.dropped = 0
        self._reported_lost = 0
        if as_json:
            out.write('{"events": [')

    def __call__(self, batch: EventBatch) -> None:
        out = self.out
        for ev in batch.events:
            if self.first_tid is None:
                self.first_tid = ev.tid
            if self.as_json:
                sep = ",\n  " if self.events else "\n  "
                out.write(sep + json.dumps(_strace.event_to_json(ev, self.table),
                                           sort_keys=True))
            else:
                show = self.follow and ev.tid != self.first_tid
                out.write(_strace.format_event(ev, self.table, show_pid=show, align=True)
                          + "\n")
            self.events += 1
        self.kernel_lost, self.dropped = batch.kernel_lost, batch.dropped
        lost = batch.lost
        if lost > self._reported_lost and not self.as_json:
            # Said where the gap is, in the stream itself, like bpftrace's "Lost N events".
            out.write(f"--- tracerd: {lost - self._reported_lost} events lost here "
                      f"(kernel {batch.kernel_lost}, queue {batch.dropped} so far) ---\n")
            self._reported_lost = lost
        out.flush()

    def close(self, *, exit_line: str | None = None, complete: bool = True) -> None:
        """End the output. ``complete`` false: the stream broke off (an error, Ctrl-C);
        the JSON says so, so a reader never takes a partial trace for a whole one."""
        if self.as_json:
            meta = {"program": self.program, "tracerd": __version__,
                    "kernel": os.uname().release, "arch": self.table.arch,
                    "clock": "monotonic", "events": self.events,
                    "lost": self.kernel_lost + self.dropped,
                    "kernel_lost": self.kernel_lost, "dropped": self.dropped,
                    "complete": complete}
            self.out.write(("\n" if self.events else "") + '], "metadata": '
                           + json.dumps(meta, sort_keys=True) + "}\n")
        elif not complete:
            self.out.write("--- tracerd: event stream ended early ---\n")
        elif exit_line:
            self.out.write(exit_line + "\n")
        self.out.flush()
        if self.kernel_lost + self.dropped:
            print(f"tracerd: {self.kernel_lost + self.dropped} syscall events lost "
                  f"({self.kernel_lost} in the kernel, {self.dropped} in the queue); "
                  "the counts in the summary are complete", file=sys.stderr)
