"""The ``tracerd`` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TextIO

from . import __version__, _cli_daemon, golden, syscalls
from ._aggregate import filter_report
from ._errors import (
    EXIT_BUDGET_FAILED,
    EXIT_CANTCREAT,
    EXIT_NO_PROCESS,
    EXIT_USAGE,
    BadInput,
    TracerdError,
)

if TYPE_CHECKING:
    from ._sessions import Violation
    from .model import Report

_RUN_EPILOG = """\
exit status: CMD's own (128+N if killed by signal N); tracerd's own errors:
  2 usage, 66 no such process (-p), 69 BPF unusable, 72 kernel headers missing,
  73 output file, 77 not privileged, 78 BCC missing, 126 CMD not executable,
  127 CMD not found.
with --against FILE: 3 when the run regressed against the golden file (65: the file is
  corrupt, 66: it cannot be read); otherwise CMD's status.
with --budget FILE: 5 when an assertion that fails the session failed (65: the file is
  malformed, 66: it cannot be read); it takes precedence over 3 and CMD's status.
"""

_GOLDEN_EPILOG = f"""\
CMD defaults to the command recorded in FILE (compare, update).
--tolerance NAME=SPEC: NAME is a syscall (SPEC: exact, ignore, N = +-N calls outside the
  golden [min, max], N% = +-N% of max), or duration=RATIO, duration_slack_ms=MS, rss=RATIO,
  counts=PCT, counts_min_abs=N (the margin for counts that varied during capture).
exit status: compare: 0 pass, {golden.EXIT_REGRESSION} regression; all: 65 corrupt golden file,
  66 golden file unreadable, 73 golden file not writable, 1 a run dropped events (capture),
  and tracerd run's own errors (69, 72, 77, 78, 126, 127).
