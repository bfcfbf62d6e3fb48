#!/usr/bin/env python3
"""Syscall events/s tracerd delivers to a gRPC client with no loss, and where loss begins.

    .venv/bin/python bench/events_throughput.py [--quick] [--rates 10k,25k,...,0]
        [--seconds S] [--reps N] [--cpu N] [--queue N] [--typed-client] [--no-peers]
        [--no-local] [--no-install] [--local-ring-pages N] [--json FILE]

bench/events_loop.c makes getppid calls at a target rate (busy-waiting between small
bursts; 0: flat out) for a fixed time. For each rate of a ladder, a fresh client starts a
``tracerd serve`` session on the loop exactly at its execve (tracerd._run.spawn_tracked,
as ``tracerd run --remote`` does) and counts the events of StreamEvents as they arrive:
achieved call rate, events delivered, lost (kernel_lost + dropped), delivered events/s,
and whether delivered + lost equals the calls the session's report counted.

Side by side on the flat-out loop, run first with no daemon running: untraced,
``strace -f -o``, strace with timestamps and durations, ``bpftrace`` printing the same
fields per syscall, and tracerd in-process (tracerd._run.run_command, no gRPC).

Root only. Every process it starts is killed on exit, error, Ctrl-C or SIGTERM.
See bench/README.md for the method and the latest figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

from _build import (  # bench/_build.py: scripts run from here
    Children,
    build_c,
    ensure_tool,
    foreign_syscall_hooks,
    machine_facts,
    read_loop_result,
)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"  # git-ignored
TRACERD = ROOT / ".venv" / "bin" / "tracerd"

TARGET_EVENTS_PER_S = 500_000  # from the issue: delivered over gRPC, without loss
DEFAULT_RATES = "10k,25k,50k,75k,100k,125k,150k,200k,300k,500k,550k,600k,650k,800k,0"
QUICK_RATES = "50k,100k,200k,500k,0"
BIG = 1 << 40  # "no call limit": the loop stops on its time limit
OTHER_LOAD_WARN = 0.25  # CPUs used by other processes during a run worth a warning
WARM_UP_S = 0.5  # flat out: several times the 8 MiB ring's ~80k events

# bpftrace: one line per syscall of the loop, the fields a tracerd event carries that
# strace -ttt -T shows too: pid, tid, syscall nr, return value, duration, timestamp.
BPFTRACE_PROG = r"""
tracepoint:raw_syscalls:sys_enter /pid == cpid/ { @start[tid] = nsecs; }
tracepoint:raw_syscalls:sys_exit /pid == cpid && @start[tid]/ {
  printf("%d %d %d %d %d %d\n", pid, tid, args->id, args->ret, nsecs - @start[tid],
         @start[tid]);
  delete(@start[tid]);
}
END { clear(@start); }
"""
BPFTRACE_LINE = re.compile(rb"^-?\d+ -?\d+ -?\d+ -?\d+ -?\d+ -?\d+$", re.M)
BPFTRACE_LOST = re.compile(rb"Lost (\d+) events")


class BenchError(Exception):
    """A failure that ends the bench with a one-line message."""


def log(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# The workload
# --------------------------------------------------------------------------------------


def build_loop(out_dir: Path) -> Path:
    return build_c("events_loop.c", out_dir, BenchError)


def loop_argv(binary: Path, rate: int, seconds: float, cpu: int, out: Path) -> list[str]:
    return [str(binary), str(rate), str(BIG), str(seconds), str(cpu), str(out)]


# --------------------------------------------------------------------------------------
# One traced run: a worker process (``--worker``), so that its gRPC client is created
# after the fork of the loop, as tracerd run --remote does, and its CPU time is its own.
# --------------------------------------------------------------------------------------


@dataclass
class Run:
    """One run of the loop under tracerd; every time is CLOCK_MONOTONIC."""

    rate: float  # calls/s the loop achieved
    loop_calls: int
    delivered: int  # events the client received
    kernel_lost: int
    dropped: int
    session_calls: int  # syscalls the session's report counted
    wall_s: float  # loop start to the last event received
    drain_s: float  # loop end to the last event received
    batches: int
    client_cpu_s: float  # the consumer (worker) process, while the loop ran and drained
    tracer_cpu_s: float = 0.0  # the daemon (or the in-process tracer), same interval
    other_cpu: float = 0.0  # CPUs used by processes not the bench's during the run

    @property
    def lost(self) -> int:
        return self.kernel_lost + self.dropped

    @property
    def delivered_per_s(self) -> float:
        return self.delivered / max(1e-9, self.wall_s)

    @property
    def unaccounted(self) -> int:
        """Calls the session counted that were neither delivered nor reported lost."""
        return self.session_calls - self.delivered - self.lost

    @property
    def accounted(self) -> bool:
        return self.unaccounted == 0

    @property
    def lossless(self) -> bool:
        return self.lost == 0 and self.accounted


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@dataclass
class _Counter:
    """What the consumer thread saw of the stream."""

    events: int = 0
    batches: int = 0
    kernel_lost: int = 0
    dropped: int = 0
    last_ns: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None

    def add(self, n: int, kernel_lost: int, dropped: int, last: bool) -> bool:
        self.events += n
        self.batches += 1
        self.kernel_lost, self.dropped = kernel_lost, dropped
        if last:
            self.last_ns = time.monotonic_ns()
            self.done.set()
        return last


def worker_remote(spec: dict[str, Any]) -> dict[str, Any]:
    """Trace the loop through the daemon at spec['socket']; returns a Run as a dict."""
    import grpc  # noqa: PLC0415 - workers only

    from tracerd import _records  # noqa: PLC0415
    from tracerd._run import spawn_tracked  # noqa: PLC0415
    from tracerd._sessions import SessionOptions, SpawnedTarget  # noqa: PLC0415
    from tracerd.client import Client  # noqa: PLC0415
    from tracerd.v1 import tracerd_pb2 as pb  # noqa: PLC0415
    from tracerd.v1 import tracerd_pb2_grpc as pb_grpc  # noqa: PLC0415

    argv: list[str] = spec["argv"]
    sock: str = spec["socket"]
    out = Path(spec["out"])
    count = _Counter()
    clients: list[Client] = []
    channels: list[grpc.Channel] = []
    sid: list[str] = []
    cpu0: list[float] = []

    def consume(stream: Iterator[Any]) -> None:
        try:
            for b in stream:  # tracerd.client's EventBatch or the raw protobuf message
                n = len(b) if spec["typed"] else (
                    _records.count(b.records) if spec["packed"] else len(b.events))
                if count.add(n, b.kernel_lost, b.dropped, b.last):
                    return
            count.error = "the stream ended without its last batch"
        except Exception as e:
            count.error = f"stream: {e}"
        finally:
            count.done.set()

    def register(pid: int, _path: str) -> None:
        # Connected only now: a child forked after gRPC has started its threads would
        # run gRPC's fork handlers (same reason as in tracerd run --remote).
        client = Client(sock)
        clients.append(client)
        opts = SessionOptions(events=True, per_process=True)
        sid.append(client.start(SpawnedTarget(pid=pid, argv=tuple(argv)), opts).id)
        stream: Iterator[Any]
        if spec["typed"]:
            # tracerd.client: every event converted to a tracerd.model.SyscallEvent.
            stream = client.stream_events(sid[0], queue=spec["queue"],
                                          packed=spec["packed"])
        else:
            # The generated stub on its own channel: events are parsed (upb) and
            # counted, never converted, so the figure is the daemon's, not a client's.
            ch = grpc.insecure_channel(f"unix:{sock}")
            channels.append(ch)
            stream = pb_grpc.TracerStub(ch).StreamEvents(
                pb.StreamEventsRequest(session_id=sid[0], queue=spec["queue"],
                                       packed=spec["packed"]))
        threading.Thread(target=consume, args=(stream,), daemon=True).start()
        # Subscribed: the first events wait in the session's backlog until the stream
        # is served. Let the stream settle so the loop is not racing its set-up.
        time.sleep(0.2)
        cpu0.append(_cpu_s())

    try:
        pid = spawn_tracked(argv, register)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise BenchError(f"the loop exited with wait status {status}")
        if not count.done.wait(spec["timeout"]):
            raise BenchError(f"no last batch {spec['timeout']:.0f} s after the loop ended")
        if count.error:
            raise BenchError(count.error)
        cpu = _cpu_s() - cpu0[0]
        _, report = clients[0].report(sid[0])
    finally:
        for c in clients:
            c.close()
        for ch in channels:
            ch.close()
    loop = read_loop_result(out, BenchError)
    return asdict(Run(
        rate=loop.rate, loop_calls=loop.calls, delivered=count.events,
        kernel_lost=count.kernel_lost, dropped=count.dropped,
        session_calls=sum(s.calls for s in report.totals().values()),
        wall_s=(count.last_ns - loop.t0_ns) / 1e9, drain_s=(count.last_ns - loop.t1_ns) / 1e9,
        batches=count.batches, client_cpu_s=cpu))


def worker_local(spec: dict[str, Any]) -> dict[str, Any]:
    """Trace the loop in this process (tracerd._run.run_command: the daemon's hub and
    pump, no gRPC); events are counted in the callback that would print them."""
    from tracerd._events import EventBatch, EventFilter  # noqa: PLC0415
    from tracerd._probe import Limits, Probe  # noqa: PLC0415
    from tracerd._run import run_command  # noqa: PLC0415

    count = _Counter()

    def on_events(b: EventBatch) -> None:
        count.add(len(b.events), b.kernel_lost, b.dropped, b.last)

    overrides = {"ev_ringbuf_pages": spec["ring_pages"]} if spec["ring_pages"] else {}
    with Probe(Limits.for_this_kernel(**overrides)) as probe:
        cpu0 = _cpu_s()
        outcome = run_command(probe, spec["argv"], events=EventFilter(), on_events=on_events)
        cpu = _cpu_s() - cpu0
    if outcome.status != 0:
        raise BenchError(f"the loop exited with status {outcome.status}")
    if not count.done.is_set():
        raise BenchError("run_command returned before the last batch")
    loop = read_loop_result(Path(spec["out"]), BenchError)
    return asdict(Run(
        rate=loop.rate, loop_calls=loop.calls, delivered=count.events,
        kernel_lost=count.kernel_lost, dropped=count.dropped,
        session_calls=sum(s.calls for s in outcome.report.totals().values()),
        wall_s=(count.last_ns - loop.t0_ns) / 1e9, drain_s=(count.last_ns - loop.t1_ns) / 1e9,
        batches=count.batches, client_cpu_s=0.0, tracer_cpu_s=cpu))


def worker_main(kind: str, spec_json: str) -> int:
    spec = json.loads(spec_json)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the bench (our parent) decides
    try:
        doc = worker_remote(spec) if kind == "remote" else worker_local(spec)
    except Exception as e:  # one line for the bench to show in its row
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 1
    print(json.dumps(doc))
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (every thread), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _busy_s() -> float:
    """CPU time the whole machine spent busy (not idle, not stolen by the host)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = f
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """CPUs used by processes that are not the bench's (this one, its children and
    theirs, the live daemon) over an interval: the noise a figure was taken under."""

    def __init__(self, live: Sequence[int] = ()) -> None:
        self.live = live  # our processes not reaped during the interval
        self.t0, self.busy0, self.ours0 = time.monotonic(), _busy_s(), self._ours()

    def _ours(self) -> float:
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped descendants
        return (me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
                + sum(cpu_seconds(p) for p in self.live))

    def cpus(self) -> float:
        dt_s = max(1e-9, time.monotonic() - self.t0)
        return max(0.0, (_busy_s() - self.busy0) - (self._ours() - self.ours0)) / dt_s


