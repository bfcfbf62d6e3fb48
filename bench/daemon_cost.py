#!/usr/bin/env python3
"""What a running ``tracerd serve`` costs: its own CPU and memory, gRPC Watch fan-out,
and how per-syscall and per-drain costs scale with tracked processes and sessions.

    .venv/bin/python bench/daemon_cost.py [--quick] [--reps N] [--seconds S] [--window S]
        [--watchers 0,1,10,100] [--procs 1,100,1000,10000] [--sessions 1,100,1000]
        [--loop-runs N] [--calls N] [--cpu N] [--phases cpu,fanout,procs,sessions]
        [--json FILE]

1. Daemon CPU and memory: bench/events_loop.c makes 1,000,000 getppid/s for --seconds in
   a count-only session of a daemon with the default config; the daemon's CPU time
   (/proc/PID/task/*/schedstat; stat's utime+stime as a check) over a window inside the
   run, against an idle window (no session) just before; its peak RSS (VmHWM). Target
   (the issue): <= 1 % of a core.
2. gRPC fan-out: 0, 1, 10, 100 Watch clients at 10 Hz on a live session of that loop,
   in worker processes of their own (fresh interpreters: no gRPC state crosses a fork),
   one connection each; updates received per client per second, the daemon's CPU.
3. Scaling: ns per getppid of a tracked bench/loop.c (timed by the loop itself) and the
   daemon's drain (Prometheus tracerd_drains / tracerd_drain_seconds), as the number of
   tracked processes (bench/sleepers.c's children, one session's tree) and of sessions
   (one per sleeping process) grows. Target: flat per-syscall cost from 1 to 10,000.

Root only. Every process it starts (daemons, loops, sleepers, workers) runs in a process
group of its own and is killed on exit, error, Ctrl-C or SIGTERM; nothing reads stdin.
Tables go to stdout, progress to stderr, every figure and sample to --json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from _build import (  # bench/_build.py: scripts run from here
    Children,
    build_c,
    foreign_syscall_hooks,
    machine_facts,
    read_loop_result,
)

if TYPE_CHECKING:  # the bench process imports tracerd (grpc) only once it runs
    from tracerd.client import Client

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"  # git-ignored
TRACERD = ROOT / ".venv" / "bin" / "tracerd"

TARGET_CPU_PCT = 1.0  # from the issue: daemon CPU <= 1 % of a core at 1 M syscalls/s
RATE = 1_000_000  # getppid/s of the load in phases 1 and 2
WATCH_INTERVAL_MS = 100  # 10 Hz, what every Watch client asks for
WATCHERS_PER_WORKER = 10  # Watch clients per worker process (each its own connection)
#: "Flat": the per-syscall cost at the largest count is within this share of the cost
#: with one tracked process (paired median over repetitions). This VM's speed wanders by
#: more than that between runs (bench/README.md), which is why the comparison is paired.
FLAT_SHARE = 0.05
OTHER_LOAD_WARN = 0.25  # CPUs used by other processes during a window worth a warning
BIG = 1 << 40  # "no call limit" for events_loop: it stops on its time limit
#: Limits the bench's own config raises for phases 2 and 3 (tracerd/_config.py keys).
#: No history (state_dir ""): stopping 1,000 sessions would otherwise have the daemon
#: write them to SQLite while the next window is measured.
BENCH_CONFIG = """\
state_dir = ""
[limits]
max_sessions = 1200
max_watchers = 256
max_tracked_pids = 16384
max_stats = 65536
"""

#: Sleepers are woken KICK_SLICE at a time, KICK_PAUSE_S apart (see Sleepers.kick).
KICK_SLICE, KICK_PAUSE_S = 32, 0.005

T = TypeVar("T")


class BenchError(Exception):
    """A failure that ends the bench with a one-line message."""


def log(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# /proc readings
# --------------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (every thread), from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0  # gone between listing and reading: reaped, counted in RUSAGE_CHILDREN
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run_time_s(pid: int) -> float:
    """On-CPU time of a process's live threads (schedstat, ns resolution): the tick-based
    utime+stime of /proc/PID/stat moves in 10 ms steps, a tenth of the 1 % target over a
    10 s window. Threads that exit in between are missed: the daemon's are long-lived
    (drain, gRPC pollers and pool), and ``cpu_seconds`` is kept alongside as a check."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def status_kib(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/PID/status (VmRSS, VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {key} in /proc/{pid}/status")


def busy_s() -> float:
    """CPU time the whole machine spent busy (not idle, not stolen by the host)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = f
    return (user + nice + system + irq + softirq) / CLK_TCK


def own_cpu_s(children: Children) -> float:
    """CPU of this process and everything it started (the daemon included)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped descendants
    return (me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
            + sum(cpu_seconds(p) for p in children.live_pids()))


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition as {'name{labels}': value}; comments skipped."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[key] = float(value)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------------------------
# The daemon, and measurement windows over it
# --------------------------------------------------------------------------------------


class Daemon:
    """``tracerd serve`` on a Unix socket in a directory of its own, with /metrics on a
    loopback port; ``config``: the TOML text of its config file, None for the defaults
    (``--config /dev/null``, history in the directory, as tests/conftest.py does)."""

    def __init__(self, children: Children, workdir: Path, name: str,
                 config: str | None) -> None:
        self.children = children
        self.name = name
        home = workdir / name
        (home / "run").mkdir(parents=True)
        self.socket = str(home / "run" / "tracerd.sock")
        self.metrics = f"127.0.0.1:{free_port()}"
        self.log_path = home / "daemon.log"
        argv = [str(TRACERD), "serve", "--socket", self.socket, "--metrics", self.metrics]
        if config is None:
            argv += ["--config", os.devnull, "--state-dir", str(home / "state")]
        else:
            (home / "tracerd.toml").write_text(config)
            argv += ["--config", str(home / "tracerd.toml")]
        self.argv = argv
        with open(self.log_path, "wb") as logf:
            self.proc = children.popen(argv, stdout=logf, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        self.ready_rss_kib = 0

    def wait_ready(self, client_factory: Callable[[str], Client],
                   timeout: float = 180.0) -> Client:
        """Wait until it answers GetInfo and /metrics; returns a connected client."""
        from tracerd.client import ClientError  # noqa: PLC0415

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"tracerd serve exited {self.proc.returncode}: {self.log()}")
            if os.path.exists(self.socket):
                client = client_factory(self.socket)
                try:
                    client.info()
                    self.scrape()
                except (ClientError, OSError):
                    client.close()
                else:
                    self.ready_rss_kib = status_kib(self.pid, "VmRSS")
                    return client
            time.sleep(0.2)
        raise BenchError(f"tracerd serve not ready after {timeout:.0f} s: {self.log()}")

    def scrape(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=30) as r:
            return parse_metrics(r.read().decode())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        self.children.terminate(self.proc)


