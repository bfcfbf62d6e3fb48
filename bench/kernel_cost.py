#!/usr/bin/env python3
"""Cost per syscall of tracerd's kernel side, against empty programs on the same hooks.

    .venv/bin/python bench/kernel_cost.py [--reps N] [--calls N] [--kernel-reps N]
                                          [--cpu N] [--json FILE]

Two passes, both with the modes interleaved and summarised by medians:

1. wall clock: bench/loop.c makes CALLS syscalls and reports ns/call, under
   untraced   nothing attached;
   floor      empty programs on raw_tracepoint sys_enter/sys_exit (the least any
              tracer on these hooks can cost: it forces the syscall slow path);
   tracked    tracerd's programs, the loop process tracked (full stats);
   untracked  tracerd's programs with another process tracked, the loop not.
2. in-kernel: with kernel.bpf_stats_enabled=1, run_time_ns / run_cnt of each
   program. Stats collection adds two clock reads per program run, so it is
   switched on only for this pass and never while wall-clock figures are taken.

Root only. Everything loaded is released on exit, error, Ctrl-C or SIGTERM.
See bench/README.md for the method and the latest figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from _build import (  # bench/_build.py: scripts run from here
    BPF_STATS,
    bpf_stats_enabled,
    build_c,
    foreign_syscall_hooks,
    machine_facts,
    prog_run_stats,
)

try:
    import bcc

    from tracerd._probe import Limits, Probe
except ImportError as _e:
    # bcc comes from the OS package python3-bpfcc, exposed inside .venv by make setup.
    sys.exit(f"kernel_cost: {_e}: run with .venv/bin/python after 'make setup'")

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"  # git-ignored

MODES = ("untraced", "floor", "tracked", "untracked")
KINDS = ("getppid", "getpgid-esrch", "read-zero")
HOOKS = ("sys_enter", "sys_exit")
# From the issue: tracerd's added cost per syscall, as a multiple of the floor's.
TARGETS = {"tracked": 1.5, "untracked": 1.15}

# The floor: what attaching anything at all to the two hooks costs.
FLOOR_SRC = b"""
RAW_TRACEPOINT_PROBE(sys_enter) { return 0; }
RAW_TRACEPOINT_PROBE(sys_exit) { return 0; }
"""


class BenchError(Exception):
    """A failure that ends the bench with a one-line message."""


# --------------------------------------------------------------------------------------
# The measured process
# --------------------------------------------------------------------------------------


def build_loop(out_dir: Path) -> Path:
    return build_c("loop.c", out_dir, BenchError)


@dataclass(frozen=True)
class LoopRun:
    pid: int
    ns_per_call: float
    nr: int  # the syscall number the loop made, as compiled on this architecture
    calls: int


def run_loop(
    binary: Path, kind: str, calls: int, cpu: int, before_start: Callable[[int], None]
) -> LoopRun:
    """Start the loop, let ``before_start(pid)`` register it, then let it go."""
    proc = subprocess.Popen(
        [str(binary), kind, str(calls), str(cpu)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        before_start(proc.pid)
        # Generous: even a 20 us/call tracer would finish well inside this.
        out, err = proc.communicate(input=b"g", timeout=60 + calls * 20e-6)
    finally:
        if proc.poll() is None:  # interrupted or timed out: never leave it behind
            proc.kill()
            proc.wait()
    if proc.returncode == -signal.SIGINT:
        raise KeyboardInterrupt  # Ctrl-C reached the loop first: same as reaching us
    if proc.returncode != 0:
        raise BenchError(f"loop {kind} exited {proc.returncode}: {err.decode().strip()}")
    ns, nr, n = out.split()
    return LoopRun(pid=proc.pid, ns_per_call=float(ns), nr=int(nr), calls=int(n))


# --------------------------------------------------------------------------------------
# Program sets and modes
# --------------------------------------------------------------------------------------


class Programs:
    """The attachments of one loaded BPF object, switchable off and on.

    Modes are interleaved run by run, so programs are compiled and loaded once and
    only their attachments change: recompiling tracerd for every run would cost
    seconds each and would not measure anything different.
    """

    def __init__(self, label: str, bpf: Any) -> None:
        self.label = label
        self.bpf = bpf
        # BCC's autoload names programs after their hook; keep the pairs so the exact
        # same programs can be re-attached. tracerd's lifecycle tracepoints are
        # switched with the syscall hooks so "untraced" really has nothing attached.
        self._raw = {tp: b"raw_tracepoint__" + tp for tp in bpf.raw_tracepoint_fds}
        self._tps = {tp: b"tracepoint__" + tp.replace(b":", b"__") for tp in bpf.tracepoint_fds}
        if sorted(self._raw) != sorted(h.encode() for h in HOOKS):
            raise BenchError(f"{label}: expected programs on {HOOKS}, found {sorted(self._raw)}")
        self.attached = True

    def detach(self) -> None:
        for tp in self._raw:
            self.bpf.detach_raw_tracepoint(tp=tp)
        for tp in self._tps:
            self.bpf.detach_tracepoint(tp=tp)
        self.attached = False

    def attach(self) -> None:
        for tp, fn in self._raw.items():
            self.bpf.attach_raw_tracepoint(tp=tp, fn_name=fn)
        for tp, fn in self._tps.items():
            self.bpf.attach_tracepoint(tp=tp, fn_name=fn)
        self.attached = True

    def counters(self, hook: str) -> tuple[int, int]:
        """(run_time_ns, run_cnt) of the program on ``hook``, from its fd's fdinfo.

        fdinfo carries the same fields as BPF_OBJ_GET_INFO_BY_FD's bpf_prog_info,
        without depending on that struct's layout or on bpftool being installed.
        """
        fd = self.bpf.funcs[b"raw_tracepoint__" + hook.encode()].fd
        return prog_run_stats(fd, BenchError)


@dataclass
class Bench:
    """Runs the loop in a given mode and checks the mode did what it claims."""

    binary: Path
    cpu: int
    floor: Programs
    tracerd: Programs
    probe: Probe
    session_pid: int  # the tracked process of the "untracked" mode's session

    def set_mode(self, mode: str) -> None:
        wanted = {"floor": self.floor, "tracked": self.tracerd, "untracked": self.tracerd}
        want = wanted.get(mode)
        # Detach before attaching, so two sets are never on the hooks together.
        for progs in (self.floor, self.tracerd):
            if progs is not want and progs.attached:
                progs.detach()
        if want is not None and not want.attached:
            want.attach()

    def run(self, mode: str, kind: str, calls: int) -> LoopRun:
        self.set_mode(mode)

        def register(pid: int) -> None:
            if mode == "tracked":
                self.probe.track(pid)
            elif mode == "untracked":
                self.probe.untrack(pid)  # a reused pid must not inherit a stale slot

        run = run_loop(self.binary, kind, calls, self.cpu, register)
        if mode in ("tracked", "untracked"):
            self._check(mode, run)
        return run

    def _check(self, mode: str, run: LoopRun) -> None:
        """A tracked loop must be fully counted, an untracked one not at all."""
        stats = self.probe.read_stats()
        got = stats.get((run.pid, run.nr))
        mine = [k for k in stats if k[0] == run.pid]
        self.probe.delete_stats([run.pid])  # the loop has exited: keep the map small
        self.probe.untrack(run.pid)
        self.probe.poll_events(0)  # drain its EV_EXIT so the ring buffer never fills
        if mode == "tracked" and (got is None or got.calls < run.calls):
            raise BenchError(f"tracked loop {run.pid}: expected >= {run.calls} calls, got {got}")
        if mode == "untracked" and mine:
            raise BenchError(f"untracked loop {run.pid} was counted: {mine}")
        if not self.probe.is_tracked(self.session_pid):
            raise BenchError("the session process is no longer tracked")


def rotated(seq: Sequence[str], k: int) -> list[str]:
    # Each repetition starts one mode later, so no mode always follows the same one
    # (slow drifts, e.g. of CPU clocks or a neighbour's load, then spread evenly).
    k %= len(seq)
    return [*seq[k:], *seq[:k]]


# --------------------------------------------------------------------------------------
# Passes
# --------------------------------------------------------------------------------------

Samples = dict[str, dict[str, list[float]]]  # mode -> kind -> one value per repetition


def wall_pass(bench: Bench, reps: int, calls: int, log: Callable[[str], None]) -> Samples:
    # One short discarded round first: page cache, stats-map first inserts, CPU wake-up.
    for mode in MODES:
        for kind in KINDS:
            bench.run(mode, kind, max(1000, calls // 10))
    samples: Samples = {m: {k: [] for k in KINDS} for m in MODES}
    for rep in range(reps):
        # Modes innermost: the runs compared with each other (same kind, same
        # repetition) are adjacent in time, so the slow drifts of this VM's speed
        # mostly cancel in the paired differences.
        for kind in KINDS:
            for mode in rotated(MODES, rep):
                samples[mode][kind].append(bench.run(mode, kind, calls).ns_per_call)
        log(f"wall clock: repetition {rep + 1}/{reps} done")
    bench.set_mode("untraced")
    return samples


@dataclass
class KernelSample:
    enter_ns: float
    exit_ns: float
    loop_share: float  # loop calls / program runs: how much of the figure is the loop's


def kernel_pass(
    bench: Bench, reps: int, calls: int, log: Callable[[str], None]
) -> dict[str, dict[str, list[KernelSample]]]:
    modes = [m for m in MODES if m != "untraced"]
    out: dict[str, dict[str, list[KernelSample]]] = {m: {k: [] for k in KINDS} for m in modes}
    with bpf_stats_enabled():
        for rep in range(reps):
            for kind in KINDS:
                for mode in rotated(modes, rep):
                    progs = bench.floor if mode == "floor" else bench.tracerd
                    bench.set_mode(mode)
                    before = [progs.counters(h) for h in HOOKS]
                    run = bench.run(mode, kind, calls)
                    after = [progs.counters(h) for h in HOOKS]
                    # Counters are system-wide: other processes' syscalls are in them
                    # too, diluting the figure; loop_share says by how much.
                    d = [(a[0] - b[0], a[1] - b[1]) for a, b in zip(after, before, strict=True)]
                    out[mode][kind].append(
                        KernelSample(
                            enter_ns=d[0][0] / max(1, d[0][1]),
                            exit_ns=d[1][0] / max(1, d[1][1]),
                            loop_share=run.calls / max(1, d[0][1]),
                        )
                    )
            log(f"in-kernel: repetition {rep + 1}/{reps} done")
        bench.set_mode("untraced")
    return out


# --------------------------------------------------------------------------------------
# Summaries and output
# --------------------------------------------------------------------------------------


def iqr(values: Sequence[float]) -> list[float]:
    """[25th, 75th] percentile: the spread that one or two outlier runs don't inflate."""
    q = statistics.quantiles(values, n=4)
    return [q[0], q[2]]


