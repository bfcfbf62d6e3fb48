"""tracerd._strace: strace-style lines, JSON events, the kernel copy plan, the generator."""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest

from tracerd import _strace
from tracerd._strace import ArgRead, event_to_json, format_event, kernel_reads, signature
from tracerd.model import ArgData, ArgKind, SyscallEvent
from tracerd.syscalls import ARCHES, SyscallTable, table_for

ROOT = Path(__file__).resolve().parents[2]
GEN = ROOT / "tools" / "gen_signatures.py"
HEADER = Path("/usr/src/linux-headers-6.1.0-56-common/include/linux/syscalls.h")

PATH, BUFFER, SOCKADDR = ArgKind.PATH, ArgKind.BUFFER, ArgKind.SOCKADDR
X86, ARM = table_for("x86_64"), table_for("aarch64")

# An address the tests pretend a pointer argument holds.
PTR = 0x7FFD1000
UNKNOWN_NR = 0x1FF  # inside both tables' range, assigned on neither arch


def ev(
    table: SyscallTable,
    name: str | int,
    args: Sequence[int],
    ret: int | None,
    data: Sequence[ArgData] = (),
    *,
    duration_ns: int = 12_000,
    tid: int = 1234,
) -> SyscallEvent:
    nr = name if isinstance(name, int) else table.number(name)
    assert nr is not None, name
    regs = tuple(a & (2**64 - 1) for a in args) + (0,) * (6 - len(args))
    return SyscallEvent(
        start_ns=5_000_000,
        end_ns=5_000_000 + (duration_ns if ret is not None else 0),
        pid=1000,
        tid=tid,
        nr=nr,
        ret=ret,
        args=regs,
        data=tuple(data),
    )


def line(
    table: SyscallTable,
    name: str | int,
    args: Sequence[int],
    ret: int | None,
    data: Sequence[ArgData] = (),
    *,
    duration_ns: int = 12_000,
) -> str:
    return format_event(ev(table, name, args, ret, data, duration_ns=duration_ns), table)


def sockaddr_in(port: int, addr: str) -> bytes:
    return struct.pack("<H", 2) + struct.pack(">H", port) + socket.inet_aton(addr) + bytes(8)


def sockaddr_in6(port: int, addr: str, scope: int = 0) -> bytes:
    return (
        struct.pack("<H", 10)
        + struct.pack(">HI", port, 0)
        + socket.inet_pton(socket.AF_INET6, addr)
        + struct.pack("<I", scope)
    )


def sockaddr_un(path: bytes) -> bytes:
    return struct.pack("<H", 1) + path


# --- golden lines --------------------------------------------------------------------------------

