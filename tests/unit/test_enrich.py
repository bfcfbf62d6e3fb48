"""Syscall enrichment (tracerd.enrich): attributing syscalls to a debugger's function timeline."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracerd import enrich as en
from tracerd.enrich import (
    EnrichError,
    FunctionRecord,
    FunctionTimeline,
    SyscallLog,
    enrich,
    main,
    merge,
    read_functions,
    read_syscalls,
)
from tracerd.model import SyscallEvent

TID = 101


def enter(name: str, t: int, tid: int = TID, **extra: Any) -> dict[str, Any]:
    return {"event": "enter", "function": name, "timestamp_ns": t, "tid": tid, **extra}


def leave(name: str, t: int, tid: int = TID, **extra: Any) -> dict[str, Any]:
    return {"event": "exit", "function": name, "timestamp_ns": t, "tid": tid, **extra}


def call(start: int, end: int | None = None, tid: int = TID, name: str = "read",
         pid: int = 100) -> dict[str, Any]:
    end = start + 1 if end is None else end
    return {"type": "syscall", "name": name, "args": [], "return_value": 0, "error": None,
            "duration_ns": end - start, "timestamp_ns": start, "end_ns": end,
            "pid": pid, "tid": tid, "nr": 0}


def stacks(functions: Any, syscalls: Any) -> list[list[str]]:
    return [ev["stack"] for ev in merge(functions, syscalls)]


def warnings_of(functions: Any, syscalls: Any) -> list[str]:
    out: list[str] = []
    merge(functions, syscalls, warnings=out)
    return out


def jsonl(path: Path, objs: list[Any]) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return path


# ------------------------------------------------------------------------------ attribution


def test_nested_functions() -> None:
    fns = [enter("main", 10), enter("parse", 20), enter("read_file", 30), leave("read_file", 40),
           leave("parse", 50), enter("write_out", 60), leave("write_out", 70), leave("main", 80)]
    out = merge(fns, [call(15), call(32), call(45), call(55), call(65), call(90)])
    assert [(e["parent_function"], e["stack"]) for e in out] == [
        ("main", ["main"]),
        ("read_file", ["main", "parse", "read_file"]),
        ("parse", ["main", "parse"]),
        ("main", ["main"]),
        ("write_out", ["main", "write_out"]),
        (None, []),
    ]


def test_output_keeps_the_syscall_object_and_input_order() -> None:
    syscalls = [call(35, name="write"), call(15, name="openat")]  # not in time order
    out = merge([enter("main", 10), enter("f", 30), leave("f", 40), leave("main", 50)], syscalls)
    assert [e["name"] for e in out] == ["write", "openat"]
    assert out[0] == {**syscalls[0], "parent_function": "f", "stack": ["main", "f"]}
    assert "parent_function" not in syscalls[0]  # the input is not modified


def test_syscall_before_any_function_has_no_parent() -> None:
    out = merge([enter("main", 100), leave("main", 200)], [call(5), call(150), call(300)])
    assert [e["parent_function"] for e in out] == [None, "main", None]
    assert out[0]["stack"] == []


def test_syscall_on_a_thread_without_functions_is_unattributed() -> None:
    doc = enrich([enter("main", 0), leave("main", 100)], [call(50), call(50, tid=999)])
    assert [e["parent_function"] for e in doc["events"]] == ["main", None]
    assert doc["metadata"]["unattributed"] == 1


def test_two_threads_interleaved() -> None:
    fns = [enter("main", 0, tid=1), enter("worker", 5, tid=2), enter("lock", 10, tid=1),
           enter("compute", 12, tid=2), leave("lock", 20, tid=1), leave("compute", 25, tid=2),
           enter("io", 30, tid=2), leave("io", 40, tid=2), leave("main", 50, tid=1),
           leave("worker", 60, tid=2)]
    syscalls = [call(11, tid=1), call(11, tid=2), call(22, tid=1), call(22, tid=2),
                call(35, tid=2), call(35, tid=1), call(55, tid=1), call(55, tid=2)]
    assert stacks(fns, syscalls) == [
        ["main", "lock"], ["worker"], ["main"], ["worker", "compute"],
        ["worker", "io"], ["main"], [], ["worker"],
    ]
    assert warnings_of(fns, syscalls) == []


def test_recursion_nests_same_named_calls() -> None:
    # fact(3) -> fact(2) -> fact(1); a syscall at each depth on the way down and back up
    fns = [enter("fact", 0), enter("fact", 10), enter("fact", 20), leave("fact", 30),
           leave("fact", 40), leave("fact", 50)]
    assert stacks(fns, [call(5), call(15), call(25), call(35), call(45), call(55)]) == [
        ["fact"], ["fact"] * 2, ["fact"] * 3, ["fact"] * 2, ["fact"], []]
    assert warnings_of(fns, [call(5)]) == []


def test_mutual_recursion() -> None:
    fns = [enter("even", 0), enter("odd", 10), enter("even", 20), enter("odd", 30),
           leave("odd", 40), leave("even", 50), leave("odd", 60), leave("even", 70)]
    assert stacks(fns, [call(35), call(45), call(55), call(65)]) == [
        ["even", "odd", "even", "odd"], ["even", "odd", "even"], ["even", "odd"], ["even"]]


def test_enter_at_exactly_the_start_counts_as_active() -> None:
    assert stacks([enter("f", 100), leave("f", 200)], [call(100, 110)]) == [["f"]]


def test_exit_at_exactly_the_end_counts_as_still_active() -> None:
    assert stacks([enter("f", 100), leave("f", 200)], [call(150, 200)]) == [["f"]]


def test_exit_during_the_syscall_is_not_active_and_is_reported() -> None:
    fns = [enter("outer", 0), enter("f", 100), leave("f", 200), leave("outer", 500)]
    out: list[str] = []
    assert [e["stack"] for e in merge(fns, [call(150, 201)], warnings=out)] == [["outer"]]
    assert len(out) == 1 and "ended after the function they started in had exited" in out[0]


def test_exit_at_the_start_of_a_syscall_that_lasts() -> None:
    # f exits as the call starts: the call outlives f; a call that never returned (end ==
    # start, e.g. exit_group) at the same instant is still inside f.
    fns = [enter("main", 0), enter("f", 10), leave("f", 20), leave("main", 30)]
    assert stacks(fns, [call(20, 25), call(20, 20)]) == [["main"], ["main", "f"]]


def test_exit_and_enter_at_the_same_timestamp() -> None:
    # a returns and b is called in the same nanosecond: a call then is in b, not a.
    fns = [enter("main", 0), enter("a", 5), leave("a", 10), enter("b", 10), leave("b", 20),
           leave("main", 30)]
    assert stacks(fns, [call(10, 12)]) == [["main", "b"]]


def test_function_records_out_of_order_are_sorted_by_time() -> None:
    fns = [leave("main", 100), enter("f", 20), enter("main", 0), leave("f", 40)]
    assert stacks(fns, [call(30)]) == [["main", "f"]]
    assert warnings_of(fns, [call(30)]) == []


def test_syscall_without_end_is_a_point_in_time() -> None:
    sc = {"timestamp_ns": 50, "tid": TID}
    assert stacks([enter("f", 0), leave("f", 50)], [sc]) == [["f"]]
    sc = {"timestamp_ns": 40, "duration_ns": 20, "tid": TID}
    assert stacks([enter("f", 0), leave("f", 50)], [sc]) == [[]]


def test_non_syscall_events_pass_through_unchanged() -> None:
    fork = {"type": "fork", "timestamp_ns": 5, "pid": 100}
    out = merge([enter("f", 0), leave("f", 10)], [fork, call(5)])
    assert out[0] == fork
    assert out[1]["stack"] == ["f"]


# ------------------------------------------------------------------------------ unbalanced


def test_exit_without_enter_at_the_start_is_a_call_already_in_progress() -> None:
    # The debugger attached inside main -> run: their exits come with no enter.
    fns = [enter("step", 10), leave("step", 20), leave("run", 30), leave("main", 40)]
    out: list[str] = []
    got = [e["stack"] for e in merge(fns, [call(5), call(15), call(25), call(35), call(45)],
                                     warnings=out)]
    assert got == [["main", "run"], ["main", "run", "step"], ["main", "run"], ["main"], []]
    assert len(out) == 1
    assert out[0].startswith("2 exit(s) without an enter, taken as calls already in progress")
    assert '"run" (tid 101, exit at 30)' in out[0]


def test_exit_without_enter_inside_another_call_is_ignored() -> None:
    fns = [enter("main", 0), leave("ghost", 10), leave("main", 20)]
    out: list[str] = []
    assert [e["stack"] for e in merge(fns, [call(5), call(15)], warnings=out)] == [
        ["main"], ["main"]]
    assert out == ['1 exit(s) without an enter while other functions were active, ignored: '
                   '"ghost" (tid 101, exit at 10)']


def test_enter_without_exit_is_closed_by_the_enclosing_exit() -> None:
    # f never exits (a longjmp out of it, or a lost event): main's exit ends it too.
    fns = [enter("main", 0), enter("f", 10), enter("g", 12), leave("main", 50)]
    out: list[str] = []
    assert [e["stack"] for e in merge(fns, [call(20), call(60)], warnings=out)] == [
        ["main", "f", "g"], []]
    assert len(out) == 1
    assert out[0].startswith("2 enter(s) without an exit, taken as ended when an enclosing")
    assert '"g" (tid 101, entered at 12, closed by the exit of "main" at 50)' in out[0]


def test_enter_without_exit_stays_active_to_the_end() -> None:
    fns = [enter("main", 0), enter("serve", 10)]
    out: list[str] = []
    assert [e["stack"] for e in merge(fns, [call(5), call(10**12)], warnings=out)] == [
        ["main"], ["main", "serve"]]
    assert out[0].startswith("2 enter(s) without an exit by the end of the timeline")


def test_exit_matches_the_innermost_open_call_of_that_name() -> None:
    # An exit of "f" while "g" (entered in f) is still open closes g too, then the inner f.
    fns = [enter("f", 0), enter("f", 10), enter("g", 20), leave("f", 30), leave("f", 40)]
    out: list[str] = []
    assert [e["stack"] for e in merge(fns, [call(25), call(35)], warnings=out)] == [
        ["f", "f", "g"], ["f"]]
    assert len(out) == 1 and '"g"' in out[0]


def test_unbalanced_threads_without_syscalls_are_reported_too() -> None:
    out = warnings_of([leave("lonely", 5, tid=7)], [call(1)])
    assert out == ['1 exit(s) without an enter, taken as calls already in progress when the '
                   'timeline began: "lonely" (tid 7, exit at 5)']


def test_warnings_quote_a_few_examples_and_count_all() -> None:
    fns = [leave(f"f{i}", i * 10 + 5) for i in range(10)]
    fns = [enter("main", 0), *fns, leave("main", 1000)]
    out = warnings_of(fns, [])
    assert len(out) == 1 and out[0].startswith("10 exit(s) without an enter while")
    assert out[0].count('"f') == 3 and out[0].endswith(", ...")


def test_end_before_start_and_missing_ids_are_reported() -> None:
    out = warnings_of([enter("f", 0, pid=100)], [call(10, 5), {"timestamp_ns": 3, "pid": 100}])
    assert any("end before they start" in w for w in out)
    assert any('without the id needed to match them' in w and '"tid"' in w for w in out)


# ------------------------------------------------------------------------------ thread keys


def test_records_without_tid_match_by_pid() -> None:
    fns = [{"type": "enter", "name": "main", "timestamp_ns": 0, "pid": 100},
           {"type": "exit", "name": "main", "timestamp_ns": 100, "pid": 100}]
    doc = enrich(fns, [call(50, tid=101, pid=100), call(50, tid=201, pid=200)])
    assert [e["parent_function"] for e in doc["events"]] == ["main", None]
    assert doc["metadata"]["matched_by"] == "pid"
    assert any("matched by pid" in w for w in doc["metadata"]["warnings"])


def test_tid_is_preferred_when_records_carry_both() -> None:
    fns = [enter("a", 0, tid=101, pid=100), enter("b", 0, tid=102, pid=100)]
    assert stacks(fns, [call(5, tid=102)]) == [["b"]]


def test_records_must_all_have_tid_or_none(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "f.jsonl", [enter("a", 0), {"event": "exit", "function": "a",
                                                         "timestamp_ns": 5, "pid": 1}])
    with pytest.raises(EnrichError) as e:
        read_functions(path)
    assert e.value.line == 2 and e.value.exit_status == 65
    assert '"tid" missing although record at line 1 has one' in str(e.value)


# ------------------------------------------------------------------------------ clocks

OFFSET = 1_700_000_000_000_000_000  # realtime - monotonic: the boot was in late 2023


def wall(event: str, name: str, mono: int, key: str = "wall_ns") -> dict[str, Any]:
    return {"event": event, "function": name, key: mono + OFFSET, "tid": TID}


def test_monotonic_input_needs_no_conversion(tmp_path: Path) -> None:
    tl = read_functions(jsonl(tmp_path / "f.jsonl", [enter("f", 10), leave("f", 20)]),
                        clock_offset_ns=5)  # an offset that is not needed is not used
    assert tl.clock_conversion is None
    assert [r.timestamp_ns for r in tl.records] == [10, 20]


def test_wall_clock_with_the_offset_from_the_file_header(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "f.jsonl", [
        {"clock": "realtime", "realtime_minus_monotonic_ns": OFFSET, "program": "./app"},
        {"event": "enter", "function": "f", "timestamp_ns": OFFSET + 100, "tid": TID},
        {"event": "exit", "function": "f", "timestamp_ns": OFFSET + 200, "tid": TID},
    ])
    tl = read_functions(path)
    assert [r.timestamp_ns for r in tl.records] == [100, 200]
    assert tl.clock_conversion == {"from": "realtime", "offset_ns": OFFSET, "source": "file"}
    assert tl.header["program"] == "./app"
    assert tl.warnings == []
    assert stacks(tl, [call(150)]) == [["f"]]


def test_wall_clock_with_the_offset_as_argument(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "f.jsonl", [
        {"clock": "realtime", "realtime_minus_monotonic_ns": 1},  # the argument wins
        wall("enter", "f", 100, "timestamp_wall_ns"), wall("exit", "f", 200),
    ])
    tl = read_functions(path, clock_offset_ns=OFFSET)
    assert [r.timestamp_ns for r in tl.records] == [100, 200]
    assert tl.clock_conversion == {"from": "realtime", "offset_ns": OFFSET,
                                   "source": "argument"}


def test_clock_realtime_argument_makes_timestamp_ns_wall_clock(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "f.jsonl", [enter("f", OFFSET + 7)])
    tl = read_functions(path, clock="realtime", clock_offset_ns=OFFSET)
    assert tl.records[0].timestamp_ns == 7


def test_monotonic_timestamp_is_used_when_a_wall_one_rides_along(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "f.jsonl", [enter("f", 7, wall_ns=OFFSET + 999)])
    tl = read_functions(path)
    assert tl.records[0].timestamp_ns == 7 and tl.clock_conversion is None


def test_wall_clock_offset_measured_at_merge(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(en, "_measure_offset", lambda: OFFSET)
    tl = read_functions(jsonl(tmp_path / "f.jsonl", [wall("enter", "f", 100)]))
    assert tl.records[0].timestamp_ns == 100
    assert tl.clock_conversion == {"from": "realtime", "offset_ns": OFFSET,
                                   "source": "measured-at-merge"}
    assert len(tl.warnings) == 1 and "stepped" in tl.warnings[0]


def test_measured_offset_is_the_real_one() -> None:
    import time  # noqa: PLC0415 - only this test reads the clocks

    expected = time.clock_gettime_ns(time.CLOCK_REALTIME) - time.monotonic_ns()
    assert abs(en._measure_offset() - expected) < 50_000_000  # 50 ms: a loaded CI machine


def test_header_with_a_bad_clock_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(EnrichError, match=r':1: "clock" must be "monotonic" or "realtime"'):
        read_functions(jsonl(tmp_path / "f.jsonl", [{"clock": "tai"}]))


def test_syscalls_on_another_clock_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"metadata": {"clock": "realtime"}, "events": []}))
    with pytest.raises(EnrichError, match="only monotonic is supported"):
        read_syscalls(path)


# ------------------------------------------------------------------------------ reading


def test_read_functions_accepts_synonyms_and_blank_lines() -> None:
    text = ('\n{"type": "enter", "name": "f", "timestamp_ns": 1, "tid": 5}\n\n'
            '{"type": "exit", "name": "f", "timestamp_ns": 2, "tid": 5, "pid": 4}\r\n')
    tl = read_functions(io.StringIO(text))
    assert tl.records == [FunctionRecord("enter", "f", 1, 5), FunctionRecord("exit", "f", 2, 5, 4)]
    assert tl.source == "<functions>" and tl.matched_by == "tid"


def test_read_functions_line_numbers_survive_unicode_line_separators() -> None:
    text = (json.dumps(enter("a\u2028b", 1), ensure_ascii=False) + "\n"
            + '{"event": "exit"}\n')
    with pytest.raises(EnrichError, match=r"^<functions>:2: missing \"function\""):
        read_functions(io.StringIO(text))


@pytest.mark.parametrize(("line", "problem"), [
    ("{not json", "bad JSON: Expecting property name"),
    ("[1, 2]", "a function record must be a JSON object"),
    ('{"function": "f", "timestamp_ns": 1, "tid": 1}', 'missing "event" (or "type")'),
    ('{"event": "call", "function": "f", "timestamp_ns": 1, "tid": 1}',
     '"event" must be "enter" or "exit", not "call"'),
    ('{"event": "enter", "timestamp_ns": 1, "tid": 1}', 'missing "function" (or "name")'),
    ('{"event": "enter", "function": 3, "timestamp_ns": 1, "tid": 1}',
     '"function" must be a string'),
    ('{"event": "enter", "function": "f", "tid": 1}', 'missing "timestamp_ns" (or "wall_ns")'),
    ('{"event": "enter", "function": "f", "timestamp_ns": "1", "tid": 1}',
     '"timestamp_ns" must be an integer, not "1"'),
    ('{"event": "enter", "function": "f", "timestamp_ns": 1.5, "tid": 1}',
     '"timestamp_ns" must be an integer'),
    ('{"event": "enter", "function": "f", "timestamp_ns": 1, "tid": true}',
     '"tid" must be an integer, not true'),
    ('{"event": "enter", "function": "f", "timestamp_ns": 1}', 'missing "tid" (or "pid")'),
])
def test_read_functions_rejects_bad_records_with_their_line(tmp_path: Path, line: str,
                                                            problem: str) -> None:
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps(enter("ok", 0)) + "\n\n" + line + "\n")
    with pytest.raises(EnrichError) as e:
        read_functions(path)
    assert str(e.value).startswith(f"{path}:3: {problem}")
    assert e.value.exit_status == 65


def test_read_functions_missing_file() -> None:
    with pytest.raises(EnrichError) as e:
        read_functions("/nonexistent/functions.jsonl")
    assert e.value.exit_status == 66
    assert str(e.value) == "/nonexistent/functions.jsonl: cannot read: No such file or directory"


def test_read_functions_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(json.dumps(enter("f", 0)).encode() + b'\n{"function": "\xff"}\n')
    with pytest.raises(EnrichError, match=r":2: not UTF-8 text"):
        read_functions(path)


DOC: dict[str, Any] = {"metadata": {"program": "./app", "tracerd": "0.1.0", "kernel": "6.18.44",
                    "clock": "monotonic", "arch": "x86_64"},
       "events": [call(10, name="openat"), call(20, name="read")]}


def test_read_syscalls_document(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps(DOC, indent=2))
    log = read_syscalls(path)
    assert log.metadata == DOC["metadata"]
    assert log.events == DOC["events"]
    assert log.source == str(path)


def test_read_syscalls_json_lines_and_array(tmp_path: Path) -> None:
    events = DOC["events"]
    assert read_syscalls(jsonl(tmp_path / "s.jsonl", events)).events == events
    assert read_syscalls(jsonl(tmp_path / "one.jsonl", events[:1])).events == events[:1]
    (tmp_path / "a.json").write_text(json.dumps(events))
    assert read_syscalls(tmp_path / "a.json").events == events
    (tmp_path / "empty").write_text("\n")
    assert read_syscalls(tmp_path / "empty").events == []


def test_read_syscalls_points_at_the_line_of_a_bad_event_in_a_document(tmp_path: Path) -> None:
    doc = {"metadata": DOC["metadata"], "events": [call(1), call(2), {"tid": 1}]}
    path = tmp_path / "s.json"
    text = json.dumps(doc, indent=2)
    path.write_text(text)
    with pytest.raises(EnrichError) as e:
        read_syscalls(path)
    lines = text.split("\n")
    assert e.value.line is not None and lines[e.value.line - 1].strip() == "{"
    assert lines[e.value.line].strip() == '"tid": 1'
    assert str(e.value).endswith('events[2]: missing "timestamp_ns"')


def test_read_syscalls_bad_field_in_a_document(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"events": [call(1), {**call(2), "tid": "7"}]}))
    with pytest.raises(EnrichError) as e:
        read_syscalls(path)
    assert str(e.value) == f'{path}:1: events[1]: "tid" must be an integer, not "7"'
    path.write_text(json.dumps([call(1), 5]))
    with pytest.raises(EnrichError, match=r":1: \[1\]: an event must be a JSON object"):
        read_syscalls(path)


def test_duration_is_only_used_without_an_end() -> None:
    sc = {**call(10, 20), "duration_ns": None}
    assert stacks([enter("f", 0), leave("f", 20)], [sc]) == [["f"]]
    with pytest.raises(EnrichError, match='"duration_ns" must be an integer'):
        merge([], [{"timestamp_ns": 1, "tid": 1, "duration_ns": "x"}])


def test_read_syscalls_bad_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(call(1)) + "\n" + json.dumps(call(2)) + "\n{oops\n")
    with pytest.raises(EnrichError, match=r"s\.jsonl:3: bad JSON"):
        read_syscalls(path)
    path.write_text(json.dumps(call(1)) + "\n" + '{"type": "syscall", "tid": 1}\n')
    with pytest.raises(EnrichError, match=r's\.jsonl:2: missing "timestamp_ns"'):
        read_syscalls(path)


def test_read_syscalls_junk_after_a_document(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps(DOC, indent=2) + "\ntrailing\n")
    with pytest.raises(EnrichError) as e:
        read_syscalls(path)
    assert e.value.line == len(json.dumps(DOC, indent=2).split("\n")) + 1


def test_in_memory_syscall_events_are_named_and_attributed() -> None:
    ev = SyscallEvent(start_ns=15, end_ns=20, pid=100, tid=TID, nr=257, ret=-2,
                      args=(0xFFFFFF9C, 0x1000, 0, 0, 0, 0))
    gone = SyscallEvent(start_ns=30, end_ns=30, pid=100, tid=TID, nr=231, ret=None, args=(0,) * 6)
    out = merge([enter("main", 0), enter("load", 10), leave("load", 25)], [ev, gone],
                arch="x86_64")
    assert out[0] == {"type": "syscall", "name": "openat", "nr": 257,
                      "args": ["0xffffff9c", "0x1000", "0x0", "0x0", "0x0", "0x0"],
                      "return_value": -2, "error": "ENOENT", "duration_ns": 5,
                      "timestamp_ns": 15, "end_ns": 20, "pid": 100, "tid": TID,
                      "parent_function": "load", "stack": ["main", "load"]}
    assert out[1]["name"] == "exit_group" and out[1]["error"] is None
    assert out[1]["stack"] == ["main"]
    assert merge([], [ev], arch="aarch64")[0]["name"] == "syscall_257"  # not on aarch64


def test_in_memory_inputs_are_validated_by_position() -> None:
    with pytest.raises(EnrichError, match=r'^<syscalls>:2: missing "tid"'):
        merge([], [call(1), {"timestamp_ns": 5}])
    with pytest.raises(EnrichError, match=r"^<functions>:1: missing"):
        merge([{"event": "enter"}], [])
    records = [FunctionRecord("enter", "f", 0, TID), FunctionRecord("exit", "f", 9, TID)]
    assert stacks(records, [call(4)]) == [["f"]]


def test_enrich_document_metadata(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "f.jsonl", [
        {"clock": "realtime", "realtime_minus_monotonic_ns": OFFSET},
        wall("enter", "f", 5), wall("exit", "f", 15), wall("exit", "g", 30)])
    (tmp_path / "s.json").write_text(json.dumps(DOC))
    doc = enrich(read_functions(path), read_syscalls(tmp_path / "s.json"))
    meta = doc["metadata"]
    assert {k: meta[k] for k in DOC["metadata"]} == DOC["metadata"]
    assert meta["functions"] == {"source": str(path), "records": 3, "header": {
        "clock": "realtime", "realtime_minus_monotonic_ns": OFFSET}}
    assert meta["syscalls"] == {"source": str(tmp_path / "s.json"), "events": 2}
    assert meta["matched_by"] == "tid"
    assert meta["clock_conversion"] == {"from": "realtime", "offset_ns": OFFSET,
                                        "source": "file"}
    assert meta["unattributed"] == 0
    assert [e["stack"] for e in doc["events"]] == [["g", "f"], ["g"]]
    assert len(meta["warnings"]) == 1 and "already in progress" in meta["warnings"][0]


# ------------------------------------------------------------------------------ properties


@st.composite
def call_trees(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[tuple[str, int, int]]]:
    """A balanced timeline with distinct timestamps, and its calls as (name, enter, exit)."""
    events: list[tuple[str, str]] = []
    depth = 0
    for _ in range(draw(st.integers(0, 40))):
        if depth and draw(st.booleans()):
            events.append(("exit", ""))
            depth -= 1
        else:
            events.append(("enter", draw(st.sampled_from("abc"))))
            depth += 1
    events += [("exit", "")] * depth
    gaps = draw(st.lists(st.integers(1, 5), min_size=len(events), max_size=len(events)))
    records: list[dict[str, Any]] = []
    open_calls: list[tuple[str, int]] = []
    calls: list[tuple[str, int, int]] = []
    t = 0
    for (kind, name), gap in zip(events, gaps, strict=True):
        t += gap
        if kind == "enter":
            open_calls.append((name, t))
            records.append(enter(name, t))
        else:
            callee, start = open_calls.pop()
            calls.append((callee, start, t))
            records.append(leave(callee, t))
    return records, calls


@settings(max_examples=300, deadline=None)
@given(call_trees(), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 10)), max_size=30),
       st.randoms(use_true_random=False))
def test_matches_the_definition(tree: tuple[list[dict[str, Any]], list[tuple[str, int, int]]],
                                spans: list[tuple[int, int]], rnd: Any) -> None:
    """Active = entered at or before the start, exited at or after the end; outermost first."""
    records, calls = tree
    rnd.shuffle(records)  # the input order of records does not matter
    syscalls = [call(s, s + d) for s, d in spans]
    by_enter = sorted(calls, key=lambda c: c[1])
    expected = [[n for n, enter_ns, exit_ns in by_enter if enter_ns <= s and exit_ns >= s + d]
                for s, d in spans]
    out: list[str] = []
    assert [e["stack"] for e in merge(records, syscalls, warnings=out)] == expected
    assert all("outlived" in w or "ended after" in w for w in out)


@st.composite
def messy_timelines(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Enters and exits in any order (unbalanced), at distinct increasing timestamps."""
    n = draw(st.integers(0, 40))
    kinds = draw(st.lists(st.sampled_from(["enter", "exit"]), min_size=n, max_size=n))
    names = draw(st.lists(st.sampled_from("abc"), min_size=n, max_size=n))
    gaps = draw(st.lists(st.integers(1, 5), min_size=n, max_size=n))
    records, t = [], 0
    for kind, name, gap in zip(kinds, names, gaps, strict=True):
        t += gap
        records.append(enter(name, t) if kind == "enter" else leave(name, t))
    return records


