"""tracerd.client's retries, against a real gRPC server in this process.

The server is a TracerServicer that fails the first K calls of a method with a chosen
status, then answers; it counts every call it sees, so the tests observe exactly how
many attempts the client made. No daemon, no BPF: these run unprivileged.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from tracerd.client import MAX_RETRIES, RETRIED_METHODS, Client, ClientError, retry_options
from tracerd.v1 import tracerd_pb2 as pb
from tracerd.v1 import tracerd_pb2_grpc as pb_grpc

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def _session(sid: str = "s1") -> pb.SessionInfo:
    return pb.SessionInfo(session_id=sid, state=pb.SESSION_STATE_FINISHED,
                          target=pb.Target(pid=pb.PidTarget(pid=1)))


class Flaky(pb_grpc.TracerServicer):
    """Fails the first ``fail[method]`` calls of each method with ``code``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.fail: dict[str, int] = {}
        self.code = UNAVAILABLE

    def _enter(self, method: str, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.calls[method] += 1
            failing = self.calls[method] <= self.fail.get(method, 0)
        if failing:
            context.abort(self.code, f"{method}: scripted failure")

    def GetInfo(self, request: pb.GetInfoRequest,
                context: grpc.ServicerContext) -> pb.GetInfoResponse:
        self._enter("GetInfo", context)
        return pb.GetInfoResponse(version="test")

    def StartSession(self, request: pb.StartSessionRequest,
                     context: grpc.ServicerContext) -> pb.StartSessionResponse:
        self._enter("StartSession", context)
        return pb.StartSessionResponse(session_id="s1", session=_session())

    def StopSession(self, request: pb.StopSessionRequest,
                    context: grpc.ServicerContext) -> pb.StopSessionResponse:
        self._enter("StopSession", context)
        return pb.StopSessionResponse(session=_session(request.session_id))

    def ListSessions(self, request: pb.ListSessionsRequest,
                     context: grpc.ServicerContext) -> pb.ListSessionsResponse:
        self._enter("ListSessions", context)
        return pb.ListSessionsResponse(sessions=[_session()])

    def GetReport(self, request: pb.GetReportRequest,
                  context: grpc.ServicerContext) -> pb.GetReportResponse:
        self._enter("GetReport", context)
        return pb.GetReportResponse(session=_session(request.session_id),
                                    report=pb.Report(arch="x86_64"))

    def Watch(self, request: pb.WatchRequest,
              context: grpc.ServicerContext) -> Iterator[pb.WatchResponse]:
        self._enter("Watch", context)
        yield pb.WatchResponse(final=pb.GetReportResponse(session=_session(),
                                                          report=pb.Report()))

    def StreamEvents(self, request: pb.StreamEventsRequest,
                     context: grpc.ServicerContext) -> Iterator[pb.EventBatch]:
        self._enter("StreamEvents", context)
        yield pb.EventBatch(last=True)


class Server:
    """A grpc server with a Flaky servicer on a Unix socket; restartable on that path."""

    def __init__(self, socket: str) -> None:
        self.socket = socket
        self.servicer = Flaky()
        self.server: grpc.Server | None = None

    def start(self) -> Server:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_TracerServicer_to_server(self.servicer, server)
        assert server.add_insecure_port(f"unix:{self.socket}") != 0
        server.start()
        self.server = server
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=0).wait()
            self.server = None


@pytest.fixture
def server() -> Iterator[Server]:
    d = tempfile.mkdtemp(prefix="tracerd-retry-")  # short: a Unix socket path is <108 bytes
    s = Server(str(Path(d) / "s.sock")).start()
    try:
        yield s
    finally:
        s.stop()
        shutil.rmtree(d, ignore_errors=True)


_CALLS: dict[str, Callable[[Client], Any]] = {
    "GetInfo": lambda c: c.info(),
    "ListSessions": lambda c: c.list(),
    "GetReport": lambda c: c.report("s1"),
    "StopSession": lambda c: c.stop("s1"),
    "StartSession": lambda c: c.start_pid(1),
    "Watch": lambda c: list(c.watch("s1")),
    "StreamEvents": lambda c: list(c.stream_events("s1")),
}


def _call(c: Client, method: str) -> Any:
    return _CALLS[method](c)


