"""Tests for tracerd.render: strace-format tables, per-process text, and the JSON schema."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracerd._budgets import Result
from tracerd.model import (
    HIST_BUCKETS,
    REPORT_SCHEMA,
    Drops,
    ExitStatus,
    ProcessInfo,
    Report,
    SyscallStats,
)
from tracerd.render import (
    counts_table,
    process_header,
    render_text,
    report_from_dict,
    report_to_dict,
    report_to_json,
    summary_table,
)

_NAMES = {0: "read", 1: "write", 3: "close", 9: "mmap", 60: "exit_group", 257: "openat"}


def name_of(nr: int) -> str:
    """Stand-in for tracerd.syscalls' table: unknown numbers are named as that module does."""
    return _NAMES.get(nr, f"syscall_{nr}")


def hist(**buckets: int) -> list[int]:
    """A histogram with the given buckets set, e.g. hist(b10=3)."""
    h = [0] * HIST_BUCKETS
    for key, n in buckets.items():
        h[int(key[1:])] = n
    return h


# ---------------------------------------------------------------------------------------------
# summary_table
# ---------------------------------------------------------------------------------------------

# Hand-computed: total time 1_350_000 ns; openat 600000/1350000 = 44.44 %, the others
# 250000/1350000 = 18.52 %. usecs/call: openat 60000 ns -> 60, close/write 50000 -> 50,
# read (250000 + 1) // 3 = 83333 ns -> 83. Total row: 1350000 ns / 25 calls = 54 us.
# close, write and read tie on time: calls desc puts read last, name puts close before write.
# mmap has no calls and is omitted; syscall_999 shows the zero-time row and errors == calls.
KNOWN_STATS = {
    0: SyscallStats(calls=3, errors=0, total_ns=250_000, max_ns=100_000),
    1: SyscallStats(calls=5, errors=0, total_ns=250_000, max_ns=60_000),
    3: SyscallStats(calls=5, errors=0, total_ns=250_000, max_ns=70_000),
    9: SyscallStats(),
    257: SyscallStats(calls=10, errors=3, total_ns=600_000, max_ns=90_000),
    999: SyscallStats(calls=2, errors=2, total_ns=0),
}

KNOWN_TABLE = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 44.44    0.000600          60        10         3 openat
 18.52    0.000250          50         5           close
 18.52    0.000250          50         5           write
 18.52    0.000250          83         3           read
  0.00    0.000000           0         2         2 syscall_999
------ ----------- ----------- --------- --------- ----------------
100.00    0.001350          54        25         5 total
"""


def test_known_table_exact() -> None:
    assert summary_table(KNOWN_STATS, name_of) == KNOWN_TABLE


def test_rows_are_independent_of_dict_order() -> None:
    items = list(KNOWN_STATS.items())
    random.Random(7).shuffle(items)
    assert summary_table(dict(items), name_of) == KNOWN_TABLE


def test_no_trailing_whitespace_when_name_is_last() -> None:
    for line in summary_table(KNOWN_STATS, name_of).splitlines():
        assert line == line.rstrip()


def test_usecs_per_call_rounding() -> None:
    # Rows: the mean is rounded to the nearest ns first (strace's ts_div adds n/2), then
    # truncated to us: 5999 ns / 2 calls -> 3000 ns -> 3. The total row truncates directly:
    # 5999 ns / 2 calls = 2.9995 us -> 2. 249000 ns -> 249 exactly (strace's double arithmetic
    # would print 248 here; we do not mirror that artefact).
    assert summary_table({1: SyscallStats(calls=2, total_ns=5999)}, name_of) == """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
100.00    0.000006           3         2           write
------ ----------- ----------- --------- --------- ----------------
100.00    0.000006           2         2           total
"""
    table = summary_table({0: SyscallStats(calls=1, total_ns=249_000)}, name_of)
    assert table.splitlines()[2] == "100.00    0.000249         249         1           read"


def test_columns_widen_for_large_values_and_long_names() -> None:
    stats = {
        5000: SyscallStats(calls=1_234_567_890, errors=1_000_000_000, total_ns=12_345 * 10**9),
        0: SyscallStats(calls=1, total_ns=200_000 * 10**9),
    }
    names = {5000: "a_rather_long_syscall_name"}

    table = summary_table(stats, lambda nr: names.get(nr) or name_of(nr))
    # seconds: "212345.000000" (13 chars); usecs/call: read's 200000000000 (12 chars);
    # calls: 1234567891 (10); errors: 1000000000 (10); name: 26 + 1 = 27 (still unpadded last).
    # Row: 12345e9 ns / 1234567890 calls = 9999.3 ns -> 9 us; total: 212345e9 / 1234567891
    # = 171999.4 ns -> 171 us. 12345 / 212345 = 5.81 %.
    assert table == """\
