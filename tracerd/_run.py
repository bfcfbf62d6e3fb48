"""``tracerd run``: trace a command and its descendants, or attach to a running process.

The command is tracked before it executes anything, with strace's own handshake: the
forked child stops itself with SIGSTOP; tracerd sees the stop (waitpid WUNTRACED), marks
the child's pid as tracked in the kernel, and sends SIGCONT. The child's kill(2) had
already returned when it stopped, and its next syscall is the execve, so the first call
counted is the execve itself, exactly as under ``strace -f``. (A pipe read instead would
race: the parent could mark the child before the child reached the read.) Processes it
forks are tracked by the kernel itself (task_newtask), before they can run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _procfs
from ._aggregate import Aggregate
from ._errors import EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, NoSuchProcess, TracerdError
from ._probe import Probe
from .model import Drops, ExitStatus, ProcessInfo, Report

if TYPE_CHECKING:
    from ._budgets import Assertion
    from ._events import EventBatch, EventFilter, EventSubscriber
    from ._sessions import Violation
    from ._taskstats import ExitListener

#: How long one ring-buffer poll may block; bounds how late a missed exit is noticed.
POLL_MS = 100


@dataclass
class Outcome:
    report: Report
    status: int  #: what tracerd exits with (CMD's status, as a shell reports it)
    interrupted: str | None = None  #: why tracing stopped early, if it did
    running_pid: int | None = None  #: CMD, still running after --duration; see wait_status()

    def wait_status(self) -> int:
        """CMD's shell status, waiting for it first if tracing stopped before it exited."""
        if self.running_pid is not None:
            _, raw = os.waitpid(self.running_pid, 0)
            self.status = ExitStatus.from_wait_status(raw).shell_status()
            self.running_pid = None
        return self.status


def resolve_command(name: str) -> str:
    """The path execve will run, with a shell's 127/126 errors."""
    path = name if "/" in name else shutil.which(name)
    if path is None or not os.path.exists(path):
        raise TracerdError(f"{name}: command not found", EXIT_NOT_FOUND)
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise TracerdError(f"{name}: permission denied", EXIT_NOT_EXECUTABLE)
    return path


def _sudo_credentials() -> tuple[int, int, list[int]] | None:
    """Under sudo, CMD runs as the invoking user, as it would without tracerd."""
    if os.geteuid() != 0 or "SUDO_UID" not in os.environ:
        return None
    uid, gid = int(os.environ["SUDO_UID"]), int(os.environ.get("SUDO_GID", "0"))
    try:
        groups = os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
    except KeyError:
        groups = [gid]
    return uid, gid, groups


def _spawn_stopped(path: str, argv: list[str]) -> tuple[int, int]:
    """Fork a child that stops itself, then execve's ``path`` once continued.

    Returns (pid, err_fd): err_fd yields the errno of a failed execve, or EOF once the
    exec succeeded (its write end is close-on-exec).
    """
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    creds = _sudo_credentials()
    pid = os.fork()
    if pid == 0:  # child
        code = 127
        try:
            os.close(err_r)
            if creds is not None:
                uid, gid, groups = creds
                os.setgroups(groups)
                os.setgid(gid)
                os.setuid(uid)
            for sig in (signal.SIGINT, signal.SIGQUIT):
                signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGSTOP)
            # Nothing but execve from here on.
            os.execve(path, argv, os.environ)
        except OSError as e:
            code = EXIT_NOT_EXECUTABLE if e.errno in (errno.EACCES, errno.ENOEXEC) else 127
            with contextlib.suppress(OSError):
                os.write(err_w, str(e.errno or 0).encode())
        os._exit(code)
    os.close(err_w)
    _, status = os.waitpid(pid, os.WUNTRACED)
    if not os.WIFSTOPPED(status):  # the child failed before it could stop
        os.close(err_r)
        raise TracerdError(f"{argv[0]}: could not start", EXIT_NOT_FOUND)
    return pid, err_r


