"""The kernel's event records: decoding, the packed stream form, and their bounds."""

from __future__ import annotations

import pytest

from tracerd import _records
from tracerd.model import ArgData, ArgKind, SyscallEvent

OPENAT = SyscallEvent(start_ns=10, end_ns=25, pid=7, tid=8, nr=257, ret=-2,
                      args=(2**64 - 100, 0x7FFD0000, 0x80000, 0, 0, 0),
                      data=(ArgData(index=1, kind=ArgKind.PATH, value=b"/etc/passwd"),))
EXIT = SyscallEvent(start_ns=30, end_ns=30, pid=7, tid=7, nr=231, ret=None, args=(0,) * 6)
WRITE = SyscallEvent(start_ns=40, end_ns=41, pid=7, tid=8, nr=1, ret=300, args=(1, 2, 300, 0, 0, 0),
                     data=(ArgData(index=1, kind=ArgKind.BUFFER, value=b"x" * 256,
                                   truncated=True),))


@pytest.mark.parametrize("ev", [OPENAT, EXIT, WRITE], ids=["path", "no-return", "cut"])
def test_records_round_trip(ev: SyscallEvent) -> None:
    rec = _records.encode(ev, slot=3 | 9 << 16)
    assert len(rec) == _records.HEADER.size + (2 * _records.DATA_LEN if ev.data else 0)
    assert _records.decode(rec) == ev
    assert _records.slot_of(rec) == 3 | 9 << 16
    assert _records.ids_of(rec) == (ev.pid, ev.tid, ev.nr)


def test_header_is_the_kernel_struct_size() -> None:
    assert _records.HEADER.size == 104  # struct sys_event; the layout test checks the C side


def test_packed_form() -> None:
    recs = [_records.encode(e) for e in (OPENAT, EXIT, WRITE)]
    blob = _records.pack(recs)
    assert _records.count(blob) == 3
    assert list(_records.unpack(blob)) == recs
    with pytest.raises(ValueError, match="truncated record"):
        list(_records.unpack(blob[:-1]))
    with pytest.raises(ValueError, match="truncated length"):
        list(_records.unpack(blob + b"\x01"))
    assert _records.count(b"") == 0
