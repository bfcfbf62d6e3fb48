"""Tests for tracerd._budgets: strict parsing of renacer.toml budgets and their evaluation.

Every refusal must be one line naming the file, the line, the assertion and the key, so the
malformed-file table asserts on all of them. Evaluation is checked per type with samples that
pass and samples that violate, with exact actual values for counts, and by properties that
make the verdicts independent of how often the daemon happened to sample.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracerd._budgets import (
    ACTIONS,
    MAX_ASSERTIONS,
    TYPES,
    Assertion,
    BudgetError,
    BudgetUnreadable,
    Evaluator,
    Result,
    Sample,
    failed,
    load,
    loads,
    matching_syscalls,
    newly_failed,
    parse_entries,
    render_table,
    result_to_dict,
)
from tracerd.model import HIST_BUCKETS, ProcessInfo, SyscallStats

NAMES = {0: "read", 1: "write", 2: "open", 257: "openat", 7: "poll", 271: "ppoll"}
READ, WRITE, OPEN, OPENAT, POLL, PPOLL = 0, 1, 2, 257, 7, 271
MS = 1_000_000


def name_of(nr: int) -> str:
    return NAMES.get(nr, f"syscall_{nr}")


# --- helpers ------------------------------------------------------------------------------


def timed(*latencies_ns: int, errors: int = 0, alloc: int = 0) -> SyscallStats:
    """Stats for calls with these latencies, histogram filled as the kernel does."""
    hist = [0] * HIST_BUCKETS
    for ns in latencies_ns:
        hist[min(max(ns, 1).bit_length() - 1, HIST_BUCKETS - 1)] += 1
    return SyscallStats(calls=len(latencies_ns), errors=errors, total_ns=sum(latencies_ns),
                        max_ns=max(latencies_ns, default=0), hist=hist, alloc_bytes=alloc)


def proc(pid: int, comm: str, calls: Mapping[int, int | SyscallStats], *, start_ns: int = 0,
         end_ns: int | None = None, argv: list[str] | None = None,
         filename: str = "") -> ProcessInfo:
    syscalls = {nr: v if isinstance(v, SyscallStats) else SyscallStats(calls=v)
                for nr, v in calls.items()}
    return ProcessInfo(pid=pid, comm=comm, start_ns=start_ns, end_ns=end_ns, argv=argv or [],
                       filename=filename, syscalls=syscalls)


def sample(ts_ms: float, *procs: ProcessInfo, root: int | None = None, final: bool = False,
           rss: Mapping[int, int] | None = None) -> Sample:
    return Sample(ts_ns=int(ts_ms * MS), start_ns=0,
                  root_pid=root if root is not None else (procs[0].pid if procs else 1),
                  processes={p.pid: p for p in procs}, peak_rss_bytes=dict(rss or {}),
                  final=final)


def one(text: str) -> Assertion:
    (a,) = loads(text, "b.toml")
    return a


def toml(**keys: Any) -> str:
    """One [[assertion]] table from keyword arguments (strings quoted, booleans lowercase)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return f'"{v}"' if isinstance(v, str) else repr(v)
    return "[[assertion]]\n" + "".join(f"{k} = {value(v)}\n" for k, v in keys.items())


def judge(text: str, *samples: Sample) -> Result:
    """The result of a one-assertion budget after these samples."""
    ev = Evaluator(loads(text), name_of)
    for s in samples:
        (r,) = ev.update(s)
    return r


# --- parsing ------------------------------------------------------------------------------

HEAD = '[[assertion]]\nname = "x"\n'  # lines 1-2: the type and keys follow on line 3
SPAN = HEAD + 'type = "span_count"\n'  # a span_count whose own keys start on line 4
TIGHT = HEAD + 'type = "anti_pattern"\npattern = "TightLoop"\nthreshold = 0.7\n'

