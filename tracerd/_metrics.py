"""The daemon's metrics as plain data, and their Prometheus view. No grpc, no bcc.

The hub produces a :class:`Snapshot` on demand (a scrape, an OTLP export tick); the
exporters only rename it. Labels are bounded by configuration, never by traffic:
``rule`` is a watch rule's name (``""`` for sessions clients started), ``syscall`` a
name from the syscall table, ``assertion`` a budget assertion's name. No pid label.

Counters are cumulative over the daemon's life: a running session's counts are added
live, and when it finishes they move into the totals (its final report counts at least
what any earlier scrape saw, so the sum never goes down).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

#: (rule, syscall name)
SyscallKey = tuple[str, str]


@dataclass
class SyscallTotals:
    calls: int = 0
    errors: int = 0
    seconds: float = 0.0


@dataclass
class Snapshot:
    """Everything /metrics and the OTLP metric export show, read at one instant."""

    #: (rule, syscall) -> calls, errors and time in the syscall
    syscalls: dict[SyscallKey, SyscallTotals] = field(default_factory=dict)
    #: "running" / "finished" / "interrupted" -> sessions in memory in that state
    sessions: dict[str, int] = field(default_factory=dict)
    #: rule -> sessions started since the daemon started
    sessions_started: dict[str, int] = field(default_factory=dict)
    #: (rule, assertion) -> violations (an assertion fails at most once per session)
    violations: dict[tuple[str, str], int] = field(default_factory=dict)
    #: what was lost, by kind (stats_full, events_lost, pid_out_of_range,
    #: syscall_events_lost, watch_updates_missed, pids_over_limit, history_dropped, ...)
    drops: dict[str, int] = field(default_factory=dict)
    tracked_pids: int = 0
    watchers: int = 0
    drains: int = 0  #: drain passes (Hub.step) since start
    drain_seconds: float = 0.0  #: time spent in them, lock held (not the poll wait)
    #: the BPF programs' own run time and runs; None unless kernel.bpf_stats_enabled=1
    bpf_run_seconds: dict[str, float] | None = None
    bpf_run_count: dict[str, int] | None = None


class PrometheusCollector:
    """A prometheus_client collector reading a fresh :class:`Snapshot` per scrape."""

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self.source = source

    def describe(self) -> list[object]:
        return []  # no fixed description: series are computed per scrape

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import (  # noqa: PLC0415 - only the daemon needs it
            CounterMetricFamily,
            GaugeMetricFamily,
        )

        s = self.source()
        calls = CounterMetricFamily("tracerd_syscalls", "Syscalls counted, by watch rule "
                                    "('' for client sessions) and syscall",
                                    labels=["rule", "syscall"])
        errors = CounterMetricFamily("tracerd_syscall_errors", "Syscalls that returned an "
                                     "error", labels=["rule", "syscall"])
        secs = CounterMetricFamily("tracerd_syscall_seconds", "Time spent in syscalls",
                                   labels=["rule", "syscall"])
        for (rule, name), t in sorted(s.syscalls.items()):
            calls.add_metric([rule, name], t.calls)
            errors.add_metric([rule, name], t.errors)
            secs.add_metric([rule, name], t.seconds)
        yield from (calls, errors, secs)
        sessions = GaugeMetricFamily("tracerd_sessions", "Sessions held in memory, by state",
                                     labels=["state"])
        for state, n in sorted(s.sessions.items()):
            sessions.add_metric([state], n)
        yield sessions
        started = CounterMetricFamily("tracerd_sessions_started", "Sessions started, by "
                                      "watch rule ('' for client sessions)", labels=["rule"])
        for rule, n in sorted(s.sessions_started.items()):
            started.add_metric([rule], n)
        yield started
        viol = CounterMetricFamily("tracerd_budget_violations", "Budget assertions that "
                                   "failed, by watch rule and assertion",
                                   labels=["rule", "assertion"])
        for (rule, name), n in sorted(s.violations.items()):
            viol.add_metric([rule, name], n)
        yield viol
        drops = CounterMetricFamily("tracerd_drops", "What could not be recorded or "
                                    "delivered, by kind (never silent)", labels=["kind"])
        for kind, n in sorted(s.drops.items()):
            drops.add_metric([kind], n)
        yield drops
        yield GaugeMetricFamily("tracerd_tracked_pids", "Processes tracked in the kernel",
                                value=s.tracked_pids)
        yield GaugeMetricFamily("tracerd_watchers", "Open Watch and StreamEvents streams",
                                value=s.watchers)
        yield CounterMetricFamily("tracerd_drains", "Drain passes", value=s.drains)
        yield CounterMetricFamily("tracerd_drain_seconds", "Time spent draining the kernel "
                                  "maps (lock held)", value=s.drain_seconds)
        if s.bpf_run_seconds is not None and s.bpf_run_count is not None:
            run = CounterMetricFamily("tracerd_bpf_run_seconds", "Run time of each BPF "
                                      "program (kernel.bpf_stats_enabled=1)",
                                      labels=["program"])
            cnt = CounterMetricFamily("tracerd_bpf_runs", "Runs of each BPF program "
                                      "(kernel.bpf_stats_enabled=1)", labels=["program"])
            for prog, v in sorted(s.bpf_run_seconds.items()):
                run.add_metric([prog], v)
            for prog, n in sorted(s.bpf_run_count.items()):
                cnt.add_metric([prog], n)
            yield from (run, cnt)
