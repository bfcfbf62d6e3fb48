"""Syscall budgets: renacer.toml-style assertions, parsed strictly and evaluated honestly.

Pure: no grpc, no bcc; the daemon feeds :class:`Sample` objects to an :class:`Evaluator`.

A budget file holds only ``[[assertion]]`` tables::

    [[assertion]]
    name = "max_syscall_budget"     # required, unique
    type = "span_count"             # required: one of TYPES
    max_spans = 2000                # the type's own keys (Renacer's names, then ours)
    enabled = true                  # default true
    fail_on_violation = true        # default true
    action = "fail"                 # warn | fail | signal | kill (default: fail, or warn
                                    # when fail_on_violation = false)
    # signal = "SIGUSR1"            # only with action = "signal"; default SIGTERM

Renacer (paiml/renacer) defines the format but evaluates little of it and silently ignores
keys it does not know; a budget that quietly checks nothing is worse than none, so here
every unknown or misplaced key, wrong value type and out-of-range value is refused with one
line ``FILE:LINE: assertion 'NAME': KEY: problem`` (:class:`BudgetError`), and every
accepted assertion is really evaluated.

Verdicts. Every limit is a maximum and is violated when the measure exceeds it (equal
passes). Most measures only grow during a session (counts, durations, peaks, the worst
window so far), so a live violation is final: an assertion that failed stays failed and
:attr:`Result.first_failed_ns` says when. Three measures can also shrink (a share of all
calls, an error ratio, a latency percentile: a parent makes every call before it forks; the
first call may be the only error; fast calls lower a p99), so a live value of theirs says
nothing about the session: GodProcess, ``error_ratio`` and ``latency`` are decided on the
final sample only, and live results pass with the current value and a note saying so.
Latency percentiles come from the kernel's log2 histograms: upper bounds within 2x.

Windows (``call_rate``, TightLoop). Samples arrive about every 100 ms, irregularly. The
calls in the window ending at a sample are its cumulative counts minus those at the oldest
sample not older than the window (or zero at the session's start while the session is
younger than the window); the rate divides by the window's length, not the span actually
covered, so a rate is never overestimated (sparse samples can only underestimate it).
"""

from __future__ import annotations

import datetime
import difflib
import math
import os
import re
import signal as _signal
import tomllib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Generic, TypeVar

from .model import ProcessInfo, SyscallStats

#: Most assertions one budget may hold, and longest regular expression it may use.
MAX_ASSERTIONS = 256
MAX_PATTERN = 1024

ACTIONS = ("warn", "fail", "signal", "kill")
ANTI_PATTERNS = ("GodProcess", "TightLoop")
TRACKING_MODES = ("rss", "allocations")

_INT64_MAX = (1 << 63) - 1
#: Keys of anti_pattern that only TightLoop uses.
_TIGHT_LOOP_ONLY = ("window_ms", "min_rate")
_LIVE_NOTE = "; decided when the session ends"


class BudgetError(ValueError):
    """A budget that cannot be used; the message is one line that locates the problem."""


class BudgetUnreadable(BudgetError):
    """The budget file cannot be read at all (the CLI exits 66 for it rather than 65)."""


# --- value checks -------------------------------------------------------------------------


class _Bad(Exception):
    """A value's problem, raised before its location is attached."""


_Check = Callable[[Any], Any]


#: TOML's names for the Python types tomllib produces (bool before int: a bool is an int).
_KINDS: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"),
    (list, "an array"), (dict, "a table"), ((datetime.date, datetime.time), "a date/time"),
)


def _kind(value: object) -> str:
    """The TOML name of a value's type, as a user wrote it."""
    for kinds, name in _KINDS:
        if isinstance(value, kinds):
            return name
    return f"a {type(value).__name__}"


