"""Syscall enrichment: attribute each syscall to the function that made it.

A debugger records its own function enter/exit events per thread; tracerd records every
syscall with its thread and CLOCK_MONOTONIC start and end. :func:`merge` joins the two: each
syscall gets ``"parent_function"`` (the innermost function active on its thread when it
started, or null) and ``"stack"`` (every active function, outermost first).

A function is *active* for a syscall when it entered at or before the syscall's start and
had not exited before the syscall's end (an enter at exactly the start and an exit at
exactly the end both count). Timelines are per thread; unbalanced ones are repaired as
described at :func:`merge` and every repair is reported in the warnings.

Pure logic: no BPF and no gRPC, so a debugger can import it on any machine.

Function timeline, JSON lines (one object per line, blank lines ignored)::

    {"clock": "realtime", "realtime_minus_monotonic_ns": N}     optional header, first line
    {"event": "enter", "function": "main", "timestamp_ns": 1000, "tid": 101}
    {"event": "exit", "function": "main", "timestamp_ns": 9000, "tid": 101}

``"type"`` is accepted for ``"event"``, ``"name"`` for ``"function"``, and ``"pid"`` alongside
or instead of ``"tid"`` (all records must then lack ``"tid"``: syscalls are matched by pid).
Wall-clock records carry ``"wall_ns"`` or ``"timestamp_wall_ns"``; with ``clock="realtime"``
(argument or header) ``"timestamp_ns"`` itself is wall-clock time.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Literal, TypeAlias

from . import syscalls as _syscalls
from ._errors import EXIT_CANTCREAT, EXIT_DATAERR, TracerdError
from .model import SyscallEvent

__all__ = [
    "Clock",
    "EnrichError",
    "FunctionRecord",
    "FunctionTimeline",
    "SyscallLog",
    "enrich",
    "main",
    "merge",
    "read_functions",
    "read_syscalls",
]

Clock: TypeAlias = Literal["monotonic", "realtime"]
Source: TypeAlias = "str | os.PathLike[str] | IO[str]"

# sysexits(3) EX_NOINPUT. Spelled here rather than imported: the name of its constant in
# tracerd._errors is being reworked, and the number is what the CLI contract fixes.
EXIT_NOINPUT = 66

_CLOCKS: tuple[Clock, ...] = ("monotonic", "realtime")
_WALL_KEYS = ("wall_ns", "timestamp_wall_ns")
_HEADER_OFFSET_KEY = "realtime_minus_monotonic_ns"
#: warnings quote this many examples of each kind of problem, then say how many more
_EXAMPLES = 3


class EnrichError(TracerdError):
    """Input that cannot be used, reported as ``SOURCE:LINE: problem`` (or ``SOURCE: problem``).

    ``exit_status`` is 65 (EX_DATAERR) for malformed data and 66 (EX_NOINPUT) for a file
    that cannot be read. For in-memory input ``line`` is the 1-based position of the item.
    """

    def __init__(self, source: str, line: int | None, problem: str,
                 exit_status: int = EXIT_DATAERR) -> None:
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {problem}", exit_status)
        self.source = source
        self.line = line
        self.problem = problem


@dataclass(frozen=True, slots=True)
class FunctionRecord:
    """One function enter or exit, with its timestamp already on CLOCK_MONOTONIC."""

    event: Literal["enter", "exit"]
    function: str
    timestamp_ns: int
    tid: int | None = None
    pid: int | None = None


@dataclass
class FunctionTimeline:
    """A parsed function timeline, ready for :func:`merge`."""

    records: list[FunctionRecord]
    #: "tid", or "pid" when no record has a tid (then threads of a process are not told apart)
    matched_by: Literal["tid", "pid"] = "tid"
    source: str = "<functions>"
    #: the header line's fields, if the file had one
    header: dict[str, Any] = field(default_factory=dict)
    #: {"from": "realtime", "offset_ns": N, "source": "argument"|"file"|"measured-at-merge"},
    #: or None when no record needed converting
    clock_conversion: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class SyscallLog:
    """Syscall events as read from a file: the event objects and the document's metadata."""

    events: list[dict[str, Any]]
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = "<syscalls>"


# ------------------------------------------------------------------------------ reading


