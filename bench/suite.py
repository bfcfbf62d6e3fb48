#!/usr/bin/env python3
"""tracerd against the least any syscall tracer can cost and against the usual tools, on
several workloads, in one interleaved run: the main table of ``make bench``.

    .venv/bin/python bench/suite.py [--quick] [--reps N] [--kernel-reps N]
        [--workloads a,b] [--modes a,b] [--no-install] [--json FILE]

Each run is one workload under bench/timed.c (waits for a byte, fork+execs the workload,
prints its own CLOCK_MONOTONIC elapsed), under one mode:

  untraced       nothing attached;
  floor enter    an empty program on raw_tracepoint sys_enter (what count-only must beat);
  floor          empty programs on sys_enter and sys_exit (what full stats must beat);
  tracerd count  Probe(count_only=True), the wrapper's tree tracked;
  tracerd full   Probe() (calls, errors, latency histogram), the tree tracked;
  untracked      Probe() with a session (a tracked ``sleep``), the measured tree untracked;
  syscount, syscount -L, bpftrace (count per pid and syscall): system-wide, started and
                 attached before the workload, stopped with SIGINT after it;
  perf trace -s, strace -c -f: wrapping the timed wrapper (their start-up not timed);
                 these two run a smaller size of each workload, reported per syscall.

For each repetition and workload, every mode runs back to back in an order rotated by one
each repetition; figures are medians over repetitions of values paired with the untraced
run of the same repetition. A second pass with kernel.bpf_stats_enabled=1 gives the
in-kernel ns per syscall of the floors and tracerd's modes. Verdicts on the issue's
targets follow the table.

Root only. Everything loaded or started is released on exit, error, Ctrl-C or SIGTERM;
kernel.bpf_stats_enabled is restored. See bench/README.md for the method.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from _build import (  # bench/_build.py: scripts run from here
    BPF_STATS,
    Children,
    bpf_stats_enabled,
    build_c,
    ensure_tool,
    machine_facts,
    prog_run_stats,
    syscall_hook_holders,
)

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"  # git-ignored
DEFAULT_JSON = RESULTS / "bench.json"

# An empty program on each hook. Two objects: the count-only target is against the
# enter-only floor (count-only attaches nothing to sys_exit), full stats against both.
FLOOR_ENTER_SRC = b"RAW_TRACEPOINT_PROBE(sys_enter) { return 0; }\n"
FLOOR_SRC = FLOOR_ENTER_SRC + b"RAW_TRACEPOINT_PROBE(sys_exit) { return 0; }\n"

# bpftrace: the same aggregation as tracerd's count-only (per process and syscall).
BPFTRACE_PROG = "tracepoint:raw_syscalls:sys_enter { @[pid, args->id] = count(); }"

READY_TIMEOUT_S = 180.0  # a tool's start-up: BCC compiling syscount on a busy machine
RUN_TIMEOUT_S = 900.0  # one timed run, whatever the tool


class BenchError(Exception):
    """A failure that ends the bench with a one-line message."""


class ToolFailed(Exception):
    """A peer tool failed in one run: its mode is then reported as unusable."""


def log(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Modes and workloads
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    key: str  # JSON and --modes name
    label: str  # table
    kind: str  # "none" | "bpf" (loaded here) | "system" (peer, system-wide) | "wrap"
    slow: bool = False  # runs each workload's smaller size (tools 20-300x slower)


MODES: tuple[Mode, ...] = (
    Mode("untraced", "untraced", "none"),
    Mode("floor_enter", "floor enter", "bpf"),
    Mode("floor", "floor", "bpf"),
    Mode("count", "tracerd count", "bpf"),
    Mode("full", "tracerd full", "bpf"),
    Mode("untracked", "tracerd untracked", "bpf"),
    Mode("syscount", "syscount", "system"),
    Mode("syscount_L", "syscount -L", "system"),
    Mode("bpftrace", "bpftrace", "system"),
    Mode("perf_trace", "perf trace -s", "wrap", slow=True),
    Mode("strace", "strace -c -f", "wrap", slow=True),
)
MODE_BY_KEY = {m.key: m for m in MODES}
TRACERD_MODES = ("floor_enter", "floor", "count", "full", "untracked")

# Executable, Debian package. syscount is BCC's tool as Debian ships it.
TOOLS = {
    "syscount": ("syscount-bpfcc", "bpfcc-tools"),
    "syscount_L": ("syscount-bpfcc", "bpfcc-tools"),
    "bpftrace": ("bpftrace", "bpftrace"),
    "perf_trace": ("perf", "linux-perf"),
    "strace": ("strace", "strace"),
}


@dataclass(frozen=True)
class Size:
    """One size of a workload: what bench/timed.c runs, and how many times."""

    argv: tuple[str, ...]
    repeat: int
    min_calls: int  # a tracked run must count at least this many syscalls
    min_errors: int = 0  # ... and that many failed ones (full stats only)


@dataclass(frozen=True)
class Workload:
    name: str
    what: str
    full: Size
    slow: Size  # for perf trace and strace: the same workload, smaller
    # Per-syscall targets are judged here; not on Python start-up and fork/exec, where
    # exec and page faults dwarf the syscalls (~45 us of run time per syscall) and a
    # 150 ns difference per syscall is well inside the run-to-run noise.
    per_syscall_verdicts: bool = True
    time_verdict: bool = False  # the "within 3 % of the floor's ratio" target


def headers_tree() -> tuple[Path, str, str]:
    """(directory for tar -C, its full subtree, a smaller one) from the kernel headers
    package (a real, stable tree of ~6,000 files), else /usr/include."""
    for common in sorted(Path("/usr/src").glob("linux-headers-*-common")):
        if (common / "include" / "uapi").is_dir():
            return common, "include", "include/uapi"
    return Path("/usr"), "include", "include/linux"


def python_binary() -> str:
    # Debian's own interpreter, as a user would start it; pyenv's shim is a bash script.
    if Path("/usr/bin/python3").exists():
        return "/usr/bin/python3"
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def make_workloads(bins: dict[str, Path], workdir: Path, quick: bool) -> list[Workload]:
    """Sized so that one untraced run takes ~0.1-1 s on this 2-vCPU VM (--quick: ~5x
    less); the slow sizes keep strace/perf trace runs to about a second."""
    div = 5 if quick else 1
    calls = 500_000 // div
    slow_calls = calls // 50
    ncpu = os.cpu_count() or 1
    loop, mt, timed_out = str(bins["loop"]), str(bins["mtloop"]), workdir / "out.tar"
    root, tree, small_tree = headers_tree()
    if quick:
        tree, small_tree = small_tree, small_tree + "/linux"
    script = workdir / "forkexec.sh"
    # A script file rather than sh -c '...': bpftrace -c splits its command on spaces.
    script.write_text('for i in $(seq "$1"); do /bin/true; done\n')
    py = python_binary()
    forks, slow_forks = 300 // div, 100 // div
    pys, slow_pys = 50 // div, max(2, 5 // div)

    def tar(sub: str) -> tuple[str, ...]:
        # Into a file on tmpfs: with -f /dev/null GNU tar skips reading the files.
        return ("tar", "-cf", str(timed_out), "-C", str(root), sub)

    def loops(kind: str, errors: bool) -> Workload:
        return Workload(
            kind, f"bench/loop.c {kind}, {calls:,} calls",
            Size((loop, kind, str(calls)), 1, calls, calls if errors else 0),
            Size((loop, kind, str(slow_calls)), 1, slow_calls, slow_calls if errors else 0))

    return [
        loops("getppid", False),
        loops("read-zero", False),
        loops("getpgid-esrch", True),
        Workload("mt-getppid", f"bench/mtloop.c: {ncpu} threads x {calls // ncpu:,} getppid",
                 Size((mt, str(calls // ncpu)), 1, calls),
                 Size((mt, str(slow_calls // ncpu)), 1, slow_calls)),
        Workload("tar", f"tar -cf (tmpfs) -C {root} {tree}",
                 Size(tar(tree), 1, 1000), Size(tar(small_tree), 1, 100), time_verdict=True),
        Workload("python", f"{py} -c pass, x{pys}",
                 Size((py, "-c", "pass"), pys, 100 * pys),
                 Size((py, "-c", "pass"), slow_pys, 100 * slow_pys),
                 per_syscall_verdicts=False, time_verdict=True),
        Workload("fork-exec", f"sh: for i in $(seq {forks}); do /bin/true; done",
                 Size(("/bin/sh", str(script), str(forks)), 1, 10 * forks),
                 Size(("/bin/sh", str(script), str(slow_forks)), 1, 10 * slow_forks),
                 per_syscall_verdicts=False),
    ]


class Lines:
    """Lines from a child's stdout pipe, with deadlines (readline alone could hang)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buf = b""
        self.eof = False

    def _fill(self, deadline: float) -> bool:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([self.fd], [], [], left)[0]:
            return False
        chunk = os.read(self.fd, 65536)
        self.eof = not chunk
        self.buf += chunk
        return True

    def until(self, pred: Callable[[bytes], bool], timeout: float) -> bytes | None:
        """The first line for which ``pred`` holds; None on EOF or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                if pred(line):
                    return line
            if self.eof or not self._fill(deadline):
                return None

    def rest(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while not self.eof and self._fill(deadline):
            pass
        out, self.buf = self.buf, b""
        return out


def first_line(text: str, default: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    # Skip bpftrace/BCC noise that precedes the real error.
    lines = [ln for ln in lines if not ln.startswith(("Attaching", "WARNING"))] or lines
    return lines[0][:160] if lines else default


# --------------------------------------------------------------------------------------
# BPF program sets, switchable (as in kernel_cost.py's Programs, any set of hooks)
# --------------------------------------------------------------------------------------


class Attachments:
    """The attachments of one loaded BCC object, switchable off and on.

    Modes are interleaved run by run, so every object is compiled and loaded once and
    only its attachments change. tracerd's lifecycle tracepoints are switched with its
    syscall hooks, so "untraced" and the peers' runs have nothing of ours attached.
    """

    def __init__(self, label: str, bpf: Any) -> None:
        self.label = label
        self.bpf = bpf
        self.raw = {tp: b"raw_tracepoint__" + tp for tp in bpf.raw_tracepoint_fds}
        self.tps = {tp: b"tracepoint__" + tp.replace(b":", b"__") for tp in bpf.tracepoint_fds}
        if b"sys_enter" not in self.raw:
            raise BenchError(f"{label}: no program on sys_enter ({sorted(self.raw)})")
        self.attached = True

    def detach(self) -> None:
        for tp in self.raw:
            self.bpf.detach_raw_tracepoint(tp=tp)
        for tp in self.tps:
            self.bpf.detach_tracepoint(tp=tp)
        self.attached = False

    def attach(self) -> None:
        for tp, fn in self.raw.items():
            self.bpf.attach_raw_tracepoint(tp=tp, fn_name=fn)
        for tp, fn in self.tps.items():
            self.bpf.attach_tracepoint(tp=tp, fn_name=fn)
        self.attached = True

    def counters(self) -> dict[str, tuple[int, int]]:
        """Program name -> (run_time_ns, run_cnt) of every program of the set, from each
        program fd's fdinfo (the same counters as bpf_prog_info, without bpftool)."""
        out: dict[str, tuple[int, int]] = {}
        for fn in [*self.raw.values(), *self.tps.values()]:
            out[fn.decode()] = prog_run_stats(self.bpf.funcs[fn].fd, BenchError)
        return out