# (arch, event, exact strace -T line). Each is what strace prints for the same call, except
# that structures behind pointers the kernel did not copy stay hex pointers.
GOLDEN: list[tuple[SyscallTable, SyscallEvent, str]] = [
    (
        X86,
        ev(X86, "openat", [-100, PTR, 0o2000000, 0], 3, [ArgData(1, PATH, b"/etc/passwd")]),
        'openat(AT_FDCWD, "/etc/passwd", O_RDONLY|O_CLOEXEC) = 3 <0.000012>',
    ),
    (
        X86,
        ev(
            X86, "openat", [-100, PTR, 0o1101, 0o644], -2,
            [ArgData(1, PATH, b"/nope/x")], duration_ns=4_000,
        ),
        'openat(AT_FDCWD, "/nope/x", O_WRONLY|O_CREAT|O_TRUNC, 0644)'
        " = -1 ENOENT (No such file or directory) <0.000004>",
    ),
    (
        X86,
        ev(
            X86, "read", [3, PTR, 4096], 1234,
            [ArgData(1, BUFFER, b"root:x:0:0:root:/root:/bin/bash\nbin:x:1:1:", truncated=True)],
            duration_ns=10_000,
        ),
        'read(3, "root:x:0:0:root:/root:/bin/bash\\n"..., 4096) = 1234 <0.000010>',
    ),
    (
        X86,
        ev(X86, "write", [1, PTR, 6], 6, [ArgData(1, BUFFER, b"hello\n")], duration_ns=7_000),
        'write(1, "hello\\n", 6) = 6 <0.000007>',
    ),
    (X86, ev(X86, "exit_group", [0], None), "exit_group(0) = ?"),
    (ARM, ev(ARM, "exit_group", [3], None), "exit_group(3) = ?"),
    (
        X86,
        ev(X86, "connect", [3, PTR, 16], 0, [ArgData(1, SOCKADDR, sockaddr_in(80, "127.0.0.1"))]),
        "connect(3, {sa_family=AF_INET, sin_port=htons(80),"
        ' sin_addr=inet_addr("127.0.0.1")}, 16) = 0 <0.000012>',
    ),
    (
        ARM,
        ev(ARM, "connect", [3, PTR, 28], -111, [ArgData(1, SOCKADDR, sockaddr_in6(443, "::1"))]),
        "connect(3, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0),"
        ' inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28)'
        " = -1 ECONNREFUSED (Connection refused) <0.000012>",
    ),
    (
        X86,
        ev(X86, "connect", [4, PTR, 14], 0, [ArgData(1, SOCKADDR, sockaddr_un(b"/run/x.sock\0"))]),
        'connect(4, {sa_family=AF_UNIX, sun_path="/run/x.sock"}, 14) = 0 <0.000012>',
    ),
    (
        X86,
        ev(
            X86, "accept4", [3, PTR, PTR + 0x100, 0o2004000], 5,
            [ArgData(1, SOCKADDR, sockaddr_in(40794, "10.1.2.3") + bytes(112))],
        ),
        "accept4(3, {sa_family=AF_INET, sin_port=htons(40794),"
        ' sin_addr=inet_addr("10.1.2.3")}, 0x7ffd1100, SOCK_CLOEXEC|SOCK_NONBLOCK)'
        " = 5 <0.000012>",
    ),
    (
        X86,
        ev(X86, UNKNOWN_NR, [1, PTR, 0, 0, 0, 0], -38),
        "syscall_0x1ff(0x1, 0x7ffd1000, 0, 0, 0, 0) = -1 ENOSYS (Function not implemented)"
        " <0.000012>",
    ),
    (
        X86,
        ev(X86, "mmap", [0, 8192, 3, 0x22, -1, 0], 0x7F3A2C000000),
        "mmap(NULL, 8192, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0)"
        " = 0x7f3a2c000000 <0.000012>",
    ),
    (
        ARM,
        ev(ARM, "mmap", [0, 2037344, 5, 0x812, 3, 0x28000], 0xFFFF8E000000),
        "mmap(NULL, 2037344, PROT_READ|PROT_EXEC, MAP_PRIVATE|MAP_FIXED|MAP_DENYWRITE, 3,"
        " 0x28000) = 0xffff8e000000 <0.000012>",
    ),
    (
        X86,
        ev(X86, "mprotect", [0x7F3A2C001000, 4096, 0], 0),
        "mprotect(0x7f3a2c001000, 4096, PROT_NONE) = 0 <0.000012>",
    ),
    (X86, ev(X86, "brk", [0], 0x55D5B6A2B000), "brk(NULL) = 0x55d5b6a2b000 <0.000012>"),
    (X86, ev(X86, "close", [3], 0), "close(3) = 0 <0.000012>"),
    (X86, ev(X86, "kill", [1234, 15], 0), "kill(1234, SIGTERM) = 0 <0.000012>"),
    (
        X86,
        ev(X86, "kill", [1234, 0], -3),
        "kill(1234, SIG_0) = -1 ESRCH (No such process) <0.000012>",
    ),
    (X86, ev(X86, "tgkill", [7, 8, 34], 0), "tgkill(7, 8, SIGRT_2) = 0 <0.000012>"),
    (
        X86,
        ev(X86, "rt_sigaction", [32, PTR, 0, 8], 0),
        "rt_sigaction(SIGRTMIN, 0x7ffd1000, NULL, 8) = 0 <0.000012>",
    ),
    (
        X86,
        ev(X86, "rt_sigprocmask", [2, PTR, 0, 8], 0),
        "rt_sigprocmask(SIG_SETMASK, 0x7ffd1000, NULL, 8) = 0 <0.000012>",
    ),
    (
        X86,
        ev(X86, "wait4", [-1, PTR, 0x40000002, 0], 4321),
        "wait4(-1, 0x7ffd1000, WSTOPPED|__WALL, NULL) = 4321 <0.000012>",
    ),
    (X86, ev(X86, "wait4", [4321, 0, 0, 0], 4321), "wait4(4321, NULL, 0, NULL) = 4321 <0.000012>"),
    (
        X86,
        ev(X86, "socket", [2, 0x80001, 6], 3),
        "socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, IPPROTO_TCP) = 3 <0.000012>",
    ),
    (
        X86,
        ev(X86, "socket", [1, 0x80805, 0], 3),
        "socket(AF_UNIX, SOCK_SEQPACKET|SOCK_CLOEXEC|SOCK_NONBLOCK, 0) = 3 <0.000012>",
    ),
    (
        ARM,
        ev(ARM, "socket", [16, 3, 0], 3),
        "socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE) = 3 <0.000012>",
    ),
    (X86, ev(X86, "ioctl", [1, 0x5401, PTR], 0), "ioctl(1, 0x5401, 0x7ffd1000) = 0 <0.000012>"),
    (X86, ev(X86, "lseek", [3, 0, 1], 0), "lseek(3, 0, SEEK_CUR) = 0 <0.000012>"),
    (X86, ev(X86, "lseek", [3, -10, 2], 90), "lseek(3, -10, SEEK_END) = 90 <0.000012>"),
    (X86, ev(X86, "lseek", [3, 0, 9], -22),
     "lseek(3, 0, 0x9 /* SEEK_??? */) = -1 EINVAL (Invalid argument) <0.000012>"),
    (
        X86,
        ev(X86, "access", [PTR, 4], -2, [ArgData(0, PATH, b"/etc/ld.so.preload")]),
        'access("/etc/ld.so.preload", R_OK) = -1 ENOENT (No such file or directory) <0.000012>',
    ),
    (
        ARM,
        ev(ARM, "faccessat", [-100, PTR, 0], 0, [ArgData(1, PATH, b"/x")]),
        'faccessat(AT_FDCWD, "/x", F_OK) = 0 <0.000012>',
    ),
    (
        X86,
        ev(X86, "faccessat2", [-100, PTR, 6, 0x200], 0, [ArgData(1, PATH, b"/x")]),
        'faccessat2(AT_FDCWD, "/x", R_OK|W_OK, AT_EACCESS) = 0 <0.000012>',
    ),
    (
        X86,
        ev(X86, "newfstatat", [3, PTR, PTR + 8, 0x1000], 0, [ArgData(1, PATH, b"")]),
        'newfstatat(3, "", 0x7ffd1008, AT_EMPTY_PATH) = 0 <0.000012>',
    ),
    (
        ARM,
        ev(ARM, "newfstatat", [-100, PTR, PTR + 8, 0], 0, [ArgData(1, PATH, b"/")]),
        'newfstatat(AT_FDCWD, "/", 0x7ffd1008, 0) = 0 <0.000012>',
    ),
    (
        X86,
        ev(X86, "statx", [-100, PTR, 0x100, 0xFFF, PTR + 8], 0, [ArgData(1, PATH, b"/")]),
        'statx(AT_FDCWD, "/", AT_STATX_SYNC_AS_STAT|AT_SYMLINK_NOFOLLOW, STATX_ALL, 0x7ffd1008)'
        " = 0 <0.000012>",
    ),
    (
        X86,
        ev(X86, "unlinkat", [-100, PTR, 0x200], 0, [ArgData(1, PATH, b"dir")]),
        'unlinkat(AT_FDCWD, "dir", AT_REMOVEDIR) = 0 <0.000012>',
    ),
    (
        ARM,
        ev(ARM, "linkat", [-100, PTR, 5, PTR + 64, 0x400], 0,
           [ArgData(1, PATH, b"a"), ArgData(3, PATH, b"b")]),
        'linkat(AT_FDCWD, "a", 5, "b", AT_SYMLINK_FOLLOW) = 0 <0.000012>',
    ),
    (
        X86,
        ev(X86, "renameat2", [-100, PTR, -100, PTR + 64, 1], 0,
           [ArgData(1, PATH, b"old"), ArgData(3, PATH, b"new")]),
        'renameat2(AT_FDCWD, "old", AT_FDCWD, "new", 1) = 0 <0.000012>',
    ),
    (
        X86,
        ev(X86, "execve", [PTR, PTR + 8, PTR + 16], 0, [ArgData(0, PATH, b"/bin/ls")]),
        'execve("/bin/ls", 0x7ffd1008, 0x7ffd1010) = 0 <0.000012>',
    ),
    (
        X86,
        ev(X86, "execveat", [3, PTR, PTR + 8, PTR + 16, 0x1000], -2, [ArgData(1, PATH, b"")]),
        'execveat(3, "", 0x7ffd1008, 0x7ffd1010, AT_EMPTY_PATH)'
        " = -1 ENOENT (No such file or directory) <0.000012>",
    ),
    (X86, ev(X86, "chdir", [0], -14), "chdir(NULL) = -1 EFAULT (Bad address) <0.000012>"),
    (X86, ev(X86, "chdir", [PTR], 0), "chdir(0x7ffd1000) = 0 <0.000012>"),
    (
        X86,
        ev(X86, "mkdirat", [-100, PTR, 0o755], -17, [ArgData(1, PATH, b"d")]),
        'mkdirat(AT_FDCWD, "d", 0755) = -1 EEXIST (File exists) <0.000012>',
    ),
    (
        X86,
        ev(X86, "mknodat", [-100, PTR, 0o20600, 0x103], 0, [ArgData(1, PATH, b"n")]),
        'mknodat(AT_FDCWD, "n", S_IFCHR|0600, makedev(0x1, 0x3)) = 0 <0.000012>',
    ),
    (
        X86,
        ev(X86, "mknod", [PTR, 0o10644, 0x103], 0, [ArgData(0, PATH, b"fifo")]),
        'mknod("fifo", S_IFIFO|0644) = 0 <0.000012>',
    ),
    (X86, ev(X86, "umask", [0o22], 0o2), "umask(022) = 002 <0.000012>"),
    (
        X86,
        ev(X86, "clone", [0x1200011, 0, 0, 0x7F0000002A10, 0], 4321),
        "clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD,"
        " child_tidptr=0x7f0000002a10) = 4321 <0.000012>",
    ),
    # The same call on aarch64: tls and child_tidptr are swapped in the registers.
    (
        ARM,
        ev(ARM, "clone", [0x1200011, 0, 0, 0, 0x7F0000002A10], 4321),
        "clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD,"
        " child_tidptr=0x7f0000002a10) = 4321 <0.000012>",
    ),
    (
        X86,
        ev(X86, "clone", [0x3D0F00, 0x7F00AA, 0x7F00BB, 0x7F00CC, 0x7F00DD], 77),
        "clone(child_stack=0x7f00aa, flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND"
        "|CLONE_THREAD|CLONE_SYSVSEM|CLONE_SETTLS|CLONE_PARENT_SETTID|CLONE_CHILD_CLEARTID,"
        " parent_tid=0x7f00bb, tls=0x7f00dd, child_tidptr=0x7f00cc) = 77 <0.000012>",
    ),
    (
        ARM,
        ev(ARM, "clone", [0x3D0F00, 0x7F00AA, 0x7F00BB, 0x7F00DD, 0x7F00CC], 77),
        "clone(child_stack=0x7f00aa, flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND"
        "|CLONE_THREAD|CLONE_SYSVSEM|CLONE_SETTLS|CLONE_PARENT_SETTID|CLONE_CHILD_CLEARTID,"
        " parent_tid=0x7f00bb, tls=0x7f00dd, child_tidptr=0x7f00cc) = 77 <0.000012>",
    ),
    (
        X86,
        ev(X86, "clone", [17, 0, 0, 0, 0], 9),
        "clone(child_stack=NULL, flags=SIGCHLD) = 9 <0.000012>",
    ),
    (
        X86,
        ev(X86, "futex", [0x7F0000003000, 0x81, 1, 0, 0, 0], 0),
        "futex(0x7f0000003000, FUTEX_WAKE_PRIVATE, 1) = 0 <0.000012>",
    ),
    (
        X86,
        ev(X86, "futex", [0x7F0000003000, 0x80, 2, 0, 0, 0], -11),
        "futex(0x7f0000003000, FUTEX_WAIT_PRIVATE, 2, NULL)"
        " = -1 EAGAIN (Resource temporarily unavailable) <0.000012>",
    ),
    (
        ARM,
        ev(ARM, "futex", [0x7F0000003000, 0x189, 0, PTR, 0, 0xFFFFFFFF], -110),
        "futex(0x7f0000003000, FUTEX_WAIT_BITSET_PRIVATE|FUTEX_CLOCK_REALTIME, 0, 0x7ffd1000,"
        " FUTEX_BITSET_MATCH_ANY) = -1 ETIMEDOUT (Connection timed out) <0.000012>",
    ),
    (X86, ev(X86, "fcntl", [3, 1], 1), "fcntl(3, F_GETFD) = 0x1 (flags FD_CLOEXEC) <0.000012>"),
    (X86, ev(X86, "fcntl", [3, 2, 1], 0), "fcntl(3, F_SETFD, FD_CLOEXEC) = 0 <0.000012>"),
    (
        X86,
        ev(X86, "fcntl", [3, 3], 0o100002),
        "fcntl(3, F_GETFL) = 0x8002 (flags O_RDWR|O_LARGEFILE) <0.000012>",
    ),
    # O_LARGEFILE is 0o400000 on arm64; 0o100000 there is O_NOFOLLOW.
    (
        ARM,
        ev(ARM, "fcntl", [3, 3], 0o400002),
        "fcntl(3, F_GETFL) = 0x20002 (flags O_RDWR|O_LARGEFILE) <0.000012>",
    ),
    (
        X86,
        ev(X86, "fcntl", [3, 4, 0o4002], 0),
        "fcntl(3, F_SETFL, O_RDWR|O_NONBLOCK) = 0 <0.000012>",
    ),
    (X86, ev(X86, "fcntl", [3, 1030, 10], 11), "fcntl(3, F_DUPFD_CLOEXEC, 10) = 11 <0.000012>"),
    (
        X86,
        ev(X86, "fcntl", [3, 0x40F, 5], -22),
        "fcntl(3, 0x40f /* F_??? */, 0x5) = -1 EINVAL (Invalid argument) <0.000012>",
    ),
    (
        X86,
        ev(X86, "arch_prctl", [0x1002, 0x7F0000004000], 0),
        "arch_prctl(ARCH_SET_FS, 0x7f0000004000) = 0 <0.000012>",
    ),
    (
        X86,
        ev(X86, "arch_prctl", [0x3001, PTR], -22),
        "arch_prctl(0x3001 /* ARCH_??? */, 0x7ffd1000) = -1 EINVAL (Invalid argument) <0.000012>",
    ),
    (
        X86,
        ev(X86, "prctl", [38, 1, 0, 0, 0], 0),
        "prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) = 0 <0.000012>",
    ),
    (ARM, ev(ARM, "prctl", [1, 9, 0, 0, 0], 0), "prctl(PR_SET_PDEATHSIG, SIGKILL) = 0 <0.000012>"),
    (X86, ev(X86, "prctl", [3, 0, 0, 0, 0], 1), "prctl(PR_GET_DUMPABLE) = 1 <0.000012>"),
    (
        X86,
        ev(X86, "prctl", [23, 21, 0, 0, 0], 1),
        "prctl(PR_CAPBSET_READ, CAP_SYS_ADMIN) = 1 <0.000012>",
    ),
    (
        X86,
        ev(X86, "prctl", [0x999, 1, 2, 3, 4], -22),
        "prctl(0x999 /* PR_??? */, 0x1, 0x2, 0x3, 0x4) = -1 EINVAL (Invalid argument) <0.000012>",
    ),
    (
        X86,
        ev(X86, "read", [0, PTR, 10], -512, [ArgData(1, BUFFER, b"stale")]),
        "read(0, 0x7ffd1000, 10) = ? ERESTARTSYS (To be restarted if SA_RESTART is set)"
        " <0.000012>",
    ),
    (
        X86,
        ev(X86, "pipe2", [PTR, 0o2004000], 0),
        "pipe2(0x7ffd1000, O_NONBLOCK|O_CLOEXEC) = 0 <0.000012>",
    ),
    (X86, ev(X86, "dup3", [3, 4, 0o2000000], 4), "dup3(3, 4, O_CLOEXEC) = 4 <0.000012>"),
    (
        X86,
        ev(X86, "clock_nanosleep", [1, 0, PTR, 0], -516),
        "clock_nanosleep(CLOCK_MONOTONIC, 0, 0x7ffd1000, NULL)"
        " = ? ERESTART_RESTARTBLOCK (Interrupted by signal) <0.000012>",
    ),
    (
        X86,
        ev(X86, "sendto", [3, PTR, 5, 0x4000, PTR + 64, 16], 5,
           [ArgData(1, BUFFER, b"ping\n"), ArgData(4, SOCKADDR, sockaddr_in(53, "8.8.8.8"))]),
        'sendto(3, "ping\\n", 5, MSG_NOSIGNAL, {sa_family=AF_INET, sin_port=htons(53),'
        ' sin_addr=inet_addr("8.8.8.8")}, 16) = 5 <0.000012>',
    ),
    (
        X86,
        ev(X86, "recvfrom", [3, PTR, 512, 0, 0, 0], 3, [ArgData(1, BUFFER, b"a\0b")]),
        'recvfrom(3, "a\\0b", 512, 0, NULL, NULL) = 3 <0.000012>',
    ),
    (X86, ev(X86, "shutdown", [3, 2], 0), "shutdown(3, SHUT_RDWR) = 0 <0.000012>"),
    (X86, ev(X86, "getpid", [], 1000), "getpid() = 1000 <0.000012>"),
    (
        ARM,
        ev(ARM, "setresuid", [-1, 1000, 0xFFFFFFFF], 0),
        "setresuid(-1, 1000, -1) = 0 <0.000012>",
    ),
    (X86, ev(X86, "rt_sigreturn", [], 0), "rt_sigreturn() = 0 <0.000012>"),
]


