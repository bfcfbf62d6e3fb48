"""Peak RSS from the real kernel: taskstats exit records and /proc VmHWM."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tracerd import _procfs
from tracerd._taskstats import ExitListener, TaskExit, decode_stats

MiB = 1 << 20
#: Above the bytes a child touches: the interpreter's own pages (about 10 MiB for
#: ``python3 -c`` with no imports beyond time/sys), with room to spare.
SLACK = 40 * MiB

#: How far the kernel's approximate RSS reading (get_mm_rss(): percpu_counter_read, used
#: for taskstats' hiwater_rss) can trail the exact sum /proc/PID/status shows on recent
#: kernels: each online CPU may hold up to percpu_counter_batch (max(32, 2 * CPUs))
#: unflushed pages of each of the three RSS counters (anon, file, shmem).
_CPUS = os.cpu_count() or 1
COUNTER_SLACK = 3 * max(32, 2 * _CPUS) * _CPUS * os.sysconf("SC_PAGE_SIZE")

#: Touches every page of ``int(argv[1])`` MiB (bytes * n memsets), burns ~0.3 s of CPU,
#: then exits with ``int(argv[2])``.
TOUCH_AND_BURN = """
import sys, time
buf = b"x" * (int(sys.argv[1]) << 20)
t = time.process_time()
while time.process_time() - t < 0.3:
    pass
sys.exit(int(sys.argv[2]))
"""

#: Touches ``int(argv[1])`` MiB, says so, and holds it until stdin closes.
TOUCH_AND_HOLD = """
import sys
buf = b"x" * (int(sys.argv[1]) << 20)
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def listener() -> Iterator[ExitListener]:
    # No skip here: where taskstats is unusable (not root, a container's namespaces, no
    # CONFIG_TASKSTATS) TaskstatsUnavailable fails the test with its reason.
    with ExitListener() as lst:
        yield lst


def collect(lst: ExitListener, done: Callable[[list[TaskExit]], bool],
            timeout: float = 10.0) -> list[TaskExit]:
    """Records drained until ``done(records)`` holds (the listener sees the whole host)."""
    seen: list[TaskExit] = []
    deadline = time.monotonic() + timeout
    while True:
        seen += lst.drain()
        if done(seen):
            return seen
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out; lost={lst.lost} malformed={lst.malformed}")
        select.select([lst], [], [], min(left, 0.1))


def run(*argv: str) -> tuple[int, int]:
    """Run a child to its end: (pid, exit status)."""
    proc = subprocess.Popen(argv)
    return proc.pid, proc.wait(timeout=60)


def of_process(records: list[TaskExit], pid: int) -> list[TaskExit]:
    return [r for r in records if r.tgid == pid]


def test_exited_child_peak_rss_and_cpu(listener: ExitListener) -> None:
    pid, status = run(sys.executable, "-c", TOUCH_AND_BURN, "64", "3")
    assert status == 3
    records = collect(listener, lambda seen: bool(of_process(seen, pid)))
    (rec,) = of_process(records, pid)
    assert rec.pid == rec.tgid == pid
    assert rec.comm == Path(sys.executable).name[:15]
    # Low end: the interpreter's own pages (~10 MiB) outweigh COUNTER_SLACK here.
    assert 64 * MiB <= rec.hiwater_rss_bytes < 64 * MiB + SLACK, rec.hiwater_rss_bytes / MiB
    assert rec.utime_us + rec.stime_us > 0
    assert rec.exit_code == 3 << 8  # task->exit_code is wait(2)-status encoded
    assert listener.version is not None and listener.version >= 12  # has ac_tgid
    assert (listener.lost, listener.malformed) == (0, 0)


def test_threads_exiting_one_by_one_carry_the_tgid(listener: ExitListener,
                                                   fixture_bin: Path) -> None:
    k = 20
    pid, status = run(str(fixture_bin), "threads", str(k))
    assert status == 0
    records = of_process(collect(listener, lambda s: len(of_process(s, pid)) > k), pid)
    assert len(records) == k + 1
    assert len({r.pid for r in records}) == k + 1
    assert [r.pid for r in records if r.pid == pid] == [pid]  # the leader
    assert all(r.hiwater_rss_bytes > 0 for r in records)