class Daemon:
    """``tracerd serve`` on a Unix socket in a temporary directory."""

    def __init__(self, children: Children, workdir: Path) -> None:
        self.children = children
        self.socket = str(workdir / "run" / "tracerd.sock")
        self.log_path = workdir / "daemon.log"
        with open(self.log_path, "wb") as logf:
            self.proc = children.popen([str(TRACERD), "serve", "--socket", self.socket],
                                       stdout=logf, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> None:
        # Asked from a child process: this process forks workers and loops and should
        # hold no gRPC threads of its own.
        probe = ("import sys; from tracerd.client import Client; "
                 "Client(sys.argv[1], timeout=5).info()")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"tracerd serve exited {self.proc.returncode}: {self.log()}")
            if os.path.exists(self.socket):
                res = subprocess.run([sys.executable, "-c", probe, self.socket],
                                     capture_output=True, stdin=subprocess.DEVNULL,
                                     check=False)
                if res.returncode == 0:
                    return
            time.sleep(0.2)
        raise BenchError(f"tracerd serve not ready after {timeout:.0f} s: {self.log()}")

    def cpu_s(self) -> float:
        return cpu_seconds(self.proc.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        self.children.terminate(self.proc)


# --------------------------------------------------------------------------------------
# The runs
# --------------------------------------------------------------------------------------


@dataclass
class Config:
    binary: Path
    workdir: Path
    seconds: float
    cpu: int
    queue: int
    typed: bool
    ring_pages: int
    packed: bool = True


def run_worker(children: Children, cfg: Config, kind: str, rate: int,
               daemon: Daemon | None = None) -> Run:
    out = cfg.workdir / "loop.out"
    out.unlink(missing_ok=True)
    spec = {"argv": loop_argv(cfg.binary, rate, cfg.seconds, cfg.cpu, out), "out": str(out),
            "socket": daemon.socket if daemon else "", "queue": cfg.queue, "typed": cfg.typed,
            "packed": cfg.packed,
            "ring_pages": cfg.ring_pages, "timeout": 120.0 + 10 * cfg.seconds}
    cpu0 = daemon.cpu_s() if daemon else 0.0
    load = OtherLoad([daemon.proc.pid] if daemon else [])
    proc = children.popen([sys.executable, __file__, f"--worker={kind}", json.dumps(spec)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Generous: compiling tracerd's programs (local) and a slow drain both take a while.
    stdout, stderr = children.finish(proc, 300 + 20 * cfg.seconds)
    try:
        doc = json.loads(stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError(f"worker {kind} failed ({proc.returncode}): "
                         f"{stderr.decode(errors='replace')[-1500:]}") from None
    if "error" in doc:
        raise BenchError(f"worker {kind}: {doc['error']}")
    run = Run(**doc)
    run.other_cpu = load.cpus()
    if daemon is not None:
        run.tracer_cpu_s = daemon.cpu_s() - cpu0
    return run


@dataclass
class PeerRun:
    rate: float  # calls/s the loop achieved
    events: int | None  # events the tool wrote (None: it records none)
    lost: int | None
    wall_s: float  # loop start to the tool done writing
    other_cpu: float = 0.0  # CPUs used by processes not the bench's during the run

    @property
    def events_per_s(self) -> float | None:
        return None if self.events is None else self.events / max(1e-9, self.wall_s)


def last_write_ns(path: Path, fallback_ns: int) -> int:
    """When ``path`` was last written, on the CLOCK_MONOTONIC scale (not after
    ``fallback_ns``): a tool's figure should not include its own tear-down."""
    mtime_ns = path.stat().st_mtime_ns
    offset = time.time_ns() - time.monotonic_ns()  # realtime - monotonic, now
    return min(fallback_ns, mtime_ns - offset)


def run_untraced(children: Children, cfg: Config) -> PeerRun:
    out = cfg.workdir / "loop.out"
    load = OtherLoad()
    proc = children.popen(loop_argv(cfg.binary, 0, cfg.seconds, cfg.cpu, out))
    children.finish(proc, 60 + 5 * cfg.seconds)
    loop = read_loop_result(out, BenchError)
    return PeerRun(rate=loop.rate, events=None, lost=None,
                   wall_s=(loop.t1_ns - loop.t0_ns) / 1e9, other_cpu=load.cpus())


def run_strace(children: Children, cfg: Config, flags: Sequence[str]) -> PeerRun:
    out, trace = cfg.workdir / "loop.out", cfg.workdir / "strace.out"
    exe = shutil.which("strace")
    if exe is None:
        raise BenchError("strace not installed (apt-get install strace)")
    load = OtherLoad()
    proc = children.popen([exe, *flags, "-o", str(trace),
                           *loop_argv(cfg.binary, 0, cfg.seconds, cfg.cpu, out)],
                          stderr=subprocess.PIPE)
    _, err = children.finish(proc, 120 + 100 * cfg.seconds)
    done_ns = time.monotonic_ns()
    if proc.returncode != 0:
        raise BenchError(f"strace exited {proc.returncode}: {err.decode(errors='replace')[-300:]}")
    loop = read_loop_result(out, BenchError)
    done_ns = last_write_ns(trace, done_ns)
    # One line per syscall; not the "+++ exited" and "--- SIG" lines.
    events = sum(1 for line in trace.open("rb")
                 if not re.match(rb"^\d+ +(\+\+\+|---) ", line))
    trace.unlink()
    # strace stops the loop at every call until the line is written: it never loses.
    return PeerRun(rate=loop.rate, events=events, lost=0, wall_s=(done_ns - loop.t0_ns) / 1e9,
                   other_cpu=load.cpus())


def run_bpftrace(children: Children, cfg: Config) -> PeerRun:
    out, trace = cfg.workdir / "loop.out", cfg.workdir / "bpftrace.out"
    exe = shutil.which("bpftrace")
    if exe is None:
        raise BenchError("bpftrace not installed (apt-get install bpftrace)")
    cmd = " ".join(loop_argv(cfg.binary, 0, cfg.seconds, cfg.cpu, out))
    # -c: bpftrace attaches first, then starts the loop (cpid) and exits after it.
    load = OtherLoad()
    proc = children.popen([exe, "-o", str(trace), "-c", cmd, "-e", BPFTRACE_PROG],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          preexec_fn=_unlimited_memlock)
    stdout, err = children.finish(proc, 120 + 20 * cfg.seconds)
    done_ns = time.monotonic_ns()
    if proc.returncode != 0:
        raise BenchError(f"bpftrace exited {proc.returncode}: "
                         f"{err.decode(errors='replace').strip()[-300:]}")
    loop = read_loop_result(out, BenchError)
    done_ns = last_write_ns(trace, done_ns)
    text = trace.read_bytes()
    trace.unlink()
    lost = sum(int(n) for blob in (text, stdout, err) for n in BPFTRACE_LOST.findall(blob))
    return PeerRun(rate=loop.rate, events=len(BPFTRACE_LINE.findall(text)), lost=lost,
                   wall_s=(done_ns - loop.t0_ns) / 1e9, other_cpu=load.cpus())


def _unlimited_memlock() -> None:
    # bpftrace 0.17 warns when it cannot raise RLIMIT_MEMLOCK itself.
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY,) * 2)


# --------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------


def med(values: Sequence[float]) -> float:
    return statistics.median(values)


def rung_row(target: int, runs: Sequence[Run]) -> dict[str, Any]:
    return {
        "target": target,
        "rate": med([r.rate for r in runs]),
        "events": med([r.session_calls for r in runs]),
        "delivered": med([r.delivered for r in runs]),
        "delivered_per_s": med([r.delivered_per_s for r in runs]),
        "lost": max(r.lost for r in runs),
        "lost_share": max((r.session_calls - r.delivered) / max(1, r.session_calls)
                          for r in runs),
        "kernel_lost": max(r.kernel_lost for r in runs),
        "dropped": max(r.dropped for r in runs),
        "unaccounted": max(r.unaccounted for r in runs),
        # Unaccounted events never reached the client either: a run is lossless only
        # when the client got every call the session counted.
        "lossy_reps": sum(1 for r in runs if not r.lossless),
        "reps": len(runs),
        "drain_s": med([r.drain_s for r in runs]),
        "tracer_cpu": med([r.tracer_cpu_s / max(1e-9, r.wall_s) for r in runs]),
        "client_cpu": med([r.client_cpu_s / max(1e-9, r.wall_s) for r in runs]),
        "check": "OK" if all(r.accounted for r in runs) else "MISMATCH",
        "other_cpu": max(r.other_cpu for r in runs),
    }


#: Second figure: the most delivered with at most this share of events not received, so
#: a few sporadic kernel losses do not hide what the pipeline can carry.
NEAR_ZERO = 1e-4


def headline(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    # delivered/s, not the call rate: a run can be lossless while the stream lags
    # behind (the events wait in the daemon's queues), and then delivers less per second.
    def best(ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        return max((r for r in rows if ok(r)), key=lambda r: r["delivered_per_s"],
                   default=None)

    zero = best(lambda r: r["lossy_reps"] == 0)
    near = best(lambda r: r["lost_share"] <= NEAR_ZERO)
    first_loss = min((r for r in rows if r["lossy_reps"]),
                     key=lambda r: r["target"] or float("inf"), default=None)
    rate = zero["delivered_per_s"] if zero else 0.0
    return {
        "zero_loss_events_per_s": rate,
        "zero_loss_calls_per_s": zero["rate"] if zero else None,
        "zero_loss_target": zero["target"] if zero else None,
        "near_zero_share": NEAR_ZERO,
        "near_zero_events_per_s": near["delivered_per_s"] if near else 0.0,
        "near_zero_target": near["target"] if near else None,
        "loss_begins_target": first_loss["target"] if first_loss else None,
        "loss_begins_calls_per_s": first_loss["rate"] if first_loss else None,
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "verdict": "met" if rate >= TARGET_EVENTS_PER_S else "missed",
    }


def k(v: float | None) -> str:
    """Rates in thousands: 123456 -> '123k'."""
    if v is None:
        return "-"
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.0f}k"


def target_name(t: int) -> str:
    return "flat out" if t == 0 else k(t)


def render(meta: dict[str, Any], rows: Sequence[dict[str, Any]], head: dict[str, Any],
           peers: Sequence[dict[str, Any]], warnings: Sequence[str]) -> str:
    client = "tracerd.client.Client.stream_events (decoded)" if meta["typed_client"] else \
        "generated stub, events counted"
    client += ", packed kernel records" if meta.get("packed", True) else ", a message per event"
    lines = [
        f"tracerd events throughput  {meta['date']}",
        f"kernel {meta['kernel']}  {meta['cpus']} CPUs ({meta['cpu_model']})  "
        f"loop on CPU {meta['loop_cpu']}  load average {meta['loadavg']}",
        f"getppid loop, {meta['seconds']:g} s per run, {meta['reps']} repetition(s) per rate; "
        "medians (lost, unacc, not got, other: the most of any repetition)",
        f"client: {client}; stream queue {meta['queue'] or 'daemon default (1048576)'}; "
        "daemon ring buffer 8 MiB",
    ]
    if rows:
        lines += [
            "",
            "tracerd serve -> gRPC StreamEvents over its Unix socket",
            "events = calls in the session's report; lost = kernel_lost + dropped as the",
            "stream reported them; unacc = events neither delivered nor reported lost",
            "(check: MISMATCH); not got = share of events the client did not receive;",
            "lossy = runs with any loss; deliv/s = events received / (loop start to last",
            "event received); drain = loop end to last event; daemon, client = their CPU",
            "time over that interval, in CPUs; other = CPUs used by other processes.",
            f"{'target':>9}{'calls/s':>9}{'events':>9}{'deliv/s':>9}{'lost':>9}{'unacc':>7}"
            f"{'not got':>8}{'lossy':>7}{'drain s':>8}{'daemon':>7}{'client':>7}{'other':>6}"
            "  check",
        ]
    for r in rows:
        lines.append(
            f"{target_name(r['target']):>9}{k(r['rate']):>9}{k(r['events']):>9}"
            f"{k(r['delivered_per_s']):>9}{r['lost']:>9}{r['unaccounted']:>7}"
            f"{r['lost_share']:>8.2%}{r['lossy_reps']:>5}/{r['reps']:<1}{r['drain_s']:>8.2f}"
            f"{r['tracer_cpu']:>7.2f}{r['client_cpu']:>7.2f}{r['other_cpu']:>6.2f}"
            f"  {r['check']}")
    if peers:
        lines += ["", "Flat out, side by side (slow-down = untraced calls/s / calls/s; events/s",
                  "= events written or received / (loop start to the tool done); other as above)",
                  f"{'tool':<34}{'calls/s':>9}{'slow-down':>10}{'events/s':>10}{'events':>9}"
                  f"{'lost':>9}{'other':>6}  note"]
    base = next((p["rate"] for p in peers if p["tool"] == "untraced" and p["rate"]), None)
    for p in peers:
        if p["rate"] is None:
            lines.append(f"{p['tool']:<34}{'-':>9}{'-':>10}{'-':>10}{'-':>9}{'-':>9}{'-':>6}"
                         f"  {p['note']}")
            continue
        slow = f"{base / p['rate']:.1f}x" if base else "-"
        lost = "-" if p["lost"] is None else str(p["lost"])
        lines.append(f"{p['tool']:<34}{k(p['rate']):>9}{slow:>10}{k(p['events_per_s']):>10}"
                     f"{k(p['events']):>9}{lost:>9}{p['other_cpu']:>6.2f}  {p['note']}".rstrip())
    if rows:
        if head["zero_loss_calls_per_s"] is None:
            zl = "tracerd zero-loss: no rate of the ladder was free of loss"
        else:
            zl = (f"tracerd zero-loss: {head['zero_loss_events_per_s']:,.0f} events/s "
                  f"delivered (rate {target_name(head['zero_loss_target'])}, "
                  f"{head['zero_loss_calls_per_s']:,.0f} calls/s achieved)")
        lb = ("no loss at any rate" if head["loss_begins_target"] is None else
              f"loss begins at rate {target_name(head['loss_begins_target'])} "
              f"({head['loss_begins_calls_per_s']:,.0f} calls/s achieved)")
        near = (f"with at most {NEAR_ZERO:.2%} not received: "
                f"{head['near_zero_events_per_s']:,.0f} events/s"
                + (f" (rate {target_name(head['near_zero_target'])})"
                   if head["near_zero_target"] is not None else ""))
        lines += ["", f"{zl};", f"{lb}; {near}",
                  f"target {TARGET_EVENTS_PER_S:,} events/s delivered without loss: "
                  f"{head['verdict']} ({head['zero_loss_events_per_s'] / TARGET_EVENTS_PER_S:.0%}"
                  " of it)"]
    lines += [f"WARNING: {w}" for w in warnings]
    return "\n".join(lines)


def peer_row(tool: str, runs: Sequence[PeerRun] | None, note: str = "") -> dict[str, Any]:
    if not runs:
        return {"tool": tool, "rate": None, "events": None, "events_per_s": None,
                "lost": None, "other_cpu": None, "note": note}
    eps = [r.events_per_s for r in runs if r.events_per_s is not None]
    ev = [r.events for r in runs if r.events is not None]
    lost = [r.lost for r in runs if r.lost is not None]
    return {"tool": tool, "rate": med([r.rate for r in runs]),
            "events": med(ev) if ev else None, "events_per_s": med(eps) if eps else None,
            "lost": max(lost) if lost else None, "other_cpu": max(r.other_cpu for r in runs),
            "note": note, "runs": [asdict(r) for r in runs]}


def run_peer_runs(fn: Callable[[], PeerRun], reps: int) -> tuple[list[PeerRun], str]:
    runs: list[PeerRun] = []
    try:
        for _ in range(reps):
            runs.append(fn())
    except BenchError as e:
        return runs, str(e)
    return runs, ""


def machine_meta(args: argparse.Namespace) -> dict[str, Any]:
    return {
        **machine_facts(args.cpu),
        "seconds": args.seconds,
        "reps": args.reps,
        "rates": args.rates,
        "queue": args.queue,
        "packed": not args.messages,
        "typed_client": args.typed_client,
        "local_ring_pages": args.local_ring_pages,
        "python": platform.python_version(),
    }


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # Turn SIGTERM/SIGHUP into an exception so every cleanup runs.
    raise SystemExit(128 + signum)


def parse_rate(s: str) -> int:
    s = s.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(s[-1:], 1)
    return int(float(s[:-1] if mult > 1 else s) * mult)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true",
                   help=f"short run: rates {QUICK_RATES}, 1 s, 1 repetition")
    p.add_argument("--rates", help=f"target calls/s, 0 = flat out (default {DEFAULT_RATES})")
    p.add_argument("--seconds", type=float, help="length of each run (default 3, quick 1)")
    p.add_argument("--reps", type=int, help="repetitions of each run (default 3, quick 1)")
    p.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)),
                   help="CPU to pin the loop to, -1 for none (default: the highest allowed)")
    p.add_argument("--queue", type=int, default=0,
                   help="StreamEvents queue (events); 0: the daemon's default")
    p.add_argument("--typed-client", action="store_true",
                   help="consume with tracerd.client.Client.stream_events (converts each "
                   "event) instead of counting the protobuf messages")
    p.add_argument("--messages", action="store_true",
                   help="StreamEvents with one protobuf message per event instead of the "
                   "packed kernel records (the default)")
    p.add_argument("--no-peers", action="store_true", help="skip untraced/strace/bpftrace")
    p.add_argument("--no-local", action="store_true", help="skip tracerd in-process")
    p.add_argument("--no-install", action="store_true",
                   help="do not apt-get install strace/bpftrace when missing")
    p.add_argument("--local-ring-pages", type=int, default=0,
                   help="event ring buffer pages for the in-process run (default: tracerd's)")
    p.add_argument("--json", type=Path, help="also write every figure to this file")
    args = p.parse_args(argv)
    args.rates = args.rates or (QUICK_RATES if args.quick else DEFAULT_RATES)
    try:
        args.rate_list = sorted({parse_rate(r) for r in args.rates.split(",")},
                                key=lambda r: r or float("inf"))
    except ValueError:
        p.error(f"--rates: not a list of rates: {args.rates}")
    args.seconds = args.seconds or (1.0 if args.quick else 3.0)
    args.reps = args.reps or (1 if args.quick else 3)
    if args.seconds < 0.2 or args.reps < 1:
        p.error("--seconds must be at least 0.2 and --reps at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("--worker="):
        return worker_main(argv[0].split("=", 1)[1], argv[1])
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("events_throughput: needs root (BPF, tracerd serve)", file=sys.stderr)
        return 77
    if not TRACERD.exists():
        print(f"events_throughput: {TRACERD} missing: run make setup", file=sys.stderr)
        return 1
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)

    meta = machine_meta(args)
    children = Children(BenchError)
    rows: list[dict[str, Any]] = []
    peers: list[dict[str, Any]] = []
    samples: dict[str, Any] = {}
    hooks: set[str] = set(foreign_syscall_hooks(()))
    try:
        with tempfile.TemporaryDirectory(prefix="tracerd-bench-") as tmp:
            cfg = Config(binary=build_loop(RESULTS), workdir=Path(tmp), seconds=args.seconds,
                         cpu=args.cpu, queue=args.queue, typed=args.typed_client,
                         ring_pages=args.local_ring_pages, packed=not args.messages)
            try:
                # Peers first, with no tracerd loaded: its programs on the syscall hooks
                # would slow every process down (bench/kernel_cost.py's "untracked").
                if not args.no_peers:
                    peers += run_peers(children, cfg, args)
                    hooks.update(foreign_syscall_hooks(()))
                if not args.no_local:
                    log("tracerd in-process (run_command), flat out")
                    local, err = run_local(children, cfg, args.reps)
                    peers.append(local_row(local, err, args.local_ring_pages))
                    samples["local"] = [asdict(r) for r in local]
                rows, ladder = run_ladder(children, cfg, args, hooks)
                samples["ladder"] = ladder
            finally:
                children.kill_all()
    except BenchError as e:
        print(f"events_throughput: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("events_throughput: interrupted, every child killed", file=sys.stderr)
        return 130

    flat = next((r for r in rows if r["target"] == 0), None)
    if flat is not None:
        at = 1 if peers and peers[0]["tool"] == "untraced" else 0
        peers.insert(at, {"tool": "tracerd serve -> gRPC client", "rate": flat["rate"],
                          "events": flat["delivered"],
                          "events_per_s": flat["delivered_per_s"], "lost": flat["lost"],
                          "note": f"the ladder's flat-out row; daemon "
                                  f"{flat['tracer_cpu']:.2f} CPUs",
                          "other_cpu": flat["other_cpu"]})
    head = headline(rows)
    warnings = []
    if hooks:
        warnings.append("other BPF programs on the syscall hooks during the run (they slow "
                        f"every syscall and compete for the CPUs): {', '.join(sorted(hooks))}")
    busy = max([r["other_cpu"] for r in rows] + [p["other_cpu"] or 0 for p in peers],
               default=0.0)
    if busy > OTHER_LOAD_WARN:
        warnings.append(f"other processes used up to {busy:.2f} CPUs during a run (column "
                        "'other'): figures taken then are low")
    print(render(meta, rows, head, peers, warnings))
    if args.json:
        doc = {"meta": meta, "ladder": rows, "peers": peers, "headline": head,
               "warnings": warnings, "samples": samples}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


def run_peers(children: Children, cfg: Config, args: argparse.Namespace
              ) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    log("untraced, flat out")
    runs, err = run_peer_runs(lambda: run_untraced(children, cfg), args.reps)
    if not runs:
        raise BenchError(f"the untraced loop failed: {err}")
    out.append(peer_row("untraced", runs, err))
    why = ensure_tool("strace", "strace", not args.no_install, log)
    for tool, flags in (("strace -f -o FILE", ["-f"]),
                        ("strace -f -ttt -T -o FILE", ["-f", "-ttt", "-T"])):
        if why:
            out.append(peer_row(tool, None, why))
            continue
        log(f"{tool}, flat out")
        runs, err = run_peer_runs(lambda f=flags: run_strace(children, cfg, f),  # type: ignore[misc]
                                  args.reps)
        out.append(peer_row(tool, runs, err))
    tool = "bpftrace (pid tid nr ret dur ts)"
    why = ensure_tool("bpftrace", "bpftrace", not args.no_install, log)
    if why:
        out.append(peer_row(tool, None, why))
    else:
        log("bpftrace printf per syscall, flat out")
        runs, err = run_peer_runs(lambda: run_bpftrace(children, cfg), args.reps)
        out.append(peer_row(tool, runs, err))
    return out


def run_local(children: Children, cfg: Config, reps: int) -> tuple[list[Run], str]:
    runs: list[Run] = []
    try:
        for _ in range(reps):
            runs.append(run_worker(children, cfg, "local", 0))
    except BenchError as e:
        return runs, str(e)
    return runs, ""


def local_row(runs: Sequence[Run], err: str, ring_pages: int) -> dict[str, Any]:
    tool = "tracerd run (in-process, no gRPC)"
    ring = f"ring {ring_pages * 4} KiB" if ring_pages else "ring 8 MiB"
    if not runs:
        return peer_row(tool, None, err)
    note = f"{ring}; {med([r.tracer_cpu_s / r.wall_s for r in runs]):.2f} CPUs"
    bad = [r for r in runs if not r.accounted]
    if bad:
        note += f"; MISMATCH in {len(bad)} run(s), up to {max(r.unaccounted for r in bad)}"
    if err:
        note += f"; {err}"
    return {"tool": tool, "rate": med([r.rate for r in runs]),
            "events": med([r.delivered for r in runs]),
            "events_per_s": med([r.delivered_per_s for r in runs]),
            "lost": max(r.lost for r in runs), "other_cpu": max(r.other_cpu for r in runs),
            "note": note}


def run_ladder(children: Children, cfg: Config, args: argparse.Namespace, hooks: set[str]
               ) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    log("starting tracerd serve")
    daemon = Daemon(children, cfg.workdir)
    try:
        daemon.wait_ready()
        # One discarded flat-out run first: page cache, maps, and the event ring wrapped
        # at least once, so that every measured run finds the daemon in the same state
        # (on this kernel, sporadic kernel losses start only once the ring has wrapped).
        warm = replace(cfg, seconds=WARM_UP_S)
        run = run_worker(children, warm, "remote", 0, daemon)
        log(f"warm-up: {run.delivered + run.lost:,} events through the ring (discarded)")
        per_rate: dict[int, list[Run]] = {r: [] for r in args.rate_list}
        for rep in range(args.reps):
            # Rates in ascending order every repetition: a run that overflows the ring
            # leaves nothing behind (its session drains before the next starts).
            for rate in args.rate_list:
                run = run_worker(children, cfg, "remote", rate, daemon)
                per_rate[rate].append(run)
                log(f"rep {rep + 1}/{args.reps} rate {target_name(rate)}: "
                    f"{run.rate:,.0f} calls/s, {run.delivered:,} delivered, {run.lost:,} lost, "
                    f"{run.delivered_per_s:,.0f} events/s"
                    + ("" if run.accounted else "  MISMATCH")
                    + (f"  (other processes: {run.other_cpu:.2f} CPUs)"
                       if run.other_cpu > OTHER_LOAD_WARN else ""))
            hooks.update(foreign_syscall_hooks([daemon.proc.pid]))
    finally:
        daemon.stop()
    rows = [rung_row(rate, runs) for rate, runs in per_rate.items()]
    return rows, {target_name(r): [asdict(x) for x in runs] for r, runs in per_rate.items()}


if __name__ == "__main__":
    sys.exit(main())