@pytest.mark.parametrize(("table", "event", "expected"), GOLDEN, ids=[g[2][:40] for g in GOLDEN])
def test_golden_lines(table: SyscallTable, event: SyscallEvent, expected: str) -> None:
    assert format_event(event, table) == expected


def test_show_pid_prefix_uses_the_thread_id() -> None:
    event = ev(X86, "close", [3], 0, tid=1234)
    assert format_event(event, X86, show_pid=True) == "[pid  1234] close(3) = 0 <0.000012>"
    event = ev(X86, "close", [3], 0, tid=123456)
    assert format_event(event, X86, show_pid=True).startswith("[pid 123456] close(3)")


# --- arch-aware flag values ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "flags", "text"),
    [
        (X86, 0o200000, "O_RDONLY|O_DIRECTORY"),
        (X86, 0o40000, "O_RDONLY|O_DIRECT"),
        (X86, 0o400000, "O_RDONLY|O_NOFOLLOW"),
        (X86, 0o100000, "O_RDONLY|O_LARGEFILE"),
        (ARM, 0o40000, "O_RDONLY|O_DIRECTORY"),
        (ARM, 0o100000, "O_RDONLY|O_NOFOLLOW"),
        (ARM, 0o200000, "O_RDONLY|O_DIRECT"),
        (ARM, 0o400000, "O_RDONLY|O_LARGEFILE"),
        # O_TMPFILE includes the O_DIRECTORY bit, which differs per arch.
        (X86, 0o20200002, "O_RDWR|O_TMPFILE"),
        (ARM, 0o20040002, "O_RDWR|O_TMPFILE"),
        (X86, 0o4010001, "O_WRONLY|O_SYNC"),
        (X86, 0o10001, "O_WRONLY|O_DSYNC"),
        (X86, 3, "O_ACCMODE"),
        (X86, 0o2000000 | 0x80000000, "O_RDONLY|O_CLOEXEC|0x80000000"),
    ],
)
def test_open_flags_per_arch(table: SyscallTable, flags: int, text: str) -> None:
    out = line(table, "openat", [-100, PTR, flags, 0o600], 3)
    mode = ", 0600" if "O_TMPFILE" in text else ""
    assert out == f"openat(AT_FDCWD, 0x7ffd1000, {text}{mode}) = 3 <0.000012>"