def wall_rows(samples: Samples) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for kind in KINDS:
        base = samples["untraced"][kind]
        floor_added = [f - b for f, b in zip(samples["floor"][kind], base, strict=True)]
        floor_med = statistics.median(floor_added)
        for mode in MODES:
            vals = samples[mode][kind]
            # Added cost per repetition against the untraced run of the same
            # repetition (paired), then the median: neighbouring runs share drifts.
            added = [v - b for v, b in zip(vals, base, strict=True)]
            row: dict[str, Any] = {
                "kind": kind,
                "mode": mode,
                "ns_per_call": statistics.median(vals),
                "iqr": iqr(vals),
                "added_ns": None if mode == "untraced" else statistics.median(added),
                "x_floor": None,
                "x_floor_iqr": None,
                "target": TARGETS.get(mode),
                "verdict": None,
            }
            if mode != "untraced":
                row["x_floor"] = row["added_ns"] / floor_med
            if mode in TARGETS:
                per_rep = [a / f for a, f in zip(added, floor_added, strict=True) if f > 0]
                row["x_floor_iqr"] = iqr(per_rep) if len(per_rep) >= 2 else None
                margin = row["x_floor"] - row["target"]
                row["verdict"] = f"{'met' if margin <= 0 else 'missed'} ({margin:+.2f})"
            rows.append(row)
    return rows