MALFORMED = [
    # (text, line, key, part of the problem)
    (SPAN + "max_span = 3\n", 4, "max_span", "unknown key (did you mean 'max_spans'?)"),
    (HEAD + 'type = "critical_path"\nmax_duration_ms = 5\nmax_spans = 3\n', 5, "max_spans",
     "belongs to type 'span_count', not 'critical_path'"),
    (HEAD + 'type = "spancount"\n', 3, "type", "unknown type 'spancount' (did you mean "
     "'span_count'?); valid: span_count, critical_path"),
    (HEAD + 'type = "custom"\nexpression = "x > 1"\n', 3, "type", "not supported"),
    (HEAD + 'type = "anti_pattern"\npattern = "PcieBottleneck"\nthreshold = 0.5\n', 4,
     "pattern", "'PcieBottleneck' is not supported"),
    (HEAD + 'type = "anti_pattern"\npattern = "godprocess"\nthreshold = 0.5\n', 4,
     "pattern", "did you mean 'GodProcess'?"),
    (SPAN + "max_spans = true\n", 4, "max_spans", "expected an integer, got a boolean (true)"),
    (SPAN + "max_spans = 2000.0\n", 4, "max_spans", "expected an integer, got a float"),
    (HEAD + 'type = "critical_path"\nmax_duration_ms = "500"\n', 4, "max_duration_ms",
     "expected a number, got a string ('500')"),
    (HEAD + 'type = "critical_path"\nmax_duration_ms = inf\n', 4, "max_duration_ms",
     "must be a finite number"),
    (SPAN + "max_spans = -1\n", 4, "max_spans", "must be >= 0, got -1"),
    (HEAD + 'type = "anti_pattern"\npattern = "GodProcess"\nthreshold = 1.5\n', 5,
     "threshold", "must be in (0, 1], got 1.5"),
    (SPAN + 'max_spans = 3\nspan_name_pattern = "open("\n', 5, "span_name_pattern",
     "invalid regular expression"),
    (SPAN + f'max_spans = 3\nspan_name_pattern = "{"a" * 1025}"\n', 5, "span_name_pattern",
     "too long (1025 characters, at most 1024)"),
    ('[[assertion]]\ntype = "span_count"\nmax_spans = 3\n', 1, "name", "missing"),
    ('[[assertion]]\nname = ""\ntype = "span_count"\n', 2, "name", "must not be empty"),
    ('[[assertion]]\nname = "x"\nmax_spans = 3\n', 1, "type", "missing (one of span_count"),
    (SPAN + "enabled = true\n", 1, "max_spans", "missing (required for type 'span_count')"),
    (SPAN + "max_spans = 1\n\n" + SPAN + "max_spans = 2\n", 7, "name",
     "duplicate name, also used by the assertion at line 2"),
    ('title = "budgets"\n' + SPAN + "max_spans = 1\n", 1, "title",
     "unknown key: a budget holds only [[assertion]] tables"),
    (SPAN + "max_spans = 1\n[assertions]\nx = 1\n", 5, "assertions",
     "did you mean 'assertion'?"),
    ('[assertion]\nname = "x"\n', 1, "assertion", "expected [[assertion]] tables, got a table"),
    (SPAN + "max_spans = = 3\n", 4, "", "TOML syntax error: Invalid value (column 13)"),
    (SPAN + 'max_spans = 3\nname = "y"\n', 5, "", "TOML syntax error: Cannot overwrite a value"),
    (SPAN + "max_spans = 1\nfail_on_violation = false\naction = \"fail\"\n", 6, "action",
     "'fail' conflicts with fail_on_violation = false"),
    (SPAN + 'max_spans = 1\nsignal = "SIGUSR1"\n', 5, "signal",
     "only allowed with action = 'signal' (action is unset)"),
    (SPAN + 'max_spans = 1\naction = "kill"\nsignal = 9\n', 6, "signal",
     "only allowed with action = 'signal' (action is kill)"),
    (SPAN + 'max_spans = 1\naction = "signal"\nsignal = "SIGFOO"\n', 6, "signal",
     "unknown signal 'SIGFOO'"),
    (SPAN + 'max_spans = 1\naction = "signal"\nsignal = 0\n', 6, "signal",
     "must be between 1 and"),
    (SPAN + 'max_spans = 1\naction = "abort"\n', 5, "action",
     "'abort' is not one of 'warn', 'fail', 'signal', 'kill'"),
    (SPAN + 'max_spans = 1\nenabled = "yes"\n', 5, "enabled", "expected a boolean"),
    (HEAD + 'type = "memory_usage"\nmax_bytes = 1\ntracking_mode = "heap"\n', 5,
     "tracking_mode", "'heap' is not one of 'rss', 'allocations'"),
    (HEAD + 'type = "memory_usage"\nmax_bytes = 0\n', 4, "max_bytes", "must be >= 1, got 0"),
    (TIGHT + "window_ms = 5\n", 6, "window_ms", "must be between 100 and 60000, got 5"),
    (HEAD + 'type = "anti_pattern"\npattern = "GodProcess"\nthreshold = 0.5\nwindow_ms = 200\n',
     6, "window_ms", "only for pattern 'TightLoop', not 'GodProcess'"),
    (TIGHT + "min_rate = 0\n", 6, "min_rate", "must be > 0, got 0"),
    (HEAD + 'type = "error_ratio"\nmax_error_ratio = 1.5\n', 4, "max_error_ratio",
     "must be between 0 and 1, got 1.5"),
    (HEAD + 'type = "error_ratio"\nmax_error_ratio = 0.1\nmin_calls = 0\n', 5, "min_calls",
     "must be >= 1, got 0"),
    (HEAD + 'type = "latency"\nmax_latency_us = 10\npercentile = 0\n', 5, "percentile",
     "must be in (0, 100], got 0"),
    (HEAD + 'type = "call_rate"\nmax_calls_per_second = 10\nwindow_ms = 99\n', 5, "window_ms",
     "must be between 100 and 3600000, got 99"),
    (HEAD + 'type = "syscall_calls"\nmax_calls = 1\nsyscall_name_pattern = ["open"]\n', 5,
     "syscall_name_pattern", "expected a string (a regular expression), got an array"),
    (SPAN + '"max\\nspans" = 1\n', 1, "'max\\nspans'", "unknown key"),
    # The second of two entries: its own lines, its own name.
    (SPAN + 'max_spans = 1\n[[assertion]]\nname = "y"\ntype = "syscall_errors"\n'
     "max_errors = 1\nmax_erors = 2\n", 9, "max_erors", "did you mean 'max_errors'?"),
]


