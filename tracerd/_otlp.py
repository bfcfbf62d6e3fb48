"""Optional OTLP/gRPC export: each finished session as a trace, and the daemon's metrics.

A session becomes one ``tracerd.session`` span with one ``tracerd.process`` child span
per process of its report; syscall aggregates are span attributes and failed budget
assertions are span events. The metrics are the :class:`~tracerd._metrics.Snapshot`
that ``/metrics`` shows, read by observable instruments at every export tick.

Everything goes through opentelemetry-sdk and its OTLP/gRPC exporters, so batching,
retries and TLS are the SDK's. :meth:`OtlpExporter.export_session` only builds spans and
queues them (BatchSpanProcessor): it runs on the daemon's drain thread, which must never
wait for the network.

Times: the kernel and the hub count CLOCK_MONOTONIC nanoseconds; OTLP wants Unix epoch
nanoseconds. One offset between the two clocks is used per exported session (from the
wall-clock start the hub recorded, else read at export), so all the spans of one session
move by the same amount and keep their order and durations.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider, ObservableCounter, ObservableGauge
from opentelemetry.sdk.metrics.export import (
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import Status, StatusCode
from opentelemetry.util.types import AttributeValue

from . import __version__
from ._metrics import Snapshot
from ._sessions import FOLDED_PID, SessionSummary
from .model import ExitStatus, ProcessInfo, Report, SyscallStats

__all__ = ["OtlpConfig", "OtlpExporter"]

_log = logging.getLogger("tracerd.otlp")

#: Syscalls listed as attributes per span, the most called first. A process can make
#: several hundred distinct syscalls and each costs three attributes: uncapped, one span
#: could carry over a thousand, which collectors and backends truncate or reject (their
#: per-span attribute limits are commonly 128 to a few hundred). The rest is counted in
#: ``tracerd.syscalls.omitted`` / ``.omitted_calls``, so nothing disappears silently, and
#: the span's ``tracerd.calls`` / ``tracerd.errors`` always cover every syscall.
MAX_SYSCALL_ATTRIBUTES = 64

#: Child spans per session, the processes with the most calls first. A session over a
#: build can see thousands of processes; the span queue (below) would drop spans of
#: later sessions. The rest is counted in ``tracerd.processes.omitted``.
MAX_PROCESS_SPANS = 256

#: argv elements kept per attribute (argv can be huge: a compiler's command line); the
#: rest is counted in ``tracerd.command_args.omitted``. Each element is also cut to
#: MAX_ATTRIBUTE_LENGTH characters by the SDK's span limits.
MAX_ARGS = 128
MAX_ATTRIBUTE_LENGTH = 4096

#: Tracer providers kept, one per watch rule name (see OtlpExporter._tracer). Rule names
#: come from the daemon's configuration, so this is only a guard against a config with
#: very many rules; evicting a provider loses nothing (see there).
MAX_RULE_PROVIDERS = 64

#: Spans waiting for the exporter: a few sessions' worth (MAX_PROCESS_SPANS + 1 each),
#: enough to ride out a collector restart of a few seconds.
SPAN_QUEUE_SIZE = 8192

#: Finished sessions waiting to be turned into spans. Building a session's spans is
#: work (hundreds of attributes); the drain only queues, a worker thread builds.
SESSION_QUEUE_SIZE = 1024

#: Distinct attribute sets per metric stream. The SDK's default (2000) would fold real
#: series into one ``otel.metric.overflow`` point with a handful of rules, since every
#: rule x syscall pair is a series; the labels are bounded by configuration and the
#: syscall table, never by traffic (no pid label), so a high bound is safe.
METRIC_SERIES_LIMIT = 100_000

#: Attributes fixed per session span besides the per-syscall ones, with room to spare.
_FIXED_SPAN_ATTRIBUTES = 64


@dataclass(frozen=True)
class OtlpConfig:
    """Where and how to export; built from the daemon's configuration."""

    endpoint: str  #: "host:port" of an OTLP/gRPC receiver
    insecure: bool = False  #: plaintext; else TLS with ca_file (or the system roots)
    ca_file: str | None = None
    headers: tuple[tuple[str, str], ...] = ()  #: gRPC metadata, e.g. authorization
    service_name: str = "tracerd"
    metrics_interval_s: float = 60.0  #: 0 disables metric export
    timeout_s: float = 10.0  #: per export call (with its retries), and for close()


