"""Hostile input and hostile conditions, against real daemons (real kernel, real BPF).

- Every RPC fuzzed (hypothesis): random and boundary values, huge strings, unknown enum
  numbers, many and malformed budget assertions, junk authorization, raw bytes that are
  not protobuf (mutated messages, garbage, deeply nested groups). Each answer must be a
  status that RPC may give for that request (never UNKNOWN: that is an exception the
  servicer did not handle), with a message, and the daemon must live on.
- Oversized messages: RESOURCE_EXHAUSTED from one byte over the configured limit.
- Floods of StartSession from 8 and 64 threads while a health check runs every 100 ms.
- Sessions on processes that fork all the time; on the daemon's own parent.
- Malformed config and budget files: refused with one line, never a traceback.
- A client across a daemon restart; a cgroup removed mid-session; tracefs missing.

Hypothesis runs derandomized (``derandomize=True``: a fixed seed per test, so CI sees
the same examples in every run and a failure reproduces); TRACERD_FUZZ_SCALE=10 runs ten
times as many examples for a deeper local search.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import TRACERD, Daemon
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from tracerd import _budgets, _config, _procfs
from tracerd._errors import TracerdError
from tracerd._sessions import SessionOptions, State
from tracerd.client import Client, ClientError
from tracerd.v1 import tracerd_pb2 as pb
from tracerd.v1 import tracerd_pb2_grpc as pb_grpc

Code = grpc.StatusCode
OK, INVALID, NOT_FOUND = Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND
EXHAUSTED, PRECONDITION = Code.RESOURCE_EXHAUSTED, Code.FAILED_PRECONDITION

#: The hostile daemon's limits: small, so the fuzz and the flood reach them.
MAX_MESSAGE = 4 << 20
MAX_SESSIONS = 12
MAX_WATCHERS = 8
#: A unary call that takes longer than this means the daemon stopped answering.
UNARY_TIMEOUT = 20.0
#: How long a stream on a running session is read before giving up on it.
STREAM_TIMEOUT = 0.5

_SCALE = float(os.environ.get("TRACERD_FUZZ_SCALE", "1"))


def fuzz(n: int) -> settings:
    return settings(max_examples=max(1, int(n * _SCALE)), deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example])


# ---------------------------------------------------------------------- the daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = tmp_path_factory.mktemp("hostile")
    config = d / "tracerd.toml"
    config.write_text(f"[limits]\nmax_sessions = {MAX_SESSIONS}\n"
                      f"max_watchers = {MAX_WATCHERS}\nmax_message_bytes = {MAX_MESSAGE}\n")
    dm = Daemon(d, "--config", str(config))
    try:
        yield dm.wait_ready()
        assert dm.proc.poll() is None, f"the daemon died: {dm.log()[-4000:]}"
        log = dm.log()
        # An exception grpc caught in a handler, or one on the drain thread.
        assert "Traceback" not in log and "Exception calling application" not in log, log
        assert 'msg="drain failed"' not in log, log
    finally:
        dm.stop()


@pytest.fixture(scope="module")
def channel(daemon: Daemon) -> Iterator[grpc.Channel]:
    # No retries (a status is observed as sent), no client-side size limit (the daemon's
    # own limit is what is tested).
    opts = [("grpc.enable_retries", 0), ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(f"unix:{daemon.socket}", options=opts) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.TracerStub:
    return pb_grpc.TracerStub(channel)


class Sleeper:
    """A sleeping child; a new one once the old one is gone (a fuzzed budget may kill or
    stop it: only this process is ever the target of a signal or kill action)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["sleep", "3600"])

    @property
    def pid(self) -> int:
        if self.proc.poll() is not None:
            self.proc = subprocess.Popen(["sleep", "3600"])
        return self.proc.pid

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@dataclass
class Targets:
    """What fuzzed requests may name besides random values."""

    victim: Sleeper
    finished: str  #: an events session, stopped
    running: str  #: an events session on a process that makes a syscall every 10 ms


@pytest.fixture
def targets(daemon: Daemon) -> Iterator[Targets]:
    victim = Sleeper()
    # Makes a syscall every 10 ms and never forks (a children walk must end).
    busy = subprocess.Popen([sys.executable, "-c",
                             "import time\nwhile True: time.sleep(0.01)"])
    opts = SessionOptions(events=True, per_process=True)
    try:
        with daemon.client() as c:
            finished = c.start_pid(victim.pid, options=opts).id
            c.stop(finished)
            running = c.start_pid(busy.pid, options=opts).id
            try:
                yield Targets(victim=victim, finished=finished, running=running)
            finally:
                c.stop(running)
    finally:
        busy.kill()
        busy.wait()
        victim.close()


# ---------------------------------------------------------------------- strategies

U32 = st.one_of(st.sampled_from([0, 1, 49, 50, 100, 1 << 22, 2**31 - 1, 2**31, 2**32 - 1]),
                st.integers(0, 2**32 - 1))
U64 = st.one_of(st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**53 + 1, 2**63 - 1, 2**63,
                                 2**64 - 1]), st.integers(0, 2**64 - 1))
#: Enum fields are int32 on the wire: unknown values, negative ones included, are legal.
ENUM = st.one_of(st.sampled_from([0, 1, 2, 3, 4, -1, 99, 2**31 - 1, -(2**31)]),
                 st.integers(-(2**31), 2**31 - 1))
DOUBLE = st.one_of(st.sampled_from([0.0, -0.0, -1.0, 0.5, 1.0, 100.0, 1e308, -1e308, 5e-324,
                                    math.inf, -math.inf, math.nan]), st.floats())

_SEEDS = ["", " ", ",", ", ,", "%", "%file", "file", "read", "read,write", "%network",
          "syscall_1023", "all", "..", "/", "../..", "\0", "a\0b", "\t\n", "é", "\U0001f600",
          "a" * 15, "a" * 16, "(", "[", "*", "(a+)+$", "\\", "SIGKILL", "kill", "signal",
          "GodProcess", "TightLoop", "rss", "allocations", "sleep", "sh"]
_CHARS = st.characters(exclude_categories=["Cs"])  # protobuf strings are valid UTF-8
#: ~256 B to ~1 MB (4 MB when the character takes 4 bytes: then over the message limit).
HUGE = st.builds(lambda c, n: c * n, st.sampled_from(["a", "%", ",", "\0", "é", "\U0001f600"]),
                 st.sampled_from([257, 1025, 4097, 20_000, 1 << 20]))
TEXT = st.one_of(st.sampled_from(_SEEDS), st.text(_CHARS, max_size=40), HUGE)
SHORT = st.one_of(st.sampled_from(_SEEDS), st.text(_CHARS, max_size=40))

TYPES = list(_budgets.TYPES)
#: The fields of each assertion type, with values that are sometimes right.
_TYPE_FIELDS: dict[str, dict[str, Any]] = {
    "span_count": {"max_spans": st.one_of(st.integers(0, 1000), U64),
                   "span_name_pattern": SHORT},
    "critical_path": {"max_duration_ms": st.one_of(st.floats(1, 1e6), DOUBLE),
                      "trace_name_pattern": SHORT},
    "memory_usage": {"max_bytes": st.one_of(st.integers(1, 1 << 40), U64),
                     "tracking_mode": st.sampled_from(["", "rss", "allocations", "x"])},
    "anti_pattern": {"pattern": st.sampled_from(["GodProcess", "TightLoop", "PcieBottleneck",
                                                 ""]),
                     "threshold": st.one_of(st.floats(0.01, 1), DOUBLE),
                     "process_name_pattern": SHORT, "window_ms": U32, "min_rate": DOUBLE},
    "syscall_calls": {"max_calls": st.one_of(st.integers(0, 1000), U64),
                      "syscall_name_pattern": SHORT},
    "syscall_errors": {"max_errors": U64, "syscall_name_pattern": SHORT},
    "error_ratio": {"max_error_ratio": DOUBLE, "min_calls": U64, "syscall_name_pattern": SHORT},
    "call_rate": {"max_calls_per_second": DOUBLE, "window_ms": U32,
                  "syscall_name_pattern": SHORT},
    "latency": {"max_latency_us": DOUBLE, "percentile": DOUBLE, "syscall_name_pattern": SHORT},
}
_ANY_FIELD: dict[str, Any] = {
    "max_spans": U64, "span_name_pattern": TEXT, "max_duration_ms": DOUBLE,
    "trace_name_pattern": TEXT, "max_bytes": U64, "tracking_mode": TEXT, "pattern": TEXT,
    "threshold": DOUBLE, "process_name_pattern": TEXT, "window_ms": U32, "min_rate": DOUBLE,
    "syscall_name_pattern": TEXT, "max_calls": U64, "max_errors": U64,
    "max_error_ratio": DOUBLE, "min_calls": U64, "max_calls_per_second": DOUBLE,
    "max_latency_us": DOUBLE, "percentile": DOUBLE,
}


