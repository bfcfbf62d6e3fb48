"""OTLP export (tracerd._otlp) against a real OTLP/gRPC receiver started by each test.

The receiver is a grpc server on 127.0.0.1 implementing the collector's published trace
and metrics service definitions (opentelemetry-proto); it keeps every request it gets, so
the tests assert on exactly the protobufs a collector would receive.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import free_port
from opentelemetry.proto.trace.v1 import trace_pb2
from otlp_receiver import Receiver, serve_receiver

import tracerd
from tracerd._budgets import Result
from tracerd._metrics import Snapshot, SyscallTotals
from tracerd._otlp import MAX_SYSCALL_ATTRIBUTES, OtlpConfig, OtlpExporter
from tracerd._sessions import (
    FOLDED_PID,
    ExecRuleTarget,
    PidTarget,
    SessionOptions,
    SessionSummary,
    State,
)
from tracerd.model import Drops, ExitStatus, ProcessInfo, Report, SyscallStats

NAMES = {0: "read", 1: "write", 257: "openat"}


def name_of(nr: int) -> str:
    return NAMES.get(nr, f"syscall_{nr}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from serve_receiver()


@pytest.fixture
def exporters() -> Iterator[list[OtlpExporter]]:
    """Exporters a test made, closed at the end even when the test fails."""
    made: list[OtlpExporter] = []
    yield made
    for e in made:
        e.close()


def _exporter(made: list[OtlpExporter], cfg: OtlpConfig,
              metrics: Callable[[], Snapshot] | None = None) -> OtlpExporter:
    e = OtlpExporter(cfg, metrics, name_of)
    made.append(e)
    return e


def _value(v: Any) -> Any:
    """An OTLP AnyValue as plain Python."""
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


# --------------------------------------------------------------- a session


def _session(rule: str = "build", now_ns: int | None = None
             ) -> tuple[SessionSummary, Report, int, int]:
    end = time.monotonic_ns() if now_ns is None else now_ns
    start = end - 2_000_000_000
    make = ProcessInfo(pid=100, ppid=1, comm="make", argv=["make", "-j2"],
                       filename="/usr/bin/make", start_ns=start, end_ns=end - 1000,
                       exit=ExitStatus(code=2), peak_rss_bytes=1 << 20,
                       syscalls={0: SyscallStats(calls=10, errors=1, total_ns=5000),
                                 1: SyscallStats(calls=3, total_ns=1_500_000_000)})
    cc = ProcessInfo(pid=101, ppid=100, comm="cc", argv=["cc", "-c", "a.c"],
                     start_ns=start + 1000,
                     syscalls={0: SyscallStats(calls=5, total_ns=1000),
                               257: SyscallStats(calls=7, errors=7, total_ns=7000)})
    failed = Result(name="max_openat", type="syscall_count", passed=False,
                    message="openat: 7 > 5", actual_value=7, expected_value=5, action="fail",
                    enabled=True, fail_on_violation=True, first_failed_ns=start + 500_000_000,
                    pid=101, enforcement="user")
    passed = Result(name="max_read", type="syscall_count", passed=True, message="ok",
                    actual_value=15, expected_value=100, action="fail", enabled=True,
                    fail_on_violation=True)
    report = Report(command=["make", "-j2"], arch="x86_64", kernel="6.1.0", root_pid=100,
                    start_ns=start, end_ns=end, exit=ExitStatus(code=2),
                    processes={100: make, 101: cc},
                    drops=Drops(stats_full=3, events_lost=1), budget=[failed, passed])
    summary = SessionSummary(id="s-1", state=State.FINISHED,
                             target=ExecRuleTarget(comm="make"),
                             options=SessionOptions(label="ci"), owner="alice",
                             start_ns=start, end_ns=end, end_reason="exited", processes=2,
                             calls=25, rule=rule)
    return summary, report, start, end


# ------------------------------------------------------------------- traces


def test_session_exported_as_trace(receiver: Receiver, exporters: list[OtlpExporter]) -> None:
    exp = _exporter(exporters, OtlpConfig(endpoint=f"127.0.0.1:{receiver.port}", insecure=True,
                                          service_name="test-svc", metrics_interval_s=0))
    summary, report, _, _ = _session()
    wall_before = time.time_ns()
    exp.export_session(summary, report)
    assert exp.flush(timeout_s=5)

    got = receiver.spans()
    assert len(got) == 3
    assert len({span.trace_id for _, _, span in got}) == 1
    sessions = [(r, sc, s) for r, sc, s in got if s.name == "tracerd.session"]
    assert len(sessions) == 1
    resource, scope, root = sessions[0]
    children = [s for _, _, s in got if s.name == "tracerd.process"]
    assert len(children) == 2
    assert root.parent_span_id == b""
    assert all(c.parent_span_id == root.span_id for c in children)

    res = _attrs(resource.attributes)
    assert res["service.name"] == "test-svc"
    assert res["host.name"] == socket.gethostname()
    assert res["service.version"] == tracerd.__version__
    assert res["tracerd.rule"] == "build"
    assert scope.name == "tracerd"

    # Epoch nanoseconds: the session ended about now and lasted exactly 2 s.
    assert abs(root.end_time_unix_nano - wall_before) < 5_000_000_000
    assert root.end_time_unix_nano - root.start_time_unix_nano == 2_000_000_000

    a = _attrs(root.attributes)
    assert a["tracerd.session.id"] == "s-1"
    assert a["tracerd.session.owner"] == "alice"
    assert a["tracerd.session.state"] == "finished"
    assert a["tracerd.session.end_reason"] == "exited"
    assert a["tracerd.session.label"] == "ci"
    assert a["process.command_args"] == ["make", "-j2"]
    assert a["tracerd.calls"] == 25
    assert a["tracerd.errors"] == 8
    assert a["tracerd.processes"] == 2
    assert a["tracerd.drops.stats_full"] == 3
    assert a["tracerd.drops.events_lost"] == 1
    assert a["tracerd.drops.pid_out_of_range"] == 0
    assert a["tracerd.exit.code"] == 2
    assert a["tracerd.syscall.read.calls"] == 15
    assert a["tracerd.syscall.read.errors"] == 1
    assert a["tracerd.syscall.read.seconds"] == pytest.approx(6e-6)
    assert a["tracerd.syscall.write.seconds"] == pytest.approx(1.5)
    assert a["tracerd.syscall.openat.errors"] == 7
    assert a["tracerd.syscalls.omitted"] == 0
    assert root.dropped_attributes_count == 0

    assert root.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert "max_openat" in root.status.message
    assert len(root.events) == 1  # the passing assertion is no event
    ev = root.events[0]
    assert ev.name == "tracerd.budget.violation"
    assert ev.time_unix_nano == root.start_time_unix_nano + 500_000_000
    e = _attrs(ev.attributes)
    assert e["tracerd.assertion.name"] == "max_openat"
    assert e["tracerd.assertion.type"] == "syscall_count"
    assert e["tracerd.assertion.message"] == "openat: 7 > 5"
    assert e["tracerd.assertion.action"] == "fail"
    assert e["tracerd.assertion.enforcement"] == "user"
    assert e["process.pid"] == 101

    by_pid = {_attrs(c.attributes)["process.pid"]: c for c in children}
    make, cc = by_pid[100], by_pid[101]
    m = _attrs(make.attributes)
    assert m["process.parent_pid"] == 1
    assert m["process.executable.name"] == "make"
    assert m["process.command_args"] == ["make", "-j2"]
    assert m["process.exit.code"] == 2
    assert m["tracerd.peak_rss_bytes"] == 1 << 20
    assert m["tracerd.syscall.read.calls"] == 10
    assert m["tracerd.syscall.write.calls"] == 3
    assert "tracerd.syscall.openat.calls" not in m
    assert make.start_time_unix_nano == root.start_time_unix_nano
    assert make.end_time_unix_nano == root.end_time_unix_nano - 1000
    c = _attrs(cc.attributes)
    assert c["process.parent_pid"] == 100
    assert c["process.executable.name"] == "cc"
    assert "process.exit.code" not in c and "tracerd.peak_rss_bytes" not in c
    assert c["tracerd.syscall.openat.calls"] == 7
    assert c["tracerd.syscall.openat.errors"] == 7
    assert cc.start_time_unix_nano == root.start_time_unix_nano + 1000
    assert cc.end_time_unix_nano == root.end_time_unix_nano  # still running: session's end


def test_rules_become_resources_and_folded_entry(receiver: Receiver,
                                                 exporters: list[OtlpExporter]) -> None:
    exp = _exporter(exporters, OtlpConfig(endpoint=f"127.0.0.1:{receiver.port}", insecure=True,
                                          metrics_interval_s=0))
    s1, r1, _, _ = _session(rule="build")
    s2, r2, _, end = _session(rule="")
    s2.target = PidTarget(pid=100)
    r2.processes[FOLDED_PID] = ProcessInfo(pid=FOLDED_PID, comm="(exited, folded)",
                                           start_ns=0, end_ns=end,
                                           syscalls={1: SyscallStats(calls=4)})
    r2.budget = []
    exp.export_session(s1, r1)
    exp.export_session(s2, r2)
    assert exp.flush(timeout_s=5)

    got = receiver.spans()
    roots = {_attrs(res.attributes)["tracerd.rule"]: s for res, _, s in got
             if s.name == "tracerd.session"}
    assert set(roots) == {"build", ""}
    assert roots["build"].trace_id != roots[""].trace_id
    assert roots[""].status.code == trace_pb2.Status.STATUS_CODE_UNSET
    assert not roots[""].events
    kids = [s for _, _, s in got if s.parent_span_id == roots[""].span_id]
    assert len(kids) == 3
    folded = [k for k in kids if _attrs(k.attributes).get("tracerd.process.folded")]
    assert len(folded) == 1
    f = _attrs(folded[0].attributes)
    assert "process.pid" not in f  # pid 0 is no process
    assert f["tracerd.syscall.write.calls"] == 4
    assert folded[0].start_time_unix_nano == roots[""].start_time_unix_nano  # unknown start


def test_syscall_attributes_capped_rest_counted(receiver: Receiver,
                                                exporters: list[OtlpExporter]) -> None:
    exp = _exporter(exporters, OtlpConfig(endpoint=f"127.0.0.1:{receiver.port}", insecure=True,
                                          metrics_interval_s=0))
    summary, report, _, _ = _session()
    n = MAX_SYSCALL_ATTRIBUTES + 6
    report.processes = {100: ProcessInfo(
        pid=100, start_ns=report.start_ns,
        syscalls={1000 + i: SyscallStats(calls=i + 1) for i in range(n)})}
    report.budget = []
    exp.export_session(summary, report)
    assert exp.flush(timeout_s=5)

    root = next(s for _, _, s in receiver.spans() if s.name == "tracerd.session")
    a = _attrs(root.attributes)
    listed = {k.split(".")[2] for k in a if k.startswith("tracerd.syscall.")}
    # The most called are listed; the six least called (1..6 calls) are counted.
    assert listed == {f"syscall_{1000 + i}" for i in range(6, n)}
    assert a["tracerd.syscalls.omitted"] == 6
    assert a["tracerd.syscalls.omitted_calls"] == 21
    assert a["tracerd.calls"] == n * (n + 1) // 2
    assert root.dropped_attributes_count == 0  # the span limits fit the cap


def _self_signed(tmp: Path) -> tuple[bytes, bytes, Path]:
    from cryptography import x509  # noqa: PLC0415 - a dev dependency, only this test needs it
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    ca = tmp / "ca.pem"
    ca.write_bytes(cert_pem)
    return key_pem, cert_pem, ca


def test_tls_with_ca_file_and_headers(tmp_path: Path, exporters: list[OtlpExporter]) -> None:
    key_pem, cert_pem, ca = _self_signed(tmp_path)
    served = serve_receiver(grpc.ssl_server_credentials([(key_pem, cert_pem)]))
    rx = next(served)
    try:
        exp = _exporter(exporters, OtlpConfig(
            endpoint=f"127.0.0.1:{rx.port}", ca_file=str(ca),
            headers=(("authorization", "Bearer t0ken"),), metrics_interval_s=0))
        summary, report, _, _ = _session()
        exp.export_session(summary, report)
        assert exp.flush(timeout_s=5)
        assert len(rx.spans()) == 3
        assert rx.metadata[0]["authorization"] == "Bearer t0ken"
    finally:
        served.close()


def test_tls_without_the_ca_fails_flush(tmp_path: Path,
                                        exporters: list[OtlpExporter]) -> None:
    key_pem, cert_pem, _ = _self_signed(tmp_path)
    served = serve_receiver(grpc.ssl_server_credentials([(key_pem, cert_pem)]))
    rx = next(served)
    try:
        # System roots do not trust the self-signed certificate: nothing may arrive.
        exp = _exporter(exporters, OtlpConfig(endpoint=f"127.0.0.1:{rx.port}",
                                              metrics_interval_s=0, timeout_s=1))
        summary, report, _, _ = _session()
        exp.export_session(summary, report)
        assert not exp.flush(timeout_s=3)
        assert not rx.traces
    finally:
        served.close()


# ------------------------------------------------------------------ metrics


def _snapshot() -> Snapshot:
    return Snapshot(
        syscalls={("build", "read"): SyscallTotals(calls=15, errors=1, seconds=0.25),
                  ("", "openat"): SyscallTotals(calls=7, errors=7, seconds=0.5)},
        sessions={"running": 2, "finished": 5},
        sessions_started={"build": 6, "": 1},
        violations={("build", "max_openat"): 3},
        drops={"stats_full": 4, "events_lost": 0},
        tracked_pids=9, watchers=1, drains=100, drain_seconds=1.25)


def _metrics(rx: Receiver) -> dict[str, Any]:
    """Metric name -> the latest received Metric of that name."""
    out: dict[str, Any] = {}
    for req in rx.metrics:
        for rm in req.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    out[m.name] = m
    return out


def _points(m: Any) -> dict[tuple[tuple[str, Any], ...], Any]:
    kind = m.WhichOneof("data")
    pts = getattr(m, kind).data_points
    return {tuple(sorted(_attrs(p.attributes).items())):
            (p.as_int if p.WhichOneof("value") == "as_int" else p.as_double) for p in pts}


def _check_metrics(rx: Receiver) -> None:
    ms = _metrics(rx)
    assert {"tracerd.syscalls", "tracerd.syscall.errors", "tracerd.syscall.seconds",
            "tracerd.sessions", "tracerd.sessions_started", "tracerd.budget.violations",
            "tracerd.drops", "tracerd.drain.seconds", "tracerd.drains",
            "tracerd.tracked_pids", "tracerd.watchers"} <= set(ms)
    calls = ms["tracerd.syscalls"]
    assert calls.sum.is_monotonic
    assert _points(calls) == {(("rule", "build"), ("syscall", "read")): 15,
                              (("rule", ""), ("syscall", "openat")): 7}
    assert _points(ms["tracerd.syscall.errors"])[(("rule", ""), ("syscall", "openat"))] == 7
    assert _points(ms["tracerd.syscall.seconds"])[
        (("rule", "build"), ("syscall", "read"))] == pytest.approx(0.25)
    assert ms["tracerd.syscall.seconds"].unit == "s"
    assert ms["tracerd.sessions"].WhichOneof("data") == "gauge"
    assert _points(ms["tracerd.sessions"]) == {(("state", "running"),): 2,
                                               (("state", "finished"),): 5}
    assert _points(ms["tracerd.budget.violations"]) == {
        (("assertion", "max_openat"), ("rule", "build")): 3}
    assert _points(ms["tracerd.drops"]) == {(("kind", "stats_full"),): 4,
                                            (("kind", "events_lost"),): 0}
    assert _points(ms["tracerd.drain.seconds"]) == {(): pytest.approx(1.25)}
    assert _points(ms["tracerd.tracked_pids"]) == {(): 9}
    for m in ms.values():
        for attrs in _points(m):
            assert "pid" not in dict(attrs)
    res = _attrs(rx.metrics[-1].resource_metrics[0].resource.attributes)
    assert res["service.name"] == "tracerd"
    assert res["host.name"] == socket.gethostname()
    assert "tracerd.rule" not in res


def test_metrics_exported_periodically(receiver: Receiver,
                                       exporters: list[OtlpExporter]) -> None:
    _exporter(exporters, OtlpConfig(endpoint=f"127.0.0.1:{receiver.port}", insecure=True,
                                    metrics_interval_s=0.2), _snapshot)
    assert receiver.wait_metrics(5)  # no flush: the reader's own tick sent them
    _check_metrics(receiver)


def test_metrics_one_snapshot_per_collection(receiver: Receiver,
                                             exporters: list[OtlpExporter]) -> None:
    reads = 0

    def source() -> Snapshot:
        nonlocal reads
        reads += 1
        return _snapshot()

    # An interval far beyond the test: only flush() collects.
    exp = _exporter(exporters, OtlpConfig(endpoint=f"127.0.0.1:{receiver.port}",
                                          insecure=True, metrics_interval_s=3600), source)
    assert exp.flush(timeout_s=5)
    assert reads == 1  # one snapshot fed every instrument
    _check_metrics(receiver)
    assert exp.flush(timeout_s=5)
    assert reads == 2


def test_no_metrics_without_source_or_interval(receiver: Receiver,
                                               exporters: list[OtlpExporter]) -> None:
    called: list[int] = []

    def source() -> Snapshot:
        called.append(1)
        return _snapshot()

    exp = _exporter(exporters, OtlpConfig(endpoint=f"127.0.0.1:{receiver.port}", insecure=True,
                                          metrics_interval_s=0), source)
    assert exp.flush(timeout_s=5)
    assert not called and not receiver.metrics


# ------------------------------------------------------------ no receiver


def test_unreachable_endpoint_neither_raises_nor_blocks() -> None:
    cfg = OtlpConfig(endpoint=f"127.0.0.1:{free_port()}", insecure=True,
                     metrics_interval_s=0.2, timeout_s=1.0)
    exp = OtlpExporter(cfg, _snapshot, name_of)
    try:
        summary, report, _, _ = _session()
        t0 = time.monotonic()
        for _ in range(20):
            exp.export_session(summary, report)
        assert time.monotonic() - t0 < 1.0  # queued only; no connection attempt inline
        assert not exp.flush(timeout_s=3)  # reports the loss instead of raising
    finally:
        t0 = time.monotonic()
        exp.close()
        assert time.monotonic() - t0 < cfg.timeout_s + 2.0
    exp.close()  # idempotent
    exp.export_session(summary, report)  # after close: ignored, no error
    assert not exp.flush(timeout_s=1)


def test_recorded_wall_clock_start_is_kept(receiver: Receiver,
                                           exporters: list[OtlpExporter]) -> None:
    exp = _exporter(exporters, OtlpConfig(endpoint=f"127.0.0.1:{receiver.port}", insecure=True,
                                          metrics_interval_s=0))
    # As read back from the history store: monotonic times of another boot.
    summary, report, _, _ = _session(now_ns=50_000_000_000)
    summary.start_unix_ns = 1_700_000_000_000_000_000
    exp.export_session(summary, report)
    assert exp.flush(timeout_s=5)
    root = next(s for _, _, s in receiver.spans() if s.name == "tracerd.session")
    assert root.start_time_unix_nano == 1_700_000_000_000_000_000
    assert root.end_time_unix_nano == 1_700_000_000_000_000_000 + 2_000_000_000
    assert root.events[0].time_unix_nano == root.start_time_unix_nano + 500_000_000