def describe_pids(pids: dict[int, str], shown: int = 3) -> str:
    """A few "pid N (comm)" and a count of the rest by comm: a test that forked a
    thousand children holding a link fd must not flood the report."""
    first = [f"pid {p} ({c})" for p, c in sorted(pids.items())[:shown]]
    rest: dict[str, int] = {}
    for _, c in sorted(pids.items())[shown:]:
        rest[c] = rest.get(c, 0) + 1
    more = ", ".join(f"{n} {c}" for c, n in sorted(rest.items(), key=lambda kv: -kv[1]))
    return ", ".join(first) + (f" and {sum(rest.values())} more ({more})" if rest else "")


# --------------------------------------------------------------------------------------
# Peers' output
# --------------------------------------------------------------------------------------

_SYSCOUNT_ROW = re.compile(rb"^(\w+)\s+(\d+)(?:\s+[\d.]+)?\s*$", re.M)
_BPFTRACE_ROW = re.compile(rb"^@\[(\d+), (\d+)\]: (\d+)\s*$", re.M)
_STRACE_TOTAL = re.compile(rb"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:(\d+)\s+)?total\s*$", re.M)
_PERF_ROW = re.compile(rb"^\s+(\w+)\s+(\d+)\s+(\d+)\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+", re.M)
_PERF_LOST = re.compile(rb"LOST (\d+) events", re.I)


