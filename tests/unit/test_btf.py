"""The BTF reader against the running kernel's own BTF and against bad input."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tracerd import _btf


@pytest.mark.skipif(not _btf.VMLINUX_BTF.exists(), reason="kernel without BTF")
def test_offsets_of_the_running_kernel() -> None:
    # Facts of every kernel: pid and tgid are adjacent pid_t members of task_struct.
    pid = _btf.member_offset("task_struct", "pid")
    assert _btf.member_offset("task_struct", "tgid") == pid + 4
    assert _btf.member_offset("list_head", "next") == 0
    assert _btf.member_offset("list_head", "prev") == 8
    with pytest.raises(_btf.BTFError, match="no member"):
        _btf.member_offset("task_struct", "no_such_member")
    with pytest.raises(_btf.BTFError, match="not in BTF"):
        _btf.member_offset("no_such_struct_xyz", "x")


def test_bad_blobs_are_rejected(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(_btf.BTFError, match="cannot read"):
        _btf.member_offset("task_struct", "pid", missing)
    bad = tmp_path / "bad"
    bad.write_bytes(struct.pack("<HBBI", 0x1234, 1, 0, 24) + bytes(16))
    with pytest.raises(_btf.BTFError, match="not a little-endian BTF"):
        _btf.member_offset("task_struct", "pid", bad)