def _read_text(source: Source, default_name: str) -> tuple[str, str]:
    """The whole text of ``source`` and the name to quote it by in messages."""
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        try:
            with open(name, "rb") as f:
                data = f.read()
        except OSError as e:
            raise EnrichError(name, None, f"cannot read: {e.strerror or e}", EXIT_NOINPUT) from None
        try:
            return data.decode("utf-8"), name
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            raise EnrichError(name, line, "not UTF-8 text") from None
    given = getattr(source, "name", None)
    name = given if isinstance(given, str) else default_name
    try:
        return source.read(), name
    except OSError as e:
        raise EnrichError(name, None, f"cannot read: {e.strerror or e}", EXIT_NOINPUT) from None
    except UnicodeDecodeError:
        raise EnrichError(name, None, "not UTF-8 text") from None


def _lines(text: str) -> Iterator[tuple[int, str]]:
    # str.splitlines() also breaks at U+2028 and friends, which JSON strings may contain
    # raw: split at "\n" only, so line numbers match what an editor shows.
    for n, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip("\r")
        if line.strip():
            yield n, line


def _json_line(line: str, source: str, n: int) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise EnrichError(source, n, f"bad JSON: {e.msg} (column {e.colno})") from None


def _int_field(obj: Mapping[str, Any], key: str, source: str, line: int | None) -> int | None:
    """``obj[key]`` as an int; None when absent or null."""
    v = obj.get(key)
    if v is None or type(v) is int:  # the common case, first: this runs per field per event
        return v
    # bool is an int subclass, but true/false is no timestamp or thread id.
    if not isinstance(v, int) or isinstance(v, bool):
        raise EnrichError(source, line, f'"{key}" must be an integer, not {json.dumps(v)}')
    return v


def _measure_offset() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC now, read as tightly as this process can.

    The realtime read is bracketed by two monotonic reads; the tightest of a few tries
    bounds the error by one clock read (a preemption between reads only widens a bracket).
    """
    best: tuple[int, int] | None = None
    for _ in range(5):
        m0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        rt = time.clock_gettime_ns(time.CLOCK_REALTIME)
        m1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        if best is None or m1 - m0 < best[0]:
            best = (m1 - m0, rt - (m0 + m1) // 2)
    assert best is not None
    return best[1]


class _Offset:
    """The realtime - monotonic offset, resolved on first use: argument, file, else measured.

    Lazy so a timeline that needs no conversion never reports (or measures) an offset.
    """

    def __init__(self, argument: int | None, from_file: int | None) -> None:
        self._argument = argument
        self._from_file = from_file
        self.conversion: dict[str, Any] | None = None

    def get(self) -> int:
        if self.conversion is None:
            if self._argument is not None:
                value, source = self._argument, "argument"
            elif self._from_file is not None:
                value, source = self._from_file, "file"
            else:
                value, source = _measure_offset(), "measured-at-merge"
            self.conversion = {"from": "realtime", "offset_ns": value, "source": source}
        offset: int = self.conversion["offset_ns"]
        return offset


def _function_record(obj: Any, source: str, line: int, clock: Clock,
                     offset: _Offset) -> FunctionRecord:
    if isinstance(obj, FunctionRecord):
        return obj
    # dict first: isinstance against the Mapping ABC is slow, and this runs per record
    if not isinstance(obj, (dict, Mapping)):
        raise EnrichError(source, line, "a function record must be a JSON object")
    kind = obj.get("event", obj.get("type"))
    if kind is None:
        raise EnrichError(source, line, 'missing "event" (or "type")')
    if kind not in ("enter", "exit"):
        raise EnrichError(source, line,
                          f'"event" must be "enter" or "exit", not {json.dumps(kind)}')
    name = obj.get("function", obj.get("name"))
    if name is None:
        raise EnrichError(source, line, 'missing "function" (or "name")')
    if not isinstance(name, str):
        raise EnrichError(source, line, f'"function" must be a string, not {json.dumps(name)}')
    tid = _int_field(obj, "tid", source, line)
    pid = _int_field(obj, "pid", source, line)
    if tid is None and pid is None:
        raise EnrichError(source, line, 'missing "tid" (or "pid")')

    ts = _int_field(obj, "timestamp_ns", source, line)
    if ts is not None and clock == "monotonic":
        # A monotonic timestamp is used as is, even when a wall-clock one rides along.
        return FunctionRecord(kind, name, ts, tid, pid)
    wall = next((w for k in _WALL_KEYS if (w := _int_field(obj, k, source, line)) is not None),
                ts)  # with clock="realtime", timestamp_ns is the wall-clock time
    if wall is None:
        raise EnrichError(source, line, 'missing "timestamp_ns" (or "wall_ns")')
    return FunctionRecord(kind, name, wall - offset.get(), tid, pid)


def _build_timeline(items: Iterable[tuple[int, Any]], source: str, *,
                    clock: Clock | None, clock_offset_ns: int | None,
                    header: dict[str, Any]) -> FunctionTimeline:
    if clock is None:
        clock = header.get("clock", "monotonic")
    assert clock in _CLOCKS
    offset = _Offset(clock_offset_ns, header.get(_HEADER_OFFSET_KEY))
    records: list[FunctionRecord] = []
    first_line: int | None = None
    has_tid = True
    for line, obj in items:
        rec = _function_record(obj, source, line, clock, offset)
        # Matching by tid and by pid cannot be mixed: a record without tid could belong to
        # any thread of its process. The first record decides; the rest must agree.
        if first_line is None:
            first_line, has_tid = line, rec.tid is not None
        elif (rec.tid is not None) != has_tid:
            which = "has one" if has_tid else "has none"
            raise EnrichError(source, line,
                              f'"tid" {"missing" if has_tid else "given"} although record at '
                              f'line {first_line} {which} (all records must have "tid", or none)')
        records.append(rec)

    warnings: list[str] = []
    if not has_tid:
        warnings.append('function records have no "tid": syscalls matched by pid, so calls of '
                        "different threads of one process are not told apart")
    if offset.conversion is not None and offset.conversion["source"] == "measured-at-merge":
        warnings.append("wall-clock timestamps converted with the realtime - monotonic offset "
                        "measured now: valid only on the same boot and if the clock was not "
                        "stepped since the recording (pass --clock-offset-ns or write a header "
                        "line to pin it)")
    return FunctionTimeline(records, "tid" if has_tid else "pid", source, header,
                            offset.conversion, warnings)


def _header(obj: Any, source: str, line: int) -> dict[str, Any] | None:
    """The header line's fields, or None if ``obj`` is a record rather than a header."""
    if (not isinstance(obj, dict) or "event" in obj or "type" in obj
            or not ("clock" in obj or _HEADER_OFFSET_KEY in obj)):
        return None
    if obj.get("clock", "monotonic") not in _CLOCKS:
        raise EnrichError(source, line, f'"clock" must be "monotonic" or "realtime", '
                                        f'not {json.dumps(obj["clock"])}')
    _int_field(obj, _HEADER_OFFSET_KEY, source, line)
    return obj


