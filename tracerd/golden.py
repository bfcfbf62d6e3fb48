"""Golden traces: a checked-in baseline of what a command does, and a verdict on a new run.

Pure logic (no bcc, no grpc, no syscall table import): callers pass ``name_of`` as for
:mod:`tracerd.render`.

Golden file schema (``GOLDEN_SCHEMA``, currently ``tracerd.golden/v2``), written as
``json.dumps(sort_keys=True, indent=2)`` plus a newline so that it diffs well in git::

    {
      "schema": "tracerd.golden/v2",
      "command": [str, ...],
      "environment": {"arch": str, "kernel": str, "tracerd": str},
      "runs": int,                                 # how many runs the spreads cover
      "exit_status": SPREAD,                       # CMD's shell status
      "syscalls": {NAME: {"calls": SPREAD, "errors": SPREAD}},  # summed over the tree
      "processes": {PATH: SPREAD},                 # PATH: comms root to leaf, "sh>ls"
      "measured": {                                # every noisy value, and only those
        "duration_us": SPREAD,                     # wall time of the whole process tree
        "peak_rss_kib": SPREAD | null              # see peak RSS below
      },
      "tolerances": {
        "counts": {"min_abs": int, "pct": number},  # margin for counts that varied
        "duration": {"ratio": number, "slack_ms": number},
        "peak_rss": {"ratio": number},
        "syscalls": {NAME: SPEC}                   # per-syscall override, see below
      }
    }
    SPREAD = {"median": int, "min": int, "max": int}   # median_low: an observed value

A syscall absent from a run counts 0 in that run, so one seen only sometimes has min 0.

Rules of :func:`compare` (the defaults are written into every golden file):

- calls and errors of a syscall: allowed within ``[min - m, max + m]`` where ``m`` is 0 when
  the golden shows no spread (min == max: the count must be exact), otherwise
  ``max(min_abs, ceil(pct% of max))`` (defaults 2 and 10%). A per-syscall ``SPEC``
  replaces that rule: ``exact`` (m = 0), ``N`` (m = N), ``N%`` (m = ceil(N% of max)) or
  ``ignore``. The defaults give the syscalls whose counts follow timing rather than the
  program's logic (``TIMING_SYSCALLS``: futex, sched_yield, the sleeps and waits) ``100%``:
  a thread that found a lock free in every capture may wait on it once in the next run.
  A syscall the golden never saw is NEW; one the golden always saw and that the run did
  not make is VANISHED (unless its margin reaches down to 0); both fail.
- process tree: the count of each comm path follows the default count rule.
- exit status: must be within the golden's [min, max].
- duration: fails only if slower than ``ratio`` x the golden median *and* more than
  ``slack_ms`` slower (defaults 1.5 and 50 ms): the ratio alone would trip on the noise of
  millisecond-long commands. Faster is never a failure.
- peak RSS: fails if above ``ratio`` x the golden median (default 1.5).
- a run with drops (uncounted syscalls or lost process events) fails: its counts are wrong.

Peak RSS is the largest peak resident set size of any one process in the tree, in KiB: the
kernel's high-water mark of each process's memory after its exec (taskstats ``hiwater_rss``
at exit, ``VmHWM`` polled while it runs), as the hub reports it per process. A maximum, not
a sum: processes of a pipeline that run at once are not added up. It is null when it could
not be measured (taskstats unavailable and every process too short-lived to poll).

v1 files, whose peak came from ``getrusage(RUSAGE_CHILDREN)`` and so included a copy of
tracerd's own image, are refused with a request to recapture (``tracerd golden update``).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .model import Report

__all__ = [
    "DEFAULT_TOLERANCES",
    "EXIT_REGRESSION",
    "GOLDEN_SCHEMA",
    "VERDICT_SCHEMA",
    "Comparison",
    "GoldenError",
    "GoldenUnreadable",
    "Observation",
    "Row",
    "apply_tolerance_overrides",
    "capture",
    "capture_from_reports",
    "check_tolerances",
    "compare",
    "compare_goldens",
    "dumps_golden",
    "load_golden",
    "observe",
    "parse_golden",
    "peak_rss_kib",
    "process_paths",
    "render_diff",
    "tree_duration_ns",
    "verdict_to_dict",
]

GOLDEN_SCHEMA = "tracerd.golden/v2"
VERDICT_SCHEMA = "tracerd.golden-verdict/v1"
_OLD_SCHEMAS = frozenset({"tracerd.golden/v1"})

#: Exit status of ``golden compare`` / ``run --against`` on a regression. Distinct from
#: every status tracerd or a shell already gives (2, 5, 65, 66, 67, 69, 72, 73, 77, 78, 126,
#: 127).
EXIT_REGRESSION = 3

#: Syscalls whose counts depend on scheduling and timing, not only on what the program
#: does (a contended lock, a poll that found data at once or after a wake-up).
TIMING_SYSCALLS = ("clock_nanosleep", "epoll_pwait", "epoll_pwait2", "epoll_wait", "futex",
                   "futex_waitv", "nanosleep", "poll", "ppoll", "pselect6", "restart_syscall",
                   "sched_yield", "select")

DEFAULT_TOLERANCES: dict[str, Any] = {
    "counts": {"min_abs": 2, "pct": 10},
    "duration": {"ratio": 1.5, "slack_ms": 50},
    "peak_rss": {"ratio": 1.5},
    "syscalls": {name: "100%" for name in TIMING_SYSCALLS},
}

NameOf = Callable[[int], str]

# Verdicts of one row. Only FAIL, NEW and VANISHED fail the comparison.
OK, WITHIN, FAIL, NEW, VANISHED, IGNORED = "ok", "within", "FAIL", "NEW", "VANISHED", "ignored"
_FAILING = frozenset({FAIL, NEW, VANISHED})


class GoldenError(ValueError):
    """A golden file that cannot be used; the message is one line naming file and field."""


class GoldenUnreadable(GoldenError):
    """The golden file cannot be opened or read at all."""


# --------------------------------------------------------------------------------------------
# Observations: what one run (or a golden's medians) shows, by name
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """The comparable facts of one run, keyed by names rather than syscall numbers."""

    calls: Mapping[str, int]
    errors: Mapping[str, int]
    processes: Mapping[str, int]
    exit_status: int | None
    duration_us: int | None
    peak_rss_kib: int | None = None
    drops: int = 0


def process_paths(report: Report) -> Counter[str]:
    """How many processes have each comm path (``"sh>ls"``: root first) in the tree."""
    procs = report.processes
    out: Counter[str] = Counter()
    for proc in procs.values():
        names: list[str] = []
        seen: set[int] = set()
        cur = proc
        # Walk up through traced parents only; a pid seen twice would be a corrupt report,
        # so stop rather than loop.
        while True:
            names.append(cur.comm or "?")
            seen.add(cur.pid)
            parent = procs.get(cur.ppid)
            if parent is None or parent.pid in seen:
                break
            cur = parent
        out[">".join(reversed(names))] += 1
    return out


def tree_duration_ns(report: Report) -> int | None:
    """Wall time from the root's start to the last exit in its tree.

    The process timestamps are used rather than ``report.end_ns``: that one is taken when
    tracerd's poll loop notices the end, so it is quantised by the poll interval (100 ms).
    """
    root = report.processes.get(report.root_pid)
    ends = [p.end_ns for p in report.processes.values()]
    if root is None or any(e is None for e in ends) or not ends:
        return None if report.end_ns is None else report.end_ns - report.start_ns
    return max(e for e in ends if e is not None) - root.start_ns


def peak_rss_kib(report: Report) -> int | None:
    """The largest per-process peak RSS of the tree, in KiB; None when none was measured."""
    peaks = [p.peak_rss_bytes for p in report.processes.values() if p.peak_rss_bytes]
    return max(peaks) // 1024 if peaks else None


def observe(report: Report, name_of: NameOf) -> Observation:
    calls: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for nr, st in report.totals().items():
        if st.calls:
            calls[name_of(nr)] += st.calls
            errors[name_of(nr)] += st.errors
    duration = tree_duration_ns(report)
    return Observation(
        calls=dict(calls),
        errors=dict(errors),
        processes=dict(process_paths(report)),
        exit_status=report.exit.shell_status() if report.exit else None,
        duration_us=None if duration is None else max(0, duration) // 1000,
        peak_rss_kib=peak_rss_kib(report),
        drops=report.drops.total(),
    )


# --------------------------------------------------------------------------------------------
# Capture
# --------------------------------------------------------------------------------------------


def _spread(values: Sequence[int]) -> dict[str, int]:
    # median_low keeps the median an integer that some run actually showed, so an even
    # number of runs cannot produce a value like 10.5 that no run had.
    return {"median": statistics.median_low(values), "min": min(values), "max": max(values)}


def _spreads(maps: Sequence[Mapping[str, int]]) -> dict[str, dict[str, int]]:
    keys = sorted(set().union(*maps)) if maps else []
    return {k: _spread([m.get(k, 0) for m in maps]) for k in keys}


def capture(observations: Sequence[Observation], command: Sequence[str], *, arch: str,
            kernel: str, tolerances: Mapping[str, Any] | None = None,
            version: str = __version__) -> dict[str, Any]:
    """A golden dict from one or more observations of the same command."""
    if not observations:
        raise ValueError("a golden trace needs at least one run")
    obs = list(observations)
    incomplete = [i + 1 for i, o in enumerate(obs) if o.drops]
    if incomplete:
        raise ValueError(f"run(s) {incomplete} dropped events: their counts cannot be a baseline")
    calls = _spreads([o.calls for o in obs])
    errors = _spreads([o.errors for o in obs])
    durations = [o.duration_us for o in obs]
    statuses = [o.exit_status for o in obs]
    if any(d is None for d in durations) or any(s is None for s in statuses):
        raise ValueError("a run did not finish (no duration or exit status)")
    rss = [o.peak_rss_kib for o in obs]
    return {
        "schema": GOLDEN_SCHEMA,
        "command": list(command),
        "environment": {"arch": arch, "kernel": kernel, "tracerd": version},
        "runs": len(obs),
        "exit_status": _spread([s for s in statuses if s is not None]),
        "syscalls": {name: {"calls": calls[name], "errors": errors.get(name, _spread([0]))}
                     for name in calls},
        "processes": _spreads([o.processes for o in obs]),
        "measured": {
            "duration_us": _spread([d for d in durations if d is not None]),
            "peak_rss_kib": (None if any(r is None for r in rss)
                             else _spread([r for r in rss if r is not None])),
        },
        "tolerances": json.loads(json.dumps(tolerances or DEFAULT_TOLERANCES)),
    }


def capture_from_reports(reports: Sequence[Report], command: Sequence[str], name_of: NameOf,
                         *, tolerances: Mapping[str, Any] | None = None,
                         version: str = __version__) -> dict[str, Any]:
    """A golden dict from the reports of N runs of ``command``."""
    if not reports:
        raise ValueError("a golden trace needs at least one run")
    obs = [observe(r, name_of) for r in reports]
    return capture(obs, command, arch=reports[0].arch, kernel=reports[0].kernel,
                   tolerances=tolerances, version=version)


def dumps_golden(golden: Mapping[str, Any]) -> str:
    """Deterministic text: sorted keys, 2-space indent, final newline."""
    return json.dumps(golden, indent=2, sort_keys=True) + "\n"


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------


class _Checker:
    """Validates a parsed golden file; every error names the file and the JSON path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, problem: str) -> GoldenError:
        return GoldenError(f"{self.source}: field '{path}' {problem}")

    def field(self, d: Mapping[str, Any], key: str, path: str) -> Any:
        if key not in d:
            raise self.fail(path + key, "is missing")
        return d[key]

    def obj(self, v: Any, path: str) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise self.fail(path, f"must be an object, got {_type_name(v)}")
        return v

    def int_(self, v: Any, path: str, *, minimum: int = 0) -> int:
        # bool is an int subclass in Python; true/false is never a count.
        if not isinstance(v, int) or isinstance(v, bool):
            raise self.fail(path, f"must be an integer, got {_type_name(v)}")
        if v < minimum:
            raise self.fail(path, f"must be >= {minimum}, got {v}")
        return v

    def num(self, v: Any, path: str, *, minimum: float) -> float:
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
            raise self.fail(path, f"must be a number, got {_type_name(v)}")
        if v < minimum:
            raise self.fail(path, f"must be >= {minimum:g}, got {v}")
        return float(v)

    def str_(self, v: Any, path: str) -> str:
        if not isinstance(v, str):
            raise self.fail(path, f"must be a string, got {_type_name(v)}")
        return v

    def spread(self, v: Any, path: str) -> None:
        d = self.obj(v, path)
        p = path + "."
        lo = self.int_(self.field(d, "min", p), p + "min")
        hi = self.int_(self.field(d, "max", p), p + "max")
        med = self.int_(self.field(d, "median", p), p + "median")
        if lo > hi:
            raise self.fail(p + "min", f"is {lo}, above max {hi}")
        if not lo <= med <= hi:
            raise self.fail(p + "median", f"is {med}, outside [min, max] = [{lo}, {hi}]")

    def check(self, data: Any) -> dict[str, Any]:
        g = self.obj(data, "<top>")
        schema = self.field(g, "schema", "")
        if schema != GOLDEN_SCHEMA:
            if isinstance(schema, str) and schema.startswith("tracerd.golden/"):
                hint = ("; recapture it with `tracerd golden update FILE`"
                        if schema in _OLD_SCHEMAS else "")
                raise self.fail("schema", f"is {schema!r}: this tracerd reads "
                                f"{GOLDEN_SCHEMA!r}{hint}")
            raise self.fail("schema", f"must be {GOLDEN_SCHEMA!r}, got {schema!r}")
        command = self.field(g, "command", "")
        if not isinstance(command, list) or not command:
            raise self.fail("command", "must be a non-empty list of strings")
        for i, arg in enumerate(command):
            self.str_(arg, f"command[{i}]")
        env = self.obj(self.field(g, "environment", ""), "environment")
        for key in ("arch", "kernel", "tracerd"):
            self.str_(self.field(env, key, "environment."), f"environment.{key}")
        self.int_(self.field(g, "runs", ""), "runs", minimum=1)
        self.spread(self.field(g, "exit_status", ""), "exit_status")

        syscalls = self.obj(self.field(g, "syscalls", ""), "syscalls")
        for name, entry in syscalls.items():
            p = f"syscalls.{name}"
            e = self.obj(entry, p)
            self.spread(self.field(e, "calls", p + "."), p + ".calls")
            self.spread(self.field(e, "errors", p + "."), p + ".errors")
            if e["errors"]["max"] > e["calls"]["max"]:
                raise self.fail(p + ".errors.max",
                                f"is {e['errors']['max']}, above calls.max {e['calls']['max']}")
        processes = self.obj(self.field(g, "processes", ""), "processes")
        for path, spread in processes.items():
            self.spread(spread, f"processes.{path}")

        measured = self.obj(self.field(g, "measured", ""), "measured")
        self.spread(self.field(measured, "duration_us", "measured."), "measured.duration_us")
        rss = self.field(measured, "peak_rss_kib", "measured.")
        if rss is not None:
            self.spread(rss, "measured.peak_rss_kib")

        self.tolerances(self.field(g, "tolerances", ""))
        return g

    def tolerances(self, value: Any) -> dict[str, Any]:
        tol = self.obj(value, "tolerances")
        counts = self.obj(self.field(tol, "counts", "tolerances."), "tolerances.counts")
        self.int_(self.field(counts, "min_abs", "tolerances.counts."), "tolerances.counts.min_abs")
        self.num(self.field(counts, "pct", "tolerances.counts."), "tolerances.counts.pct",
                 minimum=0)
        dur = self.obj(self.field(tol, "duration", "tolerances."), "tolerances.duration")
        self.num(self.field(dur, "ratio", "tolerances.duration."), "tolerances.duration.ratio",
                 minimum=1)
        self.num(self.field(dur, "slack_ms", "tolerances.duration."),
                 "tolerances.duration.slack_ms", minimum=0)
        rss_tol = self.obj(self.field(tol, "peak_rss", "tolerances."), "tolerances.peak_rss")
        self.num(self.field(rss_tol, "ratio", "tolerances.peak_rss."),
                 "tolerances.peak_rss.ratio", minimum=1)
        specs = self.obj(self.field(tol, "syscalls", "tolerances."), "tolerances.syscalls")
        for name, spec in specs.items():
            p = f"tolerances.syscalls.{name}"
            try:
                _parse_count_spec(self.str_(spec, p))
            except ValueError as e:
                raise self.fail(p, str(e)) from None
        return tol


