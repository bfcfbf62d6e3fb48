"""Faults: what a killed daemon leaves behind (real kernel, real daemon)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from conftest import Daemon, wait_for

_SYS_BPF = {"x86_64": 321, "aarch64": 280}[os.uname().machine]
_BPF_PROG_GET_NEXT_ID = 11
_libc = ctypes.CDLL(None, use_errno=True)


def loaded_bpf_programs() -> set[int]:
    """Ids of every BPF program loaded in the kernel (BPF_PROG_GET_NEXT_ID)."""
    ids: set[int] = set()
    attr = (ctypes.c_uint32 * 4)()  # start_id, next_id, open_flags, pad
    while True:
        if _libc.syscall(_SYS_BPF, _BPF_PROG_GET_NEXT_ID, ctypes.byref(attr),
                         ctypes.sizeof(attr)) != 0:
            return ids  # ENOENT: no more
        ids.add(attr[1])
        attr[0] = attr[1]


def test_sigkill_leaves_no_bpf_program_attached(tmp_path: Path, fixture_bin: Path) -> None:
    # Design choice (README, "The daemon"): nothing is pinned. The programs and their
    # attachments belong to the daemon's file descriptors, so the kernel detaches and
    # frees them when the process dies, however it dies; a restarted daemon starts clean.
    before = loaded_bpf_programs()
    dm = Daemon(tmp_path).wait_ready()
    ours = loaded_bpf_programs() - before
    assert ours, "the daemon loaded no BPF program?"
    worker = subprocess.Popen([str(fixture_bin), "slow", "50", "20"])
    try:
        with dm.client() as c:
            c.start_pid(worker.pid)
        dm.proc.send_signal(signal.SIGKILL)
        dm.proc.wait(30)
        deadline = time.monotonic() + 30
        while ours & loaded_bpf_programs() and time.monotonic() < deadline:
            time.sleep(0.1)  # freed after an RCU grace period
        assert not ours & loaded_bpf_programs()
        # The traced process never noticed: it runs on and exits normally.
        assert worker.wait(30) == 0
        # A new daemon starts on the same socket path (the stale socket is replaced).
        again = Daemon(tmp_path).wait_ready()
        assert again.stop() == 0
    finally:
        worker.kill()
        worker.wait()
        dm.stop()


def test_sigkill_keeps_the_history_of_finished_sessions(tmp_path: Path, fixture_bin: Path) -> None:
    """Finished reports are written by the history's own thread as they finish: a daemon
    killed with SIGKILL loses the sessions still running (no final report exists), never
    a finished one, and leaves a database the next daemon opens."""
    dm = Daemon(tmp_path / "d1").wait_ready()
    db = tmp_path / "d1" / "state" / "history.sqlite3"
    worker = subprocess.Popen([str(fixture_bin), "slow", "1000", "50"])
    idle = subprocess.Popen([str(fixture_bin), "gated", "5", "0"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        assert idle.stdout is not None and idle.stdout.readline().startswith(b"ready")
        with dm.client() as c:
            done = c.start_pid(idle.pid)
            running = c.start_pid(worker.pid)
            c.stop(done.id)

        def stored() -> bool:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as q:
                return bool(q.execute("SELECT 1 FROM sessions WHERE session_id = ?",
                                      (done.id,)).fetchall())
        wait_for(stored, why="the finished session reaches the database")
        dm.proc.send_signal(signal.SIGKILL)
        dm.proc.wait(30)
    finally:
        for p in (worker, idle):
            p.kill()
            p.wait()
        dm.stop()
    again = Daemon(tmp_path / "d2", "--state-dir", str(db.parent)).wait_ready()
    try:
        with again.client() as c:
            listed = {s.id: s for s in c.list()}
            assert done.id in listed and listed[done.id].from_history
            assert running.id not in listed  # it had no final report to keep
            summary, _ = c.report(done.id)
            assert summary.end_reason == "stopped by client"
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as q:
            assert q.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        assert again.stop() == 0
