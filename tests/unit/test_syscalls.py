"""tracerd.syscalls: generated tables, strace-style classes, filter resolution, generator."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tracerd import syscalls
from tracerd.syscalls import (
    ARCHES,
    CLASSES,
    UnknownSyscall,
    UnsupportedArch,
    current_arch,
    resolve,
    table_for,
)

ROOT = Path(__file__).resolve().parents[2]
GEN = ROOT / "tools" / "gen_syscalls.py"


def _fake_uname(machine: str) -> os.uname_result:
    return os.uname_result(("Linux", "host", "6.18.0", "#1", machine))


# --- tables --------------------------------------------------------------------------------

X86_64_FACTS = {
    0: "read",
    1: "write",
    2: "open",
    39: "getpid",
    56: "clone",
    59: "execve",
    60: "exit",
    231: "exit_group",
    257: "openat",
    262: "newfstatat",
    435: "clone3",
}
AARCH64_FACTS = {
    # ABI "renameat", "rlimit", "memfd_secret" rows: selected by arm64's Makefile.syscalls.
    38: "renameat",
    56: "openat",
    63: "read",
    64: "write",
    79: "newfstatat",
    80: "fstat",
    93: "exit",
    94: "exit_group",
    163: "getrlimit",
    172: "getpid",
    220: "clone",
    221: "execve",
    222: "mmap",
    435: "clone3",
    447: "memfd_secret",
}


@pytest.mark.parametrize(
    ("arch", "facts"), [("x86_64", X86_64_FACTS), ("aarch64", AARCH64_FACTS)]
)
def test_known_numbers(arch: str, facts: dict[int, str]) -> None:
    table = table_for(arch)
    for nr, name in facts.items():
        assert table.name(nr) == name
        assert table.number(name) == nr


@pytest.mark.parametrize("name", ["open", "stat", "lstat", "fork", "vfork", "access", "pipe"])
def test_aarch64_lacks_legacy_calls(name: str) -> None:
    assert table_for("aarch64").number(name) is None
    assert table_for("x86_64").number(name) is not None


def test_aarch64_takes_only_64bit_rows_of_the_generic_table() -> None:
    table = table_for("aarch64")
    # "32", "time32" and "stat64" rows, and other arches' private slots, are not aarch64's.
    for name in ("fcntl64", "mmap2", "fstatat64", "clock_gettime64", "riscv_hwprobe"):
        assert table.number(name) is None
    assert table.number("fcntl") == 25
    assert table.name(244) == "syscall_244"


def test_x86_64_excludes_x32() -> None:
    table = table_for("x86_64")
    assert table.max_nr() < 512
    assert table.name(512) == "syscall_512"  # x32 rt_sigaction
    assert table.number("rt_sigaction") == 13


@pytest.mark.parametrize("arch", ARCHES)
def test_unknown_numbers_and_names(arch: str) -> None:
    table = table_for(arch)
    assert table.name(99999) == "syscall_99999"
    assert table.name(-1) == "syscall_-1"
    assert table.number("no_such_syscall") is None
    assert table.number("syscall_0") is None


@pytest.mark.parametrize("arch", ARCHES)
def test_table_shape(arch: str) -> None:
    table = table_for(arch)
    nrs = table.numbers()
    assert nrs == sorted(set(nrs))
    assert table.max_nr() == nrs[-1]
    assert table.arch == arch
    names = [table.name(nr) for nr in nrs]
    assert len(set(names)) == len(names)
    assert all(table.number(n) == nr for n, nr in zip(names, nrs, strict=True))
    nrs.append(-5)  # a copy: callers cannot corrupt the table
    assert -5 not in table.numbers()


def test_table_for_is_cached_and_accepts_aliases() -> None:
    assert table_for("x86_64") is table_for("x86_64")
    assert table_for("amd64") is table_for("x86_64")
    assert table_for("arm64") is table_for("aarch64")


def test_table_for_unknown_arch() -> None:
    with pytest.raises(UnsupportedArch, match=r"^unsupported architecture 'sparc64'"):
        table_for("sparc64")


# --- current arch --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("machine", "arch"),
    [("x86_64", "x86_64"), ("amd64", "x86_64"), ("aarch64", "aarch64"), ("arm64", "aarch64")],
)
def test_current_arch(monkeypatch: pytest.MonkeyPatch, machine: str, arch: str) -> None:
    monkeypatch.setattr(os, "uname", lambda: _fake_uname(machine))
    assert current_arch() == arch
    assert table_for().arch == arch
    assert resolve(["read"]) == {table_for(arch).number("read")}


@pytest.mark.parametrize("machine", ["riscv64", "i686", "armv7l", ""])
def test_current_arch_unsupported(monkeypatch: pytest.MonkeyPatch, machine: str) -> None:
    monkeypatch.setattr(os, "uname", lambda: _fake_uname(machine))
    with pytest.raises(UnsupportedArch) as info:
        current_arch()
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "\n" not in message
    assert repr(machine) in message
    assert "x86_64" in message and "aarch64" in message


# --- classes and resolve -------------------------------------------------------------------


def _names(nrs: frozenset[int], arch: str) -> set[str]:
    return {table_for(arch).name(nr) for nr in nrs}


def test_classes_tuple() -> None:
    assert {"file", "network", "process", "memory", "signal", "ipc", "desc", "creds"} <= set(
        CLASSES
    )
    assert set(CLASSES) == set(syscalls._CLASS_MEMBERS)


def test_class_members_are_real_syscalls() -> None:
    # Guards against typos in the hand-written class lists.
    known = {table_for(a).name(nr) for a in ARCHES for nr in table_for(a).numbers()}
    for cls in CLASSES:
        assert syscalls._CLASS_MEMBERS[cls] <= known, cls


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("cls", CLASSES)
def test_class_resolves_to_its_members_on_this_arch(arch: str, cls: str) -> None:
    got = resolve([f"%{cls}"], arch)
    assert got, f"%{cls} is empty on {arch}"
    assert got == resolve([cls], arch)
    table = table_for(arch)
    expected = {table.number(n) for n in syscalls._CLASS_MEMBERS[cls]} - {None}
    assert got == expected


def test_file_class_per_arch() -> None:
    x86 = _names(resolve(["%file"], "x86_64"), "x86_64")
    arm = _names(resolve(["%file"], "aarch64"), "aarch64")
    assert {"open", "stat", "lstat", "openat", "newfstatat", "execve", "unlink"} <= x86
    assert {"openat", "newfstatat", "execve", "unlinkat", "statx"} <= arm
    assert not {"open", "stat", "unlink"} & arm
    # fd-only calls are not %file.
    assert not {"read", "fstat", "close"} & (x86 | arm)


@pytest.mark.parametrize("arch", ARCHES)
def test_class_contents(arch: str) -> None:
    def of(cls: str) -> set[str]:
        return _names(resolve([f"%{cls}"], arch), arch)

    assert {"clone", "clone3", "execve", "execveat", "exit", "exit_group", "wait4",
            "waitid", "kill", "tkill", "tgkill"} <= of("process")
    assert {"socket", "connect", "accept4", "sendmsg", "recvmsg"} <= of("network")
    assert {"mmap", "munmap", "mprotect", "brk", "mremap", "madvise"} <= of("memory")
    assert {"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "kill"} <= of("signal")
    assert {"msgget", "semop", "shmat", "shmget"} <= of("ipc")
    assert {"read", "write", "close", "dup3", "fstat", "openat"} <= of("desc")
    assert {"setuid", "getresgid", "capset"} <= of("creds")
    assert "mq_open" not in of("ipc")


def test_resolve_names_lists_and_mixtures() -> None:
    t = table_for("x86_64")
    assert resolve(["read"], "x86_64") == {0}
    assert resolve(["read,write", "openat"], "x86_64") == {0, 1, 257}
    assert resolve([" read , write ,"], "x86_64") == {0, 1}
    assert resolve([], "x86_64") == frozenset()
    mixed = resolve(["%ipc,getpid"], "x86_64")
    assert mixed == resolve(["ipc"], "x86_64") | {t.number("getpid")}
    # The same filter selects the same calls by name on both arches.
    assert _names(resolve(["read,write,%process"], "aarch64"), "aarch64") == (
        {"read", "write"} | _names(resolve(["%process"], "aarch64"), "aarch64")
    )


def test_resolve_accepts_a_lone_string() -> None:
    assert resolve("read,write", "aarch64") == {63, 64}


def test_resolve_unknown_item() -> None:
    with pytest.raises(UnknownSyscall) as info:
        resolve(["read,opne"], "x86_64")
    assert str(info.value) == "unknown syscall or class 'opne' on x86_64"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("item", ["%bogus", "%", "%open", "Read"])
def test_resolve_unknown_class_or_case(item: str) -> None:
    with pytest.raises(UnknownSyscall, match=r"^unknown syscall or class .* on aarch64$"):
        resolve([item], "aarch64")


def test_resolve_name_from_another_arch() -> None:
    with pytest.raises(UnknownSyscall) as info:
        resolve(["openat,open"], "aarch64")
    message = str(info.value)
    assert message.startswith("unknown syscall or class 'open' on aarch64")
    assert "exists on x86_64" in message
    assert "\n" not in message


def test_resolve_unknown_arch() -> None:
    with pytest.raises(UnsupportedArch):
        resolve(["read"], "mips")


# --- generator -----------------------------------------------------------------------------


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_syscalls", GEN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_generated_files_are_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, str(GEN), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("arch", ARCHES)
def test_generated_header(arch: str) -> None:
    first = (ROOT / "tracerd" / "syscalls" / f"_{arch}.py").read_text().splitlines()[0]
    assert first.startswith("# Generated by tools/gen_syscalls.py from tools/syscall-tables/")
    assert first.endswith("; do not edit.")


def test_check_detects_stale_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gen = _load_generator()
    shutil.copytree(ROOT / "tools" / "syscall-tables", tmp_path / "tools" / "syscall-tables")
    out_dir = tmp_path / "tracerd" / "syscalls"
    out_dir.mkdir(parents=True)

    # Missing outputs: --check fails and writes nothing; a normal run creates them.
    assert gen.main(["--check"], root=tmp_path) == 1
    assert not list(out_dir.iterdir())
    assert gen.main([], root=tmp_path) == 0
    for arch in ARCHES:
        generated = (out_dir / f"_{arch}.py").read_bytes()
        assert generated == (ROOT / "tracerd" / "syscalls" / f"_{arch}.py").read_bytes()
    assert gen.main(["--check"], root=tmp_path) == 0

    # A hand edit is caught, with a one-line message naming the file.
    target = out_dir / "_aarch64.py"
    target.write_text(target.read_text().replace('"read"', '"raed"'))
    capsys.readouterr()
    assert gen.main(["--check"], root=tmp_path) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "tracerd/syscalls/_aarch64.py" in err
    assert "_x86_64.py" not in err


def test_parse_tbl_rules() -> None:
    gen = _load_generator()
    text = "# comment\n\n0\tcommon\tread\tsys_read\n1 64  write\n2\tx32\topen\tx\n3\tcommon\tgone\n"
    assert gen.parse_tbl(text, frozenset({"common", "64"})) == {0: "read", 1: "write", 3: "gone"}
    with pytest.raises(gen.TableError, match=r"<tbl>:2: bad syscall number"):
        gen.parse_tbl("0 common read\nzero common write\n", frozenset({"common"}))
    with pytest.raises(gen.TableError, match="already maps to 'read'"):
        gen.parse_tbl("0 common read\n0 64 write\n", frozenset({"common", "64"}))
    with pytest.raises(gen.TableError, match="already has number 0"):
        gen.parse_tbl("0 common read\n1 64 read\n", frozenset({"common", "64"}))
    with pytest.raises(gen.TableError, match="no rows"):
        gen.parse_tbl("0 x32 read\n", frozenset({"common"}))


def test_parse_unistd_rules() -> None:
    gen = _load_generator()
    text = ("#define __NR_restart_syscall 0\n__SYSCALL(__NR_restart_syscall, x)\n"
            "\t\t/* 7 was sys_waitpid */\n#define __NR_ugetrlimit 191\t/* SuS */\n"
            "#ifdef __KERNEL__\n#define __NR_syscalls 451\n#endif\n")
    assert gen.parse_unistd(text) == {0: "restart_syscall", 191: "ugetrlimit"}
    with pytest.raises(gen.TableError, match="already maps to 'read'"):
        gen.parse_unistd("#define __NR_read 3\n#define __NR_write 3\n")
    with pytest.raises(gen.TableError, match="no '#define"):
        gen.parse_unistd("int x;\n")


@pytest.mark.parametrize(("arch", "abi", "getppid", "exit_group"),
                         [("x86_64", "ia32", 64, 252), ("aarch64", "arm32", 64, 248)])
def test_compat_calls_have_their_own_names(arch: str, abi: str, getppid: int,
                                           exit_group: int) -> None:
    # The compat number of getppid is a different native call on both (getpid on x86_64,
    # and nothing at all in arm64's own 64-bit range at 64: write): never confused.
    table = table_for(arch)
    assert table.compat_abi == abi
    assert table.name(syscalls.COMPAT_BIT | getppid) == f"{abi}:getppid"
    assert table.name(syscalls.COMPAT_BIT | exit_group) == f"{abi}:exit_group"
    assert table.number(f"{abi}:getppid") == syscalls.COMPAT_BIT | getppid
    assert table.name(getppid) != "getppid"
    assert table.name(syscalls.COMPAT_BIT | 9999) == f"{abi}:syscall_9999"
    assert syscalls.COMPAT_BIT not in table.numbers() and max(table.numbers()) < 0x4000
    assert resolve([f"{abi}:exit_group"], arch) == {syscalls.COMPAT_BIT | exit_group}
    first = (ROOT / "tracerd" / "syscalls" / f"_{'i386' if abi == 'ia32' else abi}.py")
    assert first.read_text().startswith("# Generated by tools/gen_syscalls.py from tools/")