@pytest.mark.parametrize(("text", "line", "key", "problem"), MALFORMED)
def test_malformed_budget_is_refused_with_one_precise_line(
        text: str, line: int, key: str, problem: str) -> None:
    with pytest.raises(BudgetError) as info:
        loads(text, "b.toml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"b.toml:{line}: ")
    if key:
        assert f": {key}: " in message
    assert problem in message


def test_error_names_the_assertion() -> None:
    with pytest.raises(BudgetError, match=r"^b\.toml:4: assertion 'x': max_spans: "):
        loads(SPAN + "max_spans = -5\n", "b.toml")


def test_too_many_assertions() -> None:
    text = "".join(toml(name=f"a{i}", type="span_count", max_spans=1)
                   for i in range(MAX_ASSERTIONS + 1))
    with pytest.raises(BudgetError, match=rf"^b\.toml:{MAX_ASSERTIONS * 4 + 1}: assertion: "
                                          r"too many assertions \(257; at most 256\)"):
        loads(text, "b.toml")
    assert len(loads(text.rsplit("[[assertion]]", 1)[0], "b.toml")) == MAX_ASSERTIONS


def test_multiline_string_does_not_confuse_line_numbers() -> None:
    text = SPAN + 'span_name_pattern = """\nmax_spans = 1\n"""\nmax_spans = -1\n'
    with pytest.raises(BudgetError, match=r"^b\.toml:7: assertion 'x': max_spans: "):
        loads(text, "b.toml")


RUCHY = """\
# Performance assertions for ruchy (Renacer's format)

[[assertion]]
name = "script_execution_latency"
type = "critical_path"
max_duration_ms = 500
fail_on_violation = true

[[assertion]]
name = "max_syscall_budget"
type = "span_count"
max_spans = 2000
fail_on_violation = true

[[assertion]]
name = "memory_allocation_budget"
type = "memory_usage"
max_bytes = 524288000
tracking_mode = "allocations"
fail_on_violation = true

[[assertion]]
name = "prevent_god_process"
type = "anti_pattern"
pattern = "GodProcess"
threshold = 0.8
fail_on_violation = false

[[assertion]]
name = "detect_tight_loop"
type = "anti_pattern"
pattern = "TightLoop"
threshold = 0.7
fail_on_violation = false

[[assertion]]
name = "ultra_strict_latency"
type = "critical_path"
max_duration_ms = 100
enabled = false
"""


def test_ruchy_budget_parses() -> None:
    got = loads(RUCHY, "renacer.toml")
    assert got == [
        Assertion(name="script_execution_latency", type="critical_path", max_duration_ms=500.0),
        Assertion(name="max_syscall_budget", type="span_count", max_spans=2000),
        Assertion(name="memory_allocation_budget", type="memory_usage", max_bytes=524288000,
                  tracking_mode="allocations"),
        Assertion(name="prevent_god_process", type="anti_pattern", pattern="GodProcess",
                  threshold=0.8, fail_on_violation=False, action="warn"),
        Assertion(name="detect_tight_loop", type="anti_pattern", pattern="TightLoop",
                  threshold=0.7, fail_on_violation=False, action="warn"),
        Assertion(name="ultra_strict_latency", type="critical_path", max_duration_ms=100.0,
                  enabled=False),
    ]
    assert [a.limit() for a in got] == [500.0, 2000.0, 524288000.0, 0.8, 0.7, 100.0]


def test_load_reads_files_and_reports_unreadable_ones(tmp_path: Path) -> None:
    good = tmp_path / "renacer.toml"
    good.write_text(RUCHY)
    assert len(load(str(good))) == 6
    with pytest.raises(BudgetUnreadable, match=r"missing\.toml: cannot read: No such file"):
        load(str(tmp_path / "missing.toml"))
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'[[assertion]]\nname = "caf\xe9"\n')
    with pytest.raises(BudgetError, match=r"latin\.toml:2: not UTF-8") as info:
        load(str(latin))
    assert not isinstance(info.value, BudgetUnreadable)


def test_empty_budget_is_no_assertions() -> None:
    assert loads("# nothing yet\n") == []


def test_parse_entries_locates_by_index() -> None:
    entries: list[dict[str, Any]] = [{"name": "a", "type": "span_count", "max_spans": 1},
                                     {"name": "b", "type": "span_count", "max_spans": "1"}]
    with pytest.raises(BudgetError) as info:
        parse_entries(entries, "session 7")
    assert str(info.value) == ("session 7: assertion[1] 'b': max_spans: expected an integer, "
                               "got a string ('1')")
    with pytest.raises(BudgetError, match=r"^session 7: assertion\[0\]: name: missing"):
        parse_entries([{"type": "span_count"}], "session 7")
    with pytest.raises(BudgetError, match=r"^s: assertion\[1\] 'a': name: duplicate name, "
                                          r"also used by assertion\[0\]"):
        parse_entries([entries[0], entries[0]], "s")


def test_actions_and_signals() -> None:
    base = SPAN + "max_spans = 1\n"
    assert one(base).action == "fail"
    assert one(base + "fail_on_violation = false\n").action == "warn"
    assert one(base + 'fail_on_violation = false\naction = "kill"\n').action == "kill"
    assert one(base + 'action = "kill"\n').signal == 9
    assert one(base + 'action = "signal"\n').signal == 15
    assert one(base + 'action = "signal"\nsignal = "USR1"\n').signal == 10
    assert one(base + 'action = "signal"\nsignal = "sigint"\n').signal == 2
    assert one(base + 'action = "signal"\nsignal = 12\n').signal == 12


