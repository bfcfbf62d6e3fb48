"""Daemon configuration and access tokens: parsing and validation only (no grpc, no bcc).

Config file (TOML, every key optional; command-line flags override it)::

    socket = "/run/tracerd/tracerd.sock"   # Unix socket; "" disables it
    socket_group = "tracerd"               # group allowed to connect (mode 0660)
    listen = ["0.0.0.0:7345"]              # TCP listeners: TLS unless insecure
    tls_cert = "/etc/tracerd/server.pem"
    tls_key = "/etc/tracerd/server.key"
    tls_client_ca = "/etc/tracerd/ca.pem"  # set: mTLS, clients must present a certificate
    insecure = false                       # plaintext TCP, loopback addresses only
    tokens = "/etc/tracerd/tokens.toml"
    log_level = "info"
    state_dir = "/var/lib/tracerd"         # history.sqlite3 lives here; "" keeps no history
    metrics = "127.0.0.1:9464"             # Prometheus /metrics (plain HTTP); unset: none
    [limits]
    max_sessions = 64                      # and the other HubLimits fields, max_message_bytes
    max_stats = 65536                      # kernel: (process, syscall) counters
    max_blocks = 256                       # kernel: counter blocks (0: none); unset: by memory
    ringbuf_pages = 64                     # kernel: lifecycle event ring (a power of 2)
    [history]
    max_age_days = 30                      # finished sessions older than this are deleted
    max_sessions = 100000                  # and beyond this many, the oldest
    [otlp]                                 # export finished sessions (traces) and metrics
    endpoint = "collector:4317"            # OTLP/gRPC
    insecure = false                       # plaintext; else TLS (ca_file, or system roots)
    ca_file = "/etc/tracerd/otlp-ca.pem"
    headers = { authorization = "Bearer ..." }
    service_name = "tracerd"
    metrics_interval_s = 60                # 0: traces only

    [[rule]]                               # watch rule: a session for every matching exec
    name = "deploy"                        # unique; the `rule` label of metrics
    path = "/usr/local/bin/deploy.sh"      # every criterion given must match: the path
    comm = "deploy.sh"                     # given to execve, the new comm, the cgroup (and
    cgroup = "system.slice/ci.service"     # those below it), the real uid(s)
    uids = [1000]                          # path, comm or cgroup is required
    budget = "/etc/tracerd/deploy.budget.toml"   # renacer-style [[assertion]]s
    actions = ["alert"]                    # alert: log violations; enforce: carry out the
                                           # budget's signal/kill actions (else reported only)
    syscalls = ["file", "network"]         # count only these (default: all)
    per_process = true
    peak_rss = false
    duration_ms = 0                        # stop after this long (0: when its processes end)

A path is resolved against the config file's directory when relative.

Tokens file (TOML, owned by root, no access for group or others)::

    [[token]]
    name = "ci"                   # shown as the owner of its sessions
    sha256 = "<hex digest of the secret>"   # or: secret = "<the secret itself>"
    uids = [1000, 1001]           # whose processes it may trace; omitted: anyone's
    exec_rules = false            # may start exec-rule and cgroup sessions (default false)
    max_sessions = 4              # running at once (default: the daemon's limit)
    admin = false                 # sees and controls every session (default: its own)

A client on the Unix socket without a token is the local administrator: reaching the
socket already took root or the socket's group.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import os
import stat
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from . import _budgets, syscalls
from ._errors import BadInput
from ._sessions import (
    Caller,
    HubLimits,
    RequestError,
    SessionOptions,
    WatchRule,
    cgroup_tree_ids,
    resolve_cgroup,
)

DEFAULT_SOCKET = "/run/tracerd/tracerd.sock"
DEFAULT_CONFIG = "/etc/tracerd/tracerd.toml"
DEFAULT_STATE_DIR = "/var/lib/tracerd"
DEFAULT_MAX_MESSAGE = 16 << 20

LOCAL = Caller(name="local")


@dataclass(frozen=True)
class Token:
    digest: bytes  #: sha256 of the secret
    caller: Caller


@dataclass
class DaemonConfig:
    socket: str = DEFAULT_SOCKET
    socket_group: str | None = None
    listen: list[str] = field(default_factory=list)
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    insecure: bool = False
    tokens: str | None = None
    log_level: str = "info"
    limits: HubLimits = field(default_factory=HubLimits)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE
    #: kernel map sizes (tracerd._probe.Limits): KERNEL_LIMITS; unset: defaults
    kernel_limits: dict[str, int] = field(default_factory=dict)
    state_dir: str = DEFAULT_STATE_DIR
    metrics: str | None = None  #: HOST:PORT of the Prometheus endpoint
    history_max_age_days: float = 30.0
    history_max_sessions: int = 100_000
    otlp: OtlpSettings | None = None
    rules: list[WatchRule] = field(default_factory=list)


@dataclass(frozen=True)
class OtlpSettings:
    """[otlp]: where finished sessions and metrics are exported (tracerd._otlp)."""

    endpoint: str
    insecure: bool = False
    ca_file: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    service_name: str = "tracerd"
    metrics_interval_s: float = 60.0


def _type_name(v: object) -> str:
    return type(v).__name__


def _check(path: str, where: str, key: str, value: Any, want: type | tuple[type, ...]) -> Any:
    if isinstance(value, bool) and want is int:
        raise BadInput(f"{path}: {where}{key}: expected an integer, got a boolean")
    if not isinstance(value, want):
        names = want.__name__ if isinstance(want, type) else " or ".join(w.__name__ for w in want)
        raise BadInput(f"{path}: {where}{key}: expected {names}, got {_type_name(value)}")
    if isinstance(value, str) and "\0" in value:
        # Paths and names go to the OS, which takes no NUL (Python raises ValueError).
        raise BadInput(f"{path}: {where}{key}: contains a NUL character")
    return value


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise BadInput(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"{path}: not valid TOML: {e}") from None


_STR_KEYS = ("socket", "socket_group", "tls_cert", "tls_key", "tls_client_ca", "tokens",
             "log_level", "state_dir", "metrics")


def load_config(path: str) -> DaemonConfig:
    data = _read_toml(path)
    cfg = DaemonConfig()
    for key, value in data.items():
        if key in _STR_KEYS:
            setattr(cfg, key, _check(path, "", key, value, str))
            if key == "metrics" and value:
                check_metrics_address(value, f"{path}: metrics")
        elif key == "history":
            _history(path, _check(path, "", key, value, dict), cfg)
        elif key == "otlp":
            cfg.otlp = _otlp(path, _check(path, "", key, value, dict))
        elif key == "rule":
            rules = _check(path, "", key, value, list)
            cfg.rules = [_rule(path, i, r) for i, r in enumerate(rules)]
            names = [r.name for r in cfg.rules]
            for i, name in enumerate(names):
                if name in names[:i]:
                    raise BadInput(f"{path}: rule[{i}].name: {name!r} is used by an "
                                   "earlier rule")
        elif key == "listen":
            items = _check(path, "", key, value, list)
            cfg.listen = [_check(path, "", f"listen[{i}]", v, str) for i, v in enumerate(items)]
        elif key == "insecure":
            cfg.insecure = _check(path, "", key, value, bool)
        elif key == "limits":
            cfg.limits, cfg.max_message_bytes = _limits(path, _check(path, "", key, value, dict),
                                                        cfg.limits, cfg.max_message_bytes,
                                                        cfg.kernel_limits)
        else:
            raise BadInput(f"{path}: unknown key {key!r}")
    return cfg


#: [limits] keys that size kernel maps (tracerd._probe.Limits), not the hub's limits
KERNEL_LIMITS = ("max_stats", "ringbuf_pages", "max_blocks")
#: counter blocks: one process generation's counters per block (see syscount.h)
MAX_BLOCKS_LIMIT = 65536


def _limits(path: str, data: dict[str, Any], base: HubLimits, max_msg: int,
            kernel: dict[str, int]) -> tuple[HubLimits, int]:
    names = {f.name for f in fields(HubLimits)}
    changes: dict[str, int] = {}
    for key, value in data.items():
        v = _check(path, "limits.", key, value, int)
        if key == "max_blocks" and v < 0:  # 0 blocks: every count in the stats map
            raise BadInput(f"{path}: limits.{key}: must be >= 0, got {v}")
        if v <= 0 and key != "max_blocks":
            raise BadInput(f"{path}: limits.{key}: must be > 0, got {v}")
        if key == "max_message_bytes":
            if v > 2**31 - 1:  # a C int in grpc's channel arguments
                raise BadInput(f"{path}: limits.max_message_bytes: at most {2**31 - 1}, "
                               f"got {v}")
            max_msg = v
        elif key in KERNEL_LIMITS:
            kernel[key] = v
            check_kernel_limits(kernel, f"{path}: limits.")
        elif key in names:
            changes[key] = v
        else:
            raise BadInput(f"{path}: unknown key 'limits.{key}'")
    limits = replace(base, **changes)
    if limits.min_interval_ms > limits.max_interval_ms:
        raise BadInput(f"{path}: limits.min_interval_ms ({limits.min_interval_ms}) is above "
                       f"limits.max_interval_ms ({limits.max_interval_ms})")
    return limits, max_msg


def check_kernel_limits(kernel: dict[str, int], where: str) -> None:
    pages = kernel.get("ringbuf_pages", 1)
    if pages & (pages - 1):
        raise BadInput(f"{where}ringbuf_pages: a power of 2, got {pages}")
    if kernel.get("max_blocks", 0) > MAX_BLOCKS_LIMIT:
        raise BadInput(f"{where}max_blocks: at most {MAX_BLOCKS_LIMIT}, "
                       f"got {kernel['max_blocks']}")


def check_metrics_address(addr: str, what: str) -> None:
    """HOST:PORT with an explicit host: /metrics has no authentication, so listening on
    every interface must be asked for by name (0.0.0.0 or [::])."""
    if not _host_of(addr, what):
        raise BadInput(f"{what} {addr}: give the address to listen on (127.0.0.1:PORT; "
                       "0.0.0.0:PORT for every interface)")


def _number(path: str, where: str, key: str, value: Any, *, lo: float, hi: float) -> float:
    """A finite int or float within [lo, hi] (TOML also has inf and nan)."""
    v = _check(path, where, key, value, (int, float))
    if isinstance(v, bool) or not math.isfinite(v) or not lo <= v <= hi:
        raise BadInput(f"{path}: {where}{key}: expected a number in {lo:g}..{hi:g}, got {v}")
    return float(v)


def _history(path: str, data: dict[str, Any], cfg: DaemonConfig) -> None:
    for key, value in data.items():
        if key == "max_age_days":
            v = _number(path, "history.", key, value, lo=0, hi=36500)
            if v == 0:
                raise BadInput(f"{path}: history.max_age_days: must be > 0, got {v}")
            cfg.history_max_age_days = v
        elif key == "max_sessions":
            n = _check(path, "history.", key, value, int)
            if n <= 0:
                raise BadInput(f"{path}: history.max_sessions: must be > 0, got {n}")
            cfg.history_max_sessions = n
        else:
            raise BadInput(f"{path}: unknown key 'history.{key}'")


_OTLP_KEYS = {"endpoint", "insecure", "ca_file", "headers", "service_name",
              "metrics_interval_s"}


def _otlp(path: str, data: dict[str, Any]) -> OtlpSettings:
    unknown = set(data) - _OTLP_KEYS
    if unknown:
        raise BadInput(f"{path}: unknown key 'otlp.{sorted(unknown)[0]}'")
    if "endpoint" not in data:
        raise BadInput(f"{path}: otlp.endpoint: required (HOST:PORT of an OTLP/gRPC receiver)")
    endpoint = _check(path, "otlp.", "endpoint", data["endpoint"], str)
    _host_of(endpoint, "otlp.endpoint")
    headers = _check(path, "otlp.", "headers", data.get("headers", {}), dict)
    for k, v in headers.items():
        _check(path, "otlp.headers.", k, v, str)
    interval = _number(path, "otlp.", "metrics_interval_s", data.get("metrics_interval_s", 60),
                       lo=0, hi=86400)
    ca = data.get("ca_file")
    if ca is not None:
        ca_path = _resolve(path, _check(path, "otlp.", "ca_file", ca, str))
        try:
            Path(ca_path).read_bytes()
        except OSError as e:
            raise BadInput(f"{path}: otlp.ca_file: {ca_path}: {e.strerror}") from None
    return OtlpSettings(
        endpoint=endpoint, insecure=_check(path, "otlp.", "insecure",
                                           data.get("insecure", False), bool),
        ca_file=_resolve(path, _check(path, "otlp.", "ca_file", ca, str)) if ca else None,
        headers=tuple(sorted(headers.items())),
        service_name=_check(path, "otlp.", "service_name", data.get("service_name", "tracerd"),
                            str),
        metrics_interval_s=float(interval))


def _resolve(config_path: str, p: str) -> str:
    """A path from the config file: relative ones are taken from the file's directory."""
    return str((Path(config_path).parent / p) if not os.path.isabs(p) else Path(p))