"""


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tracerd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tracerd {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser(
        "run",
        help="trace CMD and all its descendants (or -p PID) and print a syscall summary",
        usage="tracerd run [options] (-p PID | -- CMD [ARGS...])",
        epilog=_RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("-o", "--output", metavar="FILE",
                     help="write the summary to FILE instead of stderr")
    run.add_argument("--json", action="store_true",
                     help=f"write the versioned JSON report ({'tracerd.report/v1'})")
    run.add_argument("--per-process", action="store_true",
                     help="one table per process, then the total")
    run.add_argument("--percentiles", action="store_true",
                     help="add p50/p99 latency columns from the kernel histogram")
    run.add_argument("-p", "--pid", type=_positive_int,
                     help="attach to a running process and the processes it forks")
    run.add_argument("-e", "--syscalls", action="append", metavar="SPEC", default=[],
                     help="only these syscalls: names and classes (file, network, process, "
                          "memory, signal, ipc, desc, creds), comma-separated, repeatable; "
                          "trace=%%file style accepted")
    run.add_argument("--duration", type=_positive_float, metavar="SECONDS",
                     help="stop tracing after SECONDS")
    run.add_argument("--max-stats", type=_positive_int, metavar="N",
                     help="size of the kernel's (process, syscall) map (default 65536)")
    run.add_argument("--save-golden", metavar="FILE",
                     help="also write this run as a golden file (a one-run baseline)")
    run.add_argument("--against", metavar="FILE",
                     help="compare this run with a golden file; exit 3 on regression")
    run.add_argument("--budget", metavar="FILE",
                     help="evaluate renacer.toml-style [[assertion]]s; exit 5 when one fails")
    run.add_argument("command", nargs=argparse.REMAINDER, help="CMD [ARGS...]")
    run.set_defaults(func=_cmd_run)
    _cli_daemon.add_client_options(run, optional=True)
    _add_golden(sub)
    _cli_daemon.add_serve(sub)
    _cli_daemon.add_sessions(sub)
    return parser


def _add_golden(sub: Any) -> None:
    gold = sub.add_parser("golden", help="capture, compare and update golden traces")
    gsub = gold.add_subparsers(dest="golden_cmd", required=True)

    def common(name: str, help_: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = gsub.add_parser(
            name, help=help_, usage=f"tracerd golden {name} FILE [options] [-- CMD [ARGS...]]",
            epilog=_GOLDEN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("file", metavar="FILE", help="the golden file (tracerd.golden/v1 JSON)")
        p.add_argument("--tolerance", action="append", default=[], metavar="NAME=SPEC",
                       help="override a tolerance (repeatable); see below")
        # The command comes after "--"; main() splits it off before argparse sees it.
        p.set_defaults(command=[])
        return p

    cap = common("capture", "run CMD N times and write a golden file")
    cap.add_argument("--runs", type=_positive_int, default=5, help="runs to capture (default 5)")
    cap.set_defaults(func=_cmd_golden_capture)

    cmp = common("compare", "run CMD once and compare it with a golden file")
    cmp.add_argument("--json", action="store_true",
                     help=f"write the machine-readable verdict ({golden.VERDICT_SCHEMA})")
    cmp.add_argument("--all", action="store_true", help="list every row, not just changes")
    cmp.add_argument("-o", "--output", metavar="FILE",
                     help="write the table or verdict to FILE instead of stderr")
    cmp.set_defaults(func=_cmd_golden_compare)

    upd = common("update", "recapture CMD, show the diff against FILE, then rewrite FILE")
    upd.add_argument("--runs", type=_positive_int, default=5, help="runs to capture (default 5)")
    upd.add_argument("--all", action="store_true", help="list every row, not just changes")
    upd.set_defaults(func=_cmd_golden_update)


def _syscall_filter(specs: list[str], arch: str) -> frozenset[int] | None:
    if not specs:
        return None
    cleaned = [s.split("=", 1)[1] if s.startswith("trace=") else s for s in specs]
    try:
        return syscalls.resolve(cleaned, arch)
    except ValueError as e:
        raise TracerdError(str(e), EXIT_USAGE) from None


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
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


def _say_violation(v: Violation) -> None:
    print(_cli_daemon.violation_line(v), file=sys.stderr, flush=True)


def _say_attached(pid: int) -> None:
    # strace's wording, so scripts waiting for it work with both.
    print(f"tracerd: Process {pid} attached", file=sys.stderr, flush=True)


def _cmd_run(args: argparse.Namespace) -> int:
    # Imported here so that `tracerd --help` and usage errors stay instant.
    from ._probe import Limits, Probe  # noqa: PLC0415
    from ._run import Outcome, attach, resolve_command, run_command  # noqa: PLC0415

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.pid is None and not command:
        raise TracerdError("nothing to trace: give -p PID or -- CMD [ARGS...]", EXIT_USAGE)
    if args.pid is not None and command:
        raise TracerdError("give either -p PID or a command, not both", EXIT_USAGE)
    wants_golden = bool(args.save_golden or args.against)
    if wants_golden and (args.pid is not None or args.syscalls or args.duration):
        # A golden file covers every syscall of a complete run of a command it can rerun.
        raise TracerdError("--save-golden/--against cannot be combined with -p, -e or "
                           "--duration", EXIT_USAGE)
    if args.budget and args.pid is not None:
        raise TracerdError("--budget needs a command to run, not -p", EXIT_USAGE)
    baseline = _load_golden(args.against) if args.against else None
    budget = _cli_daemon.load_budget(args.budget)
    if command:
        resolve_command(command[0])  # fail before spending time loading BPF
    arch = syscalls.current_arch()
    keep = _syscall_filter(args.syscalls, arch)
    table = syscalls.table_for(arch)
    if args.remote is not None and (args.pid is not None or args.max_stats):
        raise TracerdError("--remote runs a command through the daemon: it cannot be "
                           "combined with -p or --max-stats", EXIT_USAGE)
    overrides = {"max_stats": args.max_stats} if args.max_stats else {}
    floor: int | None = None
    with _output(args.output) as out:
        if args.remote is not None:
            if wants_golden:
                floor = _rss_floor_kib()
            report, status, why, running = _cli_daemon.run_remote(args, command, budget)
            outcome = Outcome(report=report, status=status, interrupted=why, running_pid=running)
        else:
            with Probe(Limits.for_this_kernel(**overrides)) as probe:
                if args.pid is not None:
                    outcome = attach(probe, args.pid, duration=args.duration,
                                     on_attached=_say_attached)
                else:
                    if wants_golden:
                        floor = _rss_floor_kib()
                    outcome = run_command(probe, command, duration=args.duration,
                                          budget=budget, on_violation=_say_violation)
        report = filter_report(outcome.report, keep)
        _cli_daemon.print_report(report, args, out)
    # Only once the summary is complete on disk: a script waiting for this line may
    # read the file at once.
    if outcome.interrupted:
        print(f"tracerd: tracing stopped early: {outcome.interrupted}", file=sys.stderr)
    status = outcome.wait_status()
    budget_failed = bool(budget) and outcome.report.budget_failed()
    if not wants_golden:
        return EXIT_BUDGET_FAILED if budget_failed else status
    rss = _children_maxrss_kib()
    regressed = False
    if baseline is not None:
        result = golden.compare(baseline, outcome.report, table.name, peak_rss_kib=rss,
                                rss_floor_kib=floor, command=command)
        sys.stderr.write(golden.render_diff(result, title=f"tracerd: against {args.against}:"))
        regressed = result.failed
    if args.save_golden:
        _write_golden(args.save_golden, _capture([outcome.report], command, [rss], floor,
                                                 golden.DEFAULT_TOLERANCES))
        print(f"tracerd: golden written to {args.save_golden} (1 run)", file=sys.stderr)
    if budget_failed:
        return EXIT_BUDGET_FAILED
    return golden.EXIT_REGRESSION if regressed else status


# --------------------------------------------------------------------------------------------
# Golden traces
# --------------------------------------------------------------------------------------------


def _children_maxrss_kib() -> int:
    """Largest peak RSS among the processes tracerd has waited for, and their waited-for
    descendants (Linux ru_maxrss, KiB): a high-water mark that never decreases."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def _rss_floor_kib() -> int:
    """What ru_maxrss reports for a command that uses no memory at all.

    The kernel folds the peak of the pre-exec image into the exec'ing process's maxrss,
    and run_command's child is a fork of tracerd: a child that exits at once measures it.
    """
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    _, _, usage = os.wait4(pid, 0)
    return usage.ru_maxrss