def read_functions(source: Source, *, clock: Clock | None = None,
                   clock_offset_ns: int | None = None) -> FunctionTimeline:
    """Read a function timeline (JSON lines) from a path or an open text file.

    ``clock`` says what ``"timestamp_ns"`` holds; by default the header's ``"clock"``, else
    monotonic. Wall-clock times become monotonic as ``wall - offset``, the offset being
    ``clock_offset_ns``, else the header's ``"realtime_minus_monotonic_ns"``, else measured
    now. Raises EnrichError (65 malformed, 66 unreadable).
    """
    if clock is not None and clock not in _CLOCKS:
        raise ValueError(f"clock must be 'monotonic' or 'realtime', not {clock!r}")
    text, name = _read_text(source, "<functions>")
    lines = _lines(text)
    header: dict[str, Any] = {}
    first = next(lines, None)
    items: list[tuple[int, Any]] = []
    if first is not None:
        obj = _json_line(first[1], name, first[0])
        found = _header(obj, name, first[0])
        if found is not None:
            header = found
        else:
            items.append((first[0], obj))
    items.extend((n, _json_line(line, name, n)) for n, line in lines)
    return _build_timeline(items, name, clock=clock, clock_offset_ns=clock_offset_ns,
                           header=header)


@dataclass(frozen=True, slots=True)
class _Span:
    """What merging needs of one syscall."""

    start: int
    end: int
    tid: int | None
    pid: int | None


def _is_syscall(obj: Mapping[str, Any]) -> bool:
    # Other event types (a future lifecycle event, say) pass through unattributed; an object
    # without "type" comes from a JSON-lines producer that only writes syscalls.
    return bool(obj.get("type", "syscall") == "syscall")


