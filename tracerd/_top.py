"""``tracerd top``: a live terminal view over a daemon, or over one of its sessions.

Two halves. The pure half (:class:`Sample`, :class:`Poll`, :func:`build_frame` and the
functions it calls) turns what two successive polls saw into the lines of one frame: no
I/O, no grpc, so it is tested with hand-built dataclasses. The live half (:func:`run`)
polls the daemon through :class:`tracerd.client.Client` every interval and draws the
frames: in place on a terminal, one after another (a blank line apart) otherwise.

Rates (calls/s) are computed here, from the counts of two successive reports of a session
divided by the time between them. The time is the client's ``time.monotonic_ns()`` at the
midpoint of each GetReport call: the daemon reads its counters during that call, but a
running session's report carries no timestamp of that read (its ``end_ns`` is unset), so
the daemon's clock cannot be used for it. Ages and "recently finished", on the other hand,
compare the sessions' ``start_ns``/``end_ns`` with the daemon's own CLOCK_MONOTONIC
(GetInfo's ``now_ns``), which stays right when the daemon runs on another host.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TextIO

from . import syscalls
from ._cli_daemon import add_client_options, connect, non_negative_int, positive_float, positive_int
from ._errors import TracerdError
from ._sessions import (
    FOLDED_PID,
    CgroupTarget,
    ExecRuleTarget,
    PidTarget,
    SessionSummary,
    SpawnedTarget,
    State,
)
from .model import ProcessInfo, Report, SyscallStats

if TYPE_CHECKING:
    from ._budgets import Result
    from .client import Client

NameOf = Callable[[int], str]

#: Finished sessions stay in the overview for this long after they ended (daemon clock).
RECENT_NS = 60 * 1_000_000_000

#: Clear the screen and put the cursor home; hide and show the cursor.
CLEAR = "\x1b[H\x1b[2J"
HIDE_CURSOR = "\x1b[?25l"
SHOW_CURSOR = "\x1b[?25h"

_NS_PER_S = 1_000_000_000


# ---------------------------------------------------------------------- data


@dataclass(frozen=True)
class Sample:
    """One session as one poll saw it."""

    t_ns: int  #: client time.monotonic_ns() when the report was read (see the module doc)
    summary: SessionSummary
    report: Report | None = None  #: None when it could not be fetched
    #: the daemon's now_ns when it was first missing: it no longer knows this session
    gone_ns: int | None = None

    @property
    def gone(self) -> bool:
        return self.gone_ns is not None

    @property
    def running(self) -> bool:
        return not self.gone and self.summary.state == State.RUNNING


@dataclass(frozen=True)
class Poll:
    """What one refresh saw: the sessions shown, by id."""

    t_ns: int  #: client time.monotonic_ns() when the poll began
    now_ns: int  #: the daemon's CLOCK_MONOTONIC (0: unknown)
    samples: dict[str, Sample] = field(default_factory=dict)


# ---------------------------------------------------------------------- arithmetic


def rate(before: int, after: int, before_t_ns: int, after_t_ns: int) -> float | None:
    """Calls per second between two readings; None when the interval is empty."""
    dt = after_t_ns - before_t_ns
    if dt <= 0:
        return None
    return max(0, after - before) * _NS_PER_S / dt


def _interval(prev: Sample | None, cur: Sample) -> tuple[Sample, Sample] | None:
    """The two samples a rate is taken between: only when the session was running at the
    first (afterwards its counts no longer move) and is still known at the second."""
    if prev is None or not prev.running or cur.gone or cur.t_ns <= prev.t_ns:
        return None
    return prev, cur


def session_rate(prev: Sample | None, cur: Sample) -> float | None:
    pair = _interval(prev, cur)
    if pair is None:
        return None
    return rate(pair[0].summary.calls, pair[1].summary.calls, pair[0].t_ns, pair[1].t_ns)


def syscall_rates(prev: Sample | None, cur: Sample) -> dict[int, float] | None:
    """Per syscall, calls/s of one session; None without two reports to compare."""
    pair = _interval(prev, cur)
    if pair is None or pair[0].report is None or pair[1].report is None:
        return None
    before, after = pair[0].report.totals(), pair[1].report.totals()
    out: dict[int, float] = {}
    for nr, st in after.items():
        r = rate(before[nr].calls if nr in before else 0, st.calls, pair[0].t_ns, pair[1].t_ns)
        if r is not None:
            out[nr] = r
    return out


def process_rates(prev: Sample | None, cur: Sample) -> dict[int, float] | None:
    """Per process, calls/s of one session. The folded row of exited processes has none:
    it grows by whole processes' counts when they exit, not by calls made meanwhile."""
    pair = _interval(prev, cur)
    if pair is None or pair[0].report is None or pair[1].report is None:
        return None
    before = pair[0].report.processes
    out: dict[int, float] = {}
    for pid, p in pair[1].report.processes.items():
        if pid == FOLDED_PID:
            continue
        old = _calls(before[pid].syscalls) if pid in before else 0
        r = rate(old, _calls(p.syscalls), pair[0].t_ns, pair[1].t_ns)
        if r is not None:
            out[pid] = r
    return out


