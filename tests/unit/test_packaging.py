"""The systemd unit and the container image, checked statically.

`make packaging-check` runs systemd-analyze verify and hadolint on them; these tests
hold the content: the unit keeps its hardening (dropping a line fails here), its
capabilities are exactly the justified ones, and its names agree with the daemon's
defaults; the Dockerfile copies only what exists and what .dockerignore lets through,
installs the project with BCC from Debian, and runs `tracerd serve`. No container
engine runs in CI, so nothing here builds the image.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from tracerd import _errors
from tracerd._cli import build_parser
from tracerd._config import DEFAULT_CONFIG, DEFAULT_SOCKET, DEFAULT_STATE_DIR

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "tracerd.service"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


# ---------------------------------------------------------------------- systemd unit


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file, each a list of (key, value) in order (keys repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"not a key=value line in a section: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, list[tuple[str, str]]]:
    return parse_unit(UNIT.read_text())


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= should be set once, found {found}"
    return found[0]


def words(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> set[str]:
    return {w for v in values(unit, section, key) for w in v.split()}


def test_parser_reads_sections_repeats_and_continuations() -> None:
    got = parse_unit("# c\n[A]\nX=1\n; c\nX = 2\nY=a \\\n  b\n[B]\nZ=\n")
    assert got == {"A": [("X", "1"), ("X", "2"), ("Y", "a  b")], "B": [("Z", "")]}


def test_unit_has_its_sections(unit: dict[str, list[tuple[str, str]]]) -> None:
    assert {"Unit", "Service", "Install"} <= set(unit)
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_notify_readiness_from_the_main_process(unit: dict[str, list[tuple[str, str]]]) -> None:
    # The daemon sends READY=1 itself (tracerd._server._sd_notify) from its main process.
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"


def test_exec_start_serves_and_parses(unit: dict[str, list[tuple[str, str]]]) -> None:
    argv = shlex.split(one(unit, "Service", "ExecStart"))
    assert argv[:2] == ["/usr/local/bin/tracerd", "serve"]
    args = build_parser().parse_args(argv[1:])  # flags added later must still parse
    assert args.func.__name__ == "_cmd_serve"


def test_reload_is_sighup_to_the_daemon(unit: dict[str, list[tuple[str, str]]]) -> None:
    argv = shlex.split(one(unit, "Service", "ExecReload"))
    assert Path(argv[0]).name == "kill"
    assert argv[1:] == ["-HUP", "$MAINPID"]


def test_directories_are_the_daemons_defaults(unit: dict[str, list[tuple[str, str]]]) -> None:
    # systemd creates /run/<RuntimeDirectory> and /var/lib/<StateDirectory>, writable
    # under ProtectSystem=strict: they must be where the daemon puts its socket and
    # history by default.
    assert Path("/run") / one(unit, "Service", "RuntimeDirectory") == Path(DEFAULT_SOCKET).parent
    assert Path("/var/lib") / one(unit, "Service", "StateDirectory") == Path(DEFAULT_STATE_DIR)
    assert one(unit, "Service", "StateDirectoryMode") == "0700"
    # Not world-accessible: the daemon refuses a world-writable socket directory, and
    # gives it the socket group itself.
    assert int(one(unit, "Service", "RuntimeDirectoryMode"), 8) & 0o007 == 0
    assert DEFAULT_CONFIG in UNIT.read_text(), "the unit should tell where the config lives"


HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "PrivateMounts": "yes",
    "ProtectHome": "read-only",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "PrivateIPC": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "SystemCallErrorNumber": "EPERM",
    "UMask": "0077",
    "LimitMEMLOCK": "infinity",
    "LimitCORE": "0",
    "Restart": "on-failure",
}


@pytest.mark.parametrize(("key", "value"), sorted(HARDENING.items()))
def test_hardening_directive(unit: dict[str, list[tuple[str, str]]], key: str,
                             value: str) -> None:
    assert one(unit, "Service", key) == value


# Each one is needed (tried without it) and explained in the unit; see its comments.
CAPABILITIES = {"CAP_BPF", "CAP_PERFMON", "CAP_KILL", "CAP_NET_ADMIN", "CAP_CHOWN"}


def test_capabilities_are_exactly_the_justified_ones(
        unit: dict[str, list[tuple[str, str]]]) -> None:
    caps = words(unit, "Service", "CapabilityBoundingSet")
    assert caps == CAPABILITIES
    assert "CAP_SYS_ADMIN" not in caps
    # The daemon runs as root: ambient capabilities are for a non-root User= only.
    assert not values(unit, "Service", "User")
    assert not values(unit, "Service", "AmbientCapabilities")


def test_every_capability_has_its_reason_in_a_comment() -> None:
    comments = "\n".join(line for line in UNIT.read_text().splitlines()
                         if line.lstrip().startswith("#"))
    for cap in sorted(CAPABILITIES):
        assert re.search(rf"^#\s+(\S+,\s*)*{cap}\b", comments, re.M), f"why {cap}?"


def test_what_the_daemon_needs_stays_reachable(unit: dict[str, list[tuple[str, str]]]) -> None:
    # /proc of every traced process, of every user, and /proc/sys/kernel/pid_max.
    assert values(unit, "Service", "ProtectProc") in ([], ["default"])
    assert values(unit, "Service", "ProcSubset") in ([], ["all"])
    # Kernel headers under /usr/lib/modules, which ProtectKernelModules=yes hides.
    assert values(unit, "Service", "ProtectKernelModules") in ([], ["no"])
    # bpf(2) and perf_event_open(2) are outside @system-service.
    assert {"@system-service", "bpf", "perf_event_open"} <= words(
        unit, "Service", "SystemCallFilter")
    # Netlink (taskstats), Unix (socket, sd_notify), IP (listeners, /metrics, OTLP).
    assert words(unit, "Service", "RestrictAddressFamilies") == {
        "AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    # Not a private network: taskstats and the TCP listeners need the host's.
    assert values(unit, "Service", "PrivateNetwork") in ([], ["no"])
    assert values(unit, "Service", "PrivateUsers") in ([], ["no"])
    # tracefs, which the daemon can no longer mount itself.
    assert "sys-kernel-tracing.mount" in words(unit, "Unit", "After")


def test_restart_prevented_only_for_real_exit_statuses(
        unit: dict[str, list[tuple[str, str]]]) -> None:
    statuses = {int(s) for s in words(unit, "Service", "RestartPreventExitStatus")}
    assert statuses == {_errors.EXIT_USAGE, _errors.EXIT_DATAERR, _errors.EXIT_NOINPUT,
                        _errors.EXIT_NO_HEADERS, _errors.EXIT_NO_PRIVILEGE,
                        _errors.EXIT_NO_BCC}


# ---------------------------------------------------------------------- Dockerfile


def parse_dockerfile(text: str) -> list[list[tuple[str, str]]]:
    """Stages (before the first FROM: the global ARGs), each a list of (INSTRUCTION,
    arguments), continuation lines joined and comments dropped."""
    stages: list[list[tuple[str, str]]] = [[]]
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not logical):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        instr, _, args = logical.partition(" ")
        logical = ""
        if instr.upper() == "FROM":
            stages.append([])
        stages[-1].append((instr.upper(), " ".join(args.split())))
    assert not logical, "Dockerfile ends inside a continued line"
    return stages


@pytest.fixture(scope="module")
def stages() -> list[list[tuple[str, str]]]:
    found = parse_dockerfile(DOCKERFILE.read_text())
    assert len(found) >= 2, "no FROM"
    return found[1:]


def instructions(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [a for i, a in stage if i == name]


def copy_sources(args: str) -> tuple[list[str], str]:
    parts = [p for p in args.split() if not p.startswith("--")]
    return parts[:-1], parts[-1]


def test_dockerfile_parser() -> None:
    got = parse_dockerfile("ARG A=1\n# c\nFROM x AS y\nRUN a \\\n  # c\n  && b\n")
    assert got == [[("ARG", "A=1")], [("FROM", "x AS y"), ("RUN", "a && b")]]


def test_every_copied_path_exists(stages: list[list[tuple[str, str]]]) -> None:
    copied = [src for stage in stages for args in instructions(stage, "COPY")
              if "--from=" not in args for src in copy_sources(args)[0]]
    assert copied
    for src in copied:
        assert (ROOT / src).exists(), f"COPY {src}: no such path in the repository"


def test_what_pip_install_needs_is_copied(stages: list[list[tuple[str, str]]]) -> None:
    copied = {Path(src) for stage in stages for args in instructions(stage, "COPY")
              if "--from=" not in args for src in copy_sources(args)[0]}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = [Path("pyproject.toml"), Path(project["project"]["readme"]), Path("tracerd")]
    for files in project["tool"]["setuptools"]["data-files"].values():
        needed += [Path(f) for f in files]  # the BPF sources the daemon compiles
    for path in needed:
        assert any(path == c or c in path.parents for c in copied), f"{path} not copied"


def ignore_patterns(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore lines as (is_exception, regex), with Docker's matching: `*` and `?`
    stay within one path element, `**` spans any number, a leading / is dropped."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rx, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif pattern[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif pattern[i] == "?":
                rx, i = rx + "[^/]", i + 1
            else:
                rx, i = rx + re.escape(pattern[i]), i + 1
        out.append((neg, re.compile(rx)))
    return out


def ignored(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves ``path`` out of the context: the last pattern that matches
    it, or one of its parent directories, decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for neg, rx in patterns:
        if any(rx.fullmatch(p) for p in prefixes):
            result = not neg
    return result


def test_dockerignore_matcher() -> None:
    pats = ignore_patterns("*\n!src\n**/__pycache__\n")
    assert ignored("x.txt", pats)
    assert ignored("x/y", pats)
    assert not ignored("src/a/b.py", pats)
    assert ignored("src/a/__pycache__/b.pyc", pats)


def source_files(top: Path) -> list[Path]:
    """``top`` itself, or the files under it, Python's bytecode caches left out."""
    if top.is_file():
        return [top]
    out = []
    for d, dirs, files in os.walk(top):
        dirs[:] = [x for x in dirs if x != "__pycache__"]
        out += [Path(d) / f for f in files if not f.endswith(".pyc")]
    return out