def test_syscall_patterns_are_unanchored_searches() -> None:
    assert matching_syscalls("open", NAMES) == {OPEN, OPENAT}
    assert matching_syscalls("^open$", NAMES) == {OPEN}
    assert matching_syscalls("", NAMES) == set(NAMES)
    a = one(SPAN + 'max_spans = 1\nspan_name_pattern = "poll"\n')
    assert a.syscall_pattern() == "poll"
    b = one(HEAD + 'type = "syscall_errors"\nmax_errors = 0\nsyscall_name_pattern = "read"\n')
    assert b.syscall_pattern() == "read"
    assert one(HEAD + 'type = "critical_path"\nmax_duration_ms = 1\n').syscall_pattern() == ""


# --- evaluation, type by type -------------------------------------------------------------


def test_span_count_counts_matching_syscalls_exactly() -> None:
    text = toml(name="s", type="span_count", max_spans=2000, span_name_pattern="open|read")
    p = proc(1, "sh", {OPENAT: 1500, READ: 400, WRITE: 5000})
    r = judge(text, sample(100, p))
    assert (r.passed, r.actual_value, r.expected_value) == (True, 1900.0, 2000.0)
    p = proc(1, "sh", {OPENAT: 3000, READ: 900, OPEN: 200, WRITE: 5000})
    q = proc(2, "cat", {OPEN: 23})
    r = judge(text, sample(100, p, q))
    assert (r.passed, r.actual_value) == (False, 4123.0)
    assert r.message == "4123 syscalls > 2000 (openat 3000, read 900, open 223)"
    assert r.counts and r.first_failed_ns == 100 * MS


def test_critical_path_root_running_past_the_limit_fails_at_once() -> None:
    text = toml(name="c", type="critical_path", max_duration_ms=500)
    root = proc(10, "make", {READ: 1}, start_ns=0)
    assert judge(text, sample(400, root)).passed
    r = judge(text, sample(501, root))
    assert not r.passed and r.pid == 10 and r.actual_value == 501.0
    assert r.message == "process 10 (make) has been running for 501 ms > 500 ms"
    done = proc(10, "make", {READ: 1}, start_ns=0, end_ns=450 * MS)
    r = judge(text, sample(900, done, final=True))
    assert r.passed and r.actual_value == 450.0 and "ran 450 ms <= 500 ms" in r.message


def test_critical_path_with_pattern_takes_the_longest_match() -> None:
    text = toml(name="c", type="critical_path", max_duration_ms=100, trace_name_pattern="^cc")
    ps = [proc(1, "make", {}, start_ns=0),
          proc(2, "cc1", {}, start_ns=10 * MS, end_ns=90 * MS),
          proc(3, "x", {}, start_ns=0, end_ns=150 * MS, argv=["/usr/bin/cc", "-c"]),
          proc(4, "y", {}, start_ns=0, end_ns=120 * MS, filename="/usr/lib/gcc/cc1plus")]
    r = judge(text, sample(1000, *ps))
    assert (r.passed, r.actual_value, r.pid) == (False, 150.0, 3)
    r = judge(text, sample(1000, ps[0], ps[1]))
    assert (r.passed, r.actual_value, r.pid) == (True, 80.0, 2)
    r = judge(text, sample(1000, ps[0]))
    assert r.passed and r.actual_value == 0.0 and "no process matches" in r.message


def test_memory_rss_is_the_largest_single_peak() -> None:
    text = toml(name="m", type="memory_usage", max_bytes=500 << 20)
    ps = (proc(76, "make", {}), proc(77, "cc1", {}))
    r = judge(text, sample(100, *ps, rss={76: 300 << 20, 77: 400 << 20}))
    assert r.passed and r.actual_value == 400 << 20 and r.pid == 77
    r = judge(text, sample(100, *ps, rss={76: 300 << 20, 77: int(612.4 * (1 << 20))}))
    assert not r.passed and r.pid == 77
    assert r.message == "peak RSS 612.4 MiB (process 77 cc1) > 500.0 MiB"


def test_memory_allocations_sum_every_process() -> None:
    text = toml(name="m", type="memory_usage", max_bytes=1000, tracking_mode="allocations")
    a = proc(1, "a", {9: SyscallStats(calls=2, alloc_bytes=600), 12: SyscallStats(alloc_bytes=1)})
    b = proc(2, "b", {9: SyscallStats(calls=1, alloc_bytes=399)})
    r = judge(text, sample(100, a, b))
    assert r.passed and r.actual_value == 1000.0
    b = proc(2, "b", {9: SyscallStats(calls=1, alloc_bytes=400)})
    r = judge(text, sample(100, a, b))
    assert not r.passed and r.actual_value == 1001.0


