"""bench/daemon_cost.py: the pure summarising functions (no daemon, no root)."""

from __future__ import annotations

import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import daemon_cost as dc  # bench/ is a directory of scripts, not a package


def window(*, seconds: float = 2.0, cpu_s: float = 0.02, drains: float = 20,
           drain_s: float = 0.01, other: float = 0.0, t0: float = 100.0) -> dict[str, Any]:
    return asdict(dc.Window(t0=t0, seconds=seconds, daemon_cpu_s=cpu_s,
                            daemon_ticks_s=cpu_s, drains=drains, drain_s=drain_s,
                            other_cpus=other))


def test_med_and_iqr_skip_nan() -> None:
    assert dc.med([3.0, math.nan, 1.0, 2.0]) == 2.0
    assert math.isnan(dc.med([]))
    assert dc.iqr([5.0]) == (5.0, 5.0)
    assert dc.iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 4.0)
    lo, hi = dc.iqr([math.nan])
    assert math.isnan(lo) and math.isnan(hi)


def test_rotated_starts_one_later_each_repetition() -> None:
    assert dc.rotated([1, 2, 3], 0) == [1, 2, 3]
    assert dc.rotated([1, 2, 3], 1) == [2, 3, 1]
    assert dc.rotated([1, 2, 3], 4) == [2, 3, 1]
    assert dc.rotated([], 3) == []


def test_paired_deltas_use_only_reps_with_both() -> None:
    reps = [{1: 100.0, 10: 110.0}, {1: 90.0}, {1: 95.0, 10: math.nan}, {1: 80.0, 10: 70.0}]
    assert dc.paired_deltas(reps, 10, 1) == [10.0, -10.0]


def test_verdict_max() -> None:
    assert dc.verdict_max(0.5, 1.0) == "met (50% of it)"
    assert dc.verdict_max(1.5, 1.0, " points") == "missed by 0.50 points (1.5x the target)"
    assert dc.verdict_max(math.nan, 1.0) == "not measured"


def test_flat_verdict() -> None:
    assert dc.flat_verdict(10.0, 500.0).startswith("flat (+2.0%")
    assert dc.flat_verdict(-30.0, 500.0).startswith("not flat (-6.0%")
    assert dc.flat_verdict(math.nan, 500.0) == "not measured"
    assert dc.flat_verdict(1.0, 0.0) == "not measured"


def test_window_between_and_properties() -> None:
    a = dc.Sample(t=10.0, daemon_cpu_s=1.0, daemon_ticks_s=1.0, busy_s=50.0, own_s=20.0,
                  drains=100, drain_s=0.5)
    b = dc.Sample(t=12.0, daemon_cpu_s=1.02, daemon_ticks_s=1.03, busy_s=53.0, own_s=22.5,
                  drains=120, drain_s=0.52)
    w = dc.window_between(a, b)
    assert w.seconds == 2.0
    assert w.cpu_pct == pytest.approx(1.0)
    assert w.drain_ms == pytest.approx(1.0)
    assert w.drain_interval_ms == pytest.approx(100.0)
    assert w.other_cpus == pytest.approx(0.25)  # 3 s busy, 2.5 s ours, over 2 s
    no_drains = dc.Window(t0=0, seconds=1, daemon_cpu_s=0, daemon_ticks_s=0, drains=0,
                          drain_s=0, other_cpus=0)
    assert math.isnan(no_drains.drain_ms) and math.isnan(no_drains.drain_interval_ms)


def test_watch_summary_counts_only_the_window() -> None:
    clients = [
        {"recv": [0.95, 1.05, 1.15, 2.5], "lag_ms": [9.0, 1.0, 2.0, 9.0],
         "missed": [5, 0, 1, 7]},
        {"recv": [1.1], "lag_ms": [3.0], "missed": [0]},
    ]
    s = dc.watch_summary(clients, 1.0, 2.0, 10.0)
    assert s["updates"] == 3 and s["updates_per_s"] == 3.0
    assert s["per_client_median_hz"] == 1.5 and s["per_client_min_hz"] == 1.0
    assert s["share_of_asked"] == pytest.approx(0.15)
    assert s["missed"] == 1
    assert s["lag_ms_median"] == 2.0 and s["lag_ms_p99"] == 3.0
    empty = dc.watch_summary([], 0.0, 1.0, 10.0)
    assert empty["updates"] == 0 and math.isnan(empty["per_client_median_hz"])


