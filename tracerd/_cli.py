"""The ``tracerd`` command line."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from . import __version__, syscalls
from ._aggregate import filter_report
from ._errors import EXIT_CANTCREAT, EXIT_USAGE, TracerdError

_RUN_EPILOG = """\
exit status: CMD's own (128+N if killed by signal N); tracerd's own errors:
  2 usage, 66 no such process (-p), 69 BPF unusable, 72 kernel headers missing,
  73 output file, 77 not privileged, 78 BCC missing, 126 CMD not executable,
  127 CMD not found.
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
    run.add_argument("command", nargs=argparse.REMAINDER, help="CMD [ARGS...]")
    run.set_defaults(func=_cmd_run)
    return parser


def _syscall_filter(specs: list[str], arch: str) -> frozenset[int] | None:
    if not specs:
        return None
    cleaned = [s.split("=", 1)[1] if s.startswith("trace=") else s for s in specs]
    try:
        return syscalls.resolve(cleaned, arch)
    except ValueError as e:
        raise TracerdError(str(e), EXIT_USAGE) from None


def _open_output(path: str | None) -> TextIO:
    if path is None:
        return sys.stderr
    try:
        return open(path, "w")
    except OSError as e:
        raise TracerdError(f"cannot write {path}: {e.strerror}", EXIT_CANTCREAT) from None


def _say_attached(pid: int) -> None:
    # strace's wording, so scripts waiting for it work with both.
    print(f"tracerd: Process {pid} attached", file=sys.stderr, flush=True)


def _cmd_run(args: argparse.Namespace) -> int:
    # Imported here so that `tracerd --help` and usage errors stay instant.
    from . import render  # noqa: PLC0415
    from ._probe import Limits, Probe  # noqa: PLC0415
    from ._run import attach, resolve_command, run_command  # noqa: PLC0415

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.pid is None and not command:
        raise TracerdError("nothing to trace: give -p PID or -- CMD [ARGS...]", EXIT_USAGE)
    if args.pid is not None and command:
        raise TracerdError("give either -p PID or a command, not both", EXIT_USAGE)
    if command:
        resolve_command(command[0])  # fail before spending time loading BPF
    arch = syscalls.current_arch()
    keep = _syscall_filter(args.syscalls, arch)
    table = syscalls.table_for(arch)
    out = _open_output(args.output)
    overrides = {"max_stats": args.max_stats} if args.max_stats else {}
    try:
        with Probe(Limits.for_this_kernel(**overrides)) as probe:
            if args.pid is not None:
                outcome = attach(probe, args.pid, duration=args.duration,
                                 on_attached=_say_attached)
            else:
                outcome = run_command(probe, command, duration=args.duration)
        report = filter_report(outcome.report, keep)
        if args.json:
            out.write(render.report_to_json(report, table.name))
        else:
            out.write(render.render_text(report, table.name, per_process=args.per_process,
                                         percentiles=args.percentiles))
    finally:
        if out is not sys.stderr:
            out.close()
    # Only once the summary is complete on disk: a script waiting for this line may
    # read the file at once.
    if outcome.interrupted:
        print(f"tracerd: tracing stopped early: {outcome.interrupted}", file=sys.stderr)
    return outcome.wait_status()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except TracerdError as e:
        print(f"tracerd: {e}", file=sys.stderr)
        return e.exit_status
    return status
