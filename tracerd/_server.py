"""``tracerd serve``: the gRPC daemon. The servicer is thin: it authenticates, converts
messages (tracerd._convert) and calls the hub (tracerd._sessions), which holds all logic.
"""

from __future__ import annotations

import contextlib
import grp
import ipaddress
import logging
import os
import select
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn, Protocol, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import __version__, _convert, _records, syscalls
from ._config import LOCAL, DaemonConfig, Token, check_transport, load_tokens, match_token
from ._errors import BadInput, TracerdError
from ._history import Entry, History
from ._metrics import PrometheusCollector, Snapshot
from ._otlp import OtlpConfig, OtlpExporter
from ._sessions import (
    Caller,
    ErrorKind,
    Hub,
    RequestError,
    SessionSummary,
    SpawnedTarget,
    State,
    Violation,
    drain_forever,
    since_stats,
)
from ._taskstats import ExitListener
from .model import Report, SyscallStats
from .v1 import tracerd_pb2 as pb
from .v1 import tracerd_pb2_grpc as pb_grpc

log = logging.getLogger("tracerd")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Tracer"].full_name

#: Most sessions one ListSessions answers (ListSessionsRequest.limit is clamped to it).
MAX_LIST = 10_000

_STATUS = {
    ErrorKind.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
}

T = TypeVar("T")


def _peer_is_local(context: grpc.ServicerContext) -> bool:
    """The Unix socket, or TCP from a loopback address (same host, same pid namespace
    assumed: a spawned target's pid must mean the same process to both ends)."""
    peer = context.peer()
    if peer.startswith("unix:"):
        return True
    if peer.startswith(("ipv4:", "ipv6:")):
        host = peer.split(":", 1)[1].rsplit(":", 1)[0].strip("[]")
        with contextlib.suppress(ValueError):
            return ipaddress.ip_address(host).is_loopback
    return False


class Auth:
    """Who a request comes from: a bearer token, the Unix socket, or an mTLS certificate."""

    def __init__(self, tokens: list[Token] | None) -> None:
        self.tokens = tokens

    def caller(self, context: grpc.ServicerContext) -> Caller:
        bearer = None
        for key, value in context.invocation_metadata():
            if key == "authorization":
                text = value if isinstance(value, str) else value.decode(errors="replace")
                scheme, _, secret = text.partition(" ")
                if scheme.lower() != "bearer" or not secret.strip():
                    _abort(context, grpc.StatusCode.UNAUTHENTICATED,
                           "authorization: expected 'Bearer <token>'")
                bearer = secret.strip()
        if bearer is not None:
            found = match_token(self.tokens or [], bearer)
            if found is None:
                _abort(context, grpc.StatusCode.UNAUTHENTICATED, "authorization: unknown token")
            return found
        if context.peer().startswith("unix:"):
            return LOCAL
        names = context.auth_context().get("x509_common_name")
        if self.tokens is None and names:
            # TCP without tokens is only configured with mTLS: the verified client
            # certificate is the identity.
            cn = names[0]
            return Caller(name="mtls:" + (cn.decode(errors="replace")
                                          if isinstance(cn, bytes) else str(cn)))
        _abort(context, grpc.StatusCode.UNAUTHENTICATED,
               "authorization: this listener needs a bearer token")


def _bounded(message: str, most: int = 512) -> str:
    """An error message quoting client text, cut to fit a status trailer: clients refuse
    trailers over 16 KiB, and non-ASCII text is sent percent-encoded (up to 12 bytes a
    character)."""
    if len(message) <= most:
        return message
    return f"{message[:most]}... ({len(message)} characters)"


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")