def _span(obj: Mapping[str, Any], source: str, line: int | None, label: str = "") -> _Span:
    """Validate one syscall object; ``label`` prefixes problems (e.g. ``events[3]: ``)."""
    start, end = obj.get("timestamp_ns"), obj.get("end_ns")
    tid, pid = obj.get("tid"), obj.get("pid")
    if type(start) is int and type(end) is int and type(tid) is int and type(pid) is int:
        return _Span(start, end, tid, pid)  # tracerd's own events: no more checks needed

    def bad(problem: str) -> EnrichError:
        return EnrichError(source, line, label + problem)

    def get(key: str) -> int | None:
        try:
            return _int_field(obj, key, source, line)
        except EnrichError as e:
            raise bad(e.problem) from None

    # Only the fields used are checked: duration_ns only matters when end_ns is absent.
    start = get("timestamp_ns")
    if start is None:
        start = get("start_ns")
    if start is None:
        raise bad('missing "timestamp_ns"')
    end = get("end_ns")
    if end is None:
        # A call that never returned (exit_group) has no end: it is a point in time.
        duration = get("duration_ns")
        end = start + duration if duration is not None else start
    tid, pid = get("tid"), get("pid")
    if tid is None and pid is None:
        raise bad('missing "tid" (or "pid")')
    return _Span(start, end, tid, pid)


_WS = re.compile(r"[ \t\n\r]*")


def _item_line(text: str, index: int, key: str | None) -> int | None:
    """Line of item ``index`` of the top-level array (``key`` None) or of ``doc[key]``.

    Only called to point an error message at the right line of a valid document: json.loads
    does not keep positions, so the document is walked again with raw_decode.
    """
    dec = json.JSONDecoder()

    def ws(i: int) -> int:
        m = _WS.match(text, i)
        assert m is not None  # the pattern matches the empty string
        return m.end()

    def array_item(i: int) -> int | None:
        i = ws(i + 1)  # past "["
        n = 0
        while text[i] != "]":
            if n == index:
                return text.count("\n", 0, i) + 1
            _, i = dec.raw_decode(text, i)
            i = ws(i)
            if text[i] == ",":
                i = ws(i + 1)
            n += 1
        return None

    try:
        i = ws(0)
        if key is None:
            return array_item(i) if text[i] == "[" else None
        found: int | None = None
        i = ws(i + 1)  # past "{"
        while text[i] != "}":
            k, i = dec.raw_decode(text, i)
            i = ws(ws(i) + 1)  # past ":"
            if k == key and text[i] == "[":
                found = array_item(i)  # the last duplicate key wins, as in json.loads
            _, i = dec.raw_decode(text, i)
            i = ws(i)
            if text[i] == ",":
                i = ws(i + 1)
        return found
    except (IndexError, ValueError):
        return None


def read_syscalls(source: Source) -> SyscallLog:
    """Read syscall events from a path or an open text file.

    Accepts ``tracerd run --events --json`` output (``{"metadata": ..., "events": [...]}``),
    a JSON array of events, or JSON lines of event objects. Raises EnrichError (65
    malformed, 66 unreadable).
    """
    text, name = _read_text(source, "<syscalls>")
    metadata: dict[str, Any] = {}
    key: str | None = None  # where the events sit in a whole-text document
    try:
        doc = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as e:
        if e.msg != "Extra data":
            raise EnrichError(name, e.lineno, f"bad JSON: {e.msg} (column {e.colno})") from None
        # More than one value: JSON lines. If even the first line does not parse alone, the
        # text is one multi-line document with trailing junk: report the junk.
        lines = list(_lines(text))
        try:
            json.loads(lines[0][1])
        except json.JSONDecodeError:
            raise EnrichError(name, e.lineno, "bad JSON: extra data after the document") from None
        events = [(n, _json_line(line, name, n)) for n, line in lines]
    else:
        if isinstance(doc, dict) and "events" in doc:
            key = "events"
            meta = doc.get("metadata", {})
            if not isinstance(meta, dict):
                raise EnrichError(name, None, '"metadata" must be an object')
            metadata = dict(meta)
            if not isinstance(doc["events"], list):
                raise EnrichError(name, None, '"events" must be a list')
            events = [(0, obj) for obj in doc["events"]]  # 0: line found only if needed
        elif isinstance(doc, list):
            events = [(0, obj) for obj in doc]
        elif isinstance(doc, dict):  # JSON lines holding a single event
            events = [(next(_lines(text))[0], doc)]
        else:
            raise EnrichError(name, 1, "expected a JSON object or array")

    clock = metadata.get("clock", "monotonic")
    if clock != "monotonic":
        raise EnrichError(name, None, f"syscall timestamps are on clock {json.dumps(clock)}: "
                                      "only monotonic is supported")
    out: list[dict[str, Any]] = []
    for i, (n, obj) in enumerate(events):
        if n:
            line: int | None = n
            label = ""
        else:
            line = None
            label = f"{key}[{i}]: " if key else f"[{i}]: "
        if not isinstance(obj, dict):
            raise EnrichError(name, line or _item_line(text, i, key),
                              label + "an event must be a JSON object")
        if _is_syscall(obj):
            try:
                _span(obj, name, line, label)
            except EnrichError as e:
                if line is None:
                    raise EnrichError(name, _item_line(text, i, key), e.problem) from None
                raise
        out.append(obj)
    return SyscallLog(out, metadata, name)