def test_open_on_x86_64_and_mode_only_when_creating() -> None:
    assert line(X86, "open", [PTR, 0o101, 0o600], 3) == (
        "open(0x7ffd1000, O_WRONLY|O_CREAT, 0600) = 3 <0.000012>"
    )
    assert line(X86, "open", [PTR, 0, 0o600], 3) == "open(0x7ffd1000, O_RDONLY) = 3 <0.000012>"
    assert line(X86, "creat", [PTR, 0o640], 3) == "creat(0x7ffd1000, 0640) = 3 <0.000012>"
    assert ARM.number("open") is None


def test_mmap_flags_per_arch() -> None:
    args = [0, 4096, 0x30, 0x42, -1, 0]
    # 0x40 is MAP_32BIT on x86_64 only; 0x10/0x20 are PROT_BTI/PROT_MTE on arm64 only.
    assert line(X86, "mmap", args, -22).startswith(
        "mmap(NULL, 4096, 0x30 /* PROT_??? */, MAP_PRIVATE|MAP_32BIT, -1, 0)"
    )
    assert line(ARM, "mmap", args, -22).startswith(
        "mmap(NULL, 4096, PROT_BTI|PROT_MTE, MAP_PRIVATE|0x40, -1, 0)"
    )
    huge = [0, 2 << 20, 3, 0x22 | 0x40000 | (21 << 26), -1, 0]
    assert "MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB|21<<MAP_HUGE_SHIFT" in line(X86, "mmap", huge, 0)


