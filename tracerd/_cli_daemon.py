"""The daemon side of the command line: ``tracerd serve``, ``tracerd sessions ...`` and
``tracerd run --remote``. Everything here talks to a daemon through tracerd.client."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TextIO

from . import syscalls
from ._config import (
    DEFAULT_CONFIG,
    DEFAULT_SOCKET,
    DEFAULT_STATE_DIR,
    KERNEL_LIMITS,
    DaemonConfig,
    check_kernel_limits,
    check_metrics_address,
    load_config,
    read_token_file,
)
from ._errors import (
    EXIT_BUDGET_FAILED,
    EXIT_DATAERR,
    EXIT_USAGE,
    BadInput,
    TracerdError,
    Unreadable,
)

if TYPE_CHECKING:
    from ._budgets import Assertion
    from ._events import EventBatch
    from ._sessions import SessionSummary, Violation
    from .client import Client
    from .model import Report, SyscallStats

_SESSIONS_EPILOG = """\
ADDR: a Unix socket path (default $TRACERD_ADDR, else /run/tracerd/tracerd.sock) or
  HOST:PORT (TLS; --insecure for a plaintext loopback daemon). The token comes from
  --token-file or $TRACERD_TOKEN.
exit status: 0 ok; 65 invalid request, 67 no such session or process, 75 daemon
  unreachable or full (retry later), 77 not authenticated or not permitted, 70 daemon error;
  report/watch with --fail-interrupted: 4 when the session was interrupted;
  report/watch: 5 when the session's budget failed (start --budget: 65 bad budget file,
  66 unreadable).