# ------------------------------------------------------------------------------ merging


@dataclass(slots=True)
class _Frame:
    """One call of a function on one thread, its exit known once the thread is paired."""

    name: str
    enter_ns: float  # -inf: entered before the timeline began
    enter_pos: int  # index of its enter in the thread's sorted records (negative: synthesized)
    exit_ns: float = math.inf  # inf: never exited
    exit_pos: float = math.inf


class _Issues:
    """Counts of each kind of problem, with the first few examples, as warning lines."""

    _TEXT: Mapping[str, str] = {
        "exit_before_timeline": "exit(s) without an enter, taken as calls already in progress "
                                "when the timeline began",
        "exit_ignored": "exit(s) without an enter while other functions were active, ignored",
        "closed_implicitly": "enter(s) without an exit, taken as ended when an enclosing "
                             "function exited",
        "never_exited": "enter(s) without an exit by the end of the timeline, taken as still "
                        "active",
        "outlived_function": "syscall(s) ended after the function they started in had exited "
                             "(clock skew or a wrong clock offset?), attributed to the enclosing "
                             "function",
        "end_before_start": "syscall(s) end before they start",
        "no_thread": "syscall(s) without the id needed to match them, left unattributed",
    }

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, list[str]]] = {}

    def add(self, kind: str, example: str) -> None:
        count, examples = self._seen.get(kind, (0, []))
        if count < _EXAMPLES:
            examples.append(example)
        self._seen[kind] = (count + 1, examples)

    def warnings(self) -> list[str]:
        out = []
        for kind, text in self._TEXT.items():  # a stable order, whatever came first
            if kind in self._seen:
                count, examples = self._seen[kind]
                more = ", ..." if count > len(examples) else ""
                out.append(f"{count} {text}: {', '.join(examples)}{more}")
        return out


def _pair(records: Sequence[FunctionRecord], key: str, thread: int,
          issues: _Issues) -> list[_Frame]:
    """Pair one thread's enters and exits into frames, in the order they were entered.

    ``records`` must be sorted by timestamp (stably, so ties keep their recorded order).
    An exit closes the innermost open call of its function (recursion nests correctly), and
    any calls opened inside it that never exited. An exit with nothing open on the thread
    was a call in progress when the timeline began: it encloses everything before it. An
    exit of a function that is not open while others are is unexplainable and dropped.
    """
    frames: list[_Frame] = []
    before: list[_Frame] = []  # calls in progress at the start, innermost (first exit) first
    stack: list[_Frame] = []
    # name -> stack indexes of its open calls, so finding the innermost one is O(1) even
    # when exits do not match the top of the stack
    open_at: dict[str, list[int]] = {}
    for pos, rec in enumerate(records):
        t = rec.timestamp_ns
        if rec.event == "enter":
            frame = _Frame(rec.function, t, pos)
            open_at.setdefault(rec.function, []).append(len(stack))
            stack.append(frame)
            frames.append(frame)
            continue
        where = open_at.get(rec.function)
        if where:
            target = stack[where[-1]]
            while True:
                frame = stack.pop()
                open_at[frame.name].pop()  # the frame was on top: its name's last entry
                frame.exit_ns, frame.exit_pos = t, pos
                if frame is target:
                    break
                issues.add("closed_implicitly",
                           f'"{frame.name}" ({key} {thread}, entered at {frame.enter_ns}, '
                           f'closed by the exit of "{target.name}" at {t})')
        elif not stack:
            before.append(_Frame(rec.function, -math.inf, 0, t, pos))
            issues.add("exit_before_timeline", f'"{rec.function}" ({key} {thread}, exit at {t})')
        else:
            issues.add("exit_ignored", f'"{rec.function}" ({key} {thread}, exit at {t})')
    for frame in stack:
        issues.add("never_exited",
                   f'"{frame.name}" ({key} {thread}, entered at {frame.enter_ns})')
    # Calls in progress at the start nest in reverse order of their exits: the last to
    # exit is the outermost, and they sit below everything entered during the timeline.
    for i, frame in enumerate(reversed(before)):
        frame.enter_pos = i - len(before)
    return list(reversed(before)) + frames


