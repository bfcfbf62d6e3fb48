"""Syscall numbers, names and strace-style classes for the architectures tracerd supports.

The number <-> name tables are generated from the kernel's own syscall lists by
``tools/gen_syscalls.py`` (see ``tools/syscall-tables/README.md``). Numbers differ between
architectures (``read`` is 0 on x86_64 and 63 on aarch64), so every lookup goes through
the table of one architecture, by default the one this process runs on.

Classes follow strace's ``-e trace=%class`` sets and are defined by syscall *name*, then
intersected with an architecture's table. ``%file`` therefore means "syscalls that take a
file name" on both architectures even though aarch64 only has the ``*at`` variants.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from . import _aarch64, _arm32, _i386, _x86_64

__all__ = [
    "ARCHES",
    "CLASSES",
    "COMPAT_BIT",
    "SyscallTable",
    "UnknownSyscall",
    "UnsupportedArch",
    "current_arch",
    "resolve",
    "table_for",
]

ARCHES: tuple[str, ...] = ("x86_64", "aarch64")

# os.uname().machine spellings -> canonical arch. BSD-style names are accepted too, since
# users and container images sometimes report those.
_MACHINE_ALIASES: Mapping[str, str] = MappingProxyType(
    {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
)

_RAW_NAMES: Mapping[str, Mapping[int, str]] = MappingProxyType(
    {"x86_64": _x86_64.NAMES, "aarch64": _aarch64.NAMES}
)


#: Set in a counted syscall number when the call was made by a 32-bit compat task (ia32 on
#: x86_64, AArch32 on arm64): the rest is then a number of the compat table. The kernel side
#: sets it (COMPAT_BIT in bpf/syscount.h); no native number comes near it.
COMPAT_BIT = 0x4000

# The compat ABI each 64-bit architecture serves, and its table.
_COMPAT: Mapping[str, tuple[str, Mapping[int, str]]] = MappingProxyType(
    {"x86_64": ("ia32", _i386.NAMES), "aarch64": ("arm32", _arm32.NAMES)}
)


class UnsupportedArch(ValueError):
    """The machine (or the requested arch) has no syscall table here."""


class UnknownSyscall(ValueError):
    """A syscall filter named something that is neither a syscall nor a class on the arch."""


def _canonical_arch(machine: str) -> str:
    try:
        return _MACHINE_ALIASES[machine]
    except KeyError:
        raise UnsupportedArch(
            f"unsupported architecture {machine!r}; supported: {', '.join(ARCHES)}"
        ) from None


def current_arch() -> str:
    """The arch of the running kernel, e.g. ``"x86_64"``; raises UnsupportedArch otherwise."""
    return _canonical_arch(os.uname().machine)


@dataclass(frozen=True)
class SyscallTable:
    """Number <-> name mapping of one architecture's native 64-bit syscalls, and of the
    32-bit compat calls its kernel serves (numbers with COMPAT_BIT, named ``ABI:name``,
    e.g. ``ia32:getppid``, so they never pass for the native call of the same number)."""

    arch: str
    # Identity is the arch alone: there is one table per arch, and a dict field would make
    # the frozen dataclass unhashable.
    _names: Mapping[int, str] = field(repr=False, compare=False)
    compat_abi: str = ""  #: "ia32", "arm32", or "" when the arch has no compat table here
    _compat_names: Mapping[int, str] = field(default_factory=dict, repr=False, compare=False)
    _numbers: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = MappingProxyType(dict(sorted(self._names.items())))
        object.__setattr__(self, "_names", names)
        numbers = {v: k for k, v in names.items()}
        numbers |= {f"{self.compat_abi}:{v}": k | COMPAT_BIT
                    for k, v in self._compat_names.items()}
        object.__setattr__(self, "_numbers", MappingProxyType(numbers))

    def name(self, nr: int) -> str:
        """Name of syscall ``nr``; unknown numbers get strace's ``syscall_<nr>`` spelling
        (compat ones prefixed with their ABI)."""
        if COMPAT_BIT <= nr < 2 * COMPAT_BIT and self.compat_abi:
            base = nr & ~COMPAT_BIT
            return f"{self.compat_abi}:{self._compat_names.get(base, f'syscall_{base}')}"
        return self._names.get(nr, f"syscall_{nr}")

    def number(self, name: str) -> int | None:
        """Number of syscall ``name`` on this arch (``ABI:name`` for a compat call), or
        None if this arch has no such call."""
        return self._numbers.get(name)

    def numbers(self) -> list[int]:
        """All known syscall numbers, ascending."""
        return list(self._names)

    def max_nr(self) -> int:
        """Highest known syscall number (sizes per-number arrays, e.g. BPF maps)."""
        return max(self._names)


@functools.cache
def _load(arch: str) -> SyscallTable:
    abi, compat = _COMPAT.get(arch, ("", {}))
    return SyscallTable(arch, _RAW_NAMES[arch], abi, compat)


def table_for(arch: str | None = None) -> SyscallTable:
    """The table for ``arch`` (default: the running machine's); one shared object per arch."""
    return _load(current_arch() if arch is None else _canonical_arch(arch))


# --- classes -------------------------------------------------------------------------------

CLASSES: tuple[str, ...] = (
    "file",
    "network",
    "process",
    "memory",
    "signal",
    "ipc",
    "desc",
    "creds",
)

# Membership is by name and spans both arches (and a few names newer than our tables, so a
# table refresh picks them up without touching this list); each arch only sees the names
# its table has. The sets follow strace's TF/TN/TP/TM/TS/TI/TD/TC syscall flags.
_CLASS_MEMBERS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        # Takes a file name (path) argument.
        "file": frozenset(
            {
                "access", "acct", "chdir", "chmod", "chown", "chroot", "creat", "execve",
                "execveat", "faccessat", "faccessat2", "fanotify_mark", "fchmodat",
                "fchmodat2", "fchownat", "file_getattr", "file_setattr", "fsconfig",
                "fspick", "futimesat", "getcwd", "getxattr", "getxattrat",
                "inotify_add_watch", "lchown", "lgetxattr", "link", "linkat", "listxattr",
                "listxattrat", "llistxattr", "lremovexattr", "lsetxattr", "lstat", "mkdir",
                "mkdirat", "mknod", "mknodat", "mount", "mount_setattr", "move_mount",
                "name_to_handle_at", "newfstatat", "open", "open_tree", "open_tree_attr",
                "openat", "openat2", "pivot_root", "quotactl", "readlink", "readlinkat",
                "removexattr", "removexattrat", "rename", "renameat", "renameat2", "rmdir",
                "setxattr", "setxattrat", "stat", "statfs", "statx", "swapoff", "swapon",
                "symlink", "symlinkat", "truncate", "umount2", "unlink", "unlinkat",
                "uselib", "utime", "utimensat", "utimes",
            }
        ),
        # Socket related.
        "network": frozenset(
            {
                "accept", "accept4", "bind", "connect", "getpeername", "getpmsg",
                "getsockname", "getsockopt", "listen", "putpmsg", "recvfrom", "recvmmsg",
                "recvmsg", "sendfile", "sendmmsg", "sendmsg", "sendto", "setsockopt",
                "shutdown", "socket", "socketpair",
            }
        ),
        # Process lifecycle: creation, exec, exit, reaping, and sending signals to others.
        "process": frozenset(
            {
                "clone", "clone3", "execve", "execveat", "exit", "exit_group", "fork",
                "kill", "pidfd_send_signal", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
                "tgkill", "tkill", "vfork", "wait4", "waitid",
            }
        ),
        # Memory mapping and memory policy.
        "memory": frozenset(
            {
                "brk", "get_mempolicy", "io_destroy", "io_setup", "io_uring_register",
                "madvise", "map_shadow_stack", "mbind", "migrate_pages", "mincore",
                "mlock", "mlock2", "mlockall", "mmap", "move_pages", "mprotect", "mremap",
                "mseal", "msync", "munlock", "munlockall", "munmap", "pkey_mprotect",
                "remap_file_pages", "set_mempolicy", "set_mempolicy_home_node", "shmat",
                "shmdt",
            }
        ),
        "signal": frozenset(
            {
                "io_uring_enter", "kill", "pause", "pidfd_send_signal", "rt_sigaction",
                "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn",
                "rt_sigsuspend", "rt_sigtimedwait", "rt_tgsigqueueinfo", "sigaltstack",
                "signalfd", "signalfd4", "tgkill", "tkill",
            }
        ),
        # SysV IPC only; POSIX message queues (mq_*) are descriptors, as in strace.
        "ipc": frozenset(
            {
                "msgctl", "msgget", "msgrcv", "msgsnd", "semctl", "semget", "semop",
                "semtimedop", "shmat", "shmctl", "shmdt", "shmget",
            }
        ),
        # Takes or returns a file descriptor.
        "desc": frozenset(
            {
                "bpf", "cachestat", "close", "close_range", "copy_file_range", "creat",
                "dup", "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl",
                "epoll_pwait", "epoll_pwait2", "epoll_wait", "eventfd", "eventfd2",
                "execveat", "faccessat", "faccessat2", "fadvise64", "fallocate",
                "fanotify_init", "fanotify_mark", "fchdir", "fchmod", "fchmodat",
                "fchmodat2", "fchown", "fchownat", "fcntl", "fdatasync", "fgetxattr",
                "file_getattr", "file_setattr", "finit_module", "flistxattr", "flock",
                "fremovexattr", "fsconfig", "fsetxattr", "fsmount", "fsopen", "fspick",
                "fstat", "fstatfs", "fsync", "ftruncate", "futimesat", "getdents",
                "getdents64", "getxattrat", "inotify_add_watch", "inotify_init",
                "inotify_init1", "inotify_rm_watch", "io_uring_enter", "io_uring_register",
                "io_uring_setup", "ioctl", "kexec_file_load", "landlock_add_rule",
                "landlock_create_ruleset", "landlock_restrict_self", "linkat",
                "listxattrat", "lseek", "memfd_create", "memfd_secret", "mkdirat",
                "mknodat", "mmap", "mount_setattr", "move_mount", "mq_getsetattr",
                "mq_notify", "mq_open", "mq_timedreceive", "mq_timedsend",
                "name_to_handle_at", "newfstatat", "open", "open_by_handle_at",
                "open_tree", "open_tree_attr", "openat", "openat2", "perf_event_open",
                "pidfd_getfd", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "poll",
                "ppoll", "pread64", "preadv", "preadv2", "process_madvise",
                "process_mrelease", "pselect6", "pwrite64", "pwritev", "pwritev2",
                "quotactl_fd", "read", "readahead", "readlinkat", "readv", "removexattrat",
                "renameat", "renameat2", "select", "sendfile", "setns", "setxattrat",
                "signalfd", "signalfd4", "splice", "statx", "symlinkat", "sync_file_range",
                "syncfs", "tee", "timerfd_create", "timerfd_gettime", "timerfd_settime",
                "unlinkat", "userfaultfd", "utimensat", "vmsplice", "write", "writev",
            }
        ),
        # User/group ids and capabilities. prctl is here as in strace: it manages the
        # capability bounding/ambient sets and keep-caps.
        "creds": frozenset(
            {
                "capget", "capset", "getegid", "geteuid", "getgid", "getgroups",
                "getresgid", "getresuid", "getuid", "prctl", "setfsgid", "setfsuid",
                "setgid", "setgroups", "setregid", "setresgid", "setresuid", "setreuid",
                "setuid",
            }
        ),
    }
)