def _show(value: object) -> str:
    """A short, one-line rendering of a value for an error message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _num(x: float) -> str:
    """A number without noise: integers as such, others with a sensible precision."""
    if x == int(x):
        return str(int(x))
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close:
        close = [c for c in choices if c.lower() == word.lower()]
    return f" (did you mean {close[0]!r}?)" if close else ""


def _expect(value: Any, what: str, *kinds: type) -> None:
    """Refuse a value of the wrong TOML type; a boolean is never an integer."""
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise _Bad(f"expected {what}, got {_kind(value)} ({_show(value)})")


def _bounds(lo: float, hi: float | None, lo_open: bool) -> str:
    if hi is None:
        return f"must be {'>' if lo_open else '>='} {_num(lo)}"
    if lo_open:
        return f"must be in ({_num(lo)}, {_num(hi)}]"
    return f"must be between {_num(lo)} and {_num(hi)}"


def _boolean(value: Any) -> bool:
    _expect(value, "a boolean (true or false)", bool)
    return bool(value)


def _string(value: Any) -> str:
    _expect(value, "a string", str)
    return str(value)


def _integer(lo: int, hi: int | None = None) -> _Check:
    def check(value: Any) -> int:
        _expect(value, "an integer", int)
        if value < lo or value > (_INT64_MAX if hi is None else hi):
            raise _Bad(f"{_bounds(lo, hi, False)}, got {value}")
        return int(value)

    return check


def _number(lo: float, *, lo_open: bool, hi: float | None = None) -> _Check:
    """A float key; an integer is fine where a float is wanted."""

    def check(value: Any) -> float:
        _expect(value, "a number", int, float)
        try:
            number = float(value)
        except OverflowError:
            raise _Bad(f"too large, got {_show(value)}") from None
        if not math.isfinite(number):
            raise _Bad(f"must be a finite number, got {_show(value)}")
        above = number > lo if lo_open else number >= lo
        if not above or (hi is not None and number > hi):
            raise _Bad(f"{_bounds(lo, hi, lo_open)}, got {_num(number)}")
        return number

    return check


def _regex(value: Any) -> str:
    """A Python regular expression, used unanchored (``re.search``, like Rust's is_match)."""
    _expect(value, "a string (a regular expression)", str)
    if len(value) > MAX_PATTERN:
        raise _Bad(f"too long ({len(value)} characters, at most {MAX_PATTERN})")
    try:
        re.compile(value)
    except (re.error, RecursionError, OverflowError) as e:
        raise _Bad(f"invalid regular expression: {e}") from None
    return str(value)


def _choice(*options: str, refused: Mapping[str, str] | None = None) -> _Check:
    def check(value: Any) -> str:
        _expect(value, "a string", str)
        if value in options:
            return str(value)
        if refused and value in refused:
            raise _Bad(refused[value])
        listed = ", ".join(repr(o) for o in options)
        raise _Bad(f"{value!r} is not one of {listed}{_suggest(value, options)}")

    return check


_SIGNAL_NAMES = tuple(s.name for s in _signal.Signals)


def _signal_number(value: Any) -> int:
    """A signal given as "SIGTERM", "TERM" (any case) or a number ("15" too: the
    protobuf field is a string, and realtime signals have no name)."""
    _expect(value, "a signal name or number", str, int)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int):
        if 1 <= value < _signal.NSIG:
            return value
        raise _Bad(f"{_bounds(1, _signal.NSIG - 1, False)}, got {value}")
    name = value.strip().upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return int(_signal.Signals[name])
    except KeyError:
        raise _Bad(f"unknown signal {value!r}{_suggest(name, _SIGNAL_NAMES)}") from None


def _signal_name(number: int) -> str | int:
    try:
        return _signal.Signals(number).name
    except ValueError:
        return number


_anti_pattern = _choice(*ANTI_PATTERNS, refused={
    "PcieBottleneck": "'PcieBottleneck' is not supported: tracerd sees syscalls, not PCIe "
                      "transfers (use 'GodProcess' or 'TightLoop')",
})


# --- the schema ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    check: _Check
    required: bool = False


#: Keys every type accepts besides ``name`` and ``type`` (which are checked first).
_COMMON: dict[str, _Key] = {
    "enabled": _Key(_boolean),
    "fail_on_violation": _Key(_boolean),
    "action": _Key(_choice(*ACTIONS)),
    "signal": _Key(_signal_number),
}

_SYSCALL_PATTERN = {"syscall_name_pattern": _Key(_regex)}

#: Each type's own keys, in the order :meth:`Assertion.to_dict` writes them.
_SPECS: dict[str, dict[str, _Key]] = {
    "span_count": {
        "max_spans": _Key(_integer(0), required=True),
        "span_name_pattern": _Key(_regex),
    },
    "critical_path": {
        "max_duration_ms": _Key(_number(0, lo_open=True), required=True),
        "trace_name_pattern": _Key(_regex),
    },
    "memory_usage": {
        "max_bytes": _Key(_integer(1), required=True),
        "tracking_mode": _Key(_choice(*TRACKING_MODES)),
    },
    "anti_pattern": {
        "pattern": _Key(_anti_pattern, required=True),
        "threshold": _Key(_number(0, lo_open=True, hi=1), required=True),
        "process_name_pattern": _Key(_regex),
        # A TightLoop window keeps per-process counts for every sample in it: capped.
        "window_ms": _Key(_integer(100, 60_000)),
        "min_rate": _Key(_number(0, lo_open=True)),
    },
    "syscall_calls": {**_SYSCALL_PATTERN, "max_calls": _Key(_integer(0), required=True)},
    "syscall_errors": {**_SYSCALL_PATTERN, "max_errors": _Key(_integer(0), required=True)},
    "error_ratio": {
        **_SYSCALL_PATTERN,
        "max_error_ratio": _Key(_number(0, lo_open=False, hi=1), required=True),
        "min_calls": _Key(_integer(1)),
    },
    "call_rate": {
        **_SYSCALL_PATTERN,
        "max_calls_per_second": _Key(_number(0, lo_open=True), required=True),
        "window_ms": _Key(_integer(100, 3_600_000)),
    },
    "latency": {
        **_SYSCALL_PATTERN,
        "max_latency_us": _Key(_number(0, lo_open=True), required=True),
        "percentile": _Key(_number(0, lo_open=True, hi=100)),
    },
}

#: Every accepted assertion type: Renacer's four, then tracerd's extensions.
TYPES: tuple[str, ...] = tuple(_SPECS)

#: The key holding each type's maximum (the Result's expected_value).
_LIMIT_KEY = {
    "span_count": "max_spans", "critical_path": "max_duration_ms", "memory_usage": "max_bytes",
    "anti_pattern": "threshold", "syscall_calls": "max_calls", "syscall_errors": "max_errors",
    "error_ratio": "max_error_ratio", "call_rate": "max_calls_per_second",
    "latency": "max_latency_us",
}