def test_syscall_calls_and_errors_judge_each_syscall_summed_over_processes() -> None:
    calls = toml(name="c", type="syscall_calls", max_calls=100, syscall_name_pattern="open")
    errors = toml(name="e", type="syscall_errors", max_errors=3)
    a = proc(1, "a", {OPEN: SyscallStats(calls=60, errors=2), READ: 500})
    b = proc(2, "b", {OPEN: SyscallStats(calls=40, errors=1), OPENAT: 99})
    r = judge(calls, sample(100, a, b))
    assert r.passed and r.actual_value == 100.0 and r.message == "open: 100 calls <= 100 calls"
    assert judge(errors, sample(100, a, b)).actual_value == 3.0
    b = proc(2, "b", {OPEN: SyscallStats(calls=41, errors=2), OPENAT: 99})
    r = judge(calls, sample(100, a, b))
    assert not r.passed and r.actual_value == 101.0 and r.message.startswith("open: 101 calls >")
    r = judge(errors, sample(100, a, b))
    assert not r.passed and r.actual_value == 4.0
    assert r.message == "open: 4 errors in 101 calls > 3 errors"


def test_error_ratio_skips_rare_syscalls_and_is_decided_at_the_end() -> None:
    text = toml(name="r", type="error_ratio", max_error_ratio=0.1, min_calls=10)
    rare = proc(1, "a", {OPEN: SyscallStats(calls=5, errors=5), READ: SyscallStats(calls=10)})
    r = judge(text, sample(100, rare, final=True))
    assert r.passed and r.actual_value == 0.0
    bad = proc(1, "a", {OPEN: SyscallStats(calls=20, errors=9), READ: SyscallStats(calls=10)})
    live = judge(text, sample(100, bad))
    assert live.passed and live.actual_value == 0.45 and "decided when the session ends" in (
        live.message)
    r = judge(text, sample(100, bad), sample(200, bad, final=True))
    assert not r.passed and r.first_failed_ns == 200 * MS
    assert r.message == "open: 45% errors (9 of 20 calls) > 10%"


def test_latency_percentile_of_merged_stats_in_microseconds() -> None:
    text = toml(name="l", type="latency", max_latency_us=10, percentile=50,
                syscall_name_pattern="read")
    a = proc(1, "a", {READ: timed(1000, 1000, 1000)})  # bucket [512, 1024): bound 1023 ns
    b = proc(2, "b", {READ: timed(50_000, 50_000), WRITE: timed(3000)})
    r = judge(text, sample(100, a, b, final=True))
    assert r.passed and r.actual_value == 1.023
    b = proc(2, "b", {READ: timed(50_000, 50_000, 50_000, 50_000)})
    r = judge(text, sample(100, a, b, final=True))
    assert not r.passed and r.actual_value == 50.0  # capped by the exact maximum
    assert r.message == "read: p50 up to 50 us > 10 us"


