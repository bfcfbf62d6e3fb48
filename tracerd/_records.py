"""The kernel's syscall event records (struct sys_event in bpf/syscount.h), as bytes.

Pure: no bcc, no grpc. The daemon moves events as these records from the ring buffer to
a stream without building an object per event (that, not the kernel, is what limits the
event rate), and whoever wants SyscallEvent objects decodes them here: the daemon for a
stream that asks for messages, the client for a packed stream, ``tracerd run`` locally.

A record is self-describing: the header says which argument each copied datum belongs to
and what it is, so decoding needs no table. Little-endian, as on both supported arches.

Packed form (``EventBatch.records``): records back to back, each preceded by its length
as a little-endian u16 (the header alone, or header and data).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from .model import ArgData, ArgKind, SyscallEvent

#: struct sys_event: start_ns end_ns pid tid nr slot ret args[6] flags len[2] kind[2] idx[2]
HEADER = struct.Struct("<QQIIIIq6QIHHBBBBI")
DATA_LEN = 256  #: EV_DATA_LEN: bytes per copied argument
SLOT = struct.Struct("<I")
SLOT_OFFSET = 28  #: offsetof(struct sys_event, slot)
IDS = struct.Struct("<III")  #: pid, tid, nr
IDS_OFFSET = 16

# Bits of sys_event.flags (SEF_* in syscount.h).
NO_RETURN, TRUNC0, TRUNC1, EXEC_PATH, DATA0, DATA1 = 1, 2, 4, 8, 16, 32

_LEN = struct.Struct("<H")
_KINDS = {int(k): k for k in ArgKind}


def slot_of(record: bytes) -> int:
    """The record's ``slot | generation << 16``."""
    return int(SLOT.unpack_from(record, SLOT_OFFSET)[0])


def ids_of(record: bytes) -> tuple[int, int, int]:
    """(pid, tid, nr) of a record, for filtering without decoding."""
    pid, tid, nr = IDS.unpack_from(record, IDS_OFFSET)
    return int(pid), int(tid), int(nr)


def decode(record: bytes) -> SyscallEvent:
    (start, end, pid, tid, nr, _slot, ret, a0, a1, a2, a3, a4, a5, flags, len0, len1,
     kind0, kind1, idx0, idx1, _pad) = HEADER.unpack_from(record)
    data: tuple[ArgData, ...] = ()
    if len(record) > HEADER.size and flags & (DATA0 | DATA1):
        items = []
        at = HEADER.size
        for n, kind, idx, ok, trunc in ((len0, kind0, idx0, flags & DATA0, flags & TRUNC0),
                                        (len1, kind1, idx1, flags & DATA1, flags & TRUNC1)):
            if ok and kind in _KINDS:
                items.append(ArgData(index=idx, kind=_KINDS[kind],
                                     value=record[at:at + min(n, DATA_LEN)],
                                     truncated=bool(trunc)))
            at += DATA_LEN
        data = tuple(items)
    return SyscallEvent(start_ns=start, end_ns=end, pid=pid, tid=tid, nr=nr,
                        ret=None if flags & NO_RETURN else ret,
                        args=(a0, a1, a2, a3, a4, a5), data=data)


def encode(ev: SyscallEvent, slot: int = 0) -> bytes:
    """The record the kernel would write for ``ev`` (tests, and the inverse of decode)."""
    flags = NO_RETURN if ev.ret is None else 0
    lens, kinds, idxs = [0, 0], [0, 0], [0, 0]
    body = b""
    if ev.data:
        parts = []
        for i, d in enumerate(ev.data[:2]):
            flags |= (DATA0, DATA1)[i] | ((TRUNC0, TRUNC1)[i] if d.truncated else 0)
            lens[i], kinds[i], idxs[i] = len(d.value), int(d.kind), d.index
            parts.append(d.value[:DATA_LEN].ljust(DATA_LEN, b"\0"))
        body = b"".join(parts).ljust(2 * DATA_LEN, b"\0")
    args = (list(ev.args) + [0] * 6)[:6]
    return HEADER.pack(ev.start_ns, ev.end_ns, ev.pid, ev.tid, ev.nr, slot,
                       0 if ev.ret is None else ev.ret, *args, flags, lens[0], lens[1],
                       kinds[0], kinds[1], idxs[0], idxs[1], 0) + body


def pack(records: Iterable[bytes]) -> bytes:
    return b"".join(_LEN.pack(len(r)) + r for r in records)


def unpack(blob: bytes) -> Iterator[bytes]:
    """The records of a packed blob; ValueError if it is cut short."""
    view = memoryview(blob)
    pos, end = 0, len(blob)
    while pos < end:
        if pos + 2 > end:
            raise ValueError("packed event records: truncated length")
        (n,) = _LEN.unpack_from(blob, pos)
        pos += 2
        if pos + n > end or n < HEADER.size:
            raise ValueError("packed event records: truncated record")
        yield bytes(view[pos:pos + n])
        pos += n


def count(blob: bytes) -> int:
    """Records in a packed blob, without copying them."""
    n = pos = 0
    end = len(blob)
    while pos < end:
        pos += 2 + _LEN.unpack_from(blob, pos)[0]
        n += 1
    return n
