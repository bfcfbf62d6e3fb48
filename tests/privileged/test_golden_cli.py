"""Golden traces through the real command line: capture, compare, update, run options."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from conftest import Daemon, tracerd

from tracerd.golden import DEFAULT_TOLERANCES, EXIT_REGRESSION


def _capture(path: Path, *cmd: str, runs: int = 3) -> dict[str, Any]:
    proc = tracerd("golden", "capture", str(path), "--runs", str(runs), "--", *cmd)
    assert proc.returncode == 0, proc.stderr
    assert f"golden written to {path} ({runs} run{'s' if runs > 1 else ''})" in proc.stderr
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _verdict(path: Path, *cmd: str, extra: tuple[str, ...] = ()) -> tuple[int, dict[str, Any]]:
    proc = tracerd("golden", "compare", str(path), "--json", *extra, "--", *cmd)
    assert proc.returncode in (0, EXIT_REGRESSION), proc.stderr
    verdict: dict[str, Any] = json.loads(proc.stderr)
    return proc.returncode, verdict


def test_capture_then_compare_passes(tmp_path: Path, fixture_bin: Path) -> None:
    path = tmp_path / "exact.golden.json"
    # Single-threaded: see test_two_captures_differ_only_in_measured_fields.
    g = _capture(path, str(fixture_bin), "exact", "100", "0")
    assert g["schema"] == "tracerd.golden/v2" and g["runs"] == 3
    assert g["syscalls"]["getppid"]["calls"] == {"median": 600, "min": 600, "max": 600}
    assert g["syscalls"]["getpgid"]["errors"]["median"] == 100
    assert g["processes"]["exact>exact>exact"]["median"] == 1
    assert g["exit_status"]["median"] == 0
    code, verdict = _verdict(path, str(fixture_bin), "exact", "100", "0")
    assert (code, verdict["verdict"], verdict["failed_syscalls"]) == (0, "pass", [])
    # Without a command, compare reruns the one recorded in the file; the table is on stderr.
    proc = tracerd("golden", "compare", str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.endswith("verdict: PASS\n")


def test_extra_syscalls_fail_naming_exactly_those(tmp_path: Path, fixture_bin: Path) -> None:
    path = tmp_path / "exact.golden.json"
    _capture(path, str(fixture_bin), "exact", "100", "0")
    code, verdict = _verdict(path, str(fixture_bin), "exact", "101", "0")
    assert code == EXIT_REGRESSION == verdict["exit_status"]
    assert verdict["verdict"] == "regression"
    assert verdict["failed_syscalls"] == ["getpgid", "getppid", "getsid", "umask"]
    failed = {r["kind"] for r in verdict["rows"] if r["failed"]}
    assert failed <= {"calls", "errors"}
    proc = tracerd("golden", "compare", str(path), "--", str(fixture_bin), "exact", "101", "0")
    assert proc.returncode == EXIT_REGRESSION
    assert "verdict: REGRESSION" in proc.stderr and "umask" in proc.stderr


def test_extra_openat_calls_fail_naming_only_openat(tmp_path: Path, fixture_bin: Path) -> None:
    path = tmp_path / "opens.golden.json"
    g = _capture(path, str(fixture_bin), "opens", "3", runs=2)
    base = g["syscalls"]["openat"]
    code, verdict = _verdict(path, str(fixture_bin), "opens", "5")
    assert code == EXIT_REGRESSION and verdict["failed_syscalls"] == ["openat"]
    rows = {(r["kind"], r["name"]): r for r in verdict["rows"] if r["failed"]}
    assert set(rows) == {("calls", "openat"), ("errors", "openat")}
    assert rows[("calls", "openat")]["now"] == base["calls"]["median"] + 2
    assert rows[("errors", "openat")]["now"] == base["errors"]["median"] + 2


def test_slower_run_trips_duration_not_counts(tmp_path: Path) -> None:
    path = tmp_path / "sleep.golden.json"
    _capture(path, "sh", "-c", "sleep 0.05; true")
    code, verdict = _verdict(path, "sh", "-c", "sleep 0.5; true")
    assert code == EXIT_REGRESSION
    assert [r["kind"] for r in verdict["rows"] if r["failed"]] == ["duration"]
    assert verdict["failed_syscalls"] == []
    # A looser tolerance on the command line lets the same run pass.
    code, verdict = _verdict(path, "sh", "-c", "sleep 0.5; true",
                             extra=("--tolerance", "duration=20"))
    assert (code, verdict["verdict"]) == (0, "pass")


def test_two_captures_differ_only_in_measured_fields(tmp_path: Path, fixture_bin: Path) -> None:
    # No threads: pthread_join's futex calls vary with timing, which is the workload's
    # own noise, not the file's; a single-threaded run makes identical calls each time.
    cmd = (str(fixture_bin), "exact", "50", "0")
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    a, b = _capture(first, *cmd), _capture(second, *cmd)
    assert a.pop("measured").keys() == b.pop("measured").keys()
    assert json.dumps(a, indent=2, sort_keys=True) == json.dumps(b, indent=2, sort_keys=True)
    for path in (first, second):  # the file is exactly the deterministic rendering
        assert path.read_text() == json.dumps(json.loads(path.read_text()), indent=2,
                                              sort_keys=True) + "\n"


def test_update_shows_the_diff_then_rewrites(tmp_path: Path, fixture_bin: Path) -> None:
    path = tmp_path / "exact.golden.json"
    _capture(path, str(fixture_bin), "exact", "10", "0", runs=1)
    old = json.loads(path.read_text())
    old["tolerances"]["syscalls"]["brk"] = "5"  # a reviewer's override survives updates
    path.write_text(json.dumps(old))
    proc = tracerd("golden", "update", str(path), "--runs", "2", "--",
                   str(fixture_bin), "exact", "11", "0")
    assert proc.returncode == 0, proc.stderr
    assert "umask" in proc.stderr and "REGRESSION" in proc.stderr
    assert proc.stderr.endswith(f"tracerd: updated {path} (2 runs)\n")
    new = json.loads(path.read_text())
    assert new["syscalls"]["umask"]["calls"]["median"] == 11
    assert new["tolerances"]["syscalls"] == {**DEFAULT_TOLERANCES["syscalls"], "brk": "5"}


def test_run_save_golden_and_against(tmp_path: Path, fixture_bin: Path) -> None:
    path = tmp_path / "one.golden.json"
    proc = tracerd("run", "--save-golden", str(path), "--", str(fixture_bin), "exact", "5", "0")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(path.read_text())["runs"] == 1
    same = tracerd("run", "--against", str(path), "--", str(fixture_bin), "exact", "5", "0")
    assert same.returncode == 0, same.stderr
    worse = tracerd("run", "--against", str(path), "--", str(fixture_bin), "exact", "6", "0")
    assert worse.returncode == EXIT_REGRESSION
    assert "verdict: REGRESSION" in worse.stderr


def test_corrupt_golden_exits_65_naming_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.golden.json"
    path.write_text('{"schema": "tracerd.golden/v2", "command": ["true"]')
    proc = tracerd("golden", "compare", str(path), "--", "true")
    assert proc.returncode == 65
    assert proc.stderr == f"tracerd: {path}: truncated JSON (ends at line 1 before the " \
                          "document is complete)\n"
    path.write_text('{"schema": "tracerd.golden/v2"}')
    proc = tracerd("run", "--against", str(path), "--", "true")
    assert (proc.returncode, proc.stderr) == (65, f"tracerd: {path}: field 'command' is missing\n")
    proc = tracerd("golden", "compare", str(tmp_path / "absent.json"), "--", "true")
    assert proc.returncode == 66 and proc.stderr.count("\n") == 1
    # A v1 file (peak RSS from getrusage) is refused with the way out; update reuses its
    # command.
    old = {"schema": "tracerd.golden/v1", "command": ["true"],
           "tolerances": {**DEFAULT_TOLERANCES, "duration": {"ratio": 7.0, "slack_ms": 900}}}
    path.write_text(json.dumps(old))
    proc = tracerd("golden", "compare", str(path))
    assert proc.returncode == 65 and "golden update" in proc.stderr
    proc = tracerd("golden", "update", str(path), "--runs", "1")
    assert proc.returncode == 0, proc.stderr
    new = json.loads(path.read_text())
    assert new["command"] == ["true"] and new["schema"] == "tracerd.golden/v2"
    assert new["tolerances"]["duration"] == {"ratio": 7.0, "slack_ms": 900}  # kept


MIB = 1024  # KiB


def test_peak_rss_is_the_commands_own(tmp_path: Path, fixture_bin: Path) -> None:
    # taskstats/VmHWM of the exec'd image: a tiny command reads a few MiB, not a copy of
    # tracerd (getrusage's ru_maxrss would say tens of MiB for `true`).
    tiny = _capture(tmp_path / "true.json", "true", runs=2)
    assert 0 < tiny["measured"]["peak_rss_kib"]["max"] < 8 * MIB
    path = tmp_path / "touch.json"
    g = _capture(path, str(fixture_bin), "touch", "32", runs=2)
    assert 32 * MIB <= g["measured"]["peak_rss_kib"]["min"] <= 40 * MIB
    # Three times the memory and the same calls: only peak RSS fails (duration loosened,
    # touching pages takes time).
    code, verdict = _verdict(path, str(fixture_bin), "touch", "96",
                             extra=("--tolerance", "duration=50"))
    assert code == EXIT_REGRESSION
    assert [r["kind"] for r in verdict["rows"] if r["failed"]] == ["peak_rss"]
    assert verdict["failed_syscalls"] == []


def test_golden_through_the_daemon_and_from_a_session(tmp_path: Path, fixture_bin: Path) -> None:
    dm = Daemon(tmp_path).wait_ready()
    try:
        path = tmp_path / "remote.golden.json"
        cmd = (str(fixture_bin), "exact", "20", "0")
        proc = tracerd("golden", "capture", str(path), "--runs", "2", "--remote", dm.socket,
                       "--", *cmd)
        assert proc.returncode == 0, proc.stderr
        g = json.loads(path.read_text())
        assert g["syscalls"]["getppid"]["calls"] == {"median": 120, "min": 120, "max": 120}
        assert g["measured"]["peak_rss_kib"] is not None  # the daemon measured it
        # This test is about counts through the daemon: the measured fields (a run of a
        # few ms, peak RSS from taskstats) get wide tolerances, as a loaded CI machine
        # tripped one once; their own checks are test_slower_run_trips_duration_not_counts
        # and the peak RSS tests.
        code, verdict = _verdict(path, *cmd, extra=(
            "--remote", dm.socket, "--tolerance", "duration_slack_ms=10000",
            "--tolerance", "rss=100"))
        assert (code, verdict["verdict"]) == (0, "pass"), json.dumps(verdict)
        code, verdict = _verdict(path, str(fixture_bin), "exact", "21", "0",
                                 extra=("--remote", dm.socket))
        assert code == EXIT_REGRESSION and "getppid" in verdict["failed_syscalls"]

        # From a finished session's report: the last run above (exact 21) regressed.
        with dm.client() as c:
            done = [s for s in c.list() if list(s.target.argv[1:]) == ["exact", "21", "0"]]
        assert len(done) == 1
        sid = done[0].id
        proc = tracerd("golden", "compare", str(path), "--session", sid, "--remote", dm.socket,
                       "--json")
        assert proc.returncode == EXIT_REGRESSION, proc.stderr
        assert "getppid" in json.loads(proc.stderr)["failed_syscalls"]
        again = tmp_path / "session.golden.json"
        proc = tracerd("golden", "capture", str(again), "--session", sid, "--remote", dm.socket)
        assert proc.returncode == 0, proc.stderr
        s = json.loads(again.read_text())
        assert (s["runs"], s["command"]) == (1, [str(fixture_bin), "exact", "21", "0"])
        assert s["syscalls"]["getppid"]["calls"]["median"] == 126

        missing = tracerd("golden", "compare", str(path), "--session", "nosuch",
                          "--remote", dm.socket)
        assert missing.returncode == 67 and missing.stderr.count("\n") == 1
        with dm.client() as c:
            live = c.start_pid(os.getpid())
        running = tracerd("golden", "capture", str(again), "--session", live.id,
                          "--remote", dm.socket)
        assert running.returncode == 65 and "still running" in running.stderr
    finally:
        assert dm.stop() == 0
