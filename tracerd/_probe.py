"""The kernel boundary: the only module that imports bcc.

It compiles bpf/syscount.bpf.c with -D limits, attaches it, and turns map contents
and ring-buffer records into plain dataclasses. Nothing above this module sees a
ctypes object or a BCC table.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import mmap
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from . import _btf
from ._errors import (
    EXIT_USAGE,
    BccMissing,
    BpfUnusable,
    HeadersMissing,
    NoPrivilege,
    TracerdError,
)
from .model import (
    EV_EXEC,
    HIST_BUCKETS,
    LIMIT_RULES,
    ArgKind,
    ArgRead,
    Drops,
    LifecycleEvent,
    SyscallStats,
)

_C_STATS_FULL, _C_EVENTS_LOST, _C_PID_RANGE, _C_SYS_EVENTS_LOST = 0, 1, 2, 3
_U64 = (1 << 64) - 1
#: Kernel memory the stats map may take up front (Probe.stats_prealloc): 65,536 entries on
#: up to 5 CPUs.
STATS_PREALLOC_BYTES = 64 << 20
#: Kernel memory the counter blocks may take (Probe.block_count): 390 blocks on 2 CPUs.
BLOCK_BUDGET_BYTES = 64 << 20
#: At most this many blocks whatever the budget: the drain reads every block in use.
MAX_BLOCKS_CAP = 1024
BLOCK_NRS = 512  # entries of a block (BLOCK_NRS in syscount.h)
BLOCK_TALLY = BLOCK_NRS - 1  # the entry counting the block's writes; numbers below it

_CAP_SYS_ADMIN, _CAP_PERFMON, _CAP_BPF = 21, 38, 39
_TRACEFS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


# ctypes mirrors of bpf/syscount.h; tests/privileged/test_layout.py checks them
# against the layout BCC compiled.
class PidState(ct.Structure):
    _fields_ = [("start_ns", ct.c_uint64), ("gen", ct.c_uint32), ("nr", ct.c_uint16),
                ("tracked", ct.c_uint16), ("block", ct.c_uint32), ("_pad", ct.c_uint32)]


class StatsKey(ct.Structure):
    _fields_ = [("tgid", ct.c_uint32), ("nr", ct.c_uint32), ("gen", ct.c_uint32)]


class StatsVal(ct.Structure):
    _fields_ = [
        ("calls", ct.c_uint64),
        ("errors", ct.c_uint64),
        ("total_ns", ct.c_uint64),
        ("max_ns", ct.c_uint64),
        ("hist", ct.c_uint32 * HIST_BUCKETS),
        ("alloc_bytes", ct.c_uint64),
    ]


_NR_MASK_WORDS = 8


class LimitRule(ct.Structure):
    _fields_ = [("max", ct.c_uint64), ("count", ct.c_uint64), ("tripped_ns", ct.c_uint64),
                ("mask", ct.c_uint64 * _NR_MASK_WORDS)]


class Limit(ct.Structure):
    _fields_ = [("rule", LimitRule * LIMIT_RULES), ("nrules", ct.c_uint32), ("sig", ct.c_uint32),
                ("tripped_ns", ct.c_uint64), ("signals", ct.c_uint64)]


class Event(ct.Structure):
    _fields_ = [
        ("type", ct.c_uint32),
        ("pid", ct.c_uint32),
        ("ppid", ct.c_uint32),
        ("exit_code", ct.c_int32),
        ("uid", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("gen", ct.c_uint32),
        ("_pad", ct.c_uint32),
        ("cgroup_id", ct.c_uint64),
        ("ts_ns", ct.c_uint64),
        ("comm", ct.c_char * 16),
        ("filename", ct.c_char * 256),
    ]


_EV_DATA_LEN, _EV_DATA_ARGS, _NR_DECODE = 256, 2, 512


class EvFilter(ct.Structure):
    _fields_ = [("enabled", ct.c_uint32), ("gen", ct.c_uint32),
                ("mask", ct.c_uint64 * _NR_MASK_WORDS), ("lost", ct.c_uint64)]


class EvDecode(ct.Structure):
    _fields_ = [("kind", ct.c_uint8 * _EV_DATA_ARGS), ("idx", ct.c_uint8 * _EV_DATA_ARGS),
                ("len_src", ct.c_uint8 * _EV_DATA_ARGS), ("len_idx", ct.c_uint8 * _EV_DATA_ARGS)]


class EvInflight(ct.Structure):
    _fields_ = [("args", ct.c_uint64 * 6), ("slot", ct.c_uint32), ("nr", ct.c_uint32)]


class SysEvent(ct.Structure):
    _fields_ = [("start_ns", ct.c_uint64), ("end_ns", ct.c_uint64), ("pid", ct.c_uint32),
                ("tid", ct.c_uint32), ("nr", ct.c_uint32), ("slot", ct.c_uint32),
                ("ret", ct.c_int64), ("args", ct.c_uint64 * 6), ("flags", ct.c_uint32),
                ("len", ct.c_uint16 * _EV_DATA_ARGS), ("kind", ct.c_uint8 * _EV_DATA_ARGS),
                ("idx", ct.c_uint8 * _EV_DATA_ARGS), ("_pad", ct.c_uint32)]

# enum len_src
_LEN_MAX, _LEN_ARG, _LEN_RET, _LEN_PTR = 0, 1, 2, 3


def _decode_entry(reads: tuple[ArgRead, ...]) -> EvDecode:
    d = EvDecode()
    for i, r in enumerate(reads[:_EV_DATA_ARGS]):
        d.kind[i], d.idx[i] = int(r.kind), r.index
        if r.len_index >= 0:
            d.len_src[i], d.len_idx[i] = _LEN_ARG, r.len_index
        elif r.kind == ArgKind.BUFFER and r.at_exit:
            d.len_src[i] = _LEN_RET
        elif r.kind == ArgKind.SOCKADDR and r.at_exit:
            # accept/accept4/getsockname/getpeername/recvfrom: the socklen_t * follows
            # the address argument.
            d.len_src[i], d.len_idx[i] = _LEN_PTR, r.index + 1
        else:
            d.len_src[i] = _LEN_MAX
    return d


class RingReader:
    """Reads a BPF ring buffer map through its mmap'd pages, many records per call.

    BCC's reader calls back into Python once per record; at hundreds of thousands of
    records a second that call is the cost, so the pages are read here directly: the
    consumer position page (read-write), then the producer position page and the data
    pages, mapped twice in a row by the kernel so a record that wraps is contiguous.
    A record is an 8-byte header (length with BUSY and DISCARD bits, page offset) and
    its sample, padded to 8 bytes. A record still BUSY (reserved, not yet submitted)
    stops the read there; it is read next time.

    The positions are read and written as single aligned 8-byte accesses (ctypes on
    libc's mmap): struct moves them a byte at a time, so a producer position read while
    the kernel updates it can come out torn (too high: stale records past it are "read"
    and the consumer position written back runs ahead of the producer's), and the
    kernel, seeing the ring full, drops records that would have fit. It showed once the
    positions had wrapped (tests/privileged/test_events.py, 2^24).

    Memory order: the kernel publishes with release semantics; Python issues no
    barriers. Every sample is copied out before the new consumer position is stored, and
    loads of a record follow the load of its header through several calls; x86_64 keeps
    loads in order, and on arm64 the window is far shorter than that (known gap).
    """

    _BUSY, _DISCARD = 1 << 31, 1 << 30

    def __init__(self, map_fd: int, data_pages: int) -> None:
        page = mmap.PAGESIZE
        self.fd = map_fd
        self.size = data_pages * page
        self._mask = self.size - 1
        libc = ct.CDLL(None, use_errno=True)
        libc.mmap.restype = ct.c_void_p
        libc.mmap.argtypes = [ct.c_void_p, ct.c_size_t, ct.c_int, ct.c_int, ct.c_int,
                              ct.c_long]
        libc.munmap.argtypes = [ct.c_void_p, ct.c_size_t]
        self._munmap = libc.munmap
        self._maps: list[tuple[int, int]] = []
        cons = self._map(libc, page, mmap.PROT_READ | mmap.PROT_WRITE, 0)
        prod = self._map(libc, page + 2 * self.size, mmap.PROT_READ, page)
        self._cons_pos = ct.c_uint64.from_address(cons)
        self._prod_pos = ct.c_uint64.from_address(prod)
        # Data after the producer page, readable as a buffer (slices are copies).
        self._data = (ct.c_char * (2 * self.size)).from_address(prod + page)
        self._u32 = struct.Struct("<I")

    def _map(self, libc: Any, length: int, prot: int, offset: int) -> int:
        addr = libc.mmap(None, length, prot, mmap.MAP_SHARED, self.fd, offset)
        if addr in (None, ct.c_void_p(-1).value):
            err = ct.get_errno()
            self.close()
            raise OSError(err, f"mmap of the event ring buffer: {os.strerror(err)}")
        self._maps.append((addr, length))
        return int(addr)

    def read(self, limit: int = 1 << 20) -> list[bytes]:
        """Up to ``limit`` submitted samples, oldest first; frees their space."""
        cons = self._cons_pos.value
        prod = self._prod_pos.value
        out: list[bytes] = []
        data, mask = self._data, self._mask
        unpack = self._u32.unpack_from
        busy, discard = self._BUSY, self._DISCARD
        while cons < prod and len(out) < limit:
            off = cons & mask
            hdr = unpack(data, off)[0]
            if hdr & busy:
                break
            length = hdr & ~(busy | discard)
            if not hdr & discard:
                # A c_char array's slice is a bytes copy (typeshed says a list).
                out.append(cast(bytes, data[off + 8:off + 8 + length]))
            cons += (length + 8 + 7) & ~7
        self._cons_pos.value = cons
        return out

    def pending(self) -> bool:
        """Records not read yet (some possibly still being written)."""
        return bool(self._cons_pos.value < self._prod_pos.value)

    def close(self) -> None:
        for addr, length in self._maps:
            self._munmap(addr, length)
        self._maps = []


class CommKey(ct.Structure):
    _fields_ = [("comm", ct.c_char * 16)]


class PathKey(ct.Structure):
    _fields_ = [("path", ct.c_char * 256)]


_EVF_RULE_MATCHED = 1

#: Map name -> (key struct, value struct) as declared in syscount.bpf.c.
MAP_LAYOUTS: dict[str, tuple[type[ct.Structure] | None, type[ct.Structure] | None]] = {
    "pids": (None, PidState),
    "stats": (StatsKey, StatsVal),
    "blocks": (None, StatsVal),
    "limits": (None, Limit),
    "ev_filters": (None, EvFilter),
    "ev_decode": (None, EvDecode),
    "ev_inflight": (None, EvInflight),
    "layout_sys_event": (None, SysEvent),
    "rule_comm": (CommKey, None),
    "rule_path": (PathKey, None),
}

#: Exec-rule kinds and the map each lives in.
RULE_MAPS = {"comm": b"rule_comm", "path": b"rule_path", "cgroup": b"rule_cgroup"}


@dataclass(frozen=True)
class Limits:
    """Sizes the BPF maps are built with (the -D cflags)."""

    pid_max: int
    max_stats: int = 65536
    ringbuf_pages: int = 64
    max_rules: int = 1024
    max_limits: int = 64  #: session slots: sessions with a kill budget or events, at once
    ev_ringbuf_pages: int = 2048  #: per-syscall event ring buffer (8 MiB of 4 KiB pages)
    #: counter blocks (MAX_BLOCKS in syscount.h); None: as many as BLOCK_BUDGET_BYTES
    #: holds on this machine's CPUs, at most MAX_BLOCKS_CAP
    max_blocks: int | None = None

    @classmethod
    def for_this_kernel(cls, **overrides: int) -> Limits:
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
        return cls(pid_max=overrides.pop("pid_max", pid_max), **overrides)


def bpf_source_dir() -> Path:
    """Where syscount.bpf.c lives: the source tree, or the installed data files."""
    for cand in (
        Path(__file__).resolve().parent.parent / "bpf",
        Path(sys.prefix) / "share" / "tracerd" / "bpf",
    ):
        if (cand / "syscount.bpf.c").is_file():
            return cand
    raise TracerdError("bpf/syscount.bpf.c not found: is tracerd installed completely?")


def _effective_caps() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_privilege() -> None:
    caps = _effective_caps()
    if caps & (1 << _CAP_SYS_ADMIN):
        return
    if caps & (1 << _CAP_BPF) and caps & (1 << _CAP_PERFMON):
        return
    raise NoPrivilege(
        "loading BPF needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN): run as root, e.g. with sudo"
    )


def check_headers() -> None:
    if os.environ.get("BCC_KERNEL_SOURCE") or Path("/sys/kernel/kheaders.tar.xz").exists():
        return
    build = Path("/lib/modules") / os.uname().release / "build"
    try:
        found = (build / "include").is_dir()
    except OSError as e:  # e.g. hidden by a sandbox (systemd ProtectKernelModules=yes)
        raise HeadersMissing(f"kernel headers at {build}: cannot read them: {e.strerror}; a "
                             "service must be allowed to read /lib/modules and /usr/src") from None
    if not found:
        raise HeadersMissing(
            f"no kernel headers at {build}: run 'make setup' (links the installed "
            "linux-headers tree) or install linux-headers-$(uname -r)"
        )


def ensure_tracefs() -> None:
    """BCC reads tracepoint formats from tracefs; mount it if nobody did."""
    def mounted() -> bool:
        with contextlib.suppress(OSError):
            return any((p / "events").is_dir() for p in _TRACEFS)
        return False

    if mounted():
        return
    # No shell: the command is fixed, its output dropped.
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(_TRACEFS[0])], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
    if not mounted():
        raise BpfUnusable("tracefs is not mounted: mount -t tracefs nodev /sys/kernel/tracing")


def _import_bcc() -> Any:
    try:
        import bcc  # noqa: PLC0415 - the one place bcc is imported, lazily for clear errors
    except ImportError as e:
        raise BccMissing(
            f"BCC's Python module cannot be imported ({e}): install the OS package "
            "python3-bpfcc (apt-get install python3-bpfcc), not the unrelated PyPI 'bcc'"
        ) from None
    return bcc


@dataclass(frozen=True)
class LimitState:
    """What an in-kernel limit saw: per rule the calls entered (after tripping too) and
    when it went over; when the limit first tripped, and the signals sent."""

    counts: tuple[int, ...]
    rule_tripped_ns: tuple[int, ...]
    tripped_ns: int
    signals: int


def _to_stats(v: StatsVal) -> SyscallStats:
    return SyscallStats(calls=v.calls, errors=v.errors, total_ns=v.total_ns, max_ns=v.max_ns,
                        hist=list(v.hist), alloc_bytes=v.alloc_bytes)


def _tracepoint_has_field(system: str, event: str, field: str) -> bool:
    """Whether a tracepoint's format (tracefs) declares ``field``: they change across
    kernels, and BCC fails to compile a program that reads a field that is not there."""
    for root in _TRACEFS:
        with contextlib.suppress(OSError):
            text = (root / "events" / system / event / "format").read_text()
            return any(line.split(";")[0].split()[-1:] == [field]
                       for line in text.splitlines() if line.strip().startswith("field:"))
    return False


def _offset(struct: str, member: str) -> int:
    try:
        return _btf.member_offset(struct, member)
    except _btf.BTFError:
        return -1  # the measure that needs it is then off (documented in syscount.h)


_POSSIBLE_CPUS = Path("/sys/devices/system/cpu/possible")


def _possible_cpu_ids() -> list[int]:
    """The kernel's possible CPU ids, e.g. "0-1,4-7" -> [0, 1, 4, 5, 6, 7]."""
    try:
        text = _POSSIBLE_CPUS.read_text().strip()
    except OSError:
        return list(range(os.cpu_count() or 1))
    ids: list[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        ids += range(int(lo), int(hi or lo) + 1)
    return ids


def _possible_cpus() -> int:
    """CPUs per-CPU maps are sized for (possible, not just online)."""
    return len(_possible_cpu_ids())


def _cpu_slots() -> int:
    """Highest possible CPU id + 1: the per-CPU copies of the counter blocks are indexed
    by CPU id, and ids can have holes ("0-1,4-7" needs 8 copies, not 6)."""
    return max(_possible_cpu_ids()) + 1


def _thread_status_offset() -> int:
    """x86_64: where thread_info.status (TS_COMPAT) is in task_struct; -1 elsewhere or
    when BTF does not say (compat tasks then go undetected)."""
    if os.uname().machine != "x86_64":
        return -1
    ti, status = _offset("task_struct", "thread_info"), _offset("thread_info", "status")
    return ti + status if ti >= 0 and status >= 0 else -1


def _special_syscalls() -> list[str]:
    """-D numbers of the syscalls the kernel side treats apart, on this arch: memory
    requests (mmap, brk, mremap), calls that never return (exit, exit_group), and exec."""
    from .syscalls import table_for  # noqa: PLC0415 - only when loading

    table = table_for()
    out = []
    for name in ("mmap", "brk", "mremap", "exit", "exit_group", "execve", "execveat"):
        nr = table.number(name)
        out.append(f"-DNR_{name.upper()}={-1 if nr is None else nr}")
    return out


def _sum_cpus(values: Iterable[StatsVal]) -> SyscallStats:
    out = SyscallStats()
    for v in values:
        out.add(_to_stats(v))
    # Modulo 2^64, as the kernel's counters: count-only moves an execve to its new
    # generation with a decrement that can wrap one CPU's value below zero.
    out.calls &= _U64
    return out


def _sum_gens(by_gen: dict[tuple[int, int, int], SyscallStats]
              ) -> dict[tuple[int, int], SyscallStats]:
    out: dict[tuple[int, int], SyscallStats] = {}
    for (tgid, _gen, nr), st in by_gen.items():
        out.setdefault((tgid, nr), SyscallStats()).add(st)
    return out


_VAL_WORDS = ct.sizeof(StatsVal) // 8
_CALLS_WORD = StatsVal.calls.offset // 8
_ALLOC_WORD = StatsVal.alloc_bytes.offset // 8
_TALLY_WORD = BLOCK_TALLY * _VAL_WORDS + _CALLS_WORD  # in a block's copy for one CPU
#: bytes between two CPUs' copies of one value of a per-CPU map, as the kernel copies
#: them out (each rounded up to 8)
_PER_CPU_STRIDE = (ct.sizeof(StatsVal) + 7) & ~7
StatsKeyT = tuple[int, int, int]  # (tgid, gen, nr)


def _merge(into: dict[StatsKeyT, SyscallStats], more: dict[StatsKeyT, SyscallStats]) -> None:
    for key, st in more.items():
        if key in into:
            into[key].add(st)
            into[key].calls &= _U64  # modulo 2^64, as in _sum_cpus
        else:
            into[key] = st


class _Blocks:
    """User space's side of the counter blocks (MAX_BLOCKS in syscount.h): both arrays
    mapped into this process, the free list, and the final counts of blocks retired
    when their generation ended with an exec (kept until the process is deleted).

    Thread-safe: the drain polls events (and retires blocks) outside the hub's lock while
    a request may be tracking a process or reading the counters under it.

    ``live_block(tgid)``: the block the kernel counts that process in now (0: none, or
    not tracked). Such a block is never freed: it belongs to a process that is not the
    one being deleted (a new process with a reused pid, a stray tracked again by an exec
    rule) or to a generation user space has not seen start (track() racing an exec).
    """

    def __init__(self, bpf: Any, count: int, cpu_slots: int,
                 live_block: Callable[[int], int]) -> None:
        self.count, self.cpu_slots = count, cpu_slots
        self._live_block = live_block
        self._queue = bpf[b"free_blocks"]
        self._span = BLOCK_NRS * _VAL_WORDS  # u64 words of one block on one CPU
        self._vals_mm = self._map(bpf[b"blocks"], count * BLOCK_NRS * cpu_slots
                                  * ct.sizeof(StatsVal))
        self._owners_mm = self._map(bpf[b"block_owner"], (count + 1) * 8)
        self._vals = memoryview(self._vals_mm).cast("Q")
        self._owners = memoryview(self._owners_mm).cast("Q")
        self._zero = bytes(self._span * 8)
        self._retired: dict[StatsKeyT, SyscallStats] = {}
        #: block -> (owner, tallies, counts, settled) of its last decode. The kernel bumps
        #: a block's tally (BLOCK_TALLY, per CPU) before every write to it, so a decode may
        #: catch a write half done: the first pass that finds the tallies unchanged
        #: decodes once more (the writer has long finished) and marks it settled; from
        #: then on, until a tally moves, an idle process costs one read per CPU and no
        #: decode. Final reads (retire, delete) never use it.
        self._cache: dict[int, tuple[int, list[int], dict[int, SyscallStats], bool]] = {}
        self._closed = False
        self._lock = threading.Lock()
        for b in range(1, count + 1):
            self._queue.push(ct.c_uint32(b))

    @staticmethod
    def _map(table: Any, length: int) -> mmap.mmap:
        return mmap.mmap(table.map_fd, length, mmap.MAP_SHARED,
                         mmap.PROT_READ | mmap.PROT_WRITE)

    def close(self) -> None:
        with self._lock:  # not while the drain thread is reading
            self._closed = True
            self._vals.release()
            self._owners.release()
            self._vals_mm.close()
            self._owners_mm.close()

    def free_count(self) -> int:
        """Blocks on the free list (tests): those not owned."""
        with self._lock:
            return self.count - len(self._owned())

    def take(self, tgid: int, gen: int) -> int:
        """A block for (tgid, gen), or 0 when none is free."""
        with self._lock:
            if self._closed:
                return 0
            try:
                b = int(self._queue.pop().value)
            except KeyError:
                return 0
            self._owners[b] = gen << 32 | tgid
            return b

    def _owned(self) -> dict[int, tuple[int, int]]:
        if self._closed:
            return {}
        return {b: (o & 0xFFFFFFFF, o >> 32)
                for b, o in enumerate(self._owners.tolist()) if b and o}

    def holders(self) -> set[int]:
        """Processes holding a block, counted or not: the sweep frees those nobody tracks."""
        with self._lock:
            return {tgid for tgid, _gen in self._owned().values()}

    def _start(self, cpu: int, b: int) -> int:
        """The u64 word where CPU cpu's copy of block b starts ([cpu][block - 1][nr])."""
        return (cpu * self.count + b - 1) * self._span

    def _read(self, b: int) -> dict[int, SyscallStats]:
        """nr -> counts of block b, summed over CPUs. The caller owns what it gets."""
        owner = self._owners[b]
        tallies = [self._vals[self._start(cpu, b) + _TALLY_WORD]
                   for cpu in range(self.cpu_slots)]
        hit = self._cache.get(b)
        if hit is None or hit[0] != owner or hit[1] != tallies:
            hit = self._cache[b] = (owner, tallies, self._decode(b), False)
        elif not hit[3]:
            hit = self._cache[b] = (owner, tallies, self._decode(b), True)
        return {nr: st.copy() for nr, st in hit[2].items()}

    def _decode(self, b: int) -> dict[int, SyscallStats]:
        """Block b's counts as they are now (skipping CPUs and numbers at zero: a strided
        read of the calls and bytes columns says which)."""
        out: dict[int, SyscallStats] = {}
        for cpu in range(self.cpu_slots):
            start = self._start(cpu, b)
            end = start + BLOCK_TALLY * _VAL_WORDS
            calls = self._vals[start + _CALLS_WORD:end:_VAL_WORDS].tolist()
            alloc = self._vals[start + _ALLOC_WORD:end:_VAL_WORDS].tolist()
            if not any(calls) and not any(alloc):
                continue
            for nr, (c, a) in enumerate(zip(calls, alloc, strict=True)):
                if c or a:
                    v = StatsVal.from_buffer_copy(self._vals_mm, (start + nr * _VAL_WORDS) * 8)
                    if nr in out:
                        out[nr].add(_to_stats(v))
                    else:
                        out[nr] = _to_stats(v)
        for st in out.values():
            st.calls &= _U64  # modulo 2^64, as in _sum_cpus
        return out

    def _free(self, b: int) -> None:
        """Zero block b on every CPU and put it back on the free list. Only for a block
        no program can write any more (its process gone, untracked, or exec'd since).

        Known race: a program of a process untracked a moment ago that passed its
        tracked test before untrack() can still add one call after the block is freed,
        which the block's next owner would then count. The daemon frees the blocks of
        processes it untracked at a later drain pass (milliseconds or more later, far
        beyond one program's run); `tracerd run` frees them only as it ends.
        """
        for cpu in range(self.cpu_slots):
            start = self._start(cpu, b) * 8
            self._vals_mm[start:start + len(self._zero)] = self._zero
        self._owners[b] = 0
        self._cache.pop(b, None)
        self._queue.push(ct.c_uint32(b))  # a syscall: the zeroes are visible before

    def _drain(self, b: int, tgid: int, gen: int) -> dict[StatsKeyT, SyscallStats]:
        """The final counts of block b (decoded afresh), and the block freed; nothing
        when the kernel still counts a live process in it (see live_block)."""
        if self._live_block(tgid) == b:
            return {}
        final = {(tgid, gen, nr): st for nr, st in self._decode(b).items()}
        self._free(b)
        return final

    def read_all(self) -> dict[StatsKeyT, SyscallStats]:
        with self._lock:
            out = {key: st.copy() for key, st in self._retired.items()}
            for b, (tgid, gen) in self._owned().items():
                _merge(out, {(tgid, gen, nr): st for nr, st in self._read(b).items()})
            return out

    def retire(self, execs: dict[int, int]) -> None:
        """tgid -> the generation its latest EV_EXEC started: the blocks of its earlier
        generations are final (the record is read after everything its program wrote)
        and go back to the free list, their counts kept here."""
        with self._lock:
            for b, (tgid, gen) in self._owned().items():
                if gen < execs.get(tgid, 0):
                    _merge(self._retired, self._drain(b, tgid, gen))

    def delete(self, tgids: set[int]) -> dict[StatsKeyT, SyscallStats]:
        """The final counts of these processes' blocks (and retired ones), freed."""
        with self._lock:
            out = {key: self._retired.pop(key) for key in
                   [k for k in self._retired if k[0] in tgids]}
            for b, (tgid, gen) in self._owned().items():
                if tgid in tgids:
                    _merge(out, self._drain(b, tgid, gen))
            return out


class Probe:
    """The loaded and attached BPF programs; use as a context manager."""

    def __init__(self, limits: Limits | None = None, *,
                 exit_has_group_dead: bool | None = None, count_only: bool = False) -> None:
        self.limits = limits or Limits.for_this_kernel()
        #: calls only, counted at sys_enter, nothing on sys_exit (see COUNT_ONLY in
        #: syscount.h): no errors, times or per-syscall events
        self.count_only = count_only
        #: sched_process_exit's group_dead field is used when the kernel has it (None:
        #: look in tracefs at open); False forces the fallback older kernels need
        self.exit_has_group_dead = exit_has_group_dead
        self._bpf: Any = None
        self._events: list[LifecycleEvent] = []
        self._ncpus = 0
        self.exit_code_offset = -1
        self._batch_bufs: tuple[Any, Any] | None = None
        #: (tgid, gen, nr) -> (raw per-CPU values, their sum) of the last read of the
        #: stats hash: an entry whose bytes did not change is not decoded again (the
        #: decode is a pure function of the bytes, so a torn copy is never reused for
        #: anything but the same bytes)
        self._hash_memo: dict[StatsKeyT, tuple[bytes, SyscallStats]] = {}
        self._sys_ring: RingReader | None = None
        self._decode: dict[int, tuple[ArgRead, ...]] = {}
        self._slot_gen: dict[int, int] = {}
        self._blocks: _Blocks | None = None

    # -- lifecycle -----------------------------------------------------------------
    def open(self) -> Probe:
        bcc = _import_bcc()
        check_privilege()
        check_headers()
        ensure_tracefs()
        src = bpf_source_dir()
        if self.exit_has_group_dead is None:
            self.exit_has_group_dead = _tracepoint_has_field(
                "sched", "sched_process_exit", "group_dead")
        # Unknown: descendants' exit codes are then reported as unknown.
        exit_off = self.exit_code_offset = _offset("task_struct", "exit_code")
        nblocks, cpu_slots = self.block_count(), _cpu_slots()
        cflags = [
            f"-I{src}",
            f"-DPID_MAX={self.limits.pid_max}",
            f"-DMAX_STATS={self.limits.max_stats}",
            f"-DSTATS_MAP_FLAGS={0 if self.stats_prealloc() else 1}",  # 1: BPF_F_NO_PREALLOC
            f"-DRINGBUF_PAGES={self.limits.ringbuf_pages}",
            f"-DMAX_RULES={self.limits.max_rules}",
            f"-DMAX_LIMITS={self.limits.max_limits}",
            f"-DTASK_EXIT_CODE_OFF={exit_off}",
            f"-DTASK_MM_OFF={_offset('task_struct', 'mm')}",
            f"-DEXIT_HAS_GROUP_DEAD={int(self.exit_has_group_dead)}",
            f"-DTASK_SIGNAL_OFF={_offset('task_struct', 'signal')}",
            f"-DSIGNAL_LIVE_OFF={_offset('signal_struct', 'live')}",
            f"-DMM_BRK_OFF={_offset('mm_struct', 'brk')}",
            f"-DTASK_TI_STATUS_OFF={_thread_status_offset()}",
            f"-DEV_RINGBUF_PAGES={self.limits.ev_ringbuf_pages}",
            f"-DCOUNT_ONLY={int(self.count_only)}",
            f"-DMAX_BLOCKS={nblocks}",
            f"-DCPU_SLOTS={cpu_slots}",
            *_special_syscalls(),
            "-w",  # header-version warnings would land in the user's terminal
        ]
        try:
            self._bpf = bcc.BPF(src_file=str(src / "syscount.bpf.c").encode(), cflags=cflags)
        except Exception as e:  # BCC raises bare Exception for compile/load/attach
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BpfUnusable(f"cannot load the BPF programs: {first}") from None
        self._ncpus = _possible_cpus()  # as the map was sized in stats_prealloc
        self._bpf[b"events"].open_ring_buffer(self._on_event)
        try:
            if nblocks:
                self._blocks = _Blocks(self._bpf, nblocks, cpu_slots, self._live_block)
            from . import _strace  # noqa: PLC0415 - the signature tables, only when loading
            from .syscalls import table_for  # noqa: PLC0415

            self.set_decode(_strace.kernel_reads(table_for()))
        except Exception:
            self.close()
            raise
        return self

    def stats_prealloc(self) -> bool:
        """Preallocate the stats map when it fits STATS_PREALLOC_BYTES (see STATS_MAP_FLAGS
        in syscount.h: allocating at insert time loses counts in bursts of new processes).
        Above the budget (many CPUs, a large max_stats) entries are allocated as needed."""
        ncpus = _possible_cpus()
        per_entry = _PER_CPU_STRIDE * ncpus + ct.sizeof(StatsKey) + 64
        return self.limits.max_stats * per_entry <= STATS_PREALLOC_BYTES

    def block_count(self) -> int:
        """Counter blocks to build (MAX_BLOCKS): Limits.max_blocks, or as many as
        BLOCK_BUDGET_BYTES holds on this machine's CPU slots (at most MAX_BLOCKS_CAP)."""
        slots = _cpu_slots()
        if self.limits.max_blocks is None:
            per_block = ct.sizeof(StatsVal) * BLOCK_NRS * slots
            return min(MAX_BLOCKS_CAP, BLOCK_BUDGET_BYTES // per_block)
        # The array's entries are a u32 (and BLOCK_ENTRIES a C int): the bound is hard.
        most = ((1 << 31) - 1) // (BLOCK_NRS * slots)
        if not 0 <= self.limits.max_blocks <= most:
            raise TracerdError(f"max_blocks {self.limits.max_blocks}: 0 to {most} on "
                               f"{slots} CPU slots", EXIT_USAGE)
        return self.limits.max_blocks

    def _live_block(self, tgid: int) -> int:
        if not 0 < tgid < self.limits.pid_max:
            return 0
        st = self._bpf[b"pids"][ct.c_int(tgid)]
        return int(st.block) if st.tracked else 0

    def block_holders(self) -> set[int]:
        """Processes holding a counter block: with counts or not (see Hub._sweep)."""
        return self._blocks.holders() if self._blocks is not None else set()

    def free_blocks(self) -> int:
        """Counter blocks nobody holds (0 without blocks)."""
        return self._blocks.free_count() if self._blocks is not None else 0

    def close(self) -> None:
        try:
            if self._blocks is not None:  # first: a drain still running then reads nothing
                self._blocks.close()
        finally:
            if self._sys_ring is not None:
                self._sys_ring.close()
                self._sys_ring = None
            if self._bpf is not None:
                self._bpf.cleanup()
                self._bpf = None

    def __enter__(self) -> Probe:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prog_stats(self) -> dict[str, tuple[int, int]] | None:
        """Run time (ns) and run count of each loaded program, from its fd's fdinfo; None
        unless kernel.bpf_stats_enabled=1 (the kernel keeps them only then: the
        accounting itself costs two clock reads per run)."""
        try:
            if Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip() != "1":
                return None
        except OSError:
            return None
        out: dict[str, tuple[int, int]] = {}
        for name, fn in list(self._bpf.funcs.items()) if self._bpf is not None else []:
            info: dict[str, int] = {}
            with contextlib.suppress(OSError, ValueError):
                for line in Path(f"/proc/self/fdinfo/{fn.fd}").read_text().splitlines():
                    key, _, value = line.partition(":")
                    if key in ("run_time_ns", "run_cnt"):
                        info[key] = int(value)
            if info:
                label = name.decode() if isinstance(name, bytes) else str(name)
                out[label] = (info.get("run_time_ns", 0), info.get("run_cnt", 0))
        return out

    def table(self, name: str) -> Any:
        """The raw BCC table (tests and the layout check only)."""
        return self._bpf[name.encode()]

    # -- tracking ------------------------------------------------------------------
    def track(self, pid: int) -> None:
        """Count every syscall of process ``pid`` (and of processes it forks from now on)."""
        if not 0 < pid < self.limits.pid_max:
            raise TracerdError(f"pid {pid} is outside 1..{self.limits.pid_max - 1}")
        pids = self._bpf[b"pids"]
        cur = pids[ct.c_int(pid)]
        if cur.tracked:
            return  # already counted: leave the kernel's fields alone
        # Keeps the exec generation: counters already under it stay consistent. A block
        # of its own (one it held before, if untracked since, is still read: both add up).
        block = self._blocks.take(pid, cur.gen) if self._blocks is not None else 0
        pids[ct.c_int(pid)] = PidState(0, cur.gen, 0, 1, block, 0)

    def untrack(self, pid: int) -> None:
        # Known race: a thread of ``pid`` inside a syscall keeps its entry time until
        # that thread exits; only a later re-track of the same process could see it.
        if 0 < pid < self.limits.pid_max:
            pids = self._bpf[b"pids"]
            # The generation is kept: counters under it may still be in the map, and a
            # later exec-rule match must start a generation none of them carries. Its
            # block stays its own (still read) until its counters are deleted.
            pids[ct.c_int(pid)] = PidState(0, pids[ct.c_int(pid)].gen, 0, 0, 0, 0)
            self._bpf[b"limit_of"][ct.c_int(pid)] = ct.c_uint32(0)

    def is_tracked(self, pid: int) -> bool:
        return bool(self._bpf[b"pids"][ct.c_int(pid)].tracked)

    # -- in-kernel limits ------------------------------------------------------------
    def set_limit(self, slot: int, rules: list[tuple[int, frozenset[int]]], sig: int) -> None:
        """Arm limits[slot]: each rule is (max calls, syscall numbers) counted together."""
        if not 0 <= slot < self.limits.max_limits or not 0 <= len(rules) <= LIMIT_RULES:
            raise TracerdError(f"limit slot {slot} with {len(rules)} rules is out of range")
        lim = Limit()
        for i, (most, nrs) in enumerate(rules):
            lim.rule[i].max = most
            for nr in nrs:
                if 0 <= nr < 64 * _NR_MASK_WORDS:
                    lim.rule[i].mask[nr // 64] |= 1 << (nr % 64)
        lim.nrules, lim.sig = len(rules), sig
        self._bpf[b"limits"][ct.c_int(slot)] = lim

    def read_limit(self, slot: int) -> LimitState:
        lim = self._bpf[b"limits"][ct.c_int(slot)]
        rules = [lim.rule[i] for i in range(min(lim.nrules, LIMIT_RULES))]
        return LimitState(counts=tuple(r.count for r in rules),
                          rule_tripped_ns=tuple(r.tripped_ns for r in rules),
                          tripped_ns=lim.tripped_ns, signals=lim.signals)

    def clear_limit(self, slot: int) -> None:
        self._bpf[b"limits"][ct.c_int(slot)] = Limit()

    # -- per-syscall events ------------------------------------------------------------
    def set_events(self, slot: int, syscalls: frozenset[int] | None) -> int:
        """Processes under ``slot`` send an event per syscall in ``syscalls`` (None: all).

        Returns the slot's new generation: records carry it (``slot | gen << 16``,
        tracerd._records.slot_of), so a call entered under the slot's previous session and
        returning now is dropped in the kernel rather than handed to this one. Resets
        the slot's lost counter.
        """
        if not 0 <= slot < self.limits.max_limits:
            raise TracerdError(f"session slot {slot} is out of range")
        if self.count_only:
            raise TracerdError("per-syscall events need sys_exit: not in count-only mode")
        gen = self._slot_gen[slot] = (self._slot_gen.get(slot, 0) + 1) & 0xFFFF
        f = EvFilter()
        f.enabled, f.gen = 1, gen
        for w in range(_NR_MASK_WORDS):
            f.mask[w] = (1 << 64) - 1 if syscalls is None else 0
        for nr in syscalls or ():
            if 0 <= nr < 64 * _NR_MASK_WORDS:
                f.mask[nr // 64] |= 1 << (nr % 64)
        self._bpf[b"ev_filters"][ct.c_int(slot)] = f
        return gen

    def clear_events(self, slot: int) -> None:
        # The generation stays: calls still in flight under it are dropped at exit.
        f = EvFilter()
        f.gen = self._slot_gen.get(slot, 0)
        self._bpf[b"ev_filters"][ct.c_int(slot)] = f

    def events_lost(self, slot: int) -> int:
        """Events of processes under ``slot`` the kernel could not record (ring full)."""
        return int(self._bpf[b"ev_filters"][ct.c_int(slot)].lost)

    def set_decode(self, plan: dict[int, tuple[ArgRead, ...]]) -> None:
        """Which argument memory to copy into events, per syscall number."""
        table = self._bpf[b"ev_decode"]
        self._decode = {nr: reads[:_EV_DATA_ARGS] for nr, reads in plan.items()
                        if 0 <= nr < _NR_DECODE and reads}
        for nr, reads in self._decode.items():
            table[ct.c_int(nr)] = _decode_entry(reads)

    def sys_events_pending(self) -> bool:
        return self._ring().pending()

    def sys_events_fd(self) -> int:
        """Readable (poll/select) when syscall events are waiting."""
        return self._ring().fd

    def _ring(self) -> RingReader:
        if self._sys_ring is None:
            fd = self._bpf[b"sys_events"].map_fd
            self._sys_ring = RingReader(fd, self.limits.ev_ringbuf_pages)
        return self._sys_ring

    def read_sys_records(self, limit: int = 1 << 20) -> list[bytes]:
        """Raw syscall event records waiting in the ring, oldest first (tracerd._records)."""
        return self._ring().read(limit)

    def limit_process(self, pid: int, slot: int | None) -> bool:
        """Put a tracked process under limits[slot] (None: under none); False if it is
        not tracked. Its later forks inherit the slot in the kernel.

        Known race: a process that exits between the tracked check and the write keeps
        a slot in limit_of; harmless, since task_newtask sets it again for whoever
        reuses the pid.
        """
        if not 0 < pid < self.limits.pid_max or not self.is_tracked(pid):
            return False
        self._bpf[b"limit_of"][ct.c_int(pid)] = ct.c_uint32(0 if slot is None else slot + 1)
        return True

    def limit_slot(self, pid: int) -> int | None:
        """The limit a tracked process is under, if any."""
        if not 0 < pid < self.limits.pid_max or not self.is_tracked(pid):
            return None
        code = int(self._bpf[b"limit_of"][ct.c_int(pid)].value)
        return code - 1 if code else None

    # -- exec rules --------------------------------------------------------------------
    def _rule_key(self, kind: str, value: str | int) -> tuple[Any, Any]:
        table = self._bpf[RULE_MAPS[kind]]
        if kind == "cgroup":
            return table, ct.c_uint64(int(value))
        raw = str(value).encode()
        if kind == "comm":
            return table, CommKey(raw[:15])
        return table, PathKey(raw[:255])

    def add_rule(self, kind: str, value: str | int, slot: int | None = None) -> None:
        """Track every process whose exec matches: comm, execve path, or cgroup id;
        with ``slot``, under that in-kernel limit from its first call."""
        table, key = self._rule_key(kind, value)
        try:
            table[key] = ct.c_uint32(0 if slot is None else slot + 1)  # limit_of's encoding
        except Exception as e:  # BCC raises bare Exception when the map is full
            raise TracerdError(f"exec rule map '{kind}' is full ({e})") from None

    def remove_rule(self, kind: str, value: str | int) -> None:
        table, key = self._rule_key(kind, value)
        with contextlib.suppress(KeyError):
            del table[key]

    # -- reading ---------------------------------------------------------------------
    def _on_event(self, _ctx: Any, data: Any, _size: int) -> None:
        e = ct.cast(data, ct.POINTER(Event)).contents
        self._events.append(
            LifecycleEvent(
                type=e.type,
                pid=e.pid,
                ppid=e.ppid,
                exit_code=None if e.exit_code < 0 else e.exit_code,
                ts_ns=e.ts_ns,
                comm=e.comm.decode(errors="replace"),
                filename=e.filename.decode(errors="replace"),
                uid=e.uid,
                cgroup_id=e.cgroup_id,
                rule_matched=bool(e.flags & _EVF_RULE_MATCHED),
                gen=e.gen,
            )
        )

    def poll_events(self, timeout_ms: int) -> list[LifecycleEvent]:
        """Wait up to ``timeout_ms`` for lifecycle events and return those that arrived."""
        self._bpf.ring_buffer_poll(timeout_ms)
        out, self._events = self._events, []
        if self._blocks is not None:
            execs: dict[int, int] = {}
            for ev in out:
                if ev.type == EV_EXEC:
                    execs[ev.pid] = max(ev.gen, execs.get(ev.pid, 0))
            if execs:
                self._blocks.retire(execs)
        return out

    def read_stats(self) -> dict[tuple[int, int], SyscallStats]:
        """Cumulative (tgid, nr) -> stats, summed over CPUs and exec generations, without
        changing the map.

        Counters only grow while a process lives, so reading without clearing loses
        nothing; entries are removed only once their process is gone (delete_stats).
        """
        return _sum_gens(self.read_stats_by_gen())

    def read_stats_by_gen(self) -> dict[tuple[int, int, int], SyscallStats]:
        """Cumulative (tgid, gen, nr) -> stats: per exec generation (see syscount.h)."""
        memo: dict[StatsKeyT, tuple[bytes, SyscallStats]] = {}
        out: dict[StatsKeyT, SyscallStats] = {}
        for key, raw in self._lookup_batch():
            hit = self._hash_memo.get(key)
            if hit is None or hit[0] != raw:
                hit = (raw, self._decode_raw(raw))
            memo[key] = hit
            out[key] = hit[1].copy()
        self._hash_memo = memo
        if self._blocks is not None:
            _merge(out, self._blocks.read_all())
        # All zero: a count-only execve moved to its new generation (nothing to report).
        return {k: v for k, v in out.items() if v.calls or v.alloc_bytes}

    def delete_stats(self, tgids: Iterable[int]) -> dict[tuple[int, int], SyscallStats]:
        """Read and remove the entries of processes that have exited, summed over gens."""
        return _sum_gens(self.delete_stats_by_gen(tgids))

    def delete_stats_by_gen(self, tgids: Iterable[int]
                            ) -> dict[tuple[int, int, int], SyscallStats]:
        """Read and remove the entries of processes that have exited.

        Deleting is only safe once no thread of the tgid can make a syscall, which the
        EV_EXIT event (emitted at group death) guarantees: no update can race the delete.
        """
        wanted = set(tgids)
        if not wanted:
            return {}
        table = self._bpf[b"stats"]
        final: dict[tuple[int, int, int], SyscallStats] = {}
        for key, raw in self._lookup_batch():
            tgid, gen, nr = key
            if tgid in wanted:
                final[key] = self._decode_raw(raw)
                self._hash_memo.pop(key, None)
                with contextlib.suppress(KeyError):  # already gone: nothing to lose
                    del table[StatsKey(tgid, nr, gen)]
        if self._blocks is not None:
            _merge(final, self._blocks.delete(wanted))
        return final

    def _decode_raw(self, raw: bytes) -> SyscallStats:
        """One stats entry's per-CPU values (as _lookup_batch copies them), summed."""
        return _sum_cpus(StatsVal.from_buffer_copy(raw, c * _PER_CPU_STRIDE)
                         for c in range(self._ncpus))

    def _lookup_batch(self) -> list[tuple[StatsKeyT, bytes]]:
        """BPF_MAP_LOOKUP_BATCH over the per-CPU stats map: (tgid, gen, nr) and the raw
        values of every entry, one aligned copy per possible CPU.

        BCC's own batch helper sizes values as one CPU's, which overruns for per-CPU
        maps; here each value slot holds one aligned copy per possible CPU.
        """
        bcc = _import_bcc()
        table = self._bpf[b"stats"]
        chunk = 4096
        stride = _PER_CPU_STRIDE * self._ncpus
        if self._batch_bufs is None:  # reused: ~chunk x CPUs x 160 bytes
            self._batch_bufs = ((StatsKey * chunk)(), (ct.c_uint8 * (stride * chunk))())
        keys, vals = self._batch_bufs
        raw = memoryview(vals).cast("B")
        token = ct.c_uint32(0)
        out: list[tuple[StatsKeyT, bytes]] = []
        first = True
        while True:
            count = ct.c_uint32(chunk)
            rc = bcc.libbcc.lib.bpf_lookup_batch(
                table.map_fd,
                None if first else ct.byref(token),
                ct.byref(token),
                ct.cast(keys, ct.c_void_p),
                ct.cast(vals, ct.c_void_p),
                ct.byref(count),
            )
            err = ct.get_errno()
            first = False
            for i in range(count.value):
                k = keys[i]
                out.append(((k.tgid, k.gen, k.nr), raw[i * stride:(i + 1) * stride].tobytes()))
            if rc != 0:
                if err == errno.ENOENT:
                    return out
                raise BpfUnusable(f"reading the stats map failed: {os.strerror(err)}")

    def drops(self) -> Drops:
        per_cpu = self._bpf[b"counters"]
        vals = [sum(per_cpu[ct.c_int(i)]) for i in range(4)]
        return Drops(stats_full=vals[_C_STATS_FULL], events_lost=vals[_C_EVENTS_LOST],
                     pid_out_of_range=vals[_C_PID_RANGE],
                     syscall_events_lost=vals[_C_SYS_EVENTS_LOST])
