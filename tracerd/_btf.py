"""Read struct member offsets from the running kernel's BTF (/sys/kernel/btf/vmlinux).

BCC compiles against the installed header tree, which on this kind of machine belongs to
another kernel version, so ``task->field`` would be read at the wrong offset. The BTF of
the running kernel is the truth; the offsets found here are passed to the BPF program as
-D cflags. Only the few kinds needed to walk struct members are interpreted; the others
are skipped by their documented sizes (Documentation/bpf/btf.rst).
"""

from __future__ import annotations

import struct
from pathlib import Path

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

_MAGIC = 0xEB9F
_KIND_STRUCT, _KIND_UNION = 4, 5
# Bytes that follow the 12-byte btf_type header, per kind: (fixed, per vlen item).
_EXTRA: dict[int, tuple[int, int]] = {
    1: (4, 0),  # INT
    3: (12, 0),  # ARRAY
    4: (0, 12),  # STRUCT
    5: (0, 12),  # UNION
    6: (0, 8),  # ENUM
    13: (0, 8),  # FUNC_PROTO
    14: (4, 0),  # VAR
    15: (0, 12),  # DATASEC
    17: (4, 0),  # DECL_TAG
    19: (0, 12),  # ENUM64
}
_TYPEDEF_LIKE = {8, 9, 10, 11, 18}  # TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG


class BTFError(Exception):
    """The BTF blob is missing, malformed, or lacks the requested member."""


class _Types:
    def __init__(self, blob: bytes) -> None:
        if len(blob) < 24:
            raise BTFError("BTF blob too short")
        magic, _ver, _flags, hdr_len = struct.unpack_from("<HBBI", blob, 0)
        if magic != _MAGIC:
            raise BTFError("not a little-endian BTF blob")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", blob, 8)
        base = hdr_len
        self._blob = blob
        self._strs = blob[base + str_off : base + str_off + str_len]
        # Offset of every type record, so type ids (1-based) index it directly.
        self._pos: list[int] = [0]
        p, end = base + type_off, base + type_off + type_len
        while p < end:
            self._pos.append(p)
            _name, info, _size = struct.unpack_from("<III", blob, p)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            fixed, per = _EXTRA.get(kind, (0, 0))
            p += 12 + fixed + per * vlen

    def _name(self, off: int) -> str:
        end = self._strs.index(b"\0", off)
        return self._strs[off:end].decode()

    def _header(self, tid: int) -> tuple[str, int, int, bool, int]:
        name_off, info, size = struct.unpack_from("<III", self._blob, self._pos[tid])
        return self._name(name_off), (info >> 24) & 0x1F, info & 0xFFFF, bool(info >> 31), size

    def find_struct(self, name: str) -> int:
        for tid in range(1, len(self._pos)):
            tname, kind, vlen, _kf, _size = self._header(tid)
            if kind == _KIND_STRUCT and tname == name and vlen:
                return tid
        raise BTFError(f"struct {name} not in BTF")

    def member_offset(self, tid: int, member: str) -> int | None:
        """Byte offset of ``member`` in struct/union ``tid``, looking into anonymous members."""
        _n, _kind, vlen, kflag, _size = self._header(tid)
        p = self._pos[tid] + 12
        for i in range(vlen):
            m_name_off, m_type, m_off = struct.unpack_from("<III", self._blob, p + 12 * i)
            bits = m_off & 0xFFFFFF if kflag else m_off
            m_name = self._name(m_name_off)
            if m_name == member:
                return int(bits) // 8
            if not m_name:
                inner = self._resolve(m_type)
                if inner is not None:
                    found = self.member_offset(inner, member)
                    if found is not None:
                        return int(bits) // 8 + found
        return None

    def _resolve(self, tid: int) -> int | None:
        """Follow typedefs and qualifiers to a struct or union id."""
        while tid:
            _n, kind, _vlen, _kf, size = self._header(tid)
            if kind in (_KIND_STRUCT, _KIND_UNION):
                return tid
            if kind not in _TYPEDEF_LIKE:
                return None
            tid = size
        return None


def member_offset(struct_name: str, member: str, path: Path = VMLINUX_BTF) -> int:
    """Byte offset of ``struct_name.member`` in the kernel described by ``path``."""
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise BTFError(f"cannot read {path}: {e.strerror}") from e
    types = _Types(blob)
    off = types.member_offset(types.find_struct(struct_name), member)
    if off is None:
        raise BTFError(f"struct {struct_name} has no member {member}")
    return off