def mostly(good: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]
           ) -> st.SearchStrategy[Any]:
    """Values that are right three times in four: a request must get past the first
    check now and then for the later ones to be reached."""
    return st.one_of(good, good, good, hostile)


#: Sane values for each type's fields.
_GOOD_FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "span_count": {"max_spans": st.integers(0, 10**6)},
    "critical_path": {"max_duration_ms": st.floats(1, 1e7)},
    "memory_usage": {"max_bytes": st.integers(1, 1 << 40),
                     "tracking_mode": st.sampled_from(["rss", "allocations"])},
    "anti_pattern": {"pattern": st.sampled_from(["GodProcess", "TightLoop"]),
                     "threshold": st.floats(0.01, 1)},
    "syscall_calls": {"max_calls": st.integers(0, 10**6),
                      "syscall_name_pattern": st.sampled_from(["", "read", "^open"])},
    "syscall_errors": {"max_errors": st.integers(0, 10**6)},
    "error_ratio": {"max_error_ratio": st.floats(0, 1)},
    "call_rate": {"max_calls_per_second": st.floats(1, 1e6),
                  "window_ms": st.integers(100, 10_000)},
    "latency": {"max_latency_us": st.floats(1, 1e6), "percentile": st.floats(1, 100)},
}


@st.composite
def assertions(draw: st.DrawFn, name: str | None = None,
               well_formed: bool | None = None) -> pb.Assertion:
    """One budget assertion: half of them well-formed, the others a type's fields with
    hostile values, fields of other types, unknown types."""
    good_name = st.from_regex(r"[a-z]{1,8}", fullmatch=True)
    if well_formed if well_formed is not None else draw(st.booleans()):
        a = pb.Assertion(name=name or draw(good_name), type=draw(st.sampled_from(TYPES)))
        for key, values in _GOOD_FIELDS[a.type].items():
            setattr(a, key, draw(values))
        a.action = draw(st.sampled_from(["", "warn", "fail", "signal", "kill"]))
        if a.action == "signal":
            a.signal = draw(st.sampled_from(["", "SIGTERM", "usr1", "15"]))
        return a
    a = pb.Assertion(name=name if name is not None else draw(mostly(good_name, SHORT)))
    a.type = draw(st.one_of(st.sampled_from(TYPES), TEXT))
    for key, values in _TYPE_FIELDS.get(a.type, {}).items():
        if draw(st.integers(0, 9)) < 8:
            setattr(a, key, draw(values))
    for key in draw(st.lists(st.sampled_from(sorted(_ANY_FIELD)), max_size=2)):
        setattr(a, key, draw(_ANY_FIELD[key]))
    if draw(st.booleans()):
        a.enabled = draw(st.booleans())
    if draw(st.booleans()):
        a.fail_on_violation = draw(st.booleans())
    a.action = draw(st.sampled_from(["", "", "warn", "fail", "signal", "kill", "KILL", "x"]))
    a.signal = draw(st.one_of(st.just(""), st.sampled_from(
        ["SIGTERM", "term", "15", "0", "-1", "65", "SIGSTOP", "SIGCONT", "99999999999999"]),
        SHORT))
    return a


def budgets() -> st.SearchStrategy[list[pb.Assertion]]:
    few = st.lists(assertions(), max_size=4, unique_by=lambda a: a.name)
    # Around the limit of 256, well-formed, so the count is what is judged.
    many = st.integers(250, 300).flatmap(lambda n: st.tuples(
        *[assertions(name=f"a{i}", well_formed=True) for i in range(n)]).map(list))
    return st.one_of(st.just([]), few, few, many)


_SYSCALLS = st.sampled_from(["read", "write", "openat", "%file", "network", "%process",
                             "clock_nanosleep", "wait4"])


def names() -> st.SearchStrategy[list[str]]:
    """Syscall names and classes: valid, unknown, empty, or more than the 512 allowed."""
    return mostly(st.lists(_SYSCALLS, max_size=3), st.one_of(
        st.lists(SHORT, min_size=1, max_size=4),
        st.lists(_SYSCALLS, min_size=510, max_size=520)))


def _safe_pid(pid: int, targets: Targets) -> bool:
    """A pid a signal or kill action may be aimed at: the victim, or no process at all."""
    return pid == targets.victim.proc.pid or pid <= 0 or pid >= 1 << 22


def defang(req: pb.StartSessionRequest, targets: Targets) -> None:
    """Budgets only ever signal the victim: another target gets warn instead of
    signal/kill (a random pid, a cgroup or an exec rule could reach any process here).
    Descendants only of processes this test controls: a tree outside it (pid 1's, this
    process's) may fork all the time, which test_children_walk_... covers on its own."""
    kind = req.target.WhichOneof("kind")
    if kind == "pid" and not _safe_pid(req.target.pid.pid, targets):
        req.target.pid.children = False
    safe = (kind == "pid" and not req.target.pid.children
            and _safe_pid(req.target.pid.pid, targets)) or (
        kind == "spawned" and _safe_pid(req.target.spawned.pid, targets)) or kind is None
    if not safe:
        for a in req.options.budget:
            if a.action in ("signal", "kill"):
                a.action = "warn"


@st.composite
def start_requests(draw: st.DrawFn, targets: Targets) -> pb.StartSessionRequest:
    kind = draw(st.sampled_from(["pid", "pid", "victim", "victim", "victim", "cgroup",
                                 "exec_rule", "spawned", "none"]))
    pid = st.one_of(U32, st.just(targets.victim.pid), st.just(os.getpid()),
                    st.just(targets.victim.pid + 1))
    t = pb.Target()
    if kind == "pid":
        t.pid.pid, t.pid.children = draw(pid), draw(st.booleans())
    elif kind == "victim":
        t.pid.pid = targets.victim.pid
    elif kind == "cgroup":
        t.cgroup.path = draw(st.one_of(TEXT, st.sampled_from(
            ["/", ".", "/sys/fs/cgroup", "/proc/self", "/etc/passwd", "../../..", "init.scope",
             "nonexistent/x", "a/../../.."])))
    elif kind == "exec_rule":
        t.exec_rule.comm = draw(mostly(st.from_regex(r"zz[a-z]{0,8}", fullmatch=True), TEXT))
        t.exec_rule.path = draw(mostly(st.just(""), TEXT))
        t.exec_rule.children = draw(st.booleans())
    elif kind == "spawned":
        t.spawned.pid = draw(pid)
        t.spawned.argv.extend(draw(st.one_of(st.lists(SHORT, max_size=4),
                                             st.lists(st.just("x" * 40), min_size=4090,
                                                      max_size=4100))))
    req = pb.StartSessionRequest(target=t) if kind != "none" else pb.StartSessionRequest()
    if draw(st.integers(0, 3)):
        o = req.options
        o.duration_ms = draw(mostly(st.sampled_from([0, 1, 50, 60_000]), U64))
        o.syscalls.extend(draw(names()))
        o.per_process, o.peak_rss, o.events = (draw(st.booleans()) for _ in range(3))
        o.label = draw(mostly(st.text(_CHARS, max_size=20), TEXT))
        o.budget.extend(draw(budgets()))
        o.event_syscalls.extend(draw(names()))
    defang(req, targets)
    return req