def _load_golden(path: str) -> dict[str, Any]:
    try:
        return golden.load_golden(path)
    except golden.GoldenUnreadable as e:
        raise TracerdError(str(e), EXIT_NO_PROCESS) from None  # 66: EX_NOINPUT
    except golden.GoldenError as e:
        raise BadInput(str(e)) from None


def _write_golden(path: str, data: dict[str, Any]) -> None:
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


def _capture(reports: list[Report], command: list[str], rss: list[int | None],
             floor: int | None, tolerances: dict[str, Any]) -> dict[str, Any]:
    try:
        return golden.capture_from_reports(reports, command, syscalls.table_for().name,
                                           peak_rss_kib=rss, rss_floor_kib=floor,
                                           tolerances=tolerances)
    except ValueError as e:
        raise TracerdError(f"cannot capture a golden trace: {e}") from None


def _traced_runs(command: list[str], runs: int) -> tuple[list[Report], list[int | None], int]:
    """Run ``command`` ``runs`` times under one loaded probe: reports, peak RSS, RSS floor."""
    from ._probe import Limits, Probe  # noqa: PLC0415
    from ._run import run_command  # noqa: PLC0415

    reports: list[Report] = []
    rss: list[int | None] = []
    with Probe(Limits.for_this_kernel()) as probe:
        floor = _rss_floor_kib()
        for i in range(runs):
            outcome = run_command(probe, command)
            rss.append(_children_maxrss_kib())
            reports.append(outcome.report)
            took = golden.tree_duration_ns(outcome.report) or 0
            print(f"tracerd: run {i + 1}/{runs}: status {outcome.status}, "
                  f"{took / 1e6:.1f} ms", file=sys.stderr)
    return reports, rss, floor