def parse_syscount(out: bytes) -> int:
    """Calls counted, summed over syscalls (-T 1000: every syscall is listed)."""
    return sum(int(m[2]) for m in _SYSCOUNT_ROW.finditer(out) if m[1] != b"SYSCALL")


def parse_bpftrace(out: bytes) -> tuple[int, set[int]]:
    """(calls summed over every (pid, syscall) entry, the pids seen)."""
    rows = [(int(m[1]), int(m[3])) for m in _BPFTRACE_ROW.finditer(out)]
    return sum(n for _, n in rows), {p for p, _ in rows}


def parse_strace(out: bytes) -> int | None:
    m = _STRACE_TOTAL.search(out)
    return int(m[1]) if m else None


def parse_perf_trace(out: bytes) -> tuple[int, int]:
    """(calls summed over every process's summary table, events perf reported lost)."""
    calls = sum(int(m[2]) for m in _PERF_ROW.finditer(out))
    return calls, sum(int(n) for n in _PERF_LOST.findall(out))


# --------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------


@dataclass
class Run:
    """One timed run of a workload in a mode."""

    workload: str
    mode: str
    rep: int  # -1: the discarded warm-up round
    elapsed_ns: int
    slow: bool  # the workload's smaller size
    counted: int | None = None  # syscalls the mode counted (tracerd, or the tool's output)
    errors: int | None = None
    note: str = ""