def test_summarise_scaling_pairs_by_repetition() -> None:
    runs = []
    # rep 0 runs 10% slower overall than rep 1: the paired delta cancels it.
    for rep, speed in ((0, 1.1), (1, 1.0)):
        for n, ns, drain_s in ((1, 500.0, 0.002), (100, 510.0, 0.02)):
            runs.append({"dim": "procs", "n": n, "rep": rep,
                         "window": window(drain_s=drain_s),
                         "ns": [ns * speed] * 3, "ns_median": ns * speed,
                         "rss_kib": 1024 * (100 + n), "setup_s": 0.1, "drops": {}})
    s = dc.summarise_scaling(runs, [1, 100], hwm_kib=4096)
    top = s["rows"][-1]
    assert top["added_ns"] == pytest.approx((11.0 + 10.0) / 2)
    assert top["drain_ms"] == pytest.approx(1.0)
    # (1.0 ms - 0.1 ms) / 99 processes, in us
    assert top["drain_us_per_unit"] == pytest.approx(900 / 99)
    assert top["rss_mib_first"] == 200
    assert s["verdict"].startswith("flat")


def test_summarise_fanout_added_cpu_per_update() -> None:
    runs = []
    for rep in range(2):
        runs.append({"watchers": 0, "rep": rep, "workers": 0, "window": window(cpu_s=0.02),
                     **dc.watch_summary([], 100.0, 102.0, 10.0)})
        clients = [{"recv": [100.0 + i / 10 for i in range(20)], "lag_ms": [1.0] * 20,
                    "missed": [0] * 20}] * 10
        runs.append({"watchers": 10, "rep": rep, "workers": 1, "window": window(cpu_s=0.06),
                     **dc.watch_summary(clients, 100.0, 102.0, 10.0)})
    f = dc.summarise_fanout(runs, [0, 10], hwm_kib=1)
    ten = f["rows"][1]
    assert ten["updates_per_s"] == pytest.approx(100.0)
    assert ten["added_pct"] == pytest.approx(2.0)
    # 2 % of a core = 20 ms/s over 100 updates/s: 200 us per update
    assert ten["us_per_update"] == pytest.approx(200.0)
    assert ten["share_of_asked"] == pytest.approx(1.0)


def test_summarise_cpu_verdict_and_cost_per_million() -> None:
    runs = [{"rate": 1e6, "loop_calls": 10_000_000, "counted": 9_990_000,
             "idle": window(seconds=3, cpu_s=0.015), "loaded": window(seconds=8, cpu_s=0.06),
             "rss_kib": 2048, "calls_in_window": 8e6, "cpu_s_per_mcalls": 0.06 / 8}] * 5
    c = dc.summarise_cpu(runs, hwm_kib=4096, ready_kib=1024)
    assert c["loaded_pct"] == pytest.approx(0.75)
    assert c["added_pct"] == pytest.approx(0.25)
    assert c["cpu_s_per_mcalls"] == pytest.approx(0.0075)
    assert c["verdict"].startswith("met")


def test_parse_metrics_and_int_list() -> None:
    m = dc.parse_metrics("# HELP x\ntracerd_drains_total 3.0\n"
                         'tracerd_drops_total{kind="a b"} 1.0\nbad line x\n')
    assert m == {"tracerd_drains_total": 3.0, 'tracerd_drops_total{kind="a b"}': 1.0}
    assert dc.int_list("1, 100,10k,1m,10_000") == [1, 100, 10_000, 1_000_000, 10_000]
