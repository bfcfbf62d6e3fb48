"""Turn a :class:`~tracerd.model.Report` into text (``strace -c`` style) or versioned JSON.

Pure logic: no bcc, no grpc, and no syscall table import. Callers pass ``name_of`` (usually
``tracerd.syscalls.table_for(arch).name``) so this module stays testable without it.

Text tables mirror the layout of strace's ``-c`` summary (``call_summary_pers`` in strace's
``src/count.c``): same headers, minimum widths, number formats and blank zero-error cells.
Deliberate differences are documented where they occur.

JSON schema (``REPORT_SCHEMA``, currently ``tracerd.report/v1``)::

    {
      "schema": "tracerd.report/v1",
      "command": [str, ...],         "arch": str,      "kernel": str,
      "root_pid": int,               "start_ns": int,  "end_ns": int | null,
      "duration_ns": int | null,     # derived: end_ns - start_ns
      "exit": EXIT | null,
      "interrupted": str | null,     # why the trace ended early (optional on input)
      "drops": {"stats_full": int, "events_lost": int, "pid_out_of_range": int,
                "syscall_events_lost": int},
      "processes": [                 # sorted by pid (pid 0: folded exited processes)
        {"pid": int, "ppid": int, "comm": str, "argv": [str, ...], "filename": str,
         "uid": int | null, "cgroup": str,                  # optional on input
         "start_ns": int, "end_ns": int | null, "exit": EXIT | null,
         "syscalls": [SYSCALL, ...],  # sorted by name, then nr
         "peak_rss_bytes": int | null}  # optional on input; measured for RSS budgets
      ],
      "budget": [RESULT, ...],       # optional on input; in the budget's order
      "budget_failed": bool,         # derived: a result that fails the session failed
      "count_only": bool,            # optional on input: calls only, errors/times not measured
      "totals": {"calls": int, "errors": int, "total_ns": int,   # derived from processes
                 "syscalls": [SYSCALL, ...]}
    }
    EXIT    = {"code": int | null, "signal": int | null, "core_dumped": bool,
               "status": int}      # derived: the shell's $? (code, or 128 + signal)
    SYSCALL = {"nr": int, "name": str, "calls": int, "errors": int, "total_ns": int,
               "max_ns": int, "histogram": [int x HIST_BUCKETS],
               "alloc_bytes": int}   # optional on input; see SyscallStats.alloc_bytes
    RESULT  = tracerd._budgets.result_to_dict: name, type, passed, message, actual_value,
              expected_value, action, enabled, fail_on_violation, first_failed_ns, pid,
              enforcement, overshoot

Times are CLOCK_MONOTONIC nanoseconds. ``name`` is informational (it depends on the syscall
table of ``arch``); ``nr`` is authoritative. Readers ignore unknown keys, so adding a field is
compatible; removing or changing the meaning of one requires a new schema version.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tracerd._budgets import Result, result_to_dict
from tracerd.model import (
    HIST_BUCKETS,
    REPORT_SCHEMA,
    Drops,
    ExitStatus,
    ProcessInfo,
    Report,
    SyscallStats,
)

__all__ = [
    "counts_table",
    "process_header",
    "render_text",
    "report_from_dict",
    "report_to_dict",
    "report_to_json",
    "summary_table",
]

NameOf = Callable[[int], str]

_NS_PER_S = 1_000_000_000

# --------------------------------------------------------------------------------------------
# Text tables
# --------------------------------------------------------------------------------------------


class _Column:
    """One table column: header, strace's minimum width and alignment."""

    def __init__(self, header: str, min_width: int, *, left: bool = False, slack: int = 0) -> None:
        self.header = header
        self.min_width = min_width
        self.left = left
        self.slack = slack  # room kept after the widest cell (strace: longest name + 1)
        self.width = min_width

    def fit(self, cells: Sequence[str]) -> None:
        # strace sizes a column from its widest value (the total, for sums) but never below
        # the historical minimum; sizing from every cell gives the same result for its columns
        # and also covers our percentile columns.
        widest = max((len(c) for c in cells), default=0) + self.slack
        self.width = max(self.min_width, len(self.header), widest)

    def cell(self, text: str, *, last: bool) -> str:
        if self.left:
            # strace prints a left-aligned last column unpadded, so lines have no trailing blanks.
            return text if last else text.ljust(self.width)
        return text.rjust(self.width)