% time       seconds   usecs/call      calls     errors syscall
------ ------------- ------------ ---------- ---------- ---------------------------
 94.19 200000.000000 200000000000          1            read
  5.81  12345.000000            9 1234567890 1000000000 a_rather_long_syscall_name
------ ------------- ------------ ---------- ---------- ---------------------------
100.00 212345.000000          171 1234567891 1000000000 total
"""


def test_zero_time_totals() -> None:
    # No time at all: rows show 0.00 (strace skips the 0/0 division), the total still 100.00.
    stats = {0: SyscallStats(calls=4), 1: SyscallStats(calls=4, errors=1)}
    assert summary_table(stats, name_of) == """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
  0.00    0.000000           0         4           read
  0.00    0.000000           0         4         1 write
------ ----------- ----------- --------- --------- ----------------
100.00    0.000000           0         8         1 total
"""


def test_empty_table() -> None:
    assert summary_table({3: SyscallStats()}, name_of) == """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
------ ----------- ----------- --------- --------- ----------------
100.00    0.000000           0         0           total
"""


def test_percentile_columns() -> None:
    stats = {
        # 4 timed calls: 3 in [1024, 2048) ns, 1 in [4096, 8192) ns, max 4000 ns.
        # p50 -> rank 2 -> bucket 10 -> 2047 ns; p99 -> rank 4 -> bucket 12, capped at 4000.
        0: SyscallStats(calls=4, total_ns=9_000, max_ns=4_000, hist=hist(b10=3, b12=1)),
        # Calls that never returned are not timed: no percentile at all.
        1: SyscallStats(calls=1, total_ns=1_000),
    }
    # Total: read's histogram alone; write's max_ns of 0 does not lower the total's max.
    assert summary_table(stats, name_of, percentiles=True) == """\
% time     seconds  usecs/call     calls    errors syscall          p50(us) p99(us)
------ ----------- ----------- --------- --------- ---------------- ------- -------
 90.00    0.000009           2         4           read               2.047   4.000
 10.00    0.000001           1         1           write                  -       -
------ ----------- ----------- --------- --------- ---------------- ------- -------
100.00    0.000010           2         5           total              2.047   4.000
"""


def test_percentile_columns_widen() -> None:
    stats = {0: SyscallStats(calls=1, total_ns=3 * 10**9, max_ns=3 * 10**9, hist=hist(b31=1))}
    lines = summary_table(stats, name_of, percentiles=True).splitlines()
    assert lines[0].endswith("syscall              p50(us)     p99(us)")
    assert lines[2].endswith("read             3000000.000 3000000.000")


# ---------------------------------------------------------------------------------------------
# process_header / render_text
# ---------------------------------------------------------------------------------------------


def test_process_header_variants() -> None:
    base = ProcessInfo(pid=1234, ppid=1200, comm="python3", start_ns=1_000_000_000)
    exited = _with(base, end_ns=1_012_345_678, exit=ExitStatus(code=0))
    assert process_header(exited) == "pid 1234 (python3) ppid 1200, exited with 0, 0.012346 s"

    killed = _with(base, end_ns=3_000_000_000, exit=ExitStatus(signal=11, core_dumped=True))
    assert process_header(killed) == (
        "pid 1234 (python3) ppid 1200, killed by SIGSEGV (core dumped), 2.000000 s"
    )
    assert process_header(base) == "pid 1234 (python3) ppid 1200, still running"
    unknown = _with(base, end_ns=1_500_000_000)
    assert process_header(unknown) == (
        "pid 1234 (python3) ppid 1200, ended, exit status unknown, 0.500000 s"
    )


def _with(proc: ProcessInfo, **changes: Any) -> ProcessInfo:
    out = copy.deepcopy(proc)
    for k, v in changes.items():
        setattr(out, k, v)
    return out


def _two_process_report(drops: Drops | None = None) -> Report:
    parent = ProcessInfo(
        pid=200, ppid=1, comm="sh", argv=["sh", "-c", "ls"], filename="/bin/sh",
        start_ns=1_000, end_ns=2_000_001_000, exit=ExitStatus(code=0),
        syscalls={
            0: SyscallStats(calls=2, total_ns=2_000, max_ns=1_500, hist=hist(b10=2)),
            60: SyscallStats(calls=1, total_ns=0, max_ns=0, hist=hist(b0=1)),
        },
    )
    # Higher pid but started first: per-process sections follow start time, not pid.
    child = ProcessInfo(
        pid=300, ppid=200, comm="ls", start_ns=500, end_ns=None,
        syscalls={
            0: SyscallStats(calls=1, errors=1, total_ns=6_000, max_ns=6_000, hist=hist(b12=1)),
            257: SyscallStats(calls=2, total_ns=4_000, max_ns=3_000, hist=hist(b10=1, b11=1)),
        },
    )
    return Report(
        command=["sh", "-c", "ls"], arch="x86_64", kernel="6.8.0", root_pid=200,
        start_ns=0, end_ns=2_000_002_000, exit=ExitStatus(code=0),
        processes={200: parent, 300: child}, drops=drops or Drops(),
    )


def test_render_text_totals_only() -> None:
    assert render_text(_two_process_report(), name_of) == """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 66.67    0.000008           2         3         1 read
 33.33    0.000004           2         2           openat
  0.00    0.000000           0         1           exit_group