@settings(max_examples=300, deadline=None)
@given(messy_timelines(),
       st.lists(st.tuples(st.integers(0, 200), st.integers(0, 10)), max_size=30))
def test_unbalanced_timelines_follow_the_repaired_calls(records: list[dict[str, Any]],
                                                        spans: list[tuple[int, int]]) -> None:
    """Whatever the repairs, the sweep gives what filtering every repaired call would."""
    pairs = [FunctionRecord(r["event"], r["function"], r["timestamp_ns"], TID) for r in records]
    frames = en._pair(pairs, "tid", TID, en._Issues())  # in the order they were entered
    expected = [[f.name for f in frames if f.enter_ns <= s and f.exit_ns >= s + d]
                for s, d in spans]
    got = merge(records, [call(s, s + d) for s, d in spans])
    assert [e["stack"] for e in got] == expected
    assert all(e["parent_function"] == (e["stack"][-1] if e["stack"] else None) for e in got)


# ------------------------------------------------------------------------------ scale


def test_200k_functions_and_200k_syscalls() -> None:
    """Four threads, each a loop of nested calls; every syscall is checked against a
    closed form of where it falls, so the sweep is exercised end to end at scale."""
    threads = 4
    loops = 200_000 // (threads * 4)  # 4 records (two calls) and 4 syscalls per iteration
    fns: list[dict[str, Any]] = []
    syscalls: list[dict[str, Any]] = []
    for tid in range(1, threads + 1):
        for i in range(loops):
            base = i * 100
            fns += [enter("handle", base, tid), enter("parse", base + 10, tid),
                    leave("parse", base + 40, tid), leave("handle", base + 80, tid)]
            syscalls += [call(base + 5, base + 8, tid), call(base + 20, base + 30, tid),
                         call(base + 50, base + 80, tid), call(base + 90, base + 95, tid)]
    syscalls.reverse()  # and not sorted
    assert len(fns) == 200_000 and len(syscalls) == 200_000
    doc = enrich(fns, syscalls)
    events = doc["events"]
    assert len(events) == 200_000
    assert doc["metadata"]["unattributed"] == 50_000
    assert doc["metadata"]["warnings"] == []
    expected = {5: ["handle"], 20: ["handle", "parse"], 50: ["handle"], 90: []}
    for ev in events:
        assert ev["stack"] == expected[ev["timestamp_ns"] % 100]


