"""Counter blocks (MAX_BLOCKS in bpf/syscount.h): the fast path that keeps a process
generation's counters in an array, and its fall-back to the stats map.

Every block taken is given back: at exec (the old generation's block is retired, its
counts kept in user space) and when the process's counters are deleted.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tracerd import syscalls
from tracerd._probe import Limits, Probe
from tracerd.model import EV_EXEC, EV_EXIT, LifecycleEvent


def _events_until(probe: Probe, done: object, timeout: float = 30) -> list[LifecycleEvent]:
    out: list[LifecycleEvent] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out += probe.poll_events(50)
        if callable(done) and done(out):
            return out
    raise AssertionError(f"timed out; events: {[(e.type, e.pid, e.gen) for e in out]}")


def _forked_loop(n: int) -> tuple[int, int]:
    """A child that makes ``n`` getppid calls once a byte is written to the returned fd."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(w)
        os.read(r, 1)
        for _ in range(n):
            os.getppid()
        os._exit(0)
    os.close(r)
    return pid, w


def test_a_tracked_process_is_counted_in_a_block_not_the_map() -> None:
    n = 5000
    getppid = syscalls.table_for().number("getppid")
    with Probe(Limits.for_this_kernel()) as probe:
        total = probe.block_count()
        assert total > 0 and probe.free_blocks() == total
        child, go = _forked_loop(n)
        probe.track(child)
        assert probe.free_blocks() == total - 1
        os.write(go, b"x")
        os.close(go)
        os.waitpid(child, 0)
        _events_until(probe, lambda evs: any(e.type == EV_EXIT for e in evs))
        stats = probe.read_stats()
        assert stats[(child, getppid)].calls == n
        # Nothing of it in the map: every native call went to the block.
        assert len(probe.table("stats")) == 0
        final = probe.delete_stats([child])
        assert final[(child, getppid)].calls == n
        assert probe.free_blocks() == total
        assert probe.read_stats() == {}


def test_exec_retires_blocks_and_a_fork_loop_gives_every_block_back(tmp_path: Path) -> None:
    """A process that execs three times (sh, then sh on a script, then sh on another):
    one block per generation, the old ones back on the free list once their EV_EXEC is
    read, their counts kept under their generation. The last script forks 30 children,
    each given a block by the kernel at fork and another at its exec."""
    execve = syscalls.table_for().number("execve")
    (tmp_path / "one").write_text(f"exec sh {tmp_path / 'two'}\n")
    loop = " ".join(str(i) for i in range(30))
    (tmp_path / "two").write_text(f"for i in {loop}; do /bin/true; done\n")
    with Probe(Limits.for_this_kernel()) as probe:
        total = probe.block_count()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(w)
            os.read(r, 1)
            os.execvp("sh", ["sh", "-c", f"exec sh {tmp_path / 'one'}"])
        os.close(r)
        probe.track(pid)  # before its first exec: every generation is counted
        os.close(w)
        os.waitpid(pid, 0)
        evs = _events_until(probe, lambda evs: any(
            e.type == EV_EXIT and e.pid == pid for e in evs))
        assert [e.gen for e in evs if e.type == EV_EXEC and e.pid == pid] == [1, 2, 3]
        gone = {e.pid for e in evs if e.type == EV_EXIT}
        assert len(gone) == 31
        # Held: the last generation's block of each of the 31 processes.
        assert probe.free_blocks() == total - 31
        by_gen = probe.read_stats_by_gen()
        assert {g for (t, g, _nr) in by_gen if t == pid} == {0, 1, 2, 3}
        # One execve that succeeded in each (those failing along $PATH stay with the old).
        ok = {g: by_gen[(pid, g, execve)].calls - by_gen[(pid, g, execve)].errors
              for g in (1, 2, 3)}
        assert ok == {1: 1, 2: 1, 3: 1}
        final = probe.delete_stats_by_gen(gone)
        assert sum(st.calls - st.errors for (_t, _g, nr), st in final.items()
                   if nr == execve) == 3 + 30
        assert probe.free_blocks() == total
        assert len(probe.table("stats")) == 0
        assert probe.drops().stats_full == 0


def test_processes_beyond_the_blocks_go_to_the_map() -> None:
    """Two blocks, five processes: three counted in the map, all exactly."""
    n = 300
    getppid = syscalls.table_for().number("getppid")
    with Probe(Limits.for_this_kernel(max_blocks=2)) as probe:
        kids = [_forked_loop(n) for _ in range(5)]
        for pid, _go in kids:
            probe.track(pid)
        assert probe.free_blocks() == 0
        for pid, go in kids:
            os.write(go, b"x")  # (later children hold earlier ones' fds: no end of file)
            os.close(go)
            os.waitpid(pid, 0)
        stats = probe.read_stats()
        assert [stats[(pid, getppid)].calls for pid, _ in kids] == [n] * 5
        table = probe.table("stats")
        in_map = [table.Key(pid, getppid, 0) in table for pid, _ in kids]
        assert in_map == [False, False, True, True, True]
        probe.delete_stats([pid for pid, _ in kids])
        assert probe.free_blocks() == 2


def test_a_block_the_kernel_still_counts_in_is_never_freed() -> None:
    """Deleting the counters of a pid whose number now belongs to a live tracked process
    (pid reuse, a stray tracked again) must not free that process's block: it would go
    on counting in a block handed to someone else."""
    getppid = syscalls.table_for().number("getppid")
    with Probe(Limits.for_this_kernel()) as probe:
        total = probe.block_count()
        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(w1)
            os.close(r2)
            os.read(r1, 1)
            for _ in range(100):
                os.getppid()
            os.write(w2, b"x")
            os.read(r1, 1)
            for _ in range(50):
                os.getppid()
            os._exit(0)
        os.close(r1)
        os.close(w2)
        probe.track(pid)
        os.write(w1, b"x")
        os.read(r2, 1)  # 100 calls made; still tracked
        assert probe.delete_stats_by_gen([pid]) == {}
        assert probe.free_blocks() == total - 1
        os.write(w1, b"x")
        os.waitpid(pid, 0)
        _events_until(probe, lambda evs: any(e.type == EV_EXIT for e in evs))
        assert probe.delete_stats([pid])[(pid, getppid)].calls == 150
        assert probe.free_blocks() == total