@dataclass
class Suite:
    bins: dict[str, Path]
    workdir: Path
    children: Children
    sets: dict[str, Attachments]  # floor_enter, floor, count, full
    probes: dict[str, Any]  # count, full: tracerd._probe.Probe
    session_pid: int  # tracked by the full probe; the "untracked" mode's session
    tools: dict[str, str] = field(default_factory=dict)  # mode -> executable path

    # -- in-process programs -----------------------------------------------------------
    def set_mode(self, mode: str) -> None:
        want = {"untracked": "full"}.get(mode, mode)
        # Detach before attaching: two sets are never on the hooks together.
        for key, progs in self.sets.items():
            if key != want and progs.attached:
                progs.detach()
        if want in self.sets and not self.sets[want].attached:
            self.sets[want].attach()

    # -- the timed wrapper ---------------------------------------------------------------
    def timed_argv(self, size: Size) -> list[str]:
        return [str(self.bins["timed"]), str(size.repeat), *size.argv]

    def _timed(self, argv: Sequence[str], before_go: Callable[[int], None] | None,
               tool: str) -> tuple[int, int, subprocess.Popen[bytes], Path]:
        """Start ``argv`` (timed, or a tool that runs it), wait for timed's ready line,
        let ``before_go(pid)`` register timed's pid, send the byte, wait for the result.
        Returns (elapsed ns, timed's pid, the process, its stderr file); the process may
        still be finishing (a wrapping tool writing its summary)."""
        err_path = self.workdir / f"{tool}.stderr"
        with open(err_path, "wb") as errf:
            proc = self.children.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=errf)
        lines = Lines(proc)
        ready = lines.until(lambda ln: ln.startswith(b"ready "), READY_TIMEOUT_S)
        assert proc.stdin is not None
        if ready is None:
            self.children.kill(proc)
            raise ToolFailed(first_line(err_path.read_text(errors="replace"),
                                        f"{tool}: the workload never started"))
        pid = int(ready.split()[1])
        if before_go is not None:
            before_go(pid)
        proc.stdin.write(b"g")
        proc.stdin.close()
        result = lines.until(lambda ln: bool(re.fullmatch(rb"\d+ \d+", ln)), RUN_TIMEOUT_S)
        if result is None:
            self.children.kill(proc)
            raise ToolFailed(first_line(err_path.read_text(errors="replace"),
                                        f"{tool}: no result from the workload"))
        return int(result.split()[0]), pid, proc, err_path

    def _finish(self, proc: subprocess.Popen[bytes], err_path: Path, tool: str,
                timeout: float = 120.0) -> bytes:
        """The rest of ``proc``'s stdout once it has exited; ToolFailed unless status 0."""
        out = Lines(proc).rest(timeout) if proc.stdout is not None else b""
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.children.kill(proc)
            raise ToolFailed(f"{tool} did not exit within {timeout:.0f} s") from None
        self.children.kill(proc)  # whatever it left in its group; closes the pipes
        if proc.returncode != 0:
            raise ToolFailed(first_line(err_path.read_text(errors="replace"),
                                        f"{tool} exited {proc.returncode}"))
        return out

    # -- one run in one mode -----------------------------------------------------------
    def run(self, mode: str, wl: Workload, rep: int,
            on_done: Callable[[], None] | None = None) -> Run:
        m = MODE_BY_KEY[mode]
        size = wl.slow if m.slow else wl.full
        self.set_mode(mode)
        if m.kind in ("none", "bpf"):
            return self._run_here(mode, wl, size, rep, on_done)
        if m.kind == "system":
            return self._run_system(mode, wl, size, rep)
        return self._run_wrapped(mode, wl, size, rep)

    def _run_here(self, mode: str, wl: Workload, size: Size, rep: int,
                  on_done: Callable[[], None] | None = None) -> Run:
        """A run with nothing or our programs attached; ``on_done`` is called as soon as
        the workload has exited, before the checks (their map reads are syscalls too)."""
        probe = self.probes.get({"untracked": "full"}.get(mode, mode))

        def register(pid: int) -> None:
            if probe is None:
                return
            if mode == "untracked":
                probe.untrack(pid)  # a reused pid must not inherit a stale slot
            else:
                probe.track(pid)  # its children inherit tracking in the kernel

        elapsed, pid, proc, err = self._timed(self.timed_argv(size), register, "timed")
        try:
            self._finish(proc, err, "timed")
        except ToolFailed as e:
            raise BenchError(f"{wl.name} ({mode}): {e}") from None
        if on_done is not None:
            on_done()
        run = Run(wl.name, mode, rep, elapsed, slow=False)
        if probe is not None:
            self._check(probe, mode, wl, size, pid=pid, run=run)
        return run

    def _check(self, probe: Any, mode: str, wl: Workload, size: Size, *, pid: int,
               run: Run) -> None:
        """A tracked tree must be counted (at least the workload's own calls; the
        failing call counted as errors under full stats), an untracked one not at all,
        and the session must stay tracked."""
        stats = probe.read_stats()
        mine = {k: v for k, v in stats.items() if k[0] != self.session_pid}
        tgids = {k[0] for k in mine} | {pid}
        probe.delete_stats(tgids)  # the tree has exited: keep the map small
        for tgid in tgids:
            probe.untrack(tgid)
        probe.poll_events(0)  # drain the tree's lifecycle events: the ring never fills
        calls = sum(v.calls for v in mine.values())
        errors = sum(v.errors for v in mine.values())
        where = f"{wl.name} ({mode}, tree of {pid})"
        if mode == "untracked":
            if mine:
                raise BenchError(f"{where}: untracked but counted {calls} calls")
            if not probe.is_tracked(self.session_pid):
                raise BenchError("the session process is no longer tracked")
            return
        if calls < size.min_calls:
            raise BenchError(f"{where}: counted {calls} calls, expected >= {size.min_calls}")
        if mode == "full" and errors < size.min_errors:
            raise BenchError(f"{where}: counted {errors} errors, expected >= {size.min_errors}")
        if mode == "count" and errors:
            raise BenchError(f"{where}: count-only counted {errors} errors (should be 0)")
        run.counted, run.errors = calls, errors

    def _run_system(self, mode: str, wl: Workload, size: Size, rep: int) -> Run:
        exe = self.tools[mode]
        err_path = self.workdir / f"{mode}.stderr"
        if mode == "bpftrace":
            # BEGIN fires before bpftrace attaches its probes; the -c command is let go
            # only after every probe is attached: so the wrapper is that command (the
            # program has no pid filter: it counts system-wide, like syscount).
            argv = self.timed_argv(size)
            if any(re.search(r"\s", a) for a in argv):
                raise ToolFailed("bpftrace -c splits on spaces: a path here has one")
            out_path = self.workdir / "bpftrace.out"
            elapsed, pid, proc, err_path = self._timed(
                [exe, "-o", str(out_path), "-c", " ".join(argv), "-e", BPFTRACE_PROG],
                None, mode)
            self._finish(proc, err_path, mode)
            counted, pids = parse_bpftrace(out_path.read_bytes())
            if pid not in pids:
                raise ToolFailed(f"bpftrace's output has no entry for the wrapper {pid}")
            return Run(wl.name, mode, rep, elapsed, slow=False, counted=counted)
        # syscount: BPF() attaches in its constructor, then the banner is printed.
        argv = [exe, "-T", "1000", *(["-L"] if mode == "syscount_L" else [])]
        with open(err_path, "wb") as errf:
            tool = self.children.popen(argv, stdout=subprocess.PIPE, stderr=errf,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
        lines = Lines(tool)
        if lines.until(lambda ln: ln.startswith(b"Tracing"), READY_TIMEOUT_S) is None:
            self.children.kill(tool)
            raise ToolFailed(first_line(err_path.read_text(errors="replace"),
                                        f"{mode}: no banner"))
        try:
            elapsed, _pid, proc, terr = self._timed(self.timed_argv(size), None, "timed")
            self._finish(proc, terr, "timed")
        finally:
            with contextlib.suppress(ProcessLookupError):
                tool.send_signal(signal.SIGINT)
        out = lines.rest(120.0)
        self._finish(tool, err_path, mode)
        return Run(wl.name, mode, rep, elapsed, slow=False, counted=parse_syscount(out))

    def _run_wrapped(self, mode: str, wl: Workload, size: Size, rep: int) -> Run:
        exe = self.tools[mode]
        out_path = self.workdir / f"{mode}.out"
        prefix = ([exe, "trace", "-s", "-o", str(out_path), "--"] if mode == "perf_trace"
                  else [exe, "-c", "-f", "-o", str(out_path), "--"])
        elapsed, _pid, proc, err_path = self._timed([*prefix, *self.timed_argv(size)],
                                                    None, mode)
        self._finish(proc, err_path, mode)
        out = out_path.read_bytes()
        run = Run(wl.name, mode, rep, elapsed, slow=True)
        if mode == "strace":
            run.counted = parse_strace(out)
            if run.counted is None:
                raise ToolFailed("no 'total' line in strace -c's summary")
        else:
            run.counted, lost = parse_perf_trace(out)
            if lost:
                run.note = f"perf lost {lost} events"
        return run


def check_peer_count(run: Run, expected: int) -> str | None:
    """Why a peer's run did not trace the workload, or None. Every peer sees at least the
    workload's calls (system-wide ones more); perf trace may lose some under load."""
    if run.counted is None:
        return None
    if run.counted < 0.5 * expected:
        return f"counted {run.counted} syscalls, the workload makes ~{expected}"
    return None


# --------------------------------------------------------------------------------------
# Passes
# --------------------------------------------------------------------------------------


@dataclass
class State:
    """Everything measured so far, and what became unusable on the way."""

    runs: list[Run] = field(default_factory=list)
    # workload -> (syscalls per full-size run, per slow-size run): from tracerd's counts
    syscalls: dict[str, list[int]] = field(default_factory=dict)
    unusable: dict[str, str] = field(default_factory=dict)  # "mode" or "mode/workload"

    def why_not(self, mode: str, wl: str) -> str | None:
        return self.unusable.get(mode) or self.unusable.get(f"{mode}/{wl}")


def attempt(suite: Suite, state: State, mode: str, wl: Workload, *, rep: int,
            warm_up: bool = False) -> Run | None:
    """One run; a peer that fails is marked unusable (for every workload if it failed
    on its first run, else for this workload) instead of ending the bench."""
    if state.why_not(mode, wl.name):
        return None
    try:
        run = suite.run(mode, wl, rep)
        if MODE_BY_KEY[mode].kind in ("system", "wrap"):
            sizes = state.syscalls[wl.name]
            why = check_peer_count(run, sizes[1] if run.slow else sizes[0])
            if why:
                raise ToolFailed(why)
    except ToolFailed as e:
        first = not any(r.mode == mode for r in state.runs)
        key = mode if (warm_up and first) else f"{mode}/{wl.name}"
        state.unusable[key] = f"unusable: {e}"
        log(f"{MODE_BY_KEY[mode].label} on {wl.name}: {e}")
        return None
    state.runs.append(run)
    return run


def warm_up(suite: Suite, state: State, modes: Sequence[str], workloads: Sequence[Workload]
            ) -> None:
    """One discarded round (page cache, first map inserts, the tools' own first start),
    which also counts each workload's syscalls at both sizes under tracerd full."""
    for wl in workloads:
        sizes: list[int] = []
        for size in (wl.full, wl.slow):
            counted: list[int] = []
            for _ in range(2):  # two: a count that changes run to run shows here
                suite.set_mode("full")
                r = suite._run_here("full", wl, size, -1)
                counted.append(r.counted or 0)
            sizes.append(int(statistics.median(counted)))
        state.syscalls[wl.name] = sizes
        log(f"warm-up {wl.name}: {sizes[0]:,} syscalls per run ({sizes[1]:,} at the "
            "slow tools' size)")
        for mode in modes:
            attempt(suite, state, mode, wl, rep=-1, warm_up=True)
    suite.set_mode("untraced")


def wall_pass(suite: Suite, state: State, modes: Sequence[str],
              workloads: Sequence[Workload], reps: int) -> None:
    for rep in range(reps):
        t0 = time.monotonic()
        # Modes innermost: the runs compared with each other (same workload, same
        # repetition) are adjacent in time, so this VM's slow speed drifts mostly cancel
        # in the paired differences; rotating the order spreads what remains.
        for wl in workloads:
            for mode in rotated(modes, rep):
                attempt(suite, state, mode, wl, rep=rep)
        log(f"wall clock: repetition {rep + 1}/{reps} done ({time.monotonic() - t0:.0f} s)")
    suite.set_mode("untraced")


@dataclass
class KernelSample:
    workload: str
    mode: str
    rep: int
    ns_per_event: float  # every program's run time / sys_enter program runs
    share: float  # the workload's syscalls / sys_enter program runs
    # program -> [run time ns, runs] over the run: where the time went (JSON only)
    programs: dict[str, list[int]] = field(default_factory=dict)


def kernel_sample(wl: str, mode: str, rep: int, *, syscalls: int,
                  before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
                  ) -> KernelSample:
    """In-kernel ns per syscall event: the run time of every program of the set (its
    lifecycle tracepoints too: a process's set-up is part of what tracing it costs),
    over the runs of its sys_enter program. The counters are system-wide: other
    processes' syscalls are in them too, and share says how much is the workload's."""
    d = {k: [after[k][0] - before[k][0], after[k][1] - before[k][1]] for k in after}
    events = max(1, d.get("raw_tracepoint__sys_enter", [0, 0])[1])
    return KernelSample(wl, mode, rep, sum(t for t, _ in d.values()) / events,
                        syscalls / events, d)


def read_into(progs: Attachments, out: list[dict[str, tuple[int, int]]]
              ) -> Callable[[], None]:
    return lambda: out.append(progs.counters())


def kernel_pass(suite: Suite, state: State, modes: Sequence[str],
                workloads: Sequence[Workload], reps: int) -> list[KernelSample]:
    out: list[KernelSample] = []
    with bpf_stats_enabled():
        for rep in range(reps):
            for wl in workloads:
                for mode in rotated(modes, rep):
                    progs = suite.sets[{"untracked": "full"}.get(mode, mode)]
                    suite.set_mode(mode)
                    after: list[dict[str, tuple[int, int]]] = []
                    before = progs.counters()
                    suite.run(mode, wl, rep, on_done=read_into(progs, after))
                    out.append(kernel_sample(wl.name, mode, rep,
                                             syscalls=state.syscalls[wl.name][0],
                                             before=before, after=after[0]))
            log(f"in-kernel: repetition {rep + 1}/{reps} done")
        suite.set_mode("untraced")
    return out


def rotated(seq: Sequence[str], k: int) -> list[str]:
    # Each repetition starts one mode later, so no mode always follows the same one.
    if not seq:
        return []
    k %= len(seq)
    return [*seq[k:], *seq[:k]]


# --------------------------------------------------------------------------------------
# Summaries (pure: tests/unit/test_bench_suite.py)
# --------------------------------------------------------------------------------------


def med(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def per_syscall(run: Run, syscalls: Sequence[int]) -> float:
    """ns per syscall of the run: runs at the slow size are compared per syscall."""
    return run.elapsed_ns / max(1, syscalls[1] if run.slow else syscalls[0])


def paired(by_rep: dict[int, dict[str, float]], mode: str, ref: str,
           fn: Callable[[float, float], float]) -> list[float]:
    """fn(mode's value, ref's) for each repetition that has both."""
    return [fn(v[mode], v[ref]) for v in by_rep.values() if mode in v and ref in v]


def summarise(runs: Sequence[Run], syscalls: dict[str, list[int]],
              unusable: dict[str, str], workloads: Sequence[str], modes: Sequence[str]
              ) -> list[dict[str, Any]]:
    """One row per (workload, mode): medians over repetitions of values paired with the
    untraced run of the same repetition and workload."""
    rows: list[dict[str, Any]] = []
    for wl in workloads:
        n = syscalls.get(wl, [0, 0])
        # rep -> mode -> ns per syscall; warm-up runs (rep -1) are not figures
        by_rep: dict[int, dict[str, float]] = {}
        elapsed: dict[str, list[float]] = {}
        for r in runs:
            if r.workload == wl and r.rep >= 0:
                by_rep.setdefault(r.rep, {})[r.mode] = per_syscall(r, n)
                elapsed.setdefault(r.mode, []).append(per_syscall(r, n) * n[0])

        floor_added = med(paired(by_rep, "floor", "untraced", lambda a, b: a - b))
        for mode in modes:
            m = MODE_BY_KEY[mode]
            row: dict[str, Any] = {
                "workload": wl, "mode": mode, "label": m.label,
                "status": unusable.get(mode) or unusable.get(f"{mode}/{wl}") or "ok",
                "reps": len(elapsed.get(mode, [])), "syscalls": n[0],
                "median_ms": None, "x_untraced": None, "added_ns": None, "x_floor": None,
                "kernel_ns": None, "kernel_share": None, "note": "",
            }
            rows.append(row)
            if not elapsed.get(mode):
                if row["status"] == "ok":
                    row["status"] = "no runs"
                continue
            row["median_ms"] = statistics.median(elapsed[mode]) / 1e6
            row["x_untraced"] = med(paired(by_rep, mode, "untraced", lambda a, b: a / b))
            if mode != "untraced":
                row["added_ns"] = med(paired(by_rep, mode, "untraced", lambda a, b: a - b))
                if floor_added and floor_added > 0 and row["added_ns"] is not None:
                    row["x_floor"] = row["added_ns"] / floor_added
            if m.slow:
                row["note"] = f"run at {n[1]:,} syscalls, scaled"
            notes = sorted({r.note for r in runs
                            if r.workload == wl and r.mode == mode and r.note})
            if notes:
                row["note"] = "; ".join(filter(None, [row["note"], *notes[:2]]))
    return rows


def add_kernel(rows: list[dict[str, Any]], samples: Sequence[KernelSample]) -> None:
    for row in rows:
        mine = [s for s in samples if s.workload == row["workload"] and s.mode == row["mode"]]
        if mine:
            row["kernel_ns"] = statistics.median(s.ns_per_event for s in mine)
            row["kernel_share"] = statistics.median(s.share for s in mine)


@dataclass(frozen=True)
class Target:
    """A target from the issue: value = num's figure / den's figure <= (or <) limit."""

    name: str
    num: str
    den: str
    limit: float
    strict: bool = False  # "<" rather than "<="
    time_ratio: bool = False  # paired full/floor time ratio rather than added ns


TARGETS = (
    Target("tracerd full <= 1.5x floor (enter+exit), added ns/syscall", "full", "floor", 1.5),
    Target("tracerd full < 0.5x syscount -L, added ns/syscall", "full", "syscount_L", 0.5,
           strict=True),
    Target("count-only <= 1.2x floor enter, added ns/syscall", "count", "floor_enter", 1.2),
    Target("count-only < syscount, added ns/syscall", "count", "syscount", 1.0, strict=True),
    Target("untracked <= 1.15x floor, added ns/syscall", "untracked", "floor", 1.15),
    Target("tracerd full time within 3 % of floor's (x untraced)", "full", "floor", 1.03,
           time_ratio=True),
)


def verdict(value: float | None, limit: float, strict: bool) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    met = value < limit if strict else value <= limit
    if met:
        return f"met ({value:.2f} {'<' if strict else '<='} {limit:.2f})"
    return f"missed by {value - limit:.2f} ({(value / limit - 1) * 100:.0f} % over)"


def verdicts(rows: Sequence[dict[str, Any]], runs: Sequence[Run],
             workloads: Sequence[Workload]) -> list[dict[str, Any]]:
    """Each target on each workload it applies to."""
    by = {(r["workload"], r["mode"]): r for r in rows}
    out: list[dict[str, Any]] = []
    for t in TARGETS:
        for wl in workloads:
            if not (wl.time_verdict if t.time_ratio else wl.per_syscall_verdicts):
                continue
            num, den = by.get((wl.name, t.num)), by.get((wl.name, t.den))
            value: float | None = None
            why = ""
            if num is None or den is None:
                why = "n/a: mode not run"
            elif num["status"] != "ok" or den["status"] != "ok":
                bad = num if num["status"] != "ok" else den
                why = f"n/a: {bad['label']} {bad['status']}"
            elif t.time_ratio:
                value = med(paired_ratio(runs, wl.name, t.num, t.den))
            elif den["added_ns"] is None or den["added_ns"] <= 0:
                why = f"n/a: {den['label']} added nothing measurable (noise)"
            elif num["added_ns"] is not None:
                value = num["added_ns"] / den["added_ns"]
            out.append({"target": t.name, "workload": wl.name, "value": value,
                        "limit": t.limit,
                        "verdict": why or verdict(value, t.limit, t.strict)})
    return out


def paired_ratio(runs: Sequence[Run], wl: str, num: str, den: str) -> list[float]:
    """num's elapsed / den's, per repetition (both at full size)."""
    by_rep: dict[int, dict[str, int]] = {}
    for r in runs:
        if r.workload == wl and r.rep >= 0 and not r.slow:
            by_rep.setdefault(r.rep, {})[r.mode] = r.elapsed_ns
    return [v[num] / v[den] for v in by_rep.values() if num in v and den in v and v[den]]


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def render(meta: dict[str, Any], workloads: Sequence[Workload], rows: Sequence[dict[str, Any]],
           verdict_rows: Sequence[dict[str, Any]], warnings: Sequence[str]) -> str:
    lines = [
        f"tracerd bench suite  {meta['date']}",
        f"kernel {meta['kernel']}  {meta['cpus']} CPUs ({meta['cpu_model']})  "
        f"bpf_jit_enable={meta['bpf_jit_enable']}  load average {meta['loadavg']} "
        f"(at the end: {meta['loadavg_end']})",
        f"{meta['reps']} interleaved repetitions (+1 discarded), medians; in-kernel pass: "
        f"{meta['kernel_reps']} repetitions with bpf_stats on",
        "",
        "Workloads (syscalls per run, counted by tracerd):",
    ]
    for wl in workloads:
        n = meta["syscalls"].get(wl.name, [0, 0])
        lines.append(f"  {wl.name:<14}{n[0]:>10,}  {wl.what}")
    lines += [
        "",
        "time = median run time (perf trace, strace: a smaller size, scaled per syscall);",
        "x untr = time / untraced's; added = ns per syscall over untraced; x floor = added /",
        "floor's added (floor = empty programs on sys_enter+sys_exit); kern = in-kernel ns",
        "per syscall, every program of the mode (bpf_stats pass; includes bpf_stats' own clock",
        "reads, ~50 ns per program: the floors' figures are mostly that). Paired per",
        "repetition with untraced, then medians. kern: floors and tracerd only.",
        f"{'workload':<14}{'mode':<18}{'time ms':>9}{'x untr':>8}{'added':>8}{'x floor':>8}"
        f"{'kern':>7}  note",
    ]
    last = ""
    for r in rows:
        name = r["workload"] if r["workload"] != last else ""
        last = r["workload"]
        if r["status"] != "ok":
            lines.append(f"{name:<14}{r['label']:<18}{'':>9}{'':>8}{'':>8}{'':>8}{'':>7}  "
                         f"{r['status']}")
            continue
        lines.append(
            f"{name:<14}{r['label']:<18}{fmt(r['median_ms'], '.1f'):>9}"
            f"{fmt(r['x_untraced'], '.3f'):>8}{fmt(r['added_ns'], '.0f'):>8}"
            f"{fmt(r['x_floor'], '.2f'):>8}{fmt(r['kernel_ns'], '.0f'):>7}  {r['note']}".rstrip())
    lines += ["", "Targets (the issue's), judged in this run:"]
    lines += [f"  {v['target']:<58}{v['workload']:<14}{v['verdict']}" for v in verdict_rows]
    lines += [f"WARNING: {w}" for w in warnings]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Tools and main
# --------------------------------------------------------------------------------------


def smoke_test_perf(exe: str) -> str | None:
    """perf trace fails on some kernels (no syscalls:* tracepoints, BTF, permissions)."""
    try:
        res = subprocess.run([exe, "trace", "-s", "-o", "/dev/null", "--", "/bin/true"],
                             capture_output=True, stdin=subprocess.DEVNULL, timeout=120,
                             check=False)
    except subprocess.TimeoutExpired:
        return "unusable: perf trace -- /bin/true did not finish in 120 s"
    if res.returncode != 0:
        return "unusable: " + first_line(res.stderr.decode(errors="replace"),
                                         f"perf trace exited {res.returncode}")
    return None


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM/SIGHUP as an exception, so every finally/ExitStack callback runs.
    raise SystemExit(128 + signum)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 repetitions, 1 in-kernel, workloads 5x smaller")
    p.add_argument("--reps", type=int, help="wall-clock repetitions (default 5, >= 5)")
    p.add_argument("--kernel-reps", type=int, help="in-kernel repetitions (default 3)")
    p.add_argument("--workloads", help="comma-separated subset (default: all)")
    p.add_argument("--modes", help="comma-separated subset of "
                   + ",".join(m.key for m in MODES) + " (untraced and floor always run)")
    p.add_argument("--no-install", action="store_true",
                   help="do not apt-get install missing tools (they are reported missing)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON,
                   help=f"write every figure and sample here (default {DEFAULT_JSON})")
    args = p.parse_args(argv)
    args.reps = args.reps or (2 if args.quick else 5)
    args.kernel_reps = args.kernel_reps if args.kernel_reps is not None else (
        1 if args.quick else 3)
    if args.reps < 5 and not args.quick:
        p.error("--reps must be at least 5 (fewer only with --quick): medians need them")
    modes = [m.key for m in MODES]
    if args.modes:
        wanted = set(args.modes.split(",")) | {"untraced", "floor"}
        if unknown := wanted - set(modes):
            p.error(f"unknown modes: {', '.join(sorted(unknown))}")
        modes = [m for m in modes if m in wanted]
    args.mode_list = modes
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("suite: needs root (loads BPF, writes kernel.bpf_stats_enabled)",
              file=sys.stderr)
        return 77
    try:
        import bcc  # noqa: PLC0415 - BPF only here: the summaries import without it

        from tracerd._probe import Limits, Probe  # noqa: PLC0415
    except ImportError as e:
        print(f"suite: {e}: run with .venv/bin/python after 'make setup'", file=sys.stderr)
        return 1
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    # Started in the background by a script, we would inherit SIGINT ignored, and so
    # would every child (exec keeps ignored signals ignored): the tools stopped with
    # SIGINT would never stop. A handler here is reset to the default in children.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # bpftrace 0.17 warns when it cannot raise RLIMIT_MEMLOCK itself; children inherit.
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY,) * 2)

    warnings: list[str] = []
    if BPF_STATS.read_text().strip() != "0":
        warnings.append("kernel.bpf_stats_enabled was already on: wall figures include it")
    meta: dict[str, Any] = {
        **machine_facts(-1),
        "bpf_jit_enable": Path("/proc/sys/net/core/bpf_jit_enable").read_text().strip(),
        "reps": args.reps, "kernel_reps": args.kernel_reps, "quick": args.quick,
        "python": platform.python_version(),
    }
    state = State()
    kern: list[KernelSample] = []
    children = Children(BenchError)
    modes: list[str] = args.mode_list
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(children.kill_all)
            workdir = Path(tempfile.mkdtemp(prefix="tracerd-suite-", dir="/dev/shm"))
            stack.callback(shutil.rmtree, workdir, True)
            log("building bench/timed.c, loop.c, mtloop.c")
            bins = {name: build_c(f"{name}.c", RESULTS, BenchError)
                    for name in ("timed", "loop", "mtloop")}
            workloads = make_workloads(bins, workdir, args.quick)
            if args.workloads:
                keep = args.workloads.split(",")
                if unknown := set(keep) - {w.name for w in workloads}:
                    raise BenchError(f"unknown workloads: {', '.join(sorted(unknown))}")
                workloads = [w for w in workloads if w.name in keep]

            tools: dict[str, str] = {}
            for mode, (exe, package) in TOOLS.items():
                if mode not in modes:
                    continue
                why = ensure_tool(exe, package, not args.no_install, log)
                why = f"missing: {why}" if why else None
                if why is None and mode == "perf_trace":
                    why = smoke_test_perf(shutil.which(exe) or exe)
                if why:
                    state.unusable[mode] = why
                    log(f"{MODE_BY_KEY[mode].label}: {why}")
                else:
                    tools[mode] = shutil.which(exe) or exe

            # The "session" of the untracked mode: a tracked process that makes no
            # syscalls, so tracerd has live state while the measured tree is not in it.
            session = children.popen(["sleep", "infinity"])
            log("loading the empty programs and tracerd's (full, count-only)")
            floor_enter = bcc.BPF(text=FLOOR_ENTER_SRC)
            stack.callback(floor_enter.cleanup)
            floor = bcc.BPF(text=FLOOR_SRC)
            stack.callback(floor.cleanup)
            full = stack.enter_context(Probe(Limits.for_this_kernel()))
            full.track(session.pid)
            probes: dict[str, Any] = {"full": full}
            sets = {"floor_enter": Attachments("floor enter", floor_enter),
                    "floor": Attachments("floor", floor),
                    "full": Attachments("tracerd full", full._bpf)}
            if "count" in modes:
                try:
                    count = stack.enter_context(Probe(Limits.for_this_kernel(),
                                                      count_only=True))
                except TypeError:
                    raise BenchError("this tracerd has no Probe(count_only=True)") from None
                probes["count"] = count
                # Probe keeps its BCC object private; the bench needs its attachments.
                sets["count"] = Attachments("tracerd count", count._bpf)
            # No explicit detach on the way out: BCC's cleanup (registered above) closes
            # whatever is attached at that moment, error or not.
            for s in sets.values():
                s.detach()
            suite = Suite(bins, workdir, children, sets, probes, session.pid, tools)

            foreign = syscall_hook_holders()
            if foreign:
                warnings.append("other BPF programs on the syscall hooks: "
                                f"{describe_pids(foreign)} (every mode, untraced too, pays)")
            warm_up(suite, state, modes, workloads)
            wall_pass(suite, state, modes, workloads, args.reps)
            if args.kernel_reps:
                kern = kernel_pass(suite, state, [m for m in TRACERD_MODES if m in modes],
                                   workloads, args.kernel_reps)
            after = {p: c for p, c in syscall_hook_holders().items() if p not in foreign}
            if after:
                warnings.append(f"appeared during the run: {describe_pids(after)}")
    except BenchError as e:
        print(f"suite: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("suite: interrupted, everything unloaded", file=sys.stderr)
        return 130

    meta["loadavg_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    meta["syscalls"] = state.syscalls
    names = [w.name for w in workloads]
    rows = summarise(state.runs, state.syscalls, state.unusable, names, modes)
    add_kernel(rows, kern)
    verdict_rows = verdicts(rows, state.runs, workloads)
    print(render(meta, workloads, rows, verdict_rows, warnings))
    doc = {
        "meta": meta,
        "workloads": [asdict(w) for w in workloads],
        "modes": [asdict(MODE_BY_KEY[m]) for m in modes],
        "rows": rows,
        "verdicts": verdict_rows,
        "unusable": state.unusable,
        "warnings": warnings,
        "samples": {"runs": [asdict(r) for r in state.runs],
                    "in_kernel": [asdict(s) for s in kern]},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