@dataclass(frozen=True)
class Sample:
    """Counters read at one instant (CLOCK_MONOTONIC seconds)."""

    t: float
    daemon_cpu_s: float  # schedstat, ns resolution
    daemon_ticks_s: float  # utime + stime, 10 ms resolution
    busy_s: float
    own_s: float
    drains: float
    drain_s: float


def take_sample(daemon: Daemon, children: Children, *, scrape_first: bool) -> Sample:
    # The scrape costs the daemon CPU (its HTTP thread): taken before the CPU reading
    # at a window's start and after it at the end, so it stays outside the window.
    m = daemon.scrape() if scrape_first else {}
    t, cpu, ticks = time.monotonic(), run_time_s(daemon.pid), cpu_seconds(daemon.pid)
    busy, own = busy_s(), own_cpu_s(children)
    if not scrape_first:
        m = daemon.scrape()
    return Sample(t=t, daemon_cpu_s=cpu, daemon_ticks_s=ticks, busy_s=busy, own_s=own,
                  drains=m.get("tracerd_drains_total", math.nan),
                  drain_s=m.get("tracerd_drain_seconds_total", math.nan))


@dataclass(frozen=True)
class Window:
    """What the daemon did between two samples."""

    t0: float
    seconds: float
    daemon_cpu_s: float
    daemon_ticks_s: float
    drains: float
    drain_s: float
    other_cpus: float  # CPUs used by processes that are not the bench's

    @property
    def cpu_pct(self) -> float:
        """Daemon CPU in % of one core."""
        return 100.0 * self.daemon_cpu_s / max(1e-9, self.seconds)

    @property
    def drain_ms(self) -> float:
        """Mean duration of one drain pass (hub lock held), ms."""
        return 1e3 * self.drain_s / self.drains if self.drains > 0 else math.nan

    @property
    def drain_interval_ms(self) -> float:
        return 1e3 * self.seconds / self.drains if self.drains > 0 else math.nan


def _busy_note(win: Window) -> str:
    """A progress-line suffix when other processes were busy during the window."""
    if win.other_cpus > OTHER_LOAD_WARN:
        return f"  (other processes: {win.other_cpus:.2f} CPUs)"
    return ""


def window_between(a: Sample, b: Sample) -> Window:
    seconds = max(1e-9, b.t - a.t)
    other = max(0.0, (b.busy_s - a.busy_s) - (b.own_s - a.own_s)) / seconds
    return Window(t0=a.t, seconds=seconds, daemon_cpu_s=b.daemon_cpu_s - a.daemon_cpu_s,
                  daemon_ticks_s=b.daemon_ticks_s - a.daemon_ticks_s,
                  drains=b.drains - a.drains, drain_s=b.drain_s - a.drain_s, other_cpus=other)


def measure(daemon: Daemon, children: Children, seconds: float) -> Window:
    a = take_sample(daemon, children, scrape_first=True)
    time.sleep(seconds)
    return window_between(a, take_sample(daemon, children, scrape_first=False))


# --------------------------------------------------------------------------------------
# Summaries (pure: tests/unit/test_bench_daemon_cost.py)
# --------------------------------------------------------------------------------------


