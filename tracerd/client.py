"""A typed client for a tracerd daemon (``tracerd serve``); the CLI uses it too.

    from tracerd.client import Client
    with Client("/run/tracerd/tracerd.sock") as c:
        s = c.start_pid(1234, children=True)
        for event in c.watch(s.id, interval_ms=1000):
            ...
        summary, report = c.report(s.id)

Addresses: a Unix socket path (``/run/...`` or ``unix:/run/...``), or ``HOST:PORT`` for
TCP with TLS (``tls_ca``; ``tls_cert``/``tls_key`` for mTLS), or plaintext with
``insecure=True`` (the daemon allows that on loopback only). Results are the same
dataclasses ``tracerd run`` produces (tracerd.model.Report), not protobuf messages.
Errors raise :class:`ClientError` with the gRPC status and the daemon's message.

Calls that are safe to repeat (GetInfo, ListSessions, GetReport, StopSession) are retried
on UNAVAILABLE with exponential backoff and jitter (see :class:`Client`); StartSession and
the streams never are.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc

from . import _convert, _records, syscalls
from ._config import DEFAULT_SOCKET
from ._errors import TracerdError
from ._events import EventBatch, EventFilter
from ._sessions import (
    CgroupTarget,
    ExecRuleTarget,
    PidTarget,
    SessionOptions,
    SessionSummary,
    SpawnedTarget,
    State,
    Target,
    Violation,
)
from .model import Drops, ProcessInfo, Report, SyscallStats
from .v1 import tracerd_pb2 as pb
from .v1 import tracerd_pb2_grpc as pb_grpc

__all__ = [
    "Client",
    "ClientError",
    "EventBatch",
    "EventFilter",
    "Final",
    "SessionSummary",
    "State",
    "Update",
    "Violation",
]

#: Exit statuses of the CLI for daemon errors (sysexits(3), as for local errors).
_EXIT_FOR_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 65,
    grpc.StatusCode.FAILED_PRECONDITION: 65,
    grpc.StatusCode.OUT_OF_RANGE: 65,
    grpc.StatusCode.NOT_FOUND: 67,
    grpc.StatusCode.INTERNAL: 70,
    grpc.StatusCode.UNKNOWN: 70,
    grpc.StatusCode.UNAVAILABLE: 75,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 75,
    grpc.StatusCode.DEADLINE_EXCEEDED: 75,
    grpc.StatusCode.PERMISSION_DENIED: 77,
    grpc.StatusCode.UNAUTHENTICATED: 77,
}


class ClientError(TracerdError):
    """A call the daemon refused or could not answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{message} ({code.name})", _EXIT_FOR_STATUS.get(code, 1))
        self.code = code
        self.details = message


@dataclass
class Update:
    """One interval of a Watch stream."""

    seq: int
    ts_ns: int
    missed: int  #: updates coalesced into this one because the client read slowly
    delta: dict[int, SyscallStats]
    totals: dict[int, SyscallStats]
    processes: dict[int, ProcessInfo]
    drops: Drops


@dataclass
class Final:
    """The last message of a Watch stream."""

    session: SessionSummary
    report: Report


WatchEvent = Update | SessionSummary | Violation | Final


def _is_unix(address: str) -> bool:
    return address.startswith(("unix:", "/", "."))


#: The RPCs a retry cannot change the outcome of: they only read, or (StopSession) stop a
#: session that, stopped already, answers with the same summary. StartSession creates a
#: session each time it runs, and the streams deliver state a retry would replay, so
#: those are never retried.
RETRIED_METHODS = ("GetInfo", "ListSessions", "GetReport", "StopSession")
#: gRPC caps a retry policy at 5 attempts (it clamps a larger maxAttempts).
MAX_RETRIES = 4
SERVICE = pb.DESCRIPTOR.services_by_name["Tracer"].full_name


