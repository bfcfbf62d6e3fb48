"""Production monitoring for real: a daemon with a config file whose watch rules start a
session for every matching exec, a history that survives a restart, SIGHUP reloads,
Prometheus /metrics over HTTP and OTLP export to a real receiver."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, assert_exact_tree, calls, free_port, scrape, wait_for
from otlp_receiver import Receiver, serve_receiver

from tracerd._sessions import SessionSummary, State
from tracerd.client import Client

N = 20  # `exact N 0`: 6N getppid, N failing getpgid/getsid, N umask, 3 processes


def finished(c: Client, rule: str, n: int) -> list[SessionSummary]:
    """Wait until ``n`` sessions of ``rule`` have finished; they, oldest first."""
    def done() -> list[SessionSummary]:
        got = [s for s in c.list(rule=rule) if s.state != State.RUNNING]
        return got if len(got) >= n else []
    return wait_for(done, why=f"{n} finished sessions of rule {rule!r}")  # type: ignore[no-any-return]


@pytest.fixture
def program(fixture_bin: Path, tmp_path: Path) -> Path:
    """A copy of the exact fixture under a name of its own: what the rules watch."""
    exe = tmp_path / "bin" / f"watched{os.getpid() % 100000}"
    exe.parent.mkdir()
    shutil.copy(fixture_bin, exe)
    return exe


def write_config(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.fixture
def monitored(tmp_path: Path, program: Path) -> Iterator[tuple[Daemon, int, Path]]:
    port = free_port()
    cfg = write_config(tmp_path / "tracerd.toml", f"""
metrics = "127.0.0.1:{port}"
[[rule]]
name = "exact"
path = "{program}"
""")
    d = Daemon(tmp_path / "d1", "--config", cfg).wait_ready()
    try:
        yield d, port, Path(cfg)
    finally:
        d.stop()


def run(program: Path, *args: str, relative: bool = False) -> int:
    argv0 = f"./{program.name}" if relative else str(program)
    return subprocess.run([argv0, *(args or ("exact", str(N), "0"))], cwd=program.parent,
                          capture_output=True, timeout=60, check=False).returncode


def test_a_rule_starts_a_session_per_run_exact_and_kept_across_a_restart(
        monitored: tuple[Daemon, int, Path], program: Path, tmp_path: Path) -> None:
    d, port, cfg = monitored
    assert run(program) == 0
    assert run(program) == 0
    assert run(program, relative=True) == 0  # `./name`: the path resolved from its cwd
    with d.client() as c:
        sessions = finished(c, "exact", 3)
        assert len(sessions) == 3
        for s in sessions:
            assert s.rule == "exact" and s.owner == "rule:exact"
            assert s.end_reason == "all processes exited"
            _, report = c.report(s.id)
            # From the exec on: the execve that matched is not counted, the rest exactly.
            assert_exact_tree(report, N, 0)
            assert calls(report, "execve") == (0, 0)
            assert len(report.processes) == 3
        ids = {s.id for s in sessions}
        assert c.info().watch_rules == 1

    m = scrape(f"127.0.0.1:{port}")
    assert m['tracerd_syscalls_total{rule="exact",syscall="getppid"}'] == 3 * 6 * N
    assert m['tracerd_syscall_errors_total{rule="exact",syscall="getpgid"}'] == 3 * N
    assert m['tracerd_sessions_started_total{rule="exact"}'] == 3
    assert m['tracerd_sessions{state="finished"}'] == 3
    assert m['tracerd_drops_total{kind="stats_full"}'] == 0
    assert m["tracerd_drains_total"] > 0 and "tracerd_process_resident_memory_bytes" in m
    assert not [k for k in m if re.search(r"\bpid=", k)], "no pid label: bounded cardinality"

    since = time.time_ns() - 3600 * 10**9
    assert d.stop() == 0
    d2 = Daemon(tmp_path / "d2", "--config", str(cfg), "--state-dir",
                str(tmp_path / "d1" / "state")).wait_ready()
    try:
        with d2.client() as c:
            kept = c.list(since_unix_ns=since)
            assert {s.id for s in kept} == ids
            assert all(s.from_history and s.state == State.FINISHED for s in kept)
            for s in kept:
                _, report = c.report(s.id)
                assert_exact_tree(report, N, 0)
            assert c.list(since_unix_ns=time.time_ns() + 10**9) == []
        out = d2.cli("list", "--since", "1h", "--rule", "exact")
        assert out.returncode == 0 and all(i in out.stdout for i in ids)
    finally:
        d2.stop()


def test_reload_refuses_a_broken_config_and_takes_a_good_one(
        monitored: tuple[Daemon, int, Path], program: Path, fixture_bin: Path) -> None:
    d, _, cfg = monitored
    good = cfg.read_text()
    cfg.write_text(good + "\n[[rule]]\nname = \"broken\"\n")  # no path, comm or cgroup
    d.proc.send_signal(signal.SIGHUP)
    with d.client() as c:
        wait_for(lambda: c.info().config_reloads_refused == 1, why="reload refused")
        assert "reload refused" in d.log() and "give path, comm or cgroup" in d.log()
        assert run(program) == 0  # the old rule still runs
        assert len(finished(c, "exact", 1)) == 1

        other = program.parent / "other"
        shutil.copy(fixture_bin, other)
        cfg.write_text('[[rule]]\nname = "other"\ncomm = "other"\n')
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: c.info().config_reloads == 1, why="reload taken")
        assert run(program) == 0  # its rule is gone: no new session...
        assert run(other) == 0
        # ...which is certain once the later exec's session is seen (execs are read
        # in order).
        assert len(finished(c, "other", 1)) == 1
        assert len(c.list(rule="exact")) == 1
        assert d.proc.poll() is None


def test_budget_violations_alert_or_enforce_per_rule(tmp_path: Path, fixture_bin: Path) -> None:
    budget = tmp_path / "budget.toml"
    budget.write_text('[[assertion]]\nname = "few-getppid"\ntype = "syscall_calls"\n'
                      'syscall_name_pattern = "getppid"\nmax_calls = 5\naction = "kill"\n')
    progs = {}
    for name in ("alerted", "enforced"):
        progs[name] = tmp_path / name
        shutil.copy(fixture_bin, progs[name])
    port = free_port()
    cfg = write_config(tmp_path / "tracerd.toml", f"""
