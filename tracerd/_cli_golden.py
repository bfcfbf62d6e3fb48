"""``tracerd golden capture|compare|update`` and ``tracerd run --save-golden/--against``.

Runs come from one of three places, all giving the same Report: a probe loaded here
(the default), a daemon that traces a command spawned here (``--remote``), or a finished
daemon session (``--session ID``, one run). Peak RSS is measured per process by the hub
(taskstats at exit, VmHWM while running) in the first two; a session measured it only if
it was started with peak RSS on (``sessions start --peak-rss``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TextIO

from . import _cli_daemon, golden, syscalls
from ._config import DEFAULT_SOCKET
from ._errors import (
    EXIT_CANTCREAT,
    EXIT_DATAERR,
    EXIT_USAGE,
    BadInput,
    TracerdError,
    Unreadable,
)

if TYPE_CHECKING:
    from .model import Report

EPILOG = f"""\
CMD defaults to the command recorded in FILE (compare, update).
runs: here (default), through a daemon (--remote ADDR: it traces CMD spawned here), or
  capture/compare from a daemon session that has finished (--session ID; one run).
--tolerance NAME=SPEC: NAME is a syscall (SPEC: exact, ignore, N = +-N calls outside the
  golden [min, max], N% = +-N% of max), or duration=RATIO, duration_slack_ms=MS, rss=RATIO,
  counts=PCT, counts_min_abs=N (the margin for counts that varied during capture).
exit status: compare: 0 pass, {golden.EXIT_REGRESSION} regression; all: 65 corrupt golden file
  or session not finished, 66 golden file unreadable, 67 no such session, 73 golden file
  not writable, 1 a run dropped events (capture), and tracerd run's own errors.