def med(values: Iterable[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return statistics.median(vals) if vals else math.nan


def iqr(values: Iterable[float]) -> tuple[float, float]:
    """25th and 75th percentiles (the median twice for fewer than two values)."""
    vals = sorted(v for v in values if not math.isnan(v))
    if not vals:
        return math.nan, math.nan
    if len(vals) == 1:
        return vals[0], vals[0]
    q = statistics.quantiles(vals, n=4, method="inclusive")
    return q[0], q[2]


def rotated(seq: Sequence[T], rep: int) -> list[T]:
    """``seq`` starting one element later each repetition, so no configuration always
    runs first or always follows the same neighbour (the VM's speed drifts)."""
    if not seq:
        return []
    k = rep % len(seq)
    return [*seq[k:], *seq[:k]]


def paired_deltas(by_rep: Sequence[dict[int, float]], key: int, base: int) -> list[float]:
    """Per repetition: value at ``key`` minus value at ``base`` (reps having both)."""
    return [r[key] - r[base] for r in by_rep
            if key in r and base in r and not math.isnan(r[key]) and not math.isnan(r[base])]


def verdict_max(value: float, target: float, unit: str = "") -> str:
    """'met' or 'missed (+excess)' for a figure that must stay at or below ``target``."""
    if math.isnan(value):
        return "not measured"
    if value <= target:
        return f"met ({value / target:.0%} of it)" if target else "met"
    return f"missed by {value - target:.2f}{unit} ({value / target:.1f}x the target)"


def flat_verdict(delta_ns: float, base_ns: float, share: float = FLAT_SHARE) -> str:
    """Whether a paired per-call difference stays within ``share`` of the base cost."""
    if math.isnan(delta_ns) or math.isnan(base_ns) or base_ns <= 0:
        return "not measured"
    rel = delta_ns / base_ns
    if abs(rel) <= share:
        return f"flat ({rel:+.1%}, within +-{share:.0%})"
    return f"not flat ({rel:+.1%}, beyond +-{share:.0%})"


def watch_summary(clients: Sequence[dict[str, Any]], t0: float, t1: float,
                  asked_hz: float) -> dict[str, Any]:
    """Updates received in [t0, t1] (CLOCK_MONOTONIC s) by each Watch client.

    ``clients``: per client, ``recv`` (receipt times, s), ``lag_ms`` (receipt minus the
    daemon's read time, ms, per update) and ``missed`` (per update) as a worker returns
    them. Returns totals, the per-client rates, and the lag over the window's updates.
    """
    seconds = max(1e-9, t1 - t0)
    rates: list[float] = []
    lags: list[float] = []
    missed = 0
    updates = 0
    for c in clients:
        inside = [i for i, t in enumerate(c["recv"]) if t0 <= t <= t1]
        updates += len(inside)
        rates.append(len(inside) / seconds)
        lags += [c["lag_ms"][i] for i in inside]
        missed += sum(c["missed"][i] for i in inside)
    lag_sorted = sorted(lags)
    p99 = lag_sorted[min(len(lag_sorted) - 1, math.ceil(0.99 * len(lag_sorted)) - 1)] \
        if lag_sorted else math.nan
    return {
        "clients": len(clients),
        "updates": updates,
        "updates_per_s": updates / seconds,
        "per_client_median_hz": med(rates),
        "per_client_min_hz": min(rates) if rates else math.nan,
        "share_of_asked": (med(rates) / asked_hz) if rates and asked_hz else math.nan,
        "missed": missed,
        "lag_ms_median": med(lags),
        "lag_ms_p99": p99,
    }


def per_unit(delta: float, count_delta: float) -> float:
    """Cost per added unit (e.g. ms per drain per tracked process)."""
    return delta / count_delta if count_delta else math.nan


# --------------------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Binaries:
    events_loop: Path
    loop: Path
    sleepers: Path


class Sleepers:
    """bench/sleepers.c: one parent and N paused children, in a process group."""

    def __init__(self, children: Children, binary: Path, n: int) -> None:
        self.children = children
        self.proc = children.popen([str(binary), str(n)], stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()  # after every fork: they all exist
        if len(line) != 3 or line[0] != b"ready":
            self.children.kill(self.proc)
            raise BenchError(f"sleepers {n}: no ready line (got {line!r})")
        self.pid = self.proc.pid
        kids = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        self.kids = [int(k) for k in kids]
        if len(self.kids) != n:
            raise BenchError(f"sleepers {n}: {len(self.kids)} children in /proc")

    def kick(self) -> None:
        """One SIGUSR1 to every process: each leaves counters in the map.

        In slices, not to the whole group at once: thousands of first inserts into the
        kernel's per-CPU hash (BPF_F_NO_PREALLOC) within a few ms exhaust its
        allocator's cache, and the inserts that fail are lost as stats_full (a tracerd
        issue this bench reports, not what it measures)."""
        pids = [self.pid, *self.kids]
        for i in range(0, len(pids), KICK_SLICE):
            for pid in pids[i:i + KICK_SLICE]:
                os.kill(pid, signal.SIGUSR1)
            time.sleep(KICK_PAUSE_S)

    def kill(self) -> None:
        self.children.kill(self.proc)


def wait_until(what: Callable[[], bool], timeout: float, why: str,
               poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {why}")
        time.sleep(poll)


def session_calls(client: Client, sid: str, nr: int) -> tuple[str, int]:
    """State name and calls of syscall ``nr`` in a session's report."""
    summary, report = client.report(sid)
    st = report.totals().get(nr)
    return summary.state.name, st.calls if st else 0


def wait_finished(client: Client, sid: str, timeout: float = 30.0) -> None:
    wait_until(lambda: client.report(sid)[0].state.name != "RUNNING", timeout,
               f"session {sid} to finish")


# --------------------------------------------------------------------------------------
# Phase 1: the daemon's CPU and memory at 1 M traced syscalls/s
# --------------------------------------------------------------------------------------


@dataclass
class Cfg:
    bins: Binaries
    workdir: Path
    cpu: int
    reps: int
    seconds: float  # phase 1: length of each loaded run
    window: float  # phases 2 and 3: measurement window
    idle: float  # phase 1: idle window before each loaded run
    watchers: list[int]
    procs: list[int]
    sessions: list[int]
    loop_runs: int
    calls: int
    hooks: set[str] = field(default_factory=set)


def phase_cpu(children: Children, daemon: Daemon, client: Client, cfg: Cfg
              ) -> dict[str, Any]:
    warm = min(1.0, cfg.seconds / 5)  # after the session started, before the window
    tail = min(0.5, cfg.seconds / 10)  # the window ends this long before the loop does
    runs: list[dict[str, Any]] = []
    for rep in range(cfg.reps):
        # Idle first (no session, nothing tracked): what the daemon costs doing nothing.
        idle = measure(daemon, children, cfg.idle)
        out = cfg.workdir / "events_loop.out"
        out.unlink(missing_ok=True)
        proc = children.popen([str(cfg.bins.events_loop), str(RATE), str(BIG),
                               str(cfg.seconds), str(cfg.cpu), str(out)])
        # Count-only aggregate session: SessionOptions() has no events, no per-process
        # detail. It starts a few ms after the loop's exec; the window starts later.
        sid = client.start_pid(proc.pid).id
        time.sleep(warm)
        loaded = measure(daemon, children, max(0.5, cfg.seconds - warm - tail - 0.3))
        rss = status_kib(daemon.pid, "VmRSS")
        children.finish(proc, 60 + 2 * cfg.seconds)
        if proc.returncode != 0:
            raise BenchError(f"events_loop exited {proc.returncode}")
        loop = read_loop_result(out, BenchError)
        if not (loop.t0_ns / 1e9 <= loaded.t0 and
                loaded.t0 + loaded.seconds <= loop.t1_ns / 1e9):
            raise BenchError("the measurement window was not inside the loop's run (the "
                             "machine is too slow: try a longer --seconds)")
        wait_finished(client, sid)
        _, counted = session_calls(client, sid, loop.nr)
        in_window = loop.rate * loaded.seconds
        # Everything the loop made inside the window must have been counted (the
        # session starts before the window, ends with the loop).
        if counted < in_window:
            raise BenchError(f"the session counted {counted:,} getppid, fewer than the "
                             f"{in_window:,.0f} made in the window alone")
        run = {"rep": rep, "rate": loop.rate, "loop_calls": loop.calls, "counted": counted,
               "idle": asdict(idle), "loaded": asdict(loaded), "rss_kib": rss,
               "calls_in_window": in_window,
               "cpu_s_per_mcalls": loaded.daemon_cpu_s / (in_window / 1e6)}
        runs.append(run)
        log(f"cpu rep {rep + 1}/{cfg.reps}: {loop.rate:,.0f} calls/s, daemon "
            f"{loaded.cpu_pct:.2f} % (idle {idle.cpu_pct:.2f} %), drain "
            f"{loaded.drain_ms:.2f} ms every {loaded.drain_interval_ms:.0f} ms"
            + (f"  (other processes: {loaded.other_cpus:.2f} CPUs)"
               if loaded.other_cpus > OTHER_LOAD_WARN else ""))
    return summarise_cpu(runs, status_kib(daemon.pid, "VmHWM"), daemon.ready_rss_kib)


def summarise_cpu(runs: Sequence[dict[str, Any]], hwm_kib: int, ready_kib: int
                  ) -> dict[str, Any]:
    def w(run: dict[str, Any], which: str) -> Window:
        return Window(**run[which])

    loaded_pct = med(w(r, "loaded").cpu_pct for r in runs)
    idle_pct = med(w(r, "idle").cpu_pct for r in runs)
    return {
        "reps": len(runs),
        "rate": med(r["rate"] for r in runs),
        "counted_share": med(r["counted"] / max(1, r["loop_calls"]) for r in runs),
        "window_s": med(w(r, "loaded").seconds for r in runs),
        "idle_pct": idle_pct,
        "idle_pct_iqr": iqr(w(r, "idle").cpu_pct for r in runs),
        "loaded_pct": loaded_pct,
        "loaded_pct_iqr": iqr(w(r, "loaded").cpu_pct for r in runs),
        "added_pct": med(w(r, "loaded").cpu_pct - w(r, "idle").cpu_pct for r in runs),
        "loaded_ticks_pct": med(100 * w(r, "loaded").daemon_ticks_s / w(r, "loaded").seconds
                                for r in runs),
        "cpu_s_per_mcalls": med(r["cpu_s_per_mcalls"] for r in runs),
        "drain_ms": med(w(r, "loaded").drain_ms for r in runs),
        "drain_interval_ms": med(w(r, "loaded").drain_interval_ms for r in runs),
        "idle_drain_ms": med(w(r, "idle").drain_ms for r in runs),
        "other_cpus": max(w(r, "loaded").other_cpus for r in runs),
        "rss_kib": med(r["rss_kib"] for r in runs),
        "ready_rss_kib": ready_kib,
        "hwm_kib": hwm_kib,
        "target_pct": TARGET_CPU_PCT,
        "verdict": verdict_max(loaded_pct, TARGET_CPU_PCT, " points"),
        "runs": list(runs),
    }


# --------------------------------------------------------------------------------------
# Phase 2: Watch fan-out
# --------------------------------------------------------------------------------------


def worker_watch(spec: dict[str, Any]) -> int:
    """``--worker=watch``: ``clients`` Watch streams on one session, one connection each.

    Writes ``spec['ready']`` once every stream delivered its first update, records each
    update's receipt time until SIGTERM, then prints them as JSON on stdout."""
    from tracerd.client import Client, Update  # noqa: PLC0415 - after the exec: fresh gRPC

    # SIGTERM is taken by sigwait() below, never by a handler: a handler setting an
    # Event can deadlock against a thread waiting on it. Blocked before any thread
    # starts, so every thread (gRPC's own included) inherits the mask.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the bench (our parent) decides
    n: int = spec["clients"]
    recv: list[list[float]] = [[] for _ in range(n)]
    lag_ms: list[list[float]] = [[] for _ in range(n)]
    missed: list[list[int]] = [[] for _ in range(n)]
    errors: list[str | None] = [None] * n
    lock = threading.Lock()
    subscribed = [0]

    def first_update() -> None:
        with lock:
            subscribed[0] += 1
            if subscribed[0] == n:
                tmp = Path(spec["ready"] + ".tmp")
                tmp.write_text("ready\n")
                tmp.rename(spec["ready"])

    def run(i: int) -> None:
        try:
            # A local subchannel pool: its own connection, not one shared with the
            # worker's other clients (gRPC shares identical channels' connections).
            with Client(spec["socket"], timeout=60,
                        options=[("grpc.use_local_subchannel_pool", 1)]) as c:
                for ev in c.watch(spec["sid"], interval_ms=spec["interval_ms"]):
                    if isinstance(ev, Update):
                        now = time.monotonic_ns()
                        recv[i].append(now / 1e9)
                        lag_ms[i].append((now - ev.ts_ns) / 1e6)
                        missed[i].append(ev.missed)
                        if len(recv[i]) == 1:
                            first_update()
            errors[i] = "the stream ended (the session ended?)"
        except Exception as e:
            errors[i] = f"{type(e).__name__}: {e}"

    for i in range(n):
        threading.Thread(target=run, args=(i,), daemon=True, name=f"watch-{i}").start()
    signal.sigwait({signal.SIGTERM})
    with lock:  # a consistent copy: the streams keep appending
        doc = {"clients": [{"recv": list(recv[i]), "lag_ms": list(lag_ms[i]),
                            "missed": list(missed[i]), "error": errors[i]}
                           for i in range(n)]}
    sys.stdout.write(json.dumps(doc))
    sys.stdout.flush()
    os._exit(0)  # the streams' threads are not worth a clean shutdown


def run_fanout(children: Children, daemon: Daemon, cfg: Cfg, *, sid: str, n: int,
               rep: int) -> dict[str, Any]:
    if n == 0:
        win = measure(daemon, children, cfg.window)
        return {"watchers": 0, "rep": rep, "window": asdict(win), "workers": 0,
                **watch_summary([], win.t0, win.t0 + win.seconds, 1000 / WATCH_INTERVAL_MS)}
    per = [WATCHERS_PER_WORKER] * (n // WATCHERS_PER_WORKER)
    if n % WATCHERS_PER_WORKER:
        per.append(n % WATCHERS_PER_WORKER)
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for k, count in enumerate(per):
            ready = cfg.workdir / f"watch-{rep}-{n}-{k}.ready"
            spec = {"socket": daemon.socket, "sid": sid, "clients": count,
                    "interval_ms": WATCH_INTERVAL_MS, "ready": str(ready)}
            procs.append((children.popen([sys.executable, __file__, "--worker=watch",
                                          json.dumps(spec)],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE),
                          ready))

        def all_ready() -> bool:
            for p, _ in procs:
                if p.poll() is not None:
                    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
                    raise BenchError(f"watch worker exited {p.returncode}: {err[-800:]}")
            return all(r.exists() for _, r in procs)

        wait_until(all_ready, 120, f"{n} Watch clients' first updates")
        time.sleep(0.5)  # every stream past its first update before the window opens
        win = measure(daemon, children, cfg.window)
        clients: list[dict[str, Any]] = []
        for p, _ in procs:
            p.send_signal(signal.SIGTERM)
        for p, _ in procs:
            out, err = children.finish(p, 60)
            try:
                clients += json.loads(out)["clients"]
            except (ValueError, KeyError):
                raise BenchError(f"watch worker: no result ({p.returncode}): "
                                 f"{err.decode(errors='replace')[-800:]}") from None
    finally:
        for p, _ in procs:
            children.kill(p)
    errors = [c["error"] for c in clients if c["error"]]
    if errors:
        raise BenchError(f"{len(errors)} Watch client(s) failed: {errors[0]}")
    summary = watch_summary(clients, win.t0, win.t0 + win.seconds, 1000 / WATCH_INTERVAL_MS)
    return {"watchers": n, "rep": rep, "window": asdict(win), "workers": len(per), **summary}


def phase_fanout(children: Children, daemon: Daemon, client: Client, cfg: Cfg
                 ) -> dict[str, Any]:
    out = cfg.workdir / "fanout_loop.out"
    # One live session for the whole phase: the same 1 M getppid/s loop (time limit
    # far beyond the phase; killed at its end), so every update carries a real delta.
    loop = children.popen([str(cfg.bins.events_loop), str(RATE), str(BIG), "0",
                           str(cfg.cpu), str(out)])
    runs: list[dict[str, Any]] = []
    try:
        sid = client.start_pid(loop.pid).id
        time.sleep(1.0)
        for rep in range(cfg.reps):
            for n in rotated(cfg.watchers, rep):
                run = run_fanout(children, daemon, cfg, sid=sid, n=n, rep=rep)
                runs.append(run)
                win = Window(**run["window"])
                log(f"fan-out rep {rep + 1}/{cfg.reps}, {n} watchers: daemon "
                    f"{win.cpu_pct:.2f} %, {run['updates_per_s']:.1f} updates/s, per client "
                    f"{run['per_client_median_hz']:.2f} Hz"
                    + _busy_note(win))
        if loop.poll() is not None:
            raise BenchError(f"the fan-out loop exited early ({loop.returncode})")
    finally:
        children.kill(loop)
    with contextlib.suppress(Exception):
        wait_finished(client, sid, 10)
    return summarise_fanout(runs, cfg.watchers, status_kib(daemon.pid, "VmHWM"))


def summarise_fanout(runs: Sequence[dict[str, Any]], counts: Sequence[int], hwm_kib: int
                     ) -> dict[str, Any]:
    by_rep: dict[int, dict[int, float]] = {}
    for r in runs:
        by_rep.setdefault(r["rep"], {})[r["watchers"]] = Window(**r["window"]).cpu_pct
    rows = []
    for n in counts:
        mine = [r for r in runs if r["watchers"] == n]
        if not mine:
            continue
        added = med(paired_deltas(list(by_rep.values()), n, 0)) if 0 in counts else math.nan
        updates_per_s = med(r["updates_per_s"] for r in mine)
        rows.append({
            "watchers": n,
            "workers": mine[0]["workers"],
            "cpu_pct": med(Window(**r["window"]).cpu_pct for r in mine),
            "cpu_pct_iqr": iqr(Window(**r["window"]).cpu_pct for r in mine),
            "added_pct": added,
            # CPU the daemon spends per update delivered (over the no-watcher baseline).
            "us_per_update": (1e4 * added / updates_per_s) if updates_per_s else math.nan,
            "updates_per_s": updates_per_s,
            "per_client_median_hz": med(r["per_client_median_hz"] for r in mine),
            "per_client_min_hz": min(r["per_client_min_hz"] for r in mine),
            "share_of_asked": med(r["share_of_asked"] for r in mine),
            "missed": sum(r["missed"] for r in mine),
            "lag_ms_median": med(r["lag_ms_median"] for r in mine),
            "lag_ms_p99": max((r["lag_ms_p99"] for r in mine if not math.isnan(r["lag_ms_p99"])),
                              default=math.nan),
            "drain_interval_ms": med(Window(**r["window"]).drain_interval_ms for r in mine),
            "other_cpus": max(Window(**r["window"]).other_cpus for r in mine),
        })
    return {"asked_hz": 1000 / WATCH_INTERVAL_MS, "rows": rows, "hwm_kib": hwm_kib,
            "runs": list(runs)}


# --------------------------------------------------------------------------------------
# Phase 3: scaling with tracked processes and with sessions
# --------------------------------------------------------------------------------------


@dataclass
class Setup:
    """What one configuration added to the daemon, to be undone after it."""

    sids: list[str] = field(default_factory=list)
    sleepers: Sleepers | None = None


def start_sessions(client: Client, targets: Sequence[tuple[int, bool]]) -> list[str]:
    """Sessions on (pid, children) targets, 8 concurrent callers (as tests/reliability
    /test_load.py starts its 1,000)."""
    def start(t: tuple[int, bool]) -> str:
        return str(client.start_pid(t[0], children=t[1]).id)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(start, targets))


def stop_sessions(client: Client, sids: Sequence[str]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(client.stop, sids))


def start_gated_loop(children: Children, client: Client, cfg: Cfg
                     ) -> tuple[subprocess.Popen[bytes], str]:
    """bench/loop.c waiting at its gate (a pipe, not our stdin), tracked by a session of
    its own (count-only): its calls are all counted, none of its start-up is timed."""
    proc = children.popen([str(cfg.bins.loop), "getppid", str(cfg.calls), str(cfg.cpu)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    return proc, str(client.start_pid(proc.pid).id)


def loop_run(children: Children, gated: tuple[subprocess.Popen[bytes], str]
             ) -> tuple[float, int]:
    """Open the gate of a tracked loop and wait for it: its ns/call and syscall nr."""
    proc, _sid = gated
    out, err = children.finish(proc, 120, stdin=b"g")
    if proc.returncode != 0:
        raise BenchError(f"loop exited {proc.returncode}: {err.decode(errors='replace')}")
    ns, nr, _calls = out.split()
    return float(ns), int(nr)


def run_config(children: Children, daemon: Daemon, client: Client, cfg: Cfg, *, dim: str,
               n: int, sleepers: dict[int, Sleepers], rep: int) -> dict[str, Any]:
    """One configuration: n tracked processes (dim 'procs': one session on a tree of
    sleepers) or n sessions (dim 'sessions': one per sleeping process), the loop's own
    session included in n. Measures a drain window, then times the loop."""
    setup = Setup()
    drops0 = drops_of(client)
    t_setup = time.monotonic()
    try:
        sl = sleepers.get(n)
        if sl is not None:
            if dim == "procs":
                setup.sids = start_sessions(client, [(sl.pid, True)])
                want_procs = n - 1  # parent and children; the loop is the n-th
            else:
                setup.sids = start_sessions(client, [(k, False) for k in sl.kids])
                want_procs = n - 1
            full0 = client.info().drops.stats_full
            sl.kick()
            ours = set(setup.sids)

            def counted() -> bool:
                # Every process's new counters read by a drain: at least one call per
                # process (rt_sigreturn) in the sessions' totals, less any insert the
                # kernel could not make (then visible in the row's drops).
                lost = client.info().drops.stats_full - full0
                mine = {s.id: s.calls for s in client.list() if s.id in ours}
                if dim == "procs":
                    return sum(mine.values()) >= want_procs - lost
                return sum(1 for c in mine.values() if c > 0) >= want_procs - lost

            # Polled slowly: each ListSessions makes the daemon sum every process.
            wait_until(counted, 120, f"{dim}={n}: every sleeper's counters", poll=0.5)
        setup_s = time.monotonic() - t_setup
        gated = start_gated_loop(children, client, cfg)
        info = client.info()
        if info.tracked_pids != n or (dim == "sessions" and info.sessions_running != n):
            raise BenchError(f"{dim}={n}: the daemon tracks {info.tracked_pids} processes "
                             f"in {info.sessions_running} sessions")
        time.sleep(0.3)  # the drain after the loop's session start, before the window
        win = measure(daemon, children, cfg.window)
        rss = status_kib(daemon.pid, "VmRSS")
        ns: list[float] = []
        sids: list[str] = []
        nr = 0
        for i in range(cfg.loop_runs):
            # The first run's loop was tracked (and counted in tracked_pids) before the
            # window; the others start now, each with a session of its own.
            run = gated if i == 0 else start_gated_loop(children, client, cfg)
            v, nr = loop_run(children, run)
            ns.append(v)
            sids.append(run[1])
        for sid in sids:  # every loop run counted in full, in its own session
            wait_finished(client, sid)
            _, calls = session_calls(client, sid, nr)
            if calls < cfg.calls:
                raise BenchError(f"{dim}={n}: loop session {sid} counted {calls:,} of "
                                 f"{cfg.calls:,} getppid")
    finally:
        if setup.sids:
            stop_sessions(client, setup.sids)
        with contextlib.suppress(Exception):
            wait_until(lambda: client.info().tracked_pids == 0, 60, "the daemon to untrack")
    drops1 = drops_of(client)
    return {"dim": dim, "n": n, "rep": rep, "window": asdict(win), "ns": ns,
            "ns_median": med(ns), "rss_kib": rss, "setup_s": setup_s,
            # What the kernel side lost during this configuration (kick included).
            "drops": {k: drops1[k] - drops0.get(k, 0) for k in drops1
                      if drops1[k] - drops0.get(k, 0)},
            "loop_sids": sids}


def drops_of(client: Client) -> dict[str, int]:
    """Every counter of GetInfo's Drops, whatever fields it has."""
    d = client.info().drops
    return {f.name: int(getattr(d, f.name)) for f in d.DESCRIPTOR.fields}


def phase_scaling(children: Children, daemon: Daemon, client: Client, cfg: Cfg, dim: str
                  ) -> dict[str, Any]:
    counts = cfg.procs if dim == "procs" else cfg.sessions
    sleepers: dict[int, Sleepers] = {}
    runs: list[dict[str, Any]] = []
    try:
        for n in counts:
            if n > 1:
                # procs: the loop and the sleepers' parent are two of the n processes;
                # sessions: the loop's session is one of the n.
                k = n - 2 if dim == "procs" else n - 1
                t = time.monotonic()
                sleepers[n] = Sleepers(children, cfg.bins.sleepers, k)
                log(f"{dim}: {k:,} sleeping children up in {time.monotonic() - t:.1f} s")
        for rep in range(cfg.reps):
            for n in rotated(counts, rep):
                run = run_config(children, daemon, client, cfg, dim=dim, n=n, sleepers=sleepers,
                                 rep=rep)
                runs.append(run)
                win = Window(**run["window"])
                log(f"{dim} rep {rep + 1}/{cfg.reps}, n={n:,}: {run['ns_median']:.1f} ns/call, "
                    f"drain {win.drain_ms:.2f} ms every {win.drain_interval_ms:.0f} ms, daemon "
                    f"{win.cpu_pct:.2f} % (set-up {run['setup_s']:.1f} s)"
                    + _busy_note(win))
    finally:
        for sl in sleepers.values():
            sl.kill()
    return summarise_scaling(runs, counts, status_kib(daemon.pid, "VmHWM"))


def summarise_scaling(runs: Sequence[dict[str, Any]], counts: Sequence[int], hwm_kib: int
                      ) -> dict[str, Any]:
    base = counts[0] if counts else 1
    by_rep_ns: dict[int, dict[int, float]] = {}
    by_rep_drain: dict[int, dict[int, float]] = {}
    for r in runs:
        by_rep_ns.setdefault(r["rep"], {})[r["n"]] = r["ns_median"]
        by_rep_drain.setdefault(r["rep"], {})[r["n"]] = Window(**r["window"]).drain_ms
    base_ns = med(r["ns_median"] for r in runs if r["n"] == base)
    base_drain = med(Window(**r["window"]).drain_ms for r in runs if r["n"] == base)
    rows = []
    for n in counts:
        mine = [r for r in runs if r["n"] == n]
        if not mine:
            continue
        wins = [Window(**r["window"]) for r in mine]
        deltas = paired_deltas(list(by_rep_ns.values()), n, base)
        drain = med(w.drain_ms for w in wins)
        first = min(mine, key=lambda r: r["rep"])
        rows.append({
            "n": n,
            "ns": med(v for r in mine for v in r["ns"]),
            "ns_iqr": iqr(v for r in mine for v in r["ns"]),
            "added_ns": med(deltas),
            "added_ns_iqr": iqr(deltas),
            "added_share": med(deltas) / base_ns if base_ns else math.nan,
            "drain_ms": drain,
            "drain_ms_iqr": iqr(w.drain_ms for w in wins),
            "drain_interval_ms": med(w.drain_interval_ms for w in wins),
            "drain_us_per_unit": 1e3 * per_unit(drain - base_drain, n - base),
            "cpu_pct": med(w.cpu_pct for w in wins),
            "rss_mib_first": first["rss_kib"] / 1024,
            "setup_s": med(r["setup_s"] for r in mine),
            "other_cpus": max(w.other_cpus for w in wins),
            "drops": {k: sum(r["drops"].get(k, 0) for r in mine)
                      for r0 in mine for k in r0["drops"]},
        })
    top = rows[-1] if rows else None
    return {"base": base, "rows": rows, "hwm_kib": hwm_kib,
            "verdict": flat_verdict(top["added_ns"], base_ns) if top and top["n"] != base
            else "not measured",
            "runs": list(runs)}


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def fmt(v: float, spec: str = ".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def span(pair: tuple[float, float], spec: str = ".2f", sep: str = "-") -> str:
    return fmt(pair[0], spec) + sep + fmt(pair[1], spec)


def render(meta: dict[str, Any], res: dict[str, Any], warnings: Sequence[str]) -> str:
    lines = [
        f"tracerd daemon cost  {meta['date']}",
        f"kernel {meta['kernel']}  {meta['cpus']} CPUs ({meta['cpu_model']})  loop on CPU "
        f"{meta['loop_cpu']}  load average {meta['loadavg']}",
        f"{meta['reps']} repetition(s), configurations interleaved; medians (IQR: "
        "interquartile range over runs); other = CPUs used by processes not the bench's",
    ]
    c = res.get("cpu")
    if c:
        lines += [
            "",
            f"1. Daemon CPU and memory: events_loop at {RATE:,} getppid/s in one count-only "
            "session,",
            f"   default config; {c['window_s']:.1f} s windows inside {meta['seconds']:g} s "
            f"runs; idle = no session, {meta['idle']:g} s just before each run",
            f"{'':<26}{'median':>10}{'IQR':>16}",
            f"{'achieved calls/s':<26}{c['rate']:>10,.0f}",
            f"{'daemon CPU idle, %':<26}{c['idle_pct']:>10.2f}"
            f"{fmt(c['idle_pct_iqr'][0]) + '-' + fmt(c['idle_pct_iqr'][1]):>16}",
            f"{'daemon CPU loaded, %':<26}{c['loaded_pct']:>10.2f}"
            f"{fmt(c['loaded_pct_iqr'][0]) + '-' + fmt(c['loaded_pct_iqr'][1]):>16}",
            f"{'  added by the load, %':<26}{c['added_pct']:>10.2f}",
            f"{'  by utime+stime, %':<26}{c['loaded_ticks_pct']:>10.2f}   (10 ms ticks: a check)",
            f"{'CPU s per M syscalls':<26}{c['cpu_s_per_mcalls']:>10.4f}",
            f"{'drain pass, ms':<26}{c['drain_ms']:>10.3f}   (idle {c['idle_drain_ms']:.3f})",
            f"{'drain every, ms':<26}{c['drain_interval_ms']:>10.1f}",
            f"{'RSS ready / loaded, MiB':<26}"
            f"{c['ready_rss_kib'] / 1024:>10.1f}{c['rss_kib'] / 1024:>10.1f}",
            f"{'peak RSS (VmHWM), MiB':<26}{c['hwm_kib'] / 1024:>10.1f}",
            f"{'other, CPUs (max)':<26}{c['other_cpus']:>10.2f}",
            f"target daemon CPU <= {TARGET_CPU_PCT:g} % of a core at 1 M traced syscalls/s: "
            f"{c['verdict']}",
        ]
    f = res.get("fanout")
    if f:
        lines += [
            "",
            f"2. gRPC Watch fan-out: N clients at {f['asked_hz']:g} Hz (interval "
            f"{WATCH_INTERVAL_MS} ms) on the live 1 M/s session,",
            f"   up to {WATCHERS_PER_WORKER} clients per worker process, one connection "
            f"each; {meta['window']:g} s windows; added = over 0 clients, paired per "
            "repetition;",
            "   us/upd = added daemon CPU per update delivered; Hz = updates received per "
            "client per s;",
            "   lag = receipt minus the daemon's read of the aggregates",
            f"{'clients':>8}{'daemon %':>9}{'IQR':>12}{'added %':>8}{'us/upd':>7}"
            f"{'upd/s':>8}{'Hz med':>7}{'Hz min':>7}{'of asked':>9}{'missed':>7}"
            f"{'lag ms':>7}{'p99':>7}{'other':>6}",
        ]
        for r in f["rows"]:
            spread = fmt(r["cpu_pct_iqr"][0]) + "-" + fmt(r["cpu_pct_iqr"][1])
            lines.append(
                f"{r['watchers']:>8}{r['cpu_pct']:>9.2f}{spread:>12}{fmt(r['added_pct']):>8}"
                f"{fmt(r['us_per_update'], '.0f'):>7}{r['updates_per_s']:>8.1f}"
                f"{fmt(r['per_client_median_hz']):>7}{fmt(r['per_client_min_hz']):>7}"
                f"{fmt(r['share_of_asked'], '.0%'):>9}{r['missed']:>7}"
                f"{fmt(r['lag_ms_median'], '.1f'):>7}{fmt(r['lag_ms_p99'], '.1f'):>7}"
                f"{r['other_cpus']:>6.2f}")
        lines.append(f"peak RSS (VmHWM) of this daemon after the fan-out: "
                     f"{f['hwm_kib'] / 1024:.1f} MiB")
    for dim, title, unit in (("procs", "tracked processes (one session's tree of sleepers "
                              "+ the loop)", "proc"),
                             ("sessions", "sessions (one per sleeping process + the loop's)",
                              "session")):
        s = res.get(dim)
        if not s:
            continue
        num = "3a" if dim == "procs" else "3b"
        lines += [
            "",
            f"{num}. Scaling with {title}",
            f"   loop: bench/loop.c, {meta['calls']:,} getppid flat out, {meta['loop_runs']} "
            f"runs per configuration and repetition, each in a session of its own;",
            f"   added = ns/call minus the {s['base']:,}-{unit} configuration's, paired per "
            "repetition; drain = mean pass (lock held)",
            f"   over a {meta['window']:g} s window before the runs; per {unit} = (drain - "
            f"drain at {s['base']:,}) / ({unit}s - {s['base']:,})",
            f"{'n':>7}{'ns/call':>9}{'IQR':>11}{'added':>8}{'IQR':>12}{'share':>8}"
            f"{'drain ms':>9}{'IQR':>15}{'every':>6}{'us/' + unit:>12}{'daemon %':>9}"
            f"{'RSS MiB':>8}{'set-up s':>9}{'other':>6}",
        ]
        for r in s["rows"]:
            lines.append(
                f"{r['n']:>7,}{r['ns']:>9.1f}{span(r['ns_iqr'], '.0f'):>11}"
                f"{fmt(r['added_ns'], '+.1f'):>8}"
                f"{span(r['added_ns_iqr'], '+.0f', '..'):>12}"
                f"{fmt(r['added_share'], '+.1%'):>8}{fmt(r['drain_ms'], '.2f'):>9}"
                f"{span(r['drain_ms_iqr'], '.1f'):>15}"
                f"{fmt(r['drain_interval_ms'], '.0f'):>6}"
                f"{fmt(r['drain_us_per_unit'], '.2f'):>12}{r['cpu_pct']:>9.2f}"
                f"{r['rss_mib_first']:>8.1f}{r['setup_s']:>9.2f}{r['other_cpus']:>6.2f}")
            if r["drops"]:
                lines.append(f"{'':>7}  kernel drops during this configuration (all "
                             f"repetitions): {r['drops']}")
        if dim == "procs":
            lines.append(f"target flat per-syscall cost from {s['base']:,} to "
                         f"{s['rows'][-1]['n']:,} tracked processes: {s['verdict']}")
        else:
            lines.append(f"per-syscall cost from {s['base']:,} to {s['rows'][-1]['n']:,} "
                         f"sessions: {s['verdict']}")
        lines.append(f"peak RSS (VmHWM) of this daemon so far: {s['hwm_kib'] / 1024:.1f} MiB")
    lines += [f"WARNING: {w}" for w in warnings]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # Turn SIGTERM/SIGHUP into an exception so every cleanup runs.
    raise SystemExit(128 + signum)


def int_list(s: str) -> list[int]:
    out = []
    for raw in s.split(","):
        part = raw.strip().lower().replace("_", "")
        mult = {"k": 1_000, "m": 1_000_000}.get(part[-1:], 1)
        out.append(int(float(part[:-1] if mult > 1 else part) * mult))
    return out


PHASES = ("cpu", "fanout", "procs", "sessions")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="smoke run, about a minute: 1 "
                   "repetition, short windows, fewer configurations")
    p.add_argument("--reps", type=int, help="repetitions of everything (default 5, quick 1)")
    p.add_argument("--seconds", type=float,
                   help="phase 1: length of each 1 M/s run (default 10, quick 3)")
    p.add_argument("--window", type=float,
                   help="phases 2-3: measurement window, s (default 3, quick 1)")
    p.add_argument("--watchers", help="Watch clients (default 0,1,10,100; quick 0,1,10)")
    p.add_argument("--procs", help="tracked processes (default 1,100,1000,10000; "
                   "quick 1,100,10000)")
    p.add_argument("--sessions", help="sessions (default 1,100,1000; quick 1,100)")
    p.add_argument("--loop-runs", type=int,
                   help="loop runs per configuration and repetition (default 5, quick 3)")
    p.add_argument("--calls", type=int, default=100_000, help="getppid per loop run")
    p.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)),
                   help="CPU to pin the loops to, -1 for none (default: the highest allowed)")
    p.add_argument("--phases", default=",".join(PHASES),
                   help=f"which phases to run (default {','.join(PHASES)})")
    p.add_argument("--json", type=Path, default=RESULTS / "daemon_cost.json",
                   help="write every figure and sample here (default %(default)s)")
    args = p.parse_args(argv)
    q = args.quick
    args.reps = args.reps or (1 if q else 5)
    args.seconds = args.seconds or (3.0 if q else 10.0)
    args.window = args.window or (1.0 if q else 3.0)
    args.idle = min(3.0, args.seconds / 2)
    args.loop_runs = args.loop_runs or (3 if q else 5)
    try:
        args.watcher_list = int_list(args.watchers or ("0,1,10" if q else "0,1,10,100"))
        args.proc_list = sorted(set(int_list(args.procs or (
            "1,100,10000" if q else "1,100,1000,10000"))))
        args.session_list = sorted(set(int_list(args.sessions or (
            "1,100" if q else "1,100,1000"))))
    except ValueError:
        p.error("--watchers/--procs/--sessions: comma-separated counts")
    args.phase_list = [x.strip() for x in args.phases.split(",") if x.strip()]
    if set(args.phase_list) - set(PHASES):
        p.error(f"--phases: choose from {','.join(PHASES)}")
    if args.reps < 1 or args.seconds < 2 or args.window < 0.5 or args.loop_runs < 1:
        p.error("--reps >= 1, --seconds >= 2, --window >= 0.5, --loop-runs >= 1")
    if min(args.proc_list) < 1 or min(args.session_list) < 1 or min(args.watcher_list) < 0:
        p.error("--procs and --sessions start at 1, --watchers at 0")
    if any(n == 2 for n in args.proc_list):
        p.error("--procs: 2 cannot be made (the loop and a sleepers parent are two, "
                "with no child); use 1 or >= 3")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--worker=watch":
        return worker_watch(json.loads(argv[1]))
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("daemon_cost: needs root (BPF, tracerd serve)", file=sys.stderr)
        return 77
    if not TRACERD.exists():
        print(f"daemon_cost: {TRACERD} missing: run make setup", file=sys.stderr)
        return 1
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    from tracerd.client import Client  # noqa: PLC0415 - grpc: only once we run

    def connect(sock: str) -> Client:
        return Client(sock, timeout=120)

    meta = {**machine_facts(args.cpu), "reps": args.reps, "seconds": args.seconds,
            "window": args.window, "idle": args.idle, "loop_runs": args.loop_runs,
            "calls": args.calls, "rate": RATE, "watch_interval_ms": WATCH_INTERVAL_MS,
            "watchers": args.watcher_list, "procs": args.proc_list,
            "sessions": args.session_list, "phases": args.phase_list,
            "python": platform.python_version(), "bench_config": BENCH_CONFIG}
    children = Children(BenchError)
    res: dict[str, Any] = {}
    warnings: list[str] = []
    hooks: set[str] = set(foreign_syscall_hooks(()))
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="tracerd-bench-") as tmp:
            cfg = Cfg(bins=Binaries(events_loop=build_c("events_loop.c", RESULTS, BenchError),
                                    loop=build_c("loop.c", RESULTS, BenchError),
                                    sleepers=build_c("sleepers.c", RESULTS, BenchError)),
                      workdir=Path(tmp), cpu=args.cpu, reps=args.reps, seconds=args.seconds,
                      window=args.window, idle=args.idle, watchers=args.watcher_list,
                      procs=args.proc_list, sessions=args.session_list,
                      loop_runs=args.loop_runs, calls=args.calls)
            try:
                if "cpu" in args.phase_list:
                    log("phase 1: starting tracerd serve (default config)")
                    daemon = Daemon(children, cfg.workdir, "default", None)
                    client = daemon.wait_ready(connect)
                    try:
                        res["cpu"] = phase_cpu(children, daemon, client, cfg)
                        hooks.update(foreign_syscall_hooks([daemon.pid]))
                    finally:
                        client.close()
                        daemon.stop()
                rest = [p for p in ("fanout", "procs", "sessions") if p in args.phase_list]
                if rest:
                    log("phases 2-3: starting tracerd serve (the bench's config: raised "
                        "limits, no history)")
                    daemon = Daemon(children, cfg.workdir, "bench", BENCH_CONFIG)
                    client = daemon.wait_ready(connect)
                    try:
                        if "fanout" in rest:
                            res["fanout"] = phase_fanout(children, daemon, client, cfg)
                            hooks.update(foreign_syscall_hooks([daemon.pid]))
                        for dim in ("procs", "sessions"):
                            if dim in rest:
                                res[dim] = phase_scaling(children, daemon, client, cfg, dim)
                        hooks.update(foreign_syscall_hooks([daemon.pid]))
                    finally:
                        client.close()
                        daemon.stop()
            finally:
                children.kill_all()
    except BenchError as e:
        print(f"daemon_cost: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("daemon_cost: interrupted, every child killed", file=sys.stderr)
        return 130
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    if hooks:
        warnings.append("other BPF programs on the syscall hooks during the run (they slow "
                        f"every syscall and compete for the CPUs): {', '.join(sorted(hooks))}")
    busy = max([res["cpu"]["other_cpus"] if "cpu" in res else 0.0]
               + [r["other_cpus"] for k in ("fanout", "procs", "sessions") if k in res
                  for r in res[k]["rows"]])
    if busy > OTHER_LOAD_WARN:
        warnings.append(f"other processes used up to {busy:.2f} CPUs during a window "
                        "(column 'other'): figures taken then are noisy")
    print(render(meta, res, warnings))
    print(f"({meta['elapsed_s']:.0f} s)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "results": res, "warnings": warnings},
                                    indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