class Servicer(pb_grpc.TracerServicer):
    def __init__(self, hub: Hub, auth: Auth, config: DaemonConfig, features: list[str],
                 history: History[Finished] | None = None) -> None:
        self.hub = hub
        self.auth = auth
        self.config = config
        self.features = features
        self.history = history
        self.name_of = syscalls.table_for().name
        self.reloads = 0  #: SIGHUP reloads taken (set by serve's main loop)
        self.reloads_refused = 0

    def _call(self, context: grpc.ServicerContext, fn: Callable[[Caller], T]) -> T:
        caller = self.auth.caller(context)
        try:
            return fn(caller)
        except RequestError as e:
            _abort(context, _STATUS[e.kind], _bounded(str(e)))
        except TracerdError as e:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, _bounded(str(e)))

    def GetInfo(self, request: pb.GetInfoRequest,
                context: grpc.ServicerContext) -> pb.GetInfoResponse:
        def info(_caller: Caller) -> pb.GetInfoResponse:
            lim, probe_lim = self.hub.limits, getattr(self.hub.probe, "limits", None)
            counts = self.hub.counts()
            with self.hub.lock:
                drops = self.hub.probe.drops()
                drops.forks_untracked = counts["pids_over_limit"]
            return pb.GetInfoResponse(
                version=__version__, kernel=self.hub.kernel, arch=self.hub.arch,
                bpf_features=self.features,
                limits=pb.Limits(
                    max_sessions=lim.max_sessions, max_watchers=lim.max_watchers,
                    max_tracked_pids=lim.max_tracked_pids,
                    max_message_bytes=self.config.max_message_bytes,
                    min_interval_ms=lim.min_interval_ms, max_interval_ms=lim.max_interval_ms,
                    max_finished_sessions=lim.max_finished_sessions,
                    pid_max=getattr(probe_lim, "pid_max", 0),
                    max_stats=getattr(probe_lim, "max_stats", 0),
                    max_rules=getattr(probe_lim, "max_rules", 0)),
                sessions_running=counts["running"], sessions_finished=counts["finished"],
                tracked_pids=counts["tracked"], drops=_convert.drops_to_pb(drops),
                watch_updates_missed=counts["watch_missed"], watchers=counts["watchers"],
                now_ns=time.monotonic_ns(), watch_rules=len(self.hub.watch_rules),
                watch_sessions_refused=self.hub.watch_sessions_refused,
                history_dropped=self.history.dropped if self.history else 0,
                config_reloads=self.reloads, config_reloads_refused=self.reloads_refused)
        return self._call(context, info)

    def StartSession(self, request: pb.StartSessionRequest,
                     context: grpc.ServicerContext) -> pb.StartSessionResponse:
        def start(caller: Caller) -> pb.StartSessionResponse:
            if not request.HasField("target"):
                raise RequestError(ErrorKind.INVALID, "target: required")
            target = _convert.target_from_pb(request.target)
            if isinstance(target, SpawnedTarget) and not _peer_is_local(context):
                raise RequestError(ErrorKind.PRECONDITION, "target.spawned: only for clients "
                                   "on the daemon's host (Unix socket or loopback)")
            options = _convert.options_from_pb(request.options)
            summary = self.hub.start(caller, target, options)
            log.info("session started", extra={"kv": {
                "session": summary.id, "owner": caller.name,
                "target": request.target.WhichOneof("kind")}})
            return pb.StartSessionResponse(session_id=summary.id,
                                           session=_convert.summary_to_pb(summary))
        return self._call(context, start)

    def StopSession(self, request: pb.StopSessionRequest,
                    context: grpc.ServicerContext) -> pb.StopSessionResponse:
        def stop(caller: Caller) -> pb.StopSessionResponse:
            summary = self.hub.stop(caller, request.session_id)
            log.info("session stopped", extra={"kv": {"session": summary.id,
                                                      "owner": caller.name}})
            return pb.StopSessionResponse(session=_convert.summary_to_pb(summary))
        return self._call(context, stop)

    def ListSessions(self, request: pb.ListSessionsRequest,
                     context: grpc.ServicerContext) -> pb.ListSessionsResponse:
        def list_(caller: Caller) -> pb.ListSessionsResponse:
            state = _convert.state_from_pb(request.state)
            # Bounded: sqlite's integers are signed 64-bit, and one answer stays small.
            since, rule = min(request.since_unix_ns, (1 << 63) - 1), request.rule
            limit = min(request.limit or 1000, MAX_LIST)
            found = [_convert.summary_to_pb(s) for s in self.hub.list_sessions(caller, state)
                     if (not since or not s.end_unix_ns or s.end_unix_ns >= since)
                     and (not rule or s.rule == rule)]
            if self.history is not None and state != State.RUNNING:
                # Finished sessions: those still in memory, then the history's (earlier
                # daemon runs, or forgotten here); a session in both is shown once.
                ids = {m.session_id for m in found}
                # A session forgotten here a moment ago may still be in the writer's queue.
                self.history.flush(1.0)
                for e in self.history.list(since_unix_ns=since or None, rule=rule or None,
                                           owner=None if caller.admin else caller.name,
                                           state=state.name.lower() if state else None,
                                           limit=limit, reports=False):
                    if e.session_id not in ids:
                        m = pb.SessionInfo.FromString(e.summary)
                        m.from_history = True
                        found.append(m)
            found.sort(key=lambda m: (m.start_unix_ns, m.session_id))
            return pb.ListSessionsResponse(sessions=found[-limit:])
        return self._call(context, list_)

    def GetReport(self, request: pb.GetReportRequest,
                  context: grpc.ServicerContext) -> pb.GetReportResponse:
        def report(caller: Caller) -> pb.GetReportResponse:
            try:
                summary, rep = self.hub.report(caller, request.session_id)
            except RequestError as e:
                if e.kind != ErrorKind.NOT_FOUND or self.history is None:
                    raise
                self.history.flush(1.0)  # it may have been forgotten a moment ago
                entry = self.history.get(request.session_id)
                if entry is None or not (caller.admin or entry.owner == caller.name):
                    raise  # another client's session is as unknown as a missing one
                m = pb.SessionInfo.FromString(entry.summary)
                m.from_history = True
                return pb.GetReportResponse(session=m, report=pb.Report.FromString(entry.report))
            return pb.GetReportResponse(session=_convert.summary_to_pb(summary),
                                        report=_convert.report_to_pb(rep, self.name_of))
        return self._call(context, report)

    def Watch(self, request: pb.WatchRequest,
              context: grpc.ServicerContext) -> Iterator[pb.WatchResponse]:
        w = self._call(context, lambda caller: self.hub.watch(
            caller, request.session_id, request.interval_ms, request.per_process))
        # Runs when the RPC ends for any reason, a vanished client included: the
        # watcher's slot and mailbox are freed at once.
        if not context.add_callback(lambda: self.hub.unwatch(w)):
            self.hub.unwatch(w)  # the client left before the callback could be registered
            return
        seq = 0
        last: dict[int, SyscallStats] = {}
        while context.is_active():
            view, missed, events, final = w.take(0.25)
            for ev in events:
                if isinstance(ev, Violation):
                    yield pb.WatchResponse(violation=_convert.violation_to_pb(ev))
                else:
                    yield pb.WatchResponse(state=_convert.summary_to_pb(ev))
            if view is not None:
                # Sent even just before the final report: its `missed` counts updates
                # coalesced into it, which the final message has no field for.
                seq += 1
                delta = since_stats(view.totals, last)
                last = view.totals
                yield pb.WatchResponse(update=_convert.view_to_pb(seq, view, missed, delta,
                                                                  self.name_of))
            if final is not None:
                summary, rep = final
                yield pb.WatchResponse(final=pb.GetReportResponse(
                    session=_convert.summary_to_pb(summary),
                    report=_convert.report_to_pb(rep, self.name_of)))
                return
            if w.closed:
                return

    def StreamEvents(self, request: pb.StreamEventsRequest,
                     context: grpc.ServicerContext) -> Iterator[pb.EventBatch]:
        flt = self._call(context, lambda _c: _convert.event_filter_from_pb(request.filter))
        sub = self._call(context, lambda caller: self.hub.subscribe_events(
            caller, request.session_id, flt, request.queue or None))
        if not context.add_callback(lambda: self.hub.unsubscribe_events(sub)):
            self.hub.unsubscribe_events(sub)
            return
        # Bounded so one batch stays well under the message size limit (an event with
        # two copied arguments is under 700 bytes).
        most = min(request.max_batch or 4096, 4096)
        packed = request.packed
        while context.is_active():
            batch = sub.next_batch(most, timeout_s=0.25, raw=packed)
            if batch is None:
                continue
            if packed:
                yield pb.EventBatch(records=_records.pack(batch.records),
                                    kernel_lost=batch.kernel_lost, dropped=batch.dropped,
                                    lost=batch.lost, last=batch.last)
            else:
                yield _convert.batch_to_pb(batch, self.name_of)
            if batch.last:
                return