def session_ids(targets: Targets, *, running: bool = True) -> st.SearchStrategy[str]:
    known = [targets.finished] + ([targets.running] if running else [])
    return st.one_of(TEXT, st.sampled_from(known), st.sampled_from(known))


#: Junk for the authorization header (this daemon has no tokens: all are refused).
AUTH = st.one_of(
    st.builds(lambda s: f"Bearer {s}", st.text(st.characters(min_codepoint=0x21,
                                                             max_codepoint=0x7e), max_size=64)),
    st.sampled_from(["Bearer", "Bearer ", "bearer x", "Basic abc", "x", "Bearer  a b"]))


# ---------------------------------------------------------------------- calling


@dataclass
class Outcome:
    code: Code
    details: str
    messages: int = 0
    response: Any = None  #: a unary call's answer


def call(stub: pb_grpc.TracerStub, method: str, req: Message,
         metadata: tuple[tuple[str, str], ...] = ()) -> Outcome:
    """One RPC; a stream is read to its end, or for STREAM_TIMEOUT at most."""
    fn = getattr(stub, method)
    if method in ("Watch", "StreamEvents"):
        stream = fn(req, timeout=STREAM_TIMEOUT, metadata=metadata)
        n = 0
        try:
            for _ in stream:
                n += 1
                if n >= 3:  # enough: the stream works
                    stream.cancel()
                    return Outcome(OK, "", n)
        except grpc.RpcError:
            if stream.code() == Code.DEADLINE_EXCEEDED and n:
                return Outcome(OK, "", n)  # delivered, then nothing new within the timeout
            return Outcome(stream.code(), stream.details() or "", n)
        return Outcome(stream.code(), stream.details() or "", n)
    try:
        response = fn(req, timeout=UNARY_TIMEOUT, metadata=metadata)
    except grpc.RpcError as e:
        err: Any = e
        return Outcome(err.code(), err.details() or "")
    return Outcome(OK, "", response=response)


#: The statuses each RPC may answer a request with (besides a too large message and bad
#: authorization, which have their own). UNKNOWN and INTERNAL are never right: they
#: are exceptions the servicer did not handle.
ALLOWED: dict[str, set[Code]] = {
    "GetInfo": {OK},
    "StartSession": {OK, INVALID, NOT_FOUND, PRECONDITION, EXHAUSTED},
    "StopSession": {OK, NOT_FOUND},
    "ListSessions": {OK, INVALID},
    "GetReport": {OK, NOT_FOUND},
    "Watch": {OK, INVALID, NOT_FOUND, EXHAUSTED},
    "StreamEvents": {OK, INVALID, NOT_FOUND, PRECONDITION, EXHAUSTED},
}


def expect(daemon: Daemon, stub: pb_grpc.TracerStub, method: str, req: Message,
           metadata: tuple[tuple[str, str], ...] = (), *, running: bool = False) -> Outcome:
    """Send ``req``; check the status is one ``method`` may give and the daemon lives."""
    out = call(stub, method, req, metadata)
    if currently_in_test_context():  # pytest --hypothesis-show-statistics shows the mix
        event(f"{method}: {out.code.name}")
    if req.ByteSize() > MAX_MESSAGE:
        allowed = {EXHAUSTED}
    elif metadata:
        allowed = {Code.UNAUTHENTICATED}
    else:
        allowed = set(ALLOWED[method])
        if running:
            allowed.add(Code.DEADLINE_EXCEEDED)  # a running session's stream goes on
    assert out.code in allowed, (method, out.code, out.details[:500], _show(req))
    if out.code != OK:
        assert out.details, (method, out.code, "no message saying what is wrong")
        assert len(out.details) <= 64 << 10, (method, out.code, len(out.details))
    assert_alive(daemon, stub)
    return out


def assert_alive(daemon: Daemon, stub: pb_grpc.TracerStub) -> None:
    assert daemon.proc.poll() is None, f"the daemon died: {daemon.log()[-4000:]}"
    assert stub.GetInfo(pb.GetInfoRequest(), timeout=UNARY_TIMEOUT).version


def _show(m: Message) -> str:
    text = str(m)
    return text if len(text) < 2000 else text[:2000] + f"... ({len(text)} characters)"


def stop_started(stub: pb_grpc.TracerStub, session_id: str) -> None:
    """Stop a session a fuzzed request started (then again: stopping is idempotent)."""
    for _ in range(2):
        stopped = stub.StopSession(pb.StopSessionRequest(session_id=session_id),
                                   timeout=UNARY_TIMEOUT)
        assert stopped.session.state != pb.SESSION_STATE_RUNNING


# ---------------------------------------------------------------------- fuzzing every RPC


def _running_sessions(stub: pb_grpc.TracerStub) -> set[str]:
    return {s.session_id for s in stub.ListSessions(
        pb.ListSessionsRequest(state=pb.SESSION_STATE_RUNNING), timeout=UNARY_TIMEOUT).sessions}


@fuzz(120)
@given(data=st.data())
def test_fuzz_start_session(daemon: Daemon, stub: pb_grpc.TracerStub, targets: Targets,
                            data: st.DataObject) -> None:
    before = _running_sessions(stub)
    req = data.draw(start_requests(targets), label="request")
    auth: tuple[tuple[str, str], ...] = ()
    if data.draw(st.integers(0, 9), label="with authorization") == 5:  # 0 and 9 come often
        auth = (("authorization", data.draw(AUTH, label="authorization")),)
    out = expect(daemon, stub, "StartSession", req, auth)
    if out.code == OK:
        stop_started(stub, out.response.session_id)
    # A start that was refused, or stopped, leaves no session running.
    assert _running_sessions(stub) <= before


@st.composite
def good_options(draw: st.DrawFn) -> pb.SessionOptions:
    o = pb.SessionOptions(duration_ms=draw(st.sampled_from([0, 0, 1, 200, 60_000])),
                          per_process=draw(st.booleans()), peak_rss=draw(st.booleans()),
                          events=draw(st.booleans()), label=draw(st.text(_CHARS, max_size=20)))
    o.syscalls.extend(draw(st.lists(_SYSCALLS, max_size=3)))
    o.event_syscalls.extend(draw(st.lists(_SYSCALLS, max_size=2)))
    o.budget.extend(draw(st.lists(assertions(well_formed=True), max_size=6,
                                  unique_by=lambda a: a.name)))
    return o


@fuzz(40)
@given(data=st.data())
def test_fuzz_sessions_that_start(daemon: Daemon, stub: pb_grpc.TracerStub, targets: Targets,
                                  data: st.DataObject) -> None:
    """Well-formed sessions on the victim (kill and signal budgets, events, short
    durations), then every RPC on them: the paths past validation."""
    # Everything is drawn first: what the daemon answers must not change what is drawn.
    req = pb.StartSessionRequest(target=pb.Target(pid=pb.PidTarget(pid=targets.victim.pid)),
                                 options=data.draw(good_options(), label="options"))
    stop_first = data.draw(st.booleans(), label="stop first")
    watch = pb.WatchRequest(interval_ms=data.draw(st.sampled_from([50, 100, 1000])))
    events = pb.StreamEventsRequest(
        packed=data.draw(st.booleans()),
        filter=pb.EventFilter(syscalls=data.draw(st.lists(_SYSCALLS, max_size=2))))
    out = expect(daemon, stub, "StartSession", req)
    if out.code != OK:
        # A second events session on the victim, or its kernel slot taken: said so.
        assert out.code in {PRECONDITION, EXHAUSTED, NOT_FOUND}, out
        return
    sid = out.response.session_id
    if stop_first:
        expect(daemon, stub, "StopSession", pb.StopSessionRequest(session_id=sid))
    assert expect(daemon, stub, "GetReport", pb.GetReportRequest(session_id=sid)).code == OK
    watch.session_id = events.session_id = sid
    expect(daemon, stub, "Watch", watch, running=True)
    expect(daemon, stub, "StreamEvents", events, running=True)
    for _ in range(2):
        assert expect(daemon, stub, "StopSession",
                      pb.StopSessionRequest(session_id=sid)).code == OK
    assert sid not in _running_sessions(stub)