def _seconds(ns: int) -> float:
    # strace's ts_float() computes tv_sec + tv_nsec / 1e9; doing the same keeps "%.6f" rounding
    # identical to strace even on exact half-microsecond values.
    return ns // _NS_PER_S + (ns % _NS_PER_S) / 1e9


def _usecs_per_call(total_ns: int, calls: int) -> int:
    # strace: ts_div() rounds the mean to the nearest ns (adds n/2 before dividing), then the
    # value is truncated to whole microseconds. Integer arithmetic avoids the double rounding
    # of strace's (uint64_t)(seconds * 1e6), which can print e.g. 248 for a 249000 ns mean.
    if calls == 0:
        return 0
    return (total_ns + calls // 2) // calls // 1000


def _total_usecs_per_call(total_ns: int, calls: int) -> int:
    # strace's total row divides the cumulative time by the call count without the nearest-ns
    # rounding used for rows; it is plain truncation. A table with no calls would divide by
    # zero in strace (which prints no table at all then); we print 0.
    if calls == 0:
        return 0
    return total_ns // (calls * 1000)


def _count(n: int) -> str:
    # strace prints errors with "%*.0u": precision 0 renders the value 0 as no digits at all.
    return str(n) if n else ""


def _percentile_us(st: SyscallStats, q: float) -> str:
    ns = st.percentile_ns(q)
    # Three decimals keep the ns resolution of the log2 bucket bounds: most syscalls are
    # sub-microsecond, and integer microseconds would show them all as 0.
    return "-" if ns is None else f"{ns / 1000:.3f}"


def _sort_key(item: tuple[int, SyscallStats, str]) -> tuple[int, int, str, int]:
    nr, st, name = item
    # strace sorts by cumulative time, descending, with qsort(): ties come out in an
    # unspecified order. We break them deterministically: calls descending, then name, then nr.
    return (-st.total_ns, -st.calls, name, nr)


def counts_table(stats: Mapping[int, SyscallStats], name_of: NameOf) -> str:
    """A count-only table (as BCC's ``syscount`` without ``-L``): calls and syscall, by
    calls descending (ties: name, then nr), then the total; ends with a newline."""
    rows = sorted(((nr, st, name_of(nr)) for nr, st in stats.items() if st.calls > 0),
                  key=lambda r: (-r[1].calls, r[2], r[0]))
    total = sum(st.calls for _, st, _ in rows)
    width = max(9, len(str(total)))
    dashes = "-" * width + " " + "-" * 16
    lines = [f"{'calls':>{width}} syscall", dashes]
    lines += [f"{st.calls:>{width}} {name}" for _, st, name in rows]
    lines += [dashes, f"{total:>{width}} total"]
    return "\n".join(lines) + "\n"


def summary_table(
    stats: Mapping[int, SyscallStats],
    name_of: NameOf,
    *,
    percentiles: bool = False,
) -> str:
    """An ``strace -c`` table of ``stats`` (syscall nr -> aggregate), ending with a newline.

    Rows are sorted by time descending (ties: calls descending, then name); rows without
    calls are omitted. With ``percentiles``, ``p50(us)`` and ``p99(us)`` columns are appended,
    computed from the latency histograms (``-`` when no call was timed).
    """
    rows = sorted(
        ((nr, st, name_of(nr)) for nr, st in stats.items() if st.calls > 0),
        key=_sort_key,
    )
    total = SyscallStats()
    for _, st, _ in rows:
        total.add(st)
    cum_s = _seconds(total.total_ns)

    columns = [
        _Column("% time", 6),
        _Column("seconds", 11),
        _Column("usecs/call", 11),
        _Column("calls", 9),
        _Column("errors", 9),
        _Column("syscall", 16, left=True, slack=1),
    ]
    if percentiles:
        columns += [_Column("p50(us)", 0), _Column("p99(us)", 0)]

    def _cells(pct: float, st: SyscallStats, usecs: int, name: str) -> list[str]:
        out = [f"{pct:.2f}", f"{_seconds(st.total_ns):.6f}", str(usecs), str(st.calls),
               _count(st.errors), name]
        if percentiles:
            out += [_percentile_us(st, 0.5), _percentile_us(st, 0.99)]
        return out

    body: list[list[str]] = []
    for _, st, name in rows:
        # As strace: a row with no time gets 0.00 without dividing, so a zero total gives 0.00
        # rather than NaN.
        pct = 100.0 * _seconds(st.total_ns)
        if pct != 0.0:
            pct /= cum_s
        body.append(_cells(pct, st, _usecs_per_call(st.total_ns, st.calls), name))
    # The total row always says 100.00, even when no time was measured (as strace does).
    footer = _cells(100.0, total, _total_usecs_per_call(total.total_ns, total.calls), "total")

    for i, col in enumerate(columns):
        col.fit([r[i] for r in body] + [footer[i]])

    last = len(columns) - 1

    def _line(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(columns, cells, strict=True))
        return " ".join(col.cell(c, last=i == last) for i, (col, c) in pairs)

    dashes = " ".join("-" * col.width for col in columns)
    lines = [_line([col.header for col in columns]), dashes]
    lines += [_line(r) for r in body]
    lines += [dashes, _line(footer)]
    return "\n".join(lines) + "\n"


def process_header(proc: ProcessInfo) -> str:
    """One line introducing a process's table, e.g.
    ``pid 1234 (python3) ppid 1200, exited with 0, 0.012345 s``."""
    if proc.exit is not None:
        status = proc.exit.describe()
    elif proc.end_ns is None:
        status = "still running"
    else:
        # Tracking ended (e.g. the exit event was lost) without a decoded exit status.
        status = "ended, exit status unknown"
    line = f"pid {proc.pid} ({proc.comm}) ppid {proc.ppid}, {status}"
    if proc.end_ns is not None:
        line += f", {_seconds(proc.end_ns - proc.start_ns):.6f} s"
    return line


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _drops_footer(drops: Drops) -> str | None:
    parts: list[str] = []
    if drops.stats_full:
        parts.append(_plural(drops.stats_full, "syscall", "syscalls")
                     + " not counted (stats map full)")
    if drops.events_lost:
        parts.append(_plural(drops.events_lost, "process event", "process events")
                     + " lost (ring buffer full)")
    if drops.pid_out_of_range:
        parts.append(_plural(drops.pid_out_of_range, "fork", "forks")
                     + " not tracked (pid above the limit sized at load time)")
    if drops.forks_untracked:
        parts.append(_plural(drops.forks_untracked, "fork", "forks")
                     + " not tracked (the daemon's max_tracked_pids reached)")
    if drops.syscall_events_lost:
        parts.append(_plural(drops.syscall_events_lost, "syscall event", "syscall events")
                     + " not recorded (the counts above are complete)")
    if not parts:
        return None
    return "tracerd: WARNING: " + ", ".join(parts)


def render_text(
    report: Report,
    name_of: NameOf,
    *,
    per_process: bool = False,
    percentiles: bool = False,
) -> str:
    """The human-readable report: one table of all processes, or one table per process
    followed by a total section; then a warning line if anything was dropped. A count-only
    report has calls only (``counts_table``)."""

    def table(stats: Mapping[int, SyscallStats]) -> str:
        if report.count_only:
            return counts_table(stats, name_of)
        return summary_table(stats, name_of, percentiles=percentiles)

    sections: list[str] = []
    if per_process:
        procs = sorted(report.processes.values(), key=lambda p: (p.start_ns, p.pid))
        for proc in procs:
            sections.append(process_header(proc) + "\n" + table(proc.syscalls))
        sections.append(f"total: {_plural(len(procs), 'process', 'processes')}\n"
                        + table(report.totals()))
    else:
        sections.append(table(report.totals()))
    out = "\n".join(sections)  # a blank line between sections: each already ends with "\n"
    footer = _drops_footer(report.drops)
    if footer is not None:
        out += footer + "\n"
    return out


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------


def _exit_to_dict(ex: ExitStatus | None) -> dict[str, Any] | None:
    if ex is None:
        return None
    return {
        "code": ex.code,
        "signal": ex.signal,
        "core_dumped": ex.core_dumped,
        "status": ex.shell_status(),
    }


def _syscalls_to_list(stats: Mapping[int, SyscallStats], name_of: NameOf) -> list[dict[str, Any]]:
    named = sorted(((name_of(nr), nr, st) for nr, st in stats.items()), key=lambda t: (t[0], t[1]))
    return [
        {
            "nr": nr,
            "name": name,
            "calls": st.calls,
            "errors": st.errors,
            "total_ns": st.total_ns,
            "max_ns": st.max_ns,
            "histogram": list(st.hist),
            "alloc_bytes": st.alloc_bytes,
        }
        for name, nr, st in named
    ]


def report_to_dict(report: Report, name_of: NameOf) -> dict[str, Any]:
    """The report as plain JSON-able data (see the module docstring for the schema).

    Raises ValueError if ``report.processes`` maps a pid to a ProcessInfo of another pid, since
    the JSON keeps only the latter and could not round-trip.
    """
    procs: list[dict[str, Any]] = []
    for key, proc in sorted(report.processes.items()):
        if key != proc.pid:
            raise ValueError(f"report.processes[{key}] holds pid {proc.pid}")
        procs.append({
            "pid": proc.pid,
            "ppid": proc.ppid,
            "comm": proc.comm,
            "argv": list(proc.argv),
            "filename": proc.filename,
            "uid": proc.uid,
            "cgroup": proc.cgroup,
            "start_ns": proc.start_ns,
            "end_ns": proc.end_ns,
            "exit": _exit_to_dict(proc.exit),
            "syscalls": _syscalls_to_list(proc.syscalls, name_of),
            "peak_rss_bytes": proc.peak_rss_bytes,
        })
    totals = report.totals()
    return {
        "schema": REPORT_SCHEMA,
        "command": list(report.command),
        "arch": report.arch,
        "kernel": report.kernel,
        "root_pid": report.root_pid,
        "start_ns": report.start_ns,
        "end_ns": report.end_ns,
        "duration_ns": None if report.end_ns is None else report.end_ns - report.start_ns,
        "exit": _exit_to_dict(report.exit),
        "interrupted": report.interrupted,
        "drops": {
            "stats_full": report.drops.stats_full,
            "events_lost": report.drops.events_lost,
            "pid_out_of_range": report.drops.pid_out_of_range,
            "syscall_events_lost": report.drops.syscall_events_lost,
            "forks_untracked": report.drops.forks_untracked,
        },
        "processes": procs,
        "budget": [result_to_dict(r) for r in report.budget],
        "budget_failed": report.budget_failed(),
        "count_only": report.count_only,
        "totals": {
            "calls": sum(st.calls for st in totals.values()),
            "errors": sum(st.errors for st in totals.values()),
            "total_ns": sum(st.total_ns for st in totals.values()),
            "syscalls": _syscalls_to_list(totals, name_of),
        },
    }


def report_to_json(report: Report, name_of: NameOf) -> str:
    """``report_to_dict`` as deterministic JSON (sorted keys, 2-space indent, final newline)."""
    return json.dumps(report_to_dict(report, name_of), indent=2, sort_keys=True) + "\n"


# Parsing: every helper takes the JSON path of the value so errors name the exact field.


def _type_name(v: object) -> str:
    return "null" if v is None else type(v).__name__


def _field(d: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in d:
        raise ValueError(f"report: missing field '{path}{key}'")
    return d[key]


def _wrong_type(path: str, expected: str, v: object) -> ValueError:
    # ValueError rather than TypeError: callers hand us untrusted data and need one exception
    # type for every kind of bad input (like json.JSONDecodeError, itself a ValueError).
    return ValueError(f"report: field '{path}' must be {expected}, got {_type_name(v)}")


def _obj(v: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise _wrong_type(path, "an object", v)
    return v


def _list(v: Any, path: str) -> list[Any]:
    if not isinstance(v, list):
        raise _wrong_type(path, "a list", v)
    return v


def _int(v: Any, path: str, *, signed: bool = False) -> int:
    # bool is an int subclass in Python, but true/false is not a number in this schema.
    if not isinstance(v, int) or isinstance(v, bool):
        raise _wrong_type(path, "an integer", v)
    if not signed and v < 0:
        raise ValueError(f"report: field '{path}' must be >= 0, got {v}")
    return v


def _opt_int(v: Any, path: str) -> int | None:
    return None if v is None else _int(v, path)


def _str(v: Any, path: str) -> str:
    if not isinstance(v, str):
        raise _wrong_type(path, "a string", v)
    return v


def _bool(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise _wrong_type(path, "a boolean", v)
    return v


def _str_list(v: Any, path: str) -> list[str]:
    return [_str(s, f"{path}[{i}]") for i, s in enumerate(_list(v, path))]


def _get_int(d: Mapping[str, Any], key: str, path: str) -> int:
    return _int(_field(d, key, path), path + key)


def _get_opt_int(d: Mapping[str, Any], key: str, path: str) -> int | None:
    return _opt_int(_field(d, key, path), path + key)


def _get_str(d: Mapping[str, Any], key: str, path: str) -> str:
    return _str(_field(d, key, path), path + key)


def _exit_from(v: Any, path: str) -> ExitStatus | None:
    if v is None:
        return None
    d = _obj(v, path)
    p = path + "."
    ex = ExitStatus(
        code=_get_opt_int(d, "code", p),
        signal=_get_opt_int(d, "signal", p),
        core_dumped=_bool(_field(d, "core_dumped", p), p + "core_dumped"),
    )
    status = _get_int(d, "status", p)
    if status != ex.shell_status():
        raise ValueError(
            f"report: field '{p}status' is {status}, but code/signal give {ex.shell_status()}"
        )
    return ex


def _syscalls_from(v: Any, path: str) -> dict[int, SyscallStats]:
    out: dict[int, SyscallStats] = {}
    for i, item in enumerate(_list(v, path)):
        ip = f"{path}[{i}]"
        d = _obj(item, ip)
        p = ip + "."
        nr = _get_int(d, "nr", p)
        _get_str(d, "name", p)  # informational only, but still must be well-formed
        hist = [_int(n, f"{p}histogram[{j}]", signed=False)
                for j, n in enumerate(_list(_field(d, "histogram", p), p + "histogram"))]
        if len(hist) != HIST_BUCKETS:
            raise ValueError(
                f"report: field '{p}histogram' must have {HIST_BUCKETS} buckets, got {len(hist)}"
            )
        if nr in out:
            raise ValueError(f"report: field '{p}nr' repeats syscall {nr}")
        out[nr] = SyscallStats(
            calls=_get_int(d, "calls", p),
            errors=_get_int(d, "errors", p),
            total_ns=_get_int(d, "total_ns", p),
            max_ns=_get_int(d, "max_ns", p),
            hist=hist,
            alloc_bytes=_int(d.get("alloc_bytes", 0), p + "alloc_bytes", signed=False),
        )
    return out


def _process_from(v: Any, path: str) -> ProcessInfo:
    d = _obj(v, path)
    p = path + "."
    return ProcessInfo(
        pid=_get_int(d, "pid", p),
        ppid=_get_int(d, "ppid", p),
        comm=_get_str(d, "comm", p),
        argv=_str_list(_field(d, "argv", p), p + "argv"),
        filename=_get_str(d, "filename", p),
        uid=_opt_int(d.get("uid"), p + "uid"),
        cgroup=_str(d.get("cgroup", ""), p + "cgroup"),
        start_ns=_get_int(d, "start_ns", p),
        end_ns=_get_opt_int(d, "end_ns", p),
        exit=_exit_from(_field(d, "exit", p), p + "exit"),
        syscalls=_syscalls_from(_field(d, "syscalls", p), p + "syscalls"),
        peak_rss_bytes=_opt_int(d.get("peak_rss_bytes"), p + "peak_rss_bytes"),
    )


def _check_totals(v: Any, processes: Mapping[int, ProcessInfo]) -> None:
    """Validate the derived ``totals`` against the processes (names aside: no table here)."""
    d = _obj(v, "totals")
    expect = Report(command=[], arch="", kernel="", root_pid=0, start_ns=0,
                    processes=dict(processes)).totals()
    got = _syscalls_from(_field(d, "syscalls", "totals."), "totals.syscalls")
    if got != expect:
        raise ValueError("report: field 'totals.syscalls' does not match the sum of the processes")
    for key in ("calls", "errors", "total_ns"):
        value = _get_int(d, key, "totals.")
        want = sum(getattr(st, key) for st in expect.values())
        if value != want:
            raise ValueError(f"report: field 'totals.{key}' is {value}, processes sum to {want}")


def _result_from(v: Any, path: str) -> Result:
    d = _obj(v, path)
    p = path + "."

    def number(key: str) -> float:
        x = _field(d, key, p)
        if isinstance(x, bool) or not isinstance(x, int | float):
            raise _wrong_type(p + key, "a number", x)
        return float(x)

    return Result(name=_get_str(d, "name", p), type=_get_str(d, "type", p),
                  passed=_bool(_field(d, "passed", p), p + "passed"),
                  message=_get_str(d, "message", p), actual_value=number("actual_value"),
                  expected_value=number("expected_value"), action=_get_str(d, "action", p),
                  enabled=_bool(_field(d, "enabled", p), p + "enabled"),
                  fail_on_violation=_bool(_field(d, "fail_on_violation", p),
                                          p + "fail_on_violation"),
                  first_failed_ns=_opt_int(d.get("first_failed_ns"), p + "first_failed_ns"),
                  pid=_opt_int(d.get("pid"), p + "pid"),
                  enforcement=_str(d.get("enforcement", ""), p + "enforcement"),
                  overshoot=_opt_int(d.get("overshoot"), p + "overshoot"))


def report_from_dict(d: Mapping[str, Any]) -> Report:
    """Rebuild a Report from ``report_to_dict`` output (e.g. parsed JSON).

    Raises ValueError naming the offending field on a missing field, a wrong type, a wrong
    schema version or derived fields (duration, shell status, totals) that contradict the rest.
    Unknown keys are ignored so that additive schema changes stay readable.
    """
    d = _obj(d, "<report>")
    schema = _field(d, "schema", "")
    if schema != REPORT_SCHEMA:
        raise ValueError(f"report: field 'schema' must be {REPORT_SCHEMA!r}, got {schema!r}")

    processes: dict[int, ProcessInfo] = {}
    for i, item in enumerate(_list(_field(d, "processes", ""), "processes")):
        proc = _process_from(item, f"processes[{i}]")
        if proc.pid in processes:
            raise ValueError(f"report: field 'processes[{i}].pid' repeats pid {proc.pid}")
        processes[proc.pid] = proc

    drops_d = _obj(_field(d, "drops", ""), "drops")
    report = Report(
        command=_str_list(_field(d, "command", ""), "command"),
        arch=_get_str(d, "arch", ""),
        kernel=_get_str(d, "kernel", ""),
        root_pid=_get_int(d, "root_pid", ""),
        start_ns=_get_int(d, "start_ns", ""),
        end_ns=_get_opt_int(d, "end_ns", ""),
        exit=_exit_from(_field(d, "exit", ""), "exit"),
        interrupted=None if d.get("interrupted") is None else _str(d["interrupted"], "interrupted"),
        processes=processes,
        drops=Drops(
            stats_full=_get_int(drops_d, "stats_full", "drops."),
            events_lost=_get_int(drops_d, "events_lost", "drops."),
            pid_out_of_range=_get_int(drops_d, "pid_out_of_range", "drops."),
            # Absent from reports written before events existed.
            syscall_events_lost=_int(drops_d.get("syscall_events_lost", 0),
                                     "drops.syscall_events_lost"),
            forks_untracked=_int(drops_d.get("forks_untracked", 0), "drops.forks_untracked"),
        ),
        budget=[_result_from(r, f"budget[{i}]")
                for i, r in enumerate(_list(d.get("budget", []), "budget"))],
        # Absent from reports written before count-only existed.
        count_only=_bool(d.get("count_only", False), "count_only"),
    )

    duration = _field(d, "duration_ns", "")
    want = None if report.end_ns is None else report.end_ns - report.start_ns
    if duration is not None:
        # A clock anomaly could make end < start; the derived value may then be negative.
        duration = _int(duration, "duration_ns", signed=True)
    if duration != want:
        raise ValueError(f"report: field 'duration_ns' is {duration}, end_ns - start_ns is {want}")

    _check_totals(_field(d, "totals", ""), processes)
    return report