@pytest.mark.parametrize("method", RETRIED_METHODS)
def test_idempotent_calls_are_retried_and_succeed(server: Server, method: str) -> None:
    server.servicer.fail[method] = 3  # the default retries: 3, so the 4th attempt answers
    with Client(server.socket, backoff_s=0.01) as c:
        result = _call(c, method)
    assert result is not None
    assert server.servicer.calls[method] == 4


def test_the_results_of_a_retried_call_are_the_answer(server: Server) -> None:
    server.servicer.fail["GetReport"] = 1
    with Client(server.socket, backoff_s=0.01) as c:
        summary, report = c.report("abc")
    assert summary.id == "abc" and report.arch == "x86_64"


@pytest.mark.parametrize("method", ["StartSession", "Watch", "StreamEvents"])
def test_calls_that_are_not_idempotent_are_never_retried(server: Server, method: str) -> None:
    server.servicer.fail[method] = 1  # a retry would succeed: it must not happen
    with Client(server.socket, backoff_s=0.01) as c, pytest.raises(ClientError) as e:
        _call(c, method)
    assert e.value.code == UNAVAILABLE and e.value.exit_status == 75
    assert server.servicer.calls[method] == 1


@pytest.mark.parametrize("retries", [0, 1, 2, MAX_RETRIES])
def test_retries_give_up_after_the_limit(server: Server, retries: int) -> None:
    server.servicer.fail["ListSessions"] = 1000
    with Client(server.socket, retries=retries, backoff_s=0.01) as c, \
            pytest.raises(ClientError) as e:
        c.list()
    assert e.value.code == UNAVAILABLE
    assert "scripted failure" in e.value.details and "cannot reach tracerd" in e.value.details
    assert server.servicer.calls["ListSessions"] == retries + 1


@pytest.mark.parametrize("code", [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INTERNAL,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  grpc.StatusCode.DEADLINE_EXCEEDED,
                                  grpc.StatusCode.UNKNOWN])
def test_other_statuses_are_not_retried(server: Server, code: grpc.StatusCode) -> None:
    server.servicer.code = code
    server.servicer.fail["GetReport"] = 1
    with Client(server.socket, backoff_s=0.01) as c, pytest.raises(ClientError) as e:
        c.report("s1")
    assert e.value.code == code
    assert server.servicer.calls["GetReport"] == 1


def test_the_deadline_bounds_the_retries(server: Server) -> None:
    # Pauses of ~2, 4, 8 s (>= 11 s with jitter) if the deadline did not cut them short.
    server.servicer.fail["GetInfo"] = 1000
    with Client(server.socket, retries=3, backoff_s=2.0, timeout=0.5) as c:
        t0 = time.monotonic()
        with pytest.raises(ClientError) as e:
            c.info()
        elapsed = time.monotonic() - t0
    assert e.value.code in {grpc.StatusCode.DEADLINE_EXCEEDED, UNAVAILABLE}
    assert elapsed < 8.0  # generous: the point is that it is not ~14 s
    assert server.servicer.calls["GetInfo"] <= 2


def test_a_restarted_server_is_reached_by_the_same_client(server: Server) -> None:
    with Client(server.socket, timeout=10) as c:
        assert c.info().version == "test"
        server.stop()
        # Down: every attempt fails fast; after the retries the call says so.
        for _ in range(3):
            with pytest.raises(ClientError) as e:
                c.list()
            assert e.value.code == UNAVAILABLE
            assert "cannot reach tracerd" in e.value.details
        time.sleep(1.0)  # the channel's reconnect backoff has grown meanwhile
        server.start()
        # Back: the same Client reconnects within one call's retries.
        assert [s.id for s in c.list()] == ["s1"]
        assert c.report("s1")[0].id == "s1"


def test_retry_options_are_validated() -> None:
    with pytest.raises(ValueError, match="retries"):
        Client("/nonexistent.sock", retries=MAX_RETRIES + 1)
    with pytest.raises(ValueError, match="retries"):
        retry_options(-1, 0.1)
    with pytest.raises(ValueError, match="backoff_s"):
        retry_options(3, 0.0)
    assert retry_options(0, 0.1) == {"grpc.enable_retries": 0}


def test_options_given_by_the_caller_win(server: Server) -> None:
    # A caller's channel options override the retry ones (here: retries switched off).
    server.servicer.fail["GetInfo"] = 1
    with Client(server.socket, options=[("grpc.enable_retries", 0)]) as c, \
            pytest.raises(ClientError):
        c.info()
    assert server.servicer.calls["GetInfo"] == 1