_RULE_KEYS = {"name", "path", "comm", "cgroup", "uids", "budget", "actions", "syscalls",
              "per_process", "peak_rss", "duration_ms"}
_ACTIONS = ("alert", "enforce")


def _entry(path: str, table: str, i: int, data: Any, keys: set[str]) -> dict[str, Any]:
    """The i-th entry of a [[table]]: a table with known keys only."""
    _check(path, "", f"{table}[{i}]", data, dict)
    unknown = set(data) - keys
    if unknown:
        raise BadInput(f"{path}: unknown key '{table}[{i}].{sorted(unknown)[0]}'")
    return dict(data)


def _rule(path: str, i: int, data: Any) -> WatchRule:
    where = f"rule[{i}]."
    data = _entry(path, "rule", i, data, _RULE_KEYS)
    name = _check(path, where, "name", data.get("name"), str)
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise BadInput(f"{path}: {where}name: {name!r}: 1 to 64 letters, digits, '-', '_', '.'")
    where = f"rule {name!r}: "
    exe = _check(path, where, "path", data.get("path", ""), str)
    comm = _check(path, where, "comm", data.get("comm", ""), str)
    cgroup = _check(path, where, "cgroup", data.get("cgroup", ""), str)
    if not (exe or comm or cgroup):
        raise BadInput(f"{path}: {where}give path, comm or cgroup (the kernel starts counting "
                       "on one of them; uids alone cannot)")
    if exe and (not exe.startswith("/") or len(exe.encode()) > 255 or "\0" in exe):
        raise BadInput(f"{path}: {where}path: {exe!r} must be absolute and under 256 bytes")
    exe = os.path.normpath(exe) if exe else ""
    if len(comm.encode()) > 15 or "\0" in comm:
        raise BadInput(f"{path}: {where}comm: {comm!r} is longer than the kernel's 15-byte comm")
    ids: frozenset[int] = frozenset()
    if cgroup:
        try:
            ids = frozenset(cgroup_tree_ids(resolve_cgroup(cgroup)))
        except RequestError as e:
            raise BadInput(f"{path}: {where}cgroup: {e}") from None
    uids = None
    if "uids" in data:
        raw = _check(path, where, "uids", data["uids"], list)
        uids = frozenset(_check(path, where, f"uids[{j}]", u, int) for j, u in enumerate(raw))
        if not uids or any(u < 0 for u in uids):
            raise BadInput(f"{path}: {where}uids: a non-empty list of uids >= 0")
    actions = _check(path, where, "actions", data.get("actions", ["alert"]), list)
    for a in actions:
        if a not in _ACTIONS:
            raise BadInput(f"{path}: {where}actions: {a!r}: use {' or '.join(_ACTIONS)}")
    budget: tuple[_budgets.Assertion, ...] = ()
    if "budget" in data:
        bpath = _resolve(path, _check(path, where, "budget", data["budget"], str))
        try:
            budget = tuple(_budgets.load(bpath))
        except _budgets.BudgetError as e:
            raise BadInput(f"{path}: {where}budget: {e}") from None
        if not budget:
            raise BadInput(f"{path}: {where}budget: {bpath} has no [[assertion]] entries")
        if "enforce" not in actions:
            # Reported, not carried out: a rule enforces only when it says so.
            budget = tuple(replace(a, action="fail" if a.fail_on_violation else "warn")
                           if a.action in ("signal", "kill") else a
                           for a in budget)
    spec = tuple(_check(path, where, f"syscalls[{j}]", x, str) for j, x in
                 enumerate(_check(path, where, "syscalls", data.get("syscalls", []), list)))
    try:
        keep = syscalls.resolve(spec) if spec else None
    except ValueError as e:
        raise BadInput(f"{path}: {where}syscalls: {e}") from None
    duration = _check(path, where, "duration_ms", data.get("duration_ms", 0), int)
    if duration < 0:
        raise BadInput(f"{path}: {where}duration_ms: must be >= 0, got {duration}")
    options = SessionOptions(
        duration_ms=duration, syscalls=keep, syscall_spec=spec,
        per_process=_check(path, where, "per_process", data.get("per_process", True), bool),
        label=f"rule:{name}", budget=budget,
        peak_rss=_check(path, where, "peak_rss", data.get("peak_rss", False), bool))
    return WatchRule(name=name, path=exe, comm=comm, cgroup=cgroup, cgroup_ids=ids, uids=uids,
                     options=options, alert="alert" in actions)