class _SpanExporter(OTLPSpanExporter):
    """The SDK's exporter, counting failed batches so flush() can say whether all arrived."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.failures = 0
        self._closed = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = super().export(spans)
        if result is not SpanExportResult.SUCCESS:
            self.failures += 1
        return result

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        # close() shuts the exporter down before the processor (to cut short retries to an
        # unreachable receiver); the processor then shuts it down again, which the SDK
        # would log as a warning.
        if not self._closed:
            self._closed = True
            super().shutdown(timeout_millis=timeout_millis, **kwargs)


class _MetricExporter(OTLPMetricExporter):
    """The SDK's exporter, counting failed exports so flush() can say whether all arrived."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.failures = 0

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: Any) -> MetricExportResult:
        result = super().export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        if result is not MetricExportResult.SUCCESS:
            self.failures += 1
        return result


class _SnapshotCache:
    """One Snapshot per collection cycle, shared by every instrument.

    The SDK calls each instrument's callback once per collection, in an order it does not
    promise. A callback that already read the cached snapshot is therefore the first of a
    new cycle and fetches a fresh one; the others of the cycle reuse it. So all the
    instruments of one export agree (calls and errors come from the same instant) and the
    hub is asked once per export, not once per instrument.
    """

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self._source = source
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._read_by: set[str] = set()

    def get(self, instrument: str) -> Snapshot:
        with self._lock:
            if self._snapshot is None or instrument in self._read_by:
                self._snapshot = self._source()
                self._read_by = set()
            self._read_by.add(instrument)
            return self._snapshot


def _run_bounded(fn: Callable[[], bool], timeout_s: float) -> bool:
    """fn() on a helper thread, waiting at most timeout_s; False if it failed or is late.

    The SDK's span force_flush ignores its timeout and blocks for as long as the
    exporter retries, so the bound has to come from outside. A late call goes on in the
    background (daemon thread) and ends with the exporter's own timeout.
    """
    result: list[bool] = []

    def call() -> None:
        try:
            result.append(fn())
        except Exception:
            _log.exception("OTLP flush failed")
            result.append(False)

    t = threading.Thread(target=call, name="tracerd-otlp-flush", daemon=True)
    t.start()
    t.join(max(0.0, timeout_s))
    return bool(result and result[0])


def _exit_attrs(prefix: str, exit: ExitStatus | None) -> dict[str, AttributeValue]:
    if exit is None:
        return {}
    out: dict[str, AttributeValue] = {}
    if exit.code is not None:
        out[f"{prefix}.code"] = exit.code
    if exit.signal is not None:
        out[f"{prefix}.signal"] = exit.signal
        out[f"{prefix}.core_dumped"] = exit.core_dumped
    return out


def _args_attrs(key: str, argv: Sequence[str]) -> dict[str, AttributeValue]:
    if not argv:
        return {}
    out: dict[str, AttributeValue] = {key: list(argv[:MAX_ARGS])}
    if len(argv) > MAX_ARGS:
        out["tracerd.command_args.omitted"] = len(argv) - MAX_ARGS
    return out


def _syscall_attrs(stats: Mapping[int, SyscallStats],
                   name_of: Callable[[int], str]) -> dict[str, AttributeValue]:
    """tracerd.syscall.<name>.calls/.errors/.seconds for the most called syscalls."""
    by_name: dict[str, SyscallStats] = {}
    for nr, st in stats.items():
        if st.calls or st.errors:
            # Merged by name: two numbers could share one (a table's aliases).
            by_name.setdefault(name_of(nr), SyscallStats()).add(st)
    ranked = sorted(by_name.items(), key=lambda kv: (-kv[1].calls, kv[0]))
    out: dict[str, AttributeValue] = {}
    for name, st in ranked[:MAX_SYSCALL_ATTRIBUTES]:
        out[f"tracerd.syscall.{name}.calls"] = st.calls
        out[f"tracerd.syscall.{name}.errors"] = st.errors
        out[f"tracerd.syscall.{name}.seconds"] = st.total_ns / 1e9
    rest = ranked[MAX_SYSCALL_ATTRIBUTES:]
    out["tracerd.syscalls.omitted"] = len(rest)
    out["tracerd.syscalls.omitted_calls"] = sum(st.calls for _, st in rest)
    return out


