"""The ``tracerd`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from . import __version__, _cli_daemon, _cli_golden, _top, syscalls
from ._aggregate import filter_report
from ._cli_daemon import non_negative_int, positive_float, positive_int
from ._errors import (
    EXIT_BUDGET_FAILED,
    EXIT_USAGE,
    TracerdError,
)
from .golden import EXIT_REGRESSION

if TYPE_CHECKING:
    from ._sessions import Violation
    from .model import Report

_RUN_EPILOG = """\
exit status: CMD's own (128+N if killed by signal N); tracerd's own errors:
  2 usage, 67 no such process (-p), 69 BPF unusable, 72 kernel headers missing,
  73 output file, 77 not privileged, 78 BCC missing, 126 CMD not executable,
  127 CMD not found.
with --against FILE: 3 when the run regressed against the golden file (65: the file is
  corrupt, 66: it cannot be read); otherwise CMD's status.
with --budget FILE: 5 when an assertion that fails the session failed (65: the file is
  malformed, 66: it cannot be read); it takes precedence over 3 and CMD's status.
"""




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
    run.add_argument("-p", "--pid", type=positive_int,
                     help="attach to a running process and the processes it forks")
    run.add_argument("-e", "--syscalls", action="append", metavar="SPEC", default=[],
                     help="only these syscalls: names and classes (file, network, process, "
                          "memory, signal, ipc, desc, creds), comma-separated, repeatable; "
                          "trace=%%file style accepted")
    run.add_argument("--duration", type=positive_float, metavar="SECONDS",
                     help="stop tracing after SECONDS")
    run.add_argument("--count-only", action="store_true",
                     help="count calls only, at entry (about half the cost; no errors, "
                          "times, events, budgets or golden files), like syscount")
    run.add_argument("--max-stats", type=positive_int, metavar="N",
                     help="size of the kernel's (process, syscall) map (default 65536)")
    run.add_argument("--max-blocks", type=non_negative_int, metavar="N",
                     help="counter blocks: processes counted by the fast path at once; the "
                          "rest go to the map (0: none; default: as many as 64 MiB holds)")
    run.add_argument("--save-golden", metavar="FILE",
                     help="also write this run as a golden file (a one-run baseline)")
    run.add_argument("--against", metavar="FILE",
                     help="compare this run with a golden file; exit 3 on regression")
    run.add_argument("--budget", metavar="FILE",
                     help="evaluate renacer.toml-style [[assertion]]s; exit 5 when one fails")
    ev = run.add_argument_group("per-syscall events (strace-style; -e selects them in kernel)")
    ev.add_argument("--events", action="store_true",
                    help="print one line per syscall (with --json: the events document) "
                         "instead of the summary")
    ev.add_argument("-f", "--follow-forks", action="store_true",
                    help="--events: prefix lines of other threads/processes with [pid N]")
    ev.add_argument("--summary", action="store_true",
                    help="--events: print the summary after the events too (strace -C)")
    run.add_argument("command", nargs=argparse.REMAINDER, help="CMD [ARGS...]")
    run.set_defaults(func=_cmd_run)
    _cli_daemon.add_client_options(run, optional=True)
    _cli_golden.add_golden(sub, positive_int)
    _cli_daemon.add_serve(sub)
    _cli_daemon.add_sessions(sub)
    _top.add_top(sub)
    # Parsed by tracerd.enrich itself (main() hands it over); listed here for --help.
    sub.add_parser("enrich", add_help=False,
                   help="attribute syscall events to the functions of a debugger's timeline")
    return parser


def _say_violation(v: Violation) -> None:
    print(_cli_daemon.violation_line(v), file=sys.stderr, flush=True)


def _exit_line(report: Report) -> str | None:
    """strace's last line for the traced command."""
    e = report.exit
    if e is None:
        return None
    return f"+++ {e.describe()} +++"


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
    if args.events and (args.pid is not None or wants_golden):
        raise TracerdError("--events needs a command to run: not with -p, --save-golden or "
                           "--against", EXIT_USAGE)
    if not args.events and (args.follow_forks or args.summary):
        raise TracerdError("-f and --summary go with --events", EXIT_USAGE)
    if args.events and args.json and args.summary:
        raise TracerdError("--events --json writes one document: no --summary", EXIT_USAGE)
    if args.count_only:
        clash = [flag for flag, on in (("--events", args.events), ("--budget", args.budget),
                                       ("--save-golden", args.save_golden),
                                       ("--against", args.against),
                                       ("--percentiles", args.percentiles),
                                       ("--remote", args.remote is not None)) if on]
        if clash:
            raise TracerdError(f"--count-only measures calls only: not with {clash[0]}",
                               EXIT_USAGE)
    baseline = _cli_golden.load(args.against) if args.against else None
    budget = _cli_daemon.load_budget(args.budget)
    if command:
        resolve_command(command[0])  # fail before spending time loading BPF
    arch = syscalls.current_arch()
    keep = _cli_daemon.syscall_filter(args.syscalls, arch)
    if args.remote is not None and (args.pid is not None or args.max_stats
                                    or args.max_blocks is not None):
        raise TracerdError("--remote runs a command through the daemon: it cannot be "
                           "combined with -p, --max-stats or --max-blocks", EXIT_USAGE)
    overrides = {"max_stats": args.max_stats} if args.max_stats else {}
    if args.max_blocks is not None:
        overrides["max_blocks"] = args.max_blocks
    with _cli_golden.output(args.output) as out:
        writer = flt = None
        if args.events:
            from ._cli_events import EventWriter  # noqa: PLC0415
            from ._events import EventFilter  # noqa: PLC0415

            writer = EventWriter(out, syscalls.table_for(arch), as_json=args.json,
                                 follow=args.follow_forks, program=command)
            flt = EventFilter(syscalls=keep or frozenset())
        try:
            if args.remote is not None:
                report, status, why, running = _cli_daemon.run_remote(
                    args, command, budget, peak_rss=wants_golden, on_events=writer)
                outcome = Outcome(report=report, status=status, interrupted=why,
                                  running_pid=running)
            else:
                with Probe(Limits.for_this_kernel(**overrides),
                           count_only=args.count_only) as probe:
                    if args.pid is not None:
                        outcome = attach(probe, args.pid, duration=args.duration,
                                         on_attached=_say_attached)
                    else:
                        outcome = run_command(probe, command, duration=args.duration,
                                              budget=budget, peak_rss=wants_golden,
                                              on_violation=_say_violation, events=flt,
                                              on_events=writer)
                    outcome.report.count_only = probe.count_only
        except BaseException:
            if writer is not None:
                writer.close(complete=False)
            raise
        report = filter_report(outcome.report, keep)
        if writer is not None:
            writer.close(exit_line=_exit_line(outcome.report))
        if writer is None or (args.summary and not args.json):
            _cli_daemon.print_report(report, args, out)
    # Only once the summary is complete on disk: a script waiting for this line may
    # read the file at once.
    if outcome.interrupted:
        print(f"tracerd: tracing stopped early: {outcome.interrupted}", file=sys.stderr)
    status = outcome.wait_status()
    budget_failed = bool(budget) and outcome.report.budget_failed()
    if not wants_golden:
        return EXIT_BUDGET_FAILED if budget_failed else status
    regressed = _cli_golden.after_run(args, outcome.report, command, baseline)
    if budget_failed:
        return EXIT_BUDGET_FAILED
    return EXIT_REGRESSION if regressed else status


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["enrich"]:
        from . import enrich  # noqa: PLC0415 - its own parser and exit statuses

        return enrich.main(argv[1:])
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
    except BrokenPipeError:
        # `tracerd ... | head`: the reader has what it wanted. Nothing more can be
        # written, so stdout goes to /dev/null for the interpreter's final flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return status