def test_mremap_new_address_only_when_fixed() -> None:
    assert line(X86, "mremap", [0x10000, 4096, 8192, 1, 0], 0x20000) == (
        "mremap(0x10000, 4096, 8192, MREMAP_MAYMOVE) = 0x20000 <0.000012>"
    )
    assert line(X86, "mremap", [0x10000, 4096, 8192, 3, 0x30000], 0x30000) == (
        "mremap(0x10000, 4096, 8192, MREMAP_MAYMOVE|MREMAP_FIXED, 0x30000) = 0x30000 <0.000012>"
    )


# --- strings and buffers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "quoted"),
    [
        (b"plain text", '"plain text"'),
        (b'tab\there\nnl "q" back\\slash', '"tab\\there\\nnl \\"q\\" back\\\\slash"'),
        (b"\r\v\f", '"\\r\\v\\f"'),
        (b"\x7fELF\x02\x01\x01\x00\x00", '"\\177ELF\\2\\1\\1\\0\\0"'),
        # Before a digit 0-7 the escape needs all three octal digits, before 8 it does not.
        (b"\x001", '"\\0001"'),
        (b"\x018", '"\\18"'),
        (b"\x1b[0m", '"\\33[0m"'),
        ("é".encode(), '"\\303\\251"'),
        (b"", '""'),
    ],
)
def test_quoting_follows_strace(data: bytes, quoted: str) -> None:
    out = line(X86, "write", [1, PTR, len(data)], len(data), [ArgData(1, BUFFER, data)])
    assert out == f"write(1, {quoted}, {len(data)}) = {len(data)} <0.000012>"


def test_string_limit_truncates_buffers_not_paths() -> None:
    data = b"0123456789" * 5
    write = ev(X86, "write", [1, PTR, 50], 50, [ArgData(1, BUFFER, data)])
    assert format_event(write, X86, string_limit=8) == (
        'write(1, "01234567"..., 50) = 50 <0.000012>'
    )
    # Exactly string_limit bytes: nothing is left out, no ellipsis.
    whole = format_event(write, X86, string_limit=50)
    assert whole == f'write(1, "{data.decode()}", 50) = 50 <0.000012>'
    # The default limit is strace's 32.
    assert f'"{data[:32].decode()}"..., 50)' in format_event(write, X86)

    long_path = b"/" + b"d" * 60
    opened = ev(X86, "openat", [-100, PTR, 0, 0], 3, [ArgData(1, PATH, long_path)])
    assert f'"{long_path.decode()}",' in format_event(opened, X86, string_limit=8)


def test_kernel_truncation_adds_ellipsis() -> None:
    # The kernel copied 5 of the 6 bytes written.
    out = line(X86, "write", [1, PTR, 6], 6, [ArgData(1, BUFFER, b"hello", truncated=True)])
    assert out == 'write(1, "hello"..., 6) = 6 <0.000012>'
    # Copied fewer bytes than the call moved, without the flag: still marked.
    out = line(X86, "read", [3, PTR, 100], 10, [ArgData(1, BUFFER, b"short")])
    assert out == 'read(3, "short"..., 100) = 10 <0.000012>'
    # A path the kernel cut at its copy size.
    out = line(X86, "chdir", [PTR], 0, [ArgData(0, PATH, b"/very/long", truncated=True)])
    assert out == 'chdir("/very/long"...) = 0 <0.000012>'


def test_read_shows_only_what_was_returned() -> None:
    out = line(X86, "read", [3, PTR, 4096], 2, [ArgData(1, BUFFER, b"ok-and-stale")])
    assert out == 'read(3, "ok", 4096) = 2 <0.000012>'
    # Failed read: the buffer was not written, strace prints the pointer.
    out = line(X86, "read", [3, PTR, 4096], -9, [ArgData(1, BUFFER, b"x")])
    assert out == "read(3, 0x7ffd1000, 4096) = -1 EBADF (Bad file descriptor) <0.000012>"
    out = line(X86, "read", [3, PTR, 4096], 0, [ArgData(1, BUFFER, b"")])
    assert out == 'read(3, "", 4096) = 0 <0.000012>'


# --- sockaddrs -----------------------------------------------------------------------------------


def _connect(table: SyscallTable, raw: bytes, addrlen: int | None = None) -> str:
    length = len(raw) if addrlen is None else addrlen
    return line(table, "connect", [3, PTR, length], 0, [ArgData(1, SOCKADDR, raw)])