"""

EXIT_INTERRUPTED = 4


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def add_client_options(p: argparse.ArgumentParser, *, optional: bool = False) -> None:
    """--remote and credentials; with ``optional``, no daemon is used unless --remote is given."""
    g = p.add_argument_group("daemon connection")
    if optional:
        g.add_argument("--remote", metavar="ADDR",
                       help="trace through a running daemon (`tracerd serve`) at ADDR")
    else:
        g.add_argument("--remote", metavar="ADDR",
                       default=os.environ.get("TRACERD_ADDR", DEFAULT_SOCKET),
                       help="the daemon's address (default: %(default)s)")
    g.add_argument("--token-file", metavar="FILE", help="bearer token (first line of FILE)")
    g.add_argument("--tls-ca", metavar="PEM", help="CA that signed the daemon's certificate")
    g.add_argument("--tls-cert", metavar="PEM", help="client certificate (mTLS)")
    g.add_argument("--tls-key", metavar="PEM", help="client key (mTLS)")
    g.add_argument("--insecure", action="store_true", help="plaintext TCP (loopback only)")


def connect(args: argparse.Namespace) -> Client:
    from .client import Client  # noqa: PLC0415 - grpc only for daemon commands

    token = (read_token_file(args.token_file) if args.token_file
             else os.environ.get("TRACERD_TOKEN") or None)
    return Client(args.remote, token=token, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                  tls_key=args.tls_key, insecure=args.insecure)


# ---------------------------------------------------------------------- serve


def add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the daemon: trace sessions over gRPC",
                       description="Keep one set of BPF programs loaded and serve trace "
                                   "sessions over gRPC. Flags override the config file.")
    p.add_argument("--config", metavar="FILE", help="TOML config (see README)")
    p.add_argument("--socket", metavar="PATH", help=f"Unix socket (default {DEFAULT_SOCKET}; "
                                                    "'' disables it)")
    p.add_argument("--socket-group", metavar="GROUP", help="group allowed to connect")
    p.add_argument("--listen", action="append", metavar="HOST:PORT", help="TCP listener "
                   "(TLS; repeatable)")
    p.add_argument("--tls-cert", metavar="PEM")
    p.add_argument("--tls-key", metavar="PEM")
    p.add_argument("--tls-client-ca", metavar="PEM", help="require client certificates (mTLS)")
    p.add_argument("--insecure", action="store_true", default=None,
                   help="plaintext TCP, loopback addresses only")
    p.add_argument("--tokens", metavar="FILE", help="bearer tokens and their policies")
    p.add_argument("--max-sessions", type=int, metavar="N")
    p.add_argument("--max-watchers", type=int, metavar="N")
    p.add_argument("--max-tracked-pids", type=int, metavar="N")
    p.add_argument("--max-stats", type=positive_int, metavar="N",
                   help="entries of the kernel's (process, syscall) counter map")
    p.add_argument("--max-blocks", type=non_negative_int, metavar="N",
                   help="counter blocks: processes counted by the fast path at once "
                        "(0: none; default: as many as 64 MiB holds)")
    p.add_argument("--ringbuf-pages", type=positive_int, metavar="N",
                   help="pages of the kernel's lifecycle event ring (a power of 2)")
    p.add_argument("--log-level", metavar="LEVEL", help="debug, info, warning, error")
    p.add_argument("--state-dir", metavar="DIR", help="where the history of finished sessions "
                   f"is kept (default {DEFAULT_STATE_DIR}; '' keeps none)")
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus /metrics there (plain HTTP)")
    p.set_defaults(func=_cmd_serve)


def _config_path(args: argparse.Namespace) -> str | None:
    """--config, else the default file when it exists (a daemon without one is fine)."""
    if args.config:
        return str(args.config)
    return DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None


def _serve_config(args: argparse.Namespace) -> DaemonConfig:
    path = _config_path(args)
    cfg = load_config(path) if path else DaemonConfig()
    for key in ("socket", "socket_group", "tls_cert", "tls_key", "tls_client_ca", "tokens",
                "log_level", "insecure", "state_dir", "metrics"):
        value = getattr(args, key)
        if value is not None:
            setattr(cfg, key, value)
    if args.listen:
        cfg.listen = list(args.listen)
    changes = {k: getattr(args, k) for k in ("max_sessions", "max_watchers", "max_tracked_pids")
               if getattr(args, k) is not None}
    for k, v in changes.items():
        if v <= 0:
            raise TracerdError(f"--{k.replace('_', '-')}: must be > 0", EXIT_USAGE)
    cfg.limits = replace(cfg.limits, **changes)
    for key in KERNEL_LIMITS:
        if getattr(args, key) is not None:
            cfg.kernel_limits[key] = getattr(args, key)
    try:
        check_kernel_limits(cfg.kernel_limits, "--")
        if cfg.metrics:
            check_metrics_address(cfg.metrics, "--metrics")
    except BadInput as e:
        raise TracerdError(str(e), EXIT_USAGE) from None
    return cfg


def _cmd_serve(args: argparse.Namespace) -> int:
    from ._server import serve  # noqa: PLC0415

    cfg = _serve_config(args)
    # Reloads look for the default file again: it may have been created since.
    return serve(cfg, lambda: _serve_config(args))


# ---------------------------------------------------------------------- sessions


def add_sessions(sub: Any) -> None:
    p = sub.add_parser("sessions", help="start, stop, list, report and watch daemon sessions")
    ssub = p.add_subparsers(dest="sessions_cmd", required=True)

    def cmd(name: str, help_: str, func: Callable[[argparse.Namespace], int],
            session: bool = True) -> argparse.ArgumentParser:
        q: argparse.ArgumentParser = ssub.add_parser(
            name, help=help_, epilog=_SESSIONS_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter)
        if session:
            q.add_argument("session_id", metavar="ID")
        q.add_argument("--json", action="store_true", help="machine-readable output")
        add_client_options(q)
        q.set_defaults(func=func)
        return q

    start = cmd("start", "start a session; prints its id", _cmd_start, session=False)
    what = start.add_mutually_exclusive_group(required=True)
    what.add_argument("--pid", type=int, help="a running process")
    what.add_argument("--cgroup", metavar="PATH", help="a cgroup v2 directory")
    what.add_argument("--exec-comm", metavar="COMM", help="processes exec'ing this comm")
    what.add_argument("--exec-path", metavar="PATH", help="processes exec'ing this path")
    start.add_argument("--children", action="store_true",
                       help="--pid: its descendants too (exec rules always follow children)")
    start.add_argument("--duration", type=float, metavar="SECONDS", help="stop after SECONDS")
    start.add_argument("-e", "--syscalls", action="append", default=[], metavar="SPEC",
                       help="only these syscalls (names or classes, as for run -e)")
    start.add_argument("--per-process", action="store_true", help="keep per-process detail")
    start.add_argument("--label", default="", help="free-form label")
    start.add_argument("--budget", metavar="FILE",
                       help="renacer.toml-style [[assertion]]s the daemon evaluates (README)")
    start.add_argument("--events", action="store_true",
                       help="record one event per syscall (see `sessions events`)")
    start.add_argument("--event-syscalls", action="append", default=[], metavar="SPEC",
                       help="--events: only for these syscalls (default: those counted)")
    start.add_argument("--peak-rss", action="store_true",
                       help="measure each process's peak RSS (for golden traces of the session)")

    stop = cmd("stop", "stop a session (its report stays available)", _cmd_stop)
    del stop
    lst = cmd("list", "list sessions", _cmd_list, session=False)
    lst.add_argument("--state", choices=["running", "finished", "interrupted"])
    lst.add_argument("--since", metavar="WHEN",
                     help="only sessions running since WHEN: a duration ago (90s, 15m, 2h, "
                          "7d) or a date (2026-11-22, 2026-11-22T10:00); includes the "
                          "daemon's history (kept across restarts)")
    lst.add_argument("--rule", metavar="NAME", help="only sessions of this watch rule")
    lst.add_argument("--limit", type=int, default=1000, metavar="N",
                     help="at most N, the newest (default 1000)")
    rep = cmd("report", "print a session's report (so far, if it runs)", _cmd_report)
    rep.add_argument("--per-process", action="store_true", help="one table per process")
    rep.add_argument("--percentiles", action="store_true", help="p50/p99 latency columns")
    rep.add_argument("--fail-interrupted", action="store_true",
                     help=f"exit {EXIT_INTERRUPTED} if the session was interrupted")
    ev = cmd("events", "stream a session's syscall events (started with --events)",
             _cmd_events)
    ev.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stderr")
    ev.add_argument("-f", "--follow-forks", action="store_true",
                    help="prefix lines of other threads/processes with [pid N]")
    ev.add_argument("-e", "--syscalls", action="append", default=[], metavar="SPEC",
                    help="only these syscalls (names or classes, as for run -e)")
    ev.add_argument("--pid", type=int, action="append", help="only this process (repeatable)")
    ev.add_argument("--tid", type=int, action="append", help="only this thread (repeatable)")
    w = cmd("watch", "stream a session's aggregates until it ends", _cmd_watch)
    w.add_argument("--interval", type=int, default=1000, metavar="MS",
                   help="milliseconds between updates (default 1000)")
    w.add_argument("--per-process", action="store_true", help="include per-process totals")
    w.add_argument("--fail-interrupted", action="store_true",
                   help=f"exit {EXIT_INTERRUPTED} if the session was interrupted")


def _summary_dict(s: SessionSummary) -> dict[str, Any]:
    from google.protobuf import json_format  # noqa: PLC0415

    from . import _convert  # noqa: PLC0415

    return json_format.MessageToDict(_convert.summary_to_pb(s),
                                     preserving_proto_field_name=True)


def _target_text(s: SessionSummary) -> str:
    from ._sessions import CgroupTarget, ExecRuleTarget, PidTarget  # noqa: PLC0415

    t = s.target
    if isinstance(t, PidTarget):
        return f"pid {t.pid}" + (" +children" if t.children else "")
    if isinstance(t, CgroupTarget):
        return f"cgroup {t.path}"
    if isinstance(t, ExecRuleTarget):
        return " ".join(x for x in (f"comm={t.comm}" if t.comm else "",
                                    f"path={t.path}" if t.path else "") if x)
    return f"spawned {t.pid}"


def _print_summaries(items: list[SessionSummary], out: TextIO) -> None:
    rows = [("ID", "STATE", "OWNER", "PROCS", "CALLS", "STARTED", "AGE", "TARGET", "LABEL")]
    now = time.time_ns()
    for s in items:
        # Unix times: a session from the history may come from another boot.
        age = ((s.end_unix_ns or now) - s.start_unix_ns) / 1e9
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.start_unix_ns / 1e9))
        rows.append((s.id, s.state.name.lower(), s.owner, str(s.processes), str(s.calls),
                     started, f"{age:.1f}s", _target_text(s), s.options.label))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")


def _cmd_start(args: argparse.Namespace) -> int:
    from ._sessions import (  # noqa: PLC0415
        CgroupTarget,
        ExecRuleTarget,
        PidTarget,
        SessionOptions,
        Target,
    )

    target: Target
    if args.pid is not None:
        target = PidTarget(pid=args.pid, children=args.children)
    elif args.cgroup is not None:
        target = CgroupTarget(path=args.cgroup)
    else:
        target = ExecRuleTarget(comm=args.exec_comm or "", path=args.exec_path or "")
    if args.duration is not None and args.duration <= 0:
        raise TracerdError("--duration: must be > 0", EXIT_USAGE)
    opts = SessionOptions(duration_ms=int((args.duration or 0) * 1000),
                          syscall_spec=tuple(args.syscalls), per_process=args.per_process,
                          label=args.label, budget=load_budget(args.budget),
                          peak_rss=args.peak_rss, events=args.events,
                          event_spec=tuple(args.event_syscalls))
    with connect(args) as client:
        s = client.start(target, opts)
    if args.json:
        print(json.dumps(_summary_dict(s), sort_keys=True))
    else:
        print(s.id)
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    with connect(args) as client:
        s = client.stop(args.session_id)
    if args.json:
        print(json.dumps(_summary_dict(s), sort_keys=True))
    else:
        _print_summaries([s], sys.stdout)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from ._sessions import State  # noqa: PLC0415

    state = State[args.state.upper()] if args.state else None
    if args.limit <= 0:
        raise TracerdError("--limit: must be > 0", EXIT_USAGE)
    since = parse_since(args.since, time.time()) if args.since else None
    with connect(args) as client:
        items = client.list(state, since_unix_ns=since, rule=args.rule or "", limit=args.limit)
    if args.json:
        print(json.dumps([_summary_dict(s) for s in items], sort_keys=True))
    else:
        _print_summaries(items, sys.stdout)
    return 0


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float) -> int:
    """``--since``: a duration before ``now`` (90s, 15m, 2h, 7d, 1w) or an ISO date or
    date-time in local time, as Unix epoch nanoseconds."""
    t = text.strip()
    if len(t) >= 2 and t[-1] in _UNITS:
        try:
            n = float(t[:-1])
        except ValueError:
            n = -1.0
        if 0 <= n <= 100 * 365 * 86400:  # also refuses inf and nan
            return max(0, int((now - n * _UNITS[t[-1]]) * 1e9))
    try:
        when = datetime.datetime.fromisoformat(t)
    except (ValueError, OverflowError):
        raise TracerdError(f"--since {text!r}: expected a duration (90s, 15m, 2h, 7d) or a "
                           "date (2026-11-22 or 2026-11-22T10:00)", EXIT_USAGE) from None
    return max(0, int(when.timestamp() * 1e9))


def syscall_filter(specs: list[str], arch: str) -> frozenset[int] | None:
    """``-e`` values (names and classes, strace's ``trace=`` prefix allowed); None: all."""
    if not specs:
        return None
    cleaned = [s.split("=", 1)[1] if s.startswith("trace=") else s for s in specs]
    try:
        return syscalls.resolve(cleaned, arch)
    except ValueError as e:
        raise TracerdError(str(e), EXIT_USAGE) from None


def load_budget(path: str | None) -> tuple[Assertion, ...]:
    """The assertions of a budget file; 65 when it is malformed, 66 when unreadable."""
    if path is None:
        return ()
    from . import _budgets  # noqa: PLC0415

    try:
        assertions = tuple(_budgets.load(path))
    except _budgets.BudgetUnreadable as e:
        raise Unreadable(str(e)) from None
    except _budgets.BudgetError as e:
        raise TracerdError(str(e), EXIT_DATAERR) from None
    if not assertions:
        # Asked for a budget and got none: checking nothing must not look like passing.
        raise TracerdError(f"{path}: no [[assertion]] entries", EXIT_DATAERR)
    return assertions


def violation_line(v: Violation) -> str:
    r = v.result
    how = "failed" if r.counts else "warning"
    enforced = f" ({r.action}, {r.enforcement})" if r.enforcement else ""
    return f"tracerd: budget {r.name!r} {how}{enforced}: {r.message}"


def budget_status(report: Report) -> int:
    return EXIT_BUDGET_FAILED if report.budget_failed() else 0


def print_report(report: Report, args: argparse.Namespace, out: TextIO) -> None:
    """The report as --json or text; text ends with the budget's verdict table, if any."""
    from . import _budgets, render  # noqa: PLC0415

    name_of = syscalls.table_for(report.arch or None).name
    if getattr(args, "json", False):
        out.write(render.report_to_json(report, name_of))
        return
    out.write(render.render_text(report, name_of,
                                 per_process=getattr(args, "per_process", False),
                                 percentiles=getattr(args, "percentiles", False)))
    if report.budget:
        out.write("\n" + _budgets.render_table(report.budget))


def _interrupted_status(args: argparse.Namespace, s: SessionSummary) -> int:
    from ._sessions import State  # noqa: PLC0415

    return EXIT_INTERRUPTED if args.fail_interrupted and s.state == State.INTERRUPTED else 0


def _cmd_report(args: argparse.Namespace) -> int:
    with connect(args) as client:
        s, report = client.report(args.session_id)
    print_report(report, args, sys.stdout)
    return budget_status(report) or _interrupted_status(args, s)


def _top(stats: dict[int, SyscallStats], name_of: Callable[[int], str], n: int = 5) -> str:
    top = sorted(stats.items(), key=lambda kv: -kv[1].calls)[:n]
    return ", ".join(f"{name_of(nr)} {st.calls}" for nr, st in top)


def _cmd_watch(args: argparse.Namespace) -> int:
    from . import _budgets  # noqa: PLC0415
    from ._sessions import SessionSummary, Violation  # noqa: PLC0415
    from .client import Final, Update  # noqa: PLC0415

    name_of = syscalls.table_for().name
    status = 0
    with connect(args) as client:
        for ev in client.watch(args.session_id, args.interval, args.per_process):
            if isinstance(ev, Update):
                if args.json:
                    line = {"update": {
                        "seq": ev.seq, "ts_ns": ev.ts_ns, "missed": ev.missed,
                        "delta": _stats_json(ev.delta, name_of),
                        "totals": _stats_json(ev.totals, name_of),
                        "processes": {str(pid): _stats_json(p.syscalls, name_of)
                                      for pid, p in ev.processes.items()}}}
                    print(json.dumps(line, sort_keys=True), flush=True)
                else:
                    calls = sum(st.calls for st in ev.delta.values())
                    total = sum(st.calls for st in ev.totals.values())
                    missed = f" (missed {ev.missed})" if ev.missed else ""
                    print(f"#{ev.seq}{missed}: +{calls} calls, {total} total; "
                          f"{_top(ev.delta, name_of) or 'idle'}", flush=True)
            elif isinstance(ev, Violation):
                if args.json:
                    line = {"violation": {"ts_ns": ev.ts_ns,
                                          "result": _budgets.result_to_dict(ev.result)}}
                    print(json.dumps(line, sort_keys=True), flush=True)
                else:
                    print(violation_line(ev).removeprefix("tracerd: "), flush=True)
            elif isinstance(ev, SessionSummary):
                if args.json:
                    print(json.dumps({"state": _summary_dict(ev)}, sort_keys=True), flush=True)
                else:
                    why = f": {ev.end_reason}" if ev.end_reason else ""
                    print(f"session {ev.id} {ev.state.name.lower()}{why}", flush=True)
            elif isinstance(ev, Final):
                if args.json:
                    from .render import report_to_dict  # noqa: PLC0415

                    final = {"session": _summary_dict(ev.session),
                             "report": report_to_dict(ev.report, name_of)}
                    print(json.dumps({"final": final}, sort_keys=True), flush=True)
                else:
                    print_report(ev.report, args, sys.stdout)
                status = budget_status(ev.report) or _interrupted_status(args, ev.session)
    return status


def _stats_json(stats: dict[int, SyscallStats], name_of: Callable[[int], str]) -> dict[str, Any]:
    return {name_of(nr): {"calls": st.calls, "errors": st.errors, "total_ns": st.total_ns}
            for nr, st in sorted(stats.items())}


# ---------------------------------------------------------------------- run --remote


def run_remote(args: argparse.Namespace, command: list[str], budget: tuple[Assertion, ...] = (),
               *, peak_rss: bool = False,
               on_events: Callable[[EventBatch], None] | None = None,
               ) -> tuple[Report, int, str | None, int | None]:
    """``tracerd run --remote``: the daemon traces CMD, spawned here exactly as ``run`` does.

    Returns (report, CMD's status if it exited, interrupted reason, pid still running).
    """
    from ._run import spawn_tracked, terminal_signals  # noqa: PLC0415
    from ._sessions import SessionOptions, Violation  # noqa: PLC0415
    from .client import Final  # noqa: PLC0415
    from .model import ExitStatus  # noqa: PLC0415

    opts = SessionOptions(duration_ms=int((getattr(args, "duration", None) or 0) * 1000),
                          syscall_spec=tuple(getattr(args, "syscalls", ())), per_process=True,
                          budget=budget, peak_rss=peak_rss, events=on_events is not None)
    clients: list[Client] = []
    sid: list[str] = []
    readers: list[threading.Thread] = []
    failures: list[BaseException] = []

    def register(pid: int, _path: str) -> None:
        # Connected only once CMD is forked: a child forked after gRPC has started its
        # threads runs gRPC's fork handlers, whose futex/epoll calls would be counted.
        clients.append(connect(args))
        sid.append(clients[0].start_spawned(pid, command, opts).id)
        if on_events is not None:
            # The daemon keeps what the session records until a stream subscribes, so
            # the stream starts at CMD's execve even if it subscribes a moment later.
            stream = clients[0].stream_events(sid[0])
            readers.append(threading.Thread(target=_forward,
                                            args=(stream, on_events, failures),
                                            name="tracerd-events", daemon=True))
            readers[0].start()

    with terminal_signals() as forward:
        try:
            pid = spawn_tracked(command, register)
            forward(pid)
            final: Final | None = None
            for ev in clients[0].watch(sid[0], interval_ms=60_000):
                if isinstance(ev, Final):
                    final = ev
                elif isinstance(ev, Violation):
                    print(violation_line(ev), file=sys.stderr, flush=True)
            for t in readers:
                t.join()  # the stream ends by itself once the session's events are out
        finally:
            for c in clients:
                c.close()  # after a failure, this ends the event stream too
            for t in readers:
                t.join()
        if failures:
            raise failures[0]
        if final is None:
            raise TracerdError(f"session {sid[0]}: the daemon ended the stream without a report")
        report = final.report
        wpid, raw = os.waitpid(pid, os.WNOHANG)
        if wpid == 0 and report.interrupted is None:
            _, raw = os.waitpid(pid, 0)
            wpid = pid
        if wpid:
            exit = ExitStatus.from_wait_status(raw)
            report.exit = exit
            if pid in report.processes:
                report.processes[pid].exit = exit
            return report, exit.shell_status(), report.interrupted, None
        return report, 0, report.interrupted, pid


def _forward(stream: Iterator[EventBatch], sink: Callable[[EventBatch], None],
             failures: list[BaseException]) -> None:
    try:
        for batch in stream:
            sink(batch)
            if batch.last:
                return
        failures.append(TracerdError("the daemon ended the event stream early"))
    except BaseException as e:  # re-raised by the caller, in its own thread
        failures.append(e)


# ---------------------------------------------------------------------- sessions events


def _cmd_events(args: argparse.Namespace) -> int:
    from ._cli_events import EventWriter  # noqa: PLC0415
    from ._cli_golden import output  # noqa: PLC0415
    from ._events import EventFilter  # noqa: PLC0415

    arch = syscalls.current_arch()
    keep = syscall_filter(args.syscalls, arch) or frozenset()
    flt = EventFilter(syscalls=keep, pids=frozenset(args.pid or ()),
                      tids=frozenset(args.tid or ()))
    with output(args.output) as out, connect(args) as client:
        writer = EventWriter(out, syscalls.table_for(arch), as_json=args.json,
                             follow=args.follow_forks, program=[f"session {args.session_id}"])
        complete = False
        try:
            for batch in client.stream_events(args.session_id, flt):
                writer(batch)
                complete = batch.last
        finally:
            writer.close(complete=complete)
    return 0