def check_transport(cfg: DaemonConfig) -> None:
    """Refuse listeners that would expose the daemon without TLS or authentication."""
    if not cfg.socket and not cfg.listen:
        raise BadInput("nothing to listen on: give a socket or --listen")
    for addr in cfg.listen:
        host = _host_of(addr)
        if cfg.insecure:
            if not _is_loopback(host):
                raise BadInput(f"--listen {addr}: --insecure (plaintext TCP) is allowed on "
                               "loopback addresses only")
            if cfg.tls_cert or cfg.tls_key or cfg.tls_client_ca:
                raise BadInput(f"--listen {addr}: --insecure cannot be combined with TLS "
                               "options (the listener would be plaintext)")
            if not cfg.tokens:
                # Any local user can reach a loopback port: tokens are the only gate.
                raise BadInput(f"--listen {addr}: --insecure needs --tokens (any local user "
                               "can connect to a loopback port)")
            continue
        if not (cfg.tls_cert and cfg.tls_key):
            raise BadInput(f"--listen {addr}: TCP needs TLS (--tls-cert and --tls-key), or "
                           "--insecure on a loopback address")
        if not (cfg.tokens or cfg.tls_client_ca):
            raise BadInput(f"--listen {addr}: TCP clients must authenticate: give --tokens "
                           "or --tls-client-ca (mTLS)")