"""


@contextlib.contextmanager
def output(path: str | None) -> Iterator[TextIO]:
    """stderr, or FILE opened now (so a bad path fails before any tracing) and closed after."""
    if path is None:
        yield sys.stderr
        return
    try:
        f = open(path, "w")  # noqa: SIM115 - closed below, after the caller's writes
    except OSError as e:
        raise TracerdError(f"cannot write {path}: {e.strerror}", EXIT_CANTCREAT) from None
    with f:
        yield f


def add_golden(sub: Any, positive_int: Any) -> None:
    gold = sub.add_parser("golden", help="capture, compare and update golden traces")
    gsub = gold.add_subparsers(dest="golden_cmd", required=True)

    def common(name: str, help_: str, *, from_session: bool) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = gsub.add_parser(
            name, help=help_, usage=f"tracerd golden {name} FILE [options] [-- CMD [ARGS...]]",
            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("file", metavar="FILE", help=f"the golden file ({golden.GOLDEN_SCHEMA})")
        p.add_argument("--tolerance", action="append", default=[], metavar="NAME=SPEC",
                       help="override a tolerance (repeatable); see below")
        if from_session:
            p.add_argument("--session", metavar="ID",
                           help="use this finished daemon session's report instead of running")
        _cli_daemon.add_client_options(p, optional=True)
        # The command comes after "--"; tracerd's main() splits it off before argparse.
        p.set_defaults(command=[])
        return p

    cap = common("capture", "run CMD N times and write a golden file", from_session=True)
    cap.add_argument("--runs", type=positive_int, help="runs to capture (default 5)")
    cap.set_defaults(func=_cmd_capture)

    cmp = common("compare", "run CMD once and compare it with a golden file", from_session=True)
    cmp.add_argument("--json", action="store_true",
                     help=f"write the machine-readable verdict ({golden.VERDICT_SCHEMA})")
    cmp.add_argument("--all", action="store_true", help="list every row, not just changes")
    cmp.add_argument("-o", "--output", metavar="FILE",
                     help="write the table or verdict to FILE instead of stderr")
    cmp.set_defaults(func=_cmd_compare)

    upd = common("update", "recapture CMD, show the diff against FILE, then rewrite FILE",
                 from_session=False)
    upd.add_argument("--runs", type=positive_int, default=5, help="runs to capture (default 5)")
    upd.add_argument("--all", action="store_true", help="list every row, not just changes")
    upd.set_defaults(func=_cmd_update)


# ---------------------------------------------------------------------- files


def load(path: str) -> dict[str, Any]:
    try:
        return golden.load_golden(path)
    except golden.GoldenUnreadable as e:
        raise Unreadable(str(e)) from None
    except golden.GoldenError as e:
        raise BadInput(str(e)) from None


def write(path: str, data: dict[str, Any]) -> None:
    # Written beside the target and renamed: an interrupted write never leaves a
    # truncated baseline behind.
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(golden.dumps_golden(data))
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise TracerdError(f"cannot write {path}: {e.strerror}", EXIT_CANTCREAT) from None


def _tolerances(base: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    try:
        return golden.apply_tolerance_overrides(base, overrides)
    except ValueError as e:
        raise TracerdError(str(e), EXIT_USAGE) from None


def _name_of(report: Report) -> Any:
    # The report's own arch: a daemon elsewhere may run on another one.
    return syscalls.table_for(report.arch or None).name


def capture(reports: list[Report], command: list[str],
            tolerances: dict[str, Any] = golden.DEFAULT_TOLERANCES) -> dict[str, Any]:
    try:
        return golden.capture_from_reports(reports, command, _name_of(reports[0]),
                                           tolerances=tolerances)
    except ValueError as e:
        raise TracerdError(f"cannot capture a golden trace: {e}") from None


# ---------------------------------------------------------------------- runs


def _runs(args: argparse.Namespace, command: list[str], runs: int, *,
          progress: bool = True) -> list[Report]:
    """``runs`` traced runs of ``command``, here or through the daemon (--remote)."""
    reports: list[Report] = []

    def done(report: Report, status: int) -> None:
        reports.append(report)
        took = golden.tree_duration_ns(report) or 0
        if progress:
            print(f"tracerd: run {len(reports)}/{runs}: status {status}, {took / 1e6:.1f} ms",
                  file=sys.stderr)

    if args.remote is not None:
        for _ in range(runs):
            report, status, _, _ = _cli_daemon.run_remote(args, command, peak_rss=True)
            done(report, status)
        return reports
    from ._probe import Limits, Probe  # noqa: PLC0415
    from ._run import run_command  # noqa: PLC0415

    # One probe for every run: loading BPF once keeps the runs alike.
    with Probe(Limits.for_this_kernel()) as probe:
        for _ in range(runs):
            outcome = run_command(probe, command, peak_rss=True)
            done(outcome.report, outcome.status)
    return reports


def _session_report(args: argparse.Namespace) -> Report:
    """The report of a finished daemon session (--session ID)."""
    from ._sessions import State  # noqa: PLC0415

    if args.remote is None:
        args.remote = os.environ.get("TRACERD_ADDR", DEFAULT_SOCKET)
    with _cli_daemon.connect(args) as client:
        summary, report = client.report(args.session)
    if summary.state == State.RUNNING:
        raise TracerdError(f"session {args.session} is still running: a golden trace needs "
                           "a finished one (stop it, or wait for it to end)", EXIT_DATAERR)
    return report


def _command(args: argparse.Namespace, recorded: list[str] | None) -> list[str]:
    from ._run import resolve_command  # noqa: PLC0415

    command: list[str] = list(args.command) or list(recorded or [])
    if not command:
        # A session on a pid, cgroup or exec rule records no command of its own.
        raise TracerdError("no command: give -- CMD [ARGS...]", EXIT_USAGE)
    if not getattr(args, "session", None):
        resolve_command(command[0])  # fail before loading BPF
    return command


# ---------------------------------------------------------------------- commands


def _cmd_capture(args: argparse.Namespace) -> int:
    tolerances = _tolerances(golden.DEFAULT_TOLERANCES, args.tolerance)
    if args.session:
        if args.runs is not None:
            raise TracerdError("--session is one run: it cannot be combined with --runs",
                               EXIT_USAGE)
        report = _session_report(args)
        command = _command(args, report.command)
        reports = [report]
    else:
        command = _command(args, None)
        reports = _runs(args, command, args.runs or 5)
    write(args.file, capture(reports, command, tolerances))
    print(f"tracerd: golden written to {args.file} ({len(reports)} run"
          f"{'s' if len(reports) != 1 else ''})", file=sys.stderr)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    baseline = load(args.file)
    baseline["tolerances"] = _tolerances(baseline["tolerances"], args.tolerance)
    with output(args.output) as out:
        if args.session:
            report = _session_report(args)
            command = _command(args, report.command)
        else:
            command = _command(args, baseline["command"])
            report = _runs(args, command, 1, progress=False)[0]
        result = golden.compare(baseline, report, _name_of(report), command=command)
        if args.json:
            out.write(json.dumps(golden.verdict_to_dict(result, args.file), indent=2,
                                 sort_keys=True) + "\n")
        else:
            out.write(golden.render_diff(result, all_rows=args.all,
                                         title=f"tracerd: {' '.join(command)} against "
                                               f"{args.file}:"))
    return golden.EXIT_REGRESSION if result.failed else 0


def _cmd_update(args: argparse.Namespace) -> int:
    old: dict[str, Any] | None = None
    try:
        old = golden.load_golden(args.file)
    except golden.GoldenUnreadable as e:
        if os.path.exists(args.file):
            raise Unreadable(str(e)) from None
        print(f"tracerd: {args.file} does not exist yet: writing a first baseline",
              file=sys.stderr)
    except golden.GoldenError as e:
        # The point of update is to replace the file; its old content stays in git. The
        # command is still worth keeping when only the rest was unusable.
        print(f"tracerd: old baseline unusable, replacing it: {e}", file=sys.stderr)
    salvaged = _salvage(args.file) if old is None else {}
    command = _command(args, old["command"] if old is not None else salvaged.get("command"))
    # The reviewer's tolerances (and per-syscall overrides) survive a recapture, also
    # from a file too old to load when they are still valid.
    base = old["tolerances"] if old is not None else salvaged.get(
        "tolerances", golden.DEFAULT_TOLERANCES)
    tolerances = _tolerances(base, args.tolerance)
    new = capture(_runs(args, command, args.runs), command, tolerances)
    if old is not None:
        sys.stderr.write(golden.render_diff(
            golden.compare_goldens(old, new), all_rows=args.all,
            title=f"tracerd: {args.file}: new medians against the old baseline:"))
    write(args.file, new)
    print(f"tracerd: updated {args.file} ({args.runs} runs)", file=sys.stderr)
    return 0


def _salvage(path: str) -> dict[str, Any]:
    """The command and tolerances of a golden file too old or damaged to load, where
    they are still valid on their own."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    out: dict[str, Any] = {}
    cmd = data.get("command")
    if isinstance(cmd, list) and cmd and all(isinstance(c, str) for c in cmd):
        out["command"] = cmd
    # Absent or no longer valid: the defaults apply.
    with contextlib.suppress(golden.GoldenError):
        out["tolerances"] = golden.check_tolerances(data.get("tolerances"), path)
    return out


# ---------------------------------------------------------------------- run --save-golden


def after_run(args: argparse.Namespace, report: Report, command: list[str],
              baseline: dict[str, Any] | None) -> bool:
    """``run --against/--save-golden``: print the verdict, write the file; True if regressed."""
    regressed = False
    if baseline is not None:
        result = golden.compare(baseline, report, _name_of(report), command=command)
        sys.stderr.write(golden.render_diff(result, title=f"tracerd: against {args.against}:"))
        regressed = result.failed
    if args.save_golden:
        write(args.save_golden, capture([report], command))
        print(f"tracerd: golden written to {args.save_golden} (1 run)", file=sys.stderr)
    return regressed
