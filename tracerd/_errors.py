"""Errors that end tracerd with a one-line message and a distinct exit status.

The statuses follow sysexits(3) where one fits, and the shell's 126/127 for a command
that cannot be executed or found. They are documented in the README.
"""

from __future__ import annotations

EXIT_USAGE = 2  #: bad command line (argparse's own status)
EXIT_BUDGET_FAILED = 5  #: an assertion of the budget that fails the session failed
EXIT_DATAERR = 65  #: bad input data, e.g. an unknown syscall name in -e
EXIT_NOINPUT = 66  #: an input file (golden, budget, function timeline) cannot be read
EXIT_NO_TARGET = 67  #: -p names no process, or a session id names no session
EXIT_BPF_UNUSABLE = 69  #: the kernel refused to load or attach the BPF programs
EXIT_NO_HEADERS = 72  #: no kernel headers for BCC to compile against
EXIT_CANTCREAT = 73  #: the -o output file cannot be created
EXIT_NO_PRIVILEGE = 77  #: not root, or lacking CAP_BPF + CAP_PERFMON
EXIT_NO_BCC = 78  #: BCC's Python module is not installed
EXIT_NOT_EXECUTABLE = 126  #: CMD exists but cannot be executed
EXIT_NOT_FOUND = 127  #: CMD not found


class TracerdError(Exception):
    """An error reported as ``tracerd: <message>`` with ``exit_status``."""

    exit_status = 1

    def __init__(self, message: str, exit_status: int | None = None) -> None:
        super().__init__(message)
        if exit_status is not None:
            self.exit_status = exit_status


class NoPrivilege(TracerdError):
    exit_status = EXIT_NO_PRIVILEGE


class BccMissing(TracerdError):
    exit_status = EXIT_NO_BCC


class HeadersMissing(TracerdError):
    exit_status = EXIT_NO_HEADERS


class BpfUnusable(TracerdError):
    exit_status = EXIT_BPF_UNUSABLE


class NoSuchProcess(TracerdError):
    exit_status = EXIT_NO_TARGET


class Unreadable(TracerdError):
    exit_status = EXIT_NOINPUT


class BadInput(TracerdError):
    exit_status = EXIT_DATAERR