@fuzz(60)
@given(data=st.data())
def test_fuzz_stop_session(daemon: Daemon, stub: pb_grpc.TracerStub, targets: Targets,
                           data: st.DataObject) -> None:
    sid = data.draw(session_ids(targets, running=False), label="session_id")
    out = expect(daemon, stub, "StopSession", pb.StopSessionRequest(session_id=sid))
    if sid == targets.finished:
        assert out.code == OK  # stopping a stopped session answers its summary again


@fuzz(40)
@given(data=st.data())
def test_fuzz_get_info_and_report(daemon: Daemon, stub: pb_grpc.TracerStub,
                                  targets: Targets, data: st.DataObject) -> None:
    # GetInfoRequest has no fields: unknown ones come with the raw bytes below.
    expect(daemon, stub, "GetInfo", pb.GetInfoRequest())
    sid = data.draw(session_ids(targets))
    out = expect(daemon, stub, "GetReport", pb.GetReportRequest(session_id=sid))
    if sid in (targets.finished, targets.running):
        assert out.code == OK


@fuzz(60)
@given(data=st.data())
def test_fuzz_list_sessions(daemon: Daemon, stub: pb_grpc.TracerStub, targets: Targets,
                            data: st.DataObject) -> None:
    state = data.draw(ENUM)
    req = pb.ListSessionsRequest(state=state,  # type: ignore[arg-type]
                                 since_unix_ns=data.draw(U64), rule=data.draw(TEXT),
                                 limit=data.draw(U32))
    out = expect(daemon, stub, "ListSessions", req)
    if req.ByteSize() > MAX_MESSAGE:
        return  # refused unread (checked by expect)
    if state in (0, 1, 2, 3):
        assert out.code == OK, out  # every value of the enum is a valid filter
    else:
        assert out.code == INVALID, out  # an unknown state is named, not ignored


@fuzz(60)
@given(data=st.data())
def test_fuzz_watch(daemon: Daemon, stub: pb_grpc.TracerStub, targets: Targets,
                    data: st.DataObject) -> None:
    sid = data.draw(session_ids(targets))
    req = pb.WatchRequest(session_id=sid, interval_ms=data.draw(U32),
                          per_process=data.draw(st.booleans()))
    out = expect(daemon, stub, "Watch", req, running=sid == targets.running)
    if sid == targets.finished and 50 <= req.interval_ms <= 3_600_000 and out.code == OK:
        assert out.messages >= 1  # the final report of a finished session


@fuzz(60)
@given(data=st.data())
def test_fuzz_stream_events(daemon: Daemon, stub: pb_grpc.TracerStub, targets: Targets,
                            data: st.DataObject) -> None:
    sid = data.draw(session_ids(targets))
    flt = pb.EventFilter(syscalls=data.draw(names()),
                         pids=data.draw(st.one_of(st.lists(U32, max_size=5),
                                                  st.lists(U32, min_size=510, max_size=520))),
                         tids=data.draw(st.lists(U32, max_size=5)))
    req = pb.StreamEventsRequest(session_id=sid, filter=flt, max_batch=data.draw(U32),
                                 queue=data.draw(U32), packed=data.draw(st.booleans()))
    expect(daemon, stub, "StreamEvents", req, running=sid == targets.running)


# ---------------------------------------------------------------------- raw bytes

_REQUESTS: dict[str, type[Message]] = {
    "GetInfo": pb.GetInfoRequest, "StartSession": pb.StartSessionRequest,
    "StopSession": pb.StopSessionRequest, "ListSessions": pb.ListSessionsRequest,
    "GetReport": pb.GetReportRequest, "Watch": pb.WatchRequest,
    "StreamEvents": pb.StreamEventsRequest,
}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def nested_groups(depth: int, field_no: int = 100) -> bytes:
    """An unknown field holding groups ``depth`` deep: a parser recurses into groups."""
    return (_varint(field_no << 3 | 3) * depth) + (_varint(field_no << 3 | 4) * depth)


def nested_messages(depth: int) -> bytes:
    """StartSessionRequest.target (field 1) whose bytes are again a message of field 1 ..."""
    inner = b""
    for _ in range(depth):
        inner = b"\x0a" + _varint(len(inner)) + inner
    return inner