def test_sockaddr_variants() -> None:
    assert '{sa_family=AF_UNIX, sun_path=@"abstract"}' in _connect(
        X86, sockaddr_un(b"\0abstract")
    )
    assert "{sa_family=AF_UNIX}, 2)" in _connect(X86, sockaddr_un(b""))
    assert 'inet_pton(AF_INET6, "fe80::1", &sin6_addr), sin6_scope_id=2}' in _connect(
        ARM, sockaddr_in6(22, "fe80::1", scope=2)
    )
    assert 'inet_pton(AF_INET6, "::ffff:127.0.0.1", &sin6_addr)' in _connect(
        X86, sockaddr_in6(22, "::ffff:127.0.0.1")
    )
    netlink = struct.pack("<HHII", 16, 0, 0, 1)
    assert "{sa_family=AF_NETLINK, nl_pid=0, nl_groups=00000001}" in _connect(X86, netlink)
    packet = struct.pack("<H", 17) + b"\x00\x03"
    assert '{sa_family=AF_PACKET, sa_data="\\0\\3"}' in _connect(X86, packet)
    unknown = struct.pack("<H", 99) + b"ab"
    assert '{sa_family=0x63 /* AF_??? */, sa_data="ab"}' in _connect(X86, unknown)
    # Only the addrlen bytes the program passed are decoded.
    assert 'sun_path="/a"}' in _connect(X86, sockaddr_un(b"/abc\0"), addrlen=4)
    # Too short to hold a family: the pointer.
    assert "connect(3, 0x7ffd1000, 1)" in _connect(X86, b"\x02", addrlen=1)


def test_returned_sockaddr_ignores_padding_and_failures() -> None:
    # At exit the kernel's buffer is copied: trailing zeros are not part of the name.
    raw = sockaddr_un(b"\0name") + bytes(100)
    out = line(X86, "accept", [3, PTR, PTR + 0x100], 4, [ArgData(1, SOCKADDR, raw)])
    assert out == 'accept(3, {sa_family=AF_UNIX, sun_path=@"name"}, 0x7ffd1100) = 4 <0.000012>'
    out = line(X86, "accept", [3, PTR, PTR + 0x100], -11, [ArgData(1, SOCKADDR, raw)])
    assert out.startswith("accept(3, 0x7ffd1000, 0x7ffd1100) = -1 EAGAIN")
    out = line(ARM, "getsockname", [3, PTR, PTR + 0x100], 0,
               [ArgData(1, SOCKADDR, sockaddr_in(0, "0.0.0.0") + bytes(112))])
    assert 'sin_port=htons(0), sin_addr=inet_addr("0.0.0.0")}' in out


# --- return values and errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ret", "text"),
    [
        (-11, "-1 EAGAIN (Resource temporarily unavailable)"),
        (-35, "-1 EDEADLK (Resource deadlock avoided)"),
        (-95, "-1 EOPNOTSUPP (Operation not supported)"),
        (-513, "? ERESTARTNOINTR (To be restarted)"),
        (-514, "? ERESTARTNOHAND (To be restarted if no handler)"),
        (-515, "-1 ENOIOCTLCMD (Unknown error 515)"),
        (-600, "-1 ERRNO_600 (Unknown error 600)"),
        (-4095, "-1 ERRNO_4095 (Unknown error 4095)"),
        (-4096, "-4096"),  # below the errno range: a plain (odd) return value
        (0, "0"),
    ],
)
def test_return_values(ret: int, text: str) -> None:
    out = line(X86, "ioctl", [3, 0x5401, PTR], ret)
    assert out == f"ioctl(3, 0x5401, 0x7ffd1000) = {text} <0.000012>"


@pytest.mark.parametrize(
    ("ns", "text"),
    [(0, "<0.000000>"), (999, "<0.000000>"), (1_999, "<0.000001>"), (2_500_000_000, "<2.500000>")],
)
def test_duration_is_truncated_to_microseconds_like_strace(ns: int, text: str) -> None:
    assert line(X86, "close", [3], 0, duration_ns=ns) == f"close(3) = 0 {text}"


def test_unknown_syscalls_and_signatures() -> None:
    # A number with no name on the arch: strace's hex spelling and six raw arguments.
    assert line(ARM, UNKNOWN_NR, [0, 0, 0, 0, 0, 0], -38).startswith(
        "syscall_0x1ff(0, 0, 0, 0, 0, 0) = -1 ENOSYS"
    )
    # A named syscall newer than the header: the name, six raw arguments.
    assert signature("fchmodat2", "x86_64") is None
    assert line(X86, "fchmodat2", [-100, PTR, 0o644, 0x100], 0) == (
        "fchmodat2(0xffffffffffffff9c, 0x7ffd1000, 0x1a4, 0x100, 0, 0) = 0 <0.000012>"
    )


# --- JSON ----------------------------------------------------------------------------------------


def test_json_event() -> None:
    event = ev(X86, "openat", [-100, PTR, 0o2000000, 0], 3, [ArgData(1, PATH, b"/etc/passwd")])
    assert event_to_json(event, X86) == {
        "type": "syscall",
        "name": "openat",
        "args": ["AT_FDCWD", '"/etc/passwd"', "O_RDONLY|O_CLOEXEC"],
        "decoded": {"dfd": -100, "filename": "/etc/passwd", "flags": 0o2000000},
        "return_value": 3,
        "error": None,
        "duration_ns": 12_000,
        "timestamp_ns": 5_000_000,
        "end_ns": 5_012_000,
        "pid": 1000,
        "tid": 1234,
        "nr": 257,
    }


def test_json_error_sockaddr_and_buffer() -> None:
    addr = ArgData(1, SOCKADDR, sockaddr_in(80, "1.2.3.4"))
    failed = ev(ARM, "connect", [3, PTR, 16], -111, [addr])
    out = event_to_json(failed, ARM)
    assert out["return_value"] == -1
    assert out["error"] == "ECONNREFUSED"
    assert out["nr"] == 203
    assert out["decoded"] == {
        "fd": 3,
        "uservaddr": {"family": "AF_INET", "address": "1.2.3.4", "port": 80},
        "addrlen": 16,
    }
    assert out["args"] == [
        "3", '{sa_family=AF_INET, sin_port=htons(80), sin_addr=inet_addr("1.2.3.4")}', "16"
    ]
    # Buffers decode as UTF-8, undecodable bytes kept as escapes; the whole copy, not -s.
    data = b"caf\xc3\xa9 \xff" + b"x" * 40
    write = ev(X86, "write", [1, PTR, len(data)], len(data), [ArgData(1, BUFFER, data)])
    decoded = event_to_json(write, X86)["decoded"]
    assert isinstance(decoded, dict)
    assert decoded["buf"] == "café \\xff" + "x" * 40
    assert decoded["count"] == len(data)