# ---------------------------------------------------------------------- sockets


def _prepare_socket_dir(path: Path, gid: int | None) -> None:
    d = path.parent
    d.mkdir(mode=0o750 if gid is not None else 0o755, parents=True, exist_ok=True)
    st = d.stat()
    if st.st_mode & stat.S_IWOTH or (st.st_uid != os.geteuid()):
        raise BadInput(f"socket directory {d} must be owned by the daemon's user and not "
                       "world-writable")
    if gid is not None:
        try:
            os.chown(d, -1, gid)
        except PermissionError:
            raise BadInput(f"socket directory {d}: cannot give it group {gid} (the daemon "
                           "needs CAP_CHOWN for --socket-group)") from None
        os.chmod(d, 0o750)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise BadInput(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale: left by a daemon that died
        else:
            raise BadInput(f"{path}: another daemon is listening there")
        finally:
            probe.close()


def _socket_gid(group: str | None) -> int | None:
    if group is None:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise BadInput(f"socket group {group!r} does not exist") from None


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise BadInput(f"{what} {path}: {e.strerror}") from None


class _TracerSlots(grpc.ServerInterceptor):
    """At most ``n`` Tracer calls at once, the others refused with RESOURCE_EXHAUSTED at
    once. Health checks and reflection are never refused: the thread pool keeps two
    workers for them, so a probe answers during a flood of Tracer calls."""

    def __init__(self, n: int) -> None:
        self._slots = threading.BoundedSemaphore(n)

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = continuation(details)
        if handler is None or not details.method.startswith(f"/{SERVICE_NAME}/"):
            return handler
        slots = self._slots

        def enter(context: grpc.ServicerContext) -> None:
            if not slots.acquire(blocking=False):
                _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                       "too many calls at once: try again shortly")

        if handler.unary_unary is not None:
            unary = handler.unary_unary

            def limited_unary(request: Any, context: grpc.ServicerContext) -> Any:
                enter(context)
                try:
                    return unary(request, context)
                finally:
                    slots.release()
            return grpc.unary_unary_rpc_method_handler(
                limited_unary, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        stream = handler.unary_stream

        def limited_stream(request: Any, context: grpc.ServicerContext) -> Any:
            enter(context)
            try:
                yield from stream(request, context)
            finally:
                slots.release()
        return grpc.unary_stream_rpc_method_handler(
            limited_stream, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


def build_server(hub: Hub, config: DaemonConfig, features: list[str],
                 history: History[Finished] | None = None) -> tuple[grpc.Server, Servicer]:
    check_transport(config)
    tokens = load_tokens(config.tokens) if config.tokens else None
    lim = hub.limits
    opts = [("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0)]
    # Every Watch holds a worker for its lifetime; unary calls need the rest.
    workers = lim.max_watchers + 16
    # Two more workers than Tracer calls may use: health checks always find one.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers + 2,
                                                    thread_name_prefix="grpc"),
                         options=opts, interceptors=[_TracerSlots(workers)])
    servicer = Servicer(hub, Auth(tokens), config, features, history)
    pb_grpc.add_TracerServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    server.health = health_servicer  # type: ignore[attr-defined]

    if config.socket:
        path = Path(config.socket)
        gid = _socket_gid(config.socket_group)
        _prepare_socket_dir(path, gid)
        # The socket is created by grpc at bind; the umask makes it 0660 from birth,
        # so there is no window in which others could connect.
        old = os.umask(0o117)
        try:
            if server.add_insecure_port(f"unix:{path}") == 0:
                raise BadInput(f"cannot listen on {path}")
        finally:
            os.umask(old)
        if gid is not None:
            try:
                os.chown(path, -1, gid)
            except PermissionError:
                raise BadInput(f"{path}: cannot give it group {gid} (the daemon needs "
                               "CAP_CHOWN for --socket-group)") from None
        os.chmod(path, 0o660)
    creds = None
    if config.tls_cert and config.tls_key:
        ca = _read(config.tls_client_ca, "--tls-client-ca")
        creds = grpc.ssl_server_credentials(
            [(_read(config.tls_key, "--tls-key") or b"", _read(config.tls_cert, "--tls-cert")
              or b"")], root_certificates=ca, require_client_auth=ca is not None)
    for addr in config.listen:
        port = (server.add_insecure_port(addr) if config.insecure or creds is None
                else server.add_secure_port(addr, creds))
        if port == 0:
            raise BadInput(f"cannot listen on {addr}")
    return server, servicer


# ---------------------------------------------------------------------- logging


_PRIO = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


class _LogFormat(logging.Formatter):
    """logfmt lines; with an ``<N>`` priority prefix when stderr is the journal."""

    def __init__(self) -> None:
        super().__init__()
        self.journal = "JOURNAL_STREAM" in os.environ

    def format(self, record: logging.LogRecord) -> str:
        kv = {"level": record.levelname.lower(), "msg": record.getMessage()}
        kv.update(getattr(record, "kv", {}))
        parts = []
        for k, v in kv.items():
            text = str(v)
            if not text or any(c in text for c in ' ="'):
                text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
            parts.append(f"{k}={text}")
        line = " ".join(parts)
        if record.exc_info:
            line += " error=" + repr(str(record.exc_info[1]))
        if self.journal:
            return f"<{_PRIO.get(record.levelname, 6)}>{line}"
        return f"ts={time.strftime('%Y-%m-%dT%H:%M:%S')} {line}"


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogFormat())
    log.handlers[:] = [handler]
    log.propagate = False
    try:
        log.setLevel(level.upper())
    except ValueError:
        raise BadInput(f"log level {level!r}: use debug, info, warning or error") from None


def _sd_notify(state: str) -> None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(state.encode(), addr)


# ---------------------------------------------------------------------- serve


FEATURES = ["raw_tracepoint:sys_enter", "raw_tracepoint:sys_exit", "tracepoint:task_newtask",
            "tracepoint:sched_process_exec", "tracepoint:sched_process_exit", "ringbuf",
            "percpu_hash", "lru_hash", "helper:bpf_send_signal", "helper:bpf_probe_read_user",
            "syscall_events"]


Finished = tuple[SessionSummary, Report]


def _history_entry(name_of: Callable[[int], str]) -> Callable[[Finished], Entry]:
    """How the history's writer thread stores a finished session (off the drain)."""
    def encode(item: Finished) -> Entry:
        summary, report = item
        return Entry(session_id=summary.id, owner=summary.owner, rule=summary.rule,
                     state=summary.state.name.lower(), start_unix_ns=summary.start_unix_ns,
                     end_unix_ns=summary.end_unix_ns, calls=summary.calls,
                     violations=sum(1 for r in report.budget if not r.passed),
                     summary=_convert.summary_to_pb(summary).SerializeToString(),
                     report=_convert.report_to_pb(report, name_of).SerializeToString())
    return encode


def _open_history(config: DaemonConfig) -> History[Finished] | None:
    if not config.state_dir:
        return None
    path = Path(config.state_dir) / "history.sqlite3"
    return History(path, _history_entry(syscalls.table_for().name),
                   max_age_s=config.history_max_age_days * 86400,
                   max_count=config.history_max_sessions).open()


class _ProgStats(Protocol):
    def prog_stats(self) -> dict[str, tuple[int, int]] | None: ...


def _metrics_source(hub: Hub, probe: _ProgStats, history: History[Finished] | None,
                    otlp: Callable[[], OtlpExporter | None]) -> Callable[[], Snapshot]:
    def snapshot() -> Snapshot:
        snap = hub.metrics()
        if history is not None:
            snap.drops["history_dropped"] = history.dropped
        exporter = otlp()
        if exporter is not None:
            snap.drops["otlp_dropped"] = exporter.dropped
        progs = probe.prog_stats()
        if progs is not None:
            snap.bpf_run_seconds = {name: ns / 1e9 for name, (ns, _) in progs.items()}
            snap.bpf_run_count = {name: n for name, (_, n) in progs.items()}
        return snap
    return snapshot


def _start_metrics(addr: str, source: Callable[[], Snapshot]) -> Any:
    """Prometheus /metrics over plain HTTP on ``addr`` (its own thread)."""
    from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415
    from prometheus_client.process_collector import ProcessCollector  # noqa: PLC0415

    registry = CollectorRegistry(auto_describe=False)
    registry.register(PrometheusCollector(source))  # type: ignore[arg-type]
    ProcessCollector(namespace="tracerd", registry=registry)  # the daemon's RSS and CPU
    host, _, port = addr.rpartition(":")
    try:
        httpd, _thread = start_http_server(int(port), addr=host.strip("[]"), registry=registry)
    except OSError as e:
        raise BadInput(f"metrics {addr}: cannot listen: {e.strerror}") from None
    return httpd


class _SignalPipe:
    """Signals as bytes on a pipe, read by the main loop.

    A handler must take no lock: Python runs it on the main thread between two
    bytecodes, possibly while that thread holds the very lock (a handler calling
    threading.Event.set() deadlocks when the signal lands inside Event.wait() at the
    wrong moment). Writing one byte to a non-blocking pipe takes none.
    """

    def __init__(self, signums: tuple[int, ...]) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        for signum in signums:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        with contextlib.suppress(BlockingIOError):  # full: the loop has plenty to read
            os.write(self._w, bytes([signum]))

    def wait(self, timeout_s: float) -> set[int]:
        """The signals received, waiting up to ``timeout_s`` for one."""
        ready, _, _ = select.select([self._r], [], [], timeout_s)
        return set(os.read(self._r, 256)) if ready else set()


class _Stall:
    """Health follows the drain: NOT_SERVING while no drain pass has completed for
    STALL_S (the hub is wedged: every answer would be late or wrong), SERVING again
    when one does. A process supervisor or a load balancer can act on it."""

    STALL_S = 10.0

    def __init__(self, hub: Hub, health: health.HealthServicer) -> None:
        self.hub, self.health = hub, health
        self.drains, self.since = hub.drains, time.monotonic()
        self.serving = True

    def check(self) -> None:
        now = time.monotonic()
        if self.hub.drains != self.drains:
            self.drains, self.since = self.hub.drains, now
        serving = now - self.since < self.STALL_S
        if serving != self.serving:
            self.serving = serving
            status = (health_pb2.HealthCheckResponse.SERVING if serving
                      else health_pb2.HealthCheckResponse.NOT_SERVING)
            for name in ("", SERVICE_NAME):
                self.health.set(name, status)
            if serving:
                log.info("drain running again: serving")
            else:
                log.error("drain stalled: health NOT_SERVING",
                          extra={"kv": {"seconds": round(now - self.since, 1)}})


def _reload(hub: Hub, servicer: Servicer, load: Callable[[], DaemonConfig]) -> None:
    """SIGHUP: the watch rules and the tokens file again. Refused whole when anything
    is wrong: the old rules and tokens stay in force, running sessions are untouched."""
    try:
        new = load()
        tokens = load_tokens(new.tokens) if new.tokens else None
        if (tokens is None) != (servicer.auth.tokens is None):
            raise BadInput("adding or removing the tokens file needs a restart")
        hub.set_watch_rules(new.rules)
    except (TracerdError, RequestError) as e:
        servicer.reloads_refused += 1
        log.error("reload refused, the running config stays", extra={"kv": {"error": str(e)}})
        return
    servicer.auth.tokens = tokens
    servicer.reloads += 1
    log.info("reloaded", extra={"kv": {"rules": ",".join(r.name for r in new.rules) or "-"}})


def serve(config: DaemonConfig, reload: Callable[[], DaemonConfig] | None = None) -> int:
    """Run the daemon. ``reload`` reads the config again (SIGHUP); None: no config file."""
    from ._probe import Limits, Probe  # noqa: PLC0415 - bcc only when serving

    setup_logging(config.log_level)
    check_transport(config)
    if config.tokens:
        load_tokens(config.tokens)  # a bad tokens file fails before BPF is loaded
    history = _open_history(config)
    probe = Probe(Limits.for_this_kernel(**config.kernel_limits)).open()
    stop = threading.Event()
    drain = None
    server = None
    httpd = None
    otlp: OtlpExporter | None = None
    try:
        limits = replace(config.limits, max_limits=probe.limits.max_limits)

        def on_finish(summary: SessionSummary, report: Report) -> None:
            # Under the hub lock, on the drain thread: both only queue.
            if history is not None:
                history.put((summary, report))
            if otlp is not None:
                otlp.export_session(summary, report)

        hub = Hub(probe, limits, exit_source=ExitListener, on_finish=on_finish)
        try:
            hub.set_watch_rules(config.rules)
        except RequestError as e:  # e.g. more cgroup keys than the kernel's rule maps hold
            raise BadInput(str(e)) from None
        source = _metrics_source(hub, probe, history, lambda: otlp)
        if config.otlp is not None:
            o = config.otlp
            otlp = OtlpExporter(OtlpConfig(
                endpoint=o.endpoint, insecure=o.insecure, ca_file=o.ca_file, headers=o.headers,
                service_name=o.service_name, metrics_interval_s=o.metrics_interval_s),
                source, hub.syscall_name)
        features = FEATURES + (["btf:task_struct.exit_code"] if probe.exit_code_offset >= 0
                               else [])
        server, servicer = build_server(hub, config, features, history)
        if config.metrics:
            httpd = _start_metrics(config.metrics, source)
        drain = threading.Thread(
            target=drain_forever, args=(hub, stop),
            kwargs={"on_error": lambda e: log.error("drain failed", exc_info=e)},
            name="drain", daemon=True)
        drain.start()
        server.start()
        signals = _SignalPipe((signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
        log.info("serving", extra={"kv": {
            "version": __version__, "socket": config.socket or "-",
            "listen": ",".join(config.listen) or "-", "metrics": config.metrics or "-",
            "rules": len(config.rules), "history": history.path if history else "-",
            "pid": os.getpid()}})
        _sd_notify("READY=1")
        stalled = _Stall(hub, server.health)  # type: ignore[attr-defined]
        while True:
            got = signals.wait(0.2)
            stalled.check()
            if signal.SIGTERM in got or signal.SIGINT in got:
                break
            if signal.SIGHUP in got:
                # systemd >= 253 wants the reload's start time along with it.
                _sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
                if reload is None:
                    log.warning("SIGHUP ignored: the daemon was started without a config file")
                else:
                    _reload(hub, servicer, reload)
                _sd_notify("READY=1")
        _sd_notify("STOPPING=1")
        log.info("shutting down: finishing every session")
        server.health.enter_graceful_shutdown()  # type: ignore[attr-defined]
        hub.shutdown()
        # Watchers have their final reports queued; give them a moment to send them.
        server.stop(grace=5).wait()
        server = None
        return 0
    finally:
        stop.set()
        if server is not None:
            server.stop(grace=0)
        if drain is not None:
            drain.join(timeout=5)
        if httpd is not None:
            httpd.shutdown()
        if otlp is not None:
            otlp.close()  # sends what is queued, within its timeout
        if history is not None:
            history.close()  # writes what is queued: every finished report is kept
        probe.close()
        if config.socket:
            with contextlib.suppress(OSError):
                Path(config.socket).unlink()
        log.info("stopped: BPF programs detached")