@dataclass(frozen=True)
class Assertion:
    """One budget assertion. Flat, so every type shares one message shape: keys a type does
    not use keep their defaults. Field names are the TOML keys."""

    name: str
    type: str
    enabled: bool = True
    fail_on_violation: bool = True
    action: str = "fail"
    signal: int = 15  #: sent for action "signal" (9 for "kill")
    max_spans: int | None = None
    span_name_pattern: str = ""
    max_duration_ms: float | None = None
    trace_name_pattern: str = ""
    max_bytes: int | None = None
    tracking_mode: str = "rss"
    pattern: str = ""
    threshold: float | None = None
    process_name_pattern: str = ""
    window_ms: int = 1000
    min_rate: float = 1000.0
    syscall_name_pattern: str = ""
    max_calls: int | None = None
    max_errors: int | None = None
    max_error_ratio: float | None = None
    min_calls: int = 1
    max_calls_per_second: float | None = None
    max_latency_us: float | None = None
    percentile: float = 99.0

    def limit(self) -> float:
        """The type's maximum: what a Result reports as expected_value."""
        key = _LIMIT_KEY[self.type]
        value = getattr(self, key)
        if value is None:
            raise ValueError(f"assertion {self.name!r} has no {key}")
        return float(value)

    def syscall_pattern(self) -> str:
        """The regex selecting the syscalls this assertion counts ("" = all, or none used)."""
        if self.type == "span_count":
            return self.span_name_pattern
        return self.syscall_name_pattern if "syscall_name_pattern" in _SPECS[self.type] else ""

    def to_dict(self) -> dict[str, Any]:
        """The keys meaningful for this type, as TOML would spell them (round-trips through
        :func:`parse_entries`); empty patterns are left out."""
        out: dict[str, Any] = {"name": self.name, "type": self.type, "enabled": self.enabled,
                               "fail_on_violation": self.fail_on_violation,
                               "action": self.action}
        if self.action == "signal":
            out["signal"] = _signal_name(self.signal)
        for key in _SPECS[self.type]:
            value = getattr(self, key)
            unused = (self.type == "anti_pattern" and key in _TIGHT_LOOP_ONLY
                      and self.pattern != "TightLoop")
            if not unused and value is not None and not (key.endswith("_pattern") and not value):
                out[key] = value
        return out


def matching_syscalls(pattern: str, names: Mapping[int, str]) -> frozenset[int]:
    """The syscall numbers whose name ``pattern`` finds (``re.search``); "" selects all."""
    if not pattern:
        return frozenset(names)
    regex = re.compile(pattern)
    return frozenset(nr for nr, name in names.items() if regex.search(name))


# --- locating problems --------------------------------------------------------------------