def test_json_unreturned_unknown_and_v6() -> None:
    out = event_to_json(ev(X86, "exit_group", [0], None), X86)
    assert (out["return_value"], out["error"], out["duration_ns"]) == (None, None, 0)
    out = event_to_json(ev(X86, UNKNOWN_NR, [1, 2, 3, 4, 5, 6], 0), X86)
    assert out["name"] == "syscall_0x1ff"
    assert out["args"] == ["0x1", "0x2", "0x3", "0x4", "0x5", "0x6"]
    assert out["decoded"] == {f"arg{i}": i + 1 for i in range(6)}
    out = event_to_json(ev(X86, "read", [3, PTR, 10], -512), X86)
    assert (out["return_value"], out["error"]) == (-1, "ERESTARTSYS")
    v6 = ev(X86, "bind", [3, PTR, 28], 0, [ArgData(1, SOCKADDR, sockaddr_in6(8080, "::"))])
    decoded = event_to_json(v6, X86)["decoded"]
    assert isinstance(decoded, dict)
    assert decoded["umyaddr"] == {
        "family": "AF_INET6", "address": "::", "port": 8080, "scope_id": 0
    }
    un = ev(X86, "bind", [3, PTR, 9], 0, [ArgData(1, SOCKADDR, sockaddr_un(b"/s\0"))])
    decoded = event_to_json(un, X86)["decoded"]
    assert isinstance(decoded, dict)
    assert decoded["umyaddr"] == {"family": "AF_UNIX", "path": "/s"}


def test_json_args_match_the_line() -> None:
    for table, event, expected in GOLDEN:
        out = event_to_json(event, table)
        assert json.loads(json.dumps(out)) == out
        args = out["args"]
        assert isinstance(args, list)
        assert expected.startswith(f"{out['name']}({', '.join(args)}) = "), expected


# --- kernel copy plan ----------------------------------------------------------------------------

PLANS = {
    "openat": (ArgRead(1, PATH, at_exit=False),),
    "execve": (ArgRead(0, PATH, at_exit=False),),
    "read": (ArgRead(1, BUFFER, at_exit=True, len_index=-1),),
    "write": (ArgRead(1, BUFFER, at_exit=False, len_index=2),),
    "connect": (ArgRead(1, SOCKADDR, at_exit=False, len_index=2),),
    "accept4": (ArgRead(1, SOCKADDR, at_exit=True, len_index=-1),),
    "sendto": (
        ArgRead(1, BUFFER, at_exit=False, len_index=2),
        ArgRead(4, SOCKADDR, at_exit=False, len_index=5),
    ),
    "recvfrom": (ArgRead(1, BUFFER, at_exit=True), ArgRead(4, SOCKADDR, at_exit=True)),
    "renameat2": (ArgRead(1, PATH, at_exit=False), ArgRead(3, PATH, at_exit=False)),
    "linkat": (ArgRead(1, PATH, at_exit=False), ArgRead(3, PATH, at_exit=False)),
    "symlinkat": (ArgRead(0, PATH, at_exit=False), ArgRead(2, PATH, at_exit=False)),
    "newfstatat": (ArgRead(1, PATH, at_exit=False),),
    "statx": (ArgRead(1, PATH, at_exit=False),),
    "unlinkat": (ArgRead(1, PATH, at_exit=False),),
    "mkdirat": (ArgRead(1, PATH, at_exit=False),),
    "chdir": (ArgRead(0, PATH, at_exit=False),),
    "readlinkat": (ArgRead(1, PATH, at_exit=False),),
    "bind": (ArgRead(1, SOCKADDR, at_exit=False, len_index=2),),
    "getpeername": (ArgRead(1, SOCKADDR, at_exit=True),),
    "pread64": (ArgRead(1, BUFFER, at_exit=True),),
    "pwrite64": (ArgRead(1, BUFFER, at_exit=False, len_index=2),),
}
X86_ONLY_PLANS = {
    "access": (ArgRead(0, PATH, at_exit=False),),
    "readlink": (ArgRead(0, PATH, at_exit=False),),
    "rename": (ArgRead(0, PATH, at_exit=False), ArgRead(1, PATH, at_exit=False)),
    "symlink": (ArgRead(0, PATH, at_exit=False), ArgRead(1, PATH, at_exit=False)),
    "accept": (ArgRead(1, SOCKADDR, at_exit=True),),
}


@pytest.mark.parametrize("arch", ARCHES)
def test_kernel_reads_plan(arch: str) -> None:
    table = table_for(arch)
    plan = kernel_reads(table)
    expected = PLANS | (X86_ONLY_PLANS if arch == "x86_64" else {})
    for name, reads in expected.items():
        nr = table.number(name)
        assert nr is not None, name
        assert plan[nr] == reads, name
    for name in ("readv", "writev", "close", "getpid", "sendmsg", "ioctl", "sethostname"):
        nr = table.number(name)
        assert nr is not None and nr not in plan, name


@pytest.mark.parametrize("arch", ARCHES)
def test_kernel_reads_are_well_formed(arch: str) -> None:
    table = table_for(arch)
    for nr, reads in kernel_reads(table).items():
        sig = signature(table.name(nr), arch)
        assert sig is not None
        assert 1 <= len(reads) <= 2
        assert [r.index for r in reads] == sorted({r.index for r in reads})
        for r in reads:
            assert "*" in sig[r.index][0], (table.name(nr), r)
            assert r.len_index == -1 or 0 <= r.len_index < len(sig)
            assert r.at_exit == (r.kind is not PATH and r.len_index == -1)


@pytest.mark.parametrize("arch", ARCHES)
def test_decoding_rules_name_real_parameters(arch: str) -> None:
    assert _strace._rule_problems(arch) == []


# --- signatures and the generator ----------------------------------------------------------------