def _golden_command(args: argparse.Namespace, recorded: dict[str, Any] | None) -> list[str]:
    from ._run import resolve_command  # noqa: PLC0415

    command: list[str] = list(args.command) or (list(recorded["command"]) if recorded else [])
    if not command:
        raise TracerdError("nothing to run: give -- CMD [ARGS...]", EXIT_USAGE)
    resolve_command(command[0])  # fail before loading BPF
    return command


def _cmd_golden_capture(args: argparse.Namespace) -> int:
    command = _golden_command(args, None)
    tolerances = _tolerances(golden.DEFAULT_TOLERANCES, args.tolerance)
    reports, rss, floor = _traced_runs(command, args.runs)
    _write_golden(args.file, _capture(reports, command, rss, floor, tolerances))
    print(f"tracerd: golden written to {args.file} ({args.runs} runs)", file=sys.stderr)
    return 0


def _cmd_golden_compare(args: argparse.Namespace) -> int:
    from ._probe import Limits, Probe  # noqa: PLC0415
    from ._run import run_command  # noqa: PLC0415

    baseline = _load_golden(args.file)
    command = _golden_command(args, baseline)
    baseline["tolerances"] = _tolerances(baseline["tolerances"], args.tolerance)
    with _output(args.output) as out:
        with Probe(Limits.for_this_kernel()) as probe:
            floor = _rss_floor_kib()
            outcome = run_command(probe, command)
        result = golden.compare(baseline, outcome.report, syscalls.table_for().name,
                                peak_rss_kib=_children_maxrss_kib(), rss_floor_kib=floor,
                                command=command)
        if args.json:
            out.write(json.dumps(golden.verdict_to_dict(result, args.file), indent=2,
                                 sort_keys=True) + "\n")
        else:
            out.write(golden.render_diff(result, all_rows=args.all,
                                         title=f"tracerd: {' '.join(command)} against "
                                               f"{args.file}:"))
    return golden.EXIT_REGRESSION if result.failed else 0


def _cmd_golden_update(args: argparse.Namespace) -> int:
    old: dict[str, Any] | None = None
    try:
        old = golden.load_golden(args.file)
    except golden.GoldenUnreadable as e:
        if os.path.exists(args.file):
            raise TracerdError(str(e), EXIT_NO_PROCESS) from None
        print(f"tracerd: {args.file} does not exist yet: writing a first baseline",
              file=sys.stderr)
    except golden.GoldenError as e:
        # The point of update is to replace the file; its old content stays in git.
        print(f"tracerd: old baseline unusable, replacing it: {e}", file=sys.stderr)
    command = _golden_command(args, old)
    # The reviewer's tolerances (and per-syscall overrides) survive a recapture.
    base = old["tolerances"] if old is not None else golden.DEFAULT_TOLERANCES
    tolerances = _tolerances(base, args.tolerance)
    reports, rss, floor = _traced_runs(command, args.runs)
    new = _capture(reports, command, rss, floor, tolerances)
    if old is not None:
        sys.stderr.write(golden.render_diff(
            golden.compare_goldens(old, new), all_rows=args.all,
            title=f"tracerd: {args.file}: new medians against the old baseline:"))
    _write_golden(args.file, new)
    print(f"tracerd: updated {args.file} ({args.runs} runs)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] | None = None
    if argv[:1] == ["golden"] and "--" in argv:
        # argparse cannot take an optional after FILE and then a command: split it off here.
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    if command is not None:
        args.command = command
    try:
        status: int = args.func(args)
    except TracerdError as e:
        print(f"tracerd: {e}", file=sys.stderr)
        return e.exit_status
    return status