def _attribute(frames: Sequence[_Frame], spans: Sequence[tuple[int, _Span]],
               key: str, thread: int, issues: _Issues) -> Iterator[tuple[int, list[str]]]:
    """(event index, stack) for one thread's syscalls, swept together with its frames.

    ``spans`` must be sorted by start. The stack replays the pairing: entering a frame first
    pops every frame that exited before that enter, so the stack always holds nested calls
    whose exits are non-increasing from bottom to top. The frames no longer active for a
    syscall are therefore a top slice, found from the top in O(frames dropped).
    """
    stack: list[_Frame] = []
    names: list[str] = []  # the names of stack, kept alongside so each result is one slice
    fi = 0
    for index, sp in spans:
        while fi < len(frames) and frames[fi].enter_ns <= sp.start:  # enter == start: active
            frame = frames[fi]
            fi += 1
            while stack and stack[-1].exit_pos < frame.enter_pos:
                stack.pop()
                names.pop()
            stack.append(frame)
            names.append(frame.name)
        while stack and stack[-1].exit_ns < sp.start:  # done with: later syscalls start later
            stack.pop()
            names.pop()
        k = len(stack)
        while k and stack[k - 1].exit_ns < sp.end:  # exit == end: still active
            k -= 1
        if k < len(stack):
            issues.add("outlived_function",
                       f'{key} {thread} at {sp.start}, "{stack[-1].name}" exited at '
                       f"{stack[-1].exit_ns} before the syscall ended at {sp.end}")
        yield index, names[:k]


def _event_dict(ev: SyscallEvent, name_of: Any) -> dict[str, Any]:
    """A SyscallEvent in the shape of the JSON events (without in-kernel argument data)."""
    ret = ev.ret
    err = errno.errorcode.get(-ret, f"E{-ret}") if ret is not None and -4096 < ret < 0 else None
    return {"type": "syscall", "name": name_of(ev.nr), "args": [hex(a) for a in ev.args],
            "return_value": ret, "error": err, "duration_ns": ev.duration_ns,
            "timestamp_ns": ev.start_ns, "end_ns": ev.end_ns, "pid": ev.pid, "tid": ev.tid,
            "nr": ev.nr}


def _syscall_inputs(syscalls: SyscallLog | Iterable[SyscallEvent | Mapping[str, Any]],
                    arch: str | None) -> tuple[list[dict[str, Any]], list[_Span | None]]:
    """The events as dicts, and for each its span (None: not a syscall, passed through)."""
    if isinstance(syscalls, SyscallLog):
        source = syscalls.source
        items: Iterable[SyscallEvent | Mapping[str, Any]] = syscalls.events
    else:
        source, items = "<syscalls>", syscalls
    name_of: Any = None
    events: list[dict[str, Any]] = []
    spans: list[_Span | None] = []
    for n, item in enumerate(items, 1):
        if isinstance(item, SyscallEvent):
            if name_of is None:
                try:
                    name_of = _syscalls.table_for(arch).name
                except _syscalls.UnsupportedArch:
                    name_of = lambda nr: f"syscall_{nr}"  # noqa: E731 - strace's spelling
            events.append(_event_dict(item, name_of))
            spans.append(_Span(item.start_ns, item.end_ns, item.tid, item.pid))
        elif isinstance(item, (dict, Mapping)):  # dict first: fast, see _function_record
            events.append(dict(item))
            spans.append(_span(item, source, n) if _is_syscall(item) else None)
        else:
            raise EnrichError(source, n, "an event must be a SyscallEvent or a mapping")
    return events, spans