metrics = "127.0.0.1:{port}"
[[rule]]
name = "alerted"
path = "{progs['alerted']}"
budget = "budget.toml"
[[rule]]
name = "enforced"
path = "{progs['enforced']}"
budget = "budget.toml"
actions = ["alert", "enforce"]
""")
    d = Daemon(tmp_path / "d", "--config", cfg).wait_ready()
    try:
        # 1,000 getppid over a second. Reported only: the process runs to its end.
        assert run(progs["alerted"], "paced", "1000", "1000") == 0
        # Enforced: killed (by the kernel once the daemon has put the process under the
        # session's limit, a few milliseconds after its exec: see README, watch rules).
        assert run(progs["enforced"], "paced", "1000", "1000") == -signal.SIGKILL
        with d.client() as c:
            for rule in progs:
                (s,) = finished(c, rule, 1)
                _, report = c.report(s.id)
                (r,) = report.budget
                assert not r.passed and r.name == "few-getppid"
        m = scrape(f"127.0.0.1:{port}")
        for rule in progs:
            key = f'tracerd_budget_violations_total{{assertion="few-getppid",rule="{rule}"}}'
            assert m[key] == 1
        assert "few-getppid failed" in d.log()
    finally:
        d.stop()


def test_each_finished_session_reaches_an_otlp_receiver(
        tmp_path: Path, program: Path) -> None:
    gen = serve_receiver()
    rx: Receiver = next(gen)
    try:
        cfg = write_config(tmp_path / "tracerd.toml", f"""
[otlp]
endpoint = "127.0.0.1:{rx.port}"
insecure = true
service_name = "tracerd-test"
metrics_interval_s = 0.5
[[rule]]
name = "exact"
path = "{program}"
""")
        d = Daemon(tmp_path / "d", "--config", cfg).wait_ready()
        try:
            assert run(program) == 0
            assert run(program) == 0
            with d.client() as c:
                ids = {s.id for s in finished(c, "exact", 2)}

            def sessions() -> list[Any]:
                with rx.cond:
                    return [sp for _, _, sp in rx.spans() if sp.name == "tracerd.session"]
            spans = wait_for(lambda: len(sessions()) >= 2 and sessions(), why="2 session spans")
            assert wait_for(lambda: rx.wait_metrics(0.1), why="metrics exported")
        finally:
            d.stop()
    finally:
        gen.close()

    def attrs(span: Any) -> dict[str, Any]:
        return {a.key: a.value for a in span.attributes}

    assert {attrs(s)["tracerd.session.id"].string_value for s in spans} == ids
    assert len({s.trace_id for s in spans}) == 2  # one trace per session
    everything = rx.spans()
    for s in spans:
        kids = [sp for _, _, sp in everything if sp.parent_span_id == s.span_id]
        assert len(kids) == 3 and all(k.trace_id == s.trace_id for k in kids)
        assert attrs(s)["tracerd.syscall.getppid.calls"].int_value == 6 * N
    resources = {a.key: a.value.string_value for r, _, sp in everything
                 if sp.name == "tracerd.session" for a in r.attributes}
    assert resources["service.name"] == "tracerd-test"
    assert resources["tracerd.rule"] == "exact" and resources["host.name"]
    names = {m.name for req in rx.metrics for rm in req.resource_metrics
             for sm in rm.scope_metrics for m in sm.metrics}
    assert "tracerd.syscalls" in names


def test_bpf_run_time_is_a_metric_when_the_kernel_keeps_it(
        monitored: tuple[Daemon, int, Path], program: Path) -> None:
    _, port, _ = monitored
    knob = Path("/proc/sys/kernel/bpf_stats_enabled")
    before = knob.read_text().strip()
    knob.write_text("0")
    try:
        assert not [k for k in scrape(f"127.0.0.1:{port}") if k.startswith("tracerd_bpf_")]
        knob.write_text("1")
        assert run(program) == 0
        m = scrape(f"127.0.0.1:{port}")
    finally:
        knob.write_text(before)
    runs = {k: v for k, v in m.items() if k.startswith("tracerd_bpf_runs_total")}
    secs = {k: v for k, v in m.items() if k.startswith("tracerd_bpf_run_seconds_total")}
    assert runs and secs
    assert max(runs.values()) >= 6 * N  # sys_enter ran for every getppid at least
    assert max(secs.values()) > 0
