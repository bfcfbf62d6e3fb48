"""Shared test set-up.

Tests under tests/privileged/ load real BPF programs and need root. Where the machine
truly cannot load BPF they are skipped with the reason; with TRACERD_NO_SKIP=1 (set by
.ci/run) any skipped test fails the whole run, so CI can never pass without them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_SRC = ROOT / "tests" / "fixtures" / "exact.c"
FIXTURE_BIN = ROOT / "tests" / "fixtures" / "bin" / "exact"
#: The real command line, run in a fresh interpreter as a user would.
TRACERD = [sys.executable, "-m", "tracerd"]


def _bpf_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "privileged test: needs root"
    try:
        import bcc  # noqa: F401, PLC0415 - probing for it is the point
    except ImportError:
        return "privileged test: bcc is not importable (run `make setup`)"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return "privileged test: kernel has no BTF"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _bpf_unavailable()
    for item in items:
        if "privileged" in item.path.parts or "reliability" in item.path.parts:
            item.add_marker(pytest.mark.privileged)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not os.environ.get("TRACERD_NO_SKIP"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped:
        print(f"\nTRACERD_NO_SKIP: {skipped} test(s) skipped; failing the run", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def fixture_bin() -> Path:
    """The exactness fixture, built from source by the tests themselves."""
    FIXTURE_BIN.parent.mkdir(exist_ok=True)
    if not FIXTURE_BIN.exists() or FIXTURE_BIN.stat().st_mtime < FIXTURE_SRC.stat().st_mtime:
        subprocess.run(
            ["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "-o", str(FIXTURE_BIN),
             str(FIXTURE_SRC)],
            check=True,
        )
    return FIXTURE_BIN


def tracerd(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run the real command line in a fresh process, as a user would."""
    if "stdout" not in kw and "stderr" not in kw:
        kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 300)
    return subprocess.run([*TRACERD, *args], check=False, **kw)


def traced_json(tmp_path: Path, cmd: Sequence[str], *extra: str,
                **kw: Any) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    """``tracerd run --json`` on ``cmd``; returns the parsed report and the process."""
    out = tmp_path / f"report-{len(list(tmp_path.iterdir()))}.json"
    proc = tracerd("run", "--json", "-o", str(out), *extra, "--", *cmd, **kw)
    assert out.exists(), f"no report written: {proc.stderr}"
    return json.loads(out.read_text()), proc


def by_name(syscalls: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in syscalls}


class Daemon:
    """A real ``tracerd serve`` in a child process, on a Unix socket in a temp dir."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.workdir = workdir
        self.socket = str(workdir / "run" / "tracerd.sock")
        self.log_path = workdir / "daemon.log"
        workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            # The history goes to the test's directory, not /var/lib/tracerd (a later
            # --state-dir in extra wins).
            # --config /dev/null: never the host's /etc/tracerd/tracerd.toml.
            [*TRACERD, "serve", "--socket", self.socket, "--config", os.devnull,
             "--state-dir", str(workdir / "state"), *extra],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def client(self, **kw: Any) -> Any:
        from tracerd.client import Client  # noqa: PLC0415

        return Client(self.socket, **kw)

    def wait_ready(self, timeout: float = 120.0) -> Daemon:
        import time  # noqa: PLC0415

        from tracerd.client import ClientError  # noqa: PLC0415

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"tracerd serve exited {self.proc.returncode}: "
                                     f"{self.log()}")
            if os.path.exists(self.socket):
                try:
                    with self.client(timeout=5) as c:
                        c.info()
                    return self
                except ClientError:
                    pass
            time.sleep(0.1)
        raise AssertionError(f"tracerd serve not ready after {timeout}s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()

    def cli(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """``tracerd sessions ...`` against this daemon."""
        return tracerd("sessions", *args, "--remote", self.socket, **kw)


def calls(report: Any, name: str) -> tuple[int, int]:
    """(calls, errors) of one syscall in a tracerd.model.Report."""
    from tracerd import syscalls  # noqa: PLC0415

    nr = syscalls.table_for().number(name)
    assert nr is not None
    st = report.totals().get(nr)
    return (st.calls, st.errors) if st else (0, 0)


def assert_exact_tree(report: Any, n: int, threads: int) -> None:
    """The counts of `exact N THREADS` (see tests/fixtures/exact.c): three processes."""
    assert calls(report, "getppid") == (6 * n, 0)
    assert calls(report, "getpgid") == (n, n)
    assert calls(report, "getsid") == (n, n)
    assert calls(report, "umask") == (n, 0)
    assert calls(report, "sched_yield") == (threads * n, 0)
    assert calls(report, "exit_group") == (3, 0)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (a moment ago)."""
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape(address: str) -> dict[str, float]:
    """A daemon's Prometheus /metrics at HOST:PORT, as {'name{labels}': value}."""
    import urllib.request  # noqa: PLC0415

    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def wait_for(what: Any, timeout: float = 30, why: str = "") -> Any:
    """Poll ``what()`` every 0.1 s until it is truthy; its value."""
    import time  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        assert time.monotonic() < deadline, why or "timed out"
        time.sleep(0.1)


@pytest.fixture
def cgroup_dir() -> Any:
    """A fresh cgroup v2 directory; afterwards its processes (and those of any cgroup a
    test made below it) are killed and the directories removed, deepest first."""
    import contextlib  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import time  # noqa: PLC0415

    from tracerd import _procfs  # noqa: PLC0415

    root = _procfs.cgroup2_root()
    assert root is not None, "no cgroup v2 hierarchy mounted"
    d = root / f"tracerd-test-{os.getpid()}"
    d.mkdir()
    try:
        yield d
    finally:
        for sub in sorted((p for p in [d, *d.rglob("*")] if p.is_dir()), reverse=True):
            with contextlib.suppress(OSError):
                for pid in (sub / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            deadline = time.monotonic() + 10
            while True:  # emptied once the killed processes are reaped
                try:
                    sub.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"{sub} stays busy"
                    time.sleep(0.05)


@pytest.fixture
def client(daemon: Daemon) -> Any:
    """A client of the module's ``daemon`` fixture (each module defines its daemon)."""
    with daemon.client() as c:
        yield c
