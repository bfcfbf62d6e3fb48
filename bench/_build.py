"""Shared by the bench scripts: compile one of bench/*.c into bench/results/, describe
the machine a run was made on, read BPF run-time counters, find other tracers on the
syscall hooks, install a peer tool, read the result of bench/events_loop.c."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


def build_c(source: str, out_dir: Path, error: type[Exception]) -> Path:
    """Compile bench/SOURCE with -O2 into OUT_DIR (named SOURCE without .c); rebuilt every
    run, it takes well under a second. Failures raise ``error`` with the compiler's text."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise error("no C compiler: apt-get install gcc")
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / Path(source).stem
    cmd = [cc, "-O2", "-Wall", "-Wextra", "-o", str(binary), str(BENCH / source)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise error(f"building {source} failed:\n{res.stderr}")
    return binary


def machine_facts(loop_cpu: int) -> dict[str, Any]:
    """When and on what a run was made: date, kernel, CPUs and their model, the CPU the
    measured loop was pinned to, the load average (noisy neighbours show there)."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "loop_cpu": loop_cpu,
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


# --------------------------------------------------------------------------------------
# BPF run-time counters, other tracers on the syscall hooks, peer tools, loop results
# --------------------------------------------------------------------------------------

BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


@contextlib.contextmanager
def bpf_stats_enabled() -> Iterator[None]:
    """kernel.bpf_stats_enabled=1 for the duration, restored to its previous value (the
    kernel then times every program run: never on while wall times are taken)."""
    old = BPF_STATS.read_text().strip()
    BPF_STATS.write_text("1\n")
    try:
        yield
    finally:
        BPF_STATS.write_text(old + "\n")


def prog_run_stats(fd: int, error: type[Exception]) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of one of this process's BPF program fds, from its fdinfo:
    the same counters as bpf_prog_info, without bpftool or that struct's layout."""
    fields: dict[str, str] = {}
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    if "run_time_ns" not in fields:
        raise error("this kernel's fdinfo has no run_time_ns (needs Linux >= 5.1)")
    return int(fields["run_time_ns"]), int(fields["run_cnt"])


def syscall_hook_holders(skip: Iterable[int] = ()) -> dict[int, str]:
    """pid -> comm of other processes holding BPF links on sys_enter/sys_exit (best
    effort, via fdinfo): anyone there puts every syscall of every process, untraced runs
    included, on the slow path (another tracerd, a test suite)."""
    ignore = {os.getpid(), *skip}
    found: dict[int, str] = {}
    for info in Path("/proc").glob("[0-9]*/fdinfo/*"):
        pid = int(info.parts[2])
        if pid in ignore or pid in found:
            continue
        try:
            text = info.read_text()
        except OSError:
            continue  # the fd or the process went away
        if "tp_name:\tsys_enter" in text or "tp_name:\tsys_exit" in text:
            with contextlib.suppress(OSError):
                found[pid] = Path(f"/proc/{pid}/comm").read_text().strip()
    return found


def foreign_syscall_hooks(skip: Iterable[int] = ()) -> list[str]:
    """syscall_hook_holders() as sorted "pid N (comm)" strings, for warnings."""
    return [f"pid {pid} ({comm})" for pid, comm in sorted(syscall_hook_holders(skip).items())]


def ensure_tool(name: str, package: str, install: bool,
                log: Callable[[str], None]) -> str | None:
    """None if ``name`` is on PATH (installed now with apt-get if allowed), else why not."""
    if shutil.which(name):
        return None
    if not install:
        return f"not installed (apt-get install -y {package})"
    if not shutil.which("apt-get"):
        return f"not installed, and no apt-get to install {package}"
    log(f"installing {package} (apt-get install -y {package})")
    res = subprocess.run(["apt-get", "install", "-y", package], capture_output=True,
                         stdin=subprocess.DEVNULL, check=False,
                         env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if res.returncode != 0 or not shutil.which(name):
        tail = res.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        return f"apt-get install {package} failed: {tail[0]}"
    return None


@dataclass(frozen=True)
class LoopResult:
    """What bench/events_loop.c writes after its loop: calls and when they ran."""

    calls: int
    t0_ns: int  # CLOCK_MONOTONIC before the first call (time.monotonic_ns's clock)
    t1_ns: int  # and after the last one
    nr: int

    @property
    def rate(self) -> float:
        return self.calls / max(1e-9, (self.t1_ns - self.t0_ns) / 1e9)


def read_loop_result(path: Path, error: type[Exception]) -> LoopResult:
    try:
        calls, t0, t1, nr = path.read_text().split()
    except (OSError, ValueError) as e:
        raise error(f"no result from the loop in {path}: {e}") from None
    return LoopResult(int(calls), int(t0), int(t1), int(nr))


class Children:
    """Processes started by a bench, each in a session (and process group) of its own, so
    a Ctrl-C reaches the bench only and kill() takes whatever a child left behind;
    kill_all() ends everything still running. Nothing reads the terminal: stdin is
    /dev/null unless a pipe is asked for. fork+exec only (never a bare fork): a bench may
    hold a gRPC channel, whose state a forked child running Python must not inherit."""

    def __init__(self, error: type[Exception]) -> None:
        self._error = error
        self._procs: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()  # popen/kill from worker threads too

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(list(argv), start_new_session=True, **kw)
        with self._lock:
            self._procs.append(proc)
        return proc

    def live_pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self._procs if p.returncode is None]

    def finish(self, proc: subprocess.Popen[bytes], timeout: float,
               stdin: bytes | None = None) -> tuple[bytes, bytes]:
        """Write ``stdin`` to ``proc`` (a pipe), wait for it and its output, if piped; on
        timeout kill its group and raise the bench's error."""
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            name = Path(str(proc.args[0])).name  # type: ignore[index]
            raise self._error(f"{name}: still running after {timeout:.0f} s, killed") from None
        self.kill(proc)  # whatever it left in its group (nothing, normally)
        return out or b"", err or b""

    def terminate(self, proc: subprocess.Popen[bytes], grace: float = 30.0) -> None:
        """SIGTERM ``proc`` (a daemon: let it clean up), give it ``grace`` seconds, then
        kill whatever is left of its group."""
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        self.kill(proc)

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own group: pgid == pid
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        with self._lock:
            if proc in self._procs:
                self._procs.remove(proc)

    def kill_all(self) -> None:
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            self.kill(proc)