@dataclass
class _Merged:
    events: list[dict[str, Any]]
    warnings: list[str]
    unattributed: int
    timeline: FunctionTimeline


def _merge(functions: FunctionTimeline | Iterable[FunctionRecord | Mapping[str, Any]],
           syscalls: SyscallLog | Iterable[SyscallEvent | Mapping[str, Any]],
           arch: str | None) -> _Merged:
    if isinstance(functions, FunctionTimeline):
        timeline = functions
    else:
        timeline = _build_timeline(enumerate(functions, 1), "<functions>", clock=None,
                                   clock_offset_ns=None, header={})
    events, spans = _syscall_inputs(syscalls, arch)
    key = timeline.matched_by
    issues = _Issues()

    by_thread: dict[int, list[FunctionRecord]] = {}
    for rec in timeline.records:
        thread = rec.tid if key == "tid" else rec.pid
        if thread is None:  # only a timeline built by hand can get here: read_* check it
            raise EnrichError(timeline.source, None,
                              f'a function record has no "{key}" but matched_by is "{key}"')
        by_thread.setdefault(thread, []).append(rec)
    calls: dict[int, list[tuple[int, _Span]]] = {}
    for i, sp in enumerate(spans):
        if sp is None:
            continue
        if sp.end < sp.start:
            issues.add("end_before_start", f"events[{i}] (start {sp.start}, end {sp.end})")
        thread = sp.tid if key == "tid" else sp.pid
        if thread is None:
            issues.add("no_thread", f'events[{i}] has no "{key}"')
            continue
        calls.setdefault(thread, []).append((i, sp))

    stacks: list[list[str] | None] = [None] * len(events)
    for thread in sorted(calls):  # sorted: warnings come out in the same order every run
        thread_calls = calls[thread]
        thread_calls.sort(key=lambda c: c[1].start)  # stable: ties keep input order
        records = by_thread.get(thread)
        if not records:
            for i, _ in thread_calls:
                stacks[i] = []
            continue
        records.sort(key=lambda r: r.timestamp_ns)  # stable: ties keep recorded order
        frames = _pair(records, key, thread, issues)
        for i, stack in _attribute(frames, thread_calls, key, thread, issues):
            stacks[i] = stack
    # Threads without syscalls still get their timelines checked, so the warnings cover
    # the whole input rather than depending on which threads happened to make calls.
    for thread in sorted(by_thread.keys() - calls.keys()):
        records = sorted(by_thread[thread], key=lambda r: r.timestamp_ns)
        _pair(records, key, thread, issues)

    unattributed = 0
    for i, found in enumerate(stacks):
        if spans[i] is None:
            continue  # not a syscall: passed through as is
        stack = found or []
        events[i]["parent_function"] = stack[-1] if stack else None
        events[i]["stack"] = stack
        unattributed += not stack
    return _Merged(events, timeline.warnings + issues.warnings(), unattributed, timeline)


def merge(functions: FunctionTimeline | Iterable[FunctionRecord | Mapping[str, Any]],
          syscalls: SyscallLog | Iterable[SyscallEvent | Mapping[str, Any]], *,
          warnings: list[str] | None = None, arch: str | None = None) -> list[dict[str, Any]]:
    """Each syscall, in input order, with ``"parent_function"`` and ``"stack"`` added.

    ``functions`` is a timeline from :func:`read_functions`, or records (FunctionRecord or
    record mappings with monotonic timestamps). ``syscalls`` is a log from
    :func:`read_syscalls`, or SyscallEvent objects (named by ``arch``'s table, default this
    machine's) or event mappings. Events whose ``"type"`` is not ``"syscall"`` pass through
    unchanged. Syscalls match function records by tid, or by pid if the records have none.

    ``"stack"`` lists the functions active on the thread, outermost first; a function is
    active if it entered at or before the syscall's start and did not exit before its end.
    Repairs of unbalanced timelines, each appended to ``warnings`` if given:

    * an exit closes the innermost open call of that function, and with it any calls
      opened inside that never exited;
    * an exit with no call open on the thread is a call in progress when the timeline
      began, enclosing everything earlier on the thread;
    * an exit of a function not open while others are is ignored;
    * a call never exited stays active to the end.

    Runs in O((F + S) log(F + S)) plus the size of the stacks written.
    """
    merged = _merge(functions, syscalls, arch)
    if warnings is not None:
        warnings.extend(merged.warnings)
    return merged.events