def test_deep_recursion_at_scale() -> None:
    # rec entered at 0, 1, ..., 1999 and exited at 8001, ..., 10000: a call at 9990 runs
    # in the 11 outermost calls (those exiting at 9990..10000).
    depth = 2000
    fns = ([enter("rec", i) for i in range(depth)]
           + [leave("rec", 10_000 - i) for i in range(depth)])
    out = merge(fns, [call(depth + 1), call(9990, 9990), call(9990, 9995)])
    assert [len(e["stack"]) for e in out] == [depth, 11, 6]


# ------------------------------------------------------------------------------ command line


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    fns = jsonl(tmp_path / "functions.jsonl", [enter("main", 0), enter("f", 10),
                                               leave("f", 30), leave("main", 40)])
    sc = tmp_path / "syscalls.json"
    sc.write_text(json.dumps({"metadata": DOC["metadata"],
                              "events": [call(20, name="openat"), call(35), call(50)]}))
    return fns, sc


def test_cli_writes_the_enriched_document(inputs: tuple[Path, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    fns, sc = inputs
    out = tmp_path / "out.json"
    assert main(["--functions", str(fns), "--syscalls", str(sc), "-o", str(out)]) == 0
    assert capsys.readouterr() == ("", "")
    doc = json.loads(out.read_text())
    assert set(doc) == {"metadata", "events"}
    assert doc["metadata"]["program"] == "./app"
    assert doc["metadata"]["unattributed"] == 1
    assert doc["metadata"]["clock_conversion"] is None
    assert [(e["name"], e["parent_function"], e["stack"]) for e in doc["events"]] == [
        ("openat", "f", ["main", "f"]), ("read", "main", ["main"]), ("read", None, [])]
    # one event per line, so the file can be grepped
    assert len(out.read_text().splitlines()) == 2 + len(doc["events"])


def test_cli_stdout_and_clock_options(inputs: tuple[Path, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    _, sc = inputs
    fns = jsonl(tmp_path / "wall.jsonl", [enter("w", OFFSET + 15), leave("w", OFFSET + 25)])
    assert main(["--functions", str(fns), "--syscalls", str(sc), "--clock", "realtime",
                 "--clock-offset-ns", str(OFFSET)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["metadata"]["clock_conversion"] == {"from": "realtime", "offset_ns": OFFSET,
                                                   "source": "argument"}
    assert [e["parent_function"] for e in doc["events"]] == ["w", None, None]


def test_cli_prints_warnings_on_stderr(inputs: tuple[Path, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    _, sc = inputs
    fns = jsonl(tmp_path / "f.jsonl", [enter("main", 0)])
    assert main(["--functions", str(fns), "--syscalls", str(sc)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("tracerd enrich: warning: 1 enter(s) without an exit")


def test_cli_bad_json_exits_65(inputs: tuple[Path, Path], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    _, sc = inputs
    fns = tmp_path / "bad.jsonl"
    fns.write_text(json.dumps(enter("a", 0)) + "\n" + '{"event": "enter",\n')
    assert main(["--functions", str(fns), "--syscalls", str(sc)]) == 65
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"tracerd enrich: {fns}:2: bad JSON: Expecting property name "
                            "enclosed in double quotes (column 19)\n")


def test_cli_missing_field_exits_65(inputs: tuple[Path, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    fns, _ = inputs
    sc = jsonl(tmp_path / "s.jsonl", [call(1), {"type": "syscall", "timestamp_ns": 3}])
    assert main(["--functions", str(fns), "--syscalls", str(sc)]) == 65
    assert capsys.readouterr().err == f'tracerd enrich: {sc}:2: missing "tid" (or "pid")\n'


def test_cli_unreadable_file_exits_66(inputs: tuple[Path, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    fns, _ = inputs
    missing = tmp_path / "nope.json"
    assert main(["--functions", str(fns), "--syscalls", str(missing)]) == 66
    assert capsys.readouterr().err == (f"tracerd enrich: {missing}: cannot read: "
                                       "No such file or directory\n")
    assert main(["--functions", str(tmp_path), "--syscalls", str(missing)]) == 66
    assert "Is a directory" in capsys.readouterr().err


def test_cli_unwritable_output_exits_73(inputs: tuple[Path, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    fns, sc = inputs
    out = tmp_path / "no" / "such" / "dir.json"
    assert main(["--functions", str(fns), "--syscalls", str(sc), "-o", str(out)]) == 73
    assert capsys.readouterr().err.startswith(f"tracerd enrich: {out}: cannot write")


def test_cli_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--functions", "f"]) == 2
    assert main(["--functions", "f", "--syscalls", "s", "--clock", "tai"]) == 2
    assert main(["--functions", "f", "--syscalls", "s", "--clock-offset-ns", "x"]) == 2
    assert "usage: tracerd enrich" in capsys.readouterr().err
    assert main(["--help"]) == 0


def test_cli_in_a_fresh_process_has_no_traceback(inputs: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    fns, sc = inputs
    run = [sys.executable, "-m", "tracerd.enrich", "--functions", str(fns)]
    ok = subprocess.run([*run, "--syscalls", str(sc)], capture_output=True, text=True,
                        check=False, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["metadata"]["unattributed"] == 1
    bad = tmp_path / "bad.json"
    bad.write_text('{"metadata": {}, "events": [\n  {"tid": 1}\n]}\n')
    for path, status in ((bad, 65), (tmp_path / "missing", 66)):
        r = subprocess.run([*run, "--syscalls", str(path)], capture_output=True, text=True,
                           check=False, timeout=60)
        assert r.returncode == status
        assert r.stdout == "" and len(r.stderr.splitlines()) == 1
        assert r.stderr.startswith(f"tracerd enrich: {path}")
    assert "Traceback" not in r.stderr


def test_hand_built_timeline_missing_its_key_is_an_error() -> None:
    tl = FunctionTimeline([FunctionRecord("enter", "f", 0, pid=1)], matched_by="tid")
    with pytest.raises(EnrichError, match='no "tid" but matched_by is "tid"'):
        merge(tl, [])


def test_public_types_are_exported() -> None:
    assert {"merge", "enrich", "read_functions", "read_syscalls", "main", "EnrichError",
            "FunctionRecord", "FunctionTimeline", "SyscallLog"} <= set(en.__all__)
    assert isinstance(FunctionTimeline([]), FunctionTimeline)
    assert isinstance(SyscallLog([]), SyscallLog)
