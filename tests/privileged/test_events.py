"""Per-syscall events on the real kernel: exact content, order, clocks, merge, losses."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from conftest import Daemon, tracerd

from tracerd._events import EventBatch, EventFilter
from tracerd._probe import Limits, Probe
from tracerd._run import run_command
from tracerd.syscalls import table_for

TABLE = table_for()


def _events_json(tmp_path: Path, *cmd: str, extra: tuple[str, ...] = ()
                 ) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    out = tmp_path / "events.json"
    proc = tracerd("run", *extra, "--events", "--json", "-o", str(out), "--", *cmd)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc, proc


def _check_fixture_events(doc: dict[str, Any], stdout: str, path: Path) -> None:
    """The four calls of `exact events PATH`, exactly, in order, inside its window."""
    _, t0, t1, tid = stdout.split()
    lo, hi, tid_ = int(t0), int(t1), int(tid)
    inside = [e for e in doc["events"] if e["tid"] == tid_ and lo <= e["timestamp_ns"] <= hi]
    assert [e["name"] for e in inside] == ["openat", "write", "openat", "close"], inside
    opened, wrote, failed, closed = inside
    fd = opened["return_value"]
    assert fd >= 3 and opened["error"] is None
    assert opened["args"] == ["AT_FDCWD", json.dumps(str(path)),
                              "O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC", "0600"]
    assert opened["decoded"]["filename"] == str(path)
    assert wrote["args"] == [str(fd), '"hello, tracerd\\n"', "15"]
    assert wrote["return_value"] == 15 and wrote["decoded"]["buf"] == "hello, tracerd\n"
    assert failed["decoded"]["filename"] == "/nonexistent/tracerd"
    assert (failed["return_value"], failed["error"]) == (-1, "ENOENT")  # libc style
    assert closed["args"] == [str(fd)] and closed["return_value"] == 0
    # One monotonic clock: each call starts at or after the previous one's end, and
    # every timestamp lies inside the window the fixture measured itself.
    for before, after in itertools.pairwise(inside):
        assert after["timestamp_ns"] >= before["end_ns"]
    for e in inside:
        assert lo <= e["timestamp_ns"] <= e["end_ns"] <= hi
        assert e["duration_ns"] == e["end_ns"] - e["timestamp_ns"]
        assert e["pid"] == tid_


def test_fixture_events_are_exact(tmp_path: Path, fixture_bin: Path) -> None:
    target = tmp_path / "out.txt"
    doc, proc = _events_json(tmp_path, str(fixture_bin), "events", str(target))
    _check_fixture_events(doc, proc.stdout, target)
    meta = doc["metadata"]
    assert (meta["clock"], meta["lost"], meta["program"][1]) == ("monotonic", 0, "events")
    assert meta["events"] == len(doc["events"])
    names = [e["name"] for e in doc["events"]]
    assert names[0] == "execve" and names[-1] == "exit_group"
    assert doc["events"][0]["decoded"]["filename"] == str(fixture_bin)
    assert doc["events"][-1]["return_value"] is None  # exit_group never returns


def test_events_match_the_summary_counts(tmp_path: Path, fixture_bin: Path) -> None:
    # In-process: every call the aggregates counted has its event (nothing lost here).
    batches: list[EventBatch] = []
    with Probe(Limits.for_this_kernel()) as probe:
        outcome = run_command(probe, [str(fixture_bin), "exact", "200", "2"],
                              events=EventFilter(), on_events=batches.append)
    events = [e for b in batches for e in b.events]
    assert batches[-1].last and batches[-1].lost == 0
    counted: dict[tuple[int, int], int] = {}
    for pid, proc in outcome.report.processes.items():
        for nr, st in proc.syscalls.items():
            counted[(pid, nr)] = st.calls
    seen: dict[tuple[int, int], int] = {}
    for e in events:
        seen[(e.pid, e.nr)] = seen.get((e.pid, e.nr), 0) + 1
    assert seen == counted
    getppid = TABLE.number("getppid")
    assert sum(n for (_, nr), n in seen.items() if nr == getppid) == 6 * 200


def test_looks_like_strace(tmp_path: Path) -> None:
    ours = tracerd("run", "--events", "--", "cat", "/etc/hostname")
    assert ours.returncode == 0, ours.stderr
    theirs = subprocess.run(["strace", "cat", "/etc/hostname"], capture_output=True, text=True,
                            check=True)

    def calls(text: str) -> list[tuple[str, list[str], str]]:
        out = []
        for line in text.splitlines():
            m = re.match(r"(\w+)\((.*)\)\s+= (.*?)(?: <[0-9.]+>)?$", line)
            if m:
                ret = re.sub(r"0x[0-9a-f]+", "ADDR", m.group(3))
                out.append((m.group(1), re.findall(r'"[^"]*"', m.group(2)), ret))
        return out

    mine, strace = calls(ours.stderr), calls(theirs.stderr)
    assert [c[0] for c in mine] == [c[0] for c in strace]
    for a, b in zip(mine, strace, strict=True):
        if a[0] in ("set_tid_address", "getrandom"):
            continue  # a pid; random bytes
        assert a[2] == b[2], (a, b)
        if a[0] not in ("read", "write", "execve"):
            assert a[1] == b[1], (a, b)  # file names, quoted alike
    assert ours.stderr.rstrip().endswith("+++ exited with 0 +++")
    assert re.search(r"^exit_group\(0\) {27}= \?$", ours.stderr, re.M)  # column 40, like strace


def test_merge_attributes_every_syscall_to_its_function(tmp_path: Path,
                                                       fixture_bin: Path) -> None:
    _doc, proc = _events_json(tmp_path, str(fixture_bin), "functions")
    functions = tmp_path / "functions.jsonl"
    functions.write_text(proc.stdout)
    syscalls = tmp_path / "events.json"
    merged = tracerd("enrich", "--functions", str(functions), "--syscalls", str(syscalls))
    assert merged.returncode == 0, merged.stderr
    events = json.loads(merged.stdout)["events"]
    marks = [json.loads(line) for line in proc.stdout.splitlines()]
    main_tid = next(m["tid"] for m in marks if m["function"] == "main_work")
    worker_tid = next(m["tid"] for m in marks if m["function"] == "worker")
    lo = min(m["timestamp_ns"] for m in marks)
    hi = max(m["timestamp_ns"] for m in marks)

    def inside(tid: int) -> list[tuple[str, str | None, list[str]]]:
        return [(e["name"], e["parent_function"], e["stack"]) for e in events
                if e["tid"] == tid and lo <= e["timestamp_ns"] <= hi]

    # Thread start-up and exit (rt_sigprocmask, madvise, exit) fall outside "worker".
    assert [c for c in inside(worker_tid) if c[1] is not None] == \
        [("getppid", "worker", ["worker"])] * 3
    main = [c for c in inside(main_tid) if c[1] is not None]
    assert main == [
        ("openat", "read_config", ["main_work", "read_config"]),
        ("read", "read_config", ["main_work", "read_config"]),
        ("close", "read_config", ["main_work", "read_config"]),
        ("getppid", "main_work", ["main_work"]),
        ("openat", "save", ["main_work", "save"]),
        ("write", "write_all", ["main_work", "save", "write_all"]),
        ("close", "save", ["main_work", "save"]),
    ]
    # Outside every function (start-up, the timeline printed at the end): no parent.
    assert all(e["parent_function"] is None for e in events
               if e["tid"] == main_tid and not lo <= e["timestamp_ns"] <= hi)


def test_flood_loses_events_never_counts(fixture_bin: Path) -> None:
    # A 4-page ring and 600000 calls: the ring overflows; the kernel counts what it
    # could not record, so received + lost is exactly the number of calls counted.
    batches: list[EventBatch] = []
    with Probe(Limits.for_this_kernel(ev_ringbuf_pages=4)) as probe:
        outcome = run_command(probe, [str(fixture_bin), "exact", "100000", "0"],
                              events=EventFilter(), on_events=batches.append)
    received = sum(len(b.events) for b in batches)
    lost = batches[-1].lost
    calls = sum(st.calls for p in outcome.report.processes.values()
                for st in p.syscalls.values())
    getppid = TABLE.number("getppid")
    assert getppid is not None
    assert outcome.report.totals()[getppid].calls == 600000  # the aggregates stay exact
    assert lost > 0 and batches[-1].dropped == 0
    assert received + lost == calls
    # Reported with the run's drops too (GetInfo and reports carry the same counter), and
    # not as a drop that makes counts incomplete.
    assert outcome.report.drops.syscall_events_lost == lost
    assert outcome.report.drops.total() == 0


def test_no_loss_past_2_pow_24_in_the_ring(fixture_bin: Path) -> None:
    # 200000 events of 112 bytes take the ring's positions past 2^24 (two wraps of the
    # default 8 MiB ring). At 50000 calls/s the reader has 1.6 s of slack: nothing may
    # be lost. With the ring positions read and stored a byte at a time (struct), a torn
    # read made the reader run ahead and the kernel refuse records here (~30 per run).
    batches: list[EventBatch] = []
    with Probe(Limits.for_this_kernel()) as probe:
        outcome = run_command(probe, [str(fixture_bin), "paced", "200000", "50000"],
                              events=EventFilter(), on_events=batches.append)
    calls = sum(st.calls for p in outcome.report.processes.values()
                for st in p.syscalls.values())
    assert calls > 200000
    assert (sum(len(b) for b in batches), batches[-1].lost) == (calls, 0)


def test_daemon_streams_events_and_counts_a_slow_client(tmp_path: Path,
                                                        fixture_bin: Path) -> None:
    dm = Daemon(tmp_path).wait_ready()
    try:
        target = tmp_path / "remote.txt"
        doc, proc = _events_json(tmp_path, str(fixture_bin), "events", str(target),
                                 extra=("--remote", dm.socket))
        _check_fixture_events(doc, proc.stdout, target)

        # A client that keeps a 100-event queue and reads only after the end: the rest
        # is dropped for it, and counted.
        with dm.client() as c:
            from tracerd._run import spawn_tracked  # noqa: PLC0415
            from tracerd._sessions import SessionOptions, SpawnedTarget  # noqa: PLC0415

            sid: list[str] = []

            def register(pid: int, _path: str) -> None:
                sid.append(c.start(SpawnedTarget(pid=pid, argv=(str(fixture_bin),)),
                                   SessionOptions(events=True, per_process=True)).id)

            pid = spawn_tracked([str(fixture_bin), "exact", "1000", "0"], register)
            os.waitpid(pid, 0)
            got = list(c.stream_events(sid[0], queue=100))
            _, report = c.report(sid[0])
        received = sum(len(b.events) for b in got)
        calls = sum(st.calls for p in report.processes.values() for st in p.syscalls.values())
        assert got[-1].last
        assert received + got[-1].lost == calls and got[-1].dropped > 0

        # `sessions events ID`: a session started on a running process streams from
        # then on, and the command ends with the session.
        napper = subprocess.Popen(["sleep", "1"])
        started = dm.cli("start", "--pid", str(napper.pid), "--events")
        assert started.returncode == 0, started.stderr
        out = tmp_path / "session-events.json"
        streamed = dm.cli("events", started.stdout.strip(), "--json", "-o", str(out))
        napper.wait()
        assert streamed.returncode == 0, streamed.stderr
        sdoc = json.loads(out.read_text())
        assert sdoc["metadata"]["complete"] and sdoc["metadata"]["lost"] == 0
        assert sdoc["events"][-1]["name"] == "exit_group"
        assert {e["pid"] for e in sdoc["events"]} == {napper.pid}

        sleeper = subprocess.Popen(["sleep", "30"])
        try:
            plain = dm.cli("start", "--pid", str(sleeper.pid))
            assert plain.returncode == 0, plain.stderr
            refused = dm.cli("events", plain.stdout.strip())
            assert refused.returncode == 65 and "not started with events" in refused.stderr
            missing = dm.cli("events", "nosuchsession")
            assert missing.returncode == 67
        finally:
            sleeper.kill()
            sleeper.wait()
    finally:
        assert dm.stop() == 0