------ ----------- ----------- --------- --------- ----------------
100.00    0.000012           2         6         1 total
"""


def test_render_text_per_process() -> None:
    assert render_text(_two_process_report(), name_of, per_process=True) == """\
pid 300 (ls) ppid 200, still running
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 60.00    0.000006           6         1         1 read
 40.00    0.000004           2         2           openat
------ ----------- ----------- --------- --------- ----------------
100.00    0.000010           3         3         1 total

pid 200 (sh) ppid 1, exited with 0, 2.000000 s
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
100.00    0.000002           1         2           read
  0.00    0.000000           0         1           exit_group
------ ----------- ----------- --------- --------- ----------------
100.00    0.000002           0         3           total

total: 2 processes
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 66.67    0.000008           2         3         1 read
 33.33    0.000004           2         2           openat
  0.00    0.000000           0         1           exit_group
------ ----------- ----------- --------- --------- ----------------
100.00    0.000012           2         6         1 total
"""


def test_render_text_per_process_ties_on_start_by_pid() -> None:
    report = _two_process_report()
    for proc in report.processes.values():
        proc.start_ns = 42
    text = render_text(report, name_of, per_process=True)
    assert text.index("pid 200 (sh)") < text.index("pid 300 (ls)")


def test_render_text_percentiles_per_process() -> None:
    text = render_text(_two_process_report(), name_of, per_process=True, percentiles=True)
    sections = text.split("\n\n")
    assert len(sections) == 3
    for section in sections:
        assert section.splitlines()[1].endswith("syscall          p50(us) p99(us)")
    # Merged histograms. read: b10 x2 + b12 x1, max 6000: p50 rank 2 -> 2047 ns, p99 rank 3
    # -> 8191 capped at 6000. openat: b10 + b11, max 3000: 2047 and 4095 capped at 3000.
    # exit_group: b0 with max 0 -> 0. total: b0, b10 x3, b11, b12 (6 timed): p50 rank 3 ->
    # 2047; p99 rank 6 -> 8191 capped at 6000.
    assert sections[2] == """\
total: 2 processes
% time     seconds  usecs/call     calls    errors syscall          p50(us) p99(us)
------ ----------- ----------- --------- --------- ---------------- ------- -------
 66.67    0.000008           2         3         1 read               2.047   6.000
 33.33    0.000004           2         2           openat             2.047   3.000
  0.00    0.000000           0         1           exit_group         0.000   0.000