def test_group_exit_gives_every_thread_a_record(listener: ExitListener,
                                                fixture_bin: Path) -> None:
    threads = 4  # blocked in read(2) when main calls exit_group(0)
    pid, status = run(str(fixture_bin), "stuck", str(threads))
    assert status == 0
    records = of_process(collect(listener, lambda s: len(of_process(s, pid)) > threads), pid)
    assert sorted(r.pid == pid for r in records) == [False] * threads + [True]
    # One mm for the group: every thread's record carries the same peak (give or take
    # the kernel's per-CPU RSS counter slack).
    peaks = [r.hiwater_rss_bytes for r in records]
    assert min(peaks) > 0 and max(peaks) - min(peaks) <= COUNTER_SLACK
    assert listener.lost == 0


def test_vm_hwm_of_live_zombie_and_dead(listener: ExitListener) -> None:
    proc = subprocess.Popen([sys.executable, "-c", TOUCH_AND_HOLD, "32"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        live = _procfs.vm_hwm_bytes(proc.pid)
        assert live is not None and 32 * MiB <= live < 32 * MiB + SLACK
        proc.communicate(timeout=30)  # closes stdin; the child exits
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _procfs.vm_hwm_bytes(proc.pid) is None  # reaped
    # The exit record agrees with the last /proc reading: the peak can only have grown,
    # but the exit record reads the approximate per-CPU counters (seen 120 KiB lower
    # on 2 CPUs).
    (rec,) = of_process(collect(listener, lambda s: bool(of_process(s, proc.pid))),
                        proc.pid)
    assert live - COUNTER_SLACK <= rec.hiwater_rss_bytes < live + 4 * MiB


def test_vm_hwm_of_zombie_is_none() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while (st := _procfs.stat(pid)) is not None and st.state != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert _procfs.vm_hwm_bytes(pid) is None  # a zombie has no mm, no VmHWM line
    finally:
        os.waitpid(pid, 0)
    assert _procfs.vm_hwm_bytes(pid) is None
    assert _procfs.vm_hwm_bytes(os.getpid()) is not None


def test_drain_never_blocks_and_close_is_idempotent() -> None:
    lst = ExitListener()
    # The listener is host-wide, so an unrelated exit may be queued; an empty queue
    # must give [] at once.
    for _ in range(50):
        t = time.monotonic()
        got = lst.drain()
        assert time.monotonic() - t < 0.5
        if got == []:
            break
    else:
        raise AssertionError("drain() never returned []")
    assert lst.fileno() >= 0
    lst.close()
    lst.close()
    with pytest.raises(ValueError):
        lst.fileno()
    with pytest.raises(ValueError):
        lst.drain()
    with ExitListener() as other:
        pass
    other.close()


def test_overrun_is_counted_not_silent(fixture_bin: Path) -> None:
    # The smallest receive buffer holds a handful of records (~2.3 KiB each).
    with ExitListener(rcvbuf=4096) as lst:
        assert run(str(fixture_bin), "threads", "500")[1] == 0
        first = lst.drain()
        assert lst.lost >= 1
        assert len(first) < 500
        # The socket keeps working after the overrun.
        pid, _ = run(sys.executable, "-c", "pass")
        collect(lst, lambda seen: bool(of_process(seen, pid)))


def test_decode_is_by_fixed_offset_and_defensive() -> None:
    v11 = bytearray(360)  # before ac_tgid (v12): tgid falls back to the pid
    v11[0:2] = (11).to_bytes(2, sys.byteorder)
    v11[80:84] = b"abc\0"
    v11[200:208] = (5).to_bytes(8, sys.byteorder)
    rec = decode_stats(bytes(v11), pid=42)
    assert rec is not None
    assert (rec.pid, rec.tgid, rec.comm, rec.hiwater_rss_bytes) == (42, 42, "abc", 5120)
    assert decode_stats(bytes(v11[:207]), pid=42) is None  # cannot hold hiwater_rss