def test_dockerignore_lets_the_copied_files_through(
        stages: list[list[tuple[str, str]]]) -> None:
    pats = ignore_patterns(DOCKERIGNORE.read_text())
    for stage in stages:
        for args in instructions(stage, "COPY"):
            if "--from=" in args:
                continue
            for src in copy_sources(args)[0]:
                files = source_files(ROOT / src)
                assert files, src
                for f in files:
                    rel = f.relative_to(ROOT).as_posix()
                    assert not ignored(rel, pats), f".dockerignore drops {rel}, which is copied"
    for junk in (".venv/bin/python", ".git/HEAD", "tests/unit/test_packaging.py",
                 "tracerd/__pycache__/x.pyc"):
        assert ignored(junk, pats), f"{junk} would be sent to the build"


def test_runtime_runs_the_daemon(stages: list[list[tuple[str, str]]]) -> None:
    final = stages[-1]
    entry = json.loads(instructions(final, "ENTRYPOINT")[-1])
    cmd = json.loads(instructions(final, "CMD")[-1])
    assert entry == ["tracerd"]
    assert cmd == ["serve"]
    assert build_parser().parse_args(entry[1:] + cmd).func.__name__ == "_cmd_serve"
    # BPF needs root: the runtime stage does not switch to another user.
    assert all(u.split(":")[0] in ("root", "0") for u in instructions(final, "USER"))