@st.composite
def raw_bodies(draw: st.DrawFn, method: str, targets: Targets) -> bytes:
    how = draw(st.sampled_from(["garbage", "mutated", "mutated", "groups", "nested"]))
    if how == "garbage":
        return draw(st.binary(max_size=300))
    if how == "groups":
        return nested_groups(draw(st.sampled_from([1, 50, 99, 100, 101, 1000, 100_000])))
    if how == "nested":
        return nested_messages(draw(st.sampled_from([2, 3, 10, 100, 1000])))
    valid = {"StartSession": start_requests(targets),
             "ListSessions": st.builds(pb.ListSessionsRequest, state=ENUM, limit=U32),
             "Watch": st.builds(pb.WatchRequest, session_id=session_ids(targets),
                                interval_ms=U32)}.get(
        method, st.builds(_REQUESTS[method]))
    body = bytearray(draw(valid).SerializeToString())
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "truncate"]))
        pos = draw(st.integers(0, len(body)))
        if op == "flip" and body:
            body[min(pos, len(body) - 1)] = draw(st.integers(0, 255))
        elif op == "insert":
            body[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            del body[pos:]
    return bytes(body)


def _parses(method: str, body: bytes) -> Message | None:
    try:
        return _REQUESTS[method].FromString(body)
    except (DecodeError, RecursionError):
        return None


@fuzz(300)
@given(data=st.data())
def test_fuzz_raw_bytes_that_may_not_be_protobuf(daemon: Daemon, channel: grpc.Channel,
                                                 stub: pb_grpc.TracerStub, targets: Targets,
                                                 data: st.DataObject) -> None:
    method = data.draw(st.sampled_from(sorted(_REQUESTS)))
    body = data.draw(raw_bodies(method, targets))
    parsed = _parses(method, body)
    if isinstance(parsed, pb.StartSessionRequest):
        again = pb.StartSessionRequest()
        again.CopyFrom(parsed)
        defang(again, targets)
        assume(again == parsed)  # never send a signal or kill budget aimed elsewhere
    path = f"/tracerd.v1.Tracer/{method}"
    streaming = method in ("Watch", "StreamEvents")
    # No serializers: the bytes go out as they are.
    rpc: Any = channel.unary_stream(path) if streaming else channel.unary_unary(path)
    if streaming:
        stream = rpc(body, timeout=STREAM_TIMEOUT)
        n = 0
        try:
            for _ in stream:
                n += 1
                stream.cancel()
                break
        except grpc.RpcError:
            pass
        code = OK if n else stream.code()
        details = stream.details() or ""
    else:
        try:
            response = rpc(body, timeout=UNARY_TIMEOUT)
            code, details = OK, ""
        except grpc.RpcError as e:
            err: Any = e
            code, details = err.code(), err.details() or ""
    event(f"{method}: {code.name}")
    if parsed is None:
        # Not a message: the request is refused before the servicer sees it.
        assert code == Code.INTERNAL and "deserializ" in details, (method, code, details)
    else:
        allowed = ALLOWED[method] | ({Code.DEADLINE_EXCEEDED} if streaming else set())
        assert code in allowed, (method, code, details[:500], _show(parsed))
        if method == "StartSession" and code == OK:
            stop_started(stub, pb.StartSessionResponse.FromString(response).session_id)
    assert_alive(daemon, stub)


def test_deep_nesting_is_refused_cleanly(daemon: Daemon, channel: grpc.Channel,
                                         stub: pb_grpc.TracerStub) -> None:
    rpc: Any = channel.unary_unary("/tracerd.v1.Tracer/StartSession")
    # Groups 100000 deep: beyond the parser's recursion limit, refused unread.
    with pytest.raises(grpc.RpcError) as e:
        rpc(nested_groups(100_000), timeout=UNARY_TIMEOUT)
    err: Any = e.value
    assert err.code() == Code.INTERNAL, err
    # Within the limit: an ordinary (invalid) request.
    with pytest.raises(grpc.RpcError) as e:
        rpc(nested_groups(50), timeout=UNARY_TIMEOUT)
    err = e.value
    assert err.code() == INVALID and "target" in err.details()
    # No message of the API nests itself: 10000 levels of field 1 are read as far as
    # the schema goes (target.pid), the rest kept as an unknown field.
    with pytest.raises(grpc.RpcError) as e:
        rpc(nested_messages(10_000), timeout=UNARY_TIMEOUT)
    err = e.value
    assert err.code() == INVALID and "target.pid.pid" in err.details()
    assert_alive(daemon, stub)


# ---------------------------------------------------------------------- oversized


def _start_of_size(size: int) -> bytes:
    """A StartSessionRequest of exactly ``size`` bytes (its label fills it up)."""
    req = pb.StartSessionRequest(target=pb.Target(pid=pb.PidTarget(pid=1)))
    lo = size - 32
    req.options.label = "x" * lo
    req.options.label = "x" * (lo + size - req.ByteSize())
    body = req.SerializeToString()
    assert len(body) == size
    return body


def test_oversized_messages_get_resource_exhausted(daemon: Daemon, channel: grpc.Channel,
                                                   stub: pb_grpc.TracerStub) -> None:
    assert stub.GetInfo(pb.GetInfoRequest(), timeout=UNARY_TIMEOUT).limits.max_message_bytes \
        == MAX_MESSAGE
    rpc: Any = channel.unary_unary("/tracerd.v1.Tracer/StartSession")
    # At the limit: read and judged (the label is too long); one byte over: not read.
    with pytest.raises(grpc.RpcError) as e:
        rpc(_start_of_size(MAX_MESSAGE), timeout=UNARY_TIMEOUT)
    err: Any = e.value
    assert err.code() == INVALID and "options.label" in err.details()
    for size in (MAX_MESSAGE + 1, 2 * MAX_MESSAGE, 17 << 20):
        with pytest.raises(grpc.RpcError) as e:
            rpc(_start_of_size(size), timeout=60)
        err = e.value
        assert err.code() == EXHAUSTED, (size, err.code(), err.details())
        assert_alive(daemon, stub)
    # Through the typed client too: a huge syscall list.
    with daemon.client() as c, pytest.raises(ClientError) as ce:
        c.start_pid(os.getpid(), options=SessionOptions(syscall_spec=("read",) * (1 << 20)))
    assert ce.value.code in {EXHAUSTED, INVALID}


# ---------------------------------------------------------------------- specific findings


@pytest.mark.parametrize("since", [2**63 - 1, 2**63, 2**64 - 1])
def test_list_sessions_since_far_future(daemon: Daemon, stub: pb_grpc.TracerStub,
                                        since: int) -> None:
    # uint64 on the wire; the history is SQLite, whose integers are signed 64-bit.
    out = expect(daemon, stub, "ListSessions", pb.ListSessionsRequest(since_unix_ns=since))
    assert out.code == OK, out


@pytest.mark.parametrize("size", [1 << 14, 1 << 20])
@pytest.mark.parametrize("method", ["GetReport", "StopSession", "Watch", "StreamEvents",
                                    "StartSession"])
def test_a_long_unknown_name_gets_not_found(daemon: Daemon, stub: pb_grpc.TracerStub,
                                            method: str, size: int) -> None:
    # The error message must stay small whatever the client sent: a status message is
    # an HTTP/2 trailer, and a client refuses trailers over 16 KiB (it would see
    # RESOURCE_EXHAUSTED, not NOT_FOUND).
    name = "x" * size
    req: Message = {
        "GetReport": pb.GetReportRequest(session_id=name),
        "StopSession": pb.StopSessionRequest(session_id=name),
        "Watch": pb.WatchRequest(session_id=name, interval_ms=100),
        "StreamEvents": pb.StreamEventsRequest(session_id=name),
        "StartSession": pb.StartSessionRequest(target=pb.Target(
            cgroup=pb.CgroupTarget(path=name))),
    }[method]
    out = expect(daemon, stub, method, req)
    assert out.code == NOT_FOUND, out


def test_a_session_on_the_daemons_parent_does_not_trace_the_daemon(
        daemon: Daemon, stub: pb_grpc.TracerStub) -> None:
    # This test process is the daemon's parent: its descendants include the daemon, which
    # must never count (or, with a kill budget, kill) itself.
    with daemon.client() as c:
        s = c.start_pid(os.getpid(), children=True, options=SessionOptions(per_process=True))
        try:
            _, report = c.report(s.id)
        finally:
            c.stop(s.id)
    assert daemon.proc.pid not in report.processes
    assert os.getpid() in report.processes


def test_children_walk_ends_on_a_process_that_forks_all_the_time(tmp_path: Path) -> None:
    # A shell loop forks a child every few ms. Starting a session on it with children
    # must not walk its ever-new children for ever (holding the daemon's lock: every
    # other call would wait, and SIGTERM too). Its own daemon, so a hang stays here.
    dm = Daemon(tmp_path).wait_ready()
    forker = subprocess.Popen(["sh", "-c", "while :; do /bin/true; done"])
    try:
        with dm.client(timeout=UNARY_TIMEOUT) as c:
            s = c.start_pid(forker.pid, children=True)
            assert c.stop(s.id).state == State.FINISHED
    finally:
        forker.kill()
        forker.wait()
        dm.stop(timeout=10)  # killed after that: a wedged daemon does not answer SIGTERM


def test_a_session_on_a_fork_heavy_tree_leaves_the_daemon_responsive(tmp_path: Path) -> None:
    # The same loop, started once the session is: hundreds of processes a second fork,
    # exec and exit inside the session. The daemon keeps answering while it counts them.
    dm = Daemon(tmp_path).wait_ready()
    # Niced: on two busy CPUs an unthrottled loop would otherwise starve the daemon of
    # CPU, which is not what this tests (the daemon's own cost per fork and exit is).
    forker = subprocess.Popen(["nice", "-n", "19", "sh", "-c",
                               "read x; while :; do /bin/true; done"],
                              stdin=subprocess.PIPE, text=True)
    assert forker.stdin is not None
    try:
        with dm.client(timeout=UNARY_TIMEOUT) as c:
            s = c.start_pid(forker.pid, children=True)
            forker.stdin.write("go\n")
            forker.stdin.flush()
            time.sleep(2)
            for _ in range(3):
                _, report = c.report(s.id)
                assert c.info().sessions_running == 1
            assert len(report.processes) >= 1
            forker.kill()
            assert c.stop(s.id).state == State.FINISHED
            assert sum(st.calls for st in c.report(s.id)[1].totals().values()) > 0
    finally:
        forker.kill()
        forker.wait()
        dm.stop(timeout=10)


# ---------------------------------------------------------------------- flood


def _stop(s: pb_grpc.TracerStub, sid: str) -> pb.StopSessionResponse:
    """StopSession until it is let in: a flood may fill the daemon's RPC slots."""
    for _ in range(200):
        try:
            r: pb.StopSessionResponse = s.StopSession(pb.StopSessionRequest(session_id=sid),
                                                      timeout=UNARY_TIMEOUT)
            return r
        except grpc.RpcError as e:
            err: Any = e
            if err.code() != EXHAUSTED:
                raise
            time.sleep(0.05)
    raise AssertionError(f"StopSession {sid}: never let in")


@pytest.mark.parametrize("threads,per_thread", [(8, 300), (64, 100)],
                         ids=["8-threads", "64-threads"])
def test_start_session_flood_keeps_health_checks_answered(
        daemon: Daemon, stub: pb_grpc.TracerStub, threads: int, per_thread: int) -> None:
    """StartSession from many threads (valid ones on a sleeper, invalid ones) while a
    health check runs every 100 ms. 64 threads are more than the daemon's RPC slots
    (max_watchers + 16): RESOURCE_EXHAUSTED is then a right answer to anything but the
    health check, which must keep answering SERVING."""
    sleeper = Sleeper()
    info0 = stub.GetInfo(pb.GetInfoRequest(), timeout=UNARY_TIMEOUT)
    assert info0.sessions_running == 0
    health: list[str] = []
    codes: Counter[str] = Counter()
    wrong: list[str] = []
    done = threading.Event()

    def check_health() -> None:
        with grpc.insecure_channel(f"unix:{daemon.socket}") as ch:
            h = health_pb2_grpc.HealthStub(ch)
            while not done.is_set():
                try:
                    r = h.Check(health_pb2.HealthCheckRequest(service="tracerd.v1.Tracer"),
                                timeout=5)
                    health.append(health_pb2.HealthCheckResponse.ServingStatus.Name(r.status))
                except grpc.RpcError as e:
                    err: Any = e
                    health.append(f"{err.code().name}: {err.details()}")
                done.wait(0.1)

    def flood(k: int) -> None:
        mine: list[str] = []
        with grpc.insecure_channel(f"unix:{daemon.socket}") as ch:
            s = pb_grpc.TracerStub(ch)
            for i in range(per_thread):
                kind = (k + i) % 6
                opts = pb.SessionOptions(label=f"flood-{k}-{i}")
                # The session cap is checked before the target: at the cap, a bad
                # target is refused as RESOURCE_EXHAUSTED too (the options come first),
                # and so is any call when every RPC slot is taken.
                if kind == 0:
                    tgt = pb.Target(pid=pb.PidTarget(pid=0))
                    want = {INVALID, EXHAUSTED}
                elif kind == 1:
                    tgt = pb.Target(cgroup=pb.CgroupTarget(path=f"tracerd-none-{k}-{i}"))
                    want = {NOT_FOUND, EXHAUSTED}
                elif kind == 2:
                    tgt = pb.Target(pid=pb.PidTarget(pid=sleeper.pid))
                    opts.syscalls.append("no_such_syscall")
                    want = {INVALID, EXHAUSTED}
                else:
                    tgt = pb.Target(pid=pb.PidTarget(pid=sleeper.pid, children=kind == 4))
                    if kind == 5:
                        opts.budget.append(pb.Assertion(name="calls", type="span_count",
                                                        max_spans=10**6, action="warn"))
                        opts.per_process = True
                    want = {OK, EXHAUSTED}
                details = ""
                try:
                    r = s.StartSession(pb.StartSessionRequest(target=tgt, options=opts),
                                       timeout=UNARY_TIMEOUT)
                    code = OK
                    mine.append(r.session_id)
                except grpc.RpcError as e:
                    err: Any = e
                    code, details = err.code(), err.details() or ""
                codes[code.name] += 1
                if code not in want:
                    wrong.append(f"{kind}: {code} {details}")
                # Each thread keeps up to 3 running: 8 threads reach the cap of 12.
                while len(mine) > 3 or (mine and i % 7 == 0):
                    stopped = _stop(s, mine.pop(0))
                    if stopped.session.state == pb.SESSION_STATE_RUNNING:
                        wrong.append(f"still running after StopSession: {stopped}")
            for sid in mine:
                _stop(s, sid)

    checker = threading.Thread(target=check_health, daemon=True)
    checker.start()
    workers = [threading.Thread(target=flood, args=(k,), daemon=True) for k in range(threads)]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join(300)  # a liveness bound only
        assert not any(w.is_alive() for w in workers), "the flood did not finish"
    finally:
        done.set()
        checker.join(30)
        sleeper.close()
    assert not wrong, wrong[:10]
    assert sum(codes.values()) == threads * per_thread
    # The session cap (or the RPC slots) was reached and answered as such.
    assert codes["RESOURCE_EXHAUSTED"] > 0 and codes["OK"] > 0, codes
    assert health and all(h == "SERVING" for h in health), Counter(health)
    assert daemon.proc.poll() is None
    info = stub.GetInfo(pb.GetInfoRequest(), timeout=UNARY_TIMEOUT)
    assert info.sessions_running == 0 and info.tracked_pids == info0.tracked_pids
    assert info.watchers == 0


# ---------------------------------------------------------------------- config and budget files


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) \
            else repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"