def retry_options(retries: int, backoff_s: float) -> dict[str, int | str]:
    """Channel options for :class:`Client`'s retries: gRPC's own retry policy (a service
    config) for :data:`RETRIED_METHODS`, and a reconnect backoff short enough that the
    retries of one call see a daemon that has come back (gRPC's default grows to 120 s,
    during which a channel fails every call at once)."""
    if not 0 <= retries <= MAX_RETRIES:
        raise ValueError(f"retries must be within 0..{MAX_RETRIES}, got {retries}")
    if not backoff_s > 0:
        raise ValueError(f"backoff_s must be > 0, got {backoff_s}")
    if retries == 0:
        return {"grpc.enable_retries": 0}
    policy = {"maxAttempts": retries + 1, "initialBackoff": f"{backoff_s:.6f}s",
              "maxBackoff": f"{backoff_s * 2 ** (retries - 1):.6f}s",
              "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}
    config = {"methodConfig": [{
        "name": [{"service": SERVICE, "method": m} for m in RETRIED_METHODS],
        "retryPolicy": policy}]}
    # Half of the time the retries of one call span, within [0.2 s, 2 s]: a Unix socket
    # or a loopback port costs nothing to try, and a remote host is tried every 2 s
    # at most while it is down.
    window_ms = backoff_s * 1000 * (2 ** retries - 1)
    reconnect_ms = int(min(max(window_ms / 2, 200), 2000))
    # service_config_disable_resolution: a DNS TXT record cannot replace this policy.
    return {"grpc.enable_retries": 1, "grpc.service_config": json.dumps(config),
            "grpc.service_config_disable_resolution": 1,
            "grpc.initial_reconnect_backoff_ms": reconnect_ms,
            "grpc.max_reconnect_backoff_ms": reconnect_ms}


class Client:
    """A connection to one daemon; cheap to keep open, safe to share between threads.

    ``timeout`` (seconds) is each call's deadline, retries and their pauses included.
    ``retries`` (0..4, default 3) is how many more times a call that is safe to repeat
    (GetInfo, ListSessions, GetReport, StopSession: :data:`RETRIED_METHODS`) is tried
    when it fails with UNAVAILABLE (daemon unreachable, restarting, or going away),
    after pauses of about ``backoff_s``, then twice, four times as long (gRPC's retry
    policy, with +-20% jitter); the last failure is raised as :class:`ClientError`. Other
    statuses are never retried, nor are StartSession (it would start a second session)
    and the streams (Watch, StreamEvents). DEADLINE_EXCEEDED is not retried either: it
    means the deadline of the whole call has passed. With the defaults a daemon that is
    down costs a call about 0.7 s before UNAVAILABLE, and one that has been restarted is
    reconnected to by the same Client within that time. ``options`` are extra gRPC
    channel options; they override the ones retries set.
    """

    def __init__(self, address: str = DEFAULT_SOCKET, *, token: str | None = None,
                 tls_ca: str | None = None, tls_cert: str | None = None,
                 tls_key: str | None = None, insecure: bool = False,
                 timeout: float = 30.0, options: list[tuple[str, int | str]] | None = None,
                 retries: int = 3, backoff_s: float = 0.1) -> None:
        self.address = address
        self.timeout = timeout
        self._metadata: tuple[tuple[str, str | bytes], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ())
        merged = retry_options(retries, backoff_s)
        merged.update(options or [])
        opts = list(merged.items())
        self.retries = retries if merged["grpc.enable_retries"] else 0
        if _is_unix(address):
            target = address if address.startswith("unix:") else f"unix:{address}"
            self._channel = grpc.insecure_channel(target, options=opts)
        elif insecure:
            self._channel = grpc.insecure_channel(address, options=opts)
        else:
            def read(p: str | None) -> bytes | None:
                return Path(p).read_bytes() if p else None
            creds = grpc.ssl_channel_credentials(root_certificates=read(tls_ca),
                                                 private_key=read(tls_key),
                                                 certificate_chain=read(tls_cert))
            self._channel = grpc.secure_channel(address, creds, options=opts)
        self._stub = pb_grpc.TracerStub(self._channel)

    # context manager -----------------------------------------------------------------
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _err(self, e: grpc.RpcError, retried: bool = False) -> ClientError:
        code = e.code() if isinstance(e, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = (e.details() if isinstance(e, grpc.Call) else None) or str(e)
        if code == grpc.StatusCode.UNAVAILABLE:
            tries = f" (retried up to {self.retries} times)" if retried and self.retries else ""
            details = f"cannot reach tracerd at {self.address}{tries}: {details}"
        return ClientError(code, details)

    # calls ---------------------------------------------------------------------------
    def info(self) -> pb.GetInfoResponse:
        try:
            return self._stub.GetInfo(pb.GetInfoRequest(), timeout=self.timeout,
                                      metadata=self._metadata)
        except grpc.RpcError as e:
            raise self._err(e, retried=True) from None

    def start(self, target: Target, options: SessionOptions | None = None) -> SessionSummary:
        req = pb.StartSessionRequest(target=_convert.target_to_pb(target),
                                     options=_convert.options_to_pb(options or SessionOptions()))
        try:
            resp = self._stub.StartSession(req, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise self._err(e) from None
        return _convert.summary_from_pb(resp.session)

    def start_pid(self, pid: int, *, children: bool = False,
                  options: SessionOptions | None = None) -> SessionSummary:
        return self.start(PidTarget(pid=pid, children=children), options)

    def start_cgroup(self, path: str, options: SessionOptions | None = None) -> SessionSummary:
        return self.start(CgroupTarget(path=path), options)

    def start_exec_rule(self, *, comm: str = "", path: str = "", children: bool = True,
                        options: SessionOptions | None = None) -> SessionSummary:
        return self.start(ExecRuleTarget(comm=comm, path=path, children=children), options)

    def start_spawned(self, pid: int, argv: list[str],
                      options: SessionOptions | None = None) -> SessionSummary:
        return self.start(SpawnedTarget(pid=pid, argv=tuple(argv)), options)

    def stop(self, session_id: str) -> SessionSummary:
        try:
            resp = self._stub.StopSession(pb.StopSessionRequest(session_id=session_id),
                                          timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise self._err(e, retried=True) from None
        return _convert.summary_from_pb(resp.session)

    def list(self, state: State | None = None, *, since_unix_ns: int | None = None,
             rule: str = "", limit: int = 0) -> list[SessionSummary]:
        """Sessions visible to this client, oldest first; with ``since_unix_ns``, those
        running at or after it, finished ones from the daemon's history included."""
        req = pb.ListSessionsRequest(
            state=_convert.state_to_pb(state) if state else pb.SESSION_STATE_UNSPECIFIED,
            since_unix_ns=since_unix_ns or 0, rule=rule, limit=limit)
        try:
            resp = self._stub.ListSessions(req, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise self._err(e, retried=True) from None
        return [_convert.summary_from_pb(s) for s in resp.sessions]

    def report(self, session_id: str) -> tuple[SessionSummary, Report]:
        try:
            resp = self._stub.GetReport(pb.GetReportRequest(session_id=session_id),
                                        timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise self._err(e, retried=True) from None
        return _convert.summary_from_pb(resp.session), _convert.report_from_pb(resp.report)

    def stream_events(self, session_id: str, flt: EventFilter | None = None, *,
                      max_batch: int = 0, queue: int = 0, packed: bool = True,
                      decode: bool = True) -> Iterator[EventBatch]:
        """Batches of a session's syscall events until the one marked ``last``.

        ``packed`` (the default) has the daemon send the kernel's records, decoded here
        (``decode``) or handed over raw in ``EventBatch.records`` (tracerd._records).
        """
        req = pb.StreamEventsRequest(
            session_id=session_id, max_batch=max_batch, queue=queue, packed=packed,
            filter=_convert.event_filter_to_pb(flt or EventFilter(),
                                               syscalls.table_for().name))
        stream = self._stub.StreamEvents(req, metadata=self._metadata)
        try:
            for m in stream:
                if not packed:
                    yield _convert.batch_from_pb(m)
                    continue
                records = list(_records.unpack(m.records))
                yield EventBatch(
                    events=[_records.decode(r) for r in records] if decode else (),
                    records=() if decode else records, kernel_lost=m.kernel_lost,
                    dropped=m.dropped, last=m.last)
        except grpc.RpcError as e:
            raise self._err(e) from None
        finally:
            stream.cancel()

    def watch(self, session_id: str, interval_ms: int = 1000,
              per_process: bool = False) -> Iterator[WatchEvent]:
        """Updates, state changes, then the Final report; ends when the session does."""
        req = pb.WatchRequest(session_id=session_id, interval_ms=interval_ms,
                              per_process=per_process)
        stream = self._stub.Watch(req, metadata=self._metadata)
        try:
            for m in stream:
                kind = m.WhichOneof("kind")
                if kind == "update":
                    u = m.update
                    yield Update(seq=u.seq, ts_ns=u.ts_ns, missed=u.missed,
                                 delta=_convert.stats_from_pb(u.delta),
                                 totals=_convert.stats_from_pb(u.totals),
                                 processes={p.pid: _convert.process_from_pb(p)
                                            for p in u.processes},
                                 drops=_convert.drops_from_pb(u.drops))
                elif kind == "state":
                    yield _convert.summary_from_pb(m.state)
                elif kind == "violation":
                    yield _convert.violation_from_pb(m.violation)
                elif kind == "final":
                    yield Final(session=_convert.summary_from_pb(m.final.session),
                                report=_convert.report_from_pb(m.final.report))
        except grpc.RpcError as e:
            raise self._err(e) from None
        finally:
            stream.cancel()