class Tracer:
    """Drives one trace: polls events, moves dead processes' counts out of the map."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.agg = Aggregate()
        self.start_ns = time.monotonic_ns()

    def step(self, timeout_ms: int = POLL_MS) -> None:
        gone = self.agg.on_events(self.probe.poll_events(timeout_ms))
        if gone:
            self.agg.add_done(self.probe.delete_stats(gone))

    def live(self) -> list[int]:
        """Known processes the kernel still tracks (it clears the flag at group death,
        so this holds even if an exit event was lost)."""
        agg = self.agg
        return [p for p in agg.processes if p not in agg.exited and self.probe.is_tracked(p)]

    def finish(self, *, command: list[str], root_pid: int, exit: ExitStatus | None) -> Report:
        self.step(0)  # events already in the ring buffer
        for pid in self.live():
            self.probe.untrack(pid)
        self.agg.add_done(self.probe.delete_stats(self.agg.processes))
        drops: Drops = self.probe.drops()
        uname = os.uname()
        return self.agg.report(command=command, arch=uname.machine, kernel=uname.release,
                               root_pid=root_pid, start_ns=self.start_ns,
                               end_ns=time.monotonic_ns(), exit=exit, drops=drops)


def _deadline(duration: float | None) -> float | None:
    return time.monotonic() + duration if duration is not None else None


def spawn_tracked(argv: list[str], register: Callable[[int, str], None]) -> int:
    """Start CMD stopped, let ``register(pid, path)`` track it, then let it exec.

    The caller has SIGINT/SIGQUIT ignored (see run_command). Raises TracerdError with
    the shell's 126/127 when the exec fails; ``register`` raising kills the child.
    """
    path = resolve_command(argv[0])
    pid, err_r = _spawn_stopped(path, argv)
    try:
        register(pid, path)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(err_r)
        raise
    os.kill(pid, signal.SIGCONT)
    failed = os.read(err_r, 16)
    os.close(err_r)
    if failed:
        os.waitpid(pid, 0)
        err = int(failed)
        status = EXIT_NOT_EXECUTABLE if err in (errno.EACCES, errno.ENOEXEC) else EXIT_NOT_FOUND
        raise TracerdError(f"{argv[0]}: {os.strerror(err)}", status)
    return pid


@contextlib.contextmanager
def terminal_signals() -> Iterator[Callable[[int], None]]:
    """CMD owns the terminal's interrupt keys; tracerd waits for it, as time(1) does.

    Yields ``forward(pid)``, which sends SIGTERM/SIGHUP received by tracerd on to CMD,
    which decides; tracerd then reports. Everything is restored on exit.
    """
    old: dict[signal.Signals, Any] = {
        s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGQUIT)
    }

    def forward(pid: int) -> None:
        for s in (signal.SIGTERM, signal.SIGHUP):
            old.setdefault(s, signal.signal(s, lambda sig, _f: os.kill(pid, sig)))

    try:
        yield forward
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_command(probe: Probe, argv: list[str], *, duration: float | None = None,
                budget: Sequence[Assertion] = (), peak_rss: bool = False,
                on_violation: Callable[[Violation], None] | None = None,
                events: EventFilter | None = None,
                on_events: Callable[[EventBatch], None] | None = None) -> Outcome:
    """Trace CMD and every descendant until all have exited (or ``duration``).

    Runs on a hub of its own, the daemon's sessions code, so a local run and a run
    through the daemon count, evaluate budgets and enforce them identically.
    """
    from ._sessions import (  # noqa: PLC0415 - the daemon's core, only needed here
        Caller,
        Hub,
        HubLimits,
        RequestError,
        SessionOptions,
        SpawnedTarget,
        State,
    )

    def report_violation(_sess: object, v: Violation) -> None:
        if on_violation is not None:
            on_violation(v)

    # The hub opens the taskstats listener only while a session measures peak RSS.
    hub = Hub(probe, HubLimits(max_limits=probe.limits.max_limits),
              exit_source=_exit_listener, on_violation=report_violation)
    local = Caller(name="local")
    opts = SessionOptions(duration_ms=round(duration * 1000) if duration else 0,
                          per_process=True, budget=tuple(budget), peak_rss=peak_rss,
                          events=events is not None,
                          event_syscalls=(events.syscalls or None) if events else None)
    sid: list[str] = []
    readers: list[threading.Thread] = []

    def register(pid: int, _path: str) -> None:
        try:
            sid.append(hub.start(local, SpawnedTarget(pid=pid, argv=tuple(argv)), opts).id)
            if events is not None and on_events is not None:
                # Subscribed before CMD runs: its first event (the execve) included.
                sub = hub.subscribe_events(local, sid[0], events)
                readers.append(threading.Thread(target=_deliver, args=(sub, on_events),
                                                name="tracerd-event-sink", daemon=True))
                readers[0].start()
        except RequestError as e:
            raise TracerdError(str(e)) from None

    with terminal_signals() as forward:
        pid = spawn_tracked(argv, register)
        forward(pid)
        sess = hub.sessions[sid[0]]
        wait_status: int | None = None
        # Like strace -f, the trace lasts until every traced descendant is gone, not
        # just CMD: the session ends when the last of its processes exits.
        while sess.state == State.RUNNING:
            hub.step(POLL_MS)
            if wait_status is None:
                wpid, st = os.waitpid(pid, os.WNOHANG)
                wait_status = st if wpid else None
        if wait_status is None:
            # Ended with every process gone: CMD is a zombie waiting for this wait.
            ended = sess.state == State.FINISHED
            wpid, st = os.waitpid(pid, 0 if ended else os.WNOHANG)
            wait_status = st if wpid else None
        _, report = hub.report(local, sess.id)
        for t in readers:
            t.join()
        exit = ExitStatus.from_wait_status(wait_status) if wait_status is not None else None
        if exit is not None:
            report.exit = exit
            if pid in report.processes:
                report.processes[pid].exit = exit
        # After --duration the summary is final while CMD goes on; its status is
        # still what tracerd returns, once the caller has written the summary.
        return Outcome(report=report, status=exit.shell_status() if exit else 0,
                       interrupted=report.interrupted, running_pid=None if exit else pid)


def _deliver(sub: EventSubscriber, sink: Callable[[EventBatch], None]) -> None:
    """Hand a subscriber's batches to ``sink`` until the last one."""
    while True:
        batch = sub.next_batch(timeout_s=0.5)
        if batch is None:
            continue
        sink(batch)
        if batch.last:
            return