def toml_document(doc: dict[str, Any]) -> str:
    lines = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in doc.items()
             if not isinstance(v, dict) and not (isinstance(v, list) and v
                                                 and all(isinstance(x, dict) for x in v))]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"[{json.dumps(k)}]")
            lines += [f"{json.dumps(kk)} = {_toml_value(vv)}" for kk, vv in v.items()]
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for entry in v:
                lines.append(f"[[{json.dumps(k)}]]")
                lines += [f"{json.dumps(kk)} = {_toml_value(vv)}" for kk, vv in entry.items()]
    return "\n".join(lines) + "\n"


_TOML_SCALARS = st.one_of(
    st.booleans(), st.sampled_from([0, -1, 1, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**64, 10**30]),
    st.integers(), DOUBLE, st.text(_CHARS, max_size=20),
    st.sampled_from(["", "/", "/nonexistent", "a\0b", "127.0.0.1:0", "[::1]:99999", "debug",
                     "file", "rss", "alert", "enforce"]))
_TOML_VALUES = st.recursive(_TOML_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(_CHARS, max_size=8), inner,
                                                 max_size=3)), max_leaves=8)

_INTS = st.one_of(st.integers(1, 10**6), st.sampled_from(
    [0, -1, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, 10**30]))
_FLOATS = st.one_of(st.floats(0.001, 1e6), DOUBLE, _INTS)
_PATHS = st.sampled_from(["/nonexistent", "relative/x", "", "a\0b", "/", "/proc/self/mem"])
#: Each key with values that are mostly of the right type (so parsing goes deep), some of
#: them out of range; now and then any value at all.
_CONFIG_KEYS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "": {"socket": _PATHS, "socket_group": st.sampled_from(["root", "nogroup", "", "\0"]),
         "listen": st.lists(st.sampled_from(["127.0.0.1:0", "[::1]:7345", "x", "a:99999"]),
                            max_size=2),
         "tls_cert": _PATHS, "tls_key": _PATHS, "tls_client_ca": _PATHS,
         "insecure": st.booleans(), "tokens": _PATHS, "state_dir": _PATHS,
         "log_level": st.sampled_from(["debug", "info", "warning", "error", "x", ""]),
         "metrics": st.sampled_from(["127.0.0.1:9464", "[::1]:1", ":0", "x", "h:65536"]),
         "bogus": _TOML_SCALARS},
    "limits": {k: _INTS for k in [
        "max_sessions", "max_watchers", "max_tracked_pids", "min_interval_ms",
        "max_interval_ms", "max_finished_sessions", "max_duration_ms", "max_limits",
        "event_backlog", "max_message_bytes", "bogus"]},
    "history": {"max_age_days": _FLOATS, "max_sessions": _INTS, "bogus": _INTS},
    "otlp": {"endpoint": st.sampled_from(["127.0.0.1:4317", "x", "h:99999"]),
             "insecure": st.booleans(), "ca_file": _PATHS,
             "headers": st.dictionaries(st.text(_CHARS, max_size=5),
                                        st.one_of(st.text(_CHARS, max_size=5), _INTS),
                                        max_size=2),
             "service_name": st.text(_CHARS, max_size=10), "metrics_interval_s": _FLOATS,
             "bogus": _INTS},
    "rule": {"name": st.one_of(st.sampled_from(["r", "r-1.x", "", "a b", "x" * 65]),
                               st.text(_CHARS, max_size=8)),
             "path": st.one_of(_PATHS, st.just("/usr/bin/" + "x" * 300)),
             "comm": st.one_of(st.sampled_from(["sh", "x" * 16, "a\0", ""]), SHORT),
             "cgroup": st.sampled_from(["", "/", "nonexistent", "../..", "a\0b"]),
             "uids": st.lists(_INTS, max_size=3), "budget": _PATHS,
             "actions": st.lists(st.sampled_from(["alert", "enforce", "x"]), max_size=2),
             "syscalls": st.lists(SHORT, max_size=3), "per_process": st.booleans(),
             "peak_rss": st.booleans(), "duration_ms": _INTS, "bogus": _INTS},
}