def _calls(stats: dict[int, SyscallStats]) -> int:
    return sum(st.calls for st in stats.values())


def _errors(stats: dict[int, SyscallStats]) -> int:
    return sum(st.errors for st in stats.values())


def violations(report: Report | None) -> list[Result]:
    """The budget's assertions that failed (warnings included), in the budget's order."""
    return [r for r in report.budget if not r.passed] if report is not None else []


# ---------------------------------------------------------------------- text


def _fmt_rate(r: float | None) -> str:
    return "-" if r is None else f"{r:.1f}"


def _fmt_secs(ns: int) -> str:
    return f"{ns / _NS_PER_S:.1f}s"


def state_text(s: Sample) -> str:
    return "gone" if s.gone else s.summary.state.name.lower()


def describe_target(s: SessionSummary, report: Report | None = None) -> str:
    """What a session traces, with the command when it is known."""
    t = s.target
    if isinstance(t, SpawnedTarget):
        argv = list(t.argv) or (report.command if report is not None else [])
        text = f"run {t.pid}" + (f": {shlex.join(argv)}" if argv else "")
    elif isinstance(t, PidTarget):
        text = f"pid {t.pid}" + (" +children" if t.children else "")
        root = report.processes.get(t.pid) if report is not None else None
        if root is not None and (root.argv or root.comm):
            text += f": {shlex.join(root.argv) if root.argv else root.comm}"
    elif isinstance(t, CgroupTarget):
        text = f"cgroup {t.path}"
    elif isinstance(t, ExecRuleTarget):
        text = "exec " + " ".join(x for x in (f"comm={t.comm}" if t.comm else "",
                                              f"path={t.path}" if t.path else "") if x)
    else:  # pragma: no cover - Target is a closed union
        text = str(t)
    return f"[{s.options.label}] {text}" if s.options.label else text