def test_healthcheck_is_a_real_client_command(stages: list[list[tuple[str, str]]]) -> None:
    check = instructions(stages[-1], "HEALTHCHECK")[-1]
    _, sep, cmd = check.partition("CMD ")
    argv = json.loads(cmd)
    assert sep and argv[0] == "tracerd"
    args = build_parser().parse_args(argv[1:])
    assert args.func.__name__ == "_cmd_list"


def test_bcc_from_debian_and_the_project_from_source(
        stages: list[list[tuple[str, str]]]) -> None:
    final_runs = " ".join(instructions(stages[-1], "RUN"))
    assert re.search(r"apt-get install [^&]*\bpython3-bpfcc\b", final_runs)
    venv_runs = [r for stage in stages for r in instructions(stage, "RUN")
                 if "-m venv" in r]
    assert len(venv_runs) == 1
    run = venv_runs[0]
    # bcc comes from python3-bpfcc through the system site-packages, the project and
    # its dependencies (pyproject.toml) from `pip install .`.
    venv = re.search(r"-m venv --system-site-packages (\S+)", run)
    assert venv, run
    assert re.search(rf"{re.escape(venv.group(1))}/bin/pip install [^&]*\s\.(\s|$)", run)
    copied = [copy_sources(a) for a in instructions(stages[-1], "COPY") if "--from=" in a]
    assert ([venv.group(1)], venv.group(1)) in copied, "the venv keeps its path"
    assert any(f"{venv.group(1)}/bin" in e for e in instructions(stages[-1], "ENV"))


def test_the_build_runs_unprivileged(stages: list[list[tuple[str, str]]]) -> None:
    for stage in stages:
        user = "root"
        for instr, args in stage:
            if instr == "USER":
                user = args.split(":")[0]
            if instr == "RUN" and "pip install" in args:
                assert user not in ("root", "0"), "pip install runs as root"
                return
    pytest.fail("no RUN with pip install")


def test_docker_run_is_documented() -> None:
    header = "\n".join(line for line in DOCKERFILE.read_text().splitlines()
                       if line.startswith("#"))
    for flag in ("docker run", "--privileged", "--pid=host", "-v /sys/kernel:/sys/kernel",
                 "-v /lib/modules:/lib/modules:ro", "-v /usr/src:/usr/src:ro",
                 "-v /run/tracerd:/run/tracerd"):
        assert flag in header, f"the run line lacks {flag}"
