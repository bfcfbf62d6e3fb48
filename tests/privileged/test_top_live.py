"""`tracerd top` against a real daemon: real sessions on real processes, the command line run
as a user would (plain stdout, and a pseudo-terminal for the in-place view)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TRACERD, Daemon, tracerd

from tracerd import _budgets
from tracerd._sessions import SessionOptions
from tracerd._top import CLEAR, SHOW_CURSOR
from tracerd.client import Client

BUDGET = """
[[assertion]]
name = "few_getppid"
type = "syscall_calls"
syscall_name_pattern = "^getppid$"
max_calls = 100
action = "warn"
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    dm = Daemon(tmp_path_factory.mktemp("top"))
    try:
        yield dm.wait_ready()
    finally:
        dm.stop()


class Phases:
    """``exact phases``: getppid x K for each line K written to it."""

    def __init__(self, fixture_bin: Path) -> None:
        self.proc = subprocess.Popen([str(fixture_bin), "phases"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid

    def run(self, k: int) -> None:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{k}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == f"done {k}"

    def end(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(10)


def top(daemon: Daemon, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return tracerd("top", "--remote", daemon.socket, *args, timeout=60, **kw)


def cells(out: str, first: str) -> list[str]:
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == [first]]
    assert len(rows) == 1, (first, out)
    return rows[0]


def cell(block: str, header: str, key: str) -> str:
    """The cell under ``header`` in the row starting with ``key`` of the table holding both."""
    lines = block.splitlines()
    for i, line in enumerate(lines):
        heads = line.split()
        if header in heads and heads[0].isupper():
            for other in lines[i + 1:]:
                if not other.strip():
                    break
                if other.split()[:1] == [key]:
                    return other.split()[heads.index(header)]
    raise AssertionError(f"no {header} for {key}:\n{block}")


def test_overview_and_session_view(daemon: Daemon, client: Client, fixture_bin: Path) -> None:
    w = Phases(fixture_bin)
    budget = tuple(_budgets.loads(BUDGET))
    try:
        w.run(3)  # before the session: not its calls
        s = client.start_pid(w.pid, options=SessionOptions(label="top-test", budget=budget))
        w.run(500)
        deadline = time.monotonic() + 10
        while (all(r.passed for r in client.report(s.id)[1].budget)
               and time.monotonic() < deadline):
            time.sleep(0.05)  # the budget is judged at the daemon's next drain

        over = top(daemon, "--once", "--interval", "0.2", "--rows", "100")
        assert over.returncode == 0, over.stderr
        assert "\x1b" not in over.stdout
        row = cells(over.stdout, s.id)
        assert row[1] == "running"
        assert row[2:4] == ["-", "local"]  # no watch rule; the socket's owner
        assert " ".join(row[9:]) == f"[top-test] pid {w.pid}: {fixture_bin} phases"
        assert cell(over.stdout, "VIOL", s.id) == "1"
        assert cell(over.stdout, "CALLS/S", s.id) == "0.0"  # idle between the two polls
        assert cell(over.stdout, "CALLS", "getppid") == "500"
        assert cell(over.stdout, "CALLS/S", "getppid") == "0.0"

        one = top(daemon, s.id, "--once", "--interval", "0.2")
        assert one.returncode == 0, one.stderr
        assert one.stdout.splitlines()[1].startswith("running, for ")
        assert cell(one.stdout, "CALLS", "getppid") == "500"
        assert cell(one.stdout, "ERRORS", "getppid") == "0"
        proc = cells(one.stdout, str(w.pid))
        assert proc[1] == "exact"
        assert proc[-1] == "running"
        assert int(proc[2]) >= 500  # getppid and the reads/writes of the phases
        assert cells(one.stdout, "few_getppid")[1:3] == ["warn", "syscall_calls"]
        assert "getppid: 500 calls > 100 calls" in one.stdout

        # Two frames, a blank line apart: the first without rates, the second with them.
        two = top(daemon, s.id, "-n", "2", "--interval", "0.2")
        assert two.returncode == 0, two.stderr
        frames = two.stdout.split("\n\ntracerd top ")
        assert len(frames) == 2, two.stdout
        assert cell(frames[0], "CALLS/S", "getppid") == "-"
        assert cell(frames[1], "CALLS/S", "getppid") == "0.0"
    finally:
        w.end()

    # The process is gone: the session ends on its own and is shown as finished.
    deadline = time.monotonic() + 10
    while client.report(s.id)[0].state.name == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.05)
    done = top(daemon, s.id, "--once")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].startswith("FINISHED (")
    assert cells(done.stdout, str(w.pid))[-3:] == ["exited", "with", "0"]
    over = top(daemon, "--once", "--rows", "100")
    assert cells(over.stdout, s.id)[1] == "finished"

    missing = top(daemon, "nosuchsession", "--once")
    assert missing.returncode == 67
    assert missing.stderr.count("\n") == 1 and "nosuchsession" in missing.stderr


def test_rates_of_a_paced_process(daemon: Daemon, client: Client, fixture_bin: Path) -> None:
    # getppid at 2000/s (bursts of 100, busy-waiting between them) for about 4 s.
    p = subprocess.Popen([str(fixture_bin), "paced", "8000", "2000"], stdout=subprocess.DEVNULL)
    try:
        s = client.start_pid(p.pid)
        res = top(daemon, s.id, "--once", "--interval", "1")
        assert res.returncode == 0, res.stderr
        r = float(cell(res.stdout, "CALLS/S", "getppid"))
        assert 1000 <= r <= 3000, res.stdout
        assert float(cell(res.stdout, "CALLS/S", str(p.pid))) == pytest.approx(r, abs=100)
    finally:
        p.kill()
        p.wait(10)
        with contextlib.suppress(Exception):
            client.stop(s.id)


def _read_until(fd: int, proc: subprocess.Popen[bytes], done: re.Pattern[bytes],
                timeout: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not done.search(out):
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                out += os.read(fd, 65536)
            except OSError:  # EIO: the other side closed
                break
        elif proc.poll() is not None:
            break
    return out


def test_in_place_on_a_terminal_and_ctrl_c(daemon: Daemon, client: Client,
                                           fixture_bin: Path) -> None:
    w = Phases(fixture_bin)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 90, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    s = client.start_pid(w.pid, options=SessionOptions(label="L" * 200))
    w.run(7)
    proc = subprocess.Popen([*TRACERD, "top", "--remote", daemon.socket, "--interval", "0.2"],
                            stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    try:
        clear = re.escape(CLEAR.encode())
        out = _read_until(master, proc, re.compile(b"(?s)" + clear + b".*" + clear + b".*"
                                                   + clear + b".*getppid"), 20)
        assert out.count(CLEAR.encode()) >= 3, out
        assert proc.poll() is None  # still refreshing
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        out += _read_until(master, proc, re.compile(re.escape(SHOW_CURSOR.encode())), 2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        w.end()
        with contextlib.suppress(Exception):
            client.stop(s.id)
    assert SHOW_CURSOR.encode() in out
    assert b"Traceback" not in out
    last = out.decode(errors="replace").split(CLEAR)[-1]
    lines = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", x) for x in last.split("\r\n")]
    assert any(x.startswith(s.id) for x in lines), lines
    assert max(len(x) for x in lines) <= 90  # cut to the terminal's width
    assert len([x for x in lines if x]) <= 30


def test_daemon_going_away(tmp_path: Path) -> None:
    dm = Daemon(tmp_path).wait_ready()
    proc = subprocess.Popen([*TRACERD, "top", "--remote", dm.socket, "--interval", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("tracerd top ")
        dm.stop()
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        dm.stop()
    assert proc.returncode == 75, err
    assert err.count("\n") == 1, err
    assert err.startswith("tracerd: ") and dm.socket in err