def table(header: Sequence[str], rows: Iterable[Sequence[str]],
          right: Iterable[int] = ()) -> list[str]:
    """Columns two blanks apart, sized to their widest cell; ``right`` ones right-aligned.
    The last column is not padded, so a long free-text cell goes last."""
    all_rows = [list(header), *(list(r) for r in rows)]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header))]
    align = set(right)
    out = []
    for r in all_rows:
        cells = [c.rjust(w) if i in align else c.ljust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
    return out


def _capped(header: Sequence[str], rows: list[list[str]], limit: int | None,
            right: Iterable[int] = ()) -> list[str]:
    shown = rows if limit is None else rows[:limit]
    lines = table(header, shown, right)
    if len(rows) > len(shown):
        lines.append(f"... {len(rows) - len(shown)} more")
    return lines


def _fit(lines: list[str], width: int | None, height: int | None) -> list[str]:
    if height is not None:
        lines = lines[:max(1, height)]
    if width is not None:
        lines = [line[:max(1, width)] for line in lines]
    return lines


def _rate_key(r: float | None) -> float:
    return -1.0 if r is None else r


# ---------------------------------------------------------------------- frames


def ordered(samples: Iterable[Sample], rates: dict[str, float | None]) -> list[Sample]:
    """Running sessions first, the busiest (calls/s, then calls) first; then the ended and
    gone ones, the latest first."""
    def key(s: Sample) -> tuple[int, float, int, str]:
        if s.running:
            return (0, -_rate_key(rates.get(s.summary.id)), -s.summary.calls, s.summary.id)
        ended_at = s.gone_ns if s.gone_ns is not None else s.summary.end_ns
        return (1, 0.0, -ended_at, s.summary.id)

    return sorted(samples, key=key)


def build_overview(prev: Poll | None, cur: Poll, width: int | None, rows: int | None, *,
                   name_of: NameOf, title: str = "", height: int | None = None) -> list[str]:
    """The daemon's sessions, then the top syscalls over all running sessions."""
    before = prev.samples if prev is not None else {}
    rates = {sid: session_rate(before.get(sid), s) for sid, s in cur.samples.items()}
    samples = ordered(cur.samples.values(), rates)
    n_running = sum(1 for s in samples if s.running)
    known_rates = [r for s in samples if s.running and (r := rates[s.summary.id]) is not None]
    total = f"{sum(known_rates):.1f} calls/s" if known_rates else "- calls/s"
    head = f"{n_running} running, {len(samples) - n_running} ended; {total}"
    lines = [title, head, ""] if title else [head, ""]

    srows = []
    for s in samples:
        rep, summ = s.report, s.summary
        viol = str(len(violations(rep))) if rep is not None and rep.budget else "-"
        srows.append([summ.id, state_text(s), summ.rule or "-", summ.owner, str(summ.processes),
                      str(summ.calls), _fmt_rate(rates[summ.id]),
                      str(_errors(rep.totals())) if rep is not None else "-", viol,
                      describe_target(summ, rep)])
    if srows:
        lines += _capped(["SESSION", "STATE", "RULE", "OWNER", "PROCS", "CALLS", "CALLS/S",
                          "ERRORS", "VIOL", "TARGET"], srows, rows, right=(4, 5, 6, 7, 8))
    else:
        lines.append("no sessions")

    # Over the running sessions: two sessions on one process both count its calls.
    totals: dict[int, SyscallStats] = {}
    per_nr: dict[int, float] = {}
    have_rates = False
    for s in samples:
        if not s.running or s.report is None:
            continue
        for nr, st in s.report.totals().items():
            totals.setdefault(nr, SyscallStats()).add(st)
        sr = syscall_rates(before.get(s.summary.id), s)
        if sr is not None:
            have_rates = True
            for nr, r in sr.items():
                per_nr[nr] = per_nr.get(nr, 0.0) + r
    if totals:
        lines.append("")
        items = [(nr, st, per_nr.get(nr) if have_rates else None)
                 for nr, st in totals.items() if st.calls]
        items.sort(key=lambda x: (-_rate_key(x[2]), -x[1].calls, name_of(x[0]), x[0]))
        lines += _capped(["SYSCALL", "CALLS", "CALLS/S", "ERRORS"],
                         [[name_of(nr), str(st.calls), _fmt_rate(r), str(st.errors)]
                          for nr, st, r in items], rows, right=(1, 2, 3))
    return _fit(lines, width, height)


def _process_state(p: ProcessInfo) -> str:
    if p.pid == FOLDED_PID:
        return "exited"
    if p.exit is not None:
        return p.exit.describe()
    return "exited" if p.end_ns is not None else "running"


def build_session(prev: Poll | None, cur: Poll, session_id: str, width: int | None,
                  rows: int | None, *, name_of: NameOf, title: str = "",
                  height: int | None = None) -> list[str]:
    """One session: header, top syscalls, processes, budget violations."""
    s = cur.samples.get(session_id)
    if s is None:
        return _fit([f"session {session_id}: not known to the daemon"], width, height)
    old = prev.samples.get(session_id) if prev is not None else None
    summ, rep = s.summary, s.report
    when = ""
    if s.running and cur.now_ns:
        when = f", for {_fmt_secs(cur.now_ns - summ.start_ns)}"
    elif not s.running and summ.end_ns:
        when = f", ran {_fmt_secs(summ.end_ns - summ.start_ns)}"
        if cur.now_ns:
            when += f", ended {_fmt_secs(cur.now_ns - summ.end_ns)} ago"
    state = state_text(s).upper() if not s.running else state_text(s)
    why = f" ({summ.end_reason})" if summ.end_reason and not s.running else ""
    if s.gone:
        why = " (the daemon no longer knows it; last known counts)"
    lines = [f"{title}  session {summ.id}" if title else f"session {summ.id}",
             f"{state}{why}{when}; owner {summ.owner}; rule {summ.rule or '-'}",
             describe_target(summ, rep)]
    totals = rep.totals() if rep is not None else {}
    budget = ""
    if rep is not None and rep.budget:
        failed = violations(rep)
        budget = (f"; budget: {len(failed)} of {len(rep.budget)} failed" if failed
                  else f"; budget: {len(rep.budget)} passing")
    procs_text = f"{summ.processes} process" + ("" if summ.processes == 1 else "es")
    lines.append(f"{procs_text}, {summ.calls} calls "
                 f"({_fmt_rate(session_rate(old, s))}/s), {_errors(totals)} errors{budget}")
    if rep is not None and rep.drops.total():
        d = rep.drops
        lines.append(f"incomplete: {d.stats_full} calls not counted (map full), "
                     f"{d.events_lost} lifecycle events lost, "
                     f"{d.pid_out_of_range} pids out of range")
    if rep is None:
        return _fit(lines, width, height)

    sr = syscall_rates(old, s)
    items = [(nr, st, sr.get(nr, 0.0) if sr is not None else None)
             for nr, st in totals.items() if st.calls]
    items.sort(key=lambda x: (-_rate_key(x[2]), -x[1].calls, name_of(x[0]), x[0]))
    lines.append("")
    lines += _capped(
        ["SYSCALL", "CALLS", "CALLS/S", "ERRORS", "TIME(s)", "AVG(us)"],
        [[name_of(nr), str(st.calls), _fmt_rate(r), str(st.errors),
          f"{st.total_ns / _NS_PER_S:.6f}", f"{st.total_ns / st.calls / 1000:.1f}"]
         for nr, st, r in items], rows, right=(1, 2, 3, 4, 5))

    pr = process_rates(old, s)
    procs = sorted(rep.processes.values(), key=lambda p: (
        -_rate_key(pr.get(p.pid) if pr is not None else None), -_calls(p.syscalls), p.pid))
    lines.append("")
    lines += _capped(
        ["PID", "COMM", "CALLS", "CALLS/S", "ERRORS", "STATE"],
        [["-" if p.pid == FOLDED_PID else str(p.pid),
          "(exited processes)" if p.pid == FOLDED_PID else p.comm or "?",
          str(_calls(p.syscalls)),
          _fmt_rate(pr.get(p.pid) if pr is not None and p.pid != FOLDED_PID else None),
          str(_errors(p.syscalls)), _process_state(p)] for p in procs],
        rows, right=(0, 2, 3, 4))

    failed = violations(rep)
    if failed:
        lines.append("")
        lines += _capped(
            ["VIOLATION", "VERDICT", "TYPE", "ACTION", "MESSAGE"],
            [[r.name, "FAIL" if r.counts else "warn", r.type,
              r.action + (f" ({r.enforcement})" if r.enforcement else ""), r.message]
             for r in failed], rows)
    return _fit(lines, width, height)


def build_frame(prev: Poll | None, cur: Poll, width: int | None, rows: int | None, *,
                name_of: NameOf, session_id: str | None = None, title: str = "",
                height: int | None = None) -> list[str]:
    """The lines of one frame (no newlines), each at most ``width`` characters and at most
    ``height`` of them (None: no limit); each table shows at most ``rows`` rows."""
    if session_id is None:
        return build_overview(prev, cur, width, rows, name_of=name_of, title=title,
                              height=height)
    return build_session(prev, cur, session_id, width, rows, name_of=name_of, title=title,
                         height=height)


def select(summaries: Iterable[SessionSummary], now_ns: int,
           recent_ns: int = RECENT_NS) -> list[SessionSummary]:
    """The sessions the overview shows: running ones, and those that ended recently (all
    ended ones when the daemon's time is unknown). A session read from the daemon's
    history may come from an earlier boot: its Unix end time decides."""
    now_unix = time.time_ns()
    return [s for s in summaries if s.state == State.RUNNING or not now_ns
            or (now_unix - s.end_unix_ns if s.from_history else now_ns - s.end_ns)
            <= recent_ns]


# ---------------------------------------------------------------------- live


_EPILOG = """\
Rates (calls/s) are computed between two refreshes, so the first frame has none; --once
waits one interval to show them. On a terminal the view is redrawn in place, sized to it;
otherwise (and with --once) frames follow one another, a blank line apart.
exit status: 0 (also on Ctrl-C); 67 no such session; 75 daemon unreachable or gone;
  77 not authenticated or not permitted; 70 daemon error.
"""


def add_top(sub: Any) -> None:
    p = sub.add_parser(
        "top", help="live view of the daemon's sessions, top syscalls, rates and violations",
        description="A live terminal view over a daemon (sessions, top syscalls, rates,\n"
                    "budget violations), refreshed in place; with ID, over one session.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("session_id", metavar="ID", nargs="?",
                   help="show this session: its syscalls, processes and violations")
    p.add_argument("--interval", type=positive_float, default=1.0, metavar="SECONDS",
                   help="seconds between refreshes (default 1.0)")
    p.add_argument("-n", "--iterations", type=non_negative_int, default=0, metavar="N",
                   help="stop after N frames (default 0: until interrupted)")
    p.add_argument("--once", action="store_true",
                   help="print one frame (with rates, after one interval), without "
                        "terminal control codes, and exit")
    p.add_argument("--rows", type=positive_int, metavar="N",
                   help="at most N rows per table (default: what fits the terminal; "
                        "10 when not on a terminal)")
    add_client_options(p)
    p.set_defaults(func=_cmd_top)


class _Poller:
    """Polls the daemon: GetInfo for its clock and arch, ListSessions, GetReport."""

    def __init__(self, client: Client, session_id: str | None) -> None:
        self.client = client
        self.session_id = session_id
        self.arch = ""
        self.last: Poll | None = None
        #: reports of ended sessions: they no longer change, so each is read once
        self._ended: dict[str, Sample] = {}

    def _read(self, session_id: str) -> Sample:
        t0 = time.monotonic_ns()
        summ, rep = self.client.report(session_id)
        t1 = time.monotonic_ns()
        return Sample(t_ns=(t0 + t1) // 2, summary=summ, report=rep)

    def _gone(self, session_id: str, now_ns: int) -> Sample | None:
        old = self.last.samples.get(session_id) if self.last is not None else None
        if old is None:
            return None
        return old if old.gone else replace(old, gone_ns=now_ns)

    def poll(self) -> Poll:
        from grpc import StatusCode  # noqa: PLC0415

        from .client import ClientError  # noqa: PLC0415

        t_ns = time.monotonic_ns()
        info = self.client.info()
        self.arch = info.arch
        now_ns = int(info.now_ns)
        samples: dict[str, Sample] = {}
        listed: set[str] = set()
        if self.session_id is not None:
            ids = [self.session_id]
        else:
            # Recent ones only: the history can hold a hundred thousand.
            summaries = self.client.list(since_unix_ns=time.time_ns() - RECENT_NS)
            listed = {s.id for s in summaries}
            ids = [s.id for s in select(summaries, now_ns)]
        for sid in ids:
            sample: Sample | None = self._ended.get(sid)
            if sample is None:
                try:
                    sample = self._read(sid)
                except ClientError as e:
                    # It ended and was dropped between ListSessions and GetReport (or, for
                    # one session, after an earlier poll): shown as gone, not an error.
                    if e.code != StatusCode.NOT_FOUND:
                        raise
                    sample = self._gone(sid, now_ns)
                    if sample is None:
                        if self.session_id is not None:
                            raise
                        continue
                if not sample.running and not sample.gone and self.session_id is None:
                    self._ended[sid] = sample
            samples[sid] = sample
        if self.session_id is None and self.last is not None:
            for sid in self.last.samples.keys() - listed:
                g = self._gone(sid, now_ns)
                if g is not None and g.gone_ns is not None and now_ns - g.gone_ns <= RECENT_NS:
                    samples[sid] = g
        self._ended = {k: v for k, v in self._ended.items() if k in samples}
        self.last = Poll(t_ns=t_ns, now_ns=now_ns, samples=samples)
        return self.last


def _default_rows(height: int, session: bool) -> int:
    # Header and blank lines, then two (overview) or three (session) tables of rows + header.
    return max(3, (height - 10) // 3) if session else max(3, (height - 7) // 2)


def _cmd_top(args: argparse.Namespace) -> int:
    from .client import ClientError  # noqa: PLC0415

    out = sys.stdout
    live = out.isatty() and not args.once
    frames = 1 if args.once else args.iterations
    try:
        with connect(args) as client:
            return _loop(client, args, out, live=live, frames=frames)
    except ClientError as e:
        # One line, whatever the transport said (grpc's details may span several).
        text = " ".join(str(e).split())
        raise TracerdError(text, e.exit_status) from None


def _loop(client: Client, args: argparse.Namespace, out: TextIO, *, live: bool,
          frames: int) -> int:
    poller = _Poller(client, args.session_id)
    shown = 0
    prev: Poll | None = None
    if live:
        out.write(HIDE_CURSOR)
    try:
        cur = poller.poll()
        if args.once and any(s.running for s in cur.samples.values()):
            # One frame, but with rates: a second poll one interval later.
            time.sleep(args.interval)
            prev, cur = cur, poller.poll()
        next_at = time.monotonic() + args.interval
        while True:
            name_of = syscalls.table_for(poller.arch or None).name
            title = f"tracerd top  {time.strftime('%H:%M:%S')}  {client.address}"
            if live:
                size = shutil.get_terminal_size()
                rows = args.rows or _default_rows(size.lines, args.session_id is not None)
                lines = build_frame(prev, cur, size.columns, rows, name_of=name_of,
                                    session_id=args.session_id, title=title,
                                    height=size.lines)
                out.write(CLEAR + "\n".join(lines))
            else:
                lines = build_frame(prev, cur, None, args.rows or 10, name_of=name_of,
                                    session_id=args.session_id, title=title)
                out.write(("\n" if shown else "") + "\n".join(lines) + "\n")
            out.flush()
            shown += 1
            if frames and shown >= frames:
                return 0
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at = max(next_at + args.interval, time.monotonic())
            prev, cur = cur, poller.poll()
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # `tracerd top | head`: the reader left; nothing more to say to it.
        # Point stdout at /dev/null so that the interpreter's final flush stays silent.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, out.fileno())
            os.close(devnull)
        return 0
    finally:
        if live:
            with contextlib.suppress(OSError):
                out.write(SHOW_CURSOR + "\n")
                out.flush()