def enrich(functions: FunctionTimeline | Iterable[FunctionRecord | Mapping[str, Any]],
           syscalls: SyscallLog | Iterable[SyscallEvent | Mapping[str, Any]], *,
           arch: str | None = None) -> dict[str, Any]:
    """The document ``tracerd enrich`` writes: ``{"metadata": {...}, "events": [...]}``.

    The metadata is the syscall log's own, plus ``"functions"`` (source, record count, header),
    ``"syscalls"`` (source, event count), ``"matched_by"``, ``"clock_conversion"`` (or null),
    ``"unattributed"`` (syscalls with no active function) and ``"warnings"``.
    """
    merged = _merge(functions, syscalls, arch)
    tl = merged.timeline
    log = syscalls if isinstance(syscalls, SyscallLog) else None
    metadata = dict(log.metadata) if log else {}
    functions_meta: dict[str, Any] = {"source": tl.source, "records": len(tl.records)}
    if tl.header:
        functions_meta["header"] = tl.header
    metadata.update({
        "functions": functions_meta,
        "syscalls": {"source": log.source if log else "<syscalls>",
                     "events": len(merged.events)},
        "matched_by": tl.matched_by,
        "clock_conversion": tl.clock_conversion,
        "unattributed": merged.unattributed,
        "warnings": merged.warnings,
    })
    return {"metadata": metadata, "events": merged.events}


# ------------------------------------------------------------------------------ command line


def _dump(doc: dict[str, Any], out: IO[str]) -> None:
    # Valid JSON with one event per line: greppable, diffable, and far smaller than
    # indent=2 for the hundreds of thousands of events a run can hold.
    out.write('{"metadata": ' + json.dumps(doc["metadata"]) + ', "events": [')
    for i, ev in enumerate(doc["events"]):
        out.write(("\n" if i == 0 else ",\n") + json.dumps(ev))
    out.write("\n]}\n" if doc["events"] else "]}\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tracerd enrich",
        description="Attribute each syscall to the function that made it, merging a "
                    "debugger's function enter/exit timeline with tracerd's syscall events.",
        epilog="exit status: 0 ok, 2 usage, 65 malformed input (FILE:LINE: problem), "
               "66 input unreadable, 73 output not writable.")
    p.add_argument("--functions", required=True, metavar="FILE",
                   help="function enter/exit records, JSON lines")
    p.add_argument("--syscalls", required=True, metavar="FILE",
                   help="syscall events: tracerd run --events --json output, or JSON lines")
    p.add_argument("-o", "--output", metavar="OUT", help="write here instead of stdout")
    p.add_argument("--clock", choices=_CLOCKS,
                   help="clock of the functions' timestamp_ns (default: the file's header, "
                        "else monotonic)")
    p.add_argument("--clock-offset-ns", type=int, metavar="N",
                   help="CLOCK_REALTIME - CLOCK_MONOTONIC of the recording, to convert "
                        "wall-clock times (default: the file's header, else measured now)")
    return p


def main(argv: list[str] | None = None) -> int:
    """``tracerd enrich``: returns the exit status, messages on stderr, never a traceback."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse already printed
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        timeline = read_functions(args.functions, clock=args.clock,
                                  clock_offset_ns=args.clock_offset_ns)
        doc = enrich(timeline, read_syscalls(args.syscalls))
    except EnrichError as e:
        print(f"tracerd enrich: {e}", file=sys.stderr)
        return e.exit_status
    for w in doc["metadata"]["warnings"]:
        print(f"tracerd enrich: warning: {w}", file=sys.stderr)
    if args.output in (None, "-"):
        _dump(doc, sys.stdout)
        return 0
    try:
        with open(args.output, "w", encoding="utf-8") as out:
            _dump(doc, out)
    except OSError as e:
        print(f"tracerd enrich: {args.output}: cannot write: {e.strerror or e}", file=sys.stderr)
        return EXIT_CANTCREAT
    return 0


if __name__ == "__main__":
    sys.exit(main())
