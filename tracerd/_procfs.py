"""Best-effort reads of /proc: every one of them races with the process exiting.

Callers treat ``None`` (or an empty value) as "gone or unknown" and decide what that
means; nothing here raises for a vanished process.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import NamedTuple

_PF_EXITING = 0x4  # include/linux/sched.h: getting shut down


class ProcStat(NamedTuple):
    state: str  #: R, S, D, T, t, Z, X...
    ppid: int
    flags: int  #: PF_* (task->flags)

    @property
    def live(self) -> bool:
        """Neither a zombie nor being torn down: PF_EXITING is set when the kernel's exit
        hook runs, which can precede the zombie state by a while (files are closed in
        between), so a flag set after it would never be cleared by that exit."""
        return self.state not in ("Z", "X") and not self.flags & _PF_EXITING


def cmdline(pid: int) -> list[str] | None:
    """argv of a live process; None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def stat(pid: int) -> ProcStat | None:
    """State, ppid and flags; None if the process is gone."""
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return ProcStat(rest[0], int(rest[1]), int(rest[6]))
    except (OSError, IndexError, ValueError):
        return None


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not exiting (a zombie never exits again)."""
    st = stat(pid)
    return st is not None and st.live


def uid(pid: int) -> int | None:
    """Real uid."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def cgroup(pid: int | str) -> str:
    """cgroup v2 path relative to the cgroup root, "" if unknown."""
    try:
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:]
    except OSError:
        pass
    return ""


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (of all its threads)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def cgroup2_root() -> Path | None:
    """Where the cgroup v2 (unified) hierarchy is mounted: /sys/fs/cgroup on a pure v2
    system, often /sys/fs/cgroup/unified on a hybrid one; None without cgroup v2."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return Path(left.split()[4].replace("\\040", " "))
    return None


def vm_hwm_bytes(pid: int) -> int | None:
    """Peak RSS so far (VmHWM) in bytes; None if the process is gone, or has no mm (a
    kernel thread, a zombie: the line is absent). Once it is gone, see _taskstats."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                value, unit = line.split()[1:3]
                return int(value) * 1024 if unit == "kB" else None
    except (OSError, ValueError):
        pass
    return None


def exec_path(pid: int, filename: str) -> str | None:
    """The absolute path of an exec'd ``filename`` (as given to execve): a relative one
    is taken from the process's working directory. None when the process has exited
    (its directory is gone with it); "" when it may not be read (another user's process
    and no CAP_SYS_PTRACE): unknown, which matches no path."""
    if filename.startswith("/"):
        return os.path.normpath(filename)
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return ""
    return os.path.normpath(os.path.join(cwd, filename))
