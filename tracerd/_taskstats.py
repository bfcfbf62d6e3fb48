"""Exit records of every task on the host, from the kernel's taskstats netlink family.

Why taskstats: the peak RSS of a process that has already exited is nowhere else to be
had. Its /proc entry (VmHWM) is gone once it is reaped, and wait4(2)'s ``ru_maxrss`` only
covers our own children (and, for RUSAGE_CHILDREN, only the largest of them). The kernel
fills one ``struct taskstats`` per exiting thread in do_exit(), in taskstats_exit(), which
runs before exit_mm(): ``hiwater_rss`` is still read from the task's mm.

How: resolve the generic netlink family "TASKSTATS" (pyroute2 does the lookup), then
send TASKSTATS_CMD_GET with TASKSTATS_CMD_ATTR_REGISTER_CPUMASK for every possible CPU
(/sys/devices/system/cpu/possible) from the socket the records are to arrive on: the
kernel unicasts each exit record to the port ids registered on the CPU the task exits
on. Needs CAP_NET_ADMIN (the command is GENL_ADMIN_PERM) and the initial user and pid
namespaces (the kernel refuses listeners anywhere else).

Decoding is done here with ``struct``, not with pyroute2's taskstats classes: the kernel
only ever appends fields to struct taskstats (include/uapi/linux/taskstats.h bumps
``version`` per append), so the few fields read here sit at fixed offsets in every
version, whereas pyroute2 0.9.7's ``tstats_v15`` layout has fields inserted in the
middle (the short-lived v15 layout of Linux 6.16, fixed by appending them in v16) and
decodes everything else with ``tstats_vB``. Walking the attributes by hand also keeps
the per-exit cost low, which matters for a listener that sees every exit on the host.

Known limits:

* Cost: the listener receives a message (about 1.2 KiB) for every thread exit on the
  host, not just the traced ones, and the kernel builds it for every exit while any
  listener is registered. Filter by tgid on our side; drain often.
* Threads: every exiting thread gets its own record, and the mm is shared by the
  thread group, so the ``hiwater_rss`` of a non-leader thread is the process's peak at
  that moment, not the thread's own: take the maximum over a tgid's records.
* Approximate: ``hiwater_rss`` is max(mm->hiwater_rss, get_mm_rss()), and get_mm_rss()
  reads the per-CPU RSS counters without summing them, so it can trail the exact
  figure by up to max(32, 2 * CPUs) pages per online CPU per counter (anon, file,
  shmem), whereas /proc/PID/status sums them exactly on recent kernels (seen: an exit
  record 120 KiB below the VmHWM read just before, 2 CPUs). Keep the maximum of the
  last polled VmHWM and the exit record.
* Kernel threads have no mm: their ``hiwater_rss`` is 0.
* Overruns: when the socket's receive queue is full the kernel drops records and
  reports it once as ENOBUFS on the next recv(2), without saying how many were lost;
  :attr:`ExitListener.lost` counts such reports, not records.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

FAMILY = "TASKSTATS"  # TASKSTATS_GENL_NAME

# include/uapi/linux/taskstats.h
_TASKSTATS_GENL_VERSION = 1
_CMD_GET = 1  # TASKSTATS_CMD_GET
_CMD_NEW = 2  # TASKSTATS_CMD_NEW: kernel -> user event
_CMD_ATTR_REGISTER_CPUMASK = 3
_CMD_ATTR_DEREGISTER_CPUMASK = 4
_TYPE_PID = 1
_TYPE_STATS = 3
_TYPE_AGGR_PID = 4  # nested: TASKSTATS_TYPE_PID + TASKSTATS_TYPE_STATS, one per thread
_TYPE_AGGR_TGID = 5  # nested: TGID + STATS of a group exit (not used: no hiwater_rss)

# Offsets in struct taskstats. Fields are only ever appended, so these hold for every
# version that has them; checked against the header (v13) and the BTF of Linux 6.18
# (v16). ac_tgid arrived with version 12.
_OFF_VERSION = 0  # __u16
_OFF_EXITCODE = 4  # __u32 ac_exitcode
_OFF_COMM, _COMM_LEN = 80, 32  # char ac_comm[TS_COMM_LEN]
_OFF_PID = 128  # __u32 ac_pid
_OFF_UTIME = 152  # __u64 ac_utime, microseconds
_OFF_STIME = 160  # __u64 ac_stime, microseconds
_OFF_HIWATER_RSS = 200  # __u64 hiwater_rss, KiB
_MIN_STATS_LEN = _OFF_HIWATER_RSS + 8
_OFF_TGID, _TGID_VERSION = 368, 12  # __u32 ac_tgid
_U16, _U32, _U64 = struct.Struct("=H"), struct.Struct("=I"), struct.Struct("=Q")

# include/uapi/linux/netlink.h
_NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_GENL_HDR = struct.Struct("=BBH")  # cmd, version, reserved
_NLA_HDR = struct.Struct("=HH")  # len, type
_NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
_NLMSG_ERROR = 2
_NLM_F_REQUEST, _NLM_F_ACK = 0x1, 0x4
_NETLINK_GENERIC = 16

_SO_RCVBUFFORCE = 33  # include/uapi/asm-generic/socket.h (x86_64 and arm64)
RCVBUF_BYTES = 4 << 20
_RECV_SIZE = 1 << 16  # one record is ~1.2 KiB; a datagram never nears this
_DRAIN_LIMIT = 1 << 16  # datagrams per drain(); the fd stays readable if more wait
_ACK_TIMEOUT = 5.0
POSSIBLE_CPUS = Path("/sys/devices/system/cpu/possible")


class TaskstatsUnavailable(Exception):
    """The taskstats exit records cannot be received here; the message says why."""


@dataclass(frozen=True)
class TaskExit:
    """One exiting thread, as the kernel saw it in do_exit()."""

    pid: int  #: thread id the record is about
    tgid: int  #: its process (thread group); from ac_tgid (v12+), else ``pid``
    comm: str  #: the thread's comm at exit
    hiwater_rss_bytes: int  #: peak RSS of the (shared) mm at exit; 0 for kernel threads
    utime_us: int  #: user CPU time of this thread
    stime_us: int  #: system CPU time of this thread
    exit_code: int  #: ac_exitcode: task->exit_code, wait(2)-status encoded (exit 3 -> 0x300)


def _attrs(buf: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """(type, payload start, payload end) of the netlink attributes in buf[start:end]."""
    out: list[tuple[int, int, int]] = []
    while start + _NLA_HDR.size <= end:
        length, kind = _NLA_HDR.unpack_from(buf, start)
        if length < _NLA_HDR.size or start + length > end:
            break
        out.append((kind & _NLA_TYPE_MASK, start + _NLA_HDR.size, start + length))
        start += (length + 3) & ~3
    return out


def decode_stats(buf: bytes, pid: int | None = None) -> TaskExit | None:
    """A TaskExit from the bytes of one struct taskstats; None if too short to hold
    ``hiwater_rss``. ``pid`` (from TASKSTATS_TYPE_PID) overrides ac_pid, the same
    number in the initial pid namespace."""
    if len(buf) < _MIN_STATS_LEN:
        return None
    (version,) = _U16.unpack_from(buf, _OFF_VERSION)
    if pid is None:
        (pid,) = _U32.unpack_from(buf, _OFF_PID)
    tgid = pid
    if version >= _TGID_VERSION and len(buf) >= _OFF_TGID + 4:
        (tgid,) = _U32.unpack_from(buf, _OFF_TGID)
    comm = buf[_OFF_COMM : _OFF_COMM + _COMM_LEN].split(b"\0", 1)[0]
    return TaskExit(
        pid=pid,
        tgid=tgid,
        comm=comm.decode(errors="replace"),
        hiwater_rss_bytes=_U64.unpack_from(buf, _OFF_HIWATER_RSS)[0] * 1024,
        utime_us=_U64.unpack_from(buf, _OFF_UTIME)[0],
        stime_us=_U64.unpack_from(buf, _OFF_STIME)[0],
        exit_code=_U32.unpack_from(buf, _OFF_EXITCODE)[0],
    )


def stats_version(buf: bytes) -> int | None:
    """The ``version`` of a struct taskstats, None if there are not even two bytes."""
    return _U16.unpack_from(buf, 0)[0] if len(buf) >= 2 else None


def _family_id() -> int:
    """The dynamic generic netlink id of TASKSTATS, looked up with pyroute2."""
    try:
        from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415
        from pyroute2.netlink.generic import GenericNetlinkSocket  # noqa: PLC0415
        from pyroute2.netlink.taskstats import taskstatsmsg  # noqa: PLC0415
    except ImportError as e:
        raise TaskstatsUnavailable(f"pyroute2 is not importable: {e}") from e
    try:
        sock = GenericNetlinkSocket()
    except OSError as e:
        raise TaskstatsUnavailable(f"cannot open a generic netlink socket: {e.strerror}") from e
    try:
        sock.bind(FAMILY, taskstatsmsg)
        return int(sock.prid)
    except NetlinkError as e:
        if e.code == errno.ENOENT:
            raise TaskstatsUnavailable(
                "the kernel has no TASKSTATS netlink family (CONFIG_TASKSTATS off)") from e
        raise TaskstatsUnavailable(f"TASKSTATS family lookup failed: {e}") from e
    except OSError as e:
        raise TaskstatsUnavailable(f"TASKSTATS family lookup failed: {e.strerror}") from e
    finally:
        sock.close()


def _possible_cpus() -> str:
    try:
        mask = POSSIBLE_CPUS.read_text().strip()
    except OSError as e:
        raise TaskstatsUnavailable(f"cannot read {POSSIBLE_CPUS}: {e.strerror}") from e
    if not mask:
        raise TaskstatsUnavailable(f"{POSSIBLE_CPUS} is empty")
    return mask


class ExitListener:
    """Receives every task exit on the host from the kernel's taskstats netlink family.

    Poll :meth:`fileno` for readability and call :meth:`drain`, often: records queue in
    the socket's receive buffer (``rcvbuf`` bytes asked for, 4 MiB by default; the
    kernel grants twice that, :attr:`rcvbuf`, and each record takes about 2.3 KiB of it:
    some 3600 records) and overflow into :attr:`lost` when it is full. Raises
    TaskstatsUnavailable with a one-line reason.

    ``lost``: ENOBUFS reports from the socket, each meaning the kernel dropped one or
    more records (it does not say how many): nonzero means some exits are missing.
    ``malformed``: records skipped because they could not be decoded (truncated).
    """

    def __init__(self, rcvbuf: int = RCVBUF_BYTES) -> None:
        self.lost = 0
        self.malformed = 0
        self.rcvbuf = 0  #: receive buffer the kernel granted (its doubled figure)
        self.version: int | None = None  #: struct taskstats version last seen
        self._pending: list[TaskExit] = []
        self._family = _family_id()
        self._mask = _possible_cpus()
        self._seq = 0
        try:
            self._sock: socket.socket | None = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_GENERIC)
        except OSError as e:
            raise TaskstatsUnavailable(f"cannot open a generic netlink socket: {e.strerror}") from e
        try:
            self._set_rcvbuf(rcvbuf)
            self._sock.bind((0, 0))
            self._register()
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            self._sock = None
            raise

    # -- set-up ------------------------------------------------------------------

    def _set_rcvbuf(self, size: int) -> None:
        assert self._sock is not None
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
        except OSError:  # not CAP_NET_ADMIN: capped by net.core.rmem_max
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        self.rcvbuf = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def _send_mask(self, attr: int, ack: bool) -> int:
        assert self._sock is not None
        self._seq += 1
        mask = self._mask.encode() + b"\0"
        nla_len = _NLA_HDR.size + len(mask)
        payload = (_GENL_HDR.pack(_CMD_GET, _TASKSTATS_GENL_VERSION, 0)
                   + _NLA_HDR.pack(nla_len, attr) + mask + b"\0" * (-nla_len % 4))
        flags = _NLM_F_REQUEST | (_NLM_F_ACK if ack else 0)
        header = _NLMSG_HDR.pack(_NLMSG_HDR.size + len(payload), self._family, flags,
                                 self._seq, 0)
        self._sock.sendto(header + payload, (0, 0))
        return self._seq

    def _register(self) -> None:
        """Register for every possible CPU and wait for the kernel's answer; records
        that arrive before it are kept for the first drain()."""
        assert self._sock is not None
        try:
            seq = self._send_mask(_CMD_ATTR_REGISTER_CPUMASK, ack=True)
        except OSError as e:
            raise TaskstatsUnavailable(f"cannot register a taskstats listener: {e.strerror}") from e
        self._sock.settimeout(_ACK_TIMEOUT)
        while True:
            try:
                data = self._sock.recv(_RECV_SIZE)
            except TimeoutError as e:
                raise TaskstatsUnavailable("no answer from the kernel to the taskstats "
                                           "listener registration") from e
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.lost += 1
                    continue
                raise TaskstatsUnavailable(
                    f"cannot register a taskstats listener: {e.strerror}") from e
            code = self._parse(data, self._pending, ack_seq=seq)
            if code is None:
                continue
            if code == 0:
                return
            raise TaskstatsUnavailable(f"the kernel refused the taskstats listener: "
                                       f"{_refusal(code)}")

    # -- receiving ---------------------------------------------------------------

    def _parse(self, data: bytes, out: list[TaskExit], ack_seq: int = -1) -> int | None:
        """Append the per-thread exit records of one datagram to ``out``; returns the
        errno (0: success) of an NLMSG_ERROR answering ``ack_seq``, if there is one."""
        answer: int | None = None
        pos, end = 0, len(data)
        while pos + _NLMSG_HDR.size <= end:
            length, kind, _flags, seq, _port = _NLMSG_HDR.unpack_from(data, pos)
            if length < _NLMSG_HDR.size or pos + length > end:
                self.malformed += 1
                break
            body, stop = pos + _NLMSG_HDR.size, pos + length
            pos += (length + 3) & ~3
            if kind == _NLMSG_ERROR:
                if seq == ack_seq and stop - body >= 4:
                    answer = -struct.unpack_from("=i", data, body)[0]
                continue
            if kind != self._family or stop - body < _GENL_HDR.size:
                continue
            if data[body] != _CMD_NEW:
                continue
            for typ, start, finish in _attrs(data, body + _GENL_HDR.size, stop):
                if typ == _TYPE_AGGR_PID:
                    self._aggr_pid(data, start, finish, out)
        return answer

    def _aggr_pid(self, data: bytes, start: int, end: int, out: list[TaskExit]) -> None:
        pid: int | None = None
        stats: bytes | None = None
        for typ, a, b in _attrs(data, start, end):
            if typ == _TYPE_PID and b - a >= 4:
                (pid,) = _U32.unpack_from(data, a)
            elif typ == _TYPE_STATS:
                stats = data[a:b]
        record = decode_stats(stats, pid) if stats is not None else None
        if record is None:
            self.malformed += 1
            return
        self.version = stats_version(stats) if stats is not None else None
        out.append(record)

    def fileno(self) -> int:
        if self._sock is None:
            raise ValueError("ExitListener is closed")
        return self._sock.fileno()

    def drain(self, wait_s: float = 0.0) -> list[TaskExit]:
        """Every record queued now (up to 65536 datagrams); with ``wait_s``, when none is,
        first waits that long for one."""
        if self._sock is None:
            raise ValueError("ExitListener is closed")
        out, self._pending = self._pending, []
        if wait_s > 0 and not out:
            select.select([self._sock], [], [], wait_s)
        for _ in range(_DRAIN_LIMIT):
            try:
                data = self._sock.recv(_RECV_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                self.lost += 1  # the kernel dropped records; it does not say how many
                continue
            self._parse(data, out)
        return out

    def close(self) -> None:
        """Deregister and close; idempotent. (The kernel would also drop a listener
        whose socket is gone, but only when it next fails to send to it.)"""
        if self._sock is None:
            return
        try:
            with contextlib.suppress(OSError):
                self._send_mask(_CMD_ATTR_DEREGISTER_CPUMASK, ack=False)
        finally:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> ExitListener:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _refusal(code: int) -> str:
    if code == errno.EPERM:
        return "not permitted (needs CAP_NET_ADMIN in the initial user namespace)"
    if code == errno.EINVAL:
        return ("invalid argument (listeners are only allowed in the initial user and pid "
                f"namespaces; or the CPU mask {_possible_cpus()!r} was refused)")
    return os.strerror(code)