def _process_attrs(p: ProcessInfo, name_of: Callable[[int], str]) -> dict[str, AttributeValue]:
    out: dict[str, AttributeValue] = {}
    if p.pid == FOLDED_PID:
        # Not a process: the summed counts of exited processes of a session that keeps no
        # per-process detail. pid 0 would read as the kernel's idle task.
        out["tracerd.process.folded"] = True
        out["process.executable.name"] = "(exited, folded)"
    else:
        out["process.pid"] = p.pid
        out["process.parent_pid"] = p.ppid
        if p.comm:
            out["process.executable.name"] = p.comm
    if p.filename:
        out["process.executable.path"] = p.filename
    out.update(_args_attrs("process.command_args", p.argv))
    # process.exit.code is the semantic-conventions key; a signal has no standard key.
    out.update(_exit_attrs("process.exit", p.exit))
    if p.peak_rss_bytes is not None:
        out["tracerd.peak_rss_bytes"] = p.peak_rss_bytes
    out["tracerd.calls"] = sum(st.calls for st in p.syscalls.values())
    out["tracerd.errors"] = sum(st.errors for st in p.syscalls.values())
    out.update(_syscall_attrs(p.syscalls, name_of))
    return out


class OtlpExporter:
    """Exports finished sessions as traces and, optionally, the metrics, over OTLP/gRPC.

    Thread-safe: export_session is called from the drain thread, flush and close from
    others. Nothing here raises into the caller for a network problem; the SDK logs
    failed exports and flush() reports them.
    """

    def __init__(self, cfg: OtlpConfig, metrics: Callable[[], Snapshot] | None,
                 name_of: Callable[[int], str]) -> None:
        self.cfg = cfg
        self._name_of = name_of
        self._lock = threading.Lock()
        self._closed = False
        self._failures_seen = 0
        credentials = None
        if not cfg.insecure:
            # Read now so that a wrong path fails at start-up, not at the first export.
            roots = Path(cfg.ca_file).read_bytes() if cfg.ca_file else None
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
        self._base_attrs: dict[str, AttributeValue] = {
            "service.name": cfg.service_name,
            "service.version": __version__,
            "host.name": socket.gethostname(),
        }
        conn: dict[str, Any] = {"endpoint": cfg.endpoint, "insecure": cfg.insecure,
                                "credentials": credentials, "headers": cfg.headers,
                                "timeout": cfg.timeout_s}
        self._span_exporter = _SpanExporter(**conn)
        # One processor (one queue, one worker thread, one gRPC channel) for all the
        # per-rule tracer providers: a span carries its provider's resource and the OTLP
        # encoder groups spans by resource, so sharing loses nothing.
        self._processor = BatchSpanProcessor(self._span_exporter, max_queue_size=SPAN_QUEUE_SIZE)
        self._limits = SpanLimits(
            max_span_attributes=3 * MAX_SYSCALL_ATTRIBUTES + _FIXED_SPAN_ATTRIBUTES,
            max_events=256, max_event_attributes=32,
            max_span_attribute_length=MAX_ATTRIBUTE_LENGTH)
        self._tracers: OrderedDict[str, trace_api.Tracer] = OrderedDict()
        self._sessions: queue.Queue[tuple[SessionSummary, Report] | None] = queue.Queue(
            SESSION_QUEUE_SIZE)
        self.dropped = 0  #: sessions not exported: the queue was full (the collector lags)
        self._builder = threading.Thread(target=self._build_loop, name="otlp-sessions",
                                         daemon=True)
        self._builder.start()

        self._metric_exporter: _MetricExporter | None = None
        self._meter_provider: MeterProvider | None = None
        if metrics is not None and cfg.metrics_interval_s > 0:
            self._metric_exporter = _MetricExporter(**conn)
            reader = PeriodicExportingMetricReader(
                self._metric_exporter, export_interval_millis=cfg.metrics_interval_s * 1000,
                export_timeout_millis=cfg.timeout_s * 1000,
                cardinality_limits={ObservableCounter: METRIC_SERIES_LIMIT,
                                    ObservableGauge: METRIC_SERIES_LIMIT})
            # No tracerd.rule here: the metrics of all rules share one stream each, with
            # rule as a data point attribute. shutdown_on_exit=False: close() does it,
            # and a second shutdown from atexit would only log a warning.
            self._meter_provider = MeterProvider(
                metric_readers=[reader], resource=Resource.create(self._base_attrs),
                shutdown_on_exit=False)
            self._register_instruments(_SnapshotCache(metrics))

    # ------------------------------------------------------------------ traces

    def _tracer(self, rule: str) -> trace_api.Tracer:
        """The tracer whose resource carries ``tracerd.rule`` = rule.

        A resource describes the entity producing telemetry, and the issue wants the rule
        there (so a backend can filter a rule's traces like a service's). One daemon
        exports the sessions of many rules, and an SDK provider has one fixed resource,
        hence one provider per rule name, created on first use. Providers share the
        processor and are never shut down individually, so evicting one (more than
        MAX_RULE_PROVIDERS rules) drops nothing already queued.
        """
        with self._lock:
            tracer = self._tracers.get(rule)
            if tracer is not None:
                self._tracers.move_to_end(rule)
                return tracer
            # ALWAYS_ON: every session is exported whatever OTEL_TRACES_SAMPLER says.
            provider = TracerProvider(
                sampler=ALWAYS_ON,
                resource=Resource.create({**self._base_attrs, "tracerd.rule": rule}),
                shutdown_on_exit=False, span_limits=self._limits)
            provider.add_span_processor(self._processor)
            tracer = provider.get_tracer("tracerd", __version__)
            self._tracers[rule] = tracer
            while len(self._tracers) > MAX_RULE_PROVIDERS:
                self._tracers.popitem(last=False)
            return tracer

    def export_session(self, summary: SessionSummary, report: Report) -> None:
        """Queue one finished session as a trace; returns at once (called on the drain
        thread with the hub's lock held): the spans are built on a worker thread."""
        if self._closed:
            return
        try:
            self._sessions.put_nowait((summary, report))
        except queue.Full:
            self.dropped += 1
            if self.dropped % 100 == 1:
                _log.warning("OTLP: %d finished sessions not exported (queue full)",
                             self.dropped)

    def _build_loop(self) -> None:
        while True:
            item = self._sessions.get()
            try:
                if item is None:
                    return
                self._export_session(*item)
            except Exception:  # a malformed report must not stop the exports after it
                _log.exception("OTLP export of session %s failed", item[0].id if item else "")
            finally:
                self._sessions.task_done()

    def _export_session(self, summary: SessionSummary, report: Report) -> None:
        if summary.start_unix_ns:
            # The hub noted the wall clock when the session started: anchoring there keeps
            # the recorded start exact, and is the only right offset for a session read back
            # from the history store (its monotonic times may come from an earlier boot).
            offset = summary.start_unix_ns - summary.start_ns
        else:
            offset = time.time_ns() - time.monotonic_ns()
        start = summary.start_ns or report.start_ns
        end = summary.end_ns or report.end_ns or time.monotonic_ns()
        end = max(end, start)
        totals = report.totals()
        attrs: dict[str, AttributeValue] = {
            "tracerd.session.id": summary.id,
            "tracerd.session.owner": summary.owner,
            "tracerd.session.state": summary.state.name.lower(),
            "tracerd.session.end_reason": summary.end_reason,
            "tracerd.calls": sum(st.calls for st in totals.values()),
            "tracerd.errors": sum(st.errors for st in totals.values()),
            "tracerd.processes": summary.processes,
            "tracerd.drops.stats_full": report.drops.stats_full,
            "tracerd.drops.events_lost": report.drops.events_lost,
            "tracerd.drops.pid_out_of_range": report.drops.pid_out_of_range,
            "tracerd.drops.syscall_events_lost": report.drops.syscall_events_lost,
            "tracerd.drops.forks_untracked": report.drops.forks_untracked,
        }
        if summary.options.label:
            attrs["tracerd.session.label"] = summary.options.label
        if report.interrupted:
            attrs["tracerd.session.interrupted"] = report.interrupted
        attrs.update(_args_attrs("process.command_args", report.command))
        attrs.update(_exit_attrs("tracerd.exit", report.exit))
        attrs.update(_syscall_attrs(totals, self._name_of))

        procs = sorted(report.processes.values(),
                       key=lambda p: (-sum(st.calls for st in p.syscalls.values()), p.pid))
        kept = sorted(procs[:MAX_PROCESS_SPANS], key=lambda p: p.pid)
        attrs["tracerd.processes.omitted"] = len(procs) - len(kept)

        tracer = self._tracer(summary.rule)
        span = tracer.start_span("tracerd.session", attributes=attrs, start_time=start + offset)
        # Every session's trace is its own: no ambient context is the parent.
        ctx = trace_api.set_span_in_context(span)
        for p in kept:
            p_start = p.start_ns or start
            p_end = max(p.end_ns or end, p_start)
            child = tracer.start_span("tracerd.process", context=ctx,
                                      attributes=_process_attrs(p, self._name_of),
                                      start_time=p_start + offset)
            child.end(end_time=p_end + offset)

        # Every failed assertion is an event, warnings included; only failures that fail
        # the session (Result.counts) make the span an error, like tracerd's exit status.
        for r in report.budget:
            if r.passed:
                continue
            ev: dict[str, AttributeValue] = {
                "tracerd.assertion.name": r.name,
                "tracerd.assertion.type": r.type,
                "tracerd.assertion.message": r.message,
                "tracerd.assertion.action": r.action,
                "tracerd.assertion.enforcement": r.enforcement,
                "tracerd.assertion.actual": r.actual_value,
                "tracerd.assertion.expected": r.expected_value,
                "tracerd.assertion.fails_session": r.counts,
            }
            if r.pid is not None:
                ev["process.pid"] = r.pid
            ts = r.first_failed_ns if r.first_failed_ns is not None else end
            span.add_event("tracerd.budget.violation", attributes=ev, timestamp=ts + offset)
        if report.budget_failed():
            failed = [r.name for r in report.budget if r.counts]
            span.set_status(Status(StatusCode.ERROR, "budget failed: " + ", ".join(failed)))
        span.end(end_time=end + offset)

    # ----------------------------------------------------------------- metrics

    def _register_instruments(self, cache: _SnapshotCache) -> None:
        assert self._meter_provider is not None
        meter = self._meter_provider.get_meter("tracerd", __version__)

        def observe(name: str, read: Callable[[Snapshot], Iterator[Observation]]
                    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
            def callback(_options: CallbackOptions) -> Iterable[Observation]:
                return list(read(cache.get(name)))
            return callback

        def syscalls(field: str) -> Callable[[Snapshot], Iterator[Observation]]:
            def read(s: Snapshot) -> Iterator[Observation]:
                for (rule, name), t in s.syscalls.items():
                    yield Observation(getattr(t, field), {"rule": rule, "syscall": name})
            return read

        def sessions(s: Snapshot) -> Iterator[Observation]:
            for state, n in s.sessions.items():
                yield Observation(n, {"state": state})

        def started(s: Snapshot) -> Iterator[Observation]:
            for rule, n in s.sessions_started.items():
                yield Observation(n, {"rule": rule})

        def violations(s: Snapshot) -> Iterator[Observation]:
            for (rule, assertion), n in s.violations.items():
                yield Observation(n, {"rule": rule, "assertion": assertion})

        def drops(s: Snapshot) -> Iterator[Observation]:
            for kind, n in s.drops.items():
                yield Observation(n, {"kind": kind})

        def bpf_seconds(s: Snapshot) -> Iterator[Observation]:
            for prog, v in (s.bpf_run_seconds or {}).items():
                yield Observation(v, {"program": prog})

        def bpf_runs(s: Snapshot) -> Iterator[Observation]:
            for prog, n in (s.bpf_run_count or {}).items():
                yield Observation(n, {"program": prog})

        counters: list[tuple[str, str, str, Callable[[Snapshot], Iterator[Observation]]]] = [
            ("tracerd.syscalls", "{call}", "Syscalls counted, by watch rule ('' for "
             "client sessions) and syscall", syscalls("calls")),
            ("tracerd.syscall.errors", "{call}", "Syscalls that returned an error",
             syscalls("errors")),
            ("tracerd.syscall.seconds", "s", "Time spent in syscalls", syscalls("seconds")),
            ("tracerd.sessions_started", "{session}", "Sessions started, by watch rule",
             started),
            ("tracerd.budget.violations", "{violation}", "Budget assertions that failed, by "
             "watch rule and assertion", violations),
            ("tracerd.drops", "{item}", "What could not be recorded or delivered, by kind",
             drops),
            ("tracerd.drains", "{pass}", "Drain passes",
             lambda s: iter([Observation(s.drains)])),
            ("tracerd.drain.seconds", "s", "Time spent draining the kernel maps (lock held)",
             lambda s: iter([Observation(s.drain_seconds)])),
            ("tracerd.bpf.run.seconds", "s", "Run time of each BPF program "
             "(kernel.bpf_stats_enabled=1)", bpf_seconds),
            ("tracerd.bpf.runs", "{run}", "Runs of each BPF program "
             "(kernel.bpf_stats_enabled=1)", bpf_runs),
        ]
        gauges: list[tuple[str, str, str, Callable[[Snapshot], Iterator[Observation]]]] = [
            ("tracerd.sessions", "{session}", "Sessions held in memory, by state", sessions),
            ("tracerd.tracked_pids", "{process}", "Processes tracked in the kernel",
             lambda s: iter([Observation(s.tracked_pids)])),
            ("tracerd.watchers", "{stream}", "Open Watch and StreamEvents streams",
             lambda s: iter([Observation(s.watchers)])),
        ]
        for name, unit, desc, read in counters:
            meter.create_observable_counter(name, callbacks=[observe(name, read)], unit=unit,
                                            description=desc)
        for name, unit, desc, read in gauges:
            meter.create_observable_gauge(name, callbacks=[observe(name, read)], unit=unit,
                                          description=desc)

    # --------------------------------------------------------------- lifecycle

    def _failures(self) -> int:
        n = self._span_exporter.failures
        if self._metric_exporter is not None:
            n += self._metric_exporter.failures
        return n

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Send what is queued (and the metrics now); True if everything since the last
        flush reached the receiver, within timeout_s."""
        if self._closed:
            return False
        deadline = time.monotonic() + timeout_s
        ok = _run_bounded(self._built, timeout_s)
        ok = _run_bounded(self._processor.force_flush, max(0.0, deadline - time.monotonic())
                          ) and ok
        mp = self._meter_provider
        if mp is not None:
            left = deadline - time.monotonic()
            ok = _run_bounded(lambda: mp.force_flush(timeout_millis=left * 1000), left) and ok
        failures = self._failures()
        ok = ok and failures == self._failures_seen
        self._failures_seen = failures
        return ok

    def _built(self) -> bool:
        """Wait until every queued session has been turned into spans."""
        self._sessions.join()
        return True

    def close(self) -> None:
        """Send what is queued and stop, within about cfg.timeout_s even if the receiver
        is unreachable. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        deadline = time.monotonic() + self.cfg.timeout_s
        _run_bounded(self._built, self.cfg.timeout_s)
        try:  # the queue was just emptied, unless the builder is stuck: then give up
            self._sessions.put(None, timeout=max(0.05, deadline - time.monotonic()))
        except queue.Full:
            _log.warning("OTLP: closing with sessions still queued")
        self._builder.join(timeout=max(0.05, deadline - time.monotonic()))
        _run_bounded(self._processor.force_flush, max(0.05, deadline - time.monotonic()))
        # The exporter first: that aborts its retry back-off and cancels a call in flight,
        # so the processor's worker (which it joins) ends at once.
        self._span_exporter.shutdown()
        self._processor.shutdown()  # type: ignore[no-untyped-call]  # the SDK leaves it unannotated
        with self._lock:
            self._tracers.clear()
        if self._meter_provider is not None:
            left = max(0.05, deadline - time.monotonic())
            try:
                # Exports one last time, then shuts the exporter down after `left` at most.
                self._meter_provider.shutdown(timeout_millis=left * 1000)
            except Exception:
                _log.exception("OTLP metrics shutdown failed")
