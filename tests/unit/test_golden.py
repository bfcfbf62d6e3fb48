"""Golden traces: capture, validation and comparison on synthesized reports (no BPF)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tracerd import golden
from tracerd.model import ExitStatus, ProcessInfo, Report, SyscallStats

NAMES = {0: "read", 1: "write", 2: "open", 257: "openat", 39: "getpid", 231: "exit_group"}
NUMBERS = {v: k for k, v in NAMES.items()}


def name_of(nr: int) -> str:
    return NAMES.get(nr, f"syscall_{nr}")


def make_report(counts: dict[str, int | tuple[int, int]], *, duration_ms: float = 10.0,
                children: tuple[str, ...] = (), status: int = 0,
                rss_kib: int | None = None) -> Report:
    """A root "sh" with ``counts`` (name -> calls or (calls, errors)) and one child per comm;
    the root's peak RSS is ``rss_kib``, the children's half of it."""
    def stats(table: dict[str, int | tuple[int, int]]) -> dict[int, SyscallStats]:
        out = {}
        for name, v in table.items():
            calls, errors = v if isinstance(v, tuple) else (v, 0)
            out[NUMBERS[name]] = SyscallStats(calls=calls, errors=errors, total_ns=calls * 100)
        return out

    end = 1_000_000 + int(duration_ms * 1e6)
    rss = None if rss_kib is None else rss_kib * 1024
    root = ProcessInfo(pid=100, ppid=1, comm="sh", start_ns=1_000_000, end_ns=end,
                       exit=ExitStatus(code=status), syscalls=stats(counts), peak_rss_bytes=rss)
    procs = {100: root}
    for i, comm in enumerate(children):
        procs[101 + i] = ProcessInfo(pid=101 + i, ppid=100, comm=comm, start_ns=2_000_000,
                                     end_ns=end - 1, exit=ExitStatus(code=0),
                                     syscalls=stats({"exit_group": 1}),
                                     peak_rss_bytes=None if rss is None else rss // 2)
    return Report(command=["sh", "x.sh"], arch="x86_64", kernel="6.1.0", root_pid=100,
                  start_ns=0, end_ns=end + 100_000_000, exit=ExitStatus(code=status),
                  processes=procs)


BASE: dict[str, int | tuple[int, int]] = {"read": 3, "openat": (5, 1), "exit_group": 1}


def base_golden(runs: int = 3, **kw: Any) -> dict[str, Any]:
    kw.setdefault("rss_kib", 5000)
    reports = [make_report(BASE, duration_ms=10 + i, **kw) for i in range(runs)]
    return golden.capture_from_reports(reports, ["sh", "x.sh"], name_of)


def test_identical_run_passes_and_shows_only_measured_rows() -> None:
    g = base_golden()
    result = golden.compare(g, make_report(BASE, duration_ms=11, rss_kib=5000), name_of)
    assert result.verdict == "pass" and not result.failures()
    text = golden.render_diff(result)
    assert text.endswith("verdict: PASS\n")
    assert "openat" not in text and "duration" in text


def test_extra_openat_calls_are_named_exactly() -> None:
    g = base_golden()
    now = make_report({**BASE, "openat": (7, 1)}, duration_ms=11)
    result = golden.compare(g, now, name_of)
    assert result.failed_syscalls() == ["openat"]
    [row] = result.failures()
    assert (row.kind, row.now, row.allowed, row.verdict) == ("calls", 7, (5, 5), "FAIL")
    assert "openat FAIL" in golden.render_diff(result)


def test_vanished_and_new_syscalls_are_named() -> None:
    g = base_golden()
    now = make_report({"openat": (5, 1), "exit_group": 1, "getpid": 2}, duration_ms=11)
    result = golden.compare(g, now, name_of)
    verdicts = {(r.kind, r.name): r.verdict for r in result.failures()}
    assert verdicts == {("calls", "read"): "VANISHED", ("calls", "getpid"): "NEW"}
    assert result.failed_syscalls() == ["getpid", "read"]


def test_errors_are_compared_separately() -> None:
    result = golden.compare(base_golden(), make_report({**BASE, "openat": (5, 3)}), name_of)
    assert [(r.kind, r.name) for r in result.failures()] == [("errors", "openat")]


def test_duration_trips_without_the_count_check() -> None:
    g = base_golden()  # median 11 ms
    slow = golden.compare(g, make_report(BASE, duration_ms=500), name_of)
    assert [r.kind for r in slow.failures()] == ["duration"]
    assert slow.failed_syscalls() == []
    # 3x slower but only 22 ms more: within the 50 ms slack, so noise, not a regression.
    assert golden.compare(g, make_report(BASE, duration_ms=33), name_of).verdict == "pass"
    # Faster is never a failure.
    assert golden.compare(g, make_report(BASE, duration_ms=1), name_of).verdict == "pass"


def test_counts_with_spread_get_the_documented_margin() -> None:
    reports = [make_report({**BASE, "read": n}) for n in (10, 12, 14)]
    g = golden.capture_from_reports(reports, ["sh"], name_of)
    assert g["syscalls"]["read"]["calls"] == {"median": 12, "min": 10, "max": 14}
    # margin = max(2, ceil(10% of 14)) = 2: allowed 8..16
    for n, ok in ((8, True), (16, True), (7, False), (17, False)):
        result = golden.compare(g, make_report({**BASE, "read": n}), name_of)
        assert (result.verdict == "pass") is ok, n


def test_per_syscall_overrides() -> None:
    g = base_golden()
    g["tolerances"] = golden.apply_tolerance_overrides(g["tolerances"],
                                                       ["read=ignore", "openat=50%"])
    now = make_report({"openat": (7, 1), "exit_group": 1}, duration_ms=11)
    result = golden.compare(g, now, name_of)
    assert result.verdict == "pass"
    assert {r.name: r.verdict for r in result.rows if r.kind == "calls"}["read"] == "ignored"
    g["tolerances"]["syscalls"]["openat"] = "1"
    assert golden.compare(g, now, name_of).failed_syscalls() == ["openat"]


@pytest.mark.parametrize("bad", ["read", "read=", "read=lots", "read=-1", "duration=0.5",
                                 "rss=x"])
def test_bad_tolerance_overrides(bad: str) -> None:
    with pytest.raises(ValueError, match="--tolerance"):
        golden.apply_tolerance_overrides(golden.DEFAULT_TOLERANCES, [bad])


def test_process_tree_and_exit_status() -> None:
    g = base_golden(children=("ls",))
    assert g["processes"] == {"sh": {"median": 1, "min": 1, "max": 1},
                              "sh>ls": {"median": 1, "min": 1, "max": 1}}
    extra = make_report(BASE, children=("ls", "cat"))
    failures = golden.compare(g, extra, name_of).failures()
    assert {(r.kind, r.name, r.verdict) for r in failures} == {
        ("process", "sh>cat", "NEW"), ("calls", "exit_group", "FAIL")}
    status = golden.compare(g, make_report(BASE, children=("ls",), status=1), name_of)
    assert [(r.kind, r.now) for r in status.failures()] == [("exit_status", 1)]


def test_peak_rss_is_the_largest_process_and_has_a_ratio() -> None:
    g = base_golden()  # median 5000 KiB
    assert g["measured"]["peak_rss_kib"] == {"median": 5000, "min": 5000, "max": 5000}
    big = golden.compare(g, make_report(BASE, rss_kib=7600), name_of)
    assert [r.kind for r in big.failures()] == ["peak_rss"]
    assert golden.compare(g, make_report(BASE, rss_kib=7400), name_of).verdict == "pass"
    # A maximum over the tree, not a sum: a child's peak counts only when it is larger.
    report = make_report(BASE, children=("ls",), rss_kib=4000)
    report.processes[101].peak_rss_bytes = 7600 * 1024
    assert golden.peak_rss_kib(report) == 7600
    tree = base_golden(children=("ls",))
    assert [r.kind for r in golden.compare(tree, report, name_of).failures()] == ["peak_rss"]
    # Not measured in the run: not compared, and said so.
    blind = golden.compare(g, make_report(BASE), name_of)
    assert blind.verdict == "pass" and any("not measured" in n for n in blind.notes)
    assert golden.capture_from_reports([make_report(BASE)], ["sh"], name_of)[
        "measured"]["peak_rss_kib"] is None


def test_timing_syscalls_get_a_margin_by_default() -> None:
    counts: dict[str, int | tuple[int, int]] = {**BASE, "futex": 2}
    NAMES[202] = "futex"
    NUMBERS["futex"] = 202
    try:
        g = golden.capture_from_reports([make_report(counts)] * 3, ["sh"], name_of)
        assert g["tolerances"]["syscalls"]["futex"] == "100%"
        # futex 2 in every capture: 0..4 passes (locks found free, or waited on twice) ...
        for n in (0, 3, 4):
            assert golden.compare(g, make_report({**counts, "futex": n}), name_of).verdict == \
                "pass", n
        # ... while a program that makes more of them, and any other count, still fails.
        assert golden.compare(g, make_report({**counts, "futex": 5}), name_of).failed_syscalls() \
            == ["futex"]
        assert golden.compare(g, make_report({**counts, "read": 4}), name_of).failed_syscalls() \
            == ["read"]
        # Vanishing still fails where the margin does not reach 0.
        gone = golden.compare(g, make_report({"openat": (5, 1), "exit_group": 1}), name_of)
        assert [(r.name, r.verdict) for r in gone.failures()] == [("read", "VANISHED")]
    finally:
        del NAMES[202], NUMBERS["futex"]


def test_drops_fail_the_run_and_refuse_a_capture() -> None:
    report = make_report(BASE)
    report.drops.events_lost = 2
    assert [r.kind for r in golden.compare(base_golden(), report, name_of).failures()] == [
        "drops"]
    with pytest.raises(ValueError, match="dropped events"):
        golden.capture_from_reports([report], ["sh"], name_of)


def test_stable_bytes_across_captures() -> None:
    def capture(durations: tuple[int, ...], rss: int) -> str:
        reports = [make_report(BASE, duration_ms=d, children=("ls",), rss_kib=rss)
                   for d in durations]
        return golden.dumps_golden(golden.capture_from_reports(reports, ["sh", "x.sh"], name_of))

    first, again = capture((10, 11, 12), 5000), capture((10, 11, 12), 5000)
    assert first == again and first.endswith("}\n")
    other = json.loads(capture((30, 20, 90), 7000))
    assert json.loads(first)["measured"] != other["measured"]
    # Only the measured fields differ: everything noisy sits under that one key.
    del other["measured"]
    expect = json.loads(first)
    del expect["measured"]
    assert expect == other
    # The text round-trips through the validator unchanged.
    assert golden.dumps_golden(golden.parse_golden(first)) == first


def test_compare_goldens_and_verdict_dict() -> None:
    g = base_golden()
    assert golden.compare_goldens(g, copy.deepcopy(g)).verdict == "pass"
    result = golden.compare(g, make_report({**BASE, "read": 4}), name_of)
    d = golden.verdict_to_dict(result, "x.golden.json")
    assert (d["schema"], d["verdict"], d["exit_status"], d["failed_syscalls"]) == (
        "tracerd.golden-verdict/v1", "regression", 3, ["read"])
    assert golden.EXIT_REGRESSION not in (0, 1, 2, 4, 5, 65, 66, 67, 69, 72, 73, 77, 78, 126,
                                          127)


# --- bad files: every case names the file and the field --------------------------------

Mutate = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutate:
    def mutate(g: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        for p in parents:
            g = g[p]
        g[last] = value
    return mutate


def _drop(path: str) -> Mutate:
    def mutate(g: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        for p in parents:
            g = g[p]
        del g[last]
    return mutate


BAD_DICTS: list[tuple[str, Mutate, str]] = [
    ("wrong schema", _set("schema", "tracerd.report/v1"),
     "field 'schema' must be 'tracerd.golden/v2', got 'tracerd.report/v1'"),
    ("future version", _set("schema", "tracerd.golden/v3"),
     "field 'schema' is 'tracerd.golden/v3': this tracerd reads 'tracerd.golden/v2'"),
    ("old version", _set("schema", "tracerd.golden/v1"),
     "field 'schema' is 'tracerd.golden/v1': this tracerd reads 'tracerd.golden/v2'; "
     "recapture it with `tracerd golden update FILE`"),
    ("missing syscalls", _drop("syscalls"), "field 'syscalls' is missing"),
    ("missing median", _drop("syscalls/read/calls/median"),
     "field 'syscalls.read.calls.median' is missing"),
    ("runs as string", _set("runs", "3"), "field 'runs' must be an integer, got string"),
    ("zero runs", _set("runs", 0), "field 'runs' must be >= 1, got 0"),
    ("bool count", _set("syscalls/read/calls/max", True),
     "field 'syscalls.read.calls.max' must be an integer, got boolean"),
    ("empty command", _set("command", []), "field 'command' must be a non-empty list of strings"),
    ("command not strings", _set("command", ["sh", 1]),
     "field 'command[1]' must be a string, got integer"),
    ("environment kernel", _set("environment/kernel", None),
     "field 'environment.kernel' must be a string, got null"),
    ("min above max", _set("syscalls/read/calls/min", 9),
     "field 'syscalls.read.calls.min' is 9, above max 3"),
    ("median outside", _set("syscalls/read/calls/median", 5),
     "field 'syscalls.read.calls.median' is 5, outside [min, max] = [3, 3]"),
    ("negative count", _set("syscalls/openat/errors/min", -1),
     "field 'syscalls.openat.errors.min' must be >= 0, got -1"),
    ("errors above calls", _set("syscalls/read/errors", {"median": 4, "min": 4, "max": 4}),
     "field 'syscalls.read.errors.max' is 4, above calls.max 3"),
    ("process spread", _set("processes/sh", [1, 1, 1]),
     "field 'processes.sh' must be an object, got array"),
    ("duration missing", _drop("measured/duration_us"),
     "field 'measured.duration_us' is missing"),
    ("rss spread type", _set("measured/peak_rss_kib", 1.5),
     "field 'measured.peak_rss_kib' must be an object, got number"),
    ("duration ratio", _set("tolerances/duration/ratio", 0.5),
     "field 'tolerances.duration.ratio' must be >= 1, got 0.5"),
    ("bad syscall spec", _set("tolerances/syscalls", {"read": "loose"}),
     "field 'tolerances.syscalls.read' is 'loose': expected exact, ignore, N or N%"),
    ("not an object", lambda g: g.clear() or g.update({"schema": "tracerd.golden/v2"}),
     "field 'command' is missing"),
]


@pytest.mark.parametrize(("mutate", "message"), [(m, msg) for _, m, msg in BAD_DICTS],
                         ids=[case for case, _, _ in BAD_DICTS])
def test_bad_golden_fields(tmp_path: Path, mutate: Mutate, message: str) -> None:
    g = base_golden()
    mutate(g)
    path = tmp_path / "x.golden.json"
    path.write_text(golden.dumps_golden(g))
    with pytest.raises(golden.GoldenError) as info:
        golden.load_golden(str(path))
    assert str(info.value) == f"{path}: {message}"
    assert "\n" not in str(info.value)


BAD_TEXTS: list[tuple[str, bytes, str]] = [
    ("empty", b"", "empty file, not a golden trace"),
    ("truncated", b'{\n  "command": [\n    "sh"', "truncated JSON (ends at line 3 before the "
                                                  "document is complete)"),
    ("corrupt", b'{"schema": tracerd}', "corrupt JSON at line 1 column 12: Expecting value"),
    ("not utf-8", b'{"schema": "\xff"}', "corrupt file: not UTF-8 at byte 12"),
    ("top-level array", b"[]", "field '<top>' must be an object, got array"),
]


@pytest.mark.parametrize(("raw", "message"), [(r, m) for _, r, m in BAD_TEXTS],
                         ids=[case for case, _, _ in BAD_TEXTS])
def test_bad_golden_text(tmp_path: Path, raw: bytes, message: str) -> None:
    path = tmp_path / "x.golden.json"
    path.write_bytes(raw)
    with pytest.raises(golden.GoldenError) as info:
        golden.load_golden(str(path))
    assert str(info.value) == f"{path}: {message}"


def test_truncated_real_file_and_missing_file(tmp_path: Path) -> None:
    text = golden.dumps_golden(base_golden())
    path = tmp_path / "x.golden.json"
    path.write_text(text[: len(text) // 2])
    with pytest.raises(golden.GoldenError, match="truncated JSON"):
        golden.load_golden(str(path))
    with pytest.raises(golden.GoldenUnreadable, match="cannot read golden file"):
        golden.load_golden(str(tmp_path / "absent.json"))
    assert issubclass(golden.GoldenError, ValueError)


def test_other_kernel_is_noted_not_failed() -> None:
    report = make_report(BASE, rss_kib=5000)
    assert not golden.compare(base_golden(), report, name_of).notes
    report.kernel = "6.12.0"
    result = golden.compare(base_golden(), report, name_of)
    assert result.verdict == "pass"
    assert result.notes == ["captured on x86_64 6.1.0, now x86_64 6.12.0"]