@st.composite
def config_documents(draw: st.DrawFn) -> dict[str, Any]:
    def table(section: str) -> dict[str, Any]:
        keys = draw(st.lists(st.sampled_from(sorted(_CONFIG_KEYS[section])), max_size=4,
                             unique=True))
        return {k: draw(_CONFIG_KEYS[section][k]) if draw(st.integers(0, 9)) else
                draw(_TOML_VALUES) for k in keys}

    doc = table("")
    for section in draw(st.lists(st.sampled_from(["limits", "history", "otlp", "rule"]),
                                 max_size=3, unique=True)):
        doc[section] = [table("rule") for _ in range(draw(st.integers(1, 2)))] \
            if section == "rule" else table(section)
    return doc


def _config_is_servable(cfg: _config.DaemonConfig) -> None:
    """What serve() does with the values, short of serving: no exception may come of it."""
    assert 0 < cfg.max_message_bytes <= 2**31 - 1, cfg.max_message_bytes  # a C int in grpc
    # history: prune computes (now - max_age) in ns; SQLite integers are signed 64-bit.
    age_ns = cfg.history_max_age_days * 86400 * 1e9
    assert math.isfinite(age_ns) and age_ns < 2**63, cfg.history_max_age_days
    lim = cfg.limits
    assert lim.min_interval_ms <= lim.max_interval_ms, lim  # or no Watch could ever be valid
    # Paths and names go to the OS, which takes no NUL (Python raises ValueError).
    texts = [cfg.socket, cfg.socket_group, cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca,
             cfg.tokens, cfg.state_dir, cfg.metrics, *cfg.listen]
    assert not any(t and "\0" in t for t in texts), texts


@fuzz(1000)
@given(doc=st.one_of(config_documents(), config_documents(), config_documents(),
                     st.dictionaries(st.text(_CHARS, max_size=8), _TOML_VALUES, max_size=4)),
       garble=st.one_of(st.none(), st.none(), st.none(), st.integers(0, 400)))
def test_fuzz_config_files(doc: dict[str, Any], garble: int | None) -> None:
    text = toml_document(doc)
    if garble is not None:  # cut it anywhere: half a string, half a table header
        text = text[:garble]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "tracerd.toml"
        path.write_text(text)
        try:
            cfg = _config.load_config(str(path))
        except TracerdError as e:
            message = str(e)
            event("refused: " + message.removeprefix(str(path) + ": ").split(":")[0][:30])
            assert message and "\n" not in message and e.exit_status == 65, repr(message)
            return
    event("accepted")
    _config_is_servable(cfg)


@st.composite
def budget_documents(draw: st.DrawFn) -> str:
    entries = []
    for i in range(draw(st.integers(0, 3))):
        kind = draw(st.one_of(st.sampled_from(TYPES), st.text(_CHARS, max_size=10)))
        entry: dict[str, Any] = {"name": draw(st.one_of(st.just(f"a{i}"), SHORT)), "type": kind}
        keys = [*_TYPE_FIELDS.get(kind, {}), "enabled", "fail_on_violation", "action",
                "signal", "bogus"]
        for k in draw(st.lists(st.sampled_from(keys), max_size=5, unique=True)):
            entry[k] = draw(st.one_of(_TOML_SCALARS, _TOML_VALUES))
        entries.append(entry)
    doc: dict[str, Any] = {"assertion": entries} if entries else {}
    if draw(st.integers(0, 9)) == 0:
        doc[draw(st.text(_CHARS, max_size=8))] = draw(_TOML_VALUES)
    text = toml_document(doc)
    cut = draw(st.one_of(st.none(), st.integers(0, len(text))))
    return text if cut is None else text[:cut]


@fuzz(300)
@given(text=st.one_of(budget_documents(), st.text(max_size=200)))
def test_fuzz_budget_files(text: str) -> None:
    try:
        result = _budgets.loads(text, "budget.toml")
    except _budgets.BudgetError as e:
        message = str(e)
        assert message.startswith("budget.toml:") and "\n" not in message, repr(message)
        return
    assert all(isinstance(a, _budgets.Assertion) for a in result)


def _one_line_refusal(proc: subprocess.CompletedProcess[str], status: int) -> None:
    """Exit ``status`` with one ``tracerd: ...`` line (after the daemon's log lines, which
    start with ``ts=``), and no traceback."""
    assert proc.returncode == status, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.strip().splitlines() if not x.startswith("ts=")]
    assert len(lines) == 1 and lines[0].startswith("tracerd: "), proc.stderr[-3000:]