def _type_name(v: object) -> str:
    if v is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean",
            int: "integer", float: "number"}.get(type(v), type(v).__name__)


def parse_golden(text: str, source: str = "<golden>") -> dict[str, Any]:
    """Parse and validate golden file text; raises GoldenError naming ``source`` and field."""
    if not text.strip():
        raise GoldenError(f"{source}: empty file, not a golden trace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        # The decoder stops at the end of the text only when the document is cut short.
        if e.pos >= len(text.rstrip()):
            raise GoldenError(f"{source}: truncated JSON (ends at line {e.lineno} "
                              f"before the document is complete)") from None
        raise GoldenError(f"{source}: corrupt JSON at line {e.lineno} column {e.colno}: "
                          f"{e.msg}") from None
    return _Checker(source).check(data)


def check_tolerances(value: Any, source: str = "<tolerances>") -> dict[str, Any]:
    """Validate a ``tolerances`` object on its own (GoldenError naming the field)."""
    return _Checker(source).tolerances(value)


def load_golden(path: str) -> dict[str, Any]:
    """Read and validate a golden file (see :func:`parse_golden`)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise GoldenUnreadable(f"{path}: cannot read golden file: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GoldenError(f"{path}: corrupt file: not UTF-8 at byte {e.start}") from None
    return parse_golden(text, path)


# --------------------------------------------------------------------------------------------
# Tolerances
# --------------------------------------------------------------------------------------------


def _parse_count_spec(spec: str) -> tuple[str, float]:
    """``exact`` | ``ignore`` | ``N`` | ``N%`` -> (kind, value)."""
    s = spec.strip()
    if s in ("exact", "ignore"):
        return s, 0.0
    try:
        if s.endswith("%"):
            value = float(s[:-1])
            kind = "pct"
        else:
            value = float(int(s))
            kind = "abs"
    except ValueError:
        raise ValueError(f"is {spec!r}: expected exact, ignore, N or N%") from None
    if value < 0 or not math.isfinite(value):
        raise ValueError(f"is {spec!r}: the margin must be >= 0")
    return kind, value


def apply_tolerance_overrides(tolerances: Mapping[str, Any],
                              overrides: Iterable[str]) -> dict[str, Any]:
    """``tolerances`` with ``NAME=SPEC`` overrides (from ``--tolerance``) applied.

    NAME is a syscall (SPEC: exact, ignore, N, N%) or one of ``duration`` (ratio),
    ``duration_slack_ms``, ``rss`` (ratio), ``counts`` (N%: the default margin's percentage)
    and ``counts_min_abs`` (N). Raises ValueError with a one-line message.
    """
    tol: dict[str, Any] = json.loads(json.dumps(dict(tolerances)))
    for item in overrides:
        name, sep, spec = item.partition("=")
        name, spec = name.strip(), spec.strip()
        if not sep or not name or not spec:
            raise ValueError(f"--tolerance {item!r}: expected NAME=SPEC")

        def number(text: str, minimum: float, item: str = item) -> float:
            try:
                value = float(text.rstrip("x"))
            except ValueError:
                raise ValueError(f"--tolerance {item!r}: not a number") from None
            if not math.isfinite(value) or value < minimum:
                raise ValueError(f"--tolerance {item!r}: must be >= {minimum:g}")
            return value

        if name == "duration":
            tol["duration"]["ratio"] = number(spec, 1)
        elif name == "duration_slack_ms":
            tol["duration"]["slack_ms"] = number(spec, 0)
        elif name == "rss":
            tol["peak_rss"]["ratio"] = number(spec, 1)
        elif name == "counts":
            tol["counts"]["pct"] = number(spec.rstrip("%"), 0)
        elif name == "counts_min_abs":
            tol["counts"]["min_abs"] = int(number(spec, 0))
        else:
            try:
                _parse_count_spec(spec)
            except ValueError as e:
                raise ValueError(f"--tolerance {name}: {e}") from None
            tol["syscalls"][name] = spec
    return tol


def _margin(spread: Mapping[str, int], spec: str | None, counts: Mapping[str, Any]) -> int | None:
    """Allowed distance outside the golden [min, max]; None: ignore this count."""
    if spec is None:
        if spread["min"] == spread["max"]:
            return 0
        return max(int(counts["min_abs"]), math.ceil(spread["max"] * float(counts["pct"]) / 100))
    kind, value = _parse_count_spec(spec)
    if kind == "ignore":
        return None
    if kind == "exact":
        return 0
    if kind == "abs":
        return int(value)
    return math.ceil(spread["max"] * value / 100)


# --------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One compared quantity. ``golden`` is None for a syscall or process the golden lacks."""

    kind: str  #: "calls", "errors", "process", "exit_status", "duration", "peak_rss", "drops"
    name: str  #: syscall name, comm path, or the quantity
    golden: Mapping[str, int] | None
    now: int | None
    allowed: tuple[float, float] | None  #: inclusive; None: not checked
    verdict: str
    unit: str = ""  #: "us" or "KiB" for measured rows, "" for counts

    @property
    def failed(self) -> bool:
        return self.verdict in _FAILING

    @property
    def changed(self) -> bool:
        median = self.golden["median"] if self.golden is not None else 0
        return self.verdict != IGNORED and (self.now or 0) != median

    @property
    def measured(self) -> bool:
        return self.kind in ("duration", "peak_rss")


@dataclass
class Comparison:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(r.failed for r in self.rows)

    @property
    def verdict(self) -> str:
        return "regression" if self.failed else "pass"

    def failures(self) -> list[Row]:
        return [r for r in self.rows if r.failed]

    def failed_syscalls(self) -> list[str]:
        """Names of the syscalls whose calls or errors failed, sorted."""
        return sorted({r.name for r in self.rows if r.failed and r.kind in ("calls", "errors")})


def _count_row(kind: str, name: str, spread: Mapping[str, int] | None, now: int,
               margin: int | None) -> Row:
    if spread is None:
        if margin is None:
            return Row(kind, name, None, now, None, IGNORED)
        return Row(kind, name, None, now, (0, 0), NEW if now else OK)
    if margin is None:
        return Row(kind, name, spread, now, None, IGNORED)
    lo, hi = max(0, spread["min"] - margin), spread["max"] + margin
    if kind == "calls" and now == 0 and lo > 0:
        verdict = VANISHED
    elif not lo <= now <= hi:
        verdict = FAIL
    else:
        verdict = OK if now == spread["median"] else WITHIN
    return Row(kind, name, spread, now, (lo, hi), verdict)


def _compare_observation(golden: Mapping[str, Any], now: Observation) -> Comparison:
    tol = golden["tolerances"]
    specs: Mapping[str, str] = tol["syscalls"]
    result = Comparison()
    gsys: Mapping[str, Any] = golden["syscalls"]
    for name in sorted(set(gsys) | set(now.calls)):
        entry = gsys.get(name)
        spec = specs.get(name)
        calls = now.calls.get(name, 0)
        if entry is None:
            margin = None if spec is not None and _parse_count_spec(spec)[0] == "ignore" else 0
            result.rows.append(_count_row("calls", name, None, calls, margin))
            continue
        calls_row = _count_row("calls", name, entry["calls"], calls,
                               _margin(entry["calls"], spec, tol["counts"]))
        result.rows.append(calls_row)
        if calls_row.verdict != VANISHED:  # a vanished call has no errors worth a second row
            result.rows.append(_count_row("errors", name, entry["errors"],
                                          now.errors.get(name, 0),
                                          _margin(entry["errors"], spec, tol["counts"])))
    gproc: Mapping[str, Any] = golden["processes"]
    for path in sorted(set(gproc) | set(now.processes)):
        spread = gproc.get(path)
        count = now.processes.get(path, 0)
        row = _count_row("process", path, spread, count,
                         0 if spread is None else _margin(spread, None, tol["counts"]))
        result.rows.append(row)

    status = golden["exit_status"]
    if now.exit_status is not None:
        ok = status["min"] <= now.exit_status <= status["max"]
        verdict = (OK if now.exit_status == status["median"] else WITHIN) if ok else FAIL
        result.rows.append(Row("exit_status", "exit status", status, now.exit_status,
                               (status["min"], status["max"]), verdict))

    measured = golden["measured"]
    dur = measured["duration_us"]
    if now.duration_us is not None:
        ratio, slack_us = tol["duration"]["ratio"], tol["duration"]["slack_ms"] * 1000
        # Slower than ratio x median AND more than slack slower: the larger bound.
        hi = max(dur["median"] * ratio, dur["median"] + slack_us)
        verdict = FAIL if now.duration_us > hi else (
            OK if now.duration_us == dur["median"] else WITHIN)
        result.rows.append(Row("duration", "duration", dur, now.duration_us, (0, hi), verdict,
                               unit="us"))
    rss = measured["peak_rss_kib"]
    if rss is not None and now.peak_rss_kib is not None:
        hi = rss["median"] * tol["peak_rss"]["ratio"]
        verdict = FAIL if now.peak_rss_kib > hi else (
            OK if now.peak_rss_kib == rss["median"] else WITHIN)
        result.rows.append(Row("peak_rss", "peak RSS", rss, now.peak_rss_kib, (0, hi), verdict,
                               unit="KiB"))
    elif rss is not None:
        result.notes.append("peak RSS was not measured in this run: not compared")
    if now.drops:
        result.rows.append(Row("drops", "dropped events", {"median": 0, "min": 0, "max": 0},
                               now.drops, (0, 0), FAIL))
        result.notes.append("the run dropped events: its counts are incomplete")
    return result


def compare(golden: Mapping[str, Any], report: Report, name_of: NameOf, *,
            command: Sequence[str] | None = None) -> Comparison:
    """Compare one run's report with a validated golden dict (see the module rules)."""
    obs = observe(report, name_of)
    result = _compare_observation(golden, obs)
    cmd = list(command) if command is not None else report.command
    if cmd != golden["command"]:
        result.notes.append(f"command differs from the golden's {golden['command']!r}")
    env = golden["environment"]
    if (report.arch, report.kernel) != (env["arch"], env["kernel"]):
        # Not a failure by itself, but the first suspect when counts differ: another kernel
        # or arch (open vs openat, say) changes what the same command calls.
        result.notes.append(f"captured on {env['arch']} {env['kernel']}, "
                            f"now {report.arch} {report.kernel}")
    return result


def compare_goldens(old: Mapping[str, Any], new: Mapping[str, Any]) -> Comparison:
    """Old baseline against the medians of a new capture (what ``golden update`` shows)."""
    m = new["measured"]
    obs = Observation(
        calls={k: v["calls"]["median"] for k, v in new["syscalls"].items()},
        errors={k: v["errors"]["median"] for k, v in new["syscalls"].items()},
        processes={k: v["median"] for k, v in new["processes"].items()},
        exit_status=new["exit_status"]["median"],
        duration_us=m["duration_us"]["median"],
        peak_rss_kib=m["peak_rss_kib"]["median"] if m["peak_rss_kib"] else None,
    )
    result = _compare_observation(old, obs)
    if list(new["command"]) != list(old["command"]):
        result.notes.append(f"command changed from {old['command']!r}")
    return result


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _fmt(value: float, unit: str) -> str:
    if unit == "us":
        return f"{value / 1000:.1f} ms"
    if unit == "KiB":
        return f"{value:.0f} KiB"
    return f"{value:g}"


def _fmt_golden(row: Row) -> str:
    g = row.golden
    if g is None:
        return "-"
    text = _fmt(g["median"], row.unit)
    if g["min"] != g["max"]:
        text += f" [{_fmt(g['min'], row.unit)}..{_fmt(g['max'], row.unit)}]"
    return text


def _fmt_delta(row: Row) -> str:
    if row.now is None:
        return ""
    base = row.golden["median"] if row.golden is not None else 0
    delta = row.now - base
    text = ("+" if delta > 0 else "") + _fmt(delta, row.unit) if delta else "0"
    if row.measured and base:
        text += f" ({row.now / base:.2f}x)"
    return text


def _fmt_allowed(row: Row) -> str:
    if row.allowed is None:
        return "-"
    lo, hi = row.allowed
    if row.measured:
        return f"<= {_fmt(hi, row.unit)}"
    return f"{lo:g}" if lo == hi else f"{lo:g}..{hi:g}"


def _row_label(row: Row) -> str:
    if row.kind == "calls":
        return row.name
    if row.kind == "errors":
        return f"{row.name} (errors)"
    if row.kind == "process":
        return f"process {row.name}"
    return row.name


def render_diff(comparison: Comparison, *, all_rows: bool = False, title: str = "") -> str:
    """A table of the rows that matter (failed or changed; measured rows always), then the
    verdict; ``all_rows`` lists every row."""
    rows = [r for r in comparison.rows if all_rows or r.failed or r.measured or r.changed]
    header = ("what", "golden", "now", "delta", "allowed", "verdict")
    body = [(_row_label(r), _fmt_golden(r), "-" if r.now is None else _fmt(r.now, r.unit),
             _fmt_delta(r), _fmt_allowed(r), r.verdict) for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:-1], widths[1:-1], strict=True)]
        return " ".join([first, *rest, cells[-1]]).rstrip()

    out = [title] if title else []
    out += [line(header), " ".join("-" * w for w in widths)]
    out += [line(b) for b in body]
    hidden = len(comparison.rows) - len(rows)
    if hidden:
        out.append(f"({hidden} unchanged rows not shown; --all lists them)")
    out += [f"note: {n}" for n in comparison.notes]
    failures = comparison.failures()
    if failures:
        names = ", ".join(_row_label(r) + f" {r.verdict}" for r in failures)
        out.append(f"verdict: REGRESSION ({len(failures)} failing: {names})")
    else:
        out.append("verdict: PASS")
    return "\n".join(out) + "\n"


def verdict_to_dict(comparison: Comparison, golden_path: str) -> dict[str, Any]:
    """The machine-readable verdict (``VERDICT_SCHEMA``) of ``--json``."""
    return {
        "schema": VERDICT_SCHEMA,
        "golden": golden_path,
        "verdict": comparison.verdict,
        "exit_status": EXIT_REGRESSION if comparison.failed else 0,
        "failed_syscalls": comparison.failed_syscalls(),
        "notes": list(comparison.notes),
        "rows": [
            {"kind": r.kind, "name": r.name, "golden": dict(r.golden) if r.golden else None,
             "now": r.now, "allowed": list(r.allowed) if r.allowed else None,
             "unit": r.unit, "verdict": r.verdict, "failed": r.failed}
            for r in comparison.rows
        ],
    }