def test_call_rate_window_over_a_sample_series() -> None:
    text = toml(name="r", type="call_rate", max_calls_per_second=1000, syscall_name_pattern="open")
    ev = Evaluator(loads(text), name_of)
    # 150 openat calls per 100 ms = 1500 calls/s; the window only fills after a second.
    results = [ev.update(sample(t, proc(1, "a", {OPENAT: 150 * t // 100, READ: 10 * t})))[0]
               for t in range(100, 1300, 100)]
    assert [r.actual_value for r in results[:8]] == [150.0 * k for k in range(1, 9)]
    assert results[5].passed and not results[6].passed
    assert results[-1].actual_value == 1500.0
    assert results[-1].first_failed_ns == 700 * MS
    assert results[-1].message == "openat: 1500 calls/s over 1000 ms > 1000"


def test_call_rate_divides_by_the_window_not_the_covered_span() -> None:
    text = toml(name="r", type="call_rate", max_calls_per_second=10_000)
    ev = Evaluator(loads(text), name_of)
    # Irregular samples: the base is the oldest sample not older than the window.
    assert ev.update(sample(1500, proc(1, "a", {READ: 3000})))[0].actual_value == 0.0
    assert ev.update(sample(1600, proc(1, "a", {READ: 3100})))[0].actual_value == 100.0
    assert ev.update(sample(2700, proc(1, "a", {READ: 5000})))[0].actual_value == 100.0
    assert ev.update(sample(2800, proc(1, "a", {READ: 5600})))[0].actual_value == 600.0


def test_failure_is_sticky_and_first_failed_ns_stays() -> None:
    text = toml(name="r", type="call_rate", max_calls_per_second=1000, window_ms=500)
    ev = Evaluator(loads(text), name_of)
    burst = ev.update(sample(100, proc(1, "a", {READ: 1000})))[0]
    assert not burst.passed and burst.actual_value == 2000.0 and burst.first_failed_ns == 100 * MS
    for t in range(200, 2000, 100):
        r = ev.update(sample(t, proc(1, "a", {READ: 1000 + t // 100})))[0]
    # The worst window so far (the session's first 500 ms: 1005 calls) stays reported.
    assert r.message == "read: 2010 calls/s over 500 ms > 1000"
    assert not r.passed and r.first_failed_ns == 100 * MS and r.actual_value == 2010.0
    assert ev.results() == [r]


def tight_loop_series(per_100ms: Mapping[int, int], until_ms: int = 1500,
                      **keys: Any) -> list[Result]:
    text = toml(name="t", type="anti_pattern", pattern="TightLoop", threshold=0.7, **keys)
    ev = Evaluator(loads(text), name_of)
    idle = proc(1, "sh", {READ: 3})
    out = []
    for t in range(100, until_ms + 1, 100):
        busy = proc(88, "poll", {nr: n * t // 100 for nr, n in per_100ms.items()})
        out.append(ev.update(sample(t, idle, busy, root=1))[0])
    return out


def test_tight_loop_trips_on_one_syscall_at_a_high_rate() -> None:
    results = tight_loop_series({PPOLL: 2425, READ: 75})
    assert not results[0].passed and results[0].first_failed_ns == 100 * MS
    last = results[-1]
    assert last.actual_value == 0.97 and last.pid == 88 and last.counts
    assert last.message == "process 88 (poll) spent 97% of 25000 calls/s on ppoll"


def test_tight_loop_passes_mixed_or_slow_processes() -> None:
    mixed = tight_loop_series({READ: 1000, WRITE: 1000})[-1]
    assert mixed.passed and mixed.actual_value == 0.5
    slow = tight_loop_series({PPOLL: 50})[-1]  # 500 calls/s < min_rate
    assert slow.passed and slow.actual_value == 0.0
    assert slow.message == "no process reached 1000 calls/s in a 1000 ms window"
    assert not tight_loop_series({PPOLL: 50}, min_rate=400)[-1].passed
    other = tight_loop_series({PPOLL: 2500}, process_name_pattern="^sh$")[-1]
    assert other.passed and other.actual_value == 0.0


def test_tight_loop_exited_process_keeps_its_final_counts() -> None:
    text = toml(name="t", type="anti_pattern", pattern="TightLoop", threshold=0.9,
                window_ms=500)
    ev = Evaluator(loads(text), name_of)
    ev.update(sample(100, proc(5, "a", {READ: 10})))
    # It exits and later disappears from the samples; no negative deltas, no new calls.
    r = ev.update(sample(200, proc(5, "a", {READ: 10}, end_ns=150 * MS)))[0]
    assert r.actual_value == 0.0
    r = ev.update(sample(300, proc(6, "b", {})))[0]
    assert r.passed and r.actual_value == 0.0


def god_result(*procs: ProcessInfo, final: bool = True) -> Result:
    text = toml(name="g", type="anti_pattern", pattern="GodProcess", threshold=0.8)
    return judge(text, sample(1000, *procs, final=final))


def test_god_process_delegating_to_one_child_trips_at_the_end_only() -> None:
    parent, child = proc(1, "bash", {READ: 30, 56: 1}), proc(2, "python3", {READ: 4981})
    live = god_result(parent, child, final=False)
    assert live.passed and live.actual_value == 4981 / 5012
    assert live.message.endswith("; decided when the session ends")
    r = god_result(parent, child)
    assert not r.passed and r.pid == 2 and r.first_failed_ns == 1000 * MS
    assert r.message == "process 2 (python3) made 99.4% of 5012 calls"


def test_god_process_balanced_tree_and_single_process_never_trip() -> None:
    kids = [proc(i, f"w{i}", {READ: 100 + i}) for i in range(2, 6)]
    balanced = god_result(proc(1, "make", {56: 4}), *kids)
    assert balanced.passed and balanced.pid == 5
    alone = god_result(proc(1, "python3", {READ: 5000}))
    assert alone.passed and alone.actual_value == 1.0
    assert "the only process that made calls" in alone.message
    assert god_result().passed


def test_god_process_pattern_narrows_the_candidates() -> None:
    text = toml(name="g", type="anti_pattern", pattern="GodProcess", threshold=0.5,
                process_name_pattern="^sh$")
    r = judge(text, sample(1, proc(1, "sh", {READ: 10}), proc(2, "cc", {READ: 90}), final=True))
    assert r.passed and r.actual_value == 0.1 and r.pid == 1


# --- verdicts -----------------------------------------------------------------------------


def test_disabled_and_warn_only_never_fail_the_session() -> None:
    over = proc(1, "a", {READ: 10})
    texts = [toml(name="d", type="span_count", max_spans=1, enabled=False),
             toml(name="w", type="span_count", max_spans=1, action="warn"),
             toml(name="f", type="span_count", max_spans=1, fail_on_violation=False)]
    ev = Evaluator(loads("".join(texts)), name_of)
    d, w, f = ev.update(sample(100, over, final=True))
    assert (d.passed, d.message, d.actual_value, d.expected_value) == (True, "disabled", 0.0, 1.0)
    assert not w.passed and not w.counts and not f.passed and not f.counts
    assert not failed([d, w, f])
    kill = one(toml(name="k", type="span_count", max_spans=1, action="kill"))
    (k,) = Evaluator([kill], name_of).update(sample(100, over))
    assert failed([d, w, f, k])


def test_newly_failed_reports_transitions_only() -> None:
    ev = Evaluator(loads(toml(name="a", type="span_count", max_spans=5)
                         + toml(name="b", type="span_count", max_spans=50)), name_of)
    first = ev.update(sample(100, proc(1, "a", {READ: 3})))
    assert newly_failed([], first) == []
    second = ev.update(sample(200, proc(1, "a", {READ: 10})))
    assert [r.name for r in newly_failed(first, second)] == ["a"]
    third = ev.update(sample(300, proc(1, "a", {READ: 100})))
    assert [r.name for r in newly_failed(second, third)] == ["b"]
    assert [r.name for r in newly_failed([], third)] == ["a", "b"]


def test_result_to_dict_has_stable_keys() -> None:
    r = judge(toml(name="a", type="span_count", max_spans=5), sample(1, proc(1, "a", {READ: 9})))
    assert list(result_to_dict(r)) == [
        "name", "type", "passed", "message", "actual_value", "expected_value", "action",
        "enabled", "fail_on_violation", "first_failed_ns", "pid", "enforcement", "overshoot"]
    assert result_to_dict(r)["first_failed_ns"] == MS


SHORT = RUCHY.replace("script_execution_latency", "runtime").replace(
    "max_syscall_budget", "spans").replace("memory_allocation_budget", "allocated").replace(
    "prevent_god_process", "god").replace("detect_tight_loop", "loop").replace(
    "ultra_strict_latency", "strict")

TABLE = """\
NAME       TYPE                            ACTUAL                        LIMIT  VERDICT
runtime    critical_path                   600 ms                       500 ms  FAIL
spans      span_count                  3000 calls                   2000 calls  FAIL
allocated  memory_usage   1.0 MiB (1048576 bytes)  500.0 MiB (524288000 bytes)  pass
god        anti_pattern                      100%                          80%  pass
loop       anti_pattern                      100%                          70%  warn
strict     critical_path                        -                       100 ms  disabled
budget: FAILED: 2 of 6 assertions
"""


def test_render_table() -> None:
    ev = Evaluator(loads(SHORT), name_of)
    p = proc(10, "python3", {READ: SyscallStats(calls=3000, alloc_bytes=1 << 20)},
             end_ns=600 * MS)
    out = render_table(ev.update(sample(600, p, final=True)))
    assert out == TABLE
    one_ok = render_table([dataclasses.replace(r, passed=True) for r in ev.results()[:1]])
    assert one_ok.endswith("budget: passed (1 assertion)\n")


# --- properties ---------------------------------------------------------------------------

_names = st.text(alphabet="abcxyz_- 0123", min_size=1, max_size=12).filter(str.strip)
_patterns = st.sampled_from(["open", "^read$", "p?poll", "sh|python", "."])


def _float(lo: float, hi: float, *, exclude_min: bool = True) -> st.SearchStrategy[float | int]:
    return st.floats(lo, hi, exclude_min=exclude_min) | st.integers(math.ceil(lo) + 1, int(hi))


_TYPE_KEYS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "span_count": st.fixed_dictionaries(
        {"max_spans": st.integers(0, 10**9)}, optional={"span_name_pattern": _patterns}),
    "critical_path": st.fixed_dictionaries(
        {"max_duration_ms": _float(0, 1e7)}, optional={"trace_name_pattern": _patterns}),
    "memory_usage": st.fixed_dictionaries(
        {"max_bytes": st.integers(1, 1 << 40)},
        optional={"tracking_mode": st.sampled_from(["rss", "allocations"])}),
    "anti_pattern": st.one_of(
        st.fixed_dictionaries({"pattern": st.just("GodProcess"), "threshold": _float(0, 1)},
                              optional={"process_name_pattern": _patterns}),
        st.fixed_dictionaries({"pattern": st.just("TightLoop"), "threshold": _float(0, 1)},
                              optional={"process_name_pattern": _patterns,
                                        "window_ms": st.integers(100, 60_000),
                                        "min_rate": _float(0, 1e6)})),
    "syscall_calls": st.fixed_dictionaries(
        {"max_calls": st.integers(0, 10**9)}, optional={"syscall_name_pattern": _patterns}),
    "syscall_errors": st.fixed_dictionaries(
        {"max_errors": st.integers(0, 10**9)}, optional={"syscall_name_pattern": _patterns}),
    "error_ratio": st.fixed_dictionaries(
        {"max_error_ratio": _float(0, 1, exclude_min=False)},
        optional={"syscall_name_pattern": _patterns, "min_calls": st.integers(1, 1000)}),
    "call_rate": st.fixed_dictionaries(
        {"max_calls_per_second": _float(0, 1e6)},
        optional={"syscall_name_pattern": _patterns, "window_ms": st.integers(100, 3_600_000)}),
    "latency": st.fixed_dictionaries(
        {"max_latency_us": _float(0, 1e6)},
        optional={"syscall_name_pattern": _patterns, "percentile": _float(0, 100)}),
}


@st.composite
def assertion_dicts(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(TYPES))
    d: dict[str, Any] = {"name": draw(_names), "type": kind, **draw(_TYPE_KEYS[kind])}
    fail = draw(st.none() | st.booleans())
    if fail is not None:
        d["fail_on_violation"] = fail
    action = draw(st.none() | st.sampled_from(ACTIONS))
    if action is not None and not (action == "fail" and fail is False):
        d["action"] = action
        if action == "signal" and draw(st.booleans()):
            d["signal"] = draw(st.sampled_from(["SIGUSR1", "TERM", "hup", 10, 34]))
    if draw(st.booleans()):
        d["enabled"] = draw(st.booleans())
    return d


@given(assertion_dicts())
def test_to_dict_round_trips_through_parse_entries(d: dict[str, Any]) -> None:
    (a,) = parse_entries([d], "prop")
    (again,) = parse_entries([a.to_dict()], "prop")
    assert again == a
    defaults = {"action", "signal", "enabled", "fail_on_violation", "window_ms", "min_rate",
                "tracking_mode", "min_calls", "percentile"}
    assert set(a.to_dict()) <= set(d) | defaults


# A step of a session: (pid, nr, calls, errors, bytes allocated, latency bucket, rss).
_steps = st.lists(st.lists(st.tuples(
    st.integers(1, 4), st.sampled_from(sorted(NAMES)), st.integers(0, 40), st.integers(0, 5),
    st.integers(0, 4096), st.integers(5, 20), st.integers(0, 1 << 20)), max_size=4),
    min_size=1, max_size=8)


def build_series(steps: list[list[tuple[int, int, int, int, int, int, int]]]) -> list[Sample]:
    """Cumulative samples 100 ms apart; the last one is final."""
    procs: dict[int, ProcessInfo] = {}
    rss: dict[int, int] = {}
    out = []
    for k, step in enumerate(steps, 1):
        for pid, nr, calls, errors, alloc, bucket, peak in step:
            p = procs.setdefault(pid, ProcessInfo(pid=pid, comm=f"p{pid}"))
            s = p.syscalls.setdefault(nr, SyscallStats())
            s.calls += calls
            s.errors += min(errors, calls)
            s.alloc_bytes += alloc
            s.hist[bucket] += calls
            s.max_ns = max(s.max_ns, (1 << (bucket + 1)) - 1) if calls else s.max_ns
            rss[pid] = max(rss.get(pid, 0), peak)
        out.append(Sample(ts_ns=k * 100 * MS, start_ns=0, root_pid=1,
                          processes=copy.deepcopy(procs), peak_rss_bytes=dict(rss),
                          final=k == len(steps)))
    return out


@st.composite
def cumulative_budgets(draw: st.DrawFn) -> list[Assertion]:
    small = st.integers(0, 120)
    return parse_entries([
        {"name": "spans", "type": "span_count", "max_spans": draw(small),
         "span_name_pattern": draw(_patterns)},
        {"name": "calls", "type": "syscall_calls", "max_calls": draw(small)},
        {"name": "errors", "type": "syscall_errors", "max_errors": draw(st.integers(0, 10))},
        {"name": "ratio", "type": "error_ratio", "max_error_ratio": draw(st.floats(0, 1)),
         "min_calls": draw(st.integers(1, 20))},
        {"name": "alloc", "type": "memory_usage", "max_bytes": draw(st.integers(1, 20000)),
         "tracking_mode": "allocations"},
        {"name": "rss", "type": "memory_usage", "max_bytes": draw(st.integers(1, 1 << 20))},
        {"name": "lat", "type": "latency", "max_latency_us": draw(st.floats(0.1, 2000)),
         "percentile": draw(st.sampled_from([50, 90, 99, 100]))},
        {"name": "god", "type": "anti_pattern", "pattern": "GodProcess",
         "threshold": draw(st.floats(0.3, 1))},
    ], "prop")


def run(assertions: list[Assertion], samples: list[Sample]) -> list[Result]:
    ev = Evaluator(assertions, name_of)
    for s in samples:
        ev.update(s)
    return ev.results()


@given(st.lists(assertion_dicts(), max_size=6, unique_by=lambda d: d["name"]), _steps)
@settings(max_examples=80)
def test_same_sample_same_results(entries: list[dict[str, Any]],
                                  steps: list[list[tuple[int, int, int, int, int, int, int]]]
                                  ) -> None:
    assertions = parse_entries(entries, "prop")
    s = build_series(steps)[-1]
    assert run(assertions, [s]) == run(assertions, [s])


@given(cumulative_budgets(), _steps, st.data())
@settings(max_examples=150)
def test_cumulative_verdicts_do_not_depend_on_sampling(
        assertions: list[Assertion], steps: list[list[tuple[int, int, int, int, int, int, int]]],
        data: st.DataObject) -> None:
    series = build_series(steps)
    keep = data.draw(st.lists(st.booleans(), min_size=len(series) - 1,
                              max_size=len(series) - 1))
    subset = [s for s, k in zip(series, keep, strict=False) if k] + [series[-1]]

    def final(samples: list[Sample]) -> list[Result]:
        return [dataclasses.replace(r, first_failed_ns=None) for r in run(assertions, samples)]

    assert final(subset) == final(series) == final(series[-1:])


def test_live_failures_of_growing_measures_are_final() -> None:
    """A cumulative series that failed mid-run is failed at its end, since its first failure."""
    steps = [[(1, READ, 40, 5, 4096, 10, 1 << 19)], [(2, READ, 40, 5, 4096, 10, 1 << 20)]]
    budget = parse_entries([{"name": "spans", "type": "span_count", "max_spans": 30},
                            {"name": "rss", "type": "memory_usage", "max_bytes": 1 << 18}],
                           "t")
    spans, rss = run(budget, build_series(steps))
    assert not spans.passed and spans.first_failed_ns == 100 * MS and spans.actual_value == 80.0
    assert not rss.passed and rss.first_failed_ns == 100 * MS and rss.pid == 2


def test_signal_given_as_a_decimal_string_like_the_protobuf_field() -> None:
    entry = {"name": "s", "type": "span_count", "max_spans": 1, "action": "signal"}
    assert parse_entries([{**entry, "signal": "15"}], "options.budget")[0].signal == 15
    rt = parse_entries([{**entry, "signal": "40"}], "options.budget")[0]
    assert rt.signal == 40 and parse_entries([rt.to_dict()], "x")[0] == rt
