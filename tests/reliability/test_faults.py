"""Faults: what a killed daemon leaves behind (real kernel, real daemon)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import Daemon

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