def _serve_refuses(tmp_path: Path, text: str, status: int = 65) -> None:
    """``tracerd serve`` with this config must refuse it (one line, ``status``), not serve
    and not crash. A daemon that starts serving is stopped and the test fails."""
    config = tmp_path / "tracerd.toml"
    config.write_text(text)
    socket = tmp_path / "s.sock"
    proc = subprocess.Popen(
        [*TRACERD, "serve", "--config", str(config), "--socket", str(socket),
         "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120  # a liveness bound only
    while proc.poll() is None and not socket.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if proc.poll() is None:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        raise AssertionError(f"served a config it should refuse: {text!r}\n{err[-2000:]}")
    out, err = proc.communicate(timeout=30)
    _one_line_refusal(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), status)


@pytest.mark.parametrize("text", [
    "[limits]\nmax_sessions = 0\n",
    "[limits\n",
    "log_level = 3\n",
    "[limits]\nmax_message_bytes = 4294967296\n",  # beyond grpc's C int
    "[limits]\nmax_message_bytes = 1099511627776\n",
    "[history]\nmax_age_days = 1e308\n",  # (now - age) overflows
    "[history]\nmax_age_days = inf\n",
    "[history]\nmax_age_days = nan\n",
    '[[rule]]\nname = "r"\ncomm = "x"\nbudget = "a\\u0000b"\n',  # NUL in a path
    'state_dir = "a\\u0000b"\n',
    'tokens = "a\\u0000b"\n',
    'socket_group = "a\\u0000b"\n',
    "[limits]\nmin_interval_ms = 5000\nmax_interval_ms = 1000\n",  # no Watch could work
], ids=["zero", "syntax", "type", "msg-4G", "msg-1T", "age-1e308", "age-inf", "age-nan",
        "budget-nul", "state-dir-nul", "tokens-nul", "group-nul", "interval-min-max"])
def test_serve_refuses_bad_configs_in_one_line(tmp_path: Path, text: str) -> None:
    _serve_refuses(tmp_path, text)


@pytest.mark.parametrize("text,status", [
    ("[[assertion]]\nname = 'x'\ntype = 'span_count'\n", 65),
    ("[[assertion]\n", 65),
    ("\udcff", 65),
    ("[[assertion]]\n" + "name = 'x'\ntype = 'latency'\nmax_latency_us = nan\n", 65),
], ids=["missing-key", "syntax", "not-utf8", "nan"])
def test_cli_refuses_bad_budget_files_in_one_line(daemon: Daemon, tmp_path: Path, text: str,
                                                  status: int) -> None:
    budget = tmp_path / "budget.toml"
    budget.write_bytes(text.encode("utf-8", "surrogateescape"))
    sleeper = Sleeper()
    try:
        proc = daemon.cli("start", "--pid", str(sleeper.pid), "--budget", str(budget))
    finally:
        sleeper.close()
    _one_line_refusal(proc, status)
    unreadable = daemon.cli("start", "--pid", "1", "--budget", str(tmp_path / "none.toml"))
    _one_line_refusal(unreadable, 66)


# ---------------------------------------------------------------------- restarts


def test_same_client_works_after_the_daemon_restarts(tmp_path: Path) -> None:
    sleeper = Sleeper()
    first = Daemon(tmp_path).wait_ready()
    second: Daemon | None = None
    try:
        with Client(first.socket, timeout=30) as c:
            s = c.start_pid(sleeper.pid)
            c.stop(s.id)
            assert c.report(s.id)[0].state == State.FINISHED
            assert first.stop() == 0
            # Down: the reads are retried, then fail with UNAVAILABLE (not a hang).
            for _ in range(2):
                with pytest.raises(ClientError) as e:
                    c.list()
                assert e.value.code == Code.UNAVAILABLE and e.value.exit_status == 75
            second = Daemon(tmp_path).wait_ready()  # same socket, same state directory
            # The same Client object, without any call in between that could fail.
            listed = {x.id: x for x in c.list()}
            assert listed[s.id].from_history and listed[s.id].state == State.FINISHED
            summary, _ = c.report(s.id)
            assert summary.id == s.id and summary.state == State.FINISHED
            assert c.info().sessions_running == 0
            fresh = c.start_pid(sleeper.pid)  # StartSession works again too
            assert c.stop(fresh.id).state == State.FINISHED
            assert c.stop(fresh.id).state == State.FINISHED  # idempotent
    finally:
        first.stop()
        if second is not None:
            assert second.stop() == 0
        sleeper.close()


# ---------------------------------------------------------------------- cgroup removed


def _run_in(cgroup: Path, fixture_bin: Path, n: int) -> None:
    procs = str(cgroup / "cgroup.procs")
    done = subprocess.run([str(fixture_bin), "exact", str(n), "0"], check=False,
                          capture_output=True, timeout=60,
                          preexec_fn=lambda: Path(procs).write_text(str(os.getpid())))
    assert done.returncode == 0, done.stderr


def _wait_calls(c: Client, sid: str, name: str, want: int) -> None:
    from conftest import calls  # noqa: PLC0415

    deadline = time.monotonic() + 30
    while True:
        _, report = c.report(sid)
        if calls(report, name)[0] >= want:
            assert calls(report, name)[0] == want
            return
        assert time.monotonic() < deadline, (name, calls(report, name), want)
        time.sleep(0.1)


def test_cgroup_removed_mid_session(daemon: Daemon, fixture_bin: Path,
                                    cgroup_dir: Path) -> None:
    from conftest import calls  # noqa: PLC0415

    root = _procfs.cgroup2_root()
    assert root is not None
    sub = cgroup_dir / "sub"
    sub.mkdir()
    with daemon.client() as c:
        s = c.start_cgroup(str(cgroup_dir.relative_to(root)),
                           options=SessionOptions(per_process=True))
        _run_in(sub, fixture_bin, 7)  # exact N 0: 6N getppid over three processes
        _wait_calls(c, s.id, "getppid", 42)
        sub.rmdir()  # a child cgroup goes first, then the session's own
        _run_in(cgroup_dir, fixture_bin, 5)
        _wait_calls(c, s.id, "getppid", 72)
        cgroup_dir.rmdir()
        time.sleep(0.5)  # some drains with the cgroup gone
        summary, report = c.report(s.id)
        assert summary.state == State.RUNNING
        assert calls(report, "getppid") == (72, 0)
        assert any(x.id == s.id for x in c.list(State.RUNNING))
        # A new cgroup of the same name is another cgroup: not the session's.
        cgroup_dir.mkdir()
        _run_in(cgroup_dir, fixture_bin, 3)
        time.sleep(0.5)
        stopped = c.stop(s.id)
        assert stopped.state == State.FINISHED
        _, final = c.report(s.id)
        assert calls(final, "getppid") == (72, 0)
        # A session on the removed path now is refused as not found.
        gone = cgroup_dir / "gone"
        with pytest.raises(ClientError) as e:
            c.start_cgroup(str(gone.relative_to(root)))
        assert e.value.code == NOT_FOUND
        assert c.info().sessions_running == 0
    assert daemon.proc.poll() is None


# ---------------------------------------------------------------------- tracefs, bpffs


def _in_private_mounts(script: str, *args: str, **kw: Any) -> subprocess.Popen[str]:
    """``sh -c script`` in a new mount namespace with private propagation: whatever it
    mounts or unmounts is invisible to the host, which keeps its tracefs."""
    return subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             script, "sh", *args], text=True, **kw)


def _host_tracefs() -> bool:
    return Path("/sys/kernel/tracing/events").is_dir() or \
        Path("/sys/kernel/debug/tracing/events").is_dir()


@pytest.fixture
def host_tracefs_kept() -> Iterator[None]:
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed")
    assert _host_tracefs()
    yield
    assert _host_tracefs(), "the host lost its tracefs: a mount escaped the namespace"


_HIDE_TRACEFS = (
    "umount -l /sys/kernel/debug/tracing 2>/dev/null; umount -l /sys/kernel/tracing 2>/dev/null;"
    " umount -l /sys/kernel/debug 2>/dev/null; umount -l /sys/fs/bpf 2>/dev/null;"
    # Nothing to mount tracefs on: the kernel might as well not have it.
    " mount -t tmpfs -o ro,size=4k none /sys/kernel || exit 90; ")


@pytest.mark.usefixtures("host_tracefs_kept")
@pytest.mark.parametrize("command", [["serve", "--socket", "{socket}", "--state-dir", "{state}"],
                                     ["run", "--", "true"]], ids=["serve", "run"])
def test_tracefs_missing_is_a_clear_error(tmp_path: Path, command: list[str]) -> None:
    argv = [a.format(socket=tmp_path / "s.sock", state=tmp_path / "state") for a in command]
    proc = _in_private_mounts(_HIDE_TRACEFS + 'exec "$@"', *TRACERD, *argv,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    _one_line_refusal(done, 69)  # EXIT_BPF_UNUSABLE
    assert "tracefs" in err
    assert not (tmp_path / "s.sock").exists()


@pytest.mark.usefixtures("host_tracefs_kept")
def test_tracefs_unmounted_is_mounted_again_and_bpffs_is_not_needed(
        tmp_path: Path, fixture_bin: Path) -> None:
    # The daemon pins nothing, so the BPF filesystem is never needed; tracefs it mounts
    # itself (in its own mount namespace here) when nobody has.
    script = ("umount -l /sys/kernel/debug/tracing 2>/dev/null;"
              " umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/fs/bpf 2>/dev/null;"
              ' test -d /sys/kernel/tracing/events && exit 91; exec "$@"')
    socket = tmp_path / "run" / "tracerd.sock"
    log = open(tmp_path / "daemon.log", "w")  # noqa: SIM115 - closed below
    proc = _in_private_mounts(script, *TRACERD, "serve", "--socket", str(socket),
                              "--state-dir", str(tmp_path / "state"),
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not socket.exists():
            assert proc.poll() is None, (proc.returncode, (tmp_path / "daemon.log").read_text())
            assert time.monotonic() < deadline
            time.sleep(0.1)
        with Client(str(socket), timeout=30) as c:
            g = subprocess.Popen([str(fixture_bin), "exact", "4", "0"], stdout=subprocess.PIPE)
            s = c.start_pid(os.getpid())  # counting works in there
            g.wait(30)
            assert c.stop(s.id).state == State.FINISHED
            assert c.info().version
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
