"""bench/suite.py: the pure summarising and verdict functions (no BPF, no subprocess)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import suite  # bench/ is a directory of scripts, not a package


def run(mode: str, rep: int, ms: float, *, wl: str = "getppid", slow: bool = False,
        note: str = "") -> suite.Run:
    return suite.Run(wl, mode, rep, int(ms * 1e6), slow=slow, note=note)


def wl(name: str, *, per_syscall: bool = True, time: bool = False) -> suite.Workload:
    size = suite.Size(("x",), 1, 1)
    return suite.Workload(name, name, size, size, per_syscall_verdicts=per_syscall,
                          time_verdict=time)


def test_rotated_starts_one_later_each_repetition() -> None:
    assert suite.rotated(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert suite.rotated(["a", "b", "c"], 1) == ["b", "c", "a"]
    assert suite.rotated(["a", "b", "c"], 4) == ["b", "c", "a"]
    assert suite.rotated([], 2) == []


def test_summarise_pairs_each_repetition_with_its_untraced_run() -> None:
    # 1,000,000 syscalls per run: 1 ms = 1 ns per syscall. Repetition 1 ran slower
    # across the board (a drift): pairing cancels it, the medians of differences hold.
    runs = [run("untraced", -1, 999.0)]  # warm-up: never a figure
    for rep, base in enumerate((200.0, 300.0, 210.0)):
        runs += [run("untraced", rep, base), run("floor", rep, base + 100),
                 run("full", rep, base + 150)]
    rows = suite.summarise(runs, {"getppid": [1_000_000, 10_000]}, {}, ["getppid"],
                           ["untraced", "floor", "full"])
    by = {r["mode"]: r for r in rows}
    assert by["untraced"]["median_ms"] == pytest.approx(210.0)
    assert by["untraced"]["added_ns"] is None
    assert by["floor"]["added_ns"] == pytest.approx(100.0)
    assert by["full"]["added_ns"] == pytest.approx(150.0)
    assert by["full"]["x_floor"] == pytest.approx(1.5)
    assert by["full"]["x_untraced"] == pytest.approx(360 / 210)
    assert by["full"]["reps"] == 3
    assert all(r["status"] == "ok" for r in rows)


def test_summarise_compares_smaller_runs_per_syscall() -> None:
    # strace ran 10,000 syscalls in 50 ms (5 us each) against 1,000,000 untraced in
    # 200 ms (200 ns each): +4,800 ns per syscall, time scaled to the full size.
    runs = [run("untraced", 0, 200.0), run("floor", 0, 300.0),
            run("strace", 0, 50.0, slow=True)]
    rows = suite.summarise(runs, {"getppid": [1_000_000, 10_000]}, {}, ["getppid"],
                           ["untraced", "floor", "strace"])
    st = next(r for r in rows if r["mode"] == "strace")
    assert st["added_ns"] == pytest.approx(4800.0)
    assert st["median_ms"] == pytest.approx(5000.0)
    assert st["x_untraced"] == pytest.approx(25.0)
    assert st["x_floor"] == pytest.approx(48.0)
    assert "10,000 syscalls" in st["note"]


def test_summarise_reports_unusable_and_missing_modes_instead_of_dropping_them() -> None:
    runs = [run("untraced", 0, 200.0), run("floor", 0, 300.0)]
    unusable = {"perf_trace": "unusable: perf: no syscalls tracepoints",
                "bpftrace/getppid": "unusable: counted 3 syscalls"}
    rows = suite.summarise(runs, {"getppid": [1000, 10]}, unusable, ["getppid"],
                           ["untraced", "floor", "perf_trace", "bpftrace", "strace"])
    status = {r["mode"]: r["status"] for r in rows}
    assert status["perf_trace"].startswith("unusable: perf")
    assert status["bpftrace"] == "unusable: counted 3 syscalls"
    assert status["strace"] == "no runs"
    text = suite.render(
        {"date": "d", "kernel": "k", "cpus": 2, "cpu_model": "m", "bpf_jit_enable": "1",
         "loadavg": "0", "loadavg_end": "0", "reps": 1, "kernel_reps": 0,
         "syscalls": {"getppid": [1000, 10]}},
        [wl("getppid")], rows, [], ["a warning"])
    assert "unusable: perf: no syscalls tracepoints" in text
    assert "WARNING: a warning" in text


def test_summarise_without_a_measurable_floor_gives_no_floor_ratio() -> None:
    # Python start-up: the floor's difference drowned in noise (negative).
    runs = [run("untraced", 0, 300.0, wl="python"), run("floor", 0, 290.0, wl="python"),
            run("full", 0, 310.0, wl="python")]
    rows = suite.summarise(runs, {"python": [10_000, 1000]}, {}, ["python"],
                           ["untraced", "floor", "full"])
    assert all(r["x_floor"] is None for r in rows)


def test_verdict_wording() -> None:
    assert suite.verdict(1.2, 1.5, strict=False) == "met (1.20 <= 1.50)"
    assert suite.verdict(1.5, 1.5, strict=False).startswith("met")
    assert suite.verdict(0.5, 0.5, strict=True) == "missed by 0.00 (0 % over)"
    assert suite.verdict(2.29, 1.5, strict=False) == "missed by 0.79 (53 % over)"
    assert suite.verdict(None, 1.5, strict=False) == "n/a"


def rows_for(added: dict[str, float | None], status: dict[str, str] | None = None,
             workload: str = "getppid") -> list[dict[str, object]]:
    labels = {m.key: m.label for m in suite.MODES}
    return [{"workload": workload, "mode": m, "label": labels[m],
             "status": (status or {}).get(m, "ok"), "added_ns": a} for m, a in added.items()]


def test_verdicts_use_the_right_reference_for_each_target() -> None:
    rows = rows_for({"floor_enter": 100.0, "floor": 150.0, "count": 110.0, "full": 300.0,
                     "untracked": 160.0, "syscount": 200.0, "syscount_L": 700.0})
    got = {v["target"]: v for v in suite.verdicts(rows, [], [wl("getppid")])}
    full_floor = got["tracerd full <= 1.5x floor (enter+exit), added ns/syscall"]
    assert full_floor["value"] == pytest.approx(2.0)
    assert full_floor["verdict"] == "missed by 0.50 (33 % over)"
    assert got["tracerd full < 0.5x syscount -L, added ns/syscall"]["value"] == \
        pytest.approx(300 / 700)
    count_enter = got["count-only <= 1.2x floor enter, added ns/syscall"]
    assert count_enter["value"] == pytest.approx(1.1)
    assert count_enter["verdict"].startswith("met")
    assert got["count-only < syscount, added ns/syscall"]["value"] == pytest.approx(0.55)
    assert got["untracked <= 1.15x floor, added ns/syscall"]["verdict"].startswith("met")
    # getppid has no time verdict: that one is for tar and Python start-up.
    assert "tracerd full time within 3 % of floor's (x untraced)" not in got


def test_verdicts_say_why_they_cannot_be_judged() -> None:
    rows = rows_for({"floor_enter": 100.0, "floor": -5.0, "count": 110.0, "full": 300.0,
                     "untracked": 160.0, "syscount": None, "syscount_L": None},
                    status={"syscount": "missing: not installed (apt-get install -y "
                            "bpfcc-tools)", "syscount_L": "unusable: boom"})
    got = {v["target"]: v["verdict"] for v in suite.verdicts(rows, [], [wl("getppid")])}
    assert got["count-only < syscount, added ns/syscall"].startswith(
        "n/a: syscount missing: not installed")
    assert got["tracerd full < 0.5x syscount -L, added ns/syscall"] == \
        "n/a: syscount -L unusable: boom"
    assert got["tracerd full <= 1.5x floor (enter+exit), added ns/syscall"].startswith(
        "n/a: floor added nothing measurable")


def test_time_verdict_is_the_paired_ratio_of_full_to_floor() -> None:
    # Whatever drifts between repetitions, full/floor within each one is 1.02, 1.05, 1.01.
    runs = []
    for rep, (floor, full) in enumerate(((100.0, 102.0), (200.0, 210.0), (100.0, 101.0))):
        runs += [run("untraced", rep, 90.0, wl="tar"), run("floor", rep, floor, wl="tar"),
                 run("full", rep, full, wl="tar")]
    rows = rows_for({"floor": 10.0, "full": 12.0}, workload="tar")
    out = suite.verdicts(rows, runs, [wl("tar", per_syscall=False, time=True)])
    assert len(out) == 1
    assert out[0]["value"] == pytest.approx(1.02)
    assert out[0]["verdict"] == "met (1.02 <= 1.03)"


def test_paired_ratio_ignores_warm_up_and_smaller_runs() -> None:
    runs = [run("full", -1, 500.0), run("floor", -1, 100.0), run("full", 0, 110.0),
            run("floor", 0, 100.0), run("full", 1, 1.0, slow=True), run("floor", 1, 1.0)]
    assert suite.paired_ratio(runs, "getppid", "full", "floor") == [pytest.approx(1.1)]


def test_add_kernel_takes_medians_per_workload_and_mode() -> None:
    rows = [{"workload": "getppid", "mode": "full", "kernel_ns": None, "kernel_share": None},
            {"workload": "getppid", "mode": "syscount", "kernel_ns": None,
             "kernel_share": None}]
    samples = [suite.KernelSample("getppid", "full", rep, ns, 0.99)
               for rep, ns in enumerate((300.0, 280.0, 900.0))]
    suite.add_kernel(rows, samples)
    assert rows[0]["kernel_ns"] == pytest.approx(300.0)
    assert rows[0]["kernel_share"] == pytest.approx(0.99)
    assert rows[1]["kernel_ns"] is None


def test_parse_peers_output() -> None:
    syscount = (b"Tracing syscalls, printing top 1000... Ctrl+C to quit.\n[12:15:30]\n"
                b"SYSCALL                   COUNT        TIME (us)\n"
                b"getppid                  100000        12345.678\n"
                b"futex                       530       795066.871\n\nDetaching...\n")
    assert suite.parse_syscount(syscount) == 100530
    assert suite.parse_syscount(b"SYSCALL   COUNT\nread   7\nwrite  3\n") == 10
    bpftrace = b"Attaching 1 probe...\n\n\n@[19459, 12]: 1\n@[19384, 230]: 41\n@[19459, 0]: 2\n"
    assert suite.parse_bpftrace(bpftrace) == (44, {19459, 19384})
    strace = (b"% time     seconds  usecs/call     calls    errors syscall\n"
              b"------ ----------- ----------- --------- --------- ----------------\n"
              b" 99.00    0.184000           9     20000           getppid\n"
              b"  0.00    0.000000           0         2         2 access\n"
              b"------ ----------- ----------- --------- --------- ----------------\n"
              b"100.00    0.184317           9     20079         3 total\n")
    assert suite.parse_strace(strace) == 20079
    assert suite.parse_strace(b"100.00    0.1           9     20079           total\n") == 20079
    assert suite.parse_strace(b"nothing\n") is None
    perf = (b"\n Summary of events:\n\n timed (21093), 80 events, 0.0%\n\n"
            b"   syscall            calls  errors  total       min       avg       max"
            b"       stddev\n"
            b"   --------------- --------  ------ -------- --------- --------- ---------"
            b"     ------\n"
            b"   wait4                  1      0     3.959     3.959     3.959     3.959"
            b"      0.00%\n"
            b" loop (21094), 399860 events, 100.0%\n"
            b"   getppid           199888      0  2947.636     0.000     0.015     3.959"
            b"      0.22%\n"
            b"LOST 12 events!\n")
    assert suite.parse_perf_trace(perf) == (199889, 12)


def test_check_peer_count() -> None:
    r = run("perf_trace", 0, 1.0, slow=True)
    assert suite.check_peer_count(r, 1000) is None  # nothing counted: nothing to check
    r.counted = 950
    assert suite.check_peer_count(r, 1000) is None
    r.counted = 3
    assert "counted 3 syscalls" in (suite.check_peer_count(r, 1000) or "")


def test_first_line_skips_tool_noise() -> None:
    assert suite.first_line("Attaching 1 probe...\nERROR: no such tracepoint\nmore",
                            "x") == "ERROR: no such tracepoint"
    assert suite.first_line("  \n", "default") == "default"


def test_describe_pids_is_short_whatever_the_count() -> None:
    assert suite.describe_pids({}) == ""
    assert suite.describe_pids({7: "tracerd"}) == "pid 7 (tracerd)"
    many = {1: "tracerd", **{p: "python" for p in range(100, 2100)}, 3000: "bpftrace"}
    assert suite.describe_pids(many) == (
        "pid 1 (tracerd), pid 100 (python), pid 101 (python) and 1999 more "
        "(1998 python, 1 bpftrace)")


def test_kernel_sample_counts_every_program_per_sys_enter_run() -> None:
    before = {"raw_tracepoint__sys_enter": (1000, 10), "raw_tracepoint__sys_exit": (0, 0),
              "tracepoint__sched__sched_process_exec": (50, 1)}
    after = {"raw_tracepoint__sys_enter": (3000, 110), "raw_tracepoint__sys_exit": (5000, 100),
             "tracepoint__sched__sched_process_exec": (1050, 2)}
    s = suite.kernel_sample("w", "full", 0, syscalls=90, before=before, after=after)
    assert s.ns_per_event == pytest.approx((2000 + 5000 + 1000) / 100)
    assert s.share == pytest.approx(0.9)
    assert s.programs["tracepoint__sched__sched_process_exec"] == [1000, 1]