def _resolve_item(item: str, table: SyscallTable) -> frozenset[int]:
    """Numbers for one name, ``class`` or ``%class`` on ``table``'s arch."""
    if item.startswith("%"):
        members = _CLASS_MEMBERS.get(item[1:])
    else:
        nr = table.number(item)
        if nr is not None:
            return frozenset({nr})
        # A bare class name is accepted as strace does; a syscall of the same name, were
        # one ever added, would win above.
        members = _CLASS_MEMBERS.get(item)
    if members is not None:
        return frozenset(nr for nr in map(table.number, members) if nr is not None)

    message = f"unknown syscall or class {item!r} on {table.arch}"
    # Say when the name is valid elsewhere: "open" on aarch64 is a portability mistake
    # (use openat or %file), not a typo, and the fix is different.
    elsewhere = [a for a in ARCHES if a != table.arch and table_for(a).number(item) is not None]
    if elsewhere:
        message += f" (it exists on {', '.join(elsewhere)} only)"
    raise UnknownSyscall(message)


def resolve(spec: Iterable[str], arch: str | None = None) -> frozenset[int]:
    """Syscall numbers selected by a strace-like filter, on ``arch`` (default: this machine).

    Each item is a syscall name, a class (``file`` or ``%file``) or a comma-separated list
    of those; surrounding whitespace and empty list entries are ignored. Raises
    UnknownSyscall naming the first bad item and the arch.
    """
    table = table_for(arch)
    # A lone string is one spec, not an iterable of one-letter specs.
    items = [spec] if isinstance(spec, str) else spec
    parts = [part.strip() for item in items for part in item.split(",")]
    selected: set[int] = set()
    for part in parts:
        if part:
            selected |= _resolve_item(part, table)
    return frozenset(selected)