_HEADER = re.compile(r"\[\[\s*(?:assertion|\"assertion\"|'assertion')\s*\]\]")
_TABLE = re.compile(r"\[\[?\s*(\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+)[^\]]*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"(\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+)\s*[.=]")
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _unquote(key: str) -> str:
    return key[1:-1] if key[:1] in "\"'" and len(key) >= 2 else key


def _multiline_opened(line: str) -> str:
    """The multi-line string delimiter a line leaves open, if any."""
    for quote in ('"""', "'''"):
        if line.count(quote) % 2:
            return quote
    return ""


class _Lines:
    """Where keys are in the raw text: tomllib reports no positions for valid input.

    A small line scanner, not a TOML parser: it tracks ``[[assertion]]`` headers to number
    the entries and the first ``key =`` line of each key within them. Whatever it misses
    falls back to the entry's header line, then line 1.
    """

    def __init__(self, text: str) -> None:
        self.root: dict[str, int] = {}
        self.headers: list[int] = []
        self.keys: list[dict[str, int]] = []
        table: dict[str, int] | None = self.root
        open_quote = ""
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if open_quote:
                if open_quote in line:
                    open_quote = ""
                continue
            if _HEADER.match(line):
                table = {}
                self.headers.append(number)
                self.keys.append(table)
            elif m := _TABLE.match(line):
                self.root.setdefault(_unquote(m[1]), number)
                table = None
            elif (m := _KEY.match(line)) and table is not None:
                table.setdefault(_unquote(m[1]), number)
            open_quote = _multiline_opened(line)
        self.last = max(1, len(text.splitlines()))

    def line(self, index: int | None, key: str | None) -> int:
        if index is None:
            return self.root.get(key or "", 1)
        if index < len(self.keys):
            return self.keys[index].get(key or "", self.headers[index])
        return self.root.get("assertion", 1)


class _Where:
    """Builds the one-line error for a problem at (entry, key): with line numbers for a file,
    with ``assertion[i]`` for entries that arrived as messages."""

    def __init__(self, source: str, lines: _Lines | None) -> None:
        self.source = source
        self.lines = lines

    def error(self, problem: str, index: int | None = None, name: str | None = None,
              key: str | None = None) -> BudgetError:
        if self.lines is None:
            head = self.source
            entry = "" if index is None else f"assertion[{index}]"
        else:
            head = f"{self.source}:{self.lines.line(index, key)}"
            entry = "" if index is None else "assertion"
        if entry and name:
            entry += f" '{name}'"
        if key is not None and not key.isprintable():
            key = repr(key)  # a quoted TOML key may hold a newline; the message stays one line
        return BudgetError(": ".join(p for p in (head, entry, key, problem) if p))

    def label(self, index: int) -> str:
        if self.lines is None:
            return f"assertion[{index}]"
        return f"the assertion at line {self.lines.line(index, 'name')}"


# --- parsing ------------------------------------------------------------------------------


def load(path: str) -> list[Assertion]:
    """Parse the budget file at ``path`` (BudgetUnreadable when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise BudgetUnreadable(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise BudgetError(f"{path}:{line}: not UTF-8 text (byte {e.start})") from None
    return loads(text, path)


def loads(text: str, source: str = "<budget>") -> list[Assertion]:
    """Parse budget TOML; ``source`` names it in error messages."""
    lines = _Lines(text)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _syntax_error(source, str(e), lines.last) from None
    where = _Where(source, lines)
    for key in doc:
        if key != "assertion":
            problem = "unknown key: a budget holds only [[assertion]] tables"
            raise where.error(problem + _suggest(key, ["assertion"]), key=key)
    entries = doc.get("assertion", [])
    if not isinstance(entries, list):
        raise where.error(f"expected [[assertion]] tables, got {_kind(entries)}", key="assertion")
    return _parse_all(entries, where)


def parse_entries(entries: list[dict[str, Any]], source: str) -> list[Assertion]:
    """Parse assertions that arrived as messages, each a dict of the fields that were set."""
    where = _Where(source, None)
    if not isinstance(entries, list):
        raise where.error(f"expected a list of assertions, got {_kind(entries)}")
    return _parse_all(entries, where)


def _syntax_error(source: str, message: str, last_line: int) -> BudgetError:
    m = _TOML_POSITION.search(message)
    if m:
        return BudgetError(f"{source}:{m[1]}: TOML syntax error: {message[:m.start()]} "
                           f"(column {m[2]})")
    detail = message.replace(" (at end of document)", " at end of file")
    return BudgetError(f"{source}:{last_line}: TOML syntax error: {detail}")


def _parse_all(entries: list[Any], where: _Where) -> list[Assertion]:
    if len(entries) > MAX_ASSERTIONS:
        raise where.error(f"too many assertions ({len(entries)}; at most {MAX_ASSERTIONS})",
                          index=MAX_ASSERTIONS)
    seen: dict[str, int] = {}
    return [_parse_entry(i, entry, where, seen) for i, entry in enumerate(entries)]


def _parse_entry(index: int, entry: Any, where: _Where, seen: dict[str, int]) -> Assertion:
    if not isinstance(entry, dict):
        raise where.error(f"expected a table, got {_kind(entry)}", index)
    name = _parse_name(index, entry, where, seen)

    def bad(key: str, problem: str) -> BudgetError:
        return where.error(problem, index, name, key)

    kind = _parse_type(entry, bad)
    spec = _SPECS[kind]
    values: dict[str, Any] = {}
    for key, value in entry.items():
        if key in ("name", "type"):
            continue
        key_spec = _COMMON.get(key) or spec.get(key)
        if key_spec is None:
            raise bad(key, _misplaced(key, kind))
        try:
            values[key] = key_spec.check(value)
        except _Bad as e:
            raise bad(key, str(e)) from None
    for key, key_spec in spec.items():
        if key_spec.required and key not in values:
            raise bad(key, f"missing (required for type {kind!r})")
    _check_together(kind, values, bad)
    return _build(name, kind, values)


def _parse_name(index: int, entry: dict[str, Any], where: _Where, seen: dict[str, int]) -> str:
    if "name" not in entry:
        raise where.error("missing (every assertion needs a unique name)", index, key="name")
    try:
        name = _string(entry["name"])
    except _Bad as e:
        raise where.error(str(e), index, key="name") from None
    if not name.strip():
        raise where.error("must not be empty", index, key="name")
    if not name.isprintable():
        raise where.error(f"must be printable, got {name!r}", index, key="name")
    if name in seen:
        raise where.error(f"duplicate name, also used by {where.label(seen[name])}",
                          index, name, "name")
    seen[name] = index
    return name


def _parse_type(entry: dict[str, Any], bad: Callable[[str, str], BudgetError]) -> str:
    valid = ", ".join(TYPES)
    if "type" not in entry:
        raise bad("type", f"missing (one of {valid})")
    try:
        kind = _string(entry["type"])
    except _Bad as e:
        raise bad("type", str(e)) from None
    if kind == "custom":
        raise bad("type", f"'custom' (expression) assertions are not supported; use one of {valid}")
    if kind not in _SPECS:
        raise bad("type", f"unknown type {kind!r}{_suggest(kind, TYPES)}; valid: {valid}")
    return kind


def _misplaced(key: str, kind: str) -> str:
    """Why ``key`` is not accepted for ``kind``: another type's key, or a likely typo."""
    owners = [t for t, spec in _SPECS.items() if key in spec]
    if owners:
        return f"belongs to type {' or '.join(repr(t) for t in owners)}, not {kind!r}"
    valid = ["name", "type", *_COMMON, *_SPECS[kind]]
    hint = _suggest(key, valid)
    return f"unknown key{hint}" if hint else f"unknown key (valid: {', '.join(valid)})"


def _check_together(kind: str, values: dict[str, Any],
                    bad: Callable[[str, str], BudgetError]) -> None:
    """Checks across keys, once each key is valid on its own."""
    action = values.get("action")
    if action == "fail" and values.get("fail_on_violation") is False:
        raise bad("action", "'fail' conflicts with fail_on_violation = false")
    if "signal" in values and action != "signal":
        raise bad("signal", f"only allowed with action = 'signal' (action is {action or 'unset'})")
    if kind == "anti_pattern" and values["pattern"] != "TightLoop":
        for key in _TIGHT_LOOP_ONLY:
            if key in values:
                raise bad(key, f"only for pattern 'TightLoop', not {values['pattern']!r}")


def _build(name: str, kind: str, values: dict[str, Any]) -> Assertion:
    fail = values.get("fail_on_violation", True)
    action = values.get("action") or ("fail" if fail else "warn")
    default = _signal.SIGKILL if action == "kill" else _signal.SIGTERM
    values = {**values, "action": action, "signal": int(values.get("signal", default))}
    return Assertion(name=name, type=kind, **values)


# --- evaluation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """What the evaluator sees of a session at one instant."""

    ts_ns: int  #: CLOCK_MONOTONIC ns
    start_ns: int  #: the session's start
    root_pid: int
    #: per process, the session's own counts (exited processes included, at their final counts)
    processes: Mapping[int, ProcessInfo]
    peak_rss_bytes: Mapping[int, int] = field(default_factory=dict)  #: pid -> peak RSS so far
    final: bool = False  #: the session ended: this is the last sample


@dataclass(frozen=True)
class Result:
    """One assertion's verdict at one sample."""

    name: str
    type: str
    passed: bool
    message: str
    actual_value: float
    expected_value: float
    action: str
    enabled: bool
    fail_on_violation: bool
    first_failed_ns: int | None = None  #: ts_ns of the first sample at which it failed (sticky)
    pid: int | None = None  #: the process concerned, when one is
    enforcement: str = ""  #: filled in by the daemon: "", "kernel" or "user"
    overshoot: int | None = None  #: filled in by the daemon for in-kernel kill

    @property
    def counts(self) -> bool:
        """A failure that fails the session (not a warning, not disabled, not excused)."""
        return (not self.passed and self.enabled and self.fail_on_violation
                and self.action != "warn")


@dataclass(frozen=True)
class _Outcome:
    """A measure at one sample: the value, its description, and whether it breaks the limit."""

    actual: float
    message: str
    violated: bool
    pid: int | None = None


_T = TypeVar("_T")


class _History(Generic[_T]):
    """Cumulative counts at the samples within one window, oldest first.

    Begins with the session's start at zero; samples older than the window are dropped as
    they stop being needed, so it never holds more than one window's worth.
    """

    def __init__(self, window_ns: int, zero: _T) -> None:
        self.window_ns = window_ns
        self._zero: _T | None = zero
        self._points: deque[tuple[int, _T]] = deque()

    def base(self, start_ns: int, ts_ns: int, value: _T) -> _T:
        """Record ``value`` at ``ts_ns`` and return the counts at the window's base: those of
        the oldest kept sample not older than the window (zero while the session is younger)."""
        if self._zero is not None:
            self._points.append((start_ns, self._zero))
            self._zero = None
        self._points.append((ts_ns, value))
        while self._points[0][0] < ts_ns - self.window_ns:
            self._points.popleft()
        return self._points[0][1]


_Counts = dict[int, int]


def _delta(now: _Counts, base: _Counts) -> _Counts:
    return {k: n - base.get(k, 0) for k, n in now.items() if n > base.get(k, 0)}


class _SyscallFilter:
    """Whether a syscall number's name matches a pattern, looked up once per number."""

    def __init__(self, pattern: str, name_of: Callable[[int], str]) -> None:
        self._regex = re.compile(pattern) if pattern else None
        self._name_of = name_of
        self._cache: dict[int, bool] = {}

    def __call__(self, nr: int) -> bool:
        if self._regex is None:
            return True
        hit = self._cache.get(nr)
        if hit is None:
            hit = self._cache[nr] = self._regex.search(self._name_of(nr)) is not None
        return hit


def _basename(path: str) -> str:
    return os.path.basename(path.rstrip("/"))


def _process_matches(regex: re.Pattern[str] | None, proc: ProcessInfo) -> bool:
    """A process name matches when found in comm (15 bytes at most: the kernel truncates it)
    or in the basename of its exec'd file or of argv[0]."""
    if regex is None:
        return True
    names = (proc.comm, _basename(proc.filename), _basename(proc.argv[0]) if proc.argv else "")
    return any(n and regex.search(n) for n in names)


def _comm(proc: ProcessInfo | None) -> str:
    if proc is None:
        return "?"
    return proc.comm or _basename(proc.filename) or "?"


def _who(pid: int, proc: ProcessInfo | None) -> str:
    return f"process {pid} ({_comm(proc)})"


def _pct(x: float) -> str:
    return f"{x * 100:.1f}".removesuffix(".0") + "%"


def _size(n: float) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{int(n)} bytes"


def _cmp(over: bool) -> str:
    return ">" if over else "<="


def _top(counts: _Counts, name_of: Callable[[int], str], n: int = 3) -> str:
    """The biggest few of ``counts`` by syscall name: "openat 3000, read 900, ..."."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], name_of(kv[0])))
    text = ", ".join(f"{name_of(nr)} {count}" for nr, count in ranked[:n])
    return text + (", ..." if len(ranked) > n else "")


class _View:
    """One sample, with the session totals per syscall merged once for every assertion."""

    def __init__(self, sample: Sample) -> None:
        self.sample = sample

    @cached_property
    def totals(self) -> dict[int, SyscallStats]:
        out: dict[int, SyscallStats] = {}
        for proc in self.sample.processes.values():
            for nr, st in proc.syscalls.items():
                out.setdefault(nr, SyscallStats()).add(st)
        return out

    def calls(self, wanted: Callable[[int], bool]) -> _Counts:
        return {nr: st.calls for nr, st in self.totals.items() if st.calls and wanted(nr)}


class _Judge:
    """Evaluates one assertion sample after sample and keeps what makes failure sticky."""

    #: The measure can shrink, so only the final sample decides (see the module docstring).
    at_end = False

    def __init__(self, assertion: Assertion, name_of: Callable[[int], str]) -> None:
        self.a = assertion
        self.limit = assertion.limit()
        self.name_of = name_of
        self.syscalls = _SyscallFilter(assertion.syscall_pattern(), name_of)
        pattern = assertion.trace_name_pattern or assertion.process_name_pattern
        self.processes = re.compile(pattern) if pattern else None
        self.first_failed_ns: int | None = None
        self.worst: _Outcome | None = None

    def measure(self, view: _View) -> _Outcome:
        raise NotImplementedError

    def judge(self, view: _View) -> Result:
        if not self.a.enabled:
            return self._result(_Outcome(0.0, "disabled", False), passed=True)
        now = self.measure(view)
        final = view.sample.final
        if self.at_end:
            shown = now if final else _Outcome(now.actual, now.message + _LIVE_NOTE, False, now.pid)
        else:
            if self.worst is None or now.actual >= self.worst.actual:
                self.worst = now
            shown = self.worst
        if shown.violated and self.first_failed_ns is None:
            self.first_failed_ns = view.sample.ts_ns
        return self._result(shown, passed=self.first_failed_ns is None)

    def _result(self, outcome: _Outcome, *, passed: bool) -> Result:
        a = self.a
        return Result(name=a.name, type=a.type, passed=passed, message=outcome.message,
                      actual_value=float(outcome.actual), expected_value=self.limit,
                      action=a.action, enabled=a.enabled, fail_on_violation=a.fail_on_violation,
                      first_failed_ns=self.first_failed_ns, pid=outcome.pid)


class _SpanCount(_Judge):
    def measure(self, view: _View) -> _Outcome:
        counts = view.calls(self.syscalls)
        total = sum(counts.values())
        over = total > self.limit
        message = f"{total} syscalls {_cmp(over)} {_num(self.limit)}"
        if counts:
            message += f" ({_top(counts, self.name_of)})"
        return _Outcome(total, message, over)


class _CriticalPath(_Judge):
    """The root process's lifetime, or with trace_name_pattern the longest matching one."""

    def measure(self, view: _View) -> _Outcome:
        s = view.sample
        if self.processes is None:
            candidates = [(s.root_pid, s.processes.get(s.root_pid))]
        else:
            candidates = [(pid, p) for pid, p in s.processes.items()
                          if _process_matches(self.processes, p)]
            if not candidates:
                return _Outcome(0.0, f"no process matches {self.a.trace_name_pattern!r}", False)
        lives = [(self._lifetime_ns(s, p), pid, p) for pid, p in candidates]
        life_ns, pid, proc = max(lives, key=lambda t: (t[0], -t[1]))
        ms = life_ns / 1e6
        over = ms > self.limit
        ran = "ran" if proc is not None and proc.end_ns is not None else "has been running for"
        message = f"{_who(pid, proc)} {ran} {_num(ms)} ms {_cmp(over)} {_num(self.limit)} ms"
        return _Outcome(ms, message, over, pid)

    @staticmethod
    def _lifetime_ns(s: Sample, proc: ProcessInfo | None) -> int:
        start = (proc.start_ns if proc else 0) or s.start_ns
        end = proc.end_ns if proc and proc.end_ns is not None else s.ts_ns
        return max(0, end - start)


class _PeakRss(_Judge):
    def measure(self, view: _View) -> _Outcome:
        peaks = view.sample.peak_rss_bytes
        if not peaks:
            return _Outcome(0.0, "no RSS measured yet", False)
        pid, peak = max(peaks.items(), key=lambda kv: (kv[1], -kv[0]))
        over = peak > self.limit
        proc = view.sample.processes.get(pid)
        message = (f"peak RSS {_size(peak)} (process {pid} {_comm(proc)}) {_cmp(over)} "
                   f"{_size(self.limit)}")
        return _Outcome(peak, message, over, pid)


class _Allocations(_Judge):
    def measure(self, view: _View) -> _Outcome:
        total = sum(st.alloc_bytes for st in view.totals.values())
        over = total > self.limit
        message = f"{_size(total)} allocated ({total} bytes) {_cmp(over)} {_size(self.limit)}"
        return _Outcome(total, message, over)


class _GodProcess(_Judge):
    """The biggest share of the session's calls made by one (matching) process."""

    at_end = True

    def measure(self, view: _View) -> _Outcome:
        procs = view.sample.processes
        calls = {pid: sum(st.calls for st in p.syscalls.values()) for pid, p in procs.items()}
        total = sum(calls.values())
        busy = [pid for pid, n in calls.items()
                if n and _process_matches(self.processes, procs[pid])]
        if not busy:
            return _Outcome(0.0, "no matching process made calls", False)
        pid = max(busy, key=lambda q: (calls[q], -q))
        share = calls[pid] / total
        message = f"{_who(pid, procs[pid])} made {_pct(share)} of {total} calls"
        if sum(1 for n in calls.values() if n) < 2:
            return _Outcome(share, message + " (the only process that made calls)", False, pid)
        return _Outcome(share, message, share > self.limit, pid)


class _TightLoop(_Judge):
    """Per process: the share of its calls in a window spent on one syscall, when its rate
    reaches min_rate; the worst share seen so far."""

    def __init__(self, assertion: Assertion, name_of: Callable[[int], str]) -> None:
        super().__init__(assertion, name_of)
        self.history: _History[dict[int, _Counts]] = _History(assertion.window_ms * 1_000_000, {})

    def measure(self, view: _View) -> _Outcome:
        s = view.sample
        since = s.ts_ns - self.history.window_ns
        # A process that ended before the window began has nothing in it: not kept.
        now = {pid: {nr: st.calls for nr, st in p.syscalls.items() if st.calls}
               for pid, p in s.processes.items()
               if (p.end_ns is None or p.end_ns >= since) and _process_matches(self.processes, p)}
        base = self.history.base(s.start_ns, s.ts_ns, now)
        seconds = self.a.window_ms / 1000
        worst: tuple[float, int, int, float] | None = None
        for pid, counts in now.items():
            delta = _delta(counts, base.get(pid, {}))
            total = sum(delta.values())
            if not total or total / seconds < self.a.min_rate:
                continue
            nr, top = max(delta.items(), key=lambda kv: (kv[1], -kv[0]))
            if worst is None or top / total > worst[0]:
                worst = (top / total, pid, nr, total / seconds)
        if worst is None:
            return _Outcome(0.0, f"no process reached {_num(self.a.min_rate)} calls/s in a "
                                 f"{self.a.window_ms} ms window", False)
        share, pid, nr, rate = worst
        message = (f"{_who(pid, s.processes.get(pid))} spent {_pct(share)} of {_num(rate)} "
                   f"calls/s on {self.name_of(nr)}")
        return _Outcome(share, message, share > self.limit, pid)


class _CallRate(_Judge):
    """Calls per second of each matching syscall (all processes) in the window: the worst."""

    def __init__(self, assertion: Assertion, name_of: Callable[[int], str]) -> None:
        super().__init__(assertion, name_of)
        self.history: _History[_Counts] = _History(assertion.window_ms * 1_000_000, {})

    def measure(self, view: _View) -> _Outcome:
        now = view.calls(self.syscalls)
        base = self.history.base(view.sample.start_ns, view.sample.ts_ns, now)
        delta = _delta(now, base)
        if not delta:
            return _Outcome(0.0, f"no matching calls in the last {self.a.window_ms} ms", False)
        nr, n = max(delta.items(), key=lambda kv: (kv[1], -kv[0]))
        rate = n / (self.a.window_ms / 1000)
        over = rate > self.limit
        message = (f"{self.name_of(nr)}: {_num(rate)} calls/s over {self.a.window_ms} ms "
                   f"{_cmp(over)} {_num(self.limit)}")
        return _Outcome(rate, message, over)


class _PerSyscall(_Judge):
    """The extensions: every matching syscall judged on its totals over the session's
    processes; the worst one is reported by name."""

    def empty(self) -> str:
        return "no matching syscalls"

    def value(self, st: SyscallStats) -> float | None:
        raise NotImplementedError

    def describe(self, st: SyscallStats, value: float) -> str:
        raise NotImplementedError

    def measure(self, view: _View) -> _Outcome:
        scored = [(v, nr, st) for nr, st in view.totals.items()
                  if self.syscalls(nr) and (v := self.value(st)) is not None]
        if not scored:
            return _Outcome(0.0, self.empty(), False)
        value, nr, st = max(scored, key=lambda t: (t[0], -t[1]))
        over = value > self.limit
        message = (f"{self.name_of(nr)}: {self.describe(st, value)} {_cmp(over)} "
                   f"{_format(self.a.type, self.limit)}")
        return _Outcome(value, message, over)


class _SyscallCalls(_PerSyscall):
    def value(self, st: SyscallStats) -> float | None:
        return float(st.calls)

    def describe(self, st: SyscallStats, value: float) -> str:
        return f"{st.calls} calls"


class _SyscallErrors(_PerSyscall):
    def value(self, st: SyscallStats) -> float | None:
        return float(st.errors)

    def describe(self, st: SyscallStats, value: float) -> str:
        return f"{st.errors} errors in {st.calls} calls"


class _ErrorRatio(_PerSyscall):
    at_end = True

    def empty(self) -> str:
        return f"no matching syscall made {self.a.min_calls} calls"

    def value(self, st: SyscallStats) -> float | None:
        return st.errors / st.calls if st.calls and st.calls >= self.a.min_calls else None

    def describe(self, st: SyscallStats, value: float) -> str:
        return f"{_pct(value)} errors ({st.errors} of {st.calls} calls)"


class _Latency(_PerSyscall):
    """The percentile comes from the kernel's log2 histograms: an upper bound of the true
    value within 2x (exact at p100, capped by the exact maximum)."""

    at_end = True

    def empty(self) -> str:
        return "no matching syscall has returned yet"

    def value(self, st: SyscallStats) -> float | None:
        ns = st.percentile_ns(self.a.percentile / 100)
        return None if ns is None else ns / 1000

    def describe(self, st: SyscallStats, value: float) -> str:
        return f"p{_num(self.a.percentile)} up to {_num(value)} us"


_JUDGES: dict[str, type[_Judge]] = {
    "span_count": _SpanCount, "critical_path": _CriticalPath, "syscall_calls": _SyscallCalls,
    "syscall_errors": _SyscallErrors, "error_ratio": _ErrorRatio, "call_rate": _CallRate,
    "latency": _Latency, "rss": _PeakRss, "allocations": _Allocations,
    "GodProcess": _GodProcess, "TightLoop": _TightLoop,
}


def _judge_for(assertion: Assertion, name_of: Callable[[int], str]) -> _Judge:
    key = {"memory_usage": assertion.tracking_mode,
           "anti_pattern": assertion.pattern}.get(assertion.type, assertion.type)
    return _JUDGES[key](assertion, name_of)


class Evaluator:
    """Evaluates a budget over a session's successive samples."""

    def __init__(self, assertions: Sequence[Assertion], syscall_name: Callable[[int], str]) -> None:
        self._judges = [_judge_for(a, syscall_name) for a in assertions]
        self._last: list[Result] = []

    def update(self, sample: Sample) -> list[Result]:
        """Evaluate every assertion at this sample (in file order; disabled ones give
        passed=True, message 'disabled', actual 0).

        Windowed assertions keep the samples within their window and no more; each assertion
        remembers when it first failed, and once failed stays failed for the session (its
        measure is a worst-so-far or a cumulative count, or is decided on the final sample).
        """
        view = _View(sample)
        self._last = [judge.judge(view) for judge in self._judges]
        return list(self._last)

    def results(self) -> list[Result]:
        """The last update's results."""
        return list(self._last)


def failed(results: Sequence[Result]) -> bool:
    """Whether any result fails the session."""
    return any(r.counts for r in results)


def newly_failed(before: Sequence[Result], after: Sequence[Result]) -> list[Result]:
    """Results of ``after`` that fail now and passed (or were absent) ``before``."""
    passed_before = {r.name for r in before if r.passed}
    known = {r.name for r in before}
    return [r for r in after if not r.passed and (r.name in passed_before or r.name not in known)]


def result_to_dict(r: Result) -> dict[str, Any]:
    """A JSON-ready dict with stable key names."""
    return {"name": r.name, "type": r.type, "passed": r.passed, "message": r.message,
            "actual_value": r.actual_value, "expected_value": r.expected_value,
            "action": r.action, "enabled": r.enabled, "fail_on_violation": r.fail_on_violation,
            "first_failed_ns": r.first_failed_ns, "pid": r.pid, "enforcement": r.enforcement,
            "overshoot": r.overshoot}


_UNITS = {"span_count": "calls", "syscall_calls": "calls", "syscall_errors": "errors",
          "critical_path": "ms", "call_rate": "calls/s", "latency": "us"}


def _format(kind: str, value: float, *, exact: bool = False) -> str:
    """A value in its type's unit; with ``exact``, sizes also in bytes."""
    if kind in ("anti_pattern", "error_ratio"):
        return _pct(value)
    if kind == "memory_usage":
        text = _size(value)
        return f"{text} ({int(value)} bytes)" if exact and value >= 1024 else text
    unit = _UNITS.get(kind)
    return f"{_num(value)} {unit}" if unit else _num(value)


def _verdict(r: Result) -> str:
    if not r.enabled:
        return "disabled"
    if r.passed:
        return "pass"
    verdict = "FAIL" if r.counts else "warn"
    if r.enforcement:
        # e.g. "FAIL, killed (kernel, 3 calls over)": how the action was carried out
        acted = "killed" if r.action == "kill" else "signalled"
        over = f", {r.overshoot} {'call' if r.overshoot == 1 else 'calls'} over" \
            if r.overshoot else ""
        verdict += f", {acted} ({r.enforcement}{over})"
    return verdict


def render_table(results: Sequence[Result]) -> str:
    """A text table (NAME TYPE ACTUAL LIMIT VERDICT) and a verdict line, ending with a
    newline. VERDICT is pass, FAIL, warn (failed without failing the session) or disabled;
    a failure whose action signalled or killed says how (kernel or user space) and, for a
    kill in the kernel, how many calls were entered beyond the budget."""
    rows = [("NAME", "TYPE", "ACTUAL", "LIMIT", "VERDICT")]
    for r in results:
        actual = "-" if not r.enabled else _format(r.type, r.actual_value, exact=True)
        rows.append((r.name, r.type, actual, _format(r.type, r.expected_value, exact=True),
                     _verdict(r)))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.rjust(w) if i in (2, 3) else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in rows]
    n = len(results)
    counted = sum(1 for r in results if r.counts)
    noun = "assertion" if n == 1 else "assertions"
    lines.append(f"budget: FAILED: {counted} of {n} {noun}" if counted
                 else f"budget: passed ({n} {noun})")
    return "\n".join(lines) + "\n"