def kernel_rows(
    samples: dict[str, dict[str, list[KernelSample]]], wall: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    floor_wall = {r["kind"]: r["added_ns"] for r in wall if r["mode"] == "floor"}
    rows: list[dict[str, Any]] = []
    for kind in KINDS:
        floor_total = statistics.median(s.enter_ns + s.exit_ns for s in samples["floor"][kind])
        for mode, per_kind in samples.items():
            ss = per_kind[kind]
            total = statistics.median(s.enter_ns + s.exit_ns for s in ss)
            rows.append(
                {
                    "kind": kind,
                    "mode": mode,
                    "enter_ns": statistics.median(s.enter_ns for s in ss),
                    "exit_ns": statistics.median(s.exit_ns for s in ss),
                    "total_ns": total,
                    # A difference, not a ratio: every figure carries the same constant
                    # bpf_stats overhead (clock reads around each run), which the
                    # difference cancels and a ratio would not.
                    "over_floor_ns": total - floor_total,
                    # Second estimate of the wall-clock ratio: the floor's measured
                    # wall cost plus tracerd's extra in-kernel work. Far less noisy
                    # than the wall-clock ratio, it shows whether a verdict is solid.
                    "est_x_floor": (floor_wall[kind] + total - floor_total) / floor_wall[kind]
                    if floor_wall[kind] > 0
                    else None,
                    "loop_share": statistics.median(s.loop_share for s in ss),
                }
            )
    return rows


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def render(meta: dict[str, Any], wall: list[dict[str, Any]], kern: list[dict[str, Any]]) -> str:
    lines = [
        f"tracerd kernel cost  {meta['date']}",
        f"kernel {meta['kernel']}  {meta['cpus']} CPUs ({meta['cpu_model']})  "
        f"loop on CPU {meta['loop_cpu']}  bpf_jit_enable={meta['bpf_jit_enable']}",
        f"{meta['calls']} calls per run; {meta['reps']} wall-clock and {meta['kernel_reps']} "
        f"in-kernel interleaved repetitions; medians; load average {meta['loadavg']}",
        "",
        "Wall clock (bpf_stats off). added = ns/call over untraced, paired per repetition;",
        "x floor = added / floor's added; IQR = interquartile range over the repetitions.",
        f"{'loop':<14}{'mode':<11}{'ns/call':>9}{'IQR':>10}{'added':>8}"
        f"{'x floor':>9}{'IQR':>12}{'target':>9}  verdict",
    ]
    for r in wall:
        spread = f"{r['iqr'][0]:.0f}-{r['iqr'][1]:.0f}"
        rng = r["x_floor_iqr"]
        rng_s = f"{rng[0]:.2f}-{rng[1]:.2f}" if rng else "-"
        target = f"<={r['target']:.2f}" if r["target"] else ""
        lines.append(
            f"{r['kind']:<14}{r['mode']:<11}{r['ns_per_call']:>9.1f}{spread:>10}"
            f"{fmt(r['added_ns']):>8}{fmt(r['x_floor'], '.2f'):>9}{rng_s:>12}{target:>9}"
            f"  {r['verdict'] or ''}".rstrip()
        )
    lines += [
        "",
        "In-kernel run time (separate pass, bpf_stats on): median ns per program run.",
        "Each figure includes bpf_stats' own clock reads (the floor's is mostly that);",
        "+floor = enter+exit minus the floor's, i.e. the work of tracerd's programs;",
        "est x floor = (wall floor added + '+floor') / wall floor added.",
        "loop share = loop syscalls / program runs (the rest: other processes' syscalls).",
        f"{'loop':<14}{'mode':<11}{'enter':>8}{'exit':>8}{'sum':>8}{'+floor':>8}"
        f"{'est x floor':>13}{'loop share':>12}",
    ]
    lines += [
        f"{r['kind']:<14}{r['mode']:<11}{r['enter_ns']:>8.1f}{r['exit_ns']:>8.1f}"
        f"{r['total_ns']:>8.1f}{r['over_floor_ns']:>8.1f}{fmt(r['est_x_floor'], '.2f'):>13}"
        f"{r['loop_share']:>12.1%}"
        for r in kern
    ]
    return "\n".join(lines)


def machine_meta(reps: int, kernel_reps: int, calls: int, cpu: int) -> dict[str, Any]:
    return {
        **machine_facts(cpu),
        "bpf_jit_enable": Path("/proc/sys/net/core/bpf_jit_enable").read_text().strip(),
        "reps": reps,
        "kernel_reps": kernel_reps,
        "calls": calls,
        "python": platform.python_version(),
    }


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # Turn SIGTERM/SIGHUP into an exception so every finally/ExitStack callback runs.
    raise SystemExit(128 + signum)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    # Many short runs rather than a few long ones: this VM's speed drifts by 10-20%
    # over tens of milliseconds to seconds, and medians of paired neighbours over many
    # repetitions beat long averages (41 x 100k gave x-floor ratios stable to +-0.05-0.1
    # between whole runs here, 5 x 1M only to +-0.4).
    p.add_argument("--reps", type=int, default=41, help="wall-clock repetitions (>= 5)")
    p.add_argument("--calls", type=int, default=100_000, help="syscalls per loop run")
    p.add_argument(
        "--kernel-reps",
        type=int,
        default=5,
        help="in-kernel repetitions (>= 5; per-run program times barely vary)",
    )
    p.add_argument(
        "--cpu",
        type=int,
        default=max(os.sched_getaffinity(0)),
        help="CPU to pin the loop to, -1 for none (default: the highest allowed)",
    )
    p.add_argument("--json", type=Path, help="also write every figure to this file")
    args = p.parse_args(argv)
    if min(args.reps, args.kernel_reps) < 5:
        p.error("--reps and --kernel-reps must be at least 5: fewer runs are too noisy")
    if args.calls < 10_000:
        p.error("--calls must be at least 10000")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print(
            "kernel_cost: needs root (loads BPF, writes kernel.bpf_stats_enabled)", file=sys.stderr
        )
        return 77

    def log(msg: str) -> None:
        print(f"  .. {msg}", file=sys.stderr, flush=True)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)

    warnings: list[str] = []
    if BPF_STATS.read_text().strip() != "0":
        warnings.append("kernel.bpf_stats_enabled was already on: wall figures include it")
    meta = machine_meta(args.reps, args.kernel_reps, args.calls, args.cpu)
    try:
        with contextlib.ExitStack() as stack:
            binary = build_loop(RESULTS)
            # The "session": a tracked process that makes no syscalls, so that in
            # untracked mode tracerd has live state while the loop is not part of it.
            session = subprocess.Popen(["sleep", "infinity"])
            stack.callback(session.wait)
            stack.callback(session.kill)

            log("loading the empty programs and tracerd's programs")
            floor_bpf = bcc.BPF(text=FLOOR_SRC)
            stack.callback(floor_bpf.cleanup)
            probe = stack.enter_context(Probe(Limits.for_this_kernel()))
            probe.track(session.pid)
            # Probe keeps its BCC object private; the bench needs its attachments.
            floor = Programs("floor", floor_bpf)
            tracerd = Programs("tracerd", probe._bpf)
            floor.detach()
            tracerd.detach()
            # No explicit detach on the way out: BCC's cleanup (registered above)
            # closes whatever is attached at that moment, error or not.
            bench = Bench(binary, args.cpu, floor, tracerd, probe, session.pid)

            foreign = foreign_syscall_hooks()
            if foreign:
                warnings.append(f"other BPF programs on the syscall hooks: {', '.join(foreign)}")
            wall_samples = wall_pass(bench, args.reps, args.calls, log)
            kern_samples = kernel_pass(bench, args.kernel_reps, args.calls, log)
            foreign_after = sorted(set(foreign_syscall_hooks()) - set(foreign))
            if foreign_after:
                warnings.append(f"appeared during the run: {', '.join(foreign_after)}")
    except BenchError as e:
        print(f"kernel_cost: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kernel_cost: interrupted, everything unloaded", file=sys.stderr)
        return 130

    wall = wall_rows(wall_samples)
    kern = kernel_rows(kern_samples, wall)
    print(render(meta, wall, kern))
    for w in warnings:
        print(f"WARNING: {w}")
    if args.json:
        doc = {
            "meta": meta,
            "wall": wall,
            "in_kernel": kern,
            "warnings": warnings,
            "samples": {
                "wall_ns_per_call": wall_samples,
                "in_kernel": {
                    m: {k: [asdict(s) for s in ss] for k, ss in per_kind.items()}
                    for m, per_kind in kern_samples.items()
                },
            },
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