def _host_of(addr: str, what: str = "--listen") -> str:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise BadInput(f"{what} {addr}: expected HOST:PORT")
    return host.strip("[]")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------- tokens


_TOKEN_KEYS = {"name", "sha256", "secret", "uids", "exec_rules", "max_sessions", "admin"}


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def load_tokens(path: str) -> list[Token]:
    try:
        st = os.stat(path)
    except OSError as e:
        raise BadInput(f"{path}: cannot read: {e.strerror}") from None
    if st.st_uid != 0 or stat.S_IMODE(st.st_mode) & 0o077:
        raise BadInput(f"{path}: a tokens file must be owned by root and inaccessible to "
                       f"group and others (it is uid {st.st_uid}, mode "
                       f"{stat.S_IMODE(st.st_mode):04o}): chown root {path}; chmod 600 {path}")
    data = _read_toml(path)
    extra = set(data) - {"token"}
    if extra:
        raise BadInput(f"{path}: unknown key {sorted(extra)[0]!r}")
    tokens: list[Token] = []
    seen_names: set[str] = set()
    for i, raw_t in enumerate(_check(path, "", "token", data.get("token", []), list)):
        where = f"token[{i}]."
        t = _entry(path, "token", i, raw_t, _TOKEN_KEYS)
        name = _check(path, where, "name", t.get("name"), str)
        # ":" is reserved for owners the daemon names itself (rule:NAME, mtls:CN).
        if not name or name == LOCAL.name or name in seen_names or ":" in name:
            raise BadInput(f"{path}: {where}name: {name!r} is empty, reserved or repeated")
        seen_names.add(name)
        if ("sha256" in t) == ("secret" in t):
            raise BadInput(f"{path}: token[{i}]: give exactly one of sha256 and secret")
        if "secret" in t:
            d = digest(_check(path, where, "secret", t["secret"], str))
        else:
            hexd = _check(path, where, "sha256", t["sha256"], str)
            try:
                d = bytes.fromhex(hexd)
            except ValueError:
                d = b""
            if len(d) != 32:
                raise BadInput(f"{path}: {where}sha256: expected 64 hex digits")
        uids = None
        if "uids" in t:
            raw = _check(path, where, "uids", t["uids"], list)
            uids = frozenset(_check(path, where, f"uids[{j}]", u, int) for j, u in enumerate(raw))
            if any(u < 0 for u in uids):
                raise BadInput(f"{path}: {where}uids: uids are >= 0")
        max_sessions = None
        if "max_sessions" in t:
            max_sessions = _check(path, where, "max_sessions", t["max_sessions"], int)
            if max_sessions <= 0:
                raise BadInput(f"{path}: {where}max_sessions: must be > 0, got {max_sessions}")
        if any(hmac.compare_digest(d, other.digest) for other in tokens):
            raise BadInput(f"{path}: {where}: the same secret as an earlier token")
        caller = Caller(name=name, uids=uids,
                        exec_rules=_check(path, where, "exec_rules", t.get("exec_rules", False),
                                          bool),
                        max_sessions=max_sessions,
                        admin=_check(path, where, "admin", t.get("admin", False), bool))
        tokens.append(Token(digest=d, caller=caller))
    return tokens


def match_token(tokens: list[Token], secret: str) -> Caller | None:
    d = digest(secret)
    found = None
    for t in tokens:  # compare against every token: timing says nothing about which matched
        if hmac.compare_digest(t.digest, d):
            found = t.caller
    return found


def read_token_file(path: str) -> str:
    """A client's token: the first line of ``path``."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise BadInput(f"{path}: cannot read the token: {e.strerror}") from None
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise BadInput(f"{path}: the token file is empty")
    return token