def test_signatures_per_arch() -> None:
    assert signature("clone", "x86_64") == (
        ("unsigned long", "flags"),
        ("unsigned long", "newsp"),
        ("int __user *", "parent_tidptr"),
        ("int __user *", "child_tidptr"),
        ("unsigned long", "tls"),
    )
    arm = signature("clone", "aarch64")
    assert arm is not None
    assert [p for _, p in arm] == ["flags", "newsp", "parent_tidptr", "tls", "child_tidptr"]
    assert signature("mmap", "aarch64") == signature("mmap", "x86_64")
    mmap = signature("mmap", "x86_64")
    assert mmap is not None
    assert [p for _, p in mmap] == ["addr", "len", "prot", "flags", "fd", "off"]
    assert signature("openat", "x86_64") == (
        ("int", "dfd"),
        ("const char __user *", "filename"),
        ("int", "flags"),
        ("umode_t", "mode"),
    )
    assert signature("arch_prctl", "x86_64") == (("int", "option"), ("unsigned long", "arg2"))
    assert signature("rt_sigreturn", "aarch64") == ()
    # stat is sys_newstat, umount2 is sys_umount: the .tbl entry point picks the prototype.
    stat = signature("stat", "x86_64")
    assert stat is not None and stat[1] == ("struct stat __user *", "statbuf")
    assert signature("umount2", "aarch64") == (("char __user *", "name"), ("int", "flags"))
    assert signature("no_such_call", "x86_64") is None


def test_every_named_syscall_of_interest_has_a_signature() -> None:
    for table in (X86, ARM):
        for name in ("read", "write", "openat", "close", "mmap", "clone", "execve", "futex",
                     "connect", "accept4", "socket", "exit_group", "prctl", "wait4", "kill"):
            assert signature(name, table.arch) is not None, (table.arch, name)


def _load_generator(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT / "tools"))  # it imports gen_syscalls beside it
    spec = importlib.util.spec_from_file_location("gen_signatures", GEN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_generated_file_is_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, str(GEN), "--check"], cwd=ROOT, capture_output=True, text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_generated_banner() -> None:
    first = (ROOT / "tracerd" / "syscalls" / "_signatures.py").read_text().splitlines()[0]
    assert first == (
        "# Generated by tools/gen_signatures.py from include/linux/syscalls.h (Linux 6.1);"
        " do not edit."
    )


def test_check_without_header_is_skipped(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(GEN), "--check", "--header", str(tmp_path / "syscalls.h")],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0
    assert "header not found, skipped" in proc.stderr
    proc = subprocess.run(
        [sys.executable, str(GEN), "--header", str(tmp_path / "syscalls.h")],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 2


@pytest.mark.skipif(not HEADER.exists(), reason="kernel header package not installed")
def test_check_detects_stale_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gen = _load_generator(monkeypatch)
    shutil.copytree(ROOT / "tools" / "syscall-tables", tmp_path / "tools" / "syscall-tables")
    out = tmp_path / "tracerd" / "syscalls" / "_signatures.py"
    out.parent.mkdir(parents=True)
    assert gen.main(["--check"], root=tmp_path) == 1
    assert not out.exists()
    assert gen.main([], root=tmp_path) == 0
    assert out.read_bytes() == (ROOT / "tracerd" / "syscalls" / "_signatures.py").read_bytes()
    assert gen.main(["--check"], root=tmp_path) == 0
    out.write_text(out.read_text().replace('"filename"', '"fliename"', 1))
    capsys.readouterr()
    assert gen.main(["--check"], root=tmp_path) == 1
    assert "tracerd/syscalls/_signatures.py" in capsys.readouterr().err


def test_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = _load_generator(monkeypatch)
    assert gen.parse_param(" const char __user * filename") == ("const char __user *", "filename")
    assert gen.parse_param("const char __user *const __user *argv") == (
        "const char __user *const __user *",
        "argv",
    )
    assert gen.parse_param("unsigned long") == ("unsigned long", "")
    assert gen.parse_param("int __user *") == ("int __user *", "")
    assert gen.parse_param("struct sockaddr __user *") == ("struct sockaddr __user *", "")
    assert gen.parse_param("unsigned nr_reqs") == ("unsigned", "nr_reqs")
    assert gen.parse_param("aio_context_t") == ("aio_context_t", "")

    header = """
/* a comment with asmlinkage long sys_fake(int x); inside */
asmlinkage long sys_openat(int dfd, const char __user *filename, int flags,
\t\t\t   umode_t mode);
asmlinkage long sys_getpid(void);
asmlinkage long sys_bind(int, struct sockaddr __user *, int);
#ifdef A
asmlinkage long sys_twice(int a);
#else
asmlinkage long sys_twice(long a);
#endif
"""
    protos = gen.parse_header(header)
    assert set(protos) == {"sys_openat", "sys_getpid", "sys_bind", "sys_twice"}
    assert protos["sys_openat"] == [
        (("int", "dfd"), ("const char __user *", "filename"), ("int", "flags"),
         ("umode_t", "mode")),
    ]
    assert protos["sys_getpid"] == [()]
    # Unnamed parameters take their kernel names from the override table.
    assert gen.resolve(protos, "x86_64", "sys_bind") == (
        ("int", "fd"), ("struct sockaddr __user *", "umyaddr"), ("int", "addrlen"),
    )
    with pytest.raises(gen.HeaderError, match="sys_twice is declared 2 times"):
        gen.resolve(protos, "x86_64", "sys_twice")
    assert gen.resolve(protos, "aarch64", "sys_clone")[3] == ("unsigned long", "tls")
    assert gen.resolve(protos, "x86_64", "sys_nothing") is None
    with pytest.raises(gen.HeaderError, match="no 'asmlinkage"):
        gen.parse_header("int main(void);")


def test_align_pads_to_column_40_like_strace() -> None:
    from tracerd.model import SyscallEvent  # noqa: PLC0415
    from tracerd.syscalls import table_for  # noqa: PLC0415

    table = table_for("x86_64")
    ev = SyscallEvent(start_ns=0, end_ns=4000, pid=1, tid=1, nr=table.number("close") or 0,
                      ret=0, args=(3, 0, 0, 0, 0, 0))
    line = _strace.format_event(ev, table, align=True)
    assert line == "close(3)" + " " * 31 + " = 0 <0.000004>"
    assert line.index("=") == 40
    assert _strace.format_event(ev, table) == "close(3) = 0 <0.000004>"