def _exit_listener() -> ExitListener:
    from ._taskstats import ExitListener  # noqa: PLC0415 - netlink, only to measure RSS

    return ExitListener()


def attach(probe: Probe, pid: int, *, duration: float | None = None,
           on_attached: Callable[[int], None] | None = None) -> Outcome:
    """Trace a running process and the processes it forks from now on, until it and
    they exit, Ctrl-C, or ``duration``."""
    argv = _procfs.cmdline(pid)
    if argv is None or not _procfs.alive(pid):
        raise NoSuchProcess(f"no such process: {pid}")
    tracer = Tracer(probe)
    probe.track(pid)
    # Checked again after tracking: a process that died in between would otherwise
    # stay "tracked" forever, its exit having happened before the flag was set.
    if not _procfs.alive(pid):
        probe.untrack(pid)
        raise NoSuchProcess(f"no such process: {pid} (it exited while attaching)")
    st = _procfs.stat(pid)
    tracer.agg.add_process(ProcessInfo(pid=pid, ppid=st[1] if st else 0,
                                       comm=_procfs.comm(pid), argv=argv,
                                       uid=_procfs.uid(pid), cgroup=_procfs.cgroup(pid),
                                       start_ns=time.monotonic_ns()))
    if on_attached:
        on_attached(pid)
    deadline = _deadline(duration)
    interrupted = None
    try:
        while tracer.live():
            tracer.step()
            if deadline is not None and time.monotonic() >= deadline:
                interrupted = "duration limit reached"
                break
    except KeyboardInterrupt:
        interrupted = "interrupted"
    report = tracer.finish(command=argv, root_pid=pid, exit=None)
    report.interrupted = interrupted
    return Outcome(report=report, status=0, interrupted=interrupted)