------ ----------- ----------- --------- --------- ---------------- ------- -------
100.00    0.000012           2         6         1 total              2.047   6.000
"""


def test_drops_footer_absent_when_nothing_dropped() -> None:
    assert "WARNING" not in render_text(_two_process_report(), name_of)
    assert "WARNING" not in render_text(_two_process_report(), name_of, per_process=True)


def test_drops_footer_names_each_nonzero_counter() -> None:
    text = render_text(_two_process_report(Drops(stats_full=12, events_lost=3)), name_of)
    assert text.endswith(
        "100.00    0.000012           2         6         1 total\n"
        "tracerd: WARNING: 12 syscalls not counted (stats map full), "
        "3 process events lost (ring buffer full)\n"
    )
    text = render_text(_two_process_report(Drops(pid_out_of_range=1)), name_of, per_process=True)
    assert text.splitlines()[-1] == (
        "tracerd: WARNING: 1 fork not tracked (pid above the limit sized at load time)"
    )
    text = render_text(_two_process_report(Drops(syscall_events_lost=5)), name_of)
    assert text.splitlines()[-1] == (
        "tracerd: WARNING: 5 syscall events not recorded (the counts above are complete)"
    )
    assert Drops(syscall_events_lost=5).total() == 0  # counts stay complete: not a drop
    text = render_text(_two_process_report(Drops(stats_full=1, events_lost=1)), name_of)
    assert text.splitlines()[-1] == (
        "tracerd: WARNING: 1 syscall not counted (stats map full), "
        "1 process event lost (ring buffer full)"
    )


# ---------------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------------


def test_report_to_dict_layout() -> None:
    d = report_to_dict(_two_process_report(Drops(events_lost=2)), name_of)
    assert d["schema"] == REPORT_SCHEMA == "tracerd.report/v1"
    assert d["duration_ns"] == 2_000_002_000
    assert d["exit"] == {"code": 0, "signal": None, "core_dumped": False, "status": 0}
    assert d["drops"] == {"stats_full": 0, "events_lost": 2, "pid_out_of_range": 0,
                          "syscall_events_lost": 0, "forks_untracked": 0}
    assert [p["pid"] for p in d["processes"]] == [200, 300]
    child = d["processes"][1]
    assert child["exit"] is None and child["end_ns"] is None
    assert [s["name"] for s in child["syscalls"]] == ["openat", "read"]
    assert child["syscalls"][1] == {
        "nr": 0, "name": "read", "calls": 1, "errors": 1, "total_ns": 6_000, "max_ns": 6_000,
        "histogram": hist(b12=1), "alloc_bytes": 0,
    }
    assert child["peak_rss_bytes"] is None
    assert d["budget"] == [] and d["budget_failed"] is False
    totals = d["totals"]
    assert (totals["calls"], totals["errors"], totals["total_ns"]) == (6, 1, 12_000)
    assert [s["name"] for s in totals["syscalls"]] == ["exit_group", "openat", "read"]
    assert totals["syscalls"][2]["histogram"] == hist(b10=2, b12=1)


def test_exit_status_is_shell_status() -> None:
    report = _two_process_report()
    report.exit = ExitStatus(signal=9)
    assert report_to_dict(report, name_of)["exit"] == {
        "code": None, "signal": 9, "core_dumped": False, "status": 137,
    }


def test_report_to_json_format() -> None:
    text = report_to_json(_two_process_report(), name_of)
    assert text.endswith("}\n")
    assert text.startswith('{\n  "arch": "x86_64",\n')  # sorted keys, 2-space indent
    assert json.loads(text) == report_to_dict(_two_process_report(), name_of)


def test_report_to_dict_rejects_mismatched_process_key() -> None:
    report = _two_process_report()
    report.processes[999] = report.processes.pop(300)
    with pytest.raises(ValueError, match=r"processes\[999\] holds pid 300"):
        report_to_dict(report, name_of)


def test_round_trip_known_report() -> None:
    report = _two_process_report(Drops(1, 2, 3))
    back = report_from_dict(json.loads(report_to_json(report, name_of)))
    assert back == report


def test_round_trip_budget_results_and_memory() -> None:
    report = _two_process_report()
    report.processes[200].peak_rss_bytes = 7 << 20
    report.processes[200].syscalls[0].alloc_bytes = 4096
    report.budget = [
        Result(name="calls", type="span_count", passed=False, message="6 syscalls > 5",
               actual_value=6.0, expected_value=5.0, action="kill", enabled=True,
               fail_on_violation=True, first_failed_ns=123, pid=None, enforcement="kernel",
               overshoot=1),
        Result(name="loop", type="anti_pattern", passed=True, message="no tight loop",
               actual_value=0.0, expected_value=0.7, action="warn", enabled=True,
               fail_on_violation=False),
    ]
    d = json.loads(report_to_json(report, name_of))
    assert d["budget_failed"] is True and d["budget"][0]["overshoot"] == 1
    assert report_from_dict(d) == report
    d["budget"][0]["passed"] = "no"
    with pytest.raises(ValueError, match=r"budget\[0\]\.passed"):
        report_from_dict(d)


_u64 = st.integers(min_value=0, max_value=2**64 - 1)
_small = st.integers(min_value=0, max_value=10**6)
_opt_exit = st.none() | st.builds(
    ExitStatus,
    code=st.none() | st.integers(min_value=0, max_value=255),
    signal=st.none() | st.integers(min_value=1, max_value=64),
    core_dumped=st.booleans(),
)
_stats = st.builds(
    SyscallStats,
    calls=_u64, errors=_u64, total_ns=_u64, max_ns=_u64,
    hist=st.lists(_u64, min_size=HIST_BUCKETS, max_size=HIST_BUCKETS),
)
_syscalls = st.dictionaries(st.integers(min_value=0, max_value=1000), _stats, max_size=5)


@st.composite
def _reports(draw: st.DrawFn) -> Report:
    pids = draw(st.lists(st.integers(min_value=1, max_value=2**22), unique=True, max_size=4))
    processes = {
        pid: ProcessInfo(
            pid=pid,
            ppid=draw(_small),
            comm=draw(st.text(max_size=16)),
            argv=draw(st.lists(st.text(max_size=8), max_size=3)),
            filename=draw(st.text(max_size=12)),
            start_ns=draw(_u64),
            end_ns=draw(st.none() | _u64),
            exit=draw(_opt_exit),
            syscalls=draw(_syscalls),
        )
        for pid in pids
    }
    return Report(
        command=draw(st.lists(st.text(max_size=8), max_size=3)),
        arch=draw(st.sampled_from(["x86_64", "aarch64", ""])),
        kernel=draw(st.text(max_size=12)),
        root_pid=draw(_small),
        start_ns=draw(_u64),
        end_ns=draw(st.none() | _u64),  # may precede start_ns: duration_ns is then negative
        exit=draw(_opt_exit),
        processes=processes,
        drops=Drops(draw(_small), draw(_small), draw(_small)),
    )


@settings(max_examples=200, deadline=None)
@given(_reports())
def test_round_trip_is_lossless(report: Report) -> None:
    text = report_to_json(report, name_of)
    back = report_from_dict(json.loads(text))
    assert back == report
    # Serialising again gives byte-identical JSON.
    assert report_to_json(back, name_of) == text


@settings(max_examples=100, deadline=None)
@given(_reports(), st.randoms(use_true_random=False))
def test_json_is_independent_of_insertion_order(report: Report, rnd: random.Random) -> None:
    shuffled = copy.deepcopy(report)
    procs = list(shuffled.processes.items())
    rnd.shuffle(procs)
    for _, proc in procs:
        calls = list(proc.syscalls.items())
        rnd.shuffle(calls)
        proc.syscalls = dict(calls)
    shuffled.processes = dict(procs)
    assert report_to_json(shuffled, name_of) == report_to_json(report, name_of)


@settings(max_examples=100, deadline=None)
@given(_reports())
def test_text_rendering_never_fails(report: Report) -> None:
    text = render_text(report, name_of, per_process=True, percentiles=True)
    assert text.endswith("\n")


# --- report_from_dict errors -------------------------------------------------------------------


def _good() -> dict[str, Any]:
    return report_to_dict(_two_process_report(), name_of)


def _error(d: Any) -> str:
    with pytest.raises(ValueError) as info:
        report_from_dict(d)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_error_wrong_schema() -> None:
    d = _good()
    d["schema"] = "tracerd.report/v2"
    assert _error(d) == (
        "report: field 'schema' must be 'tracerd.report/v1', got 'tracerd.report/v2'"
    )
    del d["schema"]
    assert _error(d) == "report: missing field 'schema'"


def test_error_not_an_object() -> None:
    assert _error([]) == "report: field '<report>' must be an object, got list"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (["arch"], "report: missing field 'arch'"),
        (["drops", "events_lost"], "report: missing field 'drops.events_lost'"),
        (["processes", 1, "comm"], "report: missing field 'processes[1].comm'"),
        (["processes", 0, "exit", "status"], "report: missing field 'processes[0].exit.status'"),
        (["processes", 1, "syscalls", 0, "histogram"],
         "report: missing field 'processes[1].syscalls[0].histogram'"),
        (["totals"], "report: missing field 'totals'"),
        (["duration_ns"], "report: missing field 'duration_ns'"),
    ],
)
def test_error_missing_field(path: list[Any], expected: str) -> None:
    d = _good()
    parent: Any = d
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    assert _error(d) == expected


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (["root_pid"], "200", "report: field 'root_pid' must be an integer, got str"),
        (["start_ns"], True, "report: field 'start_ns' must be an integer, got bool"),
        (["start_ns"], 1.5, "report: field 'start_ns' must be an integer, got float"),
        (["kernel"], None, "report: field 'kernel' must be a string, got null"),
        (["command", 1], 7, "report: field 'command[1]' must be a string, got int"),
        (["processes"], {}, "report: field 'processes' must be a list, got dict"),
        (["processes", 0, "exit", "core_dumped"], 0,
         "report: field 'processes[0].exit.core_dumped' must be a boolean, got int"),
        (["processes", 1, "syscalls", 1, "calls"], -1,
         "report: field 'processes[1].syscalls[1].calls' must be >= 0, got -1"),
        (["processes", 1, "syscalls", 0, "histogram", 3], "x",
         "report: field 'processes[1].syscalls[0].histogram[3]' must be an integer, got str"),
        (["processes", 1, "syscalls", 0, "histogram"], [0, 1],
         "report: field 'processes[1].syscalls[0].histogram' must have 32 buckets, got 2"),
        (["drops"], [], "report: field 'drops' must be an object, got list"),
        (["exit"], 0, "report: field 'exit' must be an object, got int"),
    ],
)
def test_error_wrong_type(path: list[Any], value: Any, expected: str) -> None:
    d = _good()
    parent: Any = d
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    assert _error(d) == expected


def test_error_inconsistent_derived_fields() -> None:
    d = _good()
    d["duration_ns"] = 5
    assert _error(d) == "report: field 'duration_ns' is 5, end_ns - start_ns is 2000002000"

    d = _good()
    d["exit"]["status"] = 1
    assert _error(d) == "report: field 'exit.status' is 1, but code/signal give 0"

    d = _good()
    d["totals"]["calls"] = 7
    assert _error(d) == "report: field 'totals.calls' is 7, processes sum to 6"

    d = _good()
    d["totals"]["syscalls"][0]["calls"] = 99
    assert _error(d) == (
        "report: field 'totals.syscalls' does not match the sum of the processes"
    )


def test_error_duplicates() -> None:
    d = _good()
    d["processes"][1]["pid"] = 200
    assert _error(d) == "report: field 'processes[1].pid' repeats pid 200"

    d = _good()
    d["processes"][1]["syscalls"][1]["nr"] = 257
    assert _error(d) == "report: field 'processes[1].syscalls[1].nr' repeats syscall 257"


def test_unknown_keys_are_ignored() -> None:
    d = _good()
    d["future_field"] = {"anything": 1}
    d["processes"][0]["future_process_field"] = "/x"
    assert report_from_dict(d) == _two_process_report()


# ---------------------------------------------------------------------------------------------
# count-only reports
# ---------------------------------------------------------------------------------------------


def test_counts_table_by_calls_then_name() -> None:
    # Times and errors of a count-only report are zero: only calls are shown, as syscount.
    assert counts_table(KNOWN_STATS, name_of) == """\
    calls syscall
--------- ----------------
       10 openat
        5 close
        5 write
        3 read
        2 syscall_999
--------- ----------------
       25 total
"""


def test_count_only_report_renders_counts_and_round_trips() -> None:
    report = copy.deepcopy(_two_process_report())
    report.count_only = True
    text = render_text(report, name_of, per_process=True, percentiles=True)
    assert "% time" not in text and text.count("    calls syscall") == 3
    d = json.loads(report_to_json(report, name_of))
    assert d["count_only"] is True
    assert report_from_dict(d) == report
    del d["count_only"]  # written before count-only existed: a full report
    assert report_from_dict(d).count_only is False
