"""The command line as a user meets it: output channels, exit statuses, errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TRACERD, tracerd


def test_cmd_stdout_untouched_summary_on_stderr() -> None:
    proc = tracerd("run", "--", sys.executable, "-c", "print(1)")
    assert proc.returncode == 0
    assert proc.stdout == "1\n"
    lines = proc.stderr.splitlines()
    assert lines[0].split() == ["%", "time", "seconds", "usecs/call", "calls", "errors", "syscall"]
    assert lines[-1].split()[-1] == "total"


def test_output_file_and_exit_status(tmp_path: Path) -> None:
    out = tmp_path / "summary.txt"
    proc = tracerd("run", "-o", str(out), "--", "sh", "-c", "exit 42")
    assert proc.returncode == 42
    assert proc.stderr == ""
    assert "exit_group" in out.read_text()


def test_duration_writes_summary_then_returns_cmd_status(tmp_path: Path) -> None:
    out = tmp_path / "summary.txt"
    proc = subprocess.Popen([*TRACERD, "run", "--duration", "0.5",
                             "-o", str(out), "--", "sh", "-c", "sleep 3; exit 4"],
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    # The summary is final when the limit hits, while CMD is still running.
    assert proc.stderr.readline() == "tracerd: tracing stopped early: duration limit reached\n"
    assert proc.poll() is None
    assert "total" in out.read_text()
    assert proc.wait(timeout=30) == 4


def test_under_sudo_cmd_runs_as_the_invoking_user() -> None:
    env = {**os.environ, "SUDO_UID": "65534", "SUDO_GID": "65534"}
    proc = tracerd("run", "--", "id", "-u", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "65534\n"


def test_syscall_filter_by_class(tmp_path: Path) -> None:
    proc = tracerd("run", "-e", "trace=%file", "--", "cat", "/etc/hostname")
    names = {line.split()[-1] for line in proc.stderr.splitlines()[2:-2]}
    assert "openat" in names
    assert not names & {"read", "write", "mmap", "exit_group"}


def test_attach_to_running_process(tmp_path: Path) -> None:
    go = tmp_path / "go"
    target = subprocess.Popen(
        ["sh", "-c", f"until [ -e {go} ]; do sleep 0.05; done; for i in 1 2 3; do /bin/true; done"])
    tracer = subprocess.Popen([*TRACERD, "run", "--per-process",
                               "-p", str(target.pid)], stderr=subprocess.PIPE, text=True)
    assert tracer.stderr is not None
    assert tracer.stderr.readline() == f"tracerd: Process {target.pid} attached\n"
    go.touch()
    target.wait(timeout=30)
    _, err = tracer.communicate(timeout=30)
    assert tracer.returncode == 0, err
    # The three /bin/true children were forked after attaching: each is reported.
    assert err.count("(true)") == 3


def test_attach_to_exited_process_is_refused() -> None:
    zombie = subprocess.Popen(["true"])
    stat = Path(f"/proc/{zombie.pid}/stat")
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
        pass
    proc = tracerd("run", "-p", str(zombie.pid), timeout=30)
    zombie.wait()
    assert proc.returncode == 67 and "no such process" in proc.stderr


@pytest.mark.parametrize(("mode", "content", "status", "text"), [
    (None, None, 127, "command not found"),
    (0o644, b"#!/bin/sh\n", 126, "permission denied"),
    (0o755, b"\x00\x01garbage", 126, "Exec format error"),
])
def test_command_errors(tmp_path: Path, mode: int | None, content: bytes | None, status: int,
                        text: str) -> None:
    cmd = "no-such-command-xyz"
    if mode is not None and content is not None:
        path = tmp_path / "cmd"
        path.write_bytes(content)
        path.chmod(mode)
        cmd = str(path)
    proc = tracerd("run", "--", cmd)
    assert proc.returncode == status
    assert proc.stderr.count("\n") == 1 and text in proc.stderr


@pytest.mark.parametrize("flag", [["--events"], ["--budget", "x.toml"], ["--save-golden", "g"],
                                  ["--against", "g"], ["--percentiles"]])
def test_count_only_refuses_what_needs_times_or_returns(flag: list[str]) -> None:
    proc = tracerd("run", "--count-only", *flag, "--", "true")
    assert proc.returncode == 2
    assert proc.stderr == f"tracerd: --count-only measures calls only: not with {flag[0]}\n"


def test_unknown_syscall_is_a_usage_error() -> None:
    proc = tracerd("run", "-e", "opne", "--", "true")
    assert proc.returncode == 2
    assert "opne" in proc.stderr and proc.stderr.count("\n") == 1


def test_no_such_pid() -> None:
    proc = tracerd("run", "-p", "4000000")
    assert proc.returncode == 67
    assert proc.stderr.startswith("tracerd: no such process")


def test_without_bpf_capabilities_is_refused() -> None:
    # uid 0 with an empty capability set, as in an unprivileged container: what counts
    # is CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN), not the uid.
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is part of every Debian install"
    proc = subprocess.run(
        [setpriv, "--bounding-set=-all", "--inh-caps=-all",
         *TRACERD, "run", "--", "true"],
        capture_output=True, text=True, cwd=ROOT, check=False, timeout=60)
    assert proc.returncode == 77, proc.stderr
    assert proc.stderr.count("\n") == 1 and "root" in proc.stderr


def test_missing_bcc_names_the_os_package() -> None:
    code = ("import sys; sys.modules['bcc'] = None; from tracerd._cli import main; "
            "sys.exit(main(['run', '--', 'true']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, check=False, timeout=60)
    assert proc.returncode == 78
    assert "python3-bpfcc" in proc.stderr and proc.stderr.count("\n") == 1


def test_missing_kernel_headers_say_how_to_fix() -> None:
    # A private mount namespace hides /lib/modules from this one run only.
    env = {k: v for k, v in os.environ.items() if k != "BCC_KERNEL_SOURCE"}
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         f"mount -t tmpfs none /lib/modules && exec {sys.executable} -m tracerd run -- true"],
        capture_output=True, text=True, cwd=ROOT, env=env, check=False, timeout=60)
    assert proc.returncode == 72, proc.stderr
    assert "make setup" in proc.stderr and proc.stderr.count("\n") == 1
